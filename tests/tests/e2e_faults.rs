//! Faults around a relayed connection, through `sockgate run` with a CONNECT listener: an
//! upstream that refuses, a name that does not resolve, an idle tunnel, a reset from either
//! side mid-splice, and the agent killed with SIGKILL and started again. Each test runs in
//! its own network namespace.

use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use proxy_user::sockopt;
use sockgate_tests::{
    agent::{Agent, Reload, WAIT, assert_close_shape},
    netns::NetNs,
    programs::{connect_tunnel, s_client_once},
};

const PROXY: &str = "127.0.0.1:3128";
const SNI: &str = "127.0.0.1:8443";
const ECHO: &str = "127.0.0.1:2525";

/// A connect listener on [`PROXY`] and an sni listener on [`SNI`] (to port 9, where nothing
/// listens). allowed.test resolves to loopback; anything under .invalid is allowed and
/// resolves nowhere.
fn config(datapath: &str, limits: &str) -> String {
    format!(
        r#"
datapath = "{datapath}"

[[listener]]
name = "proxy"
mode = "connect"
address = "{PROXY}"

[[listener]]
name = "sni"
mode = "sni"
address = "{SNI}"
upstream_port = 9

[policy]
default = "deny"

[[policy.rule]]
name = "allow-test"
action = "allow"
fqdn = ["allowed.test", ".invalid"]

[resolver]
timeout = "2s"
hosts = {{ "allowed.test" = ["127.0.0.1"] }}

[limits]
{limits}
"#
    )
}

/// An echo server on [`ECHO`] for one connection at a time; each connection's end (Ok for
/// EOF, else the error kind) comes out of the channel.
fn echo_server() -> mpsc::Receiver<Result<(), ErrorKind>> {
    let listener = TcpListener::bind(ECHO).unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let tx = tx.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let end = loop {
                    match stream.read(&mut buf) {
                        Ok(0) => break Ok(()),
                        Ok(n) => {
                            if let Err(e) = stream.write_all(&buf[..n]) {
                                break Err(e.kind());
                            }
                        }
                        Err(e) => break Err(e.kind()),
                    }
                };
                let _ = tx.send(end);
            });
        }
    });
    rx
}

fn proxy() -> SocketAddr {
    PROXY.parse().unwrap()
}

/// A tunnel to the echo server that has carried one round trip, so it is spliced.
fn echo_tunnel() -> TcpStream {
    let (mut stream, status) = connect_tunnel(proxy(), &format!("allowed.test:{}", 2525));
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "CONNECT answered {status:?}"
    );
    stream.set_read_timeout(Some(WAIT)).unwrap();
    round_trip(&mut stream, b"ping");
    stream
}

fn round_trip(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).expect("writing to the tunnel");
    let mut echo = vec![0u8; bytes.len()];
    stream.read_exact(&mut echo).expect("the echo");
    assert_eq!(echo, bytes);
}

/// How reading `stream` ends: Ok(bytes) at EOF, or the error kind.
fn read_end(stream: &mut TcpStream) -> Result<usize, ErrorKind> {
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).map_err(|e| e.kind())
}

fn server_end(ends: &mpsc::Receiver<Result<(), ErrorKind>>) -> Result<(), ErrorKind> {
    ends.recv_timeout(WAIT)
        .expect("the echo server saw the connection end")
}

/// Nothing listens upstream: CONNECT gets 502 and an SNI-routed client a reset, each with
/// `reason = "connect_failed"`.
#[test]
fn upstream_refuses() {
    let _ns = NetNs::enter_new();
    let agent = Agent::start(&config("sockmap", ""));
    let (_, status) = connect_tunnel(proxy(), "allowed.test:9");
    assert!(
        status.starts_with("HTTP/1.1 502"),
        "CONNECT answered {status:?}"
    );
    let conn = agent.conn_for("allowed.test", 0);
    assert_eq!(
        conn.decision["reason"], "connect_failed",
        "{}",
        conn.decision
    );
    assert_eq!(
        conn.close["end"], "fin",
        "the 502 is an answer: {}",
        conn.close
    );

    let (ok, out) = s_client_once(SNI, &["-servername", "allowed.test"]);
    assert!(!ok, "a handshake completed with no server:\n{out}");
    assert!(
        out.contains("errno=104") || out.contains("Connection reset"),
        "s_client was not reset:\n{out}"
    );
    let conn = agent.conn_for("allowed.test", 1);
    assert_eq!(
        conn.decision["reason"], "connect_failed",
        "{}",
        conn.decision
    );
    assert_eq!(conn.close["end"], "rst", "{}", conn.close);
}

