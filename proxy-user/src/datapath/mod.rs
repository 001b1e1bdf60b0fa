//! Moving a connection's bytes once the handshake is done.
//!
//! Sockets are adopted as [`Endpoint`]s right after accept or connect: on the sockmap path
//! that inserts them into the kernel's SOCKHASH before anything is read, so every byte goes
//! through the verdict and is counted (DESIGN.md, "a handoff that cannot reorder"). The
//! handshake is relayed through the endpoints, then [`Datapath::splice`] hands the pair to
//! one of three paths:
//! - [`sockmap`]: the kernel redirects skbs between the sockets; userspace only waits for FIN
//!   and RST.
//! - [`pipe`]: splice(2) through a pipe, when the sockets are not in the SOCKHASH.
//! - [`copy`]: a userspace copy, forced, or when only one socket made it into the SOCKHASH
//!   (recv() is the only correct reader of a socket in the map).

mod copy;
mod direction;
mod endpoint;
mod pipe;
mod sockmap;

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

pub use direction::End;
use direction::Moved;
pub use endpoint::Endpoint;
use tokio::{net::TcpStream, sync::watch};

use crate::{
    ebpf::{Kernel, LoadError},
    pulse::{IDLE_TICKS, Phase, Pulse},
    sockopt::{self, SendBuffer},
};

/// Warns once per process that send buffers could not be forced.
static CAPPED_ONCE: std::sync::Once = std::sync::Once::new();

/// A load error with its root cause (aya's `Display` leaves out the errno), and what to
/// grant when the kernel said EPERM.
fn explain(err: &LoadError) -> String {
    let mut root: &dyn std::error::Error = err;
    while let Some(source) = root.source() {
        root = source;
    }
    let mut text = err.to_string();
    if !std::ptr::addr_eq(root, err) {
        text = format!("{text}: {root}");
    }
    let denied = root
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.raw_os_error() == Some(libc::EPERM));
    // Without CAP_PERFMON the verifier refuses bpf_probe_read_kernel (EINVAL).
    if denied || text.contains("cannot use helper") {
        text.push_str(
            "; the sockmap datapath needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, see SECURITY.md",
        );
    }
    text
}

/// Which path connections should use (the config's `datapath`, `sockgate relay --datapath`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// sockmap when the kernel program is loaded and both sockets enter the map, else splice.
    #[default]
    Auto,
    /// Like auto, but the agent refuses to start without the kernel program.
    Sockmap,
    Splice,
    Copy,
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

/// Socket buffer sizing. A sockmap redirect can only move what fits in the peer's send
/// buffer, so small buffers starve it (0.27x direct with defaults, DESIGN.md).
pub const DEFAULT_SEND_BUFFER: usize = 32 << 20;

/// Adopts sockets and splices pairs of them.
pub struct Datapath {
    /// Set when the kernel program is loaded and the mode allows it.
    kernel: Option<Arc<Kernel>>,
    mode: Mode,
    /// SO_SNDBUF for every adopted socket; 0 leaves the kernel default.
    send_buffer: usize,
}

impl Datapath {
    /// Loads the kernel program when `mode` wants it (and starts its log reader, so this
    /// needs a tokio runtime). `Auto` falls back to splice(2) with a warning; `Sockmap`
    /// fails instead.
    pub fn load(mode: Mode, send_buffer: usize) -> Result<Self, LoadError> {
        let kernel = match mode {
            Mode::Splice | Mode::Copy => None,
            Mode::Auto | Mode::Sockmap => match Kernel::load() {
                Ok(kernel) => {
                    kernel.spawn_log_reader().map_err(LoadError::LogReader)?;
                    Some(Arc::new(kernel))
                }
                Err(err) if mode == Mode::Sockmap => return Err(err),
                Err(err) => {
                    log::warn!(
                        "eBPF program not loaded ({}); relaying with splice(2)",
                        explain(&err)
                    );
                    None
                }
            },
        };
        Ok(Self::new(kernel, mode, send_buffer))
    }

    pub fn new(kernel: Option<Arc<Kernel>>, mode: Mode, send_buffer: usize) -> Self {
        let kernel = kernel.filter(|_| matches!(mode, Mode::Auto | Mode::Sockmap));
        Self {
            kernel,
            mode,
            send_buffer,
        }
    }

    /// The configured mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The path connections take when both sockets can use it: what `auto` resolved to.
    pub fn effective(&self) -> Path {
        match (&self.kernel, self.mode) {
            (Some(_), _) => Path::Sockmap,
            (None, Mode::Copy) => Path::Copy,
            (None, _) => Path::Splice,
        }
    }

    /// The kernel program, when this datapath uses it.
    pub fn kernel(&self) -> Option<&Arc<Kernel>> {
        self.kernel.as_ref()
    }

