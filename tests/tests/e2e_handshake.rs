//! The first flight the hard ways, through `sockgate run`'s sni listener with real openssl
//! peers: a ClientHello fragmented over several TLS records (`-max_send_frag 512`), the
//! same ClientHello one byte per TCP segment, and a HelloRetryRequest (the second
//! ClientHello is checked too: a changed SNI resets the connection). Each test runs in its
//! own network namespace.
//!
//! A TLS 1.3 handshake that completes proves the ClientHello reached the server byte for
//! byte (the Finished messages cover the transcript); the taps also compare the bytes.

use std::{
    io::{self, ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::mpsc,
    thread,
};

use sockgate_tests::{
    agent::{Agent, TempDir, WAIT},
    netns::NetNs,
    programs::{Pace, Pki, SClient, Serve, Tap, first_handshake_len, record_count, s_server},
};

const SNI: &str = "127.0.0.1:8443";

fn config(upstream_port: u16) -> String {
    format!(
        r#"
datapath = "sockmap"

[[listener]]
name = "sni"
mode = "sni"
address = "{SNI}"
upstream_port = {upstream_port}

[policy]
default = "deny"

[[policy.rule]]
name = "allow-test"
action = "allow"
fqdn = ["allowed.test"]

[resolver]
hosts = {{ "allowed.test" = ["127.0.0.1"] }}
"#
    )
}

/// 40 ALPN names: enough to make the ClientHello ~1.3 KB, three records of 512 bytes.
fn long_alpn() -> String {
    (0..40)
        .map(|i| format!("proto{i:03}-padding-padding"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs `s_client` against `connect` with `args`, exchanges two lines with `s_server
/// -rev`, and returns its stdout.
fn talk(connect: SocketAddr, cafile: &str, args: &[&str]) -> String {
    let mut all = vec![
        "-servername",
        "allowed.test",
        "-CAfile",
        cafile,
        "-verify_return_error",
    ];
    all.extend_from_slice(args);
    let mut client = SClient::start(&connect.to_string(), &all);
    client.send_line("first line");
    client.expect_stdout("enil tsrif");
    client.send_line("0123456789");
    client.expect_stdout("9876543210");
    let (ok, out, err) = client.finish();
    assert!(ok, "s_client failed:\n{out}\n{err}");
    out
}

/// `-max_send_frag 512` splits the padded ClientHello over three records; sockgate
/// assembles it (all 40 ALPN names are in the decision) and the handshake completes.
#[test]
fn fragmented_client_hello() {
    let _ns = NetNs::enter_new();
    let dir = TempDir::new("frag");
    let pki = Pki::new(&dir, &["allowed.test"]);
    let _server = s_server(&pki, 4433, Serve::Rev, &[]);
    let agent = Agent::start(&config(4433));
    let tap = Tap::start(SNI.parse().unwrap(), Pace::Whole);

    let alpn = long_alpn();
    talk(
        tap.addr,
        pki.cert.to_str().unwrap(),
        &["-max_send_frag", "512", "-alpn", &alpn],
    );

    let sent = tap.up(0);
    let hello = first_handshake_len(&sent).expect("a whole ClientHello went up");
    assert!(
        record_count(&sent[..hello]) >= 3,
        "the ClientHello was not fragmented ({hello} bytes in {} records)",
        record_count(&sent[..hello])
    );
    let conn = agent.conn_for("allowed.test", 0);
    let d = &conn.decision;
    assert_eq!(d["action"], "allow", "{d}");
    assert_eq!(d["fqdn_source"], "sni", "{d}");
    assert_eq!(d["alpn"].as_array().unwrap().len(), 40, "{d}");
    assert_eq!(d["alpn"][39], "proto039-padding-padding", "{d}");
    assert_eq!(conn.close["end"], "fin", "{}", conn.close);
    assert_eq!(conn.close["datapath"], "sockmap", "{}", conn.close);
    assert_eq!(
        conn.close["bytes_up"].as_u64().unwrap(),
        sent.len() as u64,
        "sockgate's count of the client's bytes"
    );
}

/// The fragmented ClientHello again, one byte per TCP segment (TCP_NODELAY, a pause after
/// every byte). The server side receives exactly the bytes the client sent.
#[test]
fn client_hello_one_byte_per_segment() {
    let _ns = NetNs::enter_new();
    let dir = TempDir::new("dribble");
    let pki = Pki::new(&dir, &["allowed.test"]);
    let _server = s_server(&pki, 4433, Serve::Rev, &[]);
    // client -> dribbling tap -> sockgate -> recording tap -> s_server
    let upstream = Tap::start("127.0.0.1:4433".parse().unwrap(), Pace::Whole);
    let agent = Agent::start(&config(upstream.addr.port()));
    let dribble = Tap::start(SNI.parse().unwrap(), Pace::ByteByByte);

    let alpn = long_alpn();
    talk(
        dribble.addr,
        pki.cert.to_str().unwrap(),
        &["-max_send_frag", "512", "-alpn", &alpn],
    );

    let conn = agent.conn_for("allowed.test", 0);
    assert_eq!(conn.decision["action"], "allow", "{}", conn.decision);
    assert_eq!(conn.decision["rule"], "allow-test", "{}", conn.decision);
    assert_eq!(conn.close["end"], "fin", "{}", conn.close);
    let sent = dribble.up(0);
    let received = upstream.up(0);
    let hello = first_handshake_len(&sent).expect("a whole ClientHello went up");
    assert!(record_count(&sent[..hello]) >= 3);
    // A pause of at least 1 ms after each byte: the connection lasted at least that long.
    assert!(
        conn.close["duration_ms"].as_u64().unwrap() >= hello as u64,
        "the ClientHello was not dribbled: {}",
        conn.close
    );
    assert_eq!(
        received[..hello],
        sent[..hello],
        "the ClientHello changed on the way"
    );
    assert_eq!(received, sent, "the client's bytes changed on the way");
}

/// The server accepts only P-256 and the client offers an X25519 key share first, so the
/// server answers with a HelloRetryRequest; sockgate relays it, checks the second
/// ClientHello, and the handshake completes.
#[test]
fn hello_retry_request_completes() {
    let _ns = NetNs::enter_new();
    let dir = TempDir::new("hrr");
    let pki = Pki::new(&dir, &["allowed.test"]);
    let _server = s_server(&pki, 4433, Serve::Rev, &["-groups", "P-256"]);
    let agent = Agent::start(&config(4433));

    let out = talk(
        SNI.parse().unwrap(),
        pki.cert.to_str().unwrap(),
        &["-groups", "X25519:P-256", "-msg"],
    );
    let hellos = out
        .lines()
        .filter(|l| l.starts_with(">>> ") && l.ends_with("ClientHello"))
        .count();
    assert_eq!(hellos, 2, "no HelloRetryRequest round:\n{out}");
    assert!(out.contains("prime256v1"), "{out}");
    let conn = agent.conn_for("allowed.test", 0);
    assert_eq!(conn.decision["action"], "allow", "{}", conn.decision);
    assert_eq!(conn.decision["tls_version"], "1.3", "{}", conn.decision);
    assert_eq!(conn.close["end"], "fin", "{}", conn.close);
    assert_eq!(conn.close["datapath"], "sockmap", "{}", conn.close);
}

/// Reads from `stream` until it holds one whole handshake message (the server's answer).
fn read_handshake(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while first_handshake_len(&got).is_none() {
        let n = stream.read(&mut buf).expect("reading the server's answer");
        assert!(n > 0, "EOF before a whole ServerHello: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// Captures both ClientHellos of a real HelloRetryRequest handshake through `proxy` (a
/// tap records them) and returns the first one and the second one (after the
/// ChangeCipherSpec record) with its SNI patched to a name of the same length.
fn hellos_with_changed_retry(proxy: SocketAddr, cafile: &str) -> (Vec<u8>, Vec<u8>) {
    let tap = Tap::start(proxy, Pace::Whole);
    talk(tap.addr, cafile, &["-groups", "X25519:P-256"]);
    let sent = tap.up(0);
    let first = first_handshake_len(&sent).unwrap();
    // TLS 1.3 middlebox compatibility: a ChangeCipherSpec record before the second hello.
    let ccs = &sent[first..first + 6];
    assert_eq!(
        ccs,
        [20, 3, 3, 0, 1, 1],
        "expected a ChangeCipherSpec record"
    );
    let second = first + 6 + first_handshake_len(&sent[first + 6..]).unwrap();
    let mut retry = sent[first..second].to_vec();
    let at = retry
        .windows(12)
        .position(|w| w == b"allowed.test")
        .expect("the SNI in the second ClientHello");
    retry[at..at + 12].copy_from_slice(b"another.test");
    (sent[..first].to_vec(), retry)
}

/// Sends `hello`, waits for the HelloRetryRequest, sends `retry`, and checks that the
/// client is reset.
fn retry_is_reset(proxy: SocketAddr, hello: &[u8], retry: &[u8]) {
    let mut stream = TcpStream::connect(proxy).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(hello).unwrap();
    let answer = read_handshake(&mut stream);
    assert_eq!(
        answer[5], 2,
        "not a ServerHello/HelloRetryRequest: {answer:?}"
    );
    stream.write_all(retry).unwrap();
    let mut rest = Vec::new();
    let err = loop {
        let mut buf = [0u8; 4096];
        match stream.read(&mut buf) {
            Ok(0) => panic!("FIN instead of a reset (after {rest:?})"),
            // The server's ChangeCipherSpec may still arrive before the reset.
            Ok(n) => rest.extend_from_slice(&buf[..n]),
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
}

/// After a HelloRetryRequest, a second ClientHello that names another server is reset.
/// The two hellos are a real s_client's, captured through a tap; the second one's SNI is
/// patched to a name of the same length.
#[test]
fn hello_retry_request_with_changed_sni_is_reset() {
    let _ns = NetNs::enter_new();
    let dir = TempDir::new("hrr-sni");
    let pki = Pki::new(&dir, &["allowed.test"]);
    let _server = s_server(&pki, 4433, Serve::Rev, &["-groups", "P-256"]);
    let agent = Agent::start(&config(4433));
    let proxy: SocketAddr = SNI.parse().unwrap();

    let (hello, retry) = hellos_with_changed_retry(proxy, pki.cert.to_str().unwrap());
    retry_is_reset(proxy, &hello, &retry);

    let conn = agent.wait_conn("the changed-SNI retry", |d| d["conn"] == 2);
    let d = &conn.decision;
    assert_eq!(d["action"], "deny", "{d}");
    assert_eq!(d["reason"], "hrr_sni_changed", "{d}");
    assert_eq!(d["fqdn"], "allowed.test", "{d}");
    assert_eq!(conn.close["end"], "rst", "{}", conn.close);
}

/// How a [`Watcher`] connection's client-to-server direction ended.
#[derive(Debug)]
enum UpEnd {
    Eof,
    Error(ErrorKind),
}

/// A forwarder in front of the real server that reports how each connection from
/// sockgate ended: a clean EOF or an error such as a reset.
struct Watcher {
    addr: SocketAddr,
    ends: mpsc::Receiver<(usize, UpEnd)>,
}

impl Watcher {
    fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the watcher");
        let addr = listener.local_addr().unwrap();
        let (tx, ends) = mpsc::channel();
        thread::spawn(move || {
            for (index, from_sockgate) in listener.incoming().enumerate() {
                let Ok(mut from_sockgate) = from_sockgate else {
                    return;
                };
                let tx = tx.clone();
                thread::spawn(move || {
                    let mut server = TcpStream::connect(target).expect("connecting to s_server");
                    let mut down_from = server.try_clone().unwrap();
                    let mut down_to = from_sockgate.try_clone().unwrap();
                    thread::spawn(move || {
                        let _ = io::copy(&mut down_from, &mut down_to);
                        let _ = down_to.shutdown(Shutdown::Write);
                    });
                    let mut buf = [0u8; 16 * 1024];
                    let end = loop {
                        match from_sockgate.read(&mut buf) {
                            Ok(0) => break UpEnd::Eof,
                            Ok(n) => {
                                let _ = server.write_all(&buf[..n]);
                            }
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            Err(e) => break UpEnd::Error(e.kind()),
                        }
                    };
                    let _ = server.shutdown(Shutdown::Write);
                    let _ = tx.send((index, end));
                });
            }
        });
        Self { addr, ends }
    }

    /// How the `index`th connection ended; fails the test after [`WAIT`].
    fn end_of(&self, index: usize) -> UpEnd {
        loop {
            let (i, end) = self
                .ends
                .recv_timeout(WAIT)
                .unwrap_or_else(|e| panic!("connection {index} to the server never ended: {e}"));
            if i == index {
                return end;
            }
        }
    }
}

/// After `hrr_sni_changed` the server side is reset too: the upstream connection sockgate
/// opened ends with ECONNRESET, not a clean EOF that could pass for a finished client.
#[test]
fn hello_retry_request_with_changed_sni_resets_the_server_side() {
    let _ns = NetNs::enter_new();
    let dir = TempDir::new("hrr-sni-up");
    let pki = Pki::new(&dir, &["allowed.test"]);
    let _server = s_server(&pki, 4433, Serve::Rev, &["-groups", "P-256"]);
    // client -> sockgate -> watcher -> s_server
    let watcher = Watcher::start("127.0.0.1:4433".parse().unwrap());
    let agent = Agent::start(&config(watcher.addr.port()));
    let proxy: SocketAddr = SNI.parse().unwrap();

    let (hello, retry) = hellos_with_changed_retry(proxy, pki.cert.to_str().unwrap());
    let first = watcher.end_of(0);
    assert!(
        matches!(first, UpEnd::Eof),
        "the completed handshake ended with {first:?}"
    );
    retry_is_reset(proxy, &hello, &retry);
    let conn = agent.wait_conn("the changed-SNI retry", |d| d["conn"] == 2);
    assert_eq!(
        conn.decision["reason"], "hrr_sni_changed",
        "{}",
        conn.decision
    );

    let end = watcher.end_of(1);
    assert!(
        matches!(end, UpEnd::Error(ErrorKind::ConnectionReset)),
        "the server side of the refused connection ended with {end:?}, not a reset"
    );
}
