//! `cargo xtask soak [--secs N]`: mixed, hash-verified traffic through `sockgate run` on
//! sockmap for ten minutes (by default), then a leak check. Not a test, so CI never runs
//! it; it prints a summary and exits non-zero on any lost, duplicated or reordered byte,
//! or on leaked fds or map entries.
//!
//! Each client worker loops over: a transfer both ways (sizes up to 4 MiB, some servers
//! answering only after the client's FIN), a denied CONNECT, a client reset mid-transfer,
//! and a slow reader (2 MB/s) that makes the kernel push back.

use std::{
    collections::HashMap,
    io,
    net::TcpStream,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use proxy_user::sockopt;
use sockgate_tests::{
    Rng,
    agent::{Agent, connect_config},
    netns::NetNs,
    peers::{Plan, Report, exchange, listen, server},
    programs::connect_tunnel,
    verify,
};

const WORKERS: u64 = 6;
const MAX_SIZE: u64 = 4 << 20;

/// Server reports by client seed, filled from the server's channel.
struct Reports {
    rx: Mutex<mpsc::Receiver<io::Result<Report>>>,
    by_id: Mutex<HashMap<u64, Report>>,
    errors: AtomicU64,
}

impl Reports {
    /// The server's report for the client with `id`, waiting up to a minute.
    fn take(&self, id: u64) -> Option<Report> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(r) = self.by_id.lock().unwrap().remove(&id) {
                return Some(r);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            let got = self
                .rx
                .lock()
                .unwrap()
                .recv_timeout(left.min(Duration::from_millis(50)));
            match got {
                Ok(Ok(r)) => {
                    self.by_id.lock().unwrap().insert(r.id, r);
                }
                Ok(Err(_)) => {
                    self.errors.fetch_add(1, Relaxed);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            }
        }
    }
}

#[derive(Default)]
struct Totals {
    transfers: AtomicU64,
    denied: AtomicU64,
    resets: AtomicU64,
    slow: AtomicU64,
    bytes: AtomicU64,
    failures: AtomicU64,
}

/// A seed whose first byte is no TLS record type, HTTP method or `SSH-`: the client's
/// first flight is then of protocol `unknown`, allowed like any other.
fn seed(rng: &mut Rng) -> u64 {
    (rng.next_u64() & !0xff) | 0x01
}

fn tunnel(target: &str) -> Option<TcpStream> {
    let (stream, status) = connect_tunnel("127.0.0.1:3128".parse().unwrap(), target);
    status.starts_with("HTTP/1.1 200").then_some(stream)
}

fn worker(w: u64, until: Instant, target: String, reports: &Reports, totals: &Totals) {
    let mut rng = Rng::new(0x50a4 + w);
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let fail = |what: String| {
            eprintln!("worker {w} #{n}: {what}");
            totals.failures.fetch_add(1, Relaxed);
        };
        match n % 8 {
            // A denied name gets 403 and no tunnel.
            3 => match tunnel(&target.replace("allowed", "denied")) {
                None => totals.denied.fetch_add(1, Relaxed),
                Some(_) => {
                    fail("a denied name got a tunnel".into());
                    continue;
                }
            },
            // The client resets mid-transfer.
            5 => {
                let Some(mut stream) = tunnel(&target) else {
                    fail("no tunnel".into());
                    continue;
                };
                let plan = Plan::new(rng.range(8, MAX_SIZE), seed(&mut rng));
                let bytes = verify::stream(plan.seed, plan.send as usize);
                let _ = io::Write::write_all(&mut stream, &bytes[..bytes.len() / 2]);
                sockopt::set_linger_zero(&stream).unwrap();
                totals.resets.fetch_add(1, Relaxed)
            }
            // A transfer both ways, every so often with a slow reader.
            k => {
                let Some(stream) = tunnel(&target) else {
                    fail("no tunnel".into());
                    continue;
                };
                let slow = k == 7;
                let plan = Plan {
                    read_rate: if slow { 2_000_000 } else { 0 },
                    ..Plan::new(rng.range(8, MAX_SIZE), seed(&mut rng))
                };
                let client = match exchange(stream, plan) {
                    Ok(r) => r,
                    Err(e) => {
                        fail(format!("client exchange: {e}"));
                        continue;
                    }
                };
                let Some(server) = reports.take(plan.seed) else {
                    fail(format!("no server report for {:#x}", plan.seed));
                    continue;
                };
                if client.received != server.sent || server.received != client.sent {
                    fail(format!(
                        "bytes differ: up {} of {}, down {} of {}",
                        server.received_len, client.sent_len, client.received_len, server.sent_len
                    ));
                    continue;
                }
                totals
                    .bytes
                    .fetch_add(client.sent_len + server.sent_len, Relaxed);
                if slow {
                    totals.slow.fetch_add(1, Relaxed);
                }
                totals.transfers.fetch_add(1, Relaxed)
            }
        };
    }
}

fn main() {
    let secs: u64 = std::env::args()
        .skip_while(|a| a != "--secs")
        .nth(1)
        .map_or(600, |s| s.parse().expect("--secs takes a number"));
    let ns = NetNs::enter_new();
    let (listener, addr) = listen();
    // Servers send up to 4 MiB; every fourth one only after the client's FIN.
    let rx = server(listener, |i| {
        let mut rng = Rng::new(0xcafe + i);
        Plan {
            after_eof: i % 4 == 0,
            ..Plan::new(rng.range(0, MAX_SIZE), 0x5e + i)
        }
    });
    let agent = Agent::start(&connect_config(""));
    let before = agent.stats();
    let reports = Arc::new(Reports {
        rx: Mutex::new(rx),
        by_id: Mutex::default(),
        errors: AtomicU64::new(0),
    });
    let totals = Arc::new(Totals::default());
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let target = format!("allowed.test:{}", addr.port());
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (reports, totals, target) = (reports.clone(), totals.clone(), target.clone());
            thread::spawn(move || worker(w, until, target, &reports, &totals))
        })
        .collect();
    for w in workers {
        w.join().expect("a worker panicked");
    }
    let elapsed = started.elapsed();
    // Connections close a moment after their clients finish.
    let mut after = agent.stats();
    for _ in 0..100 {
        if after["open"] == 0 {
            break;
        }
        thread::sleep(Duration::from_millis(100));
        after = agent.stats();
    }
    let t = &totals;
    println!(
        "soak: {:.0} s, {} connections: {} transfers verified ({} with a slow reader, {:.2} GiB), \
         {} denied, {} client resets; {} failures",
        elapsed.as_secs_f64(),
        after["accepted"],
        t.transfers.load(Relaxed),
        t.slow.load(Relaxed),
        t.bytes.load(Relaxed) as f64 / (1u64 << 30) as f64,
        t.denied.load(Relaxed),
        t.resets.load(Relaxed),
        t.failures.load(Relaxed),
    );
    println!("before: {before}\nafter:  {after}");
    let leaks =
        after["open"] != 0 || after["fds"] != before["fds"] || after["maps"] != before["maps"];
    if leaks {
        println!("LEAK: connections, fds or map entries are not back at their baseline");
    }
    let failed = t.failures.load(Relaxed) > 0 || leaks;
    if failed {
        // What sockgate said about it: its warnings and errors.
        let log = agent.stderr();
        for line in log
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .take(50)
        {
            println!("sockgate: {line}");
        }
    }
    // exit() skips destructors: stop the agent and remove the namespace first.
    drop(agent);
    drop(ns);
    if failed {
        std::process::exit(1);
    }
}
