//! `cargo xtask soak`: runs `tests/examples/soak.rs` against a release `sockgate` for ten
//! minutes (or `--secs`). Not part of `cargo xtask test`.

use std::process::Command;

use crate::exec::{exec, workspace_root};

#[derive(clap::Args)]
pub struct Args {
    /// How long to run the traffic.
    #[arg(long, default_value_t = 600)]
    secs: u64,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::build::run(&crate::build::Args { release: true })?;
    exec(
        Command::new("cargo")
            .current_dir(workspace_root())
            .args([
                "run",
                "--release",
                "-p",
                "sockgate-tests",
                "--example",
                "soak",
                "--",
                "--secs",
            ])
            .arg(args.secs.to_string()),
    )
}
