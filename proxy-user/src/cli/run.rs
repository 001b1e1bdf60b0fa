//! `sockgate run`: the proxy.

use std::{path::PathBuf, process::ExitCode};

#[derive(clap::Args)]
pub struct Args {
    /// The config file.
    #[arg(long, short)]
    config: PathBuf,
    /// Reload when the config file or an included file changes (watching their
    /// directories), as SIGHUP does; `watch = true` in the config does the same.
    #[arg(long)]
    watch: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(crate::agent::run(args.config, args.watch))?;
    // Spliced connections still draining past the grace period are closed with the runtime.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(ExitCode::SUCCESS)
}
