//! `sockgate run`'s lifecycle: SIGHUP reloads (an invalid config is refused with one error
//! line and the old policy stays; a relayed transfer goes on untouched), SIGTERM drains for
//! `shutdown_grace` and exits 0, SIGINT closes at once. Each test runs in its own network
//! namespace.

use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use sockgate_tests::{
    agent::{Agent, Reload, WAIT},
    netns::NetNs,
    peers::{Plan, exchange, server},
    programs::{banner_server, connect_tunnel},
};

const PROXY: &str = "127.0.0.1:3128";
const GIB: u64 = 1 << 30;

/// A connect listener; `action` for allowed.test, `grace` for SIGTERM.
fn config(action: &str, grace: &str) -> String {
    format!(
        r#"
datapath = "sockmap"

[[listener]]
name = "proxy"
mode = "connect"
address = "{PROXY}"

[policy]
default = "deny"

[[policy.rule]]
name = "the-rule"
action = "{action}"
fqdn = ["allowed.test"]

[resolver]
hosts = {{ "allowed.test" = ["127.0.0.1"] }}

[limits]
client_first_timeout = "200ms"
shutdown_grace = "{grace}"
"#
    )
}

fn proxy() -> SocketAddr {
    PROXY.parse().unwrap()
}

/// The proxy's status line for a CONNECT to allowed.test:2525 (the banner server). An open
/// tunnel is used to the end: banner in, FIN, EOF.
fn tunnel_status() -> String {
    let (mut stream, status) = connect_tunnel(proxy(), "allowed.test:2525");
    if status.starts_with("HTTP/1.1 200") {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut banner = [0u8; 4];
        stream.read_exact(&mut banner).expect("the banner");
        assert_eq!(&banner, b"hi\r\n");
        stream.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).expect("EOF");
    }
    status
}

fn error_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(" ERROR ")).collect()
}

/// A valid reload changes the policy for new connections; an invalid one (bad TOML, or a
/// bad rule) is refused with one error line each, and the running policy stays.
#[test]
fn sighup_reloads_and_refuses_invalid_configs() {
    let _ns = NetNs::enter_new();
    banner_server(TcpListener::bind("127.0.0.1:2525").unwrap(), b"hi\r\n");
    let mut agent = Agent::start(&config("allow", "1s"));
    assert!(
        tunnel_status().starts_with("HTTP/1.1 200"),
        "allowed before reload"
    );

    assert_eq!(agent.reload("this is [not toml\n"), Reload::Refused);
    let bad_rule = config("allow", "1s").replace("action = \"allow\"", "action = \"maybe\"");
    assert_eq!(agent.reload(&bad_rule), Reload::Refused);
    let log = agent.stderr();
    assert_eq!(
        error_lines(&log).len(),
        2,
        "one error line per refused reload:\n{log}"
    );
    assert!(
        log.lines().all(|l| l.starts_with('[')),
        "a log record spans several lines:\n{log}"
    );
    assert!(
        tunnel_status().starts_with("HTTP/1.1 200"),
        "the old policy stays after refused reloads"
    );

    assert_eq!(agent.reload(&config("deny", "1s")), Reload::Applied);
    assert!(
        tunnel_status().starts_with("HTTP/1.1 403"),
        "denied after reload"
    );
    assert_eq!(agent.reload(&config("allow", "1s")), Reload::Applied);
    assert!(tunnel_status().starts_with("HTTP/1.1 200"), "allowed again");
    let decisions = agent.wait_find("the fourth decision", |events| {
        let decisions: Vec<_> = events.iter().filter(|e| e["event"] == "decision").collect();
        (decisions.len() >= 4)
            .then(|| serde_json::Value::from(decisions.into_iter().cloned().collect::<Vec<_>>()))
    });
    let decisions = decisions.as_array().unwrap();
    let actions: Vec<_> = decisions.iter().map(|d| d["action"].clone()).collect();
    assert_eq!(
        actions,
        ["allow", "allow", "deny", "allow"],
        "{decisions:?}"
    );
}

