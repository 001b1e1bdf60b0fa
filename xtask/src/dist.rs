//! `cargo xtask dist`: the Debian package, `target/debian/sockgate.deb`, built by cargo-deb
//! from `[package.metadata.deb]` in proxy-user/Cargo.toml, on the release binary that
//! `cargo xtask build --release` makes.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, ensure};

use crate::exec::{exec, workspace_root};

/// Where the package lands; tests/tests/package.rs installs it from here.
pub fn package() -> PathBuf {
    workspace_root().join("target/debian/sockgate.deb")
}

pub fn run() -> anyhow::Result<()> {
    // Its setup step installs cargo-deb too.
    crate::build::run(&crate::build::Args { release: true })?;
    stage_unit()?;
    exec(
        Command::new("cargo")
            .current_dir(workspace_root())
            .args(["deb", "--package", "proxy-user", "--no-build", "--output"])
            .arg(package()),
    )
}

/// The package's unit is dist/systemd/sockgate.service with the binary where a package
/// puts it (/usr/bin; /usr/local is the administrator's) and without the manual install
/// steps of its header, in target/dist/ where the cargo-deb metadata looks for it.
fn stage_unit() -> anyhow::Result<()> {
    let root = workspace_root();
    let source = root.join("dist/systemd/sockgate.service");
    let unit =
        fs::read_to_string(&source).with_context(|| format!("reading {}", source.display()))?;
    let body = unit
        .find("[Unit]")
        .map(|start| &unit[start..])
        .context("the unit has no [Unit] section")?;
    let installed = "ExecStart=/usr/bin/sockgate ";
    let body = body.replace("ExecStart=/usr/local/bin/sockgate ", installed);
    ensure!(
        body.contains(installed),
        "{} has no `ExecStart=/usr/local/bin/sockgate` line to point at /usr/bin",
        source.display()
    );
    let dir = root.join("target/dist");
    fs::create_dir_all(&dir)?;
    fs::write(
        dir.join("sockgate.service"),
        format!(
            "# dist/systemd/sockgate.service as the sockgate package installs it (xtask/src/dist.rs).\n\
             # Edit /etc/sockgate/sockgate.toml, run `sockgate doctor -c` on it, then\n\
             # systemctl enable --now sockgate\n\n{body}"
        ),
    )?;
    Ok(())
}
