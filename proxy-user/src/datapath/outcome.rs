//! What a spliced connection reports: how it ended, which path carried it, and the bytes
//! userspace read on the way; while it runs, its byte counts so far ([`LiveCounts`]).

use std::{
    fmt, io,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use crate::ebpf::Kernel;

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

/// Bytes userspace read from each side in all, handshake included; shared with the
/// directions so the count survives a connection stopped mid-way.
pub(super) struct BytesRead {
    /// From the client.
    pub up: AtomicU64,
    /// From the upstream.
    pub down: AtomicU64,
}

/// A relayed connection's byte counts as they grow: what userspace read from each side,
/// plus, on the sockmap path, what the verdict redirected. The close line's counts are
/// its last reading; the admin endpoint reads it while the connection runs.
pub struct LiveCounts {
    pub(super) read: BytesRead,
    /// The verdict's counters, on the sockmap path, and the client's and upstream's cookies.
    pub(super) kernel: Option<(Arc<Kernel>, [u64; 2])>,
}

impl LiveCounts {
    /// Bytes from the client and from the upstream so far, handshake included. Once the
    /// connection is torn down the kernel's part reads 0.
    pub fn bytes(&self) -> (u64, u64) {
        let mut up = self.read.up.load(Relaxed);
        let mut down = self.read.down.load(Relaxed);
        if let Some((kernel, [client, upstream])) = &self.kernel {
            up += kernel.counters(*client).redirected;
            down += kernel.counters(*upstream).redirected;
        }
        (up, down)
    }
}

/// The path that actually carried a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    Sockmap,
    Splice,
    Copy,
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Path::Sockmap => "sockmap",
            Path::Splice => "splice",
            Path::Copy => "copy",
        })
    }
}

/// How a spliced connection went.
#[derive(Debug)]
pub struct Outcome {
    /// Bytes from the client to the upstream, handshake included.
    pub bytes_up: u64,
    /// Bytes from the upstream to the client, handshake included.
    pub bytes_down: u64,
    pub end: End,
    pub path: Path,
    /// Bytes the verdict cut because the kernel handed them over twice, both ways.
    pub repeats_cut: u64,
}
