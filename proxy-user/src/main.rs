//! The `sockgate` binary: wiring only; each subcommand lives in `proxy_user::cli`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use proxy_user::cli;

#[derive(Parser)]
#[command(
    name = "sockgate",
    version,
    about = "FQDN-filtering forward proxy with an in-kernel splice"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a config file.
    Run(cli::run::Args),
    /// Validate a config file and print a one-line summary.
    Check(cli::check::Args),
    /// Print the policy decision for one name as JSON.
    Decide(cli::decide::Args),
    /// Check that this host can run the sockmap datapath; exit 0 if so, 1 if not.
    Doctor(cli::doctor::Args),
    /// A plain TCP relay (no TLS, no policy) over a chosen datapath, for benchmarks and debugging.
    Relay(cli::relay::Args),
    /// Show a running agent's config, reload and open connections, from its admin endpoint.
    Status(cli::status::Args),
}

fn main() -> ExitCode {
    fixed_mmap_threshold();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_micros()
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => cli::run::run(args),
        Command::Check(args) => cli::check::run(args),
        Command::Decide(args) => cli::decide::run(args),
        Command::Doctor(args) => cli::doctor::run(args),
        Command::Relay(args) => cli::relay::run(args),
        Command::Status(args) => cli::status::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("sockgate: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Allocations from 256 KiB up are mapped, and unmapped when freed. glibc's default raises
/// that threshold to the size of the first such block freed (up to 32 MiB), after which a
/// catch-up's buffer (up to 32 MiB, datapath::sockmap) stayed in a heap arena for good: a
/// relay's resident memory went from 21 to 88 MB over six 2 GiB transfers. Setting it
/// turns the adjustment off.
fn fixed_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes a malloc parameter; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}
