//! The kernel path: the verdict program redirects each skb to the peer socket, and
//! userspace only handles the handoff, FIN and RST.
//!
//! The handoff cannot lose or reorder bytes. Each direction sets `go` to the number of
//! bytes userspace has read from the source and written to the destination; the verdict
//! redirects only while its `passed` count equals `go`, and passes (to our `recv`)
//! otherwise. So every byte userspace sees is written before any later byte is redirected,
//! and a byte that arrives during the handoff is simply read and forwarded here, after which
//! `go` catches up. FIN waits until the peer's send queue has every redirected byte.
//!
//! Backpressure: a redirected skb leaves the source's receive memory at once and waits in
//! the peer's psock queue, charged to no socket, so TCP keeps the sender's window open and a
//! slow receiver lets the kernel queue without bound. The verdict therefore redirects only
//! while the peer's send buffer has room for what waits there (it reads the peer's state
//! itself, per skb: `proxy_common::SockLayout`). Without room it passes; the pass wakes
//! this loop, which relays those bytes only once the psock queue is empty and the peer's
//! send buffer takes them (so it blocks with a slow receiver, the source's receive queue
//! fills and TCP closes its window), then hands off again. With a peer that has room,
//! [`catch_up`] relays them without consuming them first, so the handoff completes again
//! even while the sender keeps sending.
//!
//! The send-buffer bound keeps psock queues empty, and that matters to the other direction:
//! a passed skb is charged to its socket's receive memory (closing the window) only when
//! that socket's psock queue is empty. Behind redirected skbs waiting there for send-buffer
//! room it queues uncharged (sk_psock_verdict_apply, net/core/skmsg.c), and passing would
//! push back on nothing.

use std::{
    future::{Future, poll_fn},
    io,
    pin::pin,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use proxy_common::{Handoff, SockCounters};

use super::{
    Endpoint,
    direction::{End, Moved, both, eof_is_final, write_all},
};
use crate::{ebpf::Kernel, sockopt};

/// How long redirected bytes may be missing from an empty send queue before the
/// connection is declared broken.
const LOST_BYTES_GRACE: Duration = Duration::from_secs(2);

/// The most passed bytes one catch-up holds (see also [`CATCH_UP_BUDGET`]); the receive
/// buffer bounds them anyway.
const CATCH_UP: u64 = 32 << 20;

/// The read buffer while bytes are passed to userspace (before the handoff completes, or
/// after a failed redirect).
const BUFFER: usize = 64 << 10;

/// Both directions. Every idle connection on this path holds this future, so it and
/// [`direction`] are async blocks.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice (rust-lang/rust#62958)"
)]
pub(super) fn run<'a>(
    kernel: &'a Kernel,
    client: &'a Endpoint,
    upstream: &'a Endpoint,
    moved: &'a Moved,
) -> impl Future<Output = End> + Send + 'a {
    async move {
        both(
            pin!(direction(kernel, client, upstream, &moved.up, Syn::Counted)),
            pin!(direction(
                kernel,
                upstream,
                client,
                &moved.down,
                Syn::NotCounted
            )),
        )
        .await
    }
}

/// Whether a socket's `bytes_acked` counts its SYN: it does on the side that connected
/// (the upstream), not on the side that accepted (the client); measured, and pinned by
/// `sockopt::tests::bytes_acked_counts_the_syn_of_a_connect`.
#[derive(Clone, Copy)]
enum Syn {
    Counted = 1,
    NotCounted = 0,
}

