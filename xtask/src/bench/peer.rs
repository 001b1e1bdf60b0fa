//! The bench's two ends: one TLS server on loopback that every system routes to, and the
//! client operations the measurements are made of.
//!
//! After the TLS handshake and the server's go byte (see `tls`), the client sends one raw
//! command, an op byte and a big-endian u64, and both sides count every byte they receive.
//! Payload bytes follow a pattern (byte at stream offset `o` is `o % 251`) that the
//! receiver spot-checks at both ends of every read, so a lost, doubled or reordered chunk
//! is caught without hashing gigabytes.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};
use rustls::{ClientConfig, ServerConfig};

use super::tls;

/// Client sends `n` bytes, then EOF; the server answers with the count it received.
const UPLOAD: u8 = b'U';
/// The server sends `n` bytes, then EOF.
const DOWNLOAD: u8 = b'D';
/// The server echoes every byte until EOF.
const ECHO: u8 = b'E';
/// The server keeps the connection open, idle, until the bench lets it go.
const HOLD: u8 = b'H';

/// The payload pattern's period: a prime, so it never lines up with buffer sizes.
const PERIOD: usize = 251;
/// Write size: a whole number of periods, about 1 MiB.
const CHUNK: usize = PERIOD * 4096;

/// The TLS server every system forwards to.
pub struct Server {
    pub addr: SocketAddr,
    /// Connections parked by [`HOLD`].
    held: Arc<Mutex<Vec<TcpStream>>>,
    /// Connections the server saw fail (bad count, bad pattern, handshake error).
    failures: Arc<AtomicU64>,
}

