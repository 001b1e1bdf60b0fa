//! `sockgate run` as an SNI router with a `[resolver] hosts` override, with `openssl
//! s_client` and `s_server`: an allowed name completes the handshake and exchanges data, a
//! denied one is reset, or gets a TLS alert with `deny_with = "alert"`. Each test runs in
//! its own network namespace.

use std::{
    io::{ErrorKind, Read, Write},
    net::TcpStream,
};

use serde_json::Value;
use sockgate_tests::{
    agent::{Agent, TempDir, WAIT, assert_close_shape, assert_decision_shape},
    netns::NetNs,
    programs::{Pki, SClient, Serve, s_client_once, s_server},
};

const SNI: &str = "127.0.0.1:8443";

/// An sni listener on [`SNI`] to port 4433; allowed.test is allowed, denied by `deny_with`.
fn config(deny_with: &str) -> String {
    format!(
        r#"
datapath = "sockmap"

[[listener]]
name = "sni"
mode = "sni"
address = "{SNI}"
upstream_port = 4433

[policy]
default = "deny"
no_sni = "deny"
deny_with = "{deny_with}"

[[policy.rule]]
name = "allow-test"
action = "allow"
fqdn = ["allowed.test"]

[resolver]
hosts = {{ "allowed.test" = ["127.0.0.1"], "denied.test" = ["127.0.0.1"] }}
"#
    )
}

/// The handshake completes through sockgate (the certificate verifies against our CA), a
/// line goes up and its reversal comes back.
#[test]
fn sni_allowed_handshake_and_data() {
    let _ns = NetNs::enter_new();
    let dir = TempDir::new("sni");
    let pki = Pki::new(&dir, &["allowed.test", "denied.test"]);
    let _server = s_server(&pki, 4433, Serve::Rev, &[]);
    let agent = Agent::start(&config("reset"));

    let cafile = pki.cert.to_str().unwrap();
    let mut client = SClient::start(
        SNI,
        &[
            "-servername",
            "allowed.test",
            "-CAfile",
            cafile,
            "-verify_return_error",
            "-alpn",
            "h2,http/1.1",
        ],
    );
    client.send_line("hello through sockgate");
    client.expect_stdout("etagkcos hguorht olleh");
    client.send_line("second line");
    client.expect_stdout("enil dnoces");
    let (ok, out, err) = client.finish();
    assert!(ok, "s_client failed:\n{out}\n{err}");
    assert!(
        out.contains("Verify return code: 0 (ok)"),
        "certificate did not verify:\n{out}"
    );

    let conn = agent.conn_for("allowed.test", 0);
    let d = &conn.decision;
    assert_decision_shape(d);
    assert_eq!(d["listener"], "sni", "{d}");
    assert_eq!(d["fqdn_source"], "sni", "{d}");
    assert_eq!(d["protocol"], "tls", "{d}");
    assert_eq!(d["tls_version"], "1.3", "{d}");
    assert_eq!(d["alpn"], serde_json::json!(["h2", "http/1.1"]), "{d}");
    assert_eq!(d["ech"], false, "{d}");
    assert_eq!(d["action"], "allow", "{d}");
    assert_eq!(d["rule"], "allow-test", "{d}");
    assert_eq!(d["dst"], "127.0.0.1:4433", "{d}");
    let c = &conn.close;
    assert_close_shape(c);
    assert_eq!(c["datapath"], "sockmap", "{c}");
    assert_eq!(c["end"], "fin", "{c}");
    assert!(c["bytes_up"].as_u64().unwrap() > 0, "{c}");
    assert!(c["bytes_down"].as_u64().unwrap() > 0, "{c}");
}

/// A denied name is reset: the client sees ECONNRESET and no server certificate.
#[test]
fn sni_denied_is_reset() {
    let _ns = NetNs::enter_new();
    let dir = TempDir::new("sni-deny");
    let pki = Pki::new(&dir, &["allowed.test", "denied.test"]);
    let _server = s_server(&pki, 4433, Serve::Rev, &[]);
    let agent = Agent::start(&config("reset"));

    let (ok, out) = s_client_once(SNI, &["-servername", "denied.test"]);
    assert!(!ok, "handshake to a denied name succeeded:\n{out}");
    assert!(out.contains("errno=104"), "no connection reset:\n{out}");
    assert!(out.contains("no peer certificate"), "{out}");
    let conn = agent.conn_for("denied.test", 0);
    let d = &conn.decision;
    assert_decision_shape(d);
    assert_eq!(d["action"], "deny", "{d}");
    assert_eq!(d["reason"], "default", "{d}");
    assert_eq!(d["fqdn_source"], "sni", "{d}");
    assert_eq!(d["protocol"], "tls", "{d}");
    assert_eq!(d["rule"], Value::Null, "{d}");
    assert_eq!(conn.close["end"], "rst", "{}", conn.close);
    assert_eq!(conn.close["datapath"], Value::Null, "{}", conn.close);
}

