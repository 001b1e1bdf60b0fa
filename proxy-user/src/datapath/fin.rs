//! How a direction ends and how the sockets close, on every path (ARCHITECTURE.md, "FIN
//! draining"): the check that an EOF is final, the wait until the peer's send queue has
//! taken every redirected byte, the FIN passed on to the peer, and the reset any other close
//! sends.

use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::{End, Endpoint};
use crate::sockopt;

/// How long EOF may run ahead of bytes the verdict already passed.
const LATE_BYTES_GRACE: Duration = Duration::from_secs(2);

/// How long redirected bytes may be missing from an empty send queue before the
/// connection is declared broken.
const LOST_BYTES_GRACE: Duration = Duration::from_secs(2);

/// Checks of [`drained`] that only yield before it starts sleeping: the backlog worker
/// usually empties the psock queue within microseconds, and a timer sleeps a millisecond.
const SPINS: u32 = 64;

/// Makes closing both sockets send RST (SO_LINGER 0); the caller closes them right after.
/// Until both directions end with FIN, any close resets: if the agent dies, each peer sees
/// a reset rather than a clean end of a truncated stream.
pub(super) fn reset_on_close(client: &TcpStream, upstream: &TcpStream) {
    let _ = sockopt::set_linger_zero(client);
    let _ = sockopt::set_linger_zero(upstream);
}

/// Undoes [`reset_on_close`] once both directions ended with FIN, so closing is orderly.
pub(super) fn fin_on_close(client: &TcpStream, upstream: &TcpStream) {
    let _ = sockopt::clear_linger(client);
    let _ = sockopt::clear_linger(upstream);
}

/// Ends a direction whose `src` just read EOF, having read `read_total` bytes from it in
/// all: once the EOF is final, waits until `dst`'s send queue has taken `drain_to()` bytes
/// (the sockmap path; `None` where nothing was redirected), then shuts `dst` down for
/// writing. `None` when the EOF came ahead of passed bytes: read again. `since` keeps when
/// that was first seen, across calls.
pub(super) async fn finish(
    src: &Endpoint,
    dst: &TcpStream,
    read_total: u64,
    since: &mut Option<Instant>,
    drain_to: impl FnOnce() -> Option<u64>,
) -> Option<End> {
    match eof_is_final(src, read_total, since).await {
        Ok(true) => {}
        Ok(false) => return None,
        Err(end) => return Some(end),
    }
    // FIN is not redirected. Shutting the peer down before its send queue has taken every
    // redirected byte would drop them; the target is read only now that the EOF is final.
    if let Some(target) = drain_to()
        && let Err(end) = drained(src, dst, target).await
    {
        return Some(end);
    }
    Some(shut_down(dst))
}

/// Passes a FIN on: shuts `dst` down for writing.
pub(super) fn shut_down(dst: &TcpStream) -> End {
    match sockopt::shutdown_write(dst) {
        Ok(()) => End::Fin,
        Err(err) => End::from_io(&err),
    }
}

/// Whether an EOF on `src` is real. A passed skb can reach the socket's queue through the
/// psock's backlog worker after the FIN is already visible (sk_psock_verdict_apply,
/// net/core/skmsg.c), so recv() may return 0 with bytes still to come. The verdict's
/// `passed` count says how many must be read: wait for them, and report the stream broken
/// rather than end it cleanly without them.
async fn eof_is_final(
    src: &Endpoint,
    read_total: u64,
    since: &mut Option<Instant>,
) -> Result<bool, End> {
    let missing = src.unread_passed(read_total);
    if missing == 0 {
        return Ok(true);
    }
    let start = *since.get_or_insert_with(|| {
        log::debug!(
            "sock {}: EOF before {missing} passed bytes; waiting for them",
            src.cookie()
        );
        Instant::now()
    });
    if start.elapsed() > LATE_BYTES_GRACE {
        log::error!(
            "sock {}: EOF with {missing} passed bytes never delivered; resetting",
            src.cookie()
        );
        return Err(End::Error);
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    Ok(false)
}

/// Waits until `dst`'s send queue has taken `target` bytes: what userspace wrote to it
/// (and its SYN where `bytes_acked` counts it) plus what the verdict redirected from `src`.
/// The callers read `redirected` once: it cannot grow while `src` holds passed bytes
/// userspace has not relayed (the verdict redirects only once `go` has caught up with
/// `passed`), nor after its EOF. Bytes ever queued for sending are `bytes_acked +
/// SIOCOUTQ`; an ACK between the two reads can only make the sum short, so this waits
/// rather than finish early.
pub(super) async fn drained(src: &Endpoint, dst: &TcpStream, target: u64) -> Result<(), End> {
    let mut delay = Duration::from_micros(50);
    let mut idle_since = None;
    let mut spins = 0;
    loop {
        let info = sockopt::tcp_info(dst).map_err(|e| End::from_io(&e))?;
        let queued = sockopt::send_queue(dst).map_err(|e| End::from_io(&e))?;
        if info.bytes_acked + queued >= target {
            return Ok(());
        }
        // An empty send queue that stays short of the target means the kernel dropped
        // redirected bytes on the way (seen once under load, with sk_drops on the socket):
        // the stream is broken, and waiting would hang the connection forever.
        if queued == 0 {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() > LOST_BYTES_GRACE {
                log::error!(
                    "conn {}: sock {}: {} redirected bytes never reached the peer; resetting",
                    src.conn(),
                    src.cookie(),
                    target - info.bytes_acked
                );
                return Err(End::Error);
            }
        } else {
            idle_since = None;
        }
        if info.state != sockopt::TCP_ESTABLISHED && info.state != sockopt::TCP_CLOSE_WAIT {
            // The destination was reset or closed under us: the bytes cannot arrive.
            log::debug!(
                "sock {}: closed (state {}) with {} of {target} bytes queued",
                src.cookie(),
                info.state,
                info.bytes_acked + queued
            );
            return Err(End::Rst);
        }
        if spins < SPINS {
            spins += 1;
            tokio::task::yield_now().await;
            continue;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(10));
    }
}
