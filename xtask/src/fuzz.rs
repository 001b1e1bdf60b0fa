//! `cargo xtask fuzz`: runs the cargo-fuzz targets in `proxy-user/fuzz/` with nightly,
//! installing the nightly toolchain and cargo-fuzz first if they are missing.
//!
//! Each target starts from its committed seeds (`fuzz/seeds/<target>/`, real ClientHellos
//! among them) and keeps what it learns in `fuzz/corpus/<target>/` (not committed). The
//! targets run one after another, one libFuzzer process each; at the end a table gives the
//! executions and seconds libFuzzer reported for each (`stat::number_of_executed_units`,
//! "Done N runs in T second(s)").

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

use crate::exec::{exec, workspace_root};

/// Every fuzz target, in the order they run.
const TARGETS: &[&str] = &[
    "client_hello",
    "connect",
    "config",
    "server_hello",
    "names",
    "proxy_header",
];

/// The toolchain cargo-fuzz needs (sanitizers and `-Z` flags).
const NIGHTLY: &str = "nightly";

/// A slower input than this counts as a hang (libFuzzer's own default is 20 minutes).
const TIMEOUT_SECS: u32 = 10;

#[derive(clap::Args)]
pub struct Args {
    /// Targets to run (default: all of client_hello, connect, config, server_hello, names,
    /// proxy_header).
    targets: Vec<String>,
    /// Stop each target after this many executions.
    #[arg(long, conflicts_with = "time")]
    runs: Option<u64>,
    /// Stop each target after this many seconds (default 60 unless --runs is given).
    #[arg(long)]
    time: Option<u64>,
    /// The longest input libFuzzer generates, in bytes (default: per target, enough to
    /// cross that parser's size cap).
    #[arg(long)]
    max_len: Option<usize>,
    /// The sanitizer to build with (cargo fuzz's `-s`): `address`, or `none` for more
    /// executions on code without `unsafe`.
    #[arg(long, default_value = "address")]
    sanitizer: String,
}

/// What libFuzzer reported at the end of one run.
#[derive(Debug, Default)]
struct Stats {
    /// `stat::number_of_executed_units`.
    executions: u64,
    /// From "Done N runs in T second(s)": the fuzzing time, build excluded.
    seconds: u64,
    /// `stat::new_units_added`.
    new_units: u64,
    /// `stat::peak_rss_mb`.
    peak_rss_mb: u64,
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
    install_nightly()?;
    install_cargo_fuzz()?;
    let limit = match (args.runs, args.time) {
        (Some(runs), _) => format!("-runs={runs}"),
        (None, time) => format!("-max_total_time={}", time.unwrap_or(60)),
    };
    let mut done = Vec::new();
    for target in targets {
        let max_len = args.max_len.unwrap_or_else(|| default_max_len(target));
        let stats = run_target(target, &limit, max_len, &args.sanitizer)?;
        println!(
            "fuzz {target}: {} executions in {} s, {} new units, peak RSS {} MB",
            stats.executions, stats.seconds, stats.new_units, stats.peak_rss_mb
        );
        done.push((target, stats));
    }
    println!(
        "\n{:<14} {:>14} {:>8} {:>10}",
        "target", "executions", "seconds", "exec/s"
    );
    for (target, s) in &done {
        println!(
            "{target:<14} {:>14} {:>8} {:>10}",
            s.executions,
            s.seconds,
            s.executions / s.seconds.max(1)
        );
    }
    let total: u64 = done.iter().map(|(_, s)| s.executions).sum();
    println!("{:<14} {total:>14}", "total");
    Ok(())
}

/// Inputs somewhat past each parser's cap, so that "too large" is reachable.
fn default_max_len(target: &str) -> usize {
    match target {
        // MAX_REQUEST is 8 KiB; one more byte for the chunking header.
        "connect" => 9 * 1024,
        _ => 8 * 1024,
    }
}

