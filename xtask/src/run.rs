//! `cargo xtask run`: set up, build, and run sockgate with the example config.

use std::process::Command;

use crate::exec::{exec, workspace_root};

#[derive(clap::Args)]
pub struct Args {
    /// Config file (default: examples/sockgate.toml).
    #[arg(long, short)]
    config: Option<std::path::PathBuf>,
    /// Build with optimisations.
    #[arg(long)]
    release: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::build::run(&crate::build::Args {
        release: args.release,
    })?;
    let config = args
        .config
        .unwrap_or_else(|| workspace_root().join("examples/sockgate.toml"));
    exec(
        Command::new(crate::build::binary(args.release))
            .arg("run")
            .arg("--config")
            .arg(config),
    )
}
