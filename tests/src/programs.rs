//! Real peers for the end-to-end tests: openssl `s_server`/`s_client`, `sshd`/`ssh`, `curl`,
//! plus small Rust peers (a banner server, a CONNECT client, a tap that dribbles or records
//! bytes). Keys and certificates are generated at test time into a [`TempDir`].
//!
//! A missing program fails the test with a message (`cargo xtask setup` installs them all).

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use crate::process::{Proc, WAIT, run};
use crate::tempdir::TempDir;

/// Loads nftables `rules` into the current network namespace (through a file in `dir`),
/// failing the test if nft refuses them; returns nothing else worth having.
pub fn nft(dir: &TempDir, rules: &str) {
    let file = dir.join("rules.nft");
    std::fs::write(&file, rules).unwrap();
    let (status, _, err) = run(
        "nft",
        Command::new(require("nft")).arg("-f").arg(&file),
        WAIT,
    );
    assert!(status.success(), "nft -f:\n{rules}\n{err}");
}

/// The current network namespace's nftables ruleset, as `nft list ruleset` prints it.
pub fn nft_ruleset() -> String {
    let (status, out, err) = run(
        "nft",
        Command::new(require("nft")).args(["list", "ruleset"]),
        WAIT,
    );
    assert!(status.success(), "nft list ruleset: {err}");
    out
}

