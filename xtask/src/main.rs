//! `cargo xtask`: setup, build, dist, run, test, bench, fuzz and soak for sockgate.

mod bench;
mod build;
mod dist;
mod exec;
mod fuzz;
mod run;
mod setup;
mod soak;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install everything the build and tests need (idempotent).
    Setup,
    /// Build the eBPF program and the `sockgate` binary.
    Build(build::Args),
    /// Build the Debian package, target/debian/sockgate.deb (cargo-deb).
    Dist,
    /// Set up, build, and run sockgate with examples/sockgate.toml.
    Run(run::Args),
    /// Set up, build, and run every test (needs root for the BPF and netns tests).
    Test(test::Args),
    /// Benchmarks: prints tables of medians and ratios.
    Bench(bench::Args),
    /// Run the cargo-fuzz targets.
    Fuzz(fuzz::Args),
    /// Ten minutes of mixed, hash-verified traffic through sockgate, then a leak check.
    Soak(soak::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Build(args) => build::run(&args),
        Command::Dist => dist::run(),
        Command::Run(args) => run::run(args),
        Command::Test(args) => test::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Fuzz(args) => fuzz::run(args),
        Command::Soak(args) => soak::run(args),
    }
}
