//! The kernel program: loading and attaching it, its typed maps, and the aya-log reader.

use std::{os::fd::AsRawFd, sync::Mutex};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, MapError, SockHash},
    programs::{ProgramError, SkSkb},
};
use aya_log::EbpfLogger;
use proxy_common::{COUNTERS_MAP, HANDOFF_MAP, Handoff, SOCK_LAYOUT, SOCKS_MAP, SockCounters};
use tokio::io::unix::AsyncFd;

/// The object built by proxy-user's build script.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/proxy-ebpf"));

/// Why the kernel program could not be used; the caller falls back to splice(2).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the eBPF object is empty (built with AYA_BUILD_SKIP=1)")]
    NoObject,
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the eBPF object has no map or program named {0}")]
    Missing(&'static str),
    #[error("map {0}: {1}")]
    Map(&'static str, MapError),
    #[error("stream verdict program: {0}")]
    Program(#[from] ProgramError),
    #[error("aya-log: {0}")]
    Log(#[from] aya_log::Error),
    #[error("aya-log reader: {0}")]
    LogReader(std::io::Error),
    #[error("the verdict cannot read this kernel's skbs or sockets: {0}")]
    Layout(#[from] crate::kernel_layout::LayoutError),
}

impl LoadError {
    /// The error with its root cause, which aya's `Display` leaves out (the errno).
    pub fn with_root_cause(&self) -> String {
        let mut root: &dyn std::error::Error = self;
        while let Some(source) = root.source() {
            root = source;
        }
        if std::ptr::addr_eq(root, self) {
            self.to_string()
        } else {
            format!("{self}: {root}")
        }
    }

    /// Whether the kernel refused for lack of capabilities: EPERM, or the verifier refusing
    /// `bpf_probe_read_kernel` without CAP_PERFMON (EINVAL, "cannot use helper").
    pub fn lacks_capabilities(&self) -> bool {
        let mut root: &dyn std::error::Error = self;
        while let Some(source) = root.source() {
            root = source;
        }
        let denied = root
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.raw_os_error() == Some(libc::EPERM));
        denied || self.with_root_cause().contains("cannot use helper")
    }
}

/// Entry counts of the maps, for leak checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
pub struct MapCounts {
    pub socks: usize,
    pub handoff: usize,
    pub counters: usize,
}

/// The loaded, attached verdict program and its maps. Dropping it detaches the program and
/// frees the maps.
pub struct Kernel {
    /// SOCKHASH of every proxied socket; the verdict is attached to it.
    socks: Mutex<SockHash<MapData, u64>>,
    /// `cookie -> Handoff`, written only by us.
    handoff: Mutex<HashMap<MapData, u64, Handoff>>,
    /// `cookie -> SockCounters`, created and deleted by us, updated by the verdict.
    counters: Mutex<HashMap<MapData, u64, SockCounters>>,
    /// aya-log's ring buffer, until the reader task takes it.
    logger: Mutex<Option<EbpfLogger<&'static dyn log::Log>>>,
    /// Owns the program and its link; dropped last.
    _ebpf: Mutex<Ebpf>,
}

const VERDICT: &str = "sockgate_verdict";

impl Kernel {
    /// Loads the object and attaches the stream verdict to the SOCKHASH.
    pub fn load() -> Result<Self, LoadError> {
        if OBJECT.is_empty() {
            return Err(LoadError::NoObject);
        }
        // Without it the verdict can neither cut repeated bytes nor bound what it queues.
        let layout = crate::kernel_layout::read()?;
        let mut ebpf = EbpfLoader::new()
            .override_global(SOCK_LAYOUT, &layout, true)
            .load(OBJECT)?;
        let logger = EbpfLogger::init(&mut ebpf)?;
        let socks: SockHash<MapData, u64> = take(&mut ebpf, SOCKS_MAP)?;
        let handoff = take(&mut ebpf, HANDOFF_MAP)?;
        let counters = take(&mut ebpf, COUNTERS_MAP)?;
        let prog: &mut SkSkb = ebpf
            .program_mut(VERDICT)
            .ok_or(LoadError::Missing(VERDICT))?
            .try_into()?;
        prog.load()?;
        prog.attach(socks.fd())?;
        Ok(Self {
            socks: Mutex::new(socks),
            handoff: Mutex::new(handoff),
            counters: Mutex::new(counters),
            logger: Mutex::new(Some(logger)),
            _ebpf: Mutex::new(ebpf),
        })
    }

    /// Starts the task that forwards the kernel's aya-log records to our logger. Needs a
    /// tokio runtime; a second call does nothing.
    pub fn spawn_log_reader(&self) -> std::io::Result<()> {
        let Some(logger) = lock(&self.logger).take() else {
            return Ok(());
        };
        // SAFETY: the logger owns the ring buffer fd and keeps it open while registered.
        let mut fd =
            unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)? };
        tokio::spawn(async move {
            loop {
                let Ok(mut guard) = fd.readable_mut().await else {
                    return;
                };
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        });
        Ok(())
    }

    /// Registers a socket: zeroed counters first, so the verdict counts its very first skb,
    /// then the SOCKHASH. Fails for a socket that is not ESTABLISHED (EOPNOTSUPP).
    pub fn insert(&self, cookie: u64, fd: &impl AsRawFd) -> Result<(), MapError> {
        lock(&self.counters).insert(cookie, SockCounters::default(), 0)?;
        if let Err(err) = lock(&self.socks).insert(cookie, fd.as_raw_fd(), 0) {
            let _ = lock(&self.counters).remove(&cookie);
            return Err(err);
        }
        Ok(())
    }

    /// Tells the verdict to redirect `cookie`'s bytes to `handoff.peer` once it has passed
    /// exactly `handoff.go` bytes.
    pub fn set_handoff(&self, cookie: u64, handoff: Handoff) -> Result<(), MapError> {
        lock(&self.handoff).insert(cookie, handoff, 0)
    }

    /// The verdict's counters for a socket; zero when it has none.
    pub fn counters(&self, cookie: u64) -> SockCounters {
        lock(&self.counters).get(&cookie, 0).unwrap_or_default()
    }

    /// Removes a socket's handoff and counters, for a socket about to be closed: closing it
    /// removes it from the SOCKHASH (sock_map_close, net/core/sock_map.c), which saves a
    /// syscall per socket. Missing entries are fine.
    pub fn forget(&self, cookie: u64) {
        let _ = lock(&self.handoff).remove(&cookie);
        let _ = lock(&self.counters).remove(&cookie);
    }

    /// How many entries each map holds.
    pub fn map_counts(&self) -> MapCounts {
        MapCounts {
            socks: lock(&self.socks).keys().count(),
            handoff: lock(&self.handoff).keys().count(),
            counters: lock(&self.counters).keys().count(),
        }
    }
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, LoadError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(LoadError::Missing(name))?;
    T::try_from(map).map_err(|e| LoadError::Map(name, e))
}

/// Map handles are only used for single syscalls, so a poisoned lock holds no broken state.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
