//! Blocking peers that send seeded random bytes and hash what they receive.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::mpsc,
    thread,
};

use sha2::{Digest, Sha256};

/// What one side of a connection does.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Bytes to send. A client's first 8 bytes are its `seed`, so the server can tell
    /// connections apart; make `send` at least 8 when that matters.
    pub send: u64,
    /// Seeds the random bytes.
    pub seed: u64,
    /// Send only after the peer's EOF (for half-close tests).
    pub after_eof: bool,
    /// Pause after sending and before FIN.
    pub fin_delay: std::time::Duration,
    /// Read at most this many bytes per second; 0 reads as fast as possible.
    pub read_rate: u64,
}

impl Plan {
    /// Send `send` bytes from `seed`, then FIN at once.
    pub fn new(send: u64, seed: u64) -> Self {
        Self {
            send,
            seed,
            after_eof: false,
            fin_delay: std::time::Duration::ZERO,
            read_rate: 0,
        }
    }
}

/// What one side saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The first 8 bytes received, as a number (a client's seed, when this is the server).
    pub id: u64,
    /// SHA-256 of everything sent.
    pub sent: [u8; 32],
    pub sent_len: u64,
    /// SHA-256 of everything received until EOF.
    pub received: [u8; 32],
    pub received_len: u64,
}

/// Sends the plan's bytes (then FIN) while receiving until EOF, concurrently.
pub fn exchange(stream: TcpStream, plan: Plan) -> io::Result<Report> {
    let (eof_tx, eof_rx) = mpsc::channel::<()>();
    let mut writer_stream = stream.try_clone()?;
    let writer = thread::spawn(move || -> io::Result<([u8; 32], u64)> {
        if plan.after_eof {
            let _ = eof_rx.recv();
        }
        let mut chunks = crate::verify::Chunks::new(plan.seed);
        let mut hash = Sha256::new();
        let mut left = plan.send;
        while left > 0 {
            let chunk = chunks.next_chunk();
            let chunk = &chunk[..chunk.len().min(left as usize)];
            writer_stream.write_all(chunk)?;
            hash.update(chunk);
            left -= chunk.len() as u64;
        }
        thread::sleep(plan.fin_delay);
        writer_stream.shutdown(Shutdown::Write)?;
        Ok((hash.finalize().into(), plan.send))
    });
    let mut reader = stream;
    let mut hash = Sha256::new();
    // A paced reader takes small bites so it never runs far ahead of its rate.
    let mut buf = vec![
        0u8;
        if plan.read_rate > 0 {
            16 << 10
        } else {
            256 << 10
        }
    ];
    let mut received_len = 0u64;
    let mut id = [0u8; 8];
    // Byte-by-byte comparison, on request: it says where and how a stream went wrong.
    let mut verifier = std::env::var_os("SOCKGATE_VERIFY").map(|_| crate::verify::Verifier::new());
    let started = std::time::Instant::now();
    let read_result = loop {
        if plan.read_rate > 0 {
            let due =
                std::time::Duration::from_secs_f64(received_len as f64 / plan.read_rate as f64);
            thread::sleep(due.saturating_sub(started.elapsed()));
        }
        match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                for (i, b) in buf[..n].iter().enumerate() {
                    let at = received_len as usize + i;
                    if at >= 8 {
                        break;
                    }
                    id[at] = *b;
                }
                hash.update(&buf[..n]);
                if let Some(v) = &mut verifier {
                    v.update(&buf[..n]);
                }
                received_len += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    let _ = eof_tx.send(());
    if let Some(diagnosis) = verifier.and_then(|v| v.diagnosis(plan.seed)) {
        eprintln!("SOCKGATE_VERIFY: {diagnosis}");
    }
    let (sent, sent_len) = writer.join().expect("writer thread panicked")?;
    read_result?;
    Ok(Report {
        id: u64::from_le_bytes(id),
        sent,
        sent_len,
        received: hash.finalize().into(),
        received_len,
    })
}

/// A server answering every connection with `plan(index)`, on a thread per connection.
/// Reports (or errors) come out of the returned channel.
pub fn server(
    listener: TcpListener,
    plan: impl Fn(u64) -> Plan + Send + 'static,
) -> mpsc::Receiver<io::Result<Report>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for (index, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { return };
            let tx = tx.clone();
            let plan = plan(index as u64);
            thread::spawn(move || {
                let _ = tx.send(exchange(stream, plan));
            });
        }
    });
    rx
}

/// Binds a listener on an ephemeral loopback port.
pub fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a test server");
    let addr = listener.local_addr().expect("local_addr");
    (listener, addr)
}
