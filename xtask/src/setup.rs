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

/// tests/tests/manifests.rs validates deploy/kubernetes/ with it, offline: the package
/// bundles the schemas. Pinned, so the Kubernetes versions it bundles stay put.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// The nightly toolchain that builds the eBPF crate (the only one on this machine kind).
const NIGHTLY: &str = "nightly";

pub fn run() -> anyhow::Result<()> {
    rust_src()?;
    bpf_linker()?;
    apt_packages()?;
    kubernetes_validate()?;
    cargo_deb()?;
    Ok(())
}

/// Whether `tool --version` runs and exits 0.
fn works(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn kubernetes_validate() -> anyhow::Result<()> {
    if works("kubernetes-validate") {
        return Ok(());
    }
    exec(Command::new("python3").args(["-m", "pip", "install", KUBERNETES_VALIDATE]))
}

/// `cargo xtask dist` builds the Debian package with it.
fn cargo_deb() -> anyhow::Result<()> {
    let installed = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if installed {
        return Ok(());
    }
    // 3.x: the metadata uses its systemd-units keys.
    exec(Command::new("cargo").args(["install", "cargo-deb", "--version", "^3", "--locked"]))
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
    if works("bpf-linker") {
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
