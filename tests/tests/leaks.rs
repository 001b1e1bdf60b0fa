//! Leak checks. They count this process's fds, so they live alone in this test binary.

use std::{net::TcpStream, thread, time::Duration};

use proxy_user::datapath::{End, Path};
use sockgate_tests::{
    netns::NetNs,
    open_fds,
    peers::{Plan, exchange, listen, server},
    relay::Relay,
};

const LONG: Duration = Duration::from_secs(120);

fn server_report(rx: &std::sync::mpsc::Receiver<std::io::Result<sockgate_tests::peers::Report>>) {
    rx.recv_timeout(LONG)
        .expect("server finished no connection")
        .expect("server side failed");
}

/// After 10,000 short connections, the fds and every map entry are back at baseline.
fn no_leaks(path: Path) {
    let _ns = NetNs::enter_new();
    let (listener, addr) = listen();
    let reports = server(listener, |i| Plan::new(16, i));
    let mut relay = Relay::start(path, addr, 0);
    let connections = 10_000u64;
    let parallel = 8;
    // Warm up, so lazily opened fds (the runtime's, the logger's) count in the baseline.
    let stream = TcpStream::connect(relay.addr).unwrap();
    exchange(stream, Plan::new(16, 0)).unwrap();
    server_report(&reports);
    relay.outcome(LONG);
    let baseline = open_fds();
    let handles: Vec<_> = (0..parallel)
        .map(|worker| {
            let relay_addr = relay.addr;
            thread::spawn(move || {
                for seed in (worker..connections).step_by(parallel as usize) {
                    let stream = TcpStream::connect(relay_addr).unwrap();
                    let report = exchange(stream, Plan::new(16, seed + 1)).unwrap();
                    assert_eq!(report.received_len, 16);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client worker panicked");
    }
    for _ in 0..connections {
        server_report(&reports);
        let outcome = relay.outcome(LONG);
        assert_eq!(outcome.end, End::Fin);
        assert_eq!((outcome.bytes_up, outcome.bytes_down), (16, 16));
        // A peer that half-closes before the relay adopts its socket keeps that socket out
        // of the SOCKHASH, so sockmap connections may fall back.
        if path != Path::Sockmap {
            assert_eq!(outcome.path, path);
        }
    }
    let after = open_fds();
    assert_eq!(
        after.len(),
        baseline.len(),
        "fds leaked: {after:?}, was {baseline:?}"
    );
    assert_eq!(relay.map_counts(), Default::default(), "map entries leaked");
}

/// One test, so nothing else in this process opens or closes fds while it counts them.
#[test]
fn no_leaks_after_10000_connections() {
    no_leaks(Path::Sockmap);
    no_leaks(Path::Splice);
    no_leaks(Path::Copy);
}
