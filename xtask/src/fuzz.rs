//! `cargo xtask fuzz`: runs the cargo-fuzz targets in `proxy-user/fuzz/` with nightly,
//! installing cargo-fuzz first if it is missing.
//!
//! Each target starts from its committed seeds (`fuzz/seeds/<target>/`, real ClientHellos
//! among them) and keeps what it learns in `fuzz/corpus/<target>/` (not committed).
//! libFuzzer prints the executions it ran ("Done N runs in T second(s)") at the end.

use std::process::Command;

use anyhow::bail;

use crate::exec::{exec, workspace_root};

/// Every fuzz target, in the order they run.
const TARGETS: &[&str] = &["client_hello", "server_hello", "config", "names"];

/// The toolchain cargo-fuzz needs (sanitizers and `-Z` flags).
const NIGHTLY: &str = "+nightly";

#[derive(clap::Args)]
pub struct Args {
    /// Targets to run (default: all of client_hello, server_hello, config, names).
    targets: Vec<String>,
    /// Stop each target after this many executions.
    #[arg(long, conflicts_with = "time")]
    runs: Option<u64>,
    /// Stop each target after this many seconds (default 60 unless --runs is given).
    #[arg(long)]
    time: Option<u64>,
    /// The longest input libFuzzer generates, in bytes.
    #[arg(long, default_value_t = 8192)]
    max_len: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        args.targets.iter().map(String::as_str).collect()
    };
    if let Some(unknown) = targets.iter().find(|t| !TARGETS.contains(t)) {
        bail!(
            "unknown fuzz target {unknown:?}; targets: {}",
            TARGETS.join(", ")
        );
    }
    install_cargo_fuzz()?;
    let crate_dir = workspace_root().join("proxy-user");
    let fuzz_dir = crate_dir.join("fuzz");
    let limit = match (args.runs, args.time) {
        (Some(runs), _) => format!("-runs={runs}"),
        (None, time) => format!("-max_total_time={}", time.unwrap_or(60)),
    };
    for target in targets {
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let seeds = fuzz_dir.join("seeds").join(target);
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&crate_dir)
            // The fuzz targets need no eBPF object; skip building it (and bpf-linker).
            .env("AYA_BUILD_SKIP", "1")
            .args([NIGHTLY, "fuzz", "run", target])
            .arg(&corpus)
            .arg(&seeds)
            .args([
                "--",
                &limit,
                &format!("-max_len={}", args.max_len),
                "-print_final_stats=1",
            ]);
        exec(&mut cmd)?;
    }
    Ok(())
}

/// Installs cargo-fuzz from crates.io unless `cargo fuzz` already runs.
fn install_cargo_fuzz() -> anyhow::Result<()> {
    let works = Command::new("cargo")
        .args([NIGHTLY, "fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        return Ok(());
    }
    exec(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}
