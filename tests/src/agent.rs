//! `sockgate run` as a child process: its config in a temp dir, its decision log parsed
//! from stdout, its human log from stderr, and signals.
//!
//! The child starts in the network namespace of the thread that starts it (a forked child
//! inherits the calling thread's namespaces), so enter the test's namespace first. Every
//! child here is killed when its guard drops: a leaked child holding a pipe would keep
//! `cargo test` waiting.

use std::{
    fs,
    io::Read,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// How long any single wait in these tests may take before the test fails. Generous: the
/// tests assert behaviour, never speed.
pub const WAIT: Duration = Duration::from_secs(30);

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// A directory removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "sgt-{tag}-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    closed: bool,
}

/// Everything a child wrote to one pipe, collected by a thread as it arrives.
#[derive(Clone)]
pub struct Captured(Arc<(Mutex<Buffer>, Condvar)>);

impl Captured {
    /// Reads `pipe` until EOF on a thread of its own.
    pub fn spawn(mut pipe: impl Read + Send + 'static) -> Self {
        let captured = Captured(Arc::default());
        let shared = captured.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            loop {
                let n = pipe.read(&mut buf).unwrap_or(0);
                let (lock, cond) = &*shared.0;
                let mut b = lock.lock().unwrap_or_else(|p| p.into_inner());
                if n == 0 {
                    b.closed = true;
                    cond.notify_all();
                    return;
                }
                b.bytes.extend_from_slice(&buf[..n]);
                cond.notify_all();
            }
        });
        captured
    }

    /// A pipe that was never opened: always empty and closed.
    pub fn none() -> Self {
        let c = Captured(Arc::default());
        c.0.0.lock().unwrap().closed = true;
        c
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.0
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .bytes
            .clone()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }

    /// Waits until `done` holds for the text so far (true), or the pipe closes or
    /// `timeout` passes without it (false).
    pub fn wait_until(&self, timeout: Duration, mut done: impl FnMut(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.0;
        let mut b = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if done(&String::from_utf8_lossy(&b.bytes)) {
                return true;
            }
            let now = Instant::now();
            if b.closed || now >= deadline {
                return false;
            }
            b = cond
                .wait_timeout(b, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Waits until the text contains `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_until(timeout, |t| t.contains(needle))
    }

    /// Waits until the pipe is closed (the child exited, or closed it).
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.0;
        let mut b = lock.lock().unwrap_or_else(|p| p.into_inner());
        while !b.closed {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            b = cond
                .wait_timeout(b, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// A child process with captured stdout and stderr, killed on drop. When the test is
/// failing, the drop prints what the child wrote, so the failure explains itself.
pub struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    pub stdout: Captured,
    pub stderr: Captured,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr captured. stdin is a pipe when `cmd` asked for
    /// one (`.stdin(Stdio::piped())`), else null.
    pub fn spawn(name: &str, cmd: &mut Command, stdin: bool) -> Self {
        cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "starting {name} ({:?}): {e}; run `cargo xtask setup` to install it",
                cmd.get_program()
            )
        });
        let stdout = Captured::spawn(child.stdout.take().expect("piped stdout"));
        let stderr = Captured::spawn(child.stderr.take().expect("piped stderr"));
        let stdin = child.stdin.take();
        Self {
            name: name.to_owned(),
            child,
            stdin,
            stdout,
            stderr,
            status: None,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` unless the child was already reaped.
    pub fn signal(&self, signal: i32) {
        assert!(
            self.status.is_none(),
            "{} already exited: {:?}",
            self.name,
            self.status
        );
        // SAFETY: signalling our own child, which is not reaped yet, so the pid is ours.
        let ret = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(
            ret,
            0,
            "kill {}: {}",
            self.name,
            std::io::Error::last_os_error()
        );
    }

    /// The child's stdin (only when spawned with `stdin = true` and not closed yet).
    pub fn stdin(&mut self) -> &mut ChildStdin {
        self.stdin
            .as_mut()
            .expect("stdin is not a pipe, or was closed")
    }

    /// Closes the child's stdin (EOF).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The exit status, if it exited within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.status {
                return Some(status);
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.status = Some(status);
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the exit, failing the test after `timeout`.
    pub fn expect_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.wait_exit(timeout).unwrap_or_else(|| {
            panic!(
                "{} did not exit within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                self.name,
                self.stdout.text(),
                self.stderr.text()
            )
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "---- {} stdout ----\n{}\n---- {} stderr ----\n{}",
                self.name,
                self.stdout.text(),
                self.name,
                self.stderr.text()
            );
        }
    }
}

/// Runs a command to its end, with a deadline; returns (status, stdout, stderr).
pub fn run(name: &str, cmd: &mut Command, timeout: Duration) -> (ExitStatus, String, String) {
    let mut proc = Proc::spawn(name, cmd, false);
    let status = proc.expect_exit(timeout);
    // The pipes close at exit; wait for the readers to take everything.
    proc.stdout.wait_closed(WAIT);
    proc.stderr.wait_closed(WAIT);
    (status, proc.stdout.text(), proc.stderr.text())
}

/// One connection's two log lines.
#[derive(Debug, Clone)]
pub struct Conn {
    pub decision: Value,
    pub close: Value,
}

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
    fn start_with(config: &str, mut cmd: Command) -> Self {
        let dir = TempDir::new("agent");
        let path = config_file(&dir, config);
        let proc = Proc::spawn(
            "sockgate",
            cmd.arg("run").arg("-c").arg(&path).env("RUST_LOG", "info"),
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

fn parse_events(text: &str) -> Vec<Value> {
    // Only complete lines: the last one may still be on its way.
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete
        .lines()
        .filter(|l| !l.is_empty())
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(v) if v.is_object() => v,
            _ => panic!("stdout line is not a JSON object: {line:?}"),
        })
        .collect()
}

/// Checks the fields every decision line carries, with the types the log promises.
pub fn assert_decision_shape(d: &Value) {
    for field in [
        "ts",
        "event",
        "conn",
        "listener",
        "client",
        "dst",
        "fqdn",
        "fqdn_source",
        "protocol",
        "alpn",
        "tls_version",
        "ech",
        "action",
        "rule",
        "reason",
    ] {
        assert!(d.get(field).is_some(), "decision lacks `{field}`: {d}");
    }
    assert!(
        d["ts"].as_str().is_some_and(|t| t.ends_with('Z')),
        "ts: {d}"
    );
    assert!(d["conn"].as_u64().is_some(), "conn: {d}");
    assert!(d["alpn"].is_array(), "alpn: {d}");
    assert!(d["ech"].is_boolean(), "ech: {d}");
    assert!(
        d["action"] == "allow" || d["action"] == "deny",
        "action: {d}"
    );
}

/// Checks the fields every close line carries.
pub fn assert_close_shape(c: &Value) {
    for field in [
        "ts",
        "event",
        "conn",
        "bytes_up",
        "bytes_down",
        "duration_ms",
        "datapath",
        "end",
    ] {
        assert!(c.get(field).is_some(), "close lacks `{field}`: {c}");
    }
    assert!(c["bytes_up"].as_u64().is_some(), "bytes_up: {c}");
    assert!(c["bytes_down"].as_u64().is_some(), "bytes_down: {c}");
    assert!(c["duration_ms"].as_u64().is_some(), "duration_ms: {c}");
}
