//! Bounded kernel memory: a spliced connection whose receivers read 1 MB/s. Redirected
//! bytes wait in a psock queue that TCP does not account for, so without the verdict's
//! bound (it redirects only what fits the peer's send buffer, datapath::sockmap) the kernel
//! queued most of a transfer (ARCHITECTURE.md, "The backpressure bound"); with it, each
//! direction holds at most its socket buffers.
//!
//! Its own test binary: it takes four and a half minutes, and runs alone.

use std::{net::TcpStream, thread, time::Duration};

use proxy_user::datapath::{End, Path};
use sockgate_tests::{
    held::{Held, Socket, held},
    netns::NetNs,
    peers::{Plan, exchange, listen, server},
    relay::Relay,
};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 256 * MIB;
const RATE: u64 = 1_000_000;
/// What a direction may hold beyond its socket buffers.
const EXTRA: u64 = 8 * MIB;
/// The relay's read buffer, which `Held::bytes` may include while bytes are relayed.
const USERSPACE: u64 = 64 << 10;

#[test]
fn slow_receivers_bound_kernel_memory() {
    let _ns = NetNs::enter_new();
    let (listener, server_addr) = listen();
    let slow = |seed| Plan {
        read_rate: RATE,
        ..Plan::new(SIZE, seed)
    };
    let reports = server(listener, move |_| slow(2));
    let mut relay = Relay::start(Path::Sockmap, server_addr, 0);
    let relay_addr = relay.addr;
    let client = thread::spawn(move || {
        exchange(TcpStream::connect(relay_addr).expect("connecting"), slow(1))
    });

    let find = |what: &str, want: &dyn Fn(_, _) -> bool| {
        for _ in 0..500 {
            if let Some(s) = Socket::find(want) {
                return s;
            }
            thread::sleep(Duration::from_millis(10));
        }
        panic!("the relay's {what} socket never showed up");
    };
    let from_client = find("client", &|local, _| local == relay_addr);
    let to_server = find("upstream", &|_, peer| peer == server_addr);

    let (mut peak_up, mut peak_down) = (Held::default(), Held::default());
    let mut samples = 0;
    while !client.is_finished() {
        let (up, down) = match (
            held(&from_client, &to_server),
            held(&to_server, &from_client),
        ) {
            (Ok(up), Ok(down)) => (up, down),
            // The relay closed its sockets: the transfer is over.
            (Err(e), _) | (_, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => break,
            (Err(e), _) | (_, Err(e)) => panic!("reading the relay's sockets: {e}"),
        };
        for (peak, now, dir) in [(&mut peak_up, up, "up"), (&mut peak_down, down, "down")] {
            assert!(
                now.bytes <= now.buffers + EXTRA + USERSPACE,
                "{dir}: the kernel holds {} bytes, beyond its socket buffers ({}) plus {EXTRA}",
                now.bytes,
                now.buffers
            );
            if now.bytes > peak.bytes {
                *peak = now;
            }
        }
        samples += 1;
        thread::sleep(Duration::from_millis(100));
    }
    eprintln!("{samples} samples; peak held up {peak_up:?}, down {peak_down:?}");
    // The receivers were slow enough to fill the buffers: the bound was tested.
    for (peak, dir) in [(peak_up, "up"), (peak_down, "down")] {
        assert!(
            peak.bytes > EXTRA,
            "{dir}: at most {} bytes were ever held; the test did not build pressure",
            peak.bytes
        );
    }

    let client = client.join().expect("client thread").expect("client side");
    let server = reports
        .recv_timeout(Duration::from_secs(60))
        .expect("server finished")
        .expect("server side");
    assert_eq!(client.received_len, SIZE);
    assert_eq!(client.received, server.sent, "downstream hash");
    assert_eq!(server.received_len, SIZE);
    assert_eq!(server.received, client.sent, "upstream hash");
    let outcome = relay.outcome(Duration::from_secs(60));
    assert_eq!((outcome.path, outcome.end), (Path::Sockmap, End::Fin));
}
