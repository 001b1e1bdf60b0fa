//! Moving a connection's bytes once the handshake is done.
//!
//! Sockets are adopted as [`Endpoint`]s right after accept or connect: on the sockmap path
//! that inserts them into the kernel's SOCKHASH before anything is read, so every byte goes
//! through the verdict and is counted (ARCHITECTURE.md, "The handoff: go and passed"). The
//! handshake is relayed through the endpoints, then [`Datapath::splice`] hands the pair to
//! one of three paths:
//! - [`sockmap`]: the kernel redirects skbs between the sockets; userspace only waits for FIN
//!   and RST.
//! - [`pipe`]: splice(2) through a pipe, when the sockets are not in the SOCKHASH.
//! - [`copy`]: a userspace copy, forced, or when only one socket made it into the SOCKHASH
//!   (recv() is the only correct reader of a socket in the map).
//!
//! All three end a direction and close the sockets through [`fin`], and report an
//! [`Outcome`].

mod copy;
mod endpoint;
mod fin;
mod outcome;
mod pair;
mod pipe;
mod sockmap;

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

pub use endpoint::Endpoint;
use outcome::BytesRead;
pub use outcome::{End, LiveCounts, Outcome, Path};
use tokio::{net::TcpStream, sync::watch};

use crate::{
    ebpf::{Kernel, LoadError},
    pulse::{Pulse, Stop, idle_or_closed},
    sockopt::{self, SendBuffer},
};

/// Warns once per process that send buffers could not be forced.
static CAPPED_ONCE: std::sync::Once = std::sync::Once::new();

/// A load error with its root cause (aya's `Display` leaves out the errno), and what to
/// grant when the kernel said EPERM.
fn explain(err: &LoadError) -> String {
    let mut text = err.with_root_cause();
    if err.lacks_capabilities() {
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

/// Told once, when [`Datapath::splice_watched`] has chosen a connection's path.
pub type Watch<'a> = Box<dyn FnOnce(Path, Arc<LiveCounts>) + Send + 'a>;

/// Socket buffer sizing. A sockmap redirect can only move what fits in the peer's send
/// buffer, so small buffers starve it (0.27x direct with defaults; ARCHITECTURE.md, "Kernel
/// facts the code depends on").
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
            // The kick makes the verdict see bytes queued before the insert (ARCHITECTURE.md,
            // "Kernel facts the code depends on"). It cannot fail
            // on a socket that was just inserted.
            let _ = sockopt::kick(&stream);
            Some(Arc::clone(kernel))
        });
        Endpoint::new(stream, cookie, conn, kernel)
    }

    /// Moves bytes both ways until both directions end, until no byte moved either way for
    /// [`IDLE_TICKS`](crate::pulse::IDLE_TICKS) of `pulse`'s ticks, or until `pulse` says
    /// `Closed`. Then closes both sockets, with a reset unless both directions ended with
    /// FIN; dropping the endpoints frees their map entries.
    ///
    /// Every relayed connection holds this future while it lasts, so it is kept small
    /// ([`crate::task_size`]): it waits on `pulse` alone, with no timer of its own.
    pub fn splice<'a>(
        &'a self,
        client: Endpoint,
        upstream: Endpoint,
        pulse: &'a mut watch::Receiver<Pulse>,
    ) -> impl Future<Output = Outcome> + 'a {
        self.splice_watched(client, upstream, pulse, None)
    }

    /// [`Datapath::splice`], telling `watch` at once the path it chose, with the
    /// connection's [`LiveCounts`] byte counts (for the admin endpoint).
    pub fn splice_watched<'a>(
        &'a self,
        client: Endpoint,
        upstream: Endpoint,
        pulse: &'a mut watch::Receiver<Pulse>,
        watch: Option<Watch<'a>>,
    ) -> impl Future<Output = Outcome> + 'a {
        // Chosen before the future is built, so that it holds neither `watch` nor room
        // for what goes into `live`.
        let path = match (&self.kernel, client.in_kernel(), upstream.in_kernel()) {
            (Some(_), true, true) => Path::Sockmap,
            (_, false, false) if self.mode != Mode::Copy => Path::Splice,
            _ => Path::Copy,
        };
        let kernel = match (path, &self.kernel) {
            (Path::Sockmap, Some(kernel)) => {
                Some((Arc::clone(kernel), [client.cookie(), upstream.cookie()]))
            }
            _ => None,
        };
        // Shared, so that `watch` can read the counts while the connection runs.
        let live = Arc::new(LiveCounts {
            read: BytesRead {
                up: AtomicU64::new(client.bytes_read()),
                down: AtomicU64::new(upstream.bytes_read()),
            },
            kernel,
        });
        if let Some(watch) = watch {
            watch(path, Arc::clone(&live));
        }
        async move {
            fin::reset_on_close(client.stream(), upstream.stream());
            let read = &live.read;
            // A box holds only the chosen path's state; the future would keep room for the
            // largest.
            let run: Pin<Box<dyn Future<Output = End> + Send + '_>> = match (path, &self.kernel) {
                (Path::Sockmap, Some(kernel)) => {
                    Box::pin(sockmap::run(kernel, &client, &upstream, read))
                }
                (Path::Splice, _) => Box::pin(pipe::run(&client, &upstream, read)),
                _ => Box::pin(copy::run(&client, &upstream, read)),
            };
            let activity = || {
                let mut total = read.up.load(Relaxed) + read.down.load(Relaxed);
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
                stop = idle_or_closed(pulse, activity) => match stop {
                    Stop::Idle => End::Timeout,
                    Stop::Closed => End::Shutdown,
                },
            };
            if end == End::Fin {
                fin::fin_on_close(client.stream(), upstream.stream());
            }
            let mut bytes_up = read.up.load(Relaxed);
            let mut bytes_down = read.down.load(Relaxed);
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