/// A name that resolves nowhere (no DNS server is reachable in the namespace): 502 with
/// `reason = "dns_error"`.
#[test]
fn dns_failure() {
    let _ns = NetNs::enter_new();
    let agent = Agent::start(&config("sockmap", ""));
    let started = Instant::now();
    let (_, status) = connect_tunnel(proxy(), "nowhere.invalid:443");
    assert!(
        status.starts_with("HTTP/1.1 502"),
        "CONNECT answered {status:?}"
    );
    assert!(
        started.elapsed() < WAIT,
        "the resolver timeout did not hold"
    );
    let conn = agent.conn_for("nowhere.invalid", 0);
    assert_eq!(conn.decision["action"], "deny", "{}", conn.decision);
    assert_eq!(conn.decision["reason"], "dns_error", "{}", conn.decision);
    assert_close_shape(&conn.close);
}

/// `idle_timeout = "1s"`: a tunnel that carries a byte every 300 ms lives on past it; once
/// silent, it is reset on both sides within about a second, and its close says `timeout`.
fn idle_timeout(datapath: &str) {
    let _ns = NetNs::enter_new();
    let ends = echo_server();
    let agent = Agent::start(&config(datapath, "idle_timeout = \"1s\""));
    let mut stream = echo_tunnel();
    for i in 0..8u8 {
        thread::sleep(Duration::from_millis(300));
        round_trip(&mut stream, &[i]);
    }
    let silent = Instant::now();
    assert_eq!(read_end(&mut stream), Err(ErrorKind::ConnectionReset));
    let waited = silent.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "reset after {waited:?} of silence"
    );
    assert_eq!(server_end(&ends), Err(ErrorKind::ConnectionReset));
    let conn = agent.conn_for("allowed.test", 0);
    assert_close_shape(&conn.close);
    assert_eq!(conn.close["end"], "timeout", "{}", conn.close);
    assert_eq!(conn.close["datapath"], datapath, "{}", conn.close);
    assert_eq!(conn.close["bytes_up"], 4 + 8, "{}", conn.close);
}

#[test]
fn idle_timeout_sockmap() {
    idle_timeout("sockmap");
}

#[test]
fn idle_timeout_splice() {
    idle_timeout("splice");
}

/// A reload's `idle_timeout` reaches tunnels that are already open: one opened under
/// "1h" is reset within about a second of silence once the config says "1s".
#[test]
fn reloaded_idle_timeout_applies_to_open_tunnels() {
    let _ns = NetNs::enter_new();
    let ends = echo_server();
    let mut agent = Agent::start(&config("sockmap", "idle_timeout = \"1h\""));
    let mut stream = echo_tunnel();
    round_trip(&mut stream, b"x");
    let reloaded = Instant::now();
    assert!(matches!(
        agent.reload(&config("sockmap", "idle_timeout = \"1s\"")),
        Reload::Applied
    ));
    assert_eq!(read_end(&mut stream), Err(ErrorKind::ConnectionReset));
    let waited = reloaded.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "reset {waited:?} after the reload"
    );
    assert_eq!(server_end(&ends), Err(ErrorKind::ConnectionReset));
    let conn = agent.conn_for("allowed.test", 0);
    assert_eq!(conn.close["end"], "timeout", "{}", conn.close);
}