/// One direction, `src` to `dst`, with a debug line on how it ended. `read` counts what
/// userspace read from `src`; `dst_syn` says whether `dst`'s `bytes_acked` counts its SYN.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice (rust-lang/rust#62958)"
)]
fn direction<'a>(
    kernel: &'a Kernel,
    src: &'a Endpoint,
    dst: &'a Endpoint,
    read: &'a AtomicU64,
    dst_syn: Syn,
) -> impl Future<Output = End> + 'a {
    async move {
        // Of `dst`'s count of bytes ever queued (`bytes_acked + SIOCOUTQ`), those the
        // verdict did not redirect: userspace's writes, and the SYN where it counts.
        let mut written = dst.bytes_written() + dst_syn as u64;
        // The `go` last handed off; none yet at first (u64::MAX, which `read` never reaches).
        let mut go = u64::MAX;
        let mut eof_since = None;
        // Held only while bytes are being passed to us, so an idle spliced connection keeps
        // no buffer.
        let mut buf = Vec::new();
        let end = loop {
            let want = read.load(Relaxed);
            if go != want {
                if let Err(end) = hand_off(kernel, src, dst, want, written) {
                    break end;
                }
                go = want;
            }
            // Readable only for bytes the verdict passed, EOF or an error: redirected skbs
            // never show up in the socket's own queue. poll_read_ready keeps the waker in the
            // socket's registration, where readable() would hold a waiter in this future; this
            // direction is the socket's only reader.
            if let Err(err) = poll_fn(|cx| src.stream().poll_read_ready(cx)).await {
                break End::from_io(&err);
            }
            // Passed bytes after the handoff: the peer had no room, or a redirect failed.
            let counters = kernel.counters(src.cookie());
            if counters.passed > read.load(Relaxed) {
                // Boxed: rare, as below.
                let catching_up =
                    catch_up(kernel, src, dst, counters, read.load(Relaxed), &mut written);
                match Box::pin(catching_up).await {
                    Ok(done) => {
                        read.fetch_add(done.consumed, Relaxed);
                        if let Some(caught_up) = done.go {
                            go = caught_up;
                        }
                        // Nothing moved: the plain read below waits for readiness, where
                        // looping would spin on readiness the peek never cleared.
                        if done.go.is_some() || done.consumed > 0 {
                            continue;
                        }
                    }
                    Err(end) => break end,
                }
            }
            buf.resize(BUFFER, 0);
            // Taken apart before any wait, so the future keeps no room for the result.
            let n = match src.stream().try_read(&mut buf) {
                Ok(n) => n,
                // Woken with nothing to read (the readiness left over from the handshake,
                // say): an idle connection keeps no buffer.
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    buf = Vec::new();
                    continue;
                }
                Err(err) => break End::from_io(&err),
            };
            if n == 0 {
                // Boxed: rare (EOF only), so an idle connection holds none of its state.
                match Box::pin(eof_is_final(src, read.load(Relaxed), &mut eof_since)).await {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(end) => break end,
                }
                // FIN is not redirected. Shutting the peer down before its send queue has
                // taken every redirected byte would drop them. Boxed: rare, as above.
                let target = written + kernel.counters(src.cookie()).redirected;
                if let Err(end) = Box::pin(drained(src, dst.stream(), target)).await {
                    break end;
                }
                break match sockopt::shutdown_write(dst.stream()) {
                    Ok(()) => End::Fin,
                    Err(err) => End::from_io(&err),
                };
            }
            let counters = kernel.counters(src.cookie());
            if counters.uncut > 0 {
                break uncut(src);
            }
            // Only this is kept across the waits below, not all the counters: every
            // relayed connection's future has room for them.
            let passed = counters.passed;
            // Redirected skbs may still wait in the peer's psock queue; ours must not
            // overtake them. Boxed: passed bytes are rare once the handoff is done.
            if counters.redirected > 0
                && let Err(end) =
                    Box::pin(drained(src, dst.stream(), written + counters.redirected)).await
            {
                break end;
            }
            // Boxed: as above, so idle connections do not reserve room for it.
            if let Err(err) = Box::pin(write_all(dst.stream(), &buf[..n])).await {
                break End::from_io(&err);
            }
            written += n as u64;
            let total = read.fetch_add(n as u64, Relaxed) + n as u64;
            if passed == total {
                // Caught up: the handoff completes on the next turn.
                buf = Vec::new();
            }
        };
        if !log::log_enabled!(log::Level::Debug) {
            return end;
        }
        let c = kernel.counters(src.cookie());
        log::debug!(
            "conn {}: sock {} -> {} ended {end:?}: read {} passed {} redirected {} \
             repeated bytes cut {}",
            src.conn(),
            src.cookie(),
            dst.cookie(),
            read.load(Relaxed),
            c.passed,
            c.redirected,
            c.overlap
        );
        end
    }
}

/// What a [`catch_up`] did: the bytes it consumed from `src`, and the `go` it handed off
/// (none if it gave up).
struct CatchUp {
    consumed: u64,
    go: Option<u64>,
}

/// Relays the bytes passed while the peer had no room and completes the handoff again. Reading
/// them as they come, `go` chased `passed` for as long as the sender kept up (most of a
/// 4 GiB transfer, measured), since every read reopened the window. Peeked bytes stay
/// queued instead: each round writes the ones not written yet, the receive queue fills,
/// the window shuts, `passed` stops moving, and `go` is set to it before a byte is
/// consumed, so the verdict redirects whatever comes next. Gives up (consuming what it
/// wrote) when the peer lacks room, rather than hold a large buffer for a slow peer.
async fn catch_up(
    kernel: &Kernel,
    src: &Endpoint,
    dst: &Endpoint,
    mut counters: SockCounters,
    read: u64,
    written: &mut u64,
) -> Result<CatchUp, End> {
    let io_end = |err: io::Error| End::from_io(&err);
    let mut buf = Vec::new();
    let mut held = Held(0);
    // Bytes at the head of `src`'s queue already written to `dst`.
    let mut sent = 0u64;
    let go = loop {
        let pending = counters.passed.saturating_sub(read);
        if pending == sent {
            break Some(counters.passed);
        }
        let room = sockopt::send_space(dst.stream()).map_err(io_end)? / 2;
        if pending > CATCH_UP || room < pending - sent || !held.grow(pending) {
            break None;
        }
        buf.resize(pending as usize, 0);
        let peeked = match sockopt::recv(src.stream(), &mut buf, libc::MSG_PEEK) {
            Ok(n) => n as u64,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => 0,
            Err(err) => return Err(io_end(err)),
        };
        // Counters read after the peek, so ordered after it by the socket's locks: an uncut
        // skb among the peeked bytes must not reach the peer.
        if kernel.counters(src.cookie()).uncut > 0 {
            return Err(uncut(src));
        }
        // Passed bytes not readable yet (queued behind the psock backlog): plain reads.
        if peeked <= sent {
            break None;
        }
        if counters.redirected > 0 {
            drained(src, dst.stream(), *written + counters.redirected).await?;
        }
        write_all(dst.stream(), &buf[sent as usize..peeked as usize])
            .await
            .map_err(io_end)?;
        *written += peeked - sent;
        sent = peeked;
        counters = kernel.counters(src.cookie());
    };
    if let Some(go) = go {
        hand_off(kernel, src, dst, go, *written)?;
    }
    consume(src.stream(), &mut buf, sent).map_err(io_end)?;
    Ok(CatchUp { consumed: sent, go })
}

