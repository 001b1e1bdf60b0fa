//! How sockgate reads the server's answer to a ClientHello, against a scripted server: each
//! way the answer can be wrong has its own reason token, and the ServerHello is bounded by
//! what TLS allows, not by the client-side `max_client_hello`. Each test runs in its own
//! network namespace, through an SNI listener on sockmap.

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
};

use sockgate_tests::{
    agent::{Agent, WAIT},
    netns::NetNs,
};

const SNI: &str = "127.0.0.1:8443";

/// The ServerHello random that marks a HelloRetryRequest (RFC 8446 4.1.3).
const HRR_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

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

[limits]
max_client_hello = 512
"#
    )
}

/// One handshake message in one record.
fn record(msg_type: u8, body: &[u8]) -> Vec<u8> {
    let len = body.len() as u32;
    let mut msg = vec![msg_type];
    msg.extend(&len.to_be_bytes()[1..]);
    msg.extend(body);
    let mut rec = vec![0x16, 0x03, 0x03];
    rec.extend((msg.len() as u16).to_be_bytes());
    rec.extend(msg);
    rec
}

fn extension(ext_type: u16, data: &[u8]) -> Vec<u8> {
    let mut ext = ext_type.to_be_bytes().to_vec();
    ext.extend((data.len() as u16).to_be_bytes());
    ext.extend(data);
    ext
}

/// A TLS 1.3 ClientHello for allowed.test, well under 512 bytes.
fn client_hello() -> Vec<u8> {
    let name = b"allowed.test";
    let mut sni = ((name.len() + 3) as u16).to_be_bytes().to_vec();
    sni.push(0);
    sni.extend((name.len() as u16).to_be_bytes());
    sni.extend(name);
    let mut exts = extension(0, &sni);
    exts.extend(extension(43, &[2, 0x03, 0x04]));
    let mut body = vec![0x03, 0x03];
    body.extend([7; 32]);
    body.extend([0, 0, 2, 0x13, 0x01, 1, 0]);
    body.extend((exts.len() as u16).to_be_bytes());
    body.extend(exts);
    record(1, &body)
}

/// A TLS 1.3 ServerHello (or HelloRetryRequest, by its random) with `extra` extension
/// bytes of an unknown type.
fn server_hello(random: [u8; 32], extra: usize) -> Vec<u8> {
    let mut exts = extension(43, &[0x03, 0x04]);
    if extra > 0 {
        exts.extend(extension(0xfafa, &vec![0; extra]));
    }
    let mut body = vec![0x03, 0x03];
    body.extend(random);
    body.extend([0, 0x13, 0x01, 0]);
    body.extend((exts.len() as u16).to_be_bytes());
    body.extend(exts);
    record(2, &body)
}

/// A server that answers each ClientHello it reads with the next of `replies`, then
/// holds the connection until sockgate closes it.
fn scripted_server(replies: Vec<Vec<u8>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding the server");
    let port = listener.local_addr().unwrap().port();
    let hello_len = client_hello().len();
    thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accepting sockgate");
        conn.set_read_timeout(Some(WAIT)).unwrap();
        for reply in replies {
            let mut hello = vec![0; hello_len];
            if conn.read_exact(&mut hello).is_err() {
                return;
            }
            conn.write_all(&reply).expect("answering sockgate");
        }
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
    });
    port
}

/// Sends the ClientHello (again after each HelloRetryRequest) and reads what sockgate
/// relays until it closes the connection; returns the bytes relayed and whether it reset.
fn client(retries: usize) -> (Vec<u8>, bool) {
    let proxy: SocketAddr = SNI.parse().unwrap();
    let mut stream = TcpStream::connect(proxy).expect("connecting to sockgate");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(&client_hello()).unwrap();
    let mut got = Vec::new();
    let mut sent_again = 0;
    let mut buf = [0; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (got, false),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return (got, true),
            Err(e) => panic!("reading from sockgate: {e}"),
        }
        let answers = got.windows(6).filter(|w| w[0] == 0x16 && w[5] == 2).count();
        if sent_again < retries && answers > sent_again {
            stream.write_all(&client_hello()).unwrap();
            sent_again += 1;
        }
    }
}

