//! What the kernel holds for one direction of a relayed connection, read from the relay's
//! own sockets: the in-process relay's fds belong to the test process.

use std::{
    io,
    mem::ManuallyDrop,
    net::{SocketAddr, TcpStream},
    os::fd::{FromRawFd as _, RawFd},
};

use proxy_user::sockopt;

/// One of this process's TCP sockets, found by its addresses and re-checked before every
/// read, so a closed and reused fd number is never misread.
pub struct Socket {
    fd: RawFd,
    local: SocketAddr,
    peer: SocketAddr,
}

impl Socket {
    /// The first connected TCP socket of this process whose (local, peer) pass `want`.
    pub fn find(want: impl Fn(SocketAddr, SocketAddr) -> bool) -> Option<Self> {
        let fds = std::fs::read_dir("/proc/self/fd").ok()?;
        fds.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
            .filter_map(|fd| {
                let (local, peer) = addrs(fd)?;
                want(local, peer).then_some(Self { fd, local, peer })
            })
            .next()
    }

    /// Runs `f` on the socket if the fd still is this socket.
    fn with<T>(&self, f: impl FnOnce(&TcpStream) -> io::Result<T>) -> io::Result<T> {
        if addrs(self.fd) != Some((self.local, self.peer)) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "socket closed"));
        }
        // SAFETY: the fd is open (checked above); ManuallyDrop never closes it.
        let stream = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(self.fd) });
        f(&stream)
    }
}

/// (local, peer) of a connected TCP socket; None for anything else.
fn addrs(fd: RawFd) -> Option<(SocketAddr, SocketAddr)> {
    // SAFETY: as in `Socket::with`; an fd that is not a socket fails the calls below.
    let stream = ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(fd) });
    Some((stream.local_addr().ok()?, stream.peer_addr().ok()?))
}

/// One direction's kernel memory, in payload bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Held {
    /// Received by `src` but not yet acknowledged by `dst`'s peer: `src`'s receive queue,
    /// the psock queue between them, `dst`'s send queue (and at most a userspace buffer).
    pub bytes: u64,
    /// `src`'s receive buffer plus `dst`'s send buffer, as the kernel reports them.
    pub buffers: u64,
}

/// Reads what the relay holds between `src` (where the bytes come in) and `dst`.
pub fn held(src: &Socket, dst: &Socket) -> io::Result<Held> {
    let received = src.with(|s| Ok(sockopt::tcp_info(s)?.bytes_received))?;
    let rcvbuf = src.with(|s| sockopt::buffer(s, libc::SO_RCVBUF))?;
    let acked = dst.with(|s| Ok(sockopt::tcp_info(s)?.bytes_acked))?;
    let sndbuf = dst.with(|s| sockopt::buffer(s, libc::SO_SNDBUF))?;
    Ok(Held {
        bytes: received.saturating_sub(acked),
        buffers: rcvbuf + sndbuf,
    })
}
