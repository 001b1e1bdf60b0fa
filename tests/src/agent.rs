//! `sockgate run` as a child process: its config in a temp dir, its decision log parsed
//! from stdout, its human log from stderr, and signals.
//!
//! The temp dirs, child processes and event checks it builds on live in their own modules;
//! they are re-exported here so `sockgate_tests::agent::X` keeps working.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    thread,
    time::Duration,
};

use serde_json::Value;

use crate::events::parse_events;
pub use crate::{
    events::{Conn, assert_close_shape, assert_decision_shape},
    process::{Captured, Proc, WAIT, run},
    tempdir::TempDir,
};

/// A config with one CONNECT listener, `proxy` on 127.0.0.1:3128, on sockmap: allowed.test
/// is allowed on any port, anything else denied, and allowed.test and denied.test resolve
/// to loopback. `limits` is the body of its `[limits]` table.
pub fn connect_config(limits: &str) -> String {
    format!(
        r#"
datapath = "sockmap"

[[listener]]
name = "proxy"
mode = "connect"
address = "127.0.0.1:3128"

[policy]
default = "deny"

[[policy.rule]]
name = "allow-test"
action = "allow"
fqdn = ["allowed.test"]

[resolver]
hosts = {{ "allowed.test" = ["127.0.0.1"], "denied.test" = ["127.0.0.1"] }}

[limits]
{limits}
"#
    )
}

/// A running `sockgate run -c <config>`.
pub struct Agent {
    proc: Proc,
    config: PathBuf,
    /// Reload outcomes seen so far in the log (`reloaded` and `reload refused` lines).
    reloads: usize,
    _dir: TempDir,
}

/// What a SIGHUP did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    Applied,
    Refused,
}

/// The unprivileged user [`Agent::start_unprivileged`] runs as: `nobody`.
pub const NOBODY: u32 = 65534;

/// The `sockgate` binary run as an unprivileged user (`nobody`, uid 65534) holding exactly
/// `caps` (setpriv names such as `"bpf"`), as ambient capabilities and as the whole
/// bounding set: what a systemd unit with `User=`, `AmbientCapabilities=` and
/// `CapabilityBoundingSet=` gives it. Add the subcommand and its arguments.
pub fn unprivileged(caps: &[&str]) -> Command {
    let bin = crate::sockgate_bin();
    assert!(
        reachable_by_others(&bin),
        "{} is not executable by other users (a directory above it lacks o+x), so `nobody` \
         cannot run it",
        bin.display()
    );
    let set: String = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new(crate::programs::require("setpriv"));
    cmd.arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .arg(format!("--inh-caps={set}"))
        .arg(format!("--ambient-caps={set}"))
        .arg(format!("--bounding-set={set}"))
        .arg("--")
        .arg(bin);
    cmd
}

/// Writes `config` as `sockgate.toml` in `dir`, readable by an unprivileged agent
/// whatever the umask.
pub fn config_file(dir: &TempDir, config: &str) -> PathBuf {
    let path = dir.join("sockgate.toml");
    fs::write(&path, config).expect("writing the config");
    for (p, mode) in [(dir.path(), 0o755), (path.as_path(), 0o644)] {
        fs::set_permissions(p, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
    }
    path
}

/// Whether every directory above `path` is searchable, and `path` executable, by others.
fn reachable_by_others(path: &Path) -> bool {
    let others_x = |p: &Path| fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0);
    path.ancestors().all(others_x)
}

fn reload_lines(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("] reloaded ") || l.contains("reload refused"))
        .count()
}

impl Agent {
    /// Writes `config` (TOML) to a temp dir and starts sockgate on it in the calling
    /// thread's network namespace; returns once every listener is bound.
    pub fn start(config: &str) -> Self {
        Self::start_with(config, Command::new(crate::sockgate_bin()))
    }

    /// Like [`Agent::start`], but as `nobody` with exactly `caps`; see [`unprivileged`].
    pub fn start_unprivileged(config: &str, caps: &[&str]) -> Self {
        Self::start_with(config, unprivileged(caps))
    }

    /// Starts `sockgate` as `cmd` (the binary, or a wrapper that runs it) with `run -c`.
    fn start_with(config: &str, cmd: Command) -> Self {
        let dir = TempDir::new("agent");
        let path = config_file(&dir, config);
        Self::start_cmd(dir, path, cmd, &[])
    }

    /// Starts `sockgate run -c path` with `args` on a config the caller laid out in `dir`,
    /// which lives as long as the agent.
    pub fn start_at(dir: TempDir, path: PathBuf, args: &[&str]) -> Self {
        Self::start_cmd(dir, path, Command::new(crate::sockgate_bin()), args)
    }

    fn start_cmd(dir: TempDir, path: PathBuf, mut cmd: Command, args: &[&str]) -> Self {
        let proc = Proc::spawn(
            "sockgate",
            cmd.arg("run")
                .arg("-c")
                .arg(&path)
                .args(args)
                .env("RUST_LOG", "info"),
            false,
        );
        let mut agent = Self {
            proc,
            config: path,
            reloads: 0,
            _dir: dir,
        };
        agent.wait_ready();
        agent
    }

