//! Child processes with captured stdout and stderr, killed on drop.
//!
//! A child starts in the network namespace of the thread that starts it (a forked child
//! inherits the calling thread's namespaces), so enter the test's namespace first. A leaked
//! child holding a pipe would keep `cargo test` waiting, hence the kill on drop.

use std::{
    io::Read,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

/// How long any single wait in these tests may take before the test fails. Generous: the
/// tests assert behaviour, never speed.
pub const WAIT: Duration = Duration::from_secs(30);

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