    /// Takes a freshly accepted or connected socket of connection `conn`, before anything
    /// is read from it.
    pub fn adopt(&self, stream: TcpStream, conn: u64) -> Endpoint {
        if self.send_buffer > 0 {
            match sockopt::set_send_buffer(&stream, self.send_buffer) {
                Ok(SendBuffer::Forced) => {}
                Ok(SendBuffer::Capped) => CAPPED_ONCE.call_once(|| {
                    log::warn!(
                        "SO_SNDBUFFORCE refused (it needs CAP_NET_ADMIN): send buffers stay \
                         at net.core.wmem_max, which slows relaying"
                    );
                }),
                Err(err) => log::debug!("SO_SNDBUF: {err}"),
            }
        }
        let _ = stream.set_nodelay(true);
        let cookie = sockopt::cookie(&stream).unwrap_or(0);
        let kernel = self.kernel.as_ref().and_then(|kernel| {
            if let Err(err) = kernel.insert(cookie, &stream) {
                log::debug!("conn {conn}: sock {cookie} not inserted ({err}); falling back");
                return None;
            }
            // The kick makes the verdict see bytes queued before the insert. It cannot fail
            // on a socket that was just inserted.
            let _ = sockopt::kick(&stream);
            Some(Arc::clone(kernel))
        });
        Endpoint::new(stream, cookie, conn, kernel)
    }

    /// Moves bytes both ways until both directions end, until no byte moved either way for
    /// [`IDLE_TICKS`] of `pulse`'s ticks, or until `pulse` says `Closed`. Then closes both
    /// sockets, with a reset unless both directions ended with FIN; dropping the endpoints
    /// frees their map entries.
    ///
    /// Every relayed connection holds this future while it lasts, so it is kept small: it
    /// waits on `pulse` alone (no timer of its own), and the body is an async block, not an
    /// async fn, which would store its arguments twice (rust-lang/rust#62958).
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn stores its arguments twice (rust-lang/rust#62958)"
    )]
    pub fn splice<'a>(
        &'a self,
        client: Endpoint,
        upstream: Endpoint,
        pulse: &'a mut watch::Receiver<Pulse>,
    ) -> impl Future<Output = Outcome> + 'a {
        async move {
            // Until both directions end with FIN, any close resets: if the agent dies, each
            // peer sees a reset rather than a clean end of a truncated stream.
            direction::reset_on_close(client.stream(), upstream.stream());
            let path = match (&self.kernel, client.in_kernel(), upstream.in_kernel()) {
                (Some(_), true, true) => Path::Sockmap,
                (_, false, false) if self.mode != Mode::Copy => Path::Splice,
                _ => Path::Copy,
            };
            let moved = Moved {
                up: AtomicU64::new(client.bytes_read()),
                down: AtomicU64::new(upstream.bytes_read()),
            };
            // Boxed: only the chosen path's state is allocated, not room for the largest.
            let run: Pin<Box<dyn Future<Output = End> + Send + '_>> = match (path, &self.kernel) {
                (Path::Sockmap, Some(kernel)) => {
                    Box::pin(sockmap::run(kernel, &client, &upstream, &moved))
                }
                (Path::Splice, _) => Box::pin(pipe::run(&client, &upstream, &moved)),
                _ => Box::pin(copy::run(&client, &upstream, &moved)),
            };
            let activity = || {
                let mut total = moved.up.load(Relaxed) + moved.down.load(Relaxed);
                if let Some(kernel) = &self.kernel {
                    for cookie in [client.cookie(), upstream.cookie()] {
                        let c = kernel.counters(cookie);
                        total += c.passed + c.redirected;
                    }
                }
                total
            };
            let end = tokio::select! {
                end = run => end,
                end = heed(pulse, activity) => end,
            };
            if end == End::Fin {
                let _ = sockopt::clear_linger(client.stream());
                let _ = sockopt::clear_linger(upstream.stream());
            }
            let mut bytes_up = moved.up.load(Relaxed);
            let mut bytes_down = moved.down.load(Relaxed);
            let mut repeats_cut = 0;
            if let (Path::Sockmap, Some(kernel)) = (path, &self.kernel) {
                let (up, down) = (
                    kernel.counters(client.cookie()),
                    kernel.counters(upstream.cookie()),
                );
                bytes_up += up.redirected;
                bytes_down += down.redirected;
                repeats_cut = up.overlap + down.overlap;
            }
            drop((client, upstream));
            Outcome {
                bytes_up,
                bytes_down,
                end,
                path,
                repeats_cut,
            }
        }
    }
}

