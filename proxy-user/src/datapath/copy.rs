//! The plain userspace copy: the slowest path, and the one that works for any socket.

use std::{
    io,
    pin::pin,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use tokio::net::TcpStream;

use super::{
    Endpoint,
    direction::{End, Moved, both, eof_is_final, write_all},
};
use crate::sockopt;

const BUFFER: usize = 64 << 10;

pub(super) async fn run(client: &Endpoint, upstream: &Endpoint, moved: &Moved) -> End {
    both(
        pin!(direction(client, upstream.stream(), &moved.up)),
        pin!(direction(upstream, client.stream(), &moved.down)),
    )
    .await
}

/// `moved` starts at what the handshake read from `src`.
async fn direction(src: &Endpoint, dst: &TcpStream, moved: &AtomicU64) -> End {
    let mut buf = vec![0; BUFFER];
    let mut eof_since = None;
    loop {
        if let Err(err) = src.stream().readable().await {
            return End::from_io(&err);
        }
        match src.stream().try_read(&mut buf) {
            Ok(0) => {
                // Only a socket left in the SOCKHASH can have passed bytes still coming.
                // Boxed: rare (EOF only), so an idle connection holds none of its state.
                match Box::pin(eof_is_final(src, moved.load(Relaxed), &mut eof_since)).await {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(end) => return end,
                }
                return match sockopt::shutdown_write(dst) {
                    Ok(()) => End::Fin,
                    Err(err) => End::from_io(&err),
                };
            }
            Ok(n) => {
                if let Err(err) = write_all(dst, &buf[..n]).await {
                    return End::from_io(&err);
                }
                moved.fetch_add(n as u64, Relaxed);
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return End::from_io(&err),
        }
    }
}
