//! The kernel's TCP socket-buffer memory, sampled during a transfer: the `mem` field of the
//! `TCP:` line of /proc/net/sockstat, in pages, which counts every TCP socket's queued
//! send and receive buffers on the machine. Pages a splice(2) pipe holds are not in it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

/// 4 KiB: the unit of sockstat's `mem` on x86-64 and arm64 with 4 KiB pages.
const PAGE: u64 = 4096;

/// TCP memory in bytes now.
pub fn tcp_mem() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat")?;
    let pages = text
        .lines()
        .find_map(|l| l.strip_prefix("TCP:"))
        .and_then(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let at = fields.iter().position(|f| *f == "mem")?;
            fields.get(at + 1)?.parse::<u64>().ok()
        })
        .ok_or_else(|| anyhow::anyhow!("no TCP mem in /proc/net/sockstat"))?;
    Ok(pages * PAGE)
}

/// TCP sockets in use now (the `inuse` field).
pub fn tcp_inuse() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat")?;
    text.lines()
        .find_map(|l| l.strip_prefix("TCP: inuse "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no TCP inuse in /proc/net/sockstat"))
}

/// Samples [`tcp_mem`] every 5 ms until stopped; reports the peak above the first sample.
pub struct Sampler {
    base: u64,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Sampler {
    pub fn start() -> anyhow::Result<Self> {
        let base = tcp_mem()?;
        let peak = Arc::new(AtomicU64::new(base));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok(now) = tcp_mem() {
                    p.fetch_max(now, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(5));
            }
        });
        Ok(Self {
            base,
            peak,
            stop,
            thread,
        })
    }

    /// Stops and returns the peak extra bytes.
    pub fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.peak.load(Ordering::Relaxed).saturating_sub(self.base)
    }
}