/// Runs one exchange with a server sending `replies`; returns the decision line, after
/// checking that the client got every reply byte for byte and then a reset.
fn refused_with(replies: Vec<Vec<u8>>) -> serde_json::Value {
    let _ns = NetNs::enter_new();
    let expected: Vec<u8> = replies.concat();
    let retries = replies.len() - 1;
    let agent = Agent::start(&config(scripted_server(replies)));
    let (got, reset) = client(retries);
    assert_eq!(got, expected, "the server's bytes were not relayed as sent");
    assert!(reset, "the refused client was not reset");
    let conn = agent.wait_conn("the refused connection", |d| d["conn"] == 1);
    assert_eq!(conn.decision["action"], "deny", "{}", conn.decision);
    assert_eq!(conn.close["end"], "rst", "{}", conn.close);
    conn.decision
}

/// A handshake record of another message than a ServerHello is malformed, not "not TLS".
#[test]
fn malformed_server_hello_has_its_own_reason() {
    let d = refused_with(vec![record(11, &[])]);
    assert_eq!(
        d["reason"], "server_hello_malformed: unexpected_message: handshake type 11",
        "{d}"
    );
}

/// A ServerHello header claiming 128 KiB, more than any ServerHello can be.
#[test]
fn oversized_server_hello_has_its_own_reason() {
    let header = vec![0x16, 0x03, 0x03, 0x00, 0x04, 0x02, 0x02, 0x00, 0x00];
    let d = refused_with(vec![header]);
    assert_eq!(d["reason"], "server_hello_too_large", "{d}");
}

/// A second HelloRetryRequest (RFC 8446 4.1.4 forbids it) is refused as such.
#[test]
fn second_hello_retry_request_has_its_own_reason() {
    let hrr = server_hello(HRR_RANDOM, 0);
    let d = refused_with(vec![hrr.clone(), hrr]);
    assert_eq!(d["reason"], "hello_retry_repeated", "{d}");
}

/// A 2 KB ServerHello passes with `max_client_hello = 512`: the client-side limit does not
/// cap the server's answer. The connection is relayed, and bytes flow after it.
#[test]
fn server_hello_is_not_capped_by_the_client_limit() {
    let _ns = NetNs::enter_new();
    let hello = server_hello([9; 32], 2000);
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding the server");
    let port = listener.local_addr().unwrap().port();
    let reply = hello.clone();
    let server = thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accepting sockgate");
        conn.set_read_timeout(Some(WAIT)).unwrap();
        let mut first = vec![0; client_hello().len()];
        conn.read_exact(&mut first).expect("the ClientHello");
        conn.write_all(&reply).unwrap();
        let mut line = [0; 5];
        conn.read_exact(&mut line)
            .expect("the client's bytes after the handshake");
        conn.write_all(&line).unwrap();
    });
    let agent = Agent::start(&config(port));
    let mut stream = TcpStream::connect(SNI).expect("connecting to sockgate");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(&client_hello()).unwrap();
    let mut got = vec![0; hello.len()];
    stream
        .read_exact(&mut got)
        .expect("the relayed ServerHello");
    assert_eq!(got, hello);
    stream.write_all(b"hello").unwrap();
    let mut echo = [0; 5];
    stream
        .read_exact(&mut echo)
        .expect("the echo after the handoff");
    assert_eq!(&echo, b"hello");
    server.join().unwrap();
    let d = agent.wait_event("the decision", |e| e["event"] == "decision");
    assert_eq!(d["action"], "allow", "{d}");
    assert_eq!(d["tls_version"], "1.3", "{d}");
}