/// Bytes all catch-ups together may buffer; past it they give up (to 64 KiB reads), so
/// many connections catching up at once cannot take gigabytes.
const CATCH_UP_BUDGET: u64 = 256 << 20;
static CATCH_UP_HELD: AtomicU64 = AtomicU64::new(0);

/// One catch-up's share of [`CATCH_UP_BUDGET`], returned when dropped.
struct Held(u64);

impl Held {
    /// Grows the share to `bytes`; false (and unchanged) if the budget has no room.
    fn grow(&mut self, bytes: u64) -> bool {
        let more = bytes.saturating_sub(self.0);
        if CATCH_UP_HELD.fetch_add(more, Relaxed) + more > CATCH_UP_BUDGET {
            CATCH_UP_HELD.fetch_sub(more, Relaxed);
            return false;
        }
        self.0 += more;
        true
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        CATCH_UP_HELD.fetch_sub(self.0, Relaxed);
    }
}

/// Reads and drops the `len` bytes at the head of `src`'s queue, which a peek has seen.
fn consume(src: &tokio::net::TcpStream, buf: &mut Vec<u8>, len: u64) -> io::Result<()> {
    buf.resize(len as usize, 0);
    let mut done = 0;
    while done < buf.len() {
        match sockopt::recv(src, &mut buf[done..], 0)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => done += n,
        }
    }
    Ok(())
}

/// The connection's end when the verdict passed an skb it could not cut.
fn uncut(src: &Endpoint) -> End {
    log::error!(
        "conn {}: sock {}: the kernel passed bytes that may repeat earlier ones and could not \
         be cut; resetting",
        src.conn(),
        src.cookie()
    );
    End::Error
}

/// Writes `src`'s handoff to `dst`: redirect once `go` bytes have passed; userspace has
/// written `written` bytes to `dst` itself.
fn hand_off(
    kernel: &Kernel,
    src: &Endpoint,
    dst: &Endpoint,
    go: u64,
    written: u64,
) -> Result<(), End> {
    let handoff = Handoff {
        peer: dst.cookie(),
        go,
        written,
        conn: src.conn(),
    };
    kernel.set_handoff(src.cookie(), handoff).map_err(|err| {
        log::warn!("sock {}: handoff map update failed: {err}", src.cookie());
        End::Error
    })
}

/// Checks of `drained` that only yield before it starts sleeping: the backlog worker
/// usually empties the psock queue within microseconds, and a timer sleeps a millisecond.
const SPINS: u32 = 64;

/// Waits until `dst`'s send queue has taken `target` bytes: `written` (see [`direction`])
/// plus what the verdict redirected from `src`. The callers read `redirected` once: it
/// cannot grow while `src` holds passed bytes userspace has not relayed (the verdict
/// redirects only once `go` has caught up with `passed`), nor after its EOF. Bytes ever
/// queued for sending are `bytes_acked + SIOCOUTQ`; an ACK between the two reads can only
/// make the sum short, so this waits rather than finish early.
async fn drained(src: &Endpoint, dst: &tokio::net::TcpStream, target: u64) -> Result<(), End> {
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
            let since = *idle_since.get_or_insert_with(std::time::Instant::now);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catch_ups_share_one_budget() {
        let mut first = Held(0);
        assert!(first.grow(CATCH_UP_BUDGET - 10));
        let mut second = Held(0);
        assert!(!second.grow(11), "over the budget");
        assert!(second.grow(10));
        assert!(
            !first.grow(CATCH_UP_BUDGET - 9),
            "a share grows only while the budget lasts"
        );
        drop(first);
        assert!(second.grow(CATCH_UP_BUDGET));
        drop(second);
        assert_eq!(CATCH_UP_HELD.load(Relaxed), 0);
    }
}
