//! `cargo xtask bench [--quick] [--only rate|idle]`: issue 5's suite. Every system (direct,
//! sockgate on each datapath, HAProxy, nginx) gets the same five measurements, one system
//! after the other within each run, so slow drifts of a shared machine spread over all of
//! them (`--only rate` and `--only idle` run one alone):
//!
//! 1. bulk: one connection each way, throughput, whole-machine CPU per GiB, and the peak of
//!    extra kernel TCP memory;
//! 2. parallel bulk: many connections at once, aggregate throughput and CPU per GiB;
//! 3. round trip: 1-byte ping-pong, p50 and p99;
//! 4. connection rate: full TLS handshakes through the whole flow, against 10,000 names;
//! 5. idle: many parked connections, the proxy's resident memory per connection.

use std::{
    net::TcpStream,
    path::PathBuf,
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use super::{
    kmem,
    peer::{Client, Server},
    report::{self, Results, Samples},
    stats::{CpuSample, percentile},
    systems::{Kind, Running, SCRAPED, SYSTEMS, name},
    tls::Tls,
};

#[derive(clap::Args)]
// `bench` flattens these into its own args, whose group is also named `Args`.
#[group(id = "suite")]
pub struct Args {
    /// A short run (under 3 minutes on 2 cores): 3 runs, 256 MiB transfers, 2,000 round
    /// trips, 2 s of connections, 1,000 idle connections. Explicit options still win.
    #[arg(long)]
    quick: bool,
    /// Repetitions of every measurement, alternating systems [5; quick 3].
    #[arg(long)]
    runs: Option<usize>,
    /// MiB per one-connection transfer, each way; the parallel test moves as much in all
    /// [4096; quick 256].
    #[arg(long)]
    mib: Option<u64>,
    /// Connections of the parallel bulk test.
    #[arg(long, default_value_t = 32)]
    parallel: usize,
    /// Round trips per ping-pong run [20000; quick 2000].
    #[arg(long)]
    pings: Option<usize>,
    /// Seconds of the connection-rate test per system and run [10; quick 2].
    #[arg(long)]
    rate_secs: Option<f64>,
    /// Client threads of the connection-rate and idle tests.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Idle connections held at once [3000; quick 1000]. Each costs sockgate on splice six
    /// file descriptors (two sockets, two pipes): at most (RLIMIT_NOFILE - 500) / 6.
    #[arg(long)]
    idle: Option<usize>,
    /// Where to write the SVG chart [target/bench/bench.svg].
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Run only this measurement, for every system, and print only its figures (no chart).
    #[arg(long, value_enum)]
    only: Option<Only>,
}

/// A measurement that can run alone.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    /// 4. rate: full TLS connections per second.
    Rate,
    /// 5. idle: the proxy's resident memory per parked connection.
    Idle,
}

/// The parameters in force, defaults resolved.
pub struct Plan {
    pub quick: bool,
    pub only: Option<Only>,
    pub runs: usize,
    pub bytes: u64,
    pub parallel: usize,
    pub pings: usize,
    pub rate_secs: f64,
    pub clients: usize,
    pub idle: usize,
}

impl Args {
    fn plan(&self) -> Plan {
        let q = self.quick;
        Plan {
            quick: q,
            only: self.only,
            runs: self.runs.unwrap_or(if q { 3 } else { 5 }),
            bytes: self.mib.unwrap_or(if q { 256 } else { 4096 }) << 20,
            parallel: self.parallel,
            pings: self.pings.unwrap_or(if q { 2_000 } else { 20_000 }),
            rate_secs: self.rate_secs.unwrap_or(if q { 2.0 } else { 10.0 }),
            clients: self.clients,
            idle: self.idle.unwrap_or(if q { 1_000 } else { 3_000 }),
        }
    }
}

