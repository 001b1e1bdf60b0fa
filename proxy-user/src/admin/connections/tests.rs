use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::*;

fn client() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}

/// A relayed connection whose live counts the test moves.
fn counting(table: &Connections, conn: u64) -> Arc<AtomicU64> {
    let up = Arc::new(AtomicU64::new(0));
    let read = Arc::clone(&up);
    table.open(conn, "proxy".into(), client());
    let route = Route {
        fqdn: Some("example.com".into()),
        ..Route::default()
    };
    let live = move || Bytes {
        up: read.load(Relaxed),
        down: 1,
    };
    table.relaying(conn, route, Path::Sockmap, Arc::new(live), 0);
    up
}

fn bytes_of(tally: &Tally, path: Option<Path>) -> Bytes {
    let found = tally.bytes.iter().find(|((_, p), _)| *p == path);
    found.map_or(Bytes::default(), |(_, b)| *b)
}

#[test]
fn open_bytes_count_and_the_total_never_goes_down() {
    let table = Connections::default();
    let up = counting(&table, 1);
    up.store(100, Relaxed);
    assert_eq!(bytes_of(&table.tally(), Some(Path::Sockmap)).up, 100);
    // Torn down: the kernel's counters are gone before the close line is written.
    up.store(0, Relaxed);
    assert_eq!(bytes_of(&table.tally(), Some(Path::Sockmap)).up, 100);
    table.close(1, Some(Path::Sockmap), Bytes { up: 150, down: 1 });
    let tally = table.tally();
    assert_eq!(bytes_of(&tally, Some(Path::Sockmap)).up, 150);
    assert!(tally.open.iter().all(|(_, n)| *n == 0), "{tally:?}");
    // A close that counts less than was shown still counts what was shown.
    let up = counting(&table, 2);
    up.store(70, Relaxed);
    table.tally();
    table.close(2, Some(Path::Sockmap), Bytes { up: 10, down: 0 });
    assert_eq!(bytes_of(&table.tally(), Some(Path::Sockmap)).up, 220);
}

/// Every open connection holds an entry; what it adds per connection is documented.
#[test]
fn an_entry_stays_small() {
    assert!(size_of::<Entry>() <= 112, "{} bytes", size_of::<Entry>());
}

#[test]
fn the_connect_request_is_not_counted() {
    let table = Connections::default();
    table.open(1, "proxy".into(), client());
    let live = || Bytes { up: 140, down: 9 };
    table.relaying(1, Route::default(), Path::Splice, Arc::new(live), 40);
    assert_eq!(
        (table.rows()[0].bytes_up, table.rows()[0].bytes_down),
        (100, 9)
    );
}

#[test]
fn states_and_rows() {
    let table = Connections::default();
    table.open(7, "sni".into(), client());
    let up = counting(&table, 8);
    up.store(5, Relaxed);
    let tally = table.tally();
    let handshake = (Arc::from("sni"), State::Handshake, None);
    let relaying = (Arc::from("proxy"), State::Relaying, Some(Path::Sockmap));
    assert!(tally.open.contains(&(handshake, 1)), "{tally:?}");
    assert!(tally.open.contains(&(relaying, 1)), "{tally:?}");
    let rows = table.rows();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].conn, rows[0].state.as_str()), (7, "handshake"));
    assert_eq!(rows[0].datapath, None);
    let row = &rows[1];
    assert_eq!((row.conn, row.state.as_str()), (8, "relaying"));
    assert_eq!(row.fqdn.as_deref(), Some("example.com"));
    assert_eq!(row.datapath.as_deref(), Some("sockmap"));
    assert_eq!((row.bytes_up, row.bytes_down), (5, 1));
    table.close(7, None, Bytes { up: 517, down: 7 });
    table.close(8, Some(Path::Sockmap), Bytes { up: 5, down: 1 });
    assert!(table.rows().is_empty());
    // A refused connection's bytes count under no path.
    assert_eq!(bytes_of(&table.tally(), None), Bytes { up: 517, down: 7 });
}

/// A session that panicked leaves no row, and the bytes it showed stay counted.
#[test]
fn a_forgotten_connection_leaves_no_row() {
    let table = Connections::default();
    let up = counting(&table, 1);
    up.store(30, Relaxed);
    table.tally();
    table.open(2, "proxy".into(), client());
    table.forget(1);
    table.forget(2);
    table.forget(3);
    assert!(table.rows().is_empty());
    let tally = table.tally();
    assert!(tally.open.iter().all(|(_, n)| *n == 0), "{tally:?}");
    assert_eq!(bytes_of(&tally, Some(Path::Sockmap)).up, 30);
}
