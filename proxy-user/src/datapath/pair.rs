//! A connection's two directions: running them as one, and writing to a socket that the
//! other direction reads.

use std::{future::Future, io, pin::Pin};

use tokio::net::TcpStream;

use super::End;

/// Runs the client-to-upstream (`up`) and upstream-to-client (`down`) directions. A FIN in
/// one direction leaves the other running (a half-close); a reset or error in either stops
/// both (and the sockets, which linger zero until then, are reset when closed).
///
/// The callers pin the directions in place: taken by value, each would be stored twice in
/// this future, once as the argument and once pinned (see [`crate::task_size`]).
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
