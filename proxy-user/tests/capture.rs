//! ClientHellos captured at test time from real clients (openssl s_client, with and without
//! `-max_send_frag 512`, and curl), fed to the assembler in the chunks TCP delivered them.
//!
//! The clients must be installed (`cargo xtask setup` installs them); a missing one fails
//! the test rather than skipping it.

use std::io::Read;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proxy_user::tls::{
    ClientHello, ClientHelloAssembler, DEFAULT_MAX_CLIENT_HELLO, Progress, Protocol, classify,
};

/// Kills the client when the test is done with it, whatever happens.
struct Client(Child);

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Panics with an install hint unless `tool` runs.
fn require(tool: &str, version_arg: &str) {
    let ok = Command::new(tool)
        .arg(version_arg)
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "`{tool}` is required for this test and was not found; run `cargo xtask setup` (apt-get install {tool})"
    );
}

/// Listens on loopback, runs the client built by `client(port)`, and feeds what it sends
/// to the assembler chunk by chunk as TCP delivers it, until the ClientHello is complete.
/// Returns the ClientHello and the number of reads it took.
fn capture(client: impl FnOnce(u16) -> Command) -> (ClientHello, usize) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let port = listener.local_addr().expect("local address").port();
    let mut cmd = client(port);
    // s_client reads stdin; keep it open so it does not quit before the handshake.
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _client = Client(cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")));
    let (mut conn, _) = listener.accept().expect("the client connects");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set a read timeout");
    let mut assembler = ClientHelloAssembler::new(DEFAULT_MAX_CLIENT_HELLO);
    let mut stream = Vec::new();
    let mut reads = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    loop {
        assert!(
            Instant::now() < deadline,
            "no complete ClientHello from {cmd:?} within 10 s"
        );
        let n = conn
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read from {cmd:?}: {e}"));
        assert!(
            n > 0,
            "{cmd:?} closed after {} bytes without a complete ClientHello",
            stream.len()
        );
        reads += 1;
        stream.extend_from_slice(&buf[..n]);
        match assembler.push(&buf[..n]) {
            Progress::NeedMore => {}
            Progress::Complete { hello, consumed } => {
                assert_eq!(consumed, n, "a client sends nothing after its ClientHello");
                assert_eq!(hello.raw, stream, "raw is exactly the bytes received");
                return (hello, reads);
            }
            other => panic!("{cmd:?}: {other:?} after {} bytes", stream.len()),
        }
    }
}

/// The record lengths of a flight.
fn records(raw: &[u8]) -> Vec<usize> {
    let mut lens = Vec::new();
    let mut at = 0;
    while at + 5 <= raw.len() {
        let len = usize::from(u16::from_be_bytes([raw[at + 3], raw[at + 4]]));
        lens.push(len);
        at += 5 + len;
    }
    assert_eq!(at, raw.len(), "whole records");
    lens
}

/// Pushes `raw` one byte at a time and checks the answer matches.
fn check_bytewise(hello: &ClientHello) {
    let mut a = ClientHelloAssembler::new(DEFAULT_MAX_CLIENT_HELLO);
    let (last, head) = hello.raw.split_last().expect("a non-empty flight");
    for b in head {
        assert_eq!(a.push(std::slice::from_ref(b)), Progress::NeedMore);
    }
    assert_eq!(
        a.push(&[*last]),
        Progress::Complete {
            hello: hello.clone(),
            consumed: 1
        }
    );
}

fn s_client(port: u16, name: &str) -> Command {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-servername",
        name,
    ]);
    cmd
}

#[test]
fn openssl_s_client() {
    require("openssl", "version");
    let (hello, _) = capture(|port| {
        let mut cmd = s_client(port, "Capture.Example.COM");
        cmd.args(["-alpn", "h2,http/1.1"]);
        cmd
    });
    assert_eq!(hello.sni.as_deref(), Some("Capture.Example.COM"));
    assert_eq!(hello.alpn, ["h2", "http/1.1"]);
    assert_eq!(hello.legacy_version, 0x0303);
    assert!(
        hello.supported_versions.contains(&0x0304),
        "{:x?}",
        hello.supported_versions
    );
    assert!(!hello.ech);
    assert_eq!(classify(&hello.raw), Protocol::Tls);
    check_bytewise(&hello);
}

#[test]
fn openssl_s_client_fragmented_records() {
    require("openssl", "version");
    // A long ALPN list makes the ClientHello larger than one 512-byte record.
    let alpn: Vec<String> = ["h2".to_owned(), "http/1.1".to_owned()]
        .into_iter()
        .chain((0..60).map(|i| format!("proto-{i:03}-padding")))
        .collect();
    let (hello, _) = capture(|port| {
        let mut cmd = s_client(port, "fragmented.example.org");
        cmd.args(["-max_send_frag", "512", "-alpn", &alpn.join(",")]);
        cmd
    });
    let lens = records(&hello.raw);
    assert!(
        lens.len() >= 3,
        "the ClientHello spans several records: {lens:?}"
    );
    assert!(lens.iter().all(|l| *l <= 512), "{lens:?}");
    assert_eq!(hello.sni.as_deref(), Some("fragmented.example.org"));
    assert_eq!(hello.alpn, alpn);
    check_bytewise(&hello);
}

#[test]
fn curl() {
    require("curl", "--version");
    let (hello, _) = capture(|port| {
        let mut cmd = Command::new("curl");
        cmd.args([
            "--silent",
            "--insecure",
            "--max-time",
            "10",
            "--resolve",
            &format!("curl.example.net:{port}:127.0.0.1"),
            &format!("https://curl.example.net:{port}/"),
        ]);
        cmd
    });
    assert_eq!(hello.sni.as_deref(), Some("curl.example.net"));
    assert!(
        hello.alpn.iter().any(|p| p == "http/1.1"),
        "{:?}",
        hello.alpn
    );
    assert!(
        hello.supported_versions.contains(&0x0304),
        "{:x?}",
        hello.supported_versions
    );
    check_bytewise(&hello);
}