/// Runs one target; libFuzzer's output goes to our stderr as it comes and its final
/// statistics are returned. A crash fails with the command line (libFuzzer has already
/// printed where it saved the input).
fn run_target(target: &str, limit: &str, max_len: usize, sanitizer: &str) -> anyhow::Result<Stats> {
    let crate_dir = workspace_root().join("proxy-user");
    let fuzz_dir = crate_dir.join("fuzz");
    let corpus = fuzz_dir.join("corpus").join(target);
    std::fs::create_dir_all(&corpus)?;
    let seeds = fuzz_dir.join("seeds").join(target);
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&crate_dir)
        // The fuzz targets need no eBPF object; skip building it (and bpf-linker).
        .env("AYA_BUILD_SKIP", "1")
        // Debug assertions: overflow checks catch length arithmetic gone wrong.
        .args([
            &format!("+{NIGHTLY}"),
            "fuzz",
            "run",
            "--debug-assertions",
            "--sanitizer",
            sanitizer,
            target,
        ])
        .arg(&corpus)
        .arg(&seeds)
        .args([
            "--",
            limit,
            &format!("-max_len={max_len}"),
            &format!("-timeout={TIMEOUT_SECS}"),
            "-print_final_stats=1",
        ])
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    let mut stats = Stats::default();
    let mut reader = BufReader::new(child.stderr.take().expect("stderr is piped"));
    let mut line = Vec::new();
    let mut err = std::io::stderr().lock();
    while reader.read_until(b'\n', &mut line)? > 0 {
        err.write_all(&line)?;
        stats.read(&String::from_utf8_lossy(&line));
        line.clear();
    }
    drop(err);
    let status = child.wait()?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    if stats.executions == 0 {
        bail!("{cmd:?} printed no stat::number_of_executed_units");
    }
    Ok(stats)
}

impl Stats {
    /// Takes what it knows from one line of libFuzzer's output.
    fn read(&mut self, line: &str) {
        let line = line.trim_end();
        let number = |s: &str| s.trim().parse::<u64>().ok();
        if let Some((key, value)) = line.split_once(": ")
            && let Some(value) = number(value)
        {
            match key {
                "stat::number_of_executed_units" => self.executions = value,
                "stat::new_units_added" => self.new_units = value,
                "stat::peak_rss_mb" => self.peak_rss_mb = value,
                _ => {}
            }
        } else if let Some(rest) = line.strip_prefix("Done ")
            && let Some((_, secs)) = rest.split_once(" runs in ")
            && let Some(secs) = secs.strip_suffix(" second(s)").and_then(number)
        {
            self.seconds = secs;
        }
    }
}

/// Installs the nightly toolchain unless it is there (a fresh machine has only stable).
fn install_nightly() -> anyhow::Result<()> {
    let works = Command::new("rustup")
        .args(["run", NIGHTLY, "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        return Ok(());
    }
    exec(Command::new("rustup").args(["toolchain", "install", NIGHTLY, "--profile", "minimal"]))
}

/// Installs cargo-fuzz from crates.io unless `cargo fuzz` already runs.
fn install_cargo_fuzz() -> anyhow::Result<()> {
    let works = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        return Ok(());
    }
    exec(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}

#[cfg(test)]
mod tests {
    use super::Stats;

    #[test]
    fn reads_libfuzzer_final_stats() {
        let mut s = Stats::default();
        for line in [
            "#1000000\tDONE   cov: 412 ft: 1200 corp: 300/20Kb lim: 4096 exec/s: 33333 rss: 80Mb",
            "Done 1000000 runs in 30 second(s)",
            "stat::number_of_executed_units: 1000000",
            "stat::average_exec_per_sec:     33333",
            "stat::new_units_added:          17",
            "stat::slowest_unit_time_sec:    0",
            "stat::peak_rss_mb:              80",
        ] {
            s.read(&format!("{line}\n"));
        }
        assert_eq!(
            (s.executions, s.seconds, s.new_units, s.peak_rss_mb),
            (1_000_000, 30, 17, 80)
        );
    }
}
