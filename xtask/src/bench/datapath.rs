//! `cargo xtask bench datapath`: direct vs sockmap vs splice vs copy over loopback, in one
//! run, alternating systems, reported as medians with ratios to direct.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::stats::{CpuSample, median, percentile};

#[derive(clap::Args)]
pub struct Args {
    /// Repetitions per system (alternating).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// GiB per bulk transfer.
    #[arg(long, default_value_t = 4)]
    gib: u64,
    /// Round trips per ping-pong run.
    #[arg(long, default_value_t = 20_000)]
    pings: usize,
}

/// A system under test: `None` is direct, otherwise `sockgate relay` arguments.
struct System {
    name: &'static str,
    relay: Option<&'static [&'static str]>,
}

const SYSTEMS: &[System] = &[
    System {
        name: "direct",
        relay: None,
    },
    System {
        name: "sockmap",
        relay: Some(&["--datapath", "sockmap"]),
    },
    System {
        name: "sockmap-defbuf",
        relay: Some(&["--datapath", "sockmap", "--send-buffer", "0"]),
    },
    System {
        name: "splice",
        relay: Some(&["--datapath", "splice"]),
    },
    System {
        name: "copy",
        relay: Some(&["--datapath", "copy"]),
    },
];

/// Kills the relays when the bench ends, however it ends.
struct Relays(Vec<Child>);

impl Drop for Relays {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::build::run(&crate::build::Args { release: true })?;
    let bin = crate::build::binary(true);
    let sink = spawn_server(sink)?;
    let echo = spawn_server(echo)?;
    let mut relays = Relays(Vec::new());
    // (bulk address, ping address) per system.
    let mut targets = Vec::new();
    for (i, system) in SYSTEMS.iter().enumerate() {
        let Some(extra) = system.relay else {
            targets.push((sink, echo));
            continue;
        };
        let mut pair = Vec::new();
        for (j, upstream) in [sink, echo].into_iter().enumerate() {
            let listen: SocketAddr = format!("127.0.0.1:{}", 24000 + i * 10 + j).parse()?;
            let child = Command::new(&bin)
                .args(["relay", "--listen", &listen.to_string()])
                .args(["--upstream", &upstream.to_string()])
                .args(extra)
                // SOCKGATE_BENCH_LOG=proxy_user::datapath=debug shows each relay's split
                // between redirected and passed bytes.
                .env(
                    "RUST_LOG",
                    std::env::var("SOCKGATE_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdout(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            relays.0.push(child);
            wait_listening(listen)?;
            pair.push(listen);
        }
        targets.push((pair[0], pair[1]));
    }

    let bytes = args.gib << 30;
    let mut gbps = vec![Vec::new(); SYSTEMS.len()];
    let mut cpu = vec![Vec::new(); SYSTEMS.len()];
    let mut rtt50 = vec![Vec::new(); SYSTEMS.len()];
    let mut rtt99 = vec![Vec::new(); SYSTEMS.len()];
    for run in 0..args.runs {
        for (i, system) in SYSTEMS.iter().enumerate() {
            let (bulk_addr, ping_addr) = targets[i];
            let before = CpuSample::now()?;
            let secs = bulk(bulk_addr, bytes)?;
            let busy = CpuSample::now()?.busy_seconds_since(&before);
            gbps[i].push(bytes as f64 * 8.0 / secs / 1e9);
            cpu[i].push(busy / args.gib as f64);
            let mut rtts = ping(ping_addr, args.pings)?;
            rtt50[i].push(percentile(&mut rtts, 0.50));
            rtt99[i].push(percentile(&mut rtts, 0.99));
            eprintln!(
                "run {run} {:<15} {:>6.2} Gbit/s  {:>5.2} cpu-s/GiB  rtt p50 {:>5.1} us",
                system.name,
                gbps[i].last().unwrap(),
                cpu[i].last().unwrap(),
                rtt50[i].last().unwrap()
            );
        }
    }

    let direct_gbps = median(&gbps[0]);
    let direct_rtt = median(&rtt50[0]);
    println!(
        "\n{} GiB one way x {} runs, {} round trips; medians [min-max]\n",
        args.gib, args.runs, args.pings
    );
    println!(
        "| system | Gbit/s | x direct | CPU-s/GiB | RTT p50 us | +us vs direct | RTT p99 us |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (i, system) in SYSTEMS.iter().enumerate() {
        let (g, c, r50, r99) = (
            median(&gbps[i]),
            median(&cpu[i]),
            median(&rtt50[i]),
            median(&rtt99[i]),
        );
        println!(
            "| {} | {:.2} [{:.2}-{:.2}] | {:.2} | {:.2} [{:.2}-{:.2}] | {:.1} | {:+.1} | {:.1} |",
            system.name,
            g,
            min(&gbps[i]),
            max(&gbps[i]),
            g / direct_gbps,
            c,
            min(&cpu[i]),
            max(&cpu[i]),
            r50,
            r50 - direct_rtt,
            r99,
        );
    }
    drop(relays);
    Ok(())
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

fn wait_listening(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..200 {
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(25));
    }
    bail!("nothing listens on {addr}")
}

fn spawn_server(handle: fn(TcpStream)) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || handle(stream));
        }
    });
    Ok(addr)
}

/// Reads and discards until EOF, then answers one byte so the sender knows it all arrived.
fn sink(mut stream: TcpStream) {
    let mut buf = vec![0u8; 1 << 20];
    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
    let _ = stream.write_all(b"k");
}

fn echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut b = [0u8; 1];
    while stream.read_exact(&mut b).is_ok() {
        if stream.write_all(&b).is_err() {
            return;
        }
    }
}

/// Sends `bytes` and waits until the sink has read them all; returns seconds.
fn bulk(addr: SocketAddr, bytes: u64) -> anyhow::Result<f64> {
    let buf = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr)?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        stream.write_all(&buf[..n])?;
        left -= n as u64;
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut ack = [0u8; 1];
    stream
        .read_exact(&mut ack)
        .context("the sink never confirmed the transfer")?;
    Ok(start.elapsed().as_secs_f64())
}

/// 1-byte ping-pong; returns each round trip in microseconds.
fn ping(addr: SocketAddr, pings: usize) -> anyhow::Result<Vec<f64>> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let mut b = [0u8; 1];
    let mut rtts = Vec::with_capacity(pings);
    // Warm up past the handoff.
    for _ in 0..100 {
        stream.write_all(b"p")?;
        stream.read_exact(&mut b)?;
    }
    for _ in 0..pings {
        let t = Instant::now();
        stream.write_all(b"p")?;
        stream.read_exact(&mut b)?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(rtts)
}
