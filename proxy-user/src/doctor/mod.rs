//! `sockgate doctor`'s checks: can this host, as this process, run the sockmap datapath
//! and the configured listeners? One function per check, each returning a [`Check`].
//!
//! A check fails only when the sockmap datapath will not be used (or the agent would not
//! start); anything that still lets it run but needs attention is a warning.

mod capabilities;
mod kernel;
mod nft;
mod nofile;
mod verdict;

use std::fmt;

use serde::Serialize;

use crate::config::{Config, Datapath, ListenerMode};
use crate::datapath::Path;

/// How one check went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // pad, not write_str: the report aligns on it.
        f.pad(match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        })
    }
}

/// One check's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked, one word (`kernel`, `btf`...).
    pub check: &'static str,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about a warning or failure.
    pub fix: Option<String>,
}

impl Check {
    fn ok(check: &'static str, detail: impl Into<String>) -> Self {
        Self {
            check,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn warn(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            check,
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            status: Status::Fail,
            ..Self::warn(check, detail, fix)
        }
    }
}

impl fmt::Display for Check {
    /// `fail capabilities  missing CAP_BPF; fix: ...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<4} {:<12} {}", self.status, self.check, self.detail)?;
        match &self.fix {
            Some(fix) => write!(f, "; fix: {fix}"),
            None => Ok(()),
        }
    }
}

/// Every check, and whether the sockmap datapath will be used.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// No check failed: `sockgate run` here would relay over the sockmap datapath.
    pub sockmap: bool,
    pub checks: Vec<Check>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for check in &self.checks {
            writeln!(f, "{check}")?;
        }
        let failed: Vec<&str> = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .map(|c| c.check)
            .collect();
        if failed.is_empty() {
            write!(f, "sockmap datapath: yes")
        } else {
            write!(f, "sockmap datapath: no ({} failed)", failed.join(", "))
        }
    }
}

/// Runs every check, in the order an operator would fix them; `config` (from `-c`) adds
/// the checks that depend on it and sizes the others.
pub fn run(config: Option<&Config>) -> Report {
    let mut checks = vec![
        kernel::version(),
        kernel::btf(),
        kernel::options(),
        capabilities::check(config),
    ];
    checks.push(verdict::layout());
    let loaded = verdict::load();
    let mode = config.map_or(Datapath::Auto, |c| c.datapath);
    // Where `sockgate run` would relay: what sizes the descriptor check.
    let path = match mode {
        Datapath::Copy => Path::Copy,
        Datapath::Splice => Path::Splice,
        _ if loaded.status == Status::Fail => Path::Splice,
        _ => Path::Sockmap,
    };
    checks.push(loaded);
    if let Some(config) = config {
        checks.push(datapath(config));
    }
    checks.push(nofile::check(config, path));
    if config.is_some_and(|c| {
        c.listeners
            .iter()
            .any(|l| l.mode == ListenerMode::Transparent)
    }) {
        checks.push(nft::check());
    }
    let sockmap = checks.iter().all(|c| c.status != Status::Fail);
    Report { sockmap, checks }
}

/// The config's `datapath`: `splice` and `copy` never use the kernel program.
fn datapath(config: &Config) -> Check {
    match config.datapath {
        Datapath::Auto | Datapath::Sockmap => Check::ok(
            "datapath",
            format!("datapath = \"{}\"", mode_name(config.datapath)),
        ),
        mode => Check::fail(
            "datapath",
            format!(
                "datapath = \"{}\" never uses the kernel program",
                mode_name(mode)
            ),
            "set datapath = \"auto\" (or \"sockmap\" to refuse to start without it)",
        ),
    }
}

fn mode_name(mode: Datapath) -> &'static str {
    match mode {
        Datapath::Auto => "auto",
        Datapath::Sockmap => "sockmap",
        Datapath::Splice => "splice",
        Datapath::Copy => "copy",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_per_check_with_its_fix() {
        let report = Report {
            sockmap: false,
            checks: vec![
                Check::ok("kernel", "6.18.0"),
                Check::fail("btf", "no /sys/kernel/btf/vmlinux", "rebuild"),
            ],
        };
        assert_eq!(
            report.to_string(),
            "ok   kernel       6.18.0\n\
             fail btf          no /sys/kernel/btf/vmlinux; fix: rebuild\n\
             sockmap datapath: no (btf failed)"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["sockmap"], false);
        assert_eq!(json["checks"][1]["status"], "fail");
        assert_eq!(json["checks"][1]["fix"], "rebuild");
        assert_eq!(json["checks"][0]["fix"], serde_json::Value::Null);
    }

    #[test]
    fn splice_and_copy_fail_the_datapath_check() {
        for (mode, status) in [
            ("auto", Status::Ok),
            ("sockmap", Status::Ok),
            ("splice", Status::Fail),
            ("copy", Status::Fail),
        ] {
            let config = Config::parse(&format!("datapath = \"{mode}\""), "test").unwrap();
            assert_eq!(datapath(&config).status, status, "{mode}");
        }
    }
}
