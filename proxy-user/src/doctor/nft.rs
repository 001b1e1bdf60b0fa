//! nft, for the REDIRECT or TPROXY rules a transparent listener needs. sockgate never
//! runs it; the operator does.

use std::path::PathBuf;

use super::Check;

/// Looked in besides PATH: an unprivileged user's PATH often lacks the sbin directories.
const SBIN: &[&str] = &["/usr/sbin", "/sbin"];

const FIX: &str = "install nftables (apt-get install nftables) to redirect traffic to the \
                   transparent listener";

/// Whether `nft --version` runs.
pub fn check() -> Check {
    let Some(nft) = find() else {
        return Check::warn("nft", "no nft in PATH, /usr/sbin or /sbin", FIX);
    };
    match std::process::Command::new(&nft).arg("--version").output() {
        Ok(out) if out.status.success() => Check::ok(
            "nft",
            format!(
                "{} ({})",
                String::from_utf8_lossy(&out.stdout).trim(),
                nft.display()
            ),
        ),
        Ok(out) => Check::warn(
            "nft",
            format!("{} --version: {}", nft.display(), out.status),
            FIX,
        ),
        Err(err) => Check::warn("nft", format!("{}: {err}", nft.display()), FIX),
    }
}

fn find() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN.iter().map(PathBuf::from))
        .map(|dir| dir.join("nft"))
        .find(|p| p.is_file())
}
