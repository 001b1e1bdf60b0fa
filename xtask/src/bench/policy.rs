//! `cargo xtask bench policy`: runs `proxy-user/examples/policy_bench.rs` in release with
//! 1,000,000 generated rules and checks its numbers against the targets: load (compile)
//! at most 3 s, at most 300 MB resident for the compiled policy, lookup p99 at most 1 µs.

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
    /// Also time loading the rules from TOML text (parse, validate, compile); at 1,000,000
    /// rules this takes tens of seconds and gigabytes.
    #[arg(long)]
    toml: bool,
}

/// (name in the result line, target, unit).
const TARGETS: &[(&str, f64, &str)] = &[
    ("load_s", 3.0, "s"),
    ("policy_mib", 300.0 / 1.048_576, "MiB"),
    ("p99_ns", 1000.0, "ns"),
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
    for (name, target, unit) in TARGETS {
        let value: f64 = result
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} in {result:?}"))?;
        let verdict = if value <= *target { "ok" } else { "MISSED" };
        println!("{name:<12} {value:>10.3} {unit:<4} target <= {target:.1} {unit}: {verdict}");
    }
    if args.toml {
        // The same rules as a TOML file's text: what `sockgate` pays to load them from disk.
        println!("\n-- the same rules loaded from TOML text --");
        print!("{}", bench(&["--rules", &rules, "--toml"])?);
    }
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
