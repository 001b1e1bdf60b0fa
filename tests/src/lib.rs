//! Helpers for sockgate's end-to-end tests: network namespaces, hash-checking peers and
//! an in-process relay.
//!
//! Every test runs in a fresh network namespace, so tests never share ports, TIME_WAIT
//! state or traffic with each other or the host. They need root, and they panic with a
//! message when something they need is missing: a skipped test is never a pass.

pub mod admin;
pub mod agent;
pub mod events;
pub mod held;
pub mod netns;
pub mod peers;
pub mod process;
pub mod programs;
pub mod relay;
pub mod tempdir;
pub mod verify;

/// A fast, seeded pseudo-random byte stream (xorshift64*), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// Open file descriptors of this process, with what each points to.
pub fn open_fds() -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .expect("reading /proc/self/fd")
        .filter_map(|e| e.ok())
        .map(|e| {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            format!(
                "{} -> {}",
                e.file_name().to_string_lossy(),
                target.display()
            )
        })
        .collect()
}

/// Fails the test unless running as root: the BPF and netns tests cannot run otherwise.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests need root (BPF, network namespaces); run them with `cargo xtask test` as root"
    );
}

/// The `sockgate` binary next to this test executable (`cargo xtask test` builds it).
pub fn sockgate_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps")
        .join("sockgate");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p proxy-user` (cargo xtask test does)",
        bin.display()
    );
    bin
}
