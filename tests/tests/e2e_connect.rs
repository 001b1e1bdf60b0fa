//! `sockgate run` as an explicit proxy (HTTP CONNECT), with real clients and servers: curl
//! to `openssl s_server`, ssh through `nc -X connect`, a server-speaks-first banner, and
//! the HTTP answers for denied, malformed and non-CONNECT requests. Each test runs in its
//! own network namespace.

use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use sockgate_tests::{
    agent::{Agent, TempDir, WAIT, assert_close_shape, assert_decision_shape, connect_config, run},
    netns::NetNs,
    programs::{
        Pki, SClient, Serve, Sshd, banner_server, connect_tunnel, curl, nft, raw_exchange, require,
        s_client_once, s_server,
    },
};

const PROXY: &str = "127.0.0.1:3128";

/// A connect listener on [`PROXY`]; allowed.test is allowed on any port, and both test
/// names resolve to loopback.
fn config() -> String {
    connect_config("client_first_timeout = \"300ms\"\nshutdown_grace = \"1s\"")
}

fn proxy() -> SocketAddr {
    PROXY.parse().unwrap()
}

/// curl through the proxy to a real TLS server: the page arrives, and the decision and
/// close lines say what happened. A denied name gets 403 before any tunnel opens.
#[test]
fn curl_through_connect_allowed_and_denied() {
    let _ns = NetNs::enter_new();
    let dir = TempDir::new("connect");
    let pki = Pki::new(&dir, &["allowed.test", "denied.test"]);
    let _server = s_server(&pki, 4433, Serve::Www, &[]);
    let agent = Agent::start(&config());
    let cacert = pki.cert.to_str().unwrap();

    let (code, page, err) = curl(&[
        "-x",
        &format!("http://{PROXY}"),
        "--cacert",
        cacert,
        "https://allowed.test:4433/",
    ]);
    assert_eq!(code, 0, "curl through sockgate failed: {err}");
    assert!(page.contains("s_server"), "not s_server's page: {page}");

    let conn = agent.conn_for("allowed.test", 0);
    let d = &conn.decision;
    assert_decision_shape(d);
    assert_eq!(d["listener"], "proxy", "{d}");
    assert_eq!(d["fqdn_source"], "connect", "{d}");
    assert_eq!(d["protocol"], "tls", "{d}");
    assert_eq!(d["tls_version"], "1.3", "{d}");
    assert!(
        d["alpn"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "http/1.1"),
        "curl offers http/1.1: {d}"
    );
    assert_eq!(d["action"], "allow", "{d}");
    assert_eq!(d["rule"], "allow-test", "{d}");
    assert_eq!(d["reason"], "rule", "{d}");
    assert_eq!(d["dst"], "127.0.0.1:4433", "{d}");
    let c = &conn.close;
    assert_close_shape(c);
    assert_eq!(c["datapath"], "sockmap", "{c}");
    assert_eq!(c["end"], "fin", "{c}");
    assert!(c["bytes_up"].as_u64().unwrap() > 0, "{c}");
    // The page alone is more than a kilobyte.
    assert!(c["bytes_down"].as_u64().unwrap() > page.len() as u64, "{c}");

    // The kernel's aya-log line for this connection reaches the human log, tagged.
    let conn_id = conn.decision["conn"].as_u64().unwrap();
    let tag = format!("conn {conn_id}: first skb spliced");
    assert!(
        agent.wait_stderr(&tag),
        "no kernel log line `{tag}`:\n{}",
        agent.stderr()
    );

    let (code, _, err) = curl(&[
        "-x",
        &format!("http://{PROXY}"),
        "--cacert",
        cacert,
        "-w",
        "%{http_connect}",
        "-o",
        "/dev/null",
        "https://denied.test:4433/",
    ]);
    assert_ne!(code, 0, "curl to a denied name succeeded");
    let conn = agent.conn_for("denied.test", 0);
    let d = &conn.decision;
    assert_decision_shape(d);
    assert_eq!(d["action"], "deny", "{d}");
    assert_eq!(d["reason"], "default", "{d}");
    assert_eq!(d["rule"], serde_json::Value::Null, "{d}");
    assert_eq!(d["fqdn_source"], "connect", "{d}");
    assert_eq!(conn.close["datapath"], serde_json::Value::Null);
    assert!(err.contains("403"), "curl did not see 403: {err}");
}

