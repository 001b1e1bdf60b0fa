//! systemd: `dist/systemd/sockgate.service` passes `systemd-analyze verify`, and `sockgate
//! run` sends the sd_notify(3) sequence a `Type=notify` unit expects to the datagram
//! socket `NOTIFY_SOCKET` names (here one the test binds, standing in for systemd).

use std::{
    fs,
    io::{ErrorKind, Write},
    net::TcpStream,
    os::unix::net::UnixDatagram,
    path::PathBuf,
    process::Command,
};

use sockgate_tests::{
    agent::{Proc, TempDir, WAIT, config_file, connect_config, run},
    netns::NetNs,
    programs::{read_head, require},
    require_root, sockgate_bin,
};

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../dist/systemd/sockgate.service"
);
const INSTALLED: &str = "/usr/local/bin/sockgate";

/// `systemd-analyze verify` on a copy of `unit` named sockgate.service; (passed, stderr).
/// verify also checks that ExecStart's binary exists and is executable, so the copy points
/// at the one cargo built instead of the install path.
fn verify(unit: &str) -> (bool, String) {
    let dir = TempDir::new("unit");
    let path = dir.join("sockgate.service");
    let bin = sockgate_bin();
    fs::write(&path, unit.replace(INSTALLED, bin.to_str().unwrap())).unwrap();
    let (status, _, err) = run(
        "systemd-analyze verify",
        // No system manager runs here (systemd is not PID 1); verify needs none.
        Command::new(require("systemd-analyze"))
            .arg("verify")
            .arg(&path)
            .env("SYSTEMD_LOG_LEVEL", "notice"),
        WAIT,
    );
    (status.success(), err)
}

#[test]
fn the_unit_file_verifies_and_says_what_the_issue_asks() {
    let unit = fs::read_to_string(UNIT).unwrap_or_else(|e| panic!("{UNIT}: {e}"));
    let (ok, err) = verify(&unit);
    // Unknown keys and bad values are only warnings to verify: none may be printed.
    assert!(ok && err.is_empty(), "systemd-analyze verify:\n{err}");

    // The check can fail: a misspelt key is reported.
    let (_, err) = verify(&unit.replace("PrivateTmp=", "PrivateTemp="));
    assert!(err.contains("Unknown key"), "a typo went unnoticed:\n{err}");

    let lines: Vec<&str> = unit.lines().collect();
    for wanted in [
        "Type=notify",
        "ExecReload=kill -HUP $MAINPID",
        "User=sockgate",
        "AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_PERFMON",
        "CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON",
        "NoNewPrivileges=yes",
        "SystemCallFilter=@system-service bpf",
    ] {
        assert!(lines.contains(&wanted), "no `{wanted}` line in {UNIT}");
    }
    let nofile: u64 = lines
        .iter()
        .find_map(|l| l.strip_prefix("LimitNOFILE="))
        .expect("a LimitNOFILE= line")
        .parse()
        .expect("a number");
    // The default max_connections on splice(2), the hungrier path, plus the agent's own.
    assert!(nofile >= 6 * 10_000 + 64, "LimitNOFILE={nofile}");
}

/// The test's stand-in for systemd's notification socket.
struct Notifications {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Notifications {
    fn bind(dir: &TempDir) -> Self {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("binding the notify socket");
        Self { socket, path }
    }

    /// The next datagram, failing the test after `WAIT`.
    fn next(&self) -> String {
        self.socket.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self
            .socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notification within {WAIT:?}: {e}"));
        String::from_utf8(buf[..n].to_vec()).expect("UTF-8")
    }

    /// Fails if a datagram is waiting.
    fn none_pending(&self) {
        self.socket.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            other => panic!(
                "unexpected notification: {:?}",
                other.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
            ),
        }
        self.socket.set_nonblocking(false).unwrap();
    }

    /// `RELOADING=1` with a `MONOTONIC_USEC` from CLOCK_MONOTONIC, in one datagram.
    fn expect_reloading(&self) {
        let before = monotonic_usec();
        let message = self.next();
        let after = monotonic_usec();
        let usec: u64 = message
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .and_then(|rest| rest.strip_suffix('\n'))
            .unwrap_or_else(|| panic!("not RELOADING=1 + MONOTONIC_USEC: {message:?}"))
            .parse()
            .expect("MONOTONIC_USEC is a number");
        // Sent between SIGHUP (just before `before`) and its arrival.
        assert!(
            before - 1_000_000 <= usec && usec <= after,
            "MONOTONIC_USEC={usec} outside [{before} - 1 s, {after}]"
        );
    }
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `ts` is.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) },
        0
    );
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// `sockgate run` on the CONNECT config with `NOTIFY_SOCKET` set; the `Agent` helper
/// cannot pass an environment variable, so this starts the binary itself.
fn start(dir: &TempDir, notify: &Notifications) -> Proc {
    let path = config_file(dir, &connect_config(""));
    Proc::spawn(
        "sockgate",
        Command::new(sockgate_bin())
            .arg("run")
            .arg("-c")
            .arg(path)
            .env("NOTIFY_SOCKET", &notify.path)
            .env("RUST_LOG", "info"),
        false,
    )
}

/// At READY=1 the listener must take a connection at once, and answer it.
fn expect_ready_and_accepting(notify: &Notifications) {
    assert_eq!(notify.next(), "READY=1\n");
    expect_accepting();
}

/// A CONNECT to a denied name gets its 403 through the accept loop, first try.
fn expect_accepting() {
    let mut stream = TcpStream::connect("127.0.0.1:3128").expect("the listener is not bound");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "CONNECT denied.test:443 HTTP/1.1\r\nHost: denied.test\r\n\r\n"
    )
    .unwrap();
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
}

#[test]
fn notify_sequence_ready_reload_refused_reload_stopping() {
    require_root();
    let _ns = NetNs::enter_new();
    let dir = TempDir::new("notify");
    let notify = Notifications::bind(&dir);
    let mut agent = start(&dir, &notify);
    expect_ready_and_accepting(&notify);
    notify.none_pending();

    agent.signal(libc::SIGHUP);
    notify.expect_reloading();
    assert_eq!(notify.next(), "READY=1\n");
    assert!(agent.stderr.wait_for("] reloaded ", WAIT), "no reload line");

    // A refused reload keeps the old config running, which is ready again.
    fs::write(dir.join("sockgate.toml"), "[limits]\nmax_connections = 0\n").unwrap();
    agent.signal(libc::SIGHUP);
    notify.expect_reloading();
    assert_eq!(notify.next(), "READY=1\n");
    assert!(
        agent.stderr.wait_for("reload refused", WAIT),
        "no refusal line"
    );
    expect_accepting();

    agent.signal(libc::SIGTERM);
    assert_eq!(notify.next(), "STOPPING=1\n");
    assert!(agent.expect_exit(WAIT).success());
    notify.none_pending();
}

#[test]
fn sigint_sends_stopping_too() {
    require_root();
    let _ns = NetNs::enter_new();
    let dir = TempDir::new("notify-int");
    let notify = Notifications::bind(&dir);
    let mut agent = start(&dir, &notify);
    expect_ready_and_accepting(&notify);
    agent.signal(libc::SIGINT);
    assert_eq!(notify.next(), "STOPPING=1\n");
    assert!(agent.expect_exit(WAIT).success());
}