/// `deny_with = "alert"`: a denied name gets a fatal access_denied alert, a ClientHello
/// without SNI gets unrecognized_name.
#[test]
fn sni_denied_with_alert() {
    let _ns = NetNs::enter_new();
    let dir = TempDir::new("sni-alert");
    let pki = Pki::new(&dir, &["allowed.test", "denied.test"]);
    let _server = s_server(&pki, 4433, Serve::Rev, &[]);
    let agent = Agent::start(&config("alert"));

    let (ok, out) = s_client_once(SNI, &["-servername", "denied.test"]);
    assert!(!ok, "handshake to a denied name succeeded:\n{out}");
    assert!(
        out.contains("alert access denied") && out.contains("SSL alert number 49"),
        "no access_denied alert:\n{out}"
    );
    let conn = agent.conn_for("denied.test", 0);
    assert_eq!(conn.decision["action"], "deny", "{}", conn.decision);
    assert_eq!(conn.close["end"], "fin", "{}", conn.close);

    let (ok, out) = s_client_once(SNI, &["-noservername"]);
    assert!(!ok, "handshake without SNI succeeded:\n{out}");
    assert!(
        out.contains("unrecognized name") && out.contains("SSL alert number 112"),
        "no unrecognized_name alert:\n{out}"
    );
    let conn = agent.wait_conn("the ClientHello without SNI", |d| d["fqdn"].is_null());
    assert_eq!(conn.decision["action"], "deny", "{}", conn.decision);
    assert_eq!(conn.decision["protocol"], "tls", "{}", conn.decision);
    assert_eq!(conn.decision["fqdn_source"], "none", "{}", conn.decision);
}

/// A client that stalls half-way through its ClientHello is reset after
/// `handshake_timeout`, and the log says `timeout`.
#[test]
fn stalled_client_hello_times_out() {
    let _ns = NetNs::enter_new();
    let agent = Agent::start(&config("reset").replace(
        "[resolver]",
        "[limits]\nclient_first_timeout = \"200ms\"\nhandshake_timeout = \"500ms\"\n\n[resolver]",
    ));
    let mut stream = TcpStream::connect(SNI).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    // A handshake record header announcing 512 bytes, and only 4 of them.
    stream.write_all(&[22, 3, 1, 2, 0, 1, 0, 1, 252]).unwrap();
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Ok(n) => panic!("read {n} bytes instead of a reset"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
    let conn = agent.wait_conn("the stalled hello", |d| d["conn"] == 1);
    assert_eq!(conn.decision["action"], "deny", "{}", conn.decision);
    assert_eq!(conn.decision["reason"], "timeout", "{}", conn.decision);
    assert_eq!(conn.close["end"], "timeout", "{}", conn.close);
}

/// A server that takes the ClientHello and never answers: at `handshake_timeout` both sides
/// are reset, the server too (a FIN would read as a client that gave up).
#[test]
fn silent_server_times_out_with_resets() {
    let _ns = NetNs::enter_new();
    let silent = std::net::TcpListener::bind("127.0.0.1:4433").unwrap();
    let agent = Agent::start(&config("reset").replace(
        "[resolver]",
        "[limits]\nclient_first_timeout = \"200ms\"\nhandshake_timeout = \"500ms\"\n\n[resolver]",
    ));
    let client =
        std::thread::spawn(|| s_client_once(SNI, &["-servername", "allowed.test", "-no_ign_eof"]));
    let (mut upstream, _) = silent.accept().expect("sockgate connects to the server");
    upstream.set_read_timeout(Some(WAIT)).unwrap();
    let mut hello = Vec::new();
    let end = loop {
        let mut buf = [0u8; 4096];
        match upstream.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => hello.extend_from_slice(&buf[..n]),
            Err(e) => break Some(e.kind()),
        }
    };
    assert_eq!(
        hello.first(),
        Some(&22),
        "the ClientHello reached the server"
    );
    assert_eq!(
        end,
        Some(ErrorKind::ConnectionReset),
        "the server side is reset"
    );
    let (ok, out) = client.join().unwrap();
    assert!(!ok, "the client cannot complete a handshake:\n{out}");
    let conn = agent.wait_conn("the timed-out handshake", |d| d["conn"] == 1);
    assert_eq!(conn.decision["reason"], "timeout", "{}", conn.decision);
    assert_eq!(conn.close["end"], "timeout", "{}", conn.close);
}
