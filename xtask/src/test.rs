//! `cargo xtask test`: everything, as CI runs it. The BPF and network-namespace tests need
//! root; they fail (never skip) without it.

use std::process::Command;

use crate::exec::{exec, workspace_root};

#[derive(clap::Args)]
pub struct Args {
    /// Extra arguments for `cargo test` (a test name filter, `--nocapture`, ...).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    rest: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::build::run(&crate::build::Args { release: false })?;
    let root = workspace_root();
    exec(
        Command::new("cargo")
            .current_dir(&root)
            .args(["fmt", "--all", "--check"]),
    )?;
    exec(Command::new("cargo").current_dir(&root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    exec(
        Command::new("cargo")
            .current_dir(&root)
            .args(["test", "--workspace"])
            .arg("--")
            .args(&args.rest),
    )
}
