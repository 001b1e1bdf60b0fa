//! What every path shares: how a direction ends, and running two directions as one
//! connection.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::atomic::AtomicU64,
    time::{Duration, Instant},
};

use tokio::net::TcpStream;

use super::Endpoint;
use crate::sockopt;

/// How a connection, or one direction of it, ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum End {
    /// Orderly: every byte delivered, then FIN.
    Fin,
    /// One side reset; the other side was reset too.
    Rst,
    /// A local error (not a reset); both sides were reset.
    Error,
    /// Closed for lack of traffic; both sides were reset.
    Timeout,
    /// Closed because sockgate is shutting down; both sides were reset.
    Shutdown,
}

/// Bytes userspace read from each side in all, handshake included; shared with the
/// directions so the count survives a connection stopped mid-way.
pub(super) struct Moved {
    /// From the client.
    pub up: AtomicU64,
    /// From the upstream.
    pub down: AtomicU64,
}

impl End {
    /// Classifies an I/O error on either socket.
    pub(super) fn from_io(err: &io::Error) -> Self {
        log::debug!("datapath: {err}");
        match err.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => End::Rst,
            _ => {
                log::debug!("datapath error: {err}");
                End::Error
            }
        }
    }
}

/// Runs the client-to-upstream (`up`) and upstream-to-client (`down`) directions. A FIN in
/// one direction leaves the other running (a half-close); a reset or error in either stops
/// both (and the sockets, which linger zero until then, are reset when closed).
///
/// The callers pin the directions in place: taken by value, each would be stored twice in
/// this future, once as the argument and once pinned. An async block, not an async fn, for
/// the same reason: it stores its arguments once.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice (rust-lang/rust#62958)"
)]
pub(super) fn both<'a>(
    mut up: Pin<&'a mut impl Future<Output = End>>,
    mut down: Pin<&'a mut impl Future<Output = End>>,
) -> impl Future<Output = End> + 'a {
    async move {
        let (first, up_first) = tokio::select! {
            end = up.as_mut() => (end, true),
            end = down.as_mut() => (end, false),
        };
        match first {
            End::Fin if up_first => down.await,
            End::Fin => up.await,
            other => other,
        }
    }
}

/// Makes closing both sockets send RST (SO_LINGER 0); the caller closes them right after.
pub(super) fn reset_on_close(client: &TcpStream, upstream: &TcpStream) {
    let _ = sockopt::set_linger_zero(client);
    let _ = sockopt::set_linger_zero(upstream);
}

/// How long EOF may run ahead of bytes the verdict already passed.
const LATE_BYTES_GRACE: Duration = Duration::from_secs(2);

/// Whether an EOF on `src` is real. A passed skb can reach the socket's queue through the
/// psock's backlog worker after the FIN is already visible (sk_psock_verdict_apply,
/// net/core/skmsg.c), so recv() may return 0 with bytes still to come. The verdict's
/// `passed` count says how many must be read: wait for them, and report the stream broken
/// rather than end it cleanly without them.
pub(super) async fn eof_is_final(
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

/// Writes all of `buf` to a shared socket.
pub(super) async fn write_all(stream: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        stream.writable().await?;
        match stream.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}
