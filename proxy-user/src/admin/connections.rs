//! The table of open connections: the rows of `GET /connections`, and at scrape time the
//! `sockgate_connections_open` gauge and the live part of `sockgate_bytes_total`.
//!
//! Sharded by connection id, so a connection's three changes (opened, relaying, closed)
//! each take one lock that other connections rarely hold. Each shard also keeps the byte
//! totals of its closed connections: a connection moves from live to closed under the one
//! lock a scrape also holds, so the byte counter never goes down (a scrape between the two
//! would otherwise miss it, or count it twice).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::datapath::Path;

/// Enough shards that two cores rarely meet on one; a power of two.
const SHARDS: usize = 16;

/// Where an open connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// From accept to the handoff to the datapath: reading, deciding, connecting.
    Handshake,
    /// Handed to the datapath.
    Relaying,
}

impl State {
    /// The label and JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Handshake => "handshake",
            State::Relaying => "relaying",
        }
    }
}

/// Bytes each way: `up` from the client to the server, `down` back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Bytes {
    /// From the client to the server.
    pub up: u64,
    /// From the server to the client.
    pub down: u64,
}

impl Bytes {
    /// Each way, the larger of the two.
    fn max(self, other: Bytes) -> Bytes {
        Bytes {
            up: self.up.max(other.up),
            down: self.down.max(other.down),
        }
    }

    fn add(&mut self, other: Bytes) {
        self.up += other.up;
        self.down += other.down;
    }
}

/// Reads a relayed connection's byte counts so far, as its close line will count them.
/// The datapath provides it (for the sockmap path, from the kernel counters), so admin
/// needs no part of the datapath but its `Path`.
pub trait LiveBytes: Send + Sync {
    /// The bytes moved so far; may be lower than an earlier answer once the connection is
    /// being torn down (the kernel's counters go with its sockets).
    fn read(&self) -> Bytes;
}

impl<F: Fn() -> Bytes + Send + Sync> LiveBytes for F {
    fn read(&self) -> Bytes {
        self()
    }
}

impl LiveBytes for crate::datapath::LiveCounts {
    fn read(&self) -> Bytes {
        let (up, down) = self.bytes();
        Bytes { up, down }
    }
}

/// What the decision established about a relayed connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Route {
    /// Where sockgate connected, as in the decision line.
    pub dst: Option<String>,
    /// The name the policy decided on.
    pub fqdn: Option<String>,
    /// The rule that matched.
    pub rule: Option<String>,
}

/// The datapath's side of a relayed connection.
struct Relay {
    path: Path,
    live: Arc<dyn LiveBytes>,
    /// Bytes up not counted: the CONNECT request, which the close line leaves out too.
    head: u64,
}

/// One open connection. Every relayed connection holds one for as long as it lasts, so it
/// is kept small: the route is boxed (and is the decision line's own strings, moved), and
/// the start is 8 bytes.
struct Entry {
    listener: Arc<str>,
    client: SocketAddr,
    /// Nanoseconds from the table's epoch to the accept.
    opened: u64,
    route: Option<Box<Route>>,
    relay: Option<Relay>,
    /// The highest counts a scrape or request showed: what the close adds is never less.
    seen: Bytes,
}

impl Entry {
    /// The byte counts now, never lower than the last shown.
    fn bytes(&mut self) -> Bytes {
        if let Some(relay) = &self.relay {
            let mut live = relay.live.read();
            live.up = live.up.saturating_sub(relay.head);
            self.seen = self.seen.max(live);
        }
        self.seen
    }
}

/// Byte totals of a shard's closed connections, by listener and path.
struct Closed {
    listener: Arc<str>,
    path: Option<Path>,
    bytes: Bytes,
}

#[derive(Default)]
struct Shard {
    /// Open connections, by id.
    open: HashMap<u64, Entry>,
    /// A handful: one per listener and path.
    closed: Vec<Closed>,
}

impl Shard {
    /// Adds a closed `entry`'s bytes, at least those it showed, to the closed totals.
    fn closed_with(&mut self, entry: Entry, path: Option<Path>, bytes: Bytes) {
        let bytes = entry.seen.max(bytes);
        let listener = entry.listener;
        match self
            .closed
            .iter_mut()
            .find(|c| c.path == path && c.listener == listener)
        {
            Some(closed) => closed.bytes.add(bytes),
            None => self.closed.push(Closed {
                listener,
                path,
                bytes,
            }),
        }
    }
}

/// Keeps shards on their own cache lines.
#[repr(align(64))]
#[derive(Default)]
struct Padded(Mutex<Shard>);

/// The open connections.
pub struct Connections {
    shards: [Padded; SHARDS],
    epoch: Instant,
}

/// A row of `GET /connections`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Row {
    pub conn: u64,
    pub listener: String,
    pub client: SocketAddr,
    pub dst: Option<String>,
    pub fqdn: Option<String>,
    pub rule: Option<String>,
    /// `handshake` or `relaying`.
    pub state: String,
    /// The path carrying the bytes; `None` during the handshake.
    pub datapath: Option<String>,
    pub age_ms: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// Open connections are counted by listener, state and path.
pub type OpenKey = (Arc<str>, State, Option<Path>);

/// Bytes are summed by listener and path.
pub type BytesKey = (Arc<str>, Option<Path>);

/// What a scrape reads from the table.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Open connections by listener, state and path.
    pub open: Vec<(OpenKey, u64)>,
    /// Bytes of closed and open connections by listener and path.
    pub bytes: Vec<(BytesKey, Bytes)>,
}