    /// The agent logs `sockgate running` after binding every listener. Probing the
    /// listeners with a connection would log a decision of its own, so the log it is.
    fn wait_ready(&mut self) {
        let ready = self
            .proc
            .stderr
            .wait_until(WAIT, |t| t.contains("sockgate running"));
        if !ready {
            let status = self.proc.wait_exit(Duration::from_secs(1));
            panic!(
                "sockgate did not start (exit status {status:?}):\n{}",
                self.proc.stderr.text()
            );
        }
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn pid(&self) -> u32 {
        self.proc.id()
    }

    /// Replaces the config file (no signal).
    pub fn write_config(&self, config: &str) {
        // Write then rename, so the agent never reads half a file.
        let tmp = self.config.with_extension("tmp");
        fs::write(&tmp, config).expect("writing the config");
        fs::rename(&tmp, &self.config).expect("replacing the config");
    }

    /// Writes `config`, sends SIGHUP, and waits until the agent logged the outcome.
    pub fn reload(&mut self, config: &str) -> Reload {
        self.write_config(config);
        self.hup()
    }

    /// Sends SIGHUP and waits for the agent's `reloaded` or `reload refused` line.
    pub fn hup(&mut self) -> Reload {
        let before = self.reloads;
        self.proc.signal(libc::SIGHUP);
        let seen = self
            .proc
            .stderr
            .wait_until(WAIT, |t| reload_lines(t) > before);
        assert!(seen, "no reload outcome logged after SIGHUP");
        self.reloads = before + 1;
        let log = self.stderr();
        let line = log
            .lines()
            .filter(|l| l.contains("] reloaded ") || l.contains("reload refused"))
            .nth(before)
            .expect("the reload line")
            .to_owned();
        if line.contains("reload refused") {
            Reload::Refused
        } else {
            Reload::Applied
        }
    }

    pub fn signal(&self, signal: i32) {
        self.proc.signal(signal);
    }

    /// The exit status, failing the test if there is none within `timeout`.
    pub fn expect_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.proc.expect_exit(timeout)
    }

    /// The human log so far.
    pub fn stderr(&self) -> String {
        self.proc.stderr.text()
    }

    /// Waits until the human log contains `needle`.
    pub fn wait_stderr(&self, needle: &str) -> bool {
        self.proc.stderr.wait_for(needle, WAIT)
    }

    /// The raw stdout so far.
    pub fn stdout(&self) -> String {
        self.proc.stdout.text()
    }

    /// Every complete stdout line so far, parsed. Any line that is not a JSON object
    /// fails the test: stdout is the decision log and nothing else.
    pub fn events(&self) -> Vec<Value> {
        parse_events(&self.stdout())
    }

    /// Waits until `find` picks an event out of the log so far, and returns it.
    pub fn wait_find(&self, what: &str, mut find: impl FnMut(&[Value]) -> Option<Value>) -> Value {
        let mut found = None;
        self.proc.stdout.wait_until(WAIT, |text| {
            found = find(&parse_events(text));
            found.is_some()
        });
        found.unwrap_or_else(|| {
            panic!(
                "no {what} within {WAIT:?}; decision log:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            )
        })
    }

    /// Sends SIGUSR1 and returns the `stats` line it writes.
    pub fn stats(&self) -> Value {
        const STATS: &str = "\"event\":\"stats\"";
        let before = self.stdout().matches(STATS).count();
        self.signal(libc::SIGUSR1);
        let mut line = None;
        self.proc.stdout.wait_until(WAIT, |text| {
            line = text
                .lines()
                .filter(|l| l.contains(STATS))
                .nth(before)
                .map(str::to_owned);
            line.is_some()
        });
        let line = line.unwrap_or_else(|| panic!("no stats line within {WAIT:?}"));
        serde_json::from_str(&line).expect("a stats line is JSON")
    }

    /// Waits for an event matching `pred` and returns it.
    pub fn wait_event(&self, what: &str, mut pred: impl FnMut(&Value) -> bool) -> Value {
        self.wait_find(what, |events| events.iter().find(|e| pred(e)).cloned())
    }

    /// The `close` line of the connection `decision` logged.
    pub fn close_of(&self, decision: &Value) -> Value {
        let conn = decision["conn"].clone();
        self.wait_event(&format!("close line of conn {conn}"), |e| {
            e["event"] == "close" && e["conn"] == conn
        })
    }

    /// Waits for the `decision` line matching `pred` and that connection's `close` line.
    pub fn wait_conn(&self, what: &str, mut pred: impl FnMut(&Value) -> bool) -> Conn {
        let decision = self.wait_event(what, |e| e["event"] == "decision" && pred(e));
        let close = self.close_of(&decision);
        Conn { decision, close }
    }

    /// The two lines of the `nth` connection (0 = the first) that named `fqdn`.
    pub fn conn_for(&self, fqdn: &str, nth: usize) -> Conn {
        let decision = self.wait_find(&format!("decision #{nth} for {fqdn}"), |events| {
            events
                .iter()
                .filter(|e| e["event"] == "decision" && e["fqdn"] == fqdn)
                .nth(nth)
                .cloned()
        });
        let close = self.close_of(&decision);
        Conn { decision, close }
    }

    /// All decision lines so far.
    pub fn decisions(&self) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == "decision")
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "---- sockgate config ----\n{}",
                fs::read_to_string(&self.config).unwrap_or_default()
            );
        }
    }
}