/// 1 GiB each way through a spliced CONNECT tunnel while the config is reloaded over and
/// over (denying the name the tunnel was allowed for): the transfer is byte-exact, ends
/// with FIN, and new tunnels follow the new policy meanwhile.
#[test]
fn sighup_during_1gib_transfer() {
    let _ns = NetNs::enter_new();
    let listener = TcpListener::bind("127.0.0.1:9000").unwrap();
    let reports = server(listener, |_| Plan::new(GIB, 2));
    banner_server(TcpListener::bind("127.0.0.1:2525").unwrap(), b"hi\r\n");
    let mut agent = Agent::start(&config("allow", "1s"));

    let (stream, status) = connect_tunnel(proxy(), "allowed.test:9000");
    assert!(status.starts_with("HTTP/1.1 200"), "CONNECT: {status}");
    let transfer = thread::spawn(move || exchange(stream, Plan::new(GIB, 1)));

    let mut reloads = 0;
    let mut denied_meanwhile = 0;
    while !transfer.is_finished() || reloads < 2 {
        let action = if reloads % 2 == 0 { "deny" } else { "allow" };
        assert_eq!(agent.reload(&config(action, "1s")), Reload::Applied);
        reloads += 1;
        if action == "deny" && !transfer.is_finished() {
            assert!(
                tunnel_status().starts_with("HTTP/1.1 403"),
                "new tunnel after deny"
            );
            denied_meanwhile += 1;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let client = transfer
        .join()
        .unwrap()
        .expect("client side of the transfer");
    let server = reports
        .recv_timeout(WAIT)
        .expect("server finished")
        .expect("server side of the transfer");
    // A length off by some kilobytes here means the datapath lost or duplicated bytes.
    assert_eq!(server.received_len, GIB, "bytes that reached the server");
    assert_eq!(server.received, client.sent, "upstream hash");
    assert_eq!(client.received_len, GIB, "bytes that reached the client");
    assert_eq!(client.received, server.sent, "downstream hash");
    assert!(
        denied_meanwhile >= 1,
        "no reload happened during the transfer"
    );

    let conn = agent.wait_conn("the transfer", |d| d["conn"] == 1);
    assert_eq!(conn.decision["action"], "allow", "{}", conn.decision);
    let c = &conn.close;
    assert_eq!(c["datapath"], "sockmap", "{c}");
    assert_eq!(c["end"], "fin", "{c}");
    assert_eq!(c["bytes_up"].as_u64().unwrap(), GIB, "{c}");
    assert_eq!(c["bytes_down"].as_u64().unwrap(), GIB, "{c}");
}

/// An agent whose SIGTERM grace is `grace`, and an open CONNECT tunnel through it to the
/// banner server, banner read. The caller has entered a fresh namespace.
fn open_tunnel(grace: &str) -> (Agent, TcpStream) {
    banner_server(TcpListener::bind("127.0.0.1:2525").unwrap(), b"hi\r\n");
    let agent = Agent::start(&config("allow", grace));
    let (mut tunnel, status) = connect_tunnel(proxy(), "allowed.test:2525");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    tunnel.set_read_timeout(Some(WAIT)).unwrap();
    let mut banner = [0u8; 4];
    tunnel.read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"hi\r\n");
    (agent, tunnel)
}

/// The tunnel (conn 1) ends with EOF or a reset, and its close line says `shutdown`;
/// returns that line.
fn closed_by_shutdown(agent: &Agent, tunnel: &mut TcpStream) -> serde_json::Value {
    let mut rest = Vec::new();
    match tunnel.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
    let _ = tunnel.shutdown(Shutdown::Both);
    let close = agent.wait_event("the tunnel's close", |e| {
        e["event"] == "close" && e["conn"] == 1
    });
    assert_eq!(close["end"], "shutdown", "{close}");
    close
}

/// SIGTERM: the listener closes, an open tunnel keeps working through the grace period
/// and is closed at its end (logged `shutdown`), and the process exits 0.
#[test]
fn sigterm_drains_then_exits_zero() {
    let _ns = NetNs::enter_new();
    let (mut agent, mut tunnel) = open_tunnel("2s");
    let decision = agent.wait_event("the tunnel's decision", |e| e["event"] == "decision");
    assert_eq!(decision["conn"], 1);
    assert_eq!(decision["action"], "allow", "{decision}");

    let term = Instant::now();
    agent.signal(libc::SIGTERM);
    // New connections are refused while the old one drains.
    let deadline = Instant::now() + WAIT;
    loop {
        match TcpStream::connect(proxy()) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => break,
            Err(e) => panic!("connecting during the drain: {e}"),
            Ok(_) => assert!(Instant::now() < deadline, "still accepting after SIGTERM"),
        }
        thread::sleep(Duration::from_millis(20));
    }
    // The open tunnel still carries bytes during the grace period.
    tunnel.write_all(b"still here").unwrap();
    let mut echo = [0u8; 10];
    tunnel.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"still here");
    assert!(
        term.elapsed() < Duration::from_secs(2),
        "too slow to check the drain before the grace ended; the check is void"
    );

    let status = agent.expect_exit(Duration::from_secs(2) + WAIT);
    assert!(status.success(), "sockgate exited with {status}");
    // The tunnel was closed at the end of the grace period.
    let close = closed_by_shutdown(&agent, &mut tunnel);
    assert_eq!(close["datapath"], "sockmap", "{close}");
}

