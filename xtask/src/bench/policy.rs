//! `cargo xtask bench policy`: runs `proxy-user/examples/policy_bench.rs` in release with
//! 1,000,000 generated rules, written to a TOML file and loaded from it as `sockgate run`
//! does, and checks its numbers against the targets: load from the file (read, parse,
//! validate, compile) at most 3 s; at most 300 MB, both at the load's peak and for the
//! loaded policy; lookup p99 at most 1 µs.

use std::process::Command;

use anyhow::Context as _;

use crate::exec::{output, workspace_root};

#[derive(clap::Args)]
pub struct Args {
    /// How many rules to generate.
    #[arg(long, default_value_t = 1_000_000)]
    rules: usize,
    /// How many lookups to time.
    #[arg(long, default_value_t = 1_000_000)]
    lookups: usize,
}

/// 300 MB in MiB, as the benchmark reports memory.
const MB_300: f64 = 300.0 / 1.048_576;

/// (name in the result line, what it is, target, unit).
const TARGETS: &[(&str, &str, f64, &str)] = &[
    ("load_s", "load from TOML file", 3.0, "s"),
    ("peak_mib", "peak RSS while loading", MB_300, "MiB"),
    ("policy_mib", "resident policy", MB_300, "MiB"),
    ("p99_ns", "lookup p99", 1000.0, "ns"),
];

pub fn run(args: Args) -> anyhow::Result<()> {
    let rules = args.rules.to_string();
    let lookups = args.lookups.to_string();
    let report = bench(&["--rules", &rules, "--lookups", &lookups])?;
    print!("{report}");
    let result = report
        .lines()
        .find_map(|l| l.strip_prefix("result "))
        .context("no result line in the benchmark's output")?;
    let value = |name: &str| -> anyhow::Result<f64> {
        result
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} in {result:?}"))
    };
    for (name, what, target, unit) in TARGETS {
        let value = value(name)?;
        let verdict = if value <= *target { "ok" } else { "MISSED" };
        println!("{what:<24} {value:>10.3} {unit:<4} target <= {target:.1} {unit}: {verdict}");
    }
    println!(
        "{:<24} {:>10.3} s    (extra: the compile step alone, part of the load)",
        "compile only",
        value("compile_s")?
    );
    Ok(())
}

/// Runs the benchmark example in release with `args`, returning its output.
fn bench(args: &[&str]) -> anyhow::Result<String> {
    output(
        Command::new("cargo")
            .current_dir(workspace_root())
            // The benchmark needs no eBPF object; do not build it.
            .env("AYA_BUILD_SKIP", "1")
            .args([
                "run",
                "--release",
                "--quiet",
                "-p",
                "proxy-user",
                "--example",
                "policy_bench",
                "--",
            ])
            .args(args),
    )
}
