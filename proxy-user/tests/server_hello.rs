//! The server's first flight from a real server: `openssl s_server` answers a captured
//! ClientHello with a ServerHello, or, when it insists on a group the client sent no key
//! share for, with a HelloRetryRequest.
//!
//! openssl must be installed (`cargo xtask setup`); a missing one fails the test.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proxy_user::tls::{ServerHelloAssembler, ServerProgress};

/// The openssl s_client ClientHello: key share for X25519 only, P-256 among its groups.
const CLIENT_HELLO: &[u8] = include_bytes!("fixtures/openssl.bin");

/// Kills the server when the test is done with it.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn require_openssl() {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "`openssl` is required for this test and was not found; run `cargo xtask setup` (apt-get install openssl)"
    );
}

/// A directory of its own under the system temp dir.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sockgate-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A self-signed P-256 certificate and key in `dir`.
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-subj", "/CN=sockgate-test", "-days", "1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl req");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// Starts `openssl s_server` with `extra` arguments, sends it the ClientHello, and feeds
/// its reply to the assembler until it answers.
fn server_reply(name: &str, extra: &[&str]) -> ServerProgress {
    require_openssl();
    let dir = temp_dir(name);
    let (cert, key) = certificate(&dir);
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port();
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_server",
        "-accept",
        &format!("127.0.0.1:{port}"),
        "-naccept",
        "1",
        "-cert",
    ])
    .arg(&cert)
    .arg("-key")
    .arg(&key)
    .args(extra)
    .stdin(Stdio::piped())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let _server = Server(cmd.spawn().expect("spawn openssl s_server"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut conn = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(conn) => break conn,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("openssl s_server never listened on port {port}: {e}"),
        }
    };
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    conn.write_all(CLIENT_HELLO).expect("send the ClientHello");
    let mut assembler = ServerHelloAssembler::new(1 << 16);
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.read(&mut buf).expect("read the server's reply");
        assert!(n > 0, "s_server closed without a complete answer");
        match assembler.push(&buf[..n]) {
            ServerProgress::NeedMore => {}
            answer => {
                let _ = std::fs::remove_dir_all(&dir);
                return answer;
            }
        }
    }
}

#[test]
fn openssl_s_server_says_server_hello() {
    match server_reply("sh", &[]) {
        ServerProgress::ServerHello { version, raw, .. } => {
            assert_eq!(version, 0x0304);
            assert_eq!(raw[0], 0x16);
        }
        other => panic!("expected a ServerHello, got {other:?}"),
    }
}

#[test]
fn openssl_s_server_asks_for_a_retry() {
    match server_reply("hrr", &["-groups", "P-256"]) {
        ServerProgress::HelloRetryRequest { version, .. } => assert_eq!(version, 0x0304),
        other => panic!("expected a HelloRetryRequest, got {other:?}"),
    }
}
