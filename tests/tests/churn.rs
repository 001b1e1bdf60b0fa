//! 100,000 connections through `sockgate run` (allowed and spliced, denied, reset by the
//! client mid-splice, timed out in the handshake): afterwards the agent's fds and kernel
//! map entries are back at their baseline and its resident memory grew less than 10%.
//! Its own test binary, so nothing else loads the agent meanwhile.

use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use proxy_user::sockopt;
use serde_json::Value;
use sockgate_tests::{
    agent::{Agent, WAIT, connect_config},
    netns::NetNs,
    programs::{banner_server, connect_tunnel},
};

const PROXY: &str = "127.0.0.1:3128";
const TOTAL: u64 = 100_000;
const WARMUP: u64 = 2_000;
/// Handshake timeouts are slow by nature; these many run in concurrent batches.
const TIMEOUTS: u64 = 1_000;
const WORKERS: u64 = 8;

/// One connection of kind `i % 4`: allowed with a round trip and FIN, denied (403), reset
/// by the client after a round trip, allowed with a round trip and FIN again.
fn one(i: u64) {
    let host = if i % 4 == 1 {
        "denied.test"
    } else {
        "allowed.test"
    };
    let (mut stream, status) = connect_tunnel(PROXY.parse().unwrap(), &format!("{host}:2525"));
    if i % 4 == 1 {
        assert!(status.starts_with("HTTP/1.1 403"), "denied got {status:?}");
        return;
    }
    assert!(status.starts_with("HTTP/1.1 200"), "allowed got {status:?}");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    // The client speaks first, so sockgate decides without waiting for client_first_timeout.
    // ASCII digits: a first byte of 22 would rightly be taken for a TLS record.
    let id = format!("{i:08}");
    stream.write_all(id.as_bytes()).unwrap();
    let mut banner = [0u8; 4];
    stream.read_exact(&mut banner).expect("the banner");
    let mut echo = [0u8; 8];
    stream.read_exact(&mut echo).expect("the echo");
    assert_eq!(&echo, id.as_bytes());
    if i % 4 == 2 {
        sockopt::set_linger_zero(&stream).unwrap();
        return;
    }
    stream.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("EOF after our FIN");
}

/// `count` connections that never send their CONNECT request, `batch` at a time; each is
/// reset at `handshake_timeout`.
fn silent(count: u64, batch: u64) {
    for _ in 0..count / batch {
        let streams: Vec<_> = (0..batch)
            .map(|_| TcpStream::connect(PROXY).expect("connecting"))
            .collect();
        for mut s in streams {
            s.set_read_timeout(Some(WAIT)).unwrap();
            let mut buf = [0u8; 1];
            match s.read(&mut buf) {
                Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
                Ok(n) => panic!("a silent client got {n} bytes instead of a reset"),
            }
        }
    }
}

/// Runs connections `from..to` over the workers, plus `timeouts` silent ones alongside.
fn churn(from: u64, to: u64, timeouts: u64) {
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| thread::spawn(move || (from + w..to).step_by(WORKERS as usize).for_each(one)))
        .collect();
    silent(timeouts, 100);
    for w in workers {
        w.join().expect("a client worker failed");
    }
}

/// Stats once every connection has closed.
fn quiet_stats(agent: &Agent) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = agent.stats();
        if stats["open"] == 0 {
            return stats;
        }
        assert!(Instant::now() < deadline, "connections stay open: {stats}");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn hundred_thousand_connections_leave_no_trace() {
    let _ns = NetNs::enter_new();
    banner_server(TcpListener::bind("127.0.0.1:2525").unwrap(), b"hi\r\n");
    let agent = Agent::start(&connect_config(
        "handshake_timeout = \"300ms\"\nclient_first_timeout = \"100ms\"",
    ));

    let started = Instant::now();
    churn(0, WARMUP, 100);
    let baseline = quiet_stats(&agent);
    churn(WARMUP, TOTAL - TIMEOUTS, TIMEOUTS - 100);
    let after = quiet_stats(&agent);
    eprintln!("{TOTAL} connections in {:?}", started.elapsed());
    eprintln!("baseline {baseline}\nafter    {after}");

    assert_eq!(after["accepted"], TOTAL, "{after}");
    assert_eq!(after["fds"], baseline["fds"], "fds leaked");
    let empty = serde_json::json!({"socks": 0, "handoff": 0, "counters": 0});
    assert_eq!(baseline["maps"], empty, "map entries at baseline");
    assert_eq!(after["maps"], empty, "map entries leaked");
    let (rss0, rss1) = (
        baseline["rss_kib"].as_u64().unwrap(),
        after["rss_kib"].as_u64().unwrap(),
    );
    assert!(
        rss1 * 10 < rss0 * 11,
        "resident memory grew from {rss0} KiB to {rss1} KiB"
    );

    // Every connection has its decision and close lines, and the kinds all happened.
    let log = agent.stdout();
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count() as u64;
    assert_eq!(count("\"event\":\"decision\""), TOTAL);
    assert_eq!(count("\"event\":\"close\""), TOTAL);
    assert!(count("\"reason\":\"timeout\"") >= TIMEOUTS);
    assert!(count("\"end\":\"rst\"") >= (TOTAL - TIMEOUTS) / 4);
    assert!(count("\"action\":\"deny\"") >= (TOTAL - TIMEOUTS) / 4 + TIMEOUTS);
}