/// The full path of `program`, failing the test if it is not installed.
pub fn require(program: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{program}` is not installed; `cargo xtask setup` installs the test peers")
        })
}

/// A self-signed certificate for some names, and its key, made with `openssl req`.
pub struct Pki {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new(dir: &TempDir, names: &[&str]) -> Self {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let san = names
            .iter()
            .map(|n| format!("DNS:{n}"))
            .collect::<Vec<_>>()
            .join(",");
        let (status, _, err) = run(
            "openssl req",
            Command::new(require("openssl"))
                .args(["req", "-x509", "-newkey", "ec"])
                .args([
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-days",
                    "2",
                ])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .args(["-subj", &format!("/CN={}", names[0])])
                .args(["-addext", &format!("subjectAltName={san}")]),
            WAIT,
        );
        assert!(status.success(), "openssl req failed: {err}");
        Self { cert, key }
    }
}

/// What `openssl s_server` does with a connection.
#[derive(Clone, Copy, Debug)]
pub enum Serve {
    /// `-www`: answers any request with an HTML status page (`HTTP/1.0 200 ok`).
    Www,
    /// `-rev`: echoes each line reversed.
    Rev,
}

/// Starts `openssl s_server` on `port` (all addresses) in the calling thread's namespace,
/// with `extra` arguments (e.g. `-groups P-256`); returns once it accepts.
pub fn s_server(pki: &Pki, port: u16, serve: Serve, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(require("openssl"));
    cmd.args(["s_server", "-accept", &port.to_string()])
        .arg("-cert")
        .arg(&pki.cert)
        .arg("-key")
        .arg(&pki.key)
        .arg(match serve {
            Serve::Www => "-www",
            Serve::Rev => "-rev",
        })
        .args(extra);
    let proc = Proc::spawn(&format!("s_server :{port}"), &mut cmd, false);
    assert!(
        proc.stdout.wait_for("ACCEPT", WAIT),
        "s_server on {port} never accepted:\n{}",
        proc.stderr.text()
    );
    proc
}

/// `openssl s_client` with stdin and stdout as pipes, so a test can talk through it.
pub struct SClient {
    pub proc: Proc,
}

impl SClient {
    /// `openssl s_client -connect <connect> <args...>`; EOF on stdin ends the session.
    pub fn start(connect: &str, args: &[&str]) -> Self {
        let mut cmd = Command::new(require("openssl"));
        cmd.args(["s_client", "-connect", connect, "-no_ign_eof"])
            .args(args);
        Self {
            proc: Proc::spawn(&format!("s_client {connect} {args:?}"), &mut cmd, true),
        }
    }

    /// Writes `line` and a newline.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.proc.stdin();
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .expect("writing to s_client");
    }

    /// Waits until stdout contains `needle`; fails the test otherwise.
    pub fn expect_stdout(&self, needle: &str) {
        assert!(
            self.proc.stdout.wait_for(needle, WAIT),
            "s_client never printed {needle:?}\nstdout:\n{}\nstderr:\n{}",
            self.proc.stdout.text(),
            self.proc.stderr.text()
        );
    }

    /// Closes stdin and waits for the exit; returns (success, stdout, stderr).
    pub fn finish(mut self) -> (bool, String, String) {
        self.proc.close_stdin();
        let status = self.proc.expect_exit(WAIT);
        self.proc.stdout.wait_closed(WAIT);
        self.proc.stderr.wait_closed(WAIT);
        (
            status.success(),
            self.proc.stdout.text(),
            self.proc.stderr.text(),
        )
    }
}

/// `openssl s_client` run to its end with nothing to send; returns (success, stdout,
/// stderr together).
pub fn s_client_once(connect: &str, args: &[&str]) -> (bool, String) {
    let client = SClient::start(connect, args);
    let (ok, out, err) = client.finish();
    (ok, format!("{out}\n{err}"))
}

/// `curl` with `args`; returns (exit code, stdout, stderr).
pub fn curl(args: &[&str]) -> (i32, String, String) {
    let (status, out, err) = run(
        "curl",
        Command::new(require("curl"))
            .args(["-sS", "--max-time", "20"])
            .args(args),
        WAIT + WAIT,
    );
    (status.code().unwrap_or(-1), out, err)
}

/// An `sshd` on a test port that lets root in with a key made at test time.
pub struct Sshd {
    pub proc: Proc,
    /// The client's private key.
    pub identity: PathBuf,
}

impl Sshd {
    /// Starts `sshd -D -e` on `addr` in the calling thread's namespace.
    pub fn start(dir: &TempDir, addr: SocketAddr) -> Self {
        let keygen = |path: &Path| {
            let (status, _, err) = run(
                "ssh-keygen",
                Command::new(require("ssh-keygen"))
                    .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                    .arg(path),
                WAIT,
            );
            assert!(status.success(), "ssh-keygen failed: {err}");
        };
        let host_key = dir.join("ssh_host_ed25519_key");
        let identity = dir.join("id_ed25519");
        keygen(&host_key);
        keygen(&identity);
        let authorized = dir.join("authorized_keys");
        std::fs::copy(identity.with_extension("pub"), &authorized).expect("authorized_keys");
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress {addr}\nHostKey {}\nAuthorizedKeysFile {}\nPidFile none\n\
                 UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n",
                host_key.display(),
                authorized.display()
            ),
        )
        .expect("writing sshd_config");
        // sshd refuses to start without its privilege separation directory.
        std::fs::create_dir_all("/run/sshd").expect("creating /run/sshd");
        let proc = Proc::spawn(
            "sshd",
            Command::new(require("sshd"))
                .args(["-D", "-e", "-f"])
                .arg(&config),
            false,
        );
        assert!(
            proc.stderr.wait_for("Server listening", WAIT),
            "sshd did not start:\n{}",
            proc.stderr.text()
        );
        Self { proc, identity }
    }
}

/// Reads an HTTP response head (through the blank line) without reading past it.
pub fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => head.push(byte[0]),
            Err(e) => panic!("reading the proxy's answer: {e} (so far {head:?})"),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Sends raw `request` bytes to `proxy` and returns everything it answers until EOF.
pub fn raw_exchange(proxy: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(proxy).expect("connecting to sockgate");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(request).expect("sending the request");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("reading the answer");
    String::from_utf8_lossy(&answer).into_owned()
}

/// Opens a CONNECT tunnel to `target` through `proxy`; returns the stream (positioned
/// right after the proxy's answer) and the status line.
pub fn connect_tunnel(proxy: SocketAddr, target: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(proxy).expect("connecting to sockgate");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"
    )
    .expect("CONNECT");
    let head = read_head(&mut stream);
    let status = head.lines().next().unwrap_or_default().to_owned();
    stream.set_read_timeout(None).unwrap();
    (stream, status)
}

/// A server-speaks-first service: each connection gets `banner`, then every byte it
/// sends is echoed until EOF.
pub fn banner_server(listener: TcpListener, banner: &'static [u8]) {
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            thread::spawn(move || {
                if stream.write_all(banner).is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = stream.shutdown(Shutdown::Write);
            });
        }
    });
}

/// The length of the TLS records at the start of `buf` that carry one whole handshake
/// message (a ClientHello), or None if `buf` does not hold it all yet.
pub fn first_handshake_len(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    let mut body = Vec::new();
    loop {
        let header = buf.get(at..at + 5)?;
        assert_eq!(header[0], 22, "not a handshake record: {header:?}");
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        body.extend_from_slice(buf.get(at + 5..at + 5 + len)?);
        at += 5 + len;
        if body.len() >= 4 {
            let message =
                4 + (usize::from(body[1]) << 16 | usize::from(body[2]) << 8 | usize::from(body[3]));
            if body.len() >= message {
                return Some(at);
            }
        }
    }
}

/// The number of TLS records in `buf` (which must hold whole records).
pub fn record_count(buf: &[u8]) -> usize {
    let mut at = 0;
    let mut count = 0;
    while let Some(header) = buf.get(at..at + 5) {
        at += 5 + usize::from(u16::from_be_bytes([header[3], header[4]]));
        count += 1;
    }
    count
}

/// How a [`Tap`] forwards the client's first bytes.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// As they come.
    Whole,
    /// The first handshake message (the ClientHello) one byte per write, with
    /// TCP_NODELAY and a pause between writes, so each byte is a TCP segment of its own.
    ByteByByte,
}

/// A TCP forwarder between a client and a server that records the bytes going up, and can
/// slow the ClientHello down to one byte per segment. One connection at a time.
pub struct Tap {
    pub addr: SocketAddr,
    /// Everything forwarded from client to server, per connection.
    up: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Tap {
    pub fn start(target: SocketAddr, pace: Pace) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the tap");
        let addr = listener.local_addr().unwrap();
        let up: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let record = Arc::clone(&up);
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let index = {
                    let mut up = record.lock().unwrap();
                    up.push(Vec::new());
                    up.len() - 1
                };
                let record = Arc::clone(&record);
                thread::spawn(move || {
                    let _ = tap_one(client, target, pace, &record, index);
                });
            }
        });
        Self { addr, up }
    }

    /// What the `index`th connection sent up so far.
    pub fn up(&self, index: usize) -> Vec<u8> {
        self.up
            .lock()
            .unwrap()
            .get(index)
            .cloned()
            .unwrap_or_default()
    }
}

fn tap_one(
    mut client: TcpStream,
    target: SocketAddr,
    pace: Pace,
    record: &Mutex<Vec<Vec<u8>>>,
    index: usize,
) -> io::Result<()> {
    let mut server = TcpStream::connect(target)?;
    server.set_nodelay(true)?;
    let mut down_from = server.try_clone()?;
    let mut down_to = client.try_clone()?;
    let down = thread::spawn(move || {
        let _ = io::copy(&mut down_from, &mut down_to);
        let _ = down_to.shutdown(Shutdown::Write);
    });
    let mut buf = vec![0u8; 64 * 1024];
    if let Pace::ByteByByte = pace {
        // Gather the whole ClientHello first, then dribble it.
        let mut hello = Vec::new();
        let len = loop {
            if let Some(len) = first_handshake_len(&hello) {
                break len;
            }
            let n = client.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            hello.extend_from_slice(&buf[..n]);
        };
        for byte in &hello[..len] {
            server.write_all(std::slice::from_ref(byte))?;
            record.lock().unwrap()[index].push(*byte);
            thread::sleep(Duration::from_millis(1));
        }
        server.write_all(&hello[len..])?;
        record.lock().unwrap()[index].extend_from_slice(&hello[len..]);
    }
    loop {
        let n = client.read(&mut buf)?;
        if n == 0 {
            break;
        }
        server.write_all(&buf[..n])?;
        record.lock().unwrap()[index].extend_from_slice(&buf[..n]);
    }
    server.shutdown(Shutdown::Write)?;
    let _ = down.join();
    Ok(())
}
