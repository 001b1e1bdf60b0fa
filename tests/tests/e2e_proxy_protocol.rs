//! PROXY protocol with a real HAProxy, each test in its own network namespace:
//! - in front: HAProxy `send-proxy-v2` (and `send-proxy`, v1) from an address of its own
//!   before a `proxy_protocol` listener; the policy's `sources` and the decision line see
//!   the original client, with the balancer as `via`. No header, garbage, an oversized or
//!   a slow header are reset; a `LOCAL` health check is closed.
//! - behind: a `send_proxy_protocol = "v2"` listener before HAProxy `accept-proxy`, whose
//!   log shows the original client, and the TLS session completes (`openssl s_server`).

use std::{
    fs,
    io::{ErrorKind, Read, Write},
    net::TcpStream,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use sockgate_tests::{
    agent::{Agent, TempDir, WAIT, assert_close_shape, assert_decision_shape},
    netns::NetNs,
    process::Proc,
    programs::{Pki, SClient, Serve, require, s_server},
};

/// Where HAProxy takes clients, v2 and v1, and where it connects from (the `via`).
const FRONT_V2: &str = "127.0.0.1:8080";
const FRONT_V1: &str = "127.0.0.1:8081";
const BALANCER: &str = "127.0.0.3";
/// sockgate's PROXY listeners, v2 and v1.
const SG_V2: &str = "127.0.0.1:8443";
const SG_V1: &str = "127.0.0.1:8444";

/// `haproxy -db -f <cfg>` with `body` after a global section that logs to stdout; returns
/// once every port in `ports` listens.
fn haproxy(dir: &TempDir, body: &str, ports: &[u16]) -> Proc {
    let cfg = dir.join("haproxy.cfg");
    let config = format!(
        "global\n    log stdout format raw local0\n\n\
         defaults\n    mode tcp\n    log global\n    \
         log-format \"client=%ci:%cp frontend=%ft\"\n    \
         timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\n{body}"
    );
    fs::write(&cfg, config).unwrap();
    let mut cmd = Command::new(require("haproxy"));
    cmd.arg("-db").arg("-f").arg(&cfg);
    let proc = Proc::spawn("haproxy", &mut cmd, false);
    for &port in ports {
        wait_listening(port, &proc);
    }
    proc
}

/// Waits until a TCP socket listens on `port` in this thread's namespace. Reading the
/// table rather than connecting keeps probes out of the logs under test.
fn wait_listening(port: u16, proc: &Proc) {
    let needle = format!(":{port:04X} 00000000:0000 0A");
    let start = Instant::now();
    while start.elapsed() < WAIT {
        let table = fs::read_to_string("/proc/thread-self/net/tcp").unwrap_or_default();
        if table.contains(&needle) {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "nothing listens on {port}:\n{}\n{}",
        proc.stdout.text(),
        proc.stderr.text()
    );
}

/// HAProxy in front: v2 and v1 frontends to sockgate's two listeners, from [`BALANCER`].
fn front_haproxy(dir: &TempDir) -> Proc {
    let body = format!(
        "listen v2\n    bind {FRONT_V2}\n    \
         server sg {SG_V2} send-proxy-v2 source {BALANCER}\n\n\
         listen v1\n    bind {FRONT_V1}\n    \
         server sg {SG_V1} send-proxy source {BALANCER}\n"
    );
    haproxy(dir, &body, &[8080, 8081])
}

/// Two sni listeners taking PROXY headers; allowed.test is allowed only from 127.0.0.1,
/// which is the original client, never the balancer.
fn front_config() -> String {
    format!(
        r#"
datapath = "sockmap"

[[listener]]
name = "behind-v2"
mode = "sni"
address = "{SG_V2}"
upstream_port = 4433
proxy_protocol = "v2"

[[listener]]
name = "behind-v1"
mode = "sni"
address = "{SG_V1}"
upstream_port = 4433
proxy_protocol = "v1"

[policy]
default = "deny"

[[policy.rule]]
name = "clients-only"
action = "allow"
fqdn = ["allowed.test"]
sources = ["127.0.0.1/32"]

[resolver]
hosts = {{ "allowed.test" = ["127.0.0.1"] }}

[limits]
handshake_timeout = "1s"
client_first_timeout = "500ms"
"#
    )
}

/// An s_client session through `connect` to allowed.test: a line goes up, its reversal
/// comes back.
fn tls_session(connect: &str, pki: &Pki) {
    let cafile = pki.cert.to_str().unwrap();
    let mut client = SClient::start(
        connect,
        &[
            "-servername",
            "allowed.test",
            "-CAfile",
            cafile,
            "-verify_return_error",
        ],
    );
    client.send_line("proxied hello");
    client.expect_stdout("olleh deixorp");
    let (ok, out, err) = client.finish();
    assert!(ok, "s_client failed:\n{out}\n{err}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
}

/// The policy decides on the client the header names: a rule whose `sources` match only
/// it allows the connection, and the decision line shows it as `client`, the balancer as
/// `via`, over v2 and v1 alike.
#[test]
fn haproxy_in_front_names_the_client() {
    let _ns = NetNs::enter_new();
    let dir = TempDir::new("pp-front");
    let pki = Pki::new(&dir, &["allowed.test"]);
    let _server = s_server(&pki, 4433, Serve::Rev, &[]);
    let agent = Agent::start(&front_config());
    let _haproxy = front_haproxy(&dir);

    for (nth, (front, listener)) in [(FRONT_V2, "behind-v2"), (FRONT_V1, "behind-v1")]
        .into_iter()
        .enumerate()
    {
        tls_session(front, &pki);
        let conn = agent.conn_for("allowed.test", nth);
        let d = &conn.decision;
        assert_decision_shape(d);
        assert_eq!(d["listener"], listener, "{d}");
        assert_eq!(d["action"], "allow", "{d}");
        assert_eq!(d["rule"], "clients-only", "{d}");
        let client = d["client"].as_str().unwrap();
        let via = d["via"].as_str().unwrap_or_else(|| panic!("no via: {d}"));
        assert!(client.starts_with("127.0.0.1:"), "{d}");
        assert!(via.starts_with(&format!("{BALANCER}:")), "{d}");
        let c = &conn.close;
        assert_close_shape(c);
        assert_eq!(c["end"], "fin", "{c}");
        assert_eq!(c["datapath"], "sockmap", "{c}");
    }
}

/// Sends `bytes` to sockgate's v2 listener from a client of our own, then waits for the
/// answer: returns whether it was a reset, and the client's address.
fn send_raw(bytes: &[u8]) -> (bool, String) {
    let mut stream = TcpStream::connect(SG_V2).unwrap();
    let local = stream.local_addr().unwrap().to_string();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(bytes).unwrap();
    let mut buf = [0; 64];
    let reset = match stream.read(&mut buf) {
        Ok(0) => false,
        Ok(n) => panic!("sockgate answered {:?}", &buf[..n]),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
        Err(e) => panic!("reading the answer: {e}"),
    };
    (reset, local)
}

/// The decision and close lines of the connection from `client`.
fn lines_of(agent: &Agent, client: &str) -> (Value, Value) {
    let conn = agent.wait_conn(&format!("decision for {client}"), |d| d["client"] == client);
    (conn.decision, conn.close)
}

/// No header (a ClientHello straight to the listener), garbage, a v1 header on a v2
/// listener, an oversized header and one slower than `handshake_timeout` are each reset
/// with `reason = "proxy_protocol"`; the TCP peer stays the `client`, without `via`.
#[test]
fn bad_headers_are_reset() {
    let _ns = NetNs::enter_new();
    let dir = TempDir::new("pp-bad");
    let pki = Pki::new(&dir, &["allowed.test"]);
    let _server = s_server(&pki, 4433, Serve::Rev, &[]);
    let agent = Agent::start(&front_config());

    // A real client without a balancer: its ClientHello is not a header.
    let (ok, out, err) = SClient::start(SG_V2, &["-servername", "allowed.test"]).finish();
    assert!(!ok, "a handshake without a PROXY header succeeded:\n{out}");
    assert!(format!("{out}{err}").contains("errno=104"), "{out}\n{err}");
    let d = agent.wait_event("the header-less decision", |e| e["event"] == "decision");
    assert_eq!(d["reason"], "proxy_protocol", "{d}");
    assert_eq!(d["action"], "deny", "{d}");
    assert!(d.get("via").is_none(), "{d}");
    assert_eq!(agent.close_of(&d)["end"], "rst");

    let signature = b"\r\n\r\n\0\r\nQUIT\n";
    let mut oversized = signature.to_vec();
    oversized.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    let mut bad_version = signature.to_vec();
    bad_version.extend_from_slice(&[0x31, 0x11, 0, 12, 127, 0, 0, 9, 127, 0, 0, 1, 0, 1, 0, 2]);
    let mut short_addresses = signature.to_vec();
    short_addresses.extend_from_slice(&[0x21, 0x11, 0, 4, 127, 0, 0, 9]);
    let cases: [(&str, &[u8]); 6] = [
        ("garbage", b"\x00\x01\x02 hello, world\r\n\r\n"),
        ("v1 on v2", b"PROXY TCP4 127.0.0.9 127.0.0.1 1 2\r\n"),
        ("oversized", &oversized),
        ("bad version", &bad_version),
        ("short addresses", &short_addresses),
        // Half a header, then silence until handshake_timeout.
        ("slow", &signature[..8]),
    ];
    for (what, bytes) in cases {
        let started = Instant::now();
        let (reset, client) = send_raw(bytes);
        assert!(reset, "{what}: no reset");
        let (d, c) = lines_of(&agent, &client);
        assert_decision_shape(&d);
        assert_eq!(d["reason"], "proxy_protocol", "{what}: {d}");
        assert!(d.get("via").is_none(), "{what}: {d}");
        assert_eq!(c["end"], "rst", "{what}: {c}");
        if what == "slow" {
            assert!(started.elapsed() >= Duration::from_millis(900), "{what}");
        }
    }
}

/// A v2 `LOCAL` header (a balancer's health check) is accepted and closed with FIN, and
/// logged as `reason = "proxy_local"`; the bytes after a real header are the client's.
#[test]
fn local_health_check_is_closed() {
    let _ns = NetNs::enter_new();
    let agent = Agent::start(&front_config());
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    let (reset, client) = send_raw(&local);
    assert!(!reset, "a LOCAL health check was reset");
    let (d, c) = lines_of(&agent, &client);
    assert_eq!(d["reason"], "proxy_local", "{d}");
    assert_eq!(c["end"], "fin", "{c}");
}

/// HAProxy behind sockgate, with `accept-proxy`: its log names the client sockgate
/// accepted (here on an IPv6 listener, so the client is IPv4-mapped and must be sent as
/// TCP4), and the TLS session through both completes.
#[test]
fn haproxy_behind_sees_the_client() {
    let _ns = NetNs::enter_new();
    let dir = TempDir::new("pp-behind");
    let pki = Pki::new(&dir, &["allowed.test"]);
    let _server = s_server(&pki, 4434, Serve::Rev, &[]);
    let body = "listen back\n    bind 127.0.0.1:4433 accept-proxy\n    \
                server tls 127.0.0.1:4434\n";
    let haproxy = haproxy(&dir, body, &[4433]);
    let config = r#"
datapath = "sockmap"

[[listener]]
name = "front"
mode = "sni"
address = "[::]:8443"
upstream_port = 4433
send_proxy_protocol = "v2"

[policy]
default = "deny"

[[policy.rule]]
name = "allow-test"
action = "allow"
fqdn = ["allowed.test"]

[resolver]
hosts = { "allowed.test" = ["127.0.0.1"] }
"#;
    let agent = Agent::start(config);

    tls_session("127.0.0.1:8443", &pki);
    let conn = agent.conn_for("allowed.test", 0);
    let d = &conn.decision;
    assert_eq!(d["action"], "allow", "{d}");
    let client = d["client"].as_str().unwrap();
    let port = client
        .strip_prefix("[::ffff:127.0.0.1]:")
        .unwrap_or_else(|| panic!("not an IPv4-mapped client: {d}"));
    let c = &conn.close;
    assert_eq!(c["end"], "fin", "{c}");
    let want = format!("client=127.0.0.1:{port} frontend=back");
    assert!(
        haproxy.stdout.wait_for(&want, WAIT),
        "HAProxy did not log {want:?}:\n{}\n{}",
        haproxy.stdout.text(),
        haproxy.stderr.text()
    );
}

/// A CONNECT listener that takes a v2 header and sends one: the header and the CONNECT
/// request come in one write, so reading a byte past the header would break the request;
/// the server gets exactly our header for the original client, then exactly the client's
/// bytes; the admin endpoint shows the original client; and the close line counts neither
/// header, nor the CONNECT head.
#[test]
fn header_in_and_out_byte_for_byte() {
    let _ns = NetNs::enter_new();
    let server = std::net::TcpListener::bind("127.0.0.1:4435").unwrap();
    let received = thread::spawn(move || {
        let (mut stream, _) = server.accept().unwrap();
        let mut all = Vec::new();
        stream.read_to_end(&mut all).unwrap();
        stream.write_all(b"ok").unwrap();
        all
    });
    let config = r#"
datapath = "sockmap"

[[listener]]
name = "proxy"
mode = "connect"
address = "127.0.0.1:3128"
proxy_protocol = "v2"
send_proxy_protocol = "v2"

[policy]
default = "deny"

[[policy.rule]]
name = "documentation-net"
action = "allow"
fqdn = ["allowed.test"]
sources = ["192.0.2.0/24"]

[resolver]
hosts = { "allowed.test" = ["127.0.0.1"] }

[admin]
address = "127.0.0.1:9090"
"#;
    let agent = Agent::start(config);

    // PROXY TCP4 192.0.2.7:40000 -> 198.51.100.1:3128.
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0, 12, 192, 0, 2, 7, 198, 51, 100, 1]);
    header.extend_from_slice(&[0x9c, 0x40, 0x0c, 0x38]);
    let mut stream = TcpStream::connect("127.0.0.1:3128").unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut first = header.clone();
    first.extend_from_slice(b"CONNECT allowed.test:4435 HTTP/1.1\r\n\r\n");
    stream.write_all(&first).unwrap();
    let mut answer = [0; 39];
    stream.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200 Connection Established\r\n\r\n");
    let open = sockgate_tests::admin::connections("127.0.0.1:9090".parse().unwrap());
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["client"], "192.0.2.7:40000", "{open:?}");
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    stream.write_all(&payload).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::new();
    stream.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"ok");

    let all = received.join().unwrap();
    let (sent, rest) = all.split_at(header.len().min(all.len()));
    assert_eq!(sent, header.as_slice(), "the server's first bytes");
    assert!(rest == payload.as_slice(), "the client's bytes, exactly");
    let conn = agent.conn_for("allowed.test", 0);
    let d = &conn.decision;
    assert_eq!(d["action"], "allow", "{d}");
    assert_eq!(d["client"], "192.0.2.7:40000", "{d}");
    assert!(d["via"].as_str().unwrap().starts_with("127.0.0.1:"), "{d}");
    let c = &conn.close;
    assert_eq!(c["end"], "fin", "{c}");
    assert_eq!(c["bytes_up"], payload.len() as u64, "{c}");
    assert_eq!(c["bytes_down"], 2, "{c}");
}
