//! splice(2) through a pipe: zero-copy, but every chunk costs two syscalls and a wakeup.

use std::{
    future::poll_fn,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    pin::pin,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use tokio::{io::Interest, net::TcpStream};

use super::{BytesRead, End, Endpoint, fin, pair::both};

/// Pipe capacity; also the most one splice moves. 1 MiB is the default pipe-max-size.
const PIPE_SIZE: usize = 1 << 20;

pub(super) async fn run(client: &Endpoint, upstream: &Endpoint, read: &BytesRead) -> End {
    both(
        pin!(direction(client.stream(), upstream.stream(), &read.up)),
        pin!(direction(upstream.stream(), client.stream(), &read.down)),
    )
    .await
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into the array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds were just created and are owned by nobody else.
        let pipe = unsafe {
            Pipe {
                read: OwnedFd::from_raw_fd(fds[0]),
                write: OwnedFd::from_raw_fd(fds[1]),
            }
        };
        // Best effort: a smaller pipe only means more syscalls.
        // SAFETY: fcntl on a valid fd.
        unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, PIPE_SIZE as libc::c_int) };
        Ok(pipe)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain syscall on valid fds with null offsets (sockets and pipes have none).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `read` starts at what the handshake read from `src`.
async fn direction(src: &TcpStream, dst: &TcpStream, read: &AtomicU64) -> End {
    let pipe = match Pipe::new() {
        Ok(pipe) => pipe,
        Err(err) => return End::from_io(&err),
    };
    loop {
        let filled = match ready_io(src, Interest::READABLE, || {
            splice(src.as_raw_fd(), pipe.write.as_raw_fd(), PIPE_SIZE)
        })
        .await
        {
            // Neither socket is in the SOCKHASH: no passed bytes can follow the EOF, and
            // none were redirected.
            Ok(0) => return fin::shut_down(dst),
            Ok(n) => n,
            Err(err) => return End::from_io(&err),
        };
        let mut left = filled;
        while left > 0 {
            match ready_io(dst, Interest::WRITABLE, || {
                splice(pipe.read.as_raw_fd(), dst.as_raw_fd(), left)
            })
            .await
            {
                Ok(n) => left -= n,
                Err(err) => return End::from_io(&err),
            }
        }
        read.fetch_add(filled as u64, Relaxed);
    }
}

/// `stream.async_io(interest, op)`, but waiting with `poll_read_ready`/`poll_write_ready`,
/// which keep the waker in the socket's registration: `async_io` holds a waiter in its
/// future, and every idle connection holds two of these. Each socket here has one reader
/// (its own direction) and one writer (the other), as those single wakers require.
async fn ready_io<R>(
    stream: &TcpStream,
    interest: Interest,
    mut op: impl FnMut() -> io::Result<R>,
) -> io::Result<R> {
    loop {
        poll_fn(|cx| {
            if interest.is_readable() {
                stream.poll_read_ready(cx)
            } else {
                stream.poll_write_ready(cx)
            }
        })
        .await?;
        match stream.try_io(interest, &mut op) {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            result => return result,
        }
    }
}
