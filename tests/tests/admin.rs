//! The admin endpoint (`[admin]`) of a real agent, from outside: a real Prometheus scraping
//! it during a transfer, `/connections` and `sockgate status` on a live spliced
//! connection, `/readyz` around startup and the SIGTERM drain, and bad clients (unknown
//! paths, other methods, a 1 MB request head, 10,000 idle connections). Each test runs in
//! its own network namespace.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use sockgate_tests::{
    admin::{self, Answer, Prometheus},
    agent::{Agent, Proc, WAIT, config_file, run},
    netns::NetNs,
    peers::{Plan, exchange, server},
    programs::{banner_server, connect_tunnel, require},
    sockgate_bin,
    tempdir::TempDir,
};

const PROXY: &str = "127.0.0.1:3128";
const ADMIN: &str = "127.0.0.1:9090";
const MB: u64 = 1 << 20;

/// A CONNECT listener on sockmap that allows allowed.test (loopback), with `[admin]`.
fn config(grace: &str) -> String {
    format!(
        r#"
datapath = "sockmap"

[[listener]]
name = "proxy"
mode = "connect"
address = "{PROXY}"

[policy]
default = "deny"

[[policy.rule]]
name = "the-rule"
action = "allow"
fqdn = ["allowed.test"]

[resolver]
hosts = {{ "allowed.test" = ["127.0.0.1"] }}

[limits]
shutdown_grace = "{grace}"

[admin]
address = "{ADMIN}"
"#
    )
}

fn proxy() -> SocketAddr {
    PROXY.parse().unwrap()
}

fn admin_addr() -> SocketAddr {
    ADMIN.parse().unwrap()
}

/// A tunnel to the banner server (an echo after its banner), banner read.
fn echo_tunnel() -> TcpStream {
    let (mut tunnel, status) = connect_tunnel(proxy(), "allowed.test:2525");
    assert!(status.starts_with("HTTP/1.1 200"), "CONNECT: {status}");
    tunnel.set_read_timeout(Some(WAIT)).unwrap();
    let mut banner = [0u8; 4];
    tunnel.read_exact(&mut banner).expect("the banner");
    assert_eq!(&banner, b"hi\r\n");
    tunnel
}

/// Sends `n` bytes through an echo tunnel and reads them back.
fn echo(tunnel: &mut TcpStream, n: usize) {
    let sent = vec![b'x'; n];
    let writer = {
        let mut tunnel = tunnel.try_clone().unwrap();
        thread::spawn(move || tunnel.write_all(&sent).unwrap())
    };
    let mut back = vec![0u8; n];
    tunnel.read_exact(&mut back).expect("the echo");
    writer.join().unwrap();
    assert!(back.iter().all(|b| *b == b'x'));
}

/// `sockgate status` with `args`; returns its exit status, stdout and stderr.
fn status(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    run(
        "sockgate status",
        Command::new(sockgate_bin()).arg("status").args(args),
        WAIT,
    )
}

/// The only open connection in a `/connections`-shaped array, checked as a live spliced
/// tunnel to allowed.test.
fn the_tunnel(rows: &[Value]) -> &Value {
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["fqdn"], "allowed.test", "{row}");
    assert_eq!(row["state"], "relaying", "{row}");
    assert_eq!(row["datapath"], "sockmap", "{row}");
    assert_eq!(row["listener"], "proxy", "{row}");
    assert_eq!(row["rule"], "the-rule", "{row}");
    row
}