/// curl's `%{http_connect}` is the proxy's status for the CONNECT.
#[test]
fn denied_connect_is_403() {
    let _ns = NetNs::enter_new();
    let agent = Agent::start(&config());
    let (_, out, _) = curl(&[
        "-x",
        &format!("http://{PROXY}"),
        "-w",
        "%{http_connect}",
        "-o",
        "/dev/null",
        "https://denied.test:443/",
    ]);
    assert_eq!(out.trim(), "403", "CONNECT status for a denied name");
    let conn = agent.conn_for("denied.test", 0);
    assert_eq!(conn.decision["action"], "deny");
    assert_eq!(conn.close["end"], "fin");
}

/// Anything but a well-formed CONNECT gets an HTTP error and a deny line.
#[test]
fn malformed_request_400_and_get_405() {
    let _ns = NetNs::enter_new();
    let agent = Agent::start(&config());

    let answer = raw_exchange(
        proxy(),
        b"GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 405 "), "GET: {answer:?}");
    let answer = raw_exchange(proxy(), b"this is not http\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400 "), "garbage: {answer:?}");
    let answer = raw_exchange(proxy(), b"CONNECT allowed.test HTTP/1.1\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400 "), "no port: {answer:?}");

    let first = agent.wait_conn("the GET", |d| d["conn"] == 1);
    assert_decision_shape(&first.decision);
    assert_eq!(first.decision["action"], "deny");
    assert!(
        first.decision["reason"]
            .as_str()
            .unwrap()
            .contains("method not allowed"),
        "{}",
        first.decision
    );
    for conn in [2, 3] {
        let bad = agent.wait_conn("a malformed request", |d| d["conn"] == conn);
        assert_eq!(bad.decision["action"], "deny");
        assert!(
            bad.decision["reason"]
                .as_str()
                .unwrap()
                .starts_with("bad request"),
            "{}",
            bad.decision
        );
        assert_eq!(bad.close["datapath"], serde_json::Value::Null);
    }
}

/// A tunnel to an allowed host whose ClientHello names another server is reset.
#[test]
fn sni_must_match_connect_host() {
    let _ns = NetNs::enter_new();
    let dir = TempDir::new("mismatch");
    let pki = Pki::new(&dir, &["allowed.test", "denied.test"]);
    let _server = s_server(&pki, 4433, Serve::Www, &[]);
    let agent = Agent::start(&config());
    // s_client's -proxy sends CONNECT for the -connect target.
    let (ok, out) = s_client_once(
        "allowed.test:4433",
        &["-proxy", PROXY, "-servername", "denied.test"],
    );
    assert!(!ok, "handshake with a mismatched SNI succeeded:\n{out}");
    let conn = agent.conn_for("allowed.test", 0);
    assert_eq!(conn.decision["action"], "deny", "{}", conn.decision);
    assert_eq!(conn.decision["reason"], "sni_mismatch", "{}", conn.decision);
    assert_eq!(conn.close["end"], "rst", "{}", conn.close);
}

/// A real sshd behind CONNECT: ssh with `nc -X connect` as its ProxyCommand runs a
/// command.
#[test]
fn ssh_through_connect() {
    let _ns = NetNs::enter_new();
    let dir = TempDir::new("ssh");
    let sshd = Sshd::start(&dir, "127.0.0.1:2222".parse().unwrap());
    let agent = Agent::start(&config());
    require("nc");
    let (status, out, err) = run(
        "ssh",
        Command::new(require("ssh"))
            .arg("-o")
            .arg(format!("ProxyCommand=nc -X connect -x {PROXY} %h %p"))
            .args(["-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=20"])
            .arg("-i")
            .arg(&sshd.identity)
            .args(["-p", "2222", "root@allowed.test", "echo", "hello"]),
        WAIT,
    );
    assert!(status.success(), "ssh failed ({status}): {err}");
    assert_eq!(out.trim(), "hello");
    let conn = agent.conn_for("allowed.test", 0);
    let d = &conn.decision;
    assert_decision_shape(d);
    assert_eq!(d["protocol"], "ssh", "{d}");
    assert_eq!(d["fqdn_source"], "connect", "{d}");
    assert_eq!(d["action"], "allow", "{d}");
    assert_eq!(d["tls_version"], serde_json::Value::Null, "{d}");
    let c = &conn.close;
    assert_eq!(c["datapath"], "sockmap", "{c}");
    assert_eq!(c["end"], "fin", "{c}");
    assert!(c["bytes_up"].as_u64().unwrap() > 0 && c["bytes_down"].as_u64().unwrap() > 0);
}

