//! `cargo xtask build`: the eBPF object (through proxy-user's build script) and `sockgate`.

use std::process::Command;

use crate::exec::{exec, workspace_root};

#[derive(clap::Args)]
pub struct Args {
    /// Build with optimisations.
    #[arg(long)]
    pub release: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    crate::setup::run()?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root()).args([
        "build",
        "--package",
        "proxy-user",
        "--bin",
        "sockgate",
    ]);
    if args.release {
        cmd.arg("--release");
    }
    exec(&mut cmd)
}

/// Path of the built `sockgate` binary.
pub fn binary(release: bool) -> std::path::PathBuf {
    workspace_root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("sockgate")
}