fn bump<K: PartialEq, V>(list: &mut Vec<(K, V)>, key: K, add: impl FnOnce(&mut V), zero: V) {
    match list.iter_mut().find(|(k, _)| *k == key) {
        Some((_, v)) => add(v),
        None => {
            let mut v = zero;
            add(&mut v);
            list.push((key, v));
        }
    }
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            shards: Default::default(),
            epoch: Instant::now(),
        }
    }
}

impl Connections {
    fn shard(&self, conn: u64) -> MutexGuard<'_, Shard> {
        // A panic while a shard is held leaves whole entries behind, no broken invariant.
        let shard = &self.shards[conn as usize % SHARDS].0;
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a connection just accepted.
    pub fn open(&self, conn: u64, listener: Arc<str>, client: SocketAddr) {
        let opened = self.epoch.elapsed().as_nanos() as u64;
        let entry = Entry {
            listener,
            client,
            opened,
            route: None,
            relay: None,
            seen: Bytes::default(),
        };
        self.shard(conn).open.insert(conn, entry);
    }

    /// Replaces a connection's client with the one its PROXY header named.
    pub fn proxied(&self, conn: u64, client: SocketAddr) {
        if let Some(entry) = self.shard(conn).open.get_mut(&conn) {
            entry.client = client;
        }
    }

    /// Marks a connection handed to the datapath on `path`; `live` reads its bytes, of
    /// which the first `head` up are not counted.
    pub fn relaying(
        &self,
        conn: u64,
        route: Route,
        path: Path,
        live: Arc<dyn LiveBytes>,
        head: u64,
    ) {
        if let Some(entry) = self.shard(conn).open.get_mut(&conn) {
            entry.route = Some(Box::new(route));
            entry.relay = Some(Relay { path, live, head });
        }
    }

    /// Removes a connection, adding its final byte counts (the close line's) to the closed
    /// totals. `path` is the one that carried it, `None` when it was never relayed.
    pub fn close(&self, conn: u64, path: Option<Path>, bytes: Bytes) {
        let mut shard = self.shard(conn);
        let Some(entry) = shard.open.remove(&conn) else {
            return;
        };
        shard.closed_with(entry, path, bytes);
    }

    /// Drops `conn`'s row, if it is still open, keeping the bytes it showed.
    pub fn forget(&self, conn: u64) {
        let mut shard = self.shard(conn);
        if let Some(entry) = shard.open.remove(&conn) {
            let path = entry.relay.as_ref().map(|r| r.path);
            shard.closed_with(entry, path, Bytes::default());
        }
    }

    /// Counts the open connections and sums the bytes, reading open ones' live counts.
    pub fn tally(&self) -> Tally {
        let mut tally = Tally::default();
        for shard in &self.shards {
            let mut shard = shard.0.lock().unwrap_or_else(|p| p.into_inner());
            let shard = &mut *shard;
            for closed in &shard.closed {
                let key = (Arc::clone(&closed.listener), closed.path);
                bump(
                    &mut tally.bytes,
                    key,
                    |b| b.add(closed.bytes),
                    Bytes::default(),
                );
            }
            for entry in shard.open.values_mut() {
                let bytes = entry.bytes();
                let path = entry.relay.as_ref().map(|r| r.path);
                let state = if entry.relay.is_some() {
                    State::Relaying
                } else {
                    State::Handshake
                };
                let key = (Arc::clone(&entry.listener), state, path);
                bump(&mut tally.open, key, |n| *n += 1, 0);
                let key = (Arc::clone(&entry.listener), path);
                bump(&mut tally.bytes, key, |b| b.add(bytes), Bytes::default());
            }
        }
        // A gauge that falls to 0 reads 0 rather than vanishing: every listener and path
        // that carried a connection keeps its series.
        for ((listener, path), _) in &tally.bytes {
            let state = if path.is_some() {
                State::Relaying
            } else {
                State::Handshake
            };
            bump(
                &mut tally.open,
                (Arc::clone(listener), state, *path),
                |_| {},
                0,
            );
        }
        tally
    }

    /// The open connections, oldest first, with their live byte counts.
    pub fn rows(&self) -> Vec<Row> {
        let now = self.epoch.elapsed();
        let mut rows: Vec<(u64, Row)> = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.0.lock().unwrap_or_else(|p| p.into_inner());
            for (conn, entry) in shard.open.iter_mut() {
                let bytes = entry.bytes();
                let route = entry.route.as_deref().cloned().unwrap_or_default();
                let age = now.saturating_sub(Duration::from_nanos(entry.opened));
                let row = Row {
                    conn: *conn,
                    listener: entry.listener.to_string(),
                    client: entry.client,
                    dst: route.dst,
                    fqdn: route.fqdn,
                    rule: route.rule,
                    state: if entry.relay.is_some() {
                        State::Relaying
                    } else {
                        State::Handshake
                    }
                    .as_str()
                    .to_owned(),
                    datapath: entry.relay.as_ref().map(|r| r.path.to_string()),
                    age_ms: age.as_millis() as u64,
                    bytes_up: bytes.up,
                    bytes_down: bytes.down,
                };
                rows.push((entry.opened, row));
            }
        }
        rows.sort_by_key(|(opened, row)| (*opened, row.conn));
        rows.into_iter().map(|(_, row)| row).collect()
    }
}

#[cfg(test)]
mod tests;
