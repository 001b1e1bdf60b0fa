//! One proxied socket, with the byte counts the handoff depends on.

use std::{io, sync::Arc};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::ebpf::Kernel;

/// A socket adopted by the [`Datapath`](super::Datapath).
pub struct Endpoint {
    stream: TcpStream,
    /// SO_COOKIE: the socket's key in every map.
    cookie: u64,
    /// The agent's connection id, for the kernel's log lines.
    conn: u64,
    /// Set while the socket is in the SOCKHASH; dropping the endpoint removes its handoff
    /// and counters, and closing its socket takes it out of the SOCKHASH.
    kernel: Option<Arc<Kernel>>,
    /// Bytes userspace has read from this socket.
    read: u64,
    /// Bytes userspace has written to this socket.
    written: u64,
}

impl Endpoint {
    pub(super) fn new(
        stream: TcpStream,
        cookie: u64,
        conn: u64,
        kernel: Option<Arc<Kernel>>,
    ) -> Self {
        Self {
            stream,
            cookie,
            conn,
            kernel,
            read: 0,
            written: 0,
        }
    }

    /// Reads what is available, like `read(2)`; 0 means EOF.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stream.read(buf).await?;
        self.read += n as u64;
        Ok(n)
    }

    /// Writes all of `buf`.
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.stream.write_all(buf).await?;
        self.written += buf.len() as u64;
        Ok(())
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// For half-closing; reading or writing through it bypasses the counts.
    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    /// The connection id given at adoption.
    pub fn conn(&self) -> u64 {
        self.conn
    }

    /// Whether the socket is in the SOCKHASH.
    pub fn in_kernel(&self) -> bool {
        self.kernel.is_some()
    }

    /// How many bytes the verdict passed to this socket's queue beyond `read_total`, the
    /// bytes userspace has read from it in all. Zero for a socket outside the SOCKHASH.
    pub fn unread_passed(&self, read_total: u64) -> u64 {
        self.kernel.as_ref().map_or(0, |kernel| {
            kernel
                .counters(self.cookie)
                .passed
                .saturating_sub(read_total)
        })
    }

    /// Bytes userspace has read from this socket so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// Bytes userspace has written to this socket so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }
}

impl Drop for Endpoint {
    /// The stream, dropped right after this, closes the socket, which leaves the SOCKHASH.
    fn drop(&mut self) {
        if let Some(kernel) = &self.kernel {
            kernel.forget(self.cookie);
        }
    }
}