/// A server that speaks first, behind CONNECT: the client sends nothing, so sockgate waits
/// `client_first_timeout`, decides on the CONNECT host, and splices; the banner arrives,
/// and bytes flow both ways after it.
#[test]
fn server_speaks_first_behind_connect() {
    let _ns = NetNs::enter_new();
    let listener = TcpListener::bind("127.0.0.1:2525").unwrap();
    banner_server(listener, b"220 banner.test ready\r\n");
    let agent = Agent::start(&config());

    let (mut stream, status) = connect_tunnel(proxy(), "allowed.test:2525");
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "CONNECT answered {status:?}"
    );
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut banner = [0u8; 23];
    stream.read_exact(&mut banner).expect("the banner");
    assert_eq!(&banner, b"220 banner.test ready\r\n");
    stream.write_all(b"EHLO client\r\n").unwrap();
    let mut echo = [0u8; 13];
    stream.read_exact(&mut echo).expect("the echo");
    assert_eq!(&echo, b"EHLO client\r\n");
    stream.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("EOF after our FIN");
    assert!(rest.is_empty(), "unexpected bytes: {rest:?}");

    let conn = agent.conn_for("allowed.test", 0);
    let d = &conn.decision;
    assert_decision_shape(d);
    assert_eq!(d["action"], "allow", "{d}");
    assert_eq!(d["protocol"], "none", "silence has no protocol: {d}");
    assert_eq!(d["fqdn_source"], "connect", "{d}");
    let c = &conn.close;
    assert_eq!(c["datapath"], "sockmap", "{c}");
    assert_eq!(c["end"], "fin", "{c}");
    assert_eq!(c["bytes_down"].as_u64().unwrap(), 23 + 13, "{c}");
    // The client waited out client_first_timeout before the banner was allowed through.
    assert!(c["duration_ms"].as_u64().unwrap() >= 300, "{c}");
}

/// An upstream that never answers the SYN: CONNECT gets 504 after `connect_timeout`.
#[test]
fn connect_timeout_is_504() {
    let _ns = NetNs::enter_new();
    let dir = TempDir::new("connect-timeout");
    // Drop every SYN to port 9 on this namespace's loopback.
    nft(
        &dir,
        "table ip blackhole {\n  chain output {\n    type filter hook output priority 0;\n    \
         tcp dport 9 drop\n  }\n}\n",
    );
    let agent = Agent::start(&config().replace(
        "client_first_timeout = \"300ms\"",
        "client_first_timeout = \"300ms\"\nconnect_timeout = \"500ms\"",
    ));
    let (_, status) = connect_tunnel(proxy(), "allowed.test:9");
    assert!(
        status.starts_with("HTTP/1.1 504"),
        "CONNECT answered {status:?}"
    );
    let conn = agent.conn_for("allowed.test", 0);
    assert_eq!(conn.decision["action"], "deny", "{}", conn.decision);
    assert_eq!(
        conn.decision["reason"], "connect_timeout",
        "{}",
        conn.decision
    );
    assert_eq!(conn.close["datapath"], serde_json::Value::Null);
}

