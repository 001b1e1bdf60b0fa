//! The admin endpoint's state: what the agent, sessions and the datapath report, and what
//! the HTTP side ([`server`]) serves. This module never imports the HTTP side: the
//! connection path only touches [`Admin`], through a few atomic increments and one lock
//! of a sharded table per change.
//!
//! - [`metrics`]: the Prometheus registry and every metric.
//! - [`connections`]: the open connections, for `GET /connections` and the metrics read
//!   at scrape time.
//! - [`server`]: HTTP/1.1 on hyper: `/metrics`, `/healthz`, `/readyz`, `/connections`,
//!   `/config`.
//! - [`status`]: the screen of `sockgate status`, from the endpoint's answers.

pub mod connections;
pub mod metrics;
pub mod server;
pub mod status;

use std::{
    fmt,
    net::SocketAddr,
    path::Path as FsPath,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, Ordering::Relaxed},
    },
    time::{Duration, SystemTime},
};

use connections::{Bytes, Connections, LiveBytes, Route, Row};
use metrics::{ListenerMetrics, MapEntries, Metrics};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{datapath::Path, events};

/// Whether the agent takes connections: `GET /readyz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Readiness {
    /// Loading the datapath or binding listeners.
    Starting,
    /// Every listener bound and the datapath loaded.
    Ready,
    /// SIGTERM: no longer accepting, draining relayed connections.
    Draining,
}

impl Readiness {
    /// The body of `GET /readyz`.
    pub fn as_str(self) -> &'static str {
        match self {
            Readiness::Starting => "starting",
            Readiness::Ready => "ready",
            Readiness::Draining => "draining",
        }
    }
}

/// The body of `GET /config`: the running config and the last reload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigReport {
    /// The config file, as given to `sockgate run`.
    pub path: String,
    /// SHA-256 of the running config's text, in hex.
    pub sha256: String,
    /// When the running config was loaded (RFC 3339).
    pub loaded_at: String,
    /// The last SIGHUP reload; `None` until the first.
    pub last_reload: Option<Reload>,
}

/// How a reload went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reload {
    /// When (RFC 3339).
    pub at: String,
    /// `None` when it succeeded; else the one-line error, and the old config still runs.
    pub error: Option<String>,
}

/// What the agent, sessions and the datapath report through, and the endpoint reads.
pub struct Admin {
    metrics: Metrics,
    connections: Arc<Connections>,
    /// A [`Readiness`].
    readiness: AtomicU8,
    config: Mutex<ConfigReport>,
}

impl Default for Admin {
    fn default() -> Self {
        let connections = Arc::new(Connections::default());
        Self {
            metrics: Metrics::new(Arc::clone(&connections)),
            connections,
            readiness: AtomicU8::new(Readiness::Starting as u8),
            config: Mutex::new(ConfigReport::default()),
        }
    }
}

impl Admin {
    /// The readiness `GET /readyz` answers with.
    pub fn readiness(&self) -> Readiness {
        match self.readiness.load(Relaxed) {
            0 => Readiness::Starting,
            1 => Readiness::Ready,
            _ => Readiness::Draining,
        }
    }

    /// Listeners bound and datapath loaded, or draining.
    pub fn set_readiness(&self, readiness: Readiness) {
        self.readiness.store(readiness as u8, Relaxed);
    }

    /// The datapath is loaded: connections take `path` when both sockets can, and
    /// `map_entries` reads the kernel maps (absent without the eBPF program).
    pub fn datapath_loaded(&self, path: Path, map_entries: Option<MapEntries>) {
        self.metrics.built(path);
        if let Some(read) = map_entries {
            self.metrics.map_entries(read);
        }
    }

    /// A config loaded at start (`reload` false) or by a reload, from `path` with `text`.
    pub fn config_loaded(&self, path: &FsPath, text: &str, reload: bool) {
        let now = SystemTime::now();
        let mut config = lock(&self.config);
        *config = ConfigReport {
            path: path.display().to_string(),
            sha256: hex(&Sha256::digest(text.as_bytes())),
            loaded_at: events::timestamp(now),
            last_reload: reload.then(|| Reload {
                at: events::timestamp(now),
                error: None,
            }),
        };
        self.metrics.reloaded(true, now);
    }

