//! `cargo xtask test`: everything, as CI runs it: formatting, clippy, unit tests and the
//! end-to-end tests. The BPF and network-namespace tests need root; they fail (never skip)
//! without it. proxy-ebpf is only built for BPF, through proxy-user's build script.

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
    // tests/tests/package.rs installs the .deb; building it here keeps that test fast.
    crate::dist::run()?;
    let root = workspace_root();
    exec(
        Command::new("cargo")
            .current_dir(&root)
            .args(["fmt", "--all", "--check"]),
    )?;
    exec(
        Command::new("cargo")
            .current_dir(&root)
            .args([
                "clippy",
                "--workspace",
                "--exclude",
                "proxy-ebpf",
                "--all-targets",
            ])
            .args(["--", "-D", "warnings"]),
    )?;
    exec(
        Command::new("cargo")
            .current_dir(&root)
            .args(["test", "--workspace", "--exclude", "proxy-ebpf"])
            .arg("--")
            .args(&args.rest),
    )
}
