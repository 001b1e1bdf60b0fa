//! `cargo xtask setup`: installs what the build and tests need. Idempotent: each step checks
//! first and does nothing when its tool is already there.

use std::{path::PathBuf, process::Command};

use anyhow::Context as _;

use crate::exec::{exec, output};

/// Debian packages the end-to-end tests and benchmarks run against.
const APT_PACKAGES: &[&str] = &[
    "openssl",
    "curl",
    "socat",
    "nftables",
    "iproute2",
    "netcat-openbsd",
    "openssh-client",
    "openssh-server",
    "haproxy",
    "nginx",
    "libnginx-mod-stream",
    // systemd-analyze verify, for dist/systemd/sockgate.service (tests/tests/systemd.rs).
    "systemd",
    // A real Prometheus scrapes the admin endpoint, and promtool checks /metrics.
    "prometheus",
    // The HTTPS config server of tests/tests/e2e_source.rs (http.server wrapped in ssl).
    "python3",
];

/// The nightly toolchain that builds the eBPF crate (the only one on this machine kind).
const NIGHTLY: &str = "nightly";

pub fn run() -> anyhow::Result<()> {
    rust_src()?;
    bpf_linker()?;
    apt_packages()?;
    Ok(())
}

fn rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    exec(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
}

/// bpf-linker must link with exactly the LLVM that emitted the bitcode: nightly's own
/// libLLVM. It is built against a prefix of symlinks to that library and finds it at run time
/// through an rpath to the same prefix, so it keeps working in any later shell.
fn bpf_linker() -> anyhow::Result<()> {
    let works = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        return Ok(());
    }
    let sysroot =
        output(Command::new("rustup").args(["run", NIGHTLY, "rustc", "--print", "sysroot"]))?;
    let libdir = PathBuf::from(sysroot.trim()).join("lib");
    let libllvm = std::fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", libdir.display()))?;
    let home = std::env::var("HOME").context("HOME is not set")?;
    let prefix = PathBuf::from(home).join(".local/share/sockgate-llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so", libllvm.as_str()] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(libdir.join(&libllvm), &link)
            .with_context(|| format!("symlinking {}", link.display()))?;
    }
    exec(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--version", "^0.13", "--locked"])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", &prefix)
            .env(
                "RUSTFLAGS",
                format!("-C link-args=-Wl,-rpath,{}", prefix_lib.display()),
            ),
    )
}

fn apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask setup: installing {}", missing.join(" "));
    exec(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