/// Resolves with [`End::Shutdown`] once `pulse` says `Closed`, or with [`End::Timeout`]
/// once `activity` (bytes moved either way, by userspace or the verdict) has not changed
/// for [`IDLE_TICKS`] ticks. It reads `activity` only on ticks, so a short connection pays
/// no map lookups here.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice (rust-lang/rust#62958)"
)]
fn heed<'a>(
    pulse: &'a mut watch::Receiver<Pulse>,
    activity: impl Fn() -> u64 + 'a,
) -> impl Future<Output = End> + 'a {
    async move {
        let (mut last, mut quiet) = (u64::MAX, 0);
        let first = *pulse.borrow_and_update();
        let (mut tick, mut epoch) = (first.tick, first.epoch);
        loop {
            let now = *pulse.borrow_and_update();
            if now.phase == Phase::Closed {
                return End::Shutdown;
            }
            if now.epoch != epoch {
                // A reload changed the period: count afresh, in ticks of the new one.
                (epoch, tick, quiet) = (now.epoch, now.tick, 0);
            } else if now.tick != tick {
                // Ticks missed while this task was busy count too.
                let ticks = now.tick.wrapping_sub(tick);
                tick = now.tick;
                let moved = activity();
                if moved != last {
                    (last, quiet) = (moved, 0);
                } else {
                    quiet += ticks;
                    if quiet >= IDLE_TICKS {
                        return End::Timeout;
                    }
                }
            }
            if pulse.changed().await.is_err() {
                // The agent is gone (or this is a plain relay): nothing ends the connection.
                return std::future::pending().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::Cell, future::poll_fn, task::Poll};

    use super::*;

    /// Polls `fut` once, without blocking.
    async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Option<F::Output> {
        poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut *fut).poll(cx) {
                Poll::Ready(v) => Some(v),
                Poll::Pending => None,
            })
        })
        .await
    }

    fn bump(tx: &watch::Sender<Pulse>, ticks: u32) {
        tx.send_modify(|p| p.tick = p.tick.wrapping_add(ticks));
    }

    #[tokio::test]
    async fn quiet_ticks_time_out_and_bytes_restart_the_count() {
        let (tx, mut rx) = watch::channel(Pulse::default());
        let moved = Cell::new(0u64);
        let mut heed = Box::pin(heed(&mut rx, || moved.get()));
        assert_eq!(poll_once(&mut heed).await, None);
        // The first tick only takes the count.
        bump(&tx, 1);
        assert_eq!(poll_once(&mut heed).await, None);
        for _ in 1..IDLE_TICKS {
            bump(&tx, 1);
            assert_eq!(poll_once(&mut heed).await, None);
        }
        moved.set(1);
        bump(&tx, 1);
        assert_eq!(poll_once(&mut heed).await, None);
        // Missed ticks count: the task saw one change for seven ticks.
        bump(&tx, IDLE_TICKS - 1);
        assert_eq!(poll_once(&mut heed).await, None);
        bump(&tx, 1);
        assert_eq!(poll_once(&mut heed).await, Some(End::Timeout));
    }

    #[tokio::test]
    async fn closed_ends_and_a_draining_agent_does_not() {
        let (tx, mut rx) = watch::channel(Pulse::default());
        let mut heed = Box::pin(heed(&mut rx, || 0));
        tx.send_modify(|p| p.phase = Phase::Draining);
        assert_eq!(poll_once(&mut heed).await, None);
        tx.send_modify(|p| p.phase = Phase::Closed);
        assert_eq!(poll_once(&mut heed).await, Some(End::Shutdown));
    }

    #[tokio::test]
    async fn a_new_epoch_restarts_the_count() {
        let (tx, mut rx) = watch::channel(Pulse::default());
        let mut heed = Box::pin(heed(&mut rx, || 0));
        assert_eq!(poll_once(&mut heed).await, None);
        // The first tick takes the count, the next ones are quiet.
        bump(&tx, 1);
        assert_eq!(poll_once(&mut heed).await, None);
        bump(&tx, IDLE_TICKS - 1);
        assert_eq!(poll_once(&mut heed).await, None);
        tx.send_modify(|p| p.epoch += 1);
        assert_eq!(poll_once(&mut heed).await, None);
        bump(&tx, IDLE_TICKS - 1);
        assert_eq!(poll_once(&mut heed).await, None);
        bump(&tx, 1);
        assert_eq!(poll_once(&mut heed).await, Some(End::Timeout));
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_agent_nothing_ends_it() {
        let mut rx = crate::pulse::never();
        let heed = heed(&mut rx, || 0);
        let waited = tokio::time::timeout(std::time::Duration::from_secs(3600), heed).await;
        assert!(waited.is_err(), "ended with {waited:?}");
    }

    /// What `splice`'s future measured before the datapath was reshaped (issue 16).
    const SPLICE_FUTURE_BYTES: usize = 440;

    #[tokio::test]
    async fn the_relayed_future_does_not_grow() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connected = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let datapath = Datapath::new(None, Mode::Copy, 0);
        let (client, upstream) = (datapath.adopt(accepted, 1), datapath.adopt(connected, 1));
        let mut pulse = crate::pulse::never();
        let relayed = datapath.splice(client, upstream, &mut pulse);
        let size = std::mem::size_of_val(&relayed);
        assert!(
            size <= SPLICE_FUTURE_BYTES,
            "splice's future grew from {SPLICE_FUTURE_BYTES} to {size} bytes; every relayed \
             connection holds it"
        );
    }
}