/// Test 1: a real Prometheus, scraping every second, sees `sockgate_bytes_total` rise
/// while a 200 MB upload through a spliced tunnel to a slow reader is still running, and
/// `promtool check metrics` accepts the exposition.
#[test]
fn prometheus_sees_bytes_rise_during_a_transfer() {
    let _ns = NetNs::enter_new();
    // 200 MB read at 25 MB/s: eight seconds, several scrapes.
    let reports = server(TcpListener::bind("127.0.0.1:9000").unwrap(), |_| Plan {
        read_rate: 25 * MB,
        ..Plan::new(0, 2)
    });
    let agent = Agent::start(&config("1s"));
    let prometheus = Prometheus::start(admin_addr(), "127.0.0.1:9091".parse().unwrap());

    let (stream, status) = connect_tunnel(proxy(), "allowed.test:9000");
    assert!(status.starts_with("HTTP/1.1 200"), "CONNECT: {status}");
    let transfer = thread::spawn(move || exchange(stream, Plan::new(200 * MB, 1)));
    let query = r#"sockgate_bytes_total{listener="proxy",direction="up",datapath="sockmap"}"#;
    let mut seen: Vec<f64> = Vec::new();
    while !transfer.is_finished() {
        if let Some(v) = prometheus.query(query)
            && seen.last() != Some(&v)
        {
            seen.push(v);
        }
        let risen = seen.windows(2).any(|w| 0.0 < w[0] && w[0] < w[1]);
        if risen {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    let finished_first = transfer.is_finished();
    eprintln!("sockgate_bytes_total up, as Prometheus answered during the transfer: {seen:?}");
    let client = transfer.join().unwrap().expect("the client's side");
    let server = reports
        .recv_timeout(WAIT)
        .unwrap()
        .expect("the server's side");
    assert_eq!(server.received_len, 200 * MB);
    assert_eq!(server.received, client.sent, "upstream hash");
    assert!(
        !finished_first,
        "the transfer ended before Prometheus saw two rising values: {seen:?}"
    );
    assert!(
        seen.len() >= 2 && seen.iter().all(|v| *v < (200 * MB) as f64),
        "{seen:?}"
    );

    let conn = agent.wait_conn("the transfer", |d| d["fqdn"] == "allowed.test");
    assert_eq!(conn.close["end"], "fin", "{}", conn.close);
    // Once closed, the counter holds the close line's count, never less.
    let deadline = Instant::now() + WAIT;
    let mut last = 0.0;
    while last < (200 * MB) as f64 {
        assert!(Instant::now() < deadline, "Prometheus's last value: {last}");
        thread::sleep(Duration::from_millis(200));
        last = prometheus.query(query).unwrap_or_default();
    }
    assert_eq!(last, conn.close["bytes_up"].as_f64().unwrap());
    assert!(prometheus.target_up());

    let metrics = admin::get(admin_addr(), "/metrics");
    let dir = TempDir::new("metrics");
    let file = dir.join("metrics.txt");
    std::fs::write(&file, &metrics).unwrap();
    let (status, out, err) = run(
        "promtool",
        Command::new(require("promtool"))
            .args(["check", "metrics"])
            .stdin(std::fs::File::open(&file).unwrap()),
        WAIT,
    );
    assert!(
        status.success(),
        "promtool check metrics: {out}{err}\n{metrics}"
    );
}

/// Test 2: `/connections` and `sockgate status --json` list an open spliced tunnel with
/// its name and growing byte counts (the kernel's counters, read at request time), and
/// neither lists it once it is closed.
#[test]
fn connections_and_status_list_a_live_spliced_connection() {
    let _ns = NetNs::enter_new();
    banner_server(TcpListener::bind("127.0.0.1:2525").unwrap(), b"hi\r\n");
    let agent = Agent::start(&config("1s"));
    let mut tunnel = echo_tunnel();
    echo(&mut tunnel, MB as usize);
    let rows = admin::connections(admin_addr());
    let row = the_tunnel(&rows);
    let (up, down) = (
        row["bytes_up"].as_u64().unwrap(),
        row["bytes_down"].as_u64().unwrap(),
    );
    // The CONNECT request is not counted; the banner is.
    assert_eq!((up, down), (MB, MB + 4), "{row}");

    echo(&mut tunnel, 2 * MB as usize);
    let (code, out, err) = status(&["--admin", ADMIN, "--json"]);
    assert!(code.success(), "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).expect("status --json is JSON");
    let row = the_tunnel(&rows);
    assert_eq!(row["bytes_up"].as_u64().unwrap(), 3 * MB, "{row}");
    assert_eq!(row["bytes_down"].as_u64().unwrap(), 3 * MB + 4, "{row}");

    // The screen, for a person: the config, the counts, the table.
    let (code, screen, err) = status(&["-c", agent.config_path().to_str().unwrap()]);
    assert!(code.success(), "{err}");
    eprintln!("---- sockgate status ----\n{screen}");
    assert!(
        screen.contains("open:    1 (0 handshake, 1 relaying)"),
        "{screen}"
    );
    assert!(screen.contains("allowed.test"), "{screen}");
    assert!(screen.contains("3.0 MiB"), "{screen}");

    tunnel.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    tunnel.read_to_end(&mut rest).expect("EOF");
    let conn = agent.wait_conn("the tunnel", |d| d["fqdn"] == "allowed.test");
    assert_eq!(conn.close["bytes_up"].as_u64().unwrap(), 3 * MB);
    assert!(admin::connections(admin_addr()).is_empty());
    let (code, out, _) = status(&["--admin", ADMIN, "--json"]);
    assert!(code.success());
    assert_eq!(out.trim(), "[]");
}

/// `sockgate status` with nothing answering: exit 1 and one line saying so.
#[test]
fn status_without_an_agent_fails_in_one_line() {
    let _ns = NetNs::enter_new();
    let (code, out, err) = status(&["--admin", ADMIN]);
    assert_eq!(code.code(), Some(1), "{out}{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("nothing answers at 127.0.0.1:9090"), "{err}");
}

/// Test 3: `/readyz` is 503 until every listener is bound. The test holds the listener's
/// port, so the agent answers 503 while it loads the datapath and then exits, as it does
/// when a listener cannot bind. With the port free, it is ready; after SIGTERM it is 503
/// again while a relayed tunnel drains.
#[test]
fn readyz_is_503_before_binding_and_during_the_drain() {
    let _ns = NetNs::enter_new();
    banner_server(TcpListener::bind("127.0.0.1:2525").unwrap(), b"hi\r\n");
    let held = TcpListener::bind(PROXY).unwrap();
    let dir = TempDir::new("agent");
    let path = config_file(&dir, &config("2s"));
    let mut starting = Proc::spawn(
        "sockgate",
        Command::new(sockgate_bin()).arg("run").arg("-c").arg(&path),
        false,
    );
    let mut answers = Vec::new();
    let deadline = Instant::now() + WAIT;
    while starting.wait_exit(Duration::ZERO).is_none() {
        assert!(
            Instant::now() < deadline,
            "the agent neither bound nor exited"
        );
        if let Some(Answer { status, .. }) = admin::request(admin_addr(), "GET", "/readyz") {
            answers.push(status);
        }
        thread::sleep(Duration::from_millis(1));
    }
    let exit = starting.expect_exit(WAIT);
    assert!(!exit.success(), "started with its port taken");
    assert!(
        starting.stderr.text().contains("binding 127.0.0.1:3128"),
        "{}",
        starting.stderr.text()
    );
    assert!(!answers.is_empty(), "/readyz never answered while starting");
    assert!(answers.iter().all(|s| *s == 503), "{answers:?}");
    drop(held);

    let mut agent = Agent::start(&config("2s"));
    assert_eq!(admin::get(admin_addr(), "/readyz"), "ready\n");
    let mut tunnel = echo_tunnel();
    agent.signal(libc::SIGTERM);
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = admin::request(admin_addr(), "GET", "/readyz").expect("/readyz");
        if answer.status == 503 {
            assert_eq!(answer.body, "draining\n");
            break;
        }
        assert!(Instant::now() < deadline, "still ready after SIGTERM");
        thread::sleep(Duration::from_millis(10));
    }
    // Draining, not gone: the tunnel still carries bytes, and /healthz answers.
    echo(&mut tunnel, 1000);
    assert_eq!(admin::get(admin_addr(), "/healthz"), "ok\n");
    let exit = agent.expect_exit(Duration::from_secs(2) + WAIT);
    assert!(exit.success(), "{exit}");
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Raises this process's soft RLIMIT_NOFILE to at least `n` (as root, the hard one too).
fn raise_nofile(n: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < n {
            limit.rlim_cur = n;
            limit.rlim_max = limit.rlim_max.max(n);
            assert_eq!(
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit),
                0,
                "setrlimit: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Test 7: an unknown path gets 404, another method 405, a 1 MB request head an error and
/// no memory growth; 10,000 idle connections to the endpoint take no more descriptors
/// than its cap, and a proxied connection goes through meanwhile.
#[test]
fn bad_clients_get_errors_and_leave_the_proxy_alone() {
    let _ns = NetNs::enter_new();
    banner_server(TcpListener::bind("127.0.0.1:2525").unwrap(), b"hi\r\n");
    let agent = Agent::start(&config("1s"));
    let admin = admin_addr();
    assert_eq!(admin::request(admin, "GET", "/nope").unwrap().status, 404);
    assert_eq!(
        admin::request(admin, "POST", "/metrics").unwrap().status,
        405
    );
    assert_eq!(
        admin::request(admin, "DELETE", "/config").unwrap().status,
        405
    );

    let rss_before = rss_kib(agent.pid());
    let mut huge = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Huge: ".to_vec();
    huge.resize(huge.len() + MB as usize, b'a');
    huge.extend_from_slice(b"\r\n\r\n");
    for _ in 0..20 {
        let answer = admin::exchange(admin, &huge).expect("an answer to the huge head");
        assert_eq!(answer.status, 431, "{answer:?}");
    }
    let grown = rss_kib(agent.pid()).saturating_sub(rss_before);
    assert!(
        grown < 4096,
        "20 heads of 1 MB grew the agent by {grown} KiB"
    );

    // The agent keeps the descriptor limit it was started with; only the test needs more.
    raise_nofile(12_000);
    let fds_before = open_fds(agent.pid());
    let mut idle = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        let stream = TcpStream::connect_timeout(&admin, WAIT)
            .unwrap_or_else(|e| panic!("idle connection {i}: {e}"));
        idle.push(stream);
    }
    let mut tunnel = echo_tunnel();
    echo(&mut tunnel, 1000);
    let fds = open_fds(agent.pid());
    assert!(
        fds < fds_before + 64 + 16,
        "10,000 idle admin connections took {} descriptors",
        fds - fds_before
    );
    drop(idle);
    drop(tunnel);
    // Once they are gone, the endpoint answers again.
    let deadline = Instant::now() + WAIT;
    while admin::request(admin, "GET", "/healthz").map(|a| a.status) != Some(200) {
        assert!(Instant::now() < deadline, "the endpoint did not recover");
        thread::sleep(Duration::from_millis(20));
    }
}