    /// A reload refused with `error`; the running config stays.
    pub fn reload_failed(&self, error: &str) {
        let now = SystemTime::now();
        lock(&self.config).last_reload = Some(Reload {
            at: events::timestamp(now),
            error: Some(error.to_owned()),
        });
        self.metrics.reloaded(false, now);
    }

    /// What the sessions of listener `name` report through; taken when it starts (again
    /// by a reload that restarts it, with the same metrics).
    pub fn reporter(self: &Arc<Self>, name: &str) -> Reporter {
        Reporter {
            admin: Arc::clone(self),
            listener: self.metrics.listener(name),
        }
    }

    /// Drops connection `conn`'s row without a close line (its session panicked); the bytes
    /// it showed stay counted.
    pub fn forget(&self, conn: u64) {
        self.connections.forget(conn);
    }

    /// `GET /metrics`.
    pub fn metrics_text(&self) -> String {
        self.metrics.encode()
    }

    /// `GET /connections`.
    pub fn connections(&self) -> Vec<Row> {
        self.connections.rows()
    }

    /// `GET /config`.
    pub fn config(&self) -> ConfigReport {
        lock(&self.config).clone()
    }
}

/// A listener's handle on the admin state: each connection reports its accept, decision,
/// upstream connect, handoff and close through it. Each is a few atomic increments, and
/// the accept, handoff and close one lock each of a sharded table.
#[derive(Clone)]
pub struct Reporter {
    admin: Arc<Admin>,
    listener: ListenerMetrics,
}

impl fmt::Debug for Reporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reporter({})", self.listener.name)
    }
}

impl Reporter {
    /// A connection accepted from `client`.
    pub fn opened(&self, conn: u64, client: SocketAddr) {
        let listener = Arc::clone(&self.listener.name);
        self.admin.connections.open(conn, listener, client);
    }

    /// A connection whose PROXY header named `client`, the address shown from now on.
    pub fn proxied(&self, conn: u64, client: SocketAddr) {
        self.admin.connections.proxied(conn, client);
    }

    /// A connection's decision line, written `took` after its accept.
    pub fn decided(&self, line: &events::Decision, took: Duration) {
        self.admin.metrics.decided(&self.listener, line, took);
    }

    /// A connect to a server, successful or not.
    pub fn upstream_connected(&self, took: Duration) {
        self.admin.metrics.upstream_connected(took);
    }

    /// A connection handed to the datapath on `path`. `live` reads its bytes so far, of
    /// which the first `head` sent up (a CONNECT request) are not counted, as in the close
    /// line.
    pub fn relaying(
        &self,
        conn: u64,
        route: Route,
        path: Path,
        live: Arc<dyn LiveBytes>,
        head: u64,
    ) {
        self.admin
            .connections
            .relaying(conn, route, path, live, head);
    }

    /// A connection's close line.
    pub fn closed(&self, close: &events::Close) {
        let bytes = Bytes {
            up: close.bytes_up,
            down: close.bytes_down,
        };
        let admin = &self.admin;
        admin.connections.close(close.conn, close.datapath, bytes);
        admin.metrics.closed(close.end, close.repeats_cut);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The config report holds no invariant a panic could break.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_and_reloads() {
        let admin = Admin::default();
        admin.config_loaded(FsPath::new("/etc/sockgate.toml"), "abc", false);
        let report = admin.config();
        assert_eq!(report.path, "/etc/sockgate.toml");
        assert_eq!(
            report.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(report.last_reload, None);
        admin.reload_failed("rule 2: fqdn: empty label");
        let report = admin.config();
        let reload = report.last_reload.unwrap();
        assert_eq!(reload.error.as_deref(), Some("rule 2: fqdn: empty label"));
        assert!(
            admin
                .metrics_text()
                .contains("sockgate_config_last_reload_successful 0")
        );
        admin.config_loaded(FsPath::new("/etc/sockgate.toml"), "abcd", true);
        let reload = admin.config().last_reload.unwrap();
        assert_eq!(reload.error, None);
        assert!(
            admin
                .metrics_text()
                .contains("sockgate_config_last_reload_successful 1")
        );
    }

    #[test]
    fn readiness_goes_from_starting_to_ready_to_draining() {
        let admin = Admin::default();
        assert_eq!(admin.readiness(), Readiness::Starting);
        admin.set_readiness(Readiness::Ready);
        assert_eq!(admin.readiness(), Readiness::Ready);
        admin.set_readiness(Readiness::Draining);
        assert_eq!(admin.readiness(), Readiness::Draining);
    }
}