/// With `allow_sni_mismatch = true` the ClientHello may name another server than the
/// CONNECT host: the policy decides on the CONNECT host, and the handshake completes.
#[test]
fn sni_mismatch_allowed_when_configured() {
    let _ns = NetNs::enter_new();
    let dir = TempDir::new("mismatch-ok");
    let pki = Pki::new(&dir, &["allowed.test", "denied.test"]);
    let _server = s_server(&pki, 4433, Serve::Rev, &[]);
    let listener = format!("address = \"{PROXY}\"\n");
    let agent = Agent::start(
        &config().replace(&listener, &format!("{listener}allow_sni_mismatch = true\n")),
    );
    let mut client = SClient::start(
        "allowed.test:4433",
        &[
            "-proxy",
            PROXY,
            "-servername",
            "denied.test",
            "-CAfile",
            pki.cert.to_str().unwrap(),
            "-verify_return_error",
        ],
    );
    client.send_line("mismatch allowed");
    client.expect_stdout("dewolla hctamsim");
    let (ok, out, err) = client.finish();
    assert!(ok, "s_client with a mismatched SNI failed:\n{out}\n{err}");

    let conn = agent.conn_for("allowed.test", 0);
    let d = &conn.decision;
    assert_decision_shape(d);
    assert_eq!(d["action"], "allow", "{d}");
    assert_eq!(d["reason"], "rule", "{d}");
    assert_eq!(d["fqdn_source"], "connect", "{d}");
    assert_eq!(d["protocol"], "tls", "{d}");
    let c = &conn.close;
    assert_close_shape(c);
    assert_eq!(c["datapath"], "sockmap", "{c}");
    assert_eq!(c["end"], "fin", "{c}");
    assert!(
        agent.decisions().iter().all(|d| d["fqdn"] != "denied.test"),
        "the SNI replaced the CONNECT host: {:?}",
        agent.decisions()
    );
}

/// Opens a CONNECT tunnel to the banner server and reads the banner through it, so the
/// tunnel is relayed (and counted) before this returns.
fn banner_tunnel() -> TcpStream {
    let (mut stream, status) = connect_tunnel(proxy(), "allowed.test:2525");
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "CONNECT answered {status:?}"
    );
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut banner = [0u8; 23];
    stream.read_exact(&mut banner).expect("the banner");
    assert_eq!(&banner, b"220 banner.test ready\r\n");
    stream
}

/// `max_connections = 2`: with two tunnels open, a third connection is reset at accept
/// with its own decision and close lines; once a tunnel closes, connections work again.
#[test]
fn max_connections_resets_the_one_too_many() {
    let _ns = NetNs::enter_new();
    let listener = TcpListener::bind("127.0.0.1:2525").unwrap();
    banner_server(listener, b"220 banner.test ready\r\n");
    let agent = Agent::start(&config().replace("[limits]\n", "[limits]\nmax_connections = 2\n"));

    let mut first = banner_tunnel();
    let _second = banner_tunnel();

    let mut third = TcpStream::connect(proxy()).expect("the kernel accepts the third");
    third.set_read_timeout(Some(WAIT)).unwrap();
    // The reset may already be there, so the write may fail; the read tells.
    let _ = third.write_all(b"CONNECT allowed.test:2525 HTTP/1.1\r\nHost: allowed.test\r\n\r\n");
    let mut answer = Vec::new();
    match third.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
    assert!(
        answer.is_empty(),
        "the third connection got an answer: {answer:?}"
    );
    let refused = agent.wait_conn("the refused connection", |d| {
        d["reason"] == "max_connections"
    });
    assert_decision_shape(&refused.decision);
    assert_eq!(refused.decision["action"], "deny", "{}", refused.decision);
    assert_eq!(refused.decision["conn"], 3, "{}", refused.decision);
    assert_close_shape(&refused.close);
    assert_eq!(refused.close["end"], "rst", "{}", refused.close);
    assert_eq!(refused.close["datapath"], serde_json::Value::Null);

    // Close the first tunnel and wait for its close line.
    first.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    first.read_to_end(&mut rest).expect("EOF after our FIN");
    drop(first);
    let closed = agent.conn_for("allowed.test", 0);
    assert_eq!(closed.close["end"], "fin", "{}", closed.close);

    // The count drops just after the close line is written: allow a few tries.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut stream = TcpStream::connect(proxy()).expect("connecting to sockgate");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let _ =
            stream.write_all(b"CONNECT allowed.test:2525 HTTP/1.1\r\nHost: allowed.test\r\n\r\n");
        let head = try_read_head(&mut stream);
        if head.starts_with("HTTP/1.1 200") {
            let mut banner = [0u8; 23];
            stream.read_exact(&mut banner).expect("the banner");
            assert_eq!(&banner, b"220 banner.test ready\r\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection got through after a tunnel closed; last answer {head:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let again = agent.wait_event("an allowed connection after the close", |e| {
        e["event"] == "decision" && e["action"] == "allow" && e["conn"].as_u64() > Some(3)
    });
    assert_eq!(again["fqdn"], "allowed.test", "{again}");
}

/// An HTTP response head, or what arrived before EOF or a reset.
fn try_read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}