/// SIGINT: no grace, whatever `shutdown_grace` says: an open tunnel is closed at once
/// (logged `shutdown`), and the process exits 0.
#[test]
fn sigint_closes_open_tunnels_without_grace() {
    let _ns = NetNs::enter_new();
    let (mut agent, mut tunnel) = open_tunnel("30s");
    let int = Instant::now();
    agent.signal(libc::SIGINT);
    let status = agent.expect_exit(WAIT);
    assert!(status.success(), "sockgate exited with {status}");
    // Well inside the 30 s grace SIGTERM would have given.
    assert!(
        int.elapsed() < Duration::from_secs(10),
        "exit after {:?}",
        int.elapsed()
    );
    closed_by_shutdown(&agent, &mut tunnel);
}

/// SIGTERM with nothing open: exit 0 at once.
#[test]
fn sigterm_idle_exits_zero() {
    let _ns = NetNs::enter_new();
    let mut agent = Agent::start(&config("allow", "30s"));
    agent.signal(libc::SIGTERM);
    let status = agent.expect_exit(WAIT);
    assert!(status.success(), "sockgate exited with {status}");
    assert!(
        agent.stderr().contains("shutting down"),
        "{}",
        agent.stderr()
    );
}

/// A reload adds and removes listeners as the file says, and a listener may be IPv6: the
/// proxy moves from 127.0.0.1:3128 to [::1]:3129 without a restart.
#[test]
fn sighup_moves_a_listener_to_ipv6() {
    let _ns = NetNs::enter_new();
    banner_server(TcpListener::bind("127.0.0.1:2525").unwrap(), b"hi\r\n");
    let mut agent = Agent::start(&config("allow", "1s"));
    assert!(tunnel_status().starts_with("HTTP/1.1 200"));

    let moved = config("allow", "1s").replace(PROXY, "[::1]:3129");
    assert_eq!(agent.reload(&moved), Reload::Applied);
    let old = TcpStream::connect(PROXY).map_err(|e| e.kind());
    assert_eq!(
        old.err(),
        Some(ErrorKind::ConnectionRefused),
        "the removed listener still accepts"
    );
    let (mut stream, status) = connect_tunnel("[::1]:3129".parse().unwrap(), "allowed.test:2525");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut banner = [0u8; 4];
    stream
        .read_exact(&mut banner)
        .expect("the banner through the new listener");
    assert_eq!(&banner, b"hi\r\n");
    let decision = agent.wait_event("a decision on the IPv6 listener", |e| {
        e["event"] == "decision" && e["client"].as_str().is_some_and(|c| c.starts_with("[::1]"))
    });
    assert_eq!(decision["action"], "allow", "{decision}");
}
