//! The plain userspace copy: the slowest path, and the one that works for any socket.

use std::{
    io,
    pin::pin,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use tokio::net::TcpStream;

use super::{
    BytesRead, End, Endpoint, fin,
    pair::{both, write_all},
};
use crate::task_size::rare;

const BUFFER: usize = 64 << 10;

pub(super) async fn run(client: &Endpoint, upstream: &Endpoint, read: &BytesRead) -> End {
    both(
        pin!(direction(client, upstream.stream(), &read.up)),
        pin!(direction(upstream, client.stream(), &read.down)),
    )
    .await
}

/// `read` starts at what the handshake read from `src`.
async fn direction(src: &Endpoint, dst: &TcpStream, read: &AtomicU64) -> End {
    let mut buf = vec![0; BUFFER];
    let mut eof_since = None;
    loop {
        if let Err(err) = src.stream().readable().await {
            return End::from_io(&err);
        }
        match src.stream().try_read(&mut buf) {
            Ok(0) => {
                // Only a socket left in the SOCKHASH can have passed bytes still coming, and
                // none were redirected to `dst`: nothing to drain.
                let total = read.load(Relaxed);
                if let Some(end) = rare(fin::finish(src, dst, total, &mut eof_since, || None)).await
                {
                    return end;
                }
            }
            Ok(n) => {
                if let Err(err) = write_all(dst, &buf[..n]).await {
                    return End::from_io(&err);
                }
                read.fetch_add(n as u64, Relaxed);
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return End::from_io(&err),
        }
    }
}