/// A reset from the client mid-splice reaches the server as a reset, and the reverse.
#[test]
fn resets_mid_splice() {
    let _ns = NetNs::enter_new();
    let ends = echo_server();
    let agent = Agent::start(&config("sockmap", ""));

    let stream = echo_tunnel();
    sockopt::set_linger_zero(&stream).unwrap();
    drop(stream);
    assert_eq!(server_end(&ends), Err(ErrorKind::ConnectionReset));
    let conn = agent.conn_for("allowed.test", 0);
    assert_eq!(conn.close["end"], "rst", "{}", conn.close);

    // The server resets, after one round trip.
    let listener = TcpListener::bind("127.0.0.1:2526").unwrap();
    thread::spawn(move || {
        let (mut server, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).unwrap();
        server.write_all(&buf).unwrap();
        thread::sleep(Duration::from_millis(200));
        sockopt::set_linger_zero(&server).unwrap();
    });
    let (mut stream, status) = connect_tunnel(proxy(), "allowed.test:2526");
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "CONNECT answered {status:?}"
    );
    stream.set_read_timeout(Some(WAIT)).unwrap();
    round_trip(&mut stream, b"ping");
    assert_eq!(read_end(&mut stream), Err(ErrorKind::ConnectionReset));
    let conn = agent.conn_for("allowed.test", 1);
    assert_eq!(conn.close["end"], "rst", "{}", conn.close);
}

/// SIGKILL mid-transfer: both peers of the spliced tunnel see a reset, not a clean end of
/// a truncated stream. The agent then starts again on the same ports, whatever the dead
/// process left in the kernel, and relays new tunnels.
#[test]
fn sigkill_resets_spliced_connections_and_restart_is_clean() {
    let _ns = NetNs::enter_new();
    // A server that streams to the client until its write fails. Only one thread uses
    // each socket, so the reset is reported to the reader that checks for it.
    let listener = TcpListener::bind("127.0.0.1:2526").unwrap();
    let streamer = thread::spawn(move || {
        let (mut server, _) = listener.accept().unwrap();
        let mut ping = [0u8; 4];
        server.read_exact(&mut ping).unwrap();
        let chunk = [7u8; 16 << 10];
        loop {
            if let Err(e) = server.write_all(&chunk) {
                return e.kind();
            }
        }
    });
    let mut agent = Agent::start(&config("sockmap", ""));
    let (mut stream, status) = connect_tunnel(proxy(), "allowed.test:2526");
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "CONNECT answered {status:?}"
    );
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(b"ping").unwrap();
    let mut some = vec![0u8; 1 << 20];
    stream.read_exact(&mut some).expect("the stream flows");
    agent.signal(libc::SIGKILL);
    agent.expect_exit(WAIT);
    assert_eq!(read_end(&mut stream), Err(ErrorKind::ConnectionReset));
    let server = streamer.join().unwrap();
    assert!(
        matches!(server, ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
        "the server's write ended with {server:?}"
    );

    let ends = echo_server();
    let _again = Agent::start(&config("sockmap", ""));
    let mut stream = echo_tunnel();
    round_trip(&mut stream, b"after the restart");
    stream.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_end(&mut stream), Ok(0));
    assert_eq!(server_end(&ends), Ok(()));
}

/// A slowloris client sending its ClientHello at 1 byte/s through the SNI listener is
/// reset at `handshake_timeout`, with `reason = "timeout"`, however steadily it trickles.
#[test]
fn slowloris_client_hello_is_closed_at_handshake_timeout() {
    let _ns = NetNs::enter_new();
    let agent = Agent::start(&config("sockmap", "handshake_timeout = \"2s\""));
    let mut stream = TcpStream::connect(SNI).unwrap();
    // A handshake record header announcing a 512-byte ClientHello, then its body.
    let hello = [22u8, 3, 1, 2, 0, 1, 0, 1, 252, 3, 3];
    let started = Instant::now();
    let mut sent = 0;
    let reset = loop {
        if sent < hello.len() && stream.write_all(&hello[sent..=sent]).is_err() {
            break true;
        }
        sent += 1;
        stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        match stream.read(&mut [0u8; 16]) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => break e.kind() == ErrorKind::ConnectionReset,
            Ok(n) => panic!("read {n} bytes instead of a reset"),
        }
        assert!(started.elapsed() < WAIT, "the slow client was never closed");
    };
    let waited = started.elapsed();
    assert!(reset, "the slow client was not reset");
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(4),
        "reset after {waited:?}, sent {sent} bytes"
    );
    let conn = agent.wait_conn("the slow hello", |d| d["conn"] == 1);
    assert_eq!(conn.decision["reason"], "timeout", "{}", conn.decision);
    assert_eq!(conn.close["end"], "timeout", "{}", conn.close);
}