/// Removes the bench's temp dir however the bench ends (after the systems, declared later,
/// have stopped).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let plan = args.plan();
    crate::build::run(&crate::build::Args { release: true })?;
    let sockgate = crate::build::binary(true);
    let fds = raise_fd_limit()?;
    // sockgate on splice holds six descriptors per relayed connection (two sockets, two
    // pipes), the others and the bench two; all must stay under the limit.
    ensure!(
        6 * plan.idle as u64 + 500 <= fds,
        "--idle {} needs more than {fds} descriptors (RLIMIT_NOFILE): at most {}",
        plan.idle,
        fds.saturating_sub(500) / 6
    );

    let dir = TempDir(std::env::temp_dir().join(format!("sockgate-bench-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let tls = Tls::new(&dir.0)?;
    let server = Server::start(tls.server.clone())?;
    // `--only rate` also measures sockgate with its admin endpoint scraped every second,
    // next to sockgate on sockmap without it, so that drifts of the machine hit both alike.
    let mut list: Vec<(&str, Kind)> = SYSTEMS.to_vec();
    if plan.only == Some(Only::Rate) {
        let at = 1 + list
            .iter()
            .position(|s| s.0 == "sockgate-sockmap")
            .unwrap_or(0);
        list.insert(at, SCRAPED);
    }
    let mut systems = Vec::new();
    for &(sys_name, kind) in &list {
        let own = dir.0.join(sys_name);
        systems.push(Running::start(
            sys_name,
            kind,
            &own,
            server.addr,
            &sockgate,
        )?);
    }

    let mut results = Results::new(list.len());
    for run in 0..plan.runs {
        for (i, system) in systems.iter().enumerate() {
            let client = Client {
                config: tls.client.clone(),
                addr: system.addr,
            };
            let r = &mut results.systems[i];
            let check = |what: &str| {
                ensure!(
                    server.failures() == 0,
                    "{}: the server saw a failed connection during {what}",
                    system.name
                );
                Ok(())
            };

            let busy = match plan.only {
                None => busy_tests(&client, run, &plan, r, &check)?,
                Some(Only::Rate) => rate_test(&client, &plan, r),
                Some(Only::Idle) => String::new(),
            };

            // 5. Idle connections, on a fresh instance so earlier tests' heap is not reused.
            if system.kind != Kind::Direct && plan.only != Some(Only::Rate) {
                let own = dir.0.join(format!("{}-idle", system.name));
                let fresh = Running::start(system.name, system.kind, &own, server.addr, &sockgate)?;
                let per_conn = idle(&fresh, &client, &server, plan.idle, plan.clients)?;
                r.idle_bytes.push(per_conn);
                fresh.check_datapath()?;
            }
            check("the connection tests")?;

            eprintln!(
                "run {run} {:<17} {busy}idle {} B/conn",
                system.name,
                r.idle_bytes
                    .last()
                    .map_or("-".into(), |b| format!("{b:.0}")),
            );
        }
    }
    let mut checked = String::new();
    for system in &systems {
        if let Some(summary) = system.check_datapath()? {
            checked += &format!("{summary}\n");
        }
    }
    drop(systems);

    let names: Vec<&str> = list.iter().map(|s| s.0).collect();
    print!("\n{}", report::machine());
    if let Some(only) = plan.only {
        print!("{}", report::only(only, &plan, &names, &results));
        print!("\n{checked}");
        println!("bench took {:.0} s", started.elapsed().as_secs_f64());
        return Ok(());
    }
    print!("{}", report::tables(&plan, &names, &results));
    print!("{}", report::targets(&names, &results));
    print!("\n{checked}");
    let svg = args.svg.unwrap_or_else(|| {
        crate::exec::workspace_root()
            .join("target")
            .join("bench")
            .join("bench.svg")
    });
    if let Some(parent) = svg.parent() {
        std::fs::create_dir_all(parent)?;
    }
    report::chart(&svg, &plan, &names, &results)?;
    println!("\nchart: {}", svg.display());
    println!("bench took {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Measurements 1 to 4 on `client`'s system, into `r`; returns their figures for the run's
/// progress line.
fn busy_tests(
    client: &Client,
    run: usize,
    plan: &Plan,
    r: &mut Samples,
    check: &dyn Fn(&str) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    // 1. Bulk, one connection each way.
    let cpu = CpuSample::now()?;
    let kmem = kmem::Sampler::start()?;
    let up = client.upload(&name(run), plan.bytes)?;
    let down = client.download(&name(run + 1), plan.bytes)?;
    let peak = kmem.finish();
    let busy = CpuSample::now()?.busy_seconds_since(&cpu);
    check("bulk")?;
    r.up_gbps.push(gbps(plan.bytes, up));
    r.down_gbps.push(gbps(plan.bytes, down));
    r.bulk_cpu.push(busy / gib(2 * plan.bytes));
    r.kmem_mib.push(peak as f64 / f64::from(1 << 20));

    // 2. Parallel bulk.
    let (secs, busy) = parallel(client, plan.bytes, plan.parallel)?;
    check("parallel bulk")?;
    r.par_gbps.push(gbps(plan.bytes, secs));
    r.par_cpu.push(busy / gib(plan.bytes));

    // 3. Round trip.
    let mut rtts = client.ping(&name(run + 2), plan.pings)?;
    check("ping-pong")?;
    r.rtt50.push(percentile(&mut rtts, 0.50));
    r.rtt99.push(percentile(&mut rtts, 0.99));

    let rate = rate_test(client, plan, r);
    Ok(format!(
        "up {:>6.2} down {:>6.2} Gbit/s  {:>5.2} cpu-s/GiB  kmem {:>6.1} MiB  par {:>6.2} Gbit/s  \
         rtt {:>5.1} us  {rate}",
        r.up_gbps[run],
        r.down_gbps[run],
        r.bulk_cpu[run],
        r.kmem_mib[run],
        r.par_gbps[run],
        r.rtt50[run],
    ))
}

/// 4. Connection rate, into `r`; returns its figure for the run's progress line.
fn rate_test(client: &Client, plan: &Plan, r: &mut Samples) -> String {
    let (rate, failed) = conn_rate(client, plan.rate_secs, plan.clients);
    r.rate.push(rate);
    r.rate_failures += failed;
    format!("{rate:>6.0} conn/s ({failed} failed)  ")
}

fn gbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 * 8.0 / secs / 1e9
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 30)
}

/// `total` bytes uploaded over `conns` connections at once; returns (wall seconds, busy
/// CPU-seconds). The handshakes are inside the timed span (a few ms of it).
fn parallel(client: &Client, total: u64, conns: usize) -> anyhow::Result<(f64, f64)> {
    let each = total / conns as u64;
    let cpu = CpuSample::now()?;
    let start = Instant::now();
    thread::scope(|s| {
        let handles: Vec<_> = (0..conns)
            .map(|i| s.spawn(move || client.upload(&name(100 + i), each)))
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("upload thread").map(drop))
    })?;
    let secs = start.elapsed().as_secs_f64();
    let busy = CpuSample::now()?.busy_seconds_since(&cpu);
    // The odd bytes of the division were not sent; count only what was.
    let moved = each * conns as u64;
    Ok((
        secs * total as f64 / moved as f64,
        busy * total as f64 / moved as f64,
    ))
}

/// Full TLS connections for `secs` from `threads` clients, each a different name of the
/// policy in turn; returns (completed per second, failed).
fn conn_rate(client: &Client, secs: f64, threads: usize) -> (f64, u64) {
    let next = AtomicUsize::new(0);
    let (done, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    match client.connect(&name(i)) {
                        Ok(stream) => {
                            drop(stream);
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(err) => {
                            if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                                eprintln!("bench: connection {i} failed: {err:#}");
                            }
                        }
                    }
                }
            });
        }
    });
    let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    (rate, failed.load(Ordering::Relaxed))
}