impl Server {
    /// Listens on 127.0.0.1 and serves each connection on its own thread.
    pub fn start(config: Arc<ServerConfig>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let held = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(AtomicU64::new(0));
        let (h, f) = (held.clone(), failures.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (config, held, failures) = (config.clone(), h.clone(), f.clone());
                let spawned = thread::Builder::new().stack_size(256 << 10).spawn(move || {
                    if let Err(err) = serve(&config, stream, &held) {
                        eprintln!("bench server: {err:#}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                });
                if spawned.is_err() {
                    f.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(Self {
            addr,
            held,
            failures,
        })
    }

    /// How many connections the server has seen fail so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// How many connections are parked.
    pub fn held(&self) -> usize {
        self.held.lock().expect("held lock").len()
    }

    /// Closes every parked connection.
    pub fn release(&self) {
        self.held.lock().expect("held lock").clear();
    }
}

fn serve(
    config: &Arc<ServerConfig>,
    mut stream: TcpStream,
    held: &Mutex<Vec<TcpStream>>,
) -> anyhow::Result<()> {
    tls::server_handshake(config, &mut stream)?;
    let mut command = [0u8; 9];
    match stream.read(&mut command[..1])? {
        // The connection-rate client closes after the go byte.
        0 => return Ok(()),
        _ => stream.read_exact(&mut command[1..])?,
    }
    let n = u64::from_be_bytes(command[1..].try_into().expect("8 bytes"));
    match command[0] {
        UPLOAD => {
            let got = sink(&mut stream)?;
            stream.write_all(&got.to_be_bytes())?;
            ensure!(got == n, "upload: received {got} bytes of {n}");
        }
        DOWNLOAD => {
            source(&mut stream, n)?;
            stream.shutdown(Shutdown::Write)?;
            // Wait for the client's EOF, so its count is in before the socket closes.
            let mut b = [0u8];
            while stream.read(&mut b)? > 0 {}
        }
        ECHO => {
            stream.set_nodelay(true)?;
            let mut b = [0u8];
            while stream.read(&mut b)? > 0 {
                stream.write_all(&b)?;
            }
        }
        HOLD => held.lock().expect("held lock").push(stream),
        op => bail!("unknown op {op:#x}"),
    }
    Ok(())
}

/// Writes `n` pattern bytes.
fn source(stream: &mut TcpStream, n: u64) -> std::io::Result<()> {
    let buf: Vec<u8> = (0..CHUNK).map(|i| (i % PERIOD) as u8).collect();
    let mut left = n;
    while left > 0 {
        let len = left.min(CHUNK as u64) as usize;
        stream.write_all(&buf[..len])?;
        left -= len as u64;
    }
    Ok(())
}

/// Reads to EOF, checking the pattern at both ends of every read; returns the count.
fn sink(stream: &mut TcpStream) -> anyhow::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(at);
        }
        let expect = |o: u64| (o % PERIOD as u64) as u8;
        ensure!(
            buf[0] == expect(at) && buf[n - 1] == expect(at + n as u64 - 1),
            "payload pattern broken at byte {at}"
        );
        at += n as u64;
    }
}

/// The client's side: one system's address and the names to ask for.
#[derive(Clone)]
pub struct Client {
    pub config: Arc<ClientConfig>,
    /// Where the system under test listens.
    pub addr: SocketAddr,
}

impl Client {
    /// A TCP connection, a full TLS handshake for `name`, and the go byte.
    pub fn connect(&self, name: &str) -> anyhow::Result<TcpStream> {
        let mut stream = TcpStream::connect(self.addr)
            .with_context(|| format!("connecting to {}", self.addr))?;
        tls::client_handshake(&self.config, &mut stream, name)?;
        Ok(stream)
    }

    fn command(&self, name: &str, op: u8, n: u64) -> anyhow::Result<TcpStream> {
        let mut stream = self.connect(name)?;
        let mut command = [op; 9];
        command[1..].copy_from_slice(&n.to_be_bytes());
        stream.write_all(&command)?;
        Ok(stream)
    }

    /// Sends `n` bytes and waits for the server's count; returns seconds from the command
    /// to the count (the handshake is not timed).
    pub fn upload(&self, name: &str, n: u64) -> anyhow::Result<f64> {
        let mut stream = self.connect(name)?;
        let start = Instant::now();
        let mut command = [UPLOAD; 9];
        command[1..].copy_from_slice(&n.to_be_bytes());
        stream.write_all(&command)?;
        source(&mut stream, n)?;
        stream.shutdown(Shutdown::Write)?;
        let mut count = [0u8; 8];
        stream
            .read_exact(&mut count)
            .context("the server never confirmed the upload")?;
        let got = u64::from_be_bytes(count);
        ensure!(got == n, "upload: the server received {got} bytes of {n}");
        Ok(start.elapsed().as_secs_f64())
    }

    /// Receives `n` bytes; returns seconds from the command to the server's EOF.
    pub fn download(&self, name: &str, n: u64) -> anyhow::Result<f64> {
        let mut stream = self.connect(name)?;
        let start = Instant::now();
        let mut command = [DOWNLOAD; 9];
        command[1..].copy_from_slice(&n.to_be_bytes());
        stream.write_all(&command)?;
        let got = sink(&mut stream)?;
        let secs = start.elapsed().as_secs_f64();
        ensure!(got == n, "download: received {got} bytes of {n}");
        Ok(secs)
    }

    /// 1-byte ping-pong; returns each round trip in microseconds.
    pub fn ping(&self, name: &str, pings: usize) -> anyhow::Result<Vec<f64>> {
        let mut stream = self.command(name, ECHO, 0)?;
        stream.set_nodelay(true)?;
        let mut b = [0u8];
        // Warm up past the handoff.
        for _ in 0..100 {
            stream.write_all(b"p")?;
            stream.read_exact(&mut b)?;
        }
        let mut rtts = Vec::with_capacity(pings);
        for _ in 0..pings {
            let t = Instant::now();
            stream.write_all(b"p")?;
            stream.read_exact(&mut b)?;
            ensure!(b[0] == b'p', "echo answered {:#x}", b[0]);
            rtts.push(t.elapsed().as_secs_f64() * 1e6);
        }
        Ok(rtts)
    }

    /// A connection parked at the server, idle.
    pub fn hold(&self, name: &str) -> anyhow::Result<TcpStream> {
        self.command(name, HOLD, 0)
    }
}