/// Opens `n` connections through `system` and parks them at the server; returns the
/// system's extra resident bytes per connection.
fn idle(
    system: &Running,
    client: &Client,
    server: &Server,
    n: usize,
    threads: usize,
) -> anyhow::Result<f64> {
    let client = Client {
        config: client.config.clone(),
        addr: system.addr,
    };
    let inuse = kmem::tcp_inuse()?;
    // Warm up: the first connections set up what every later one shares.
    hold(&client, server, 16, threads)?;
    let before = system.rss()?;
    let held = hold(&client, server, n, threads)?;
    thread::sleep(Duration::from_millis(300));
    let after = system.rss()?;
    drop(held);
    server.release();
    settle(inuse);
    Ok(after.saturating_sub(before) as f64 / n as f64)
}

/// `n` parked connections, each confirmed at the server.
fn hold(
    client: &Client,
    server: &Server,
    n: usize,
    threads: usize,
) -> anyhow::Result<Vec<TcpStream>> {
    let base = server.held();
    let next = AtomicUsize::new(0);
    let streams = thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return anyhow::Ok(mine);
                        }
                        mine.push(client.hold(&name(i))?);
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("hold thread"))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let streams: Vec<TcpStream> = streams.into_iter().flatten().collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.held() < base + n {
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} connections reached the server",
                server.held() - base
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
    Ok(streams)
}

/// Waits (up to 15 s) until the machine's TCP sockets are back near `inuse`, so closing
/// thousands of connections does not bleed into the next measurement.
fn settle(inuse: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if kmem::tcp_inuse().is_ok_and(|now| now <= inuse + 64) {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Thousands of connections need more descriptors than the usual soft limit of 1024:
/// raises the soft limit to the hard one. The proxies inherit it.
fn raise_fd_limit() -> anyhow::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) and setrlimit(2) with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error()).context("reading RLIMIT_NOFILE");
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(std::io::Error::last_os_error()).context("raising RLIMIT_NOFILE");
        }
    }
    Ok(limit.rlim_max)
}
