//! Every metric of `GET /metrics`, in one registry of the `prometheus-client` crate. Names
//! and labels are an interface, documented in README ("Metrics").
//!
//! The connection path pays atomic increments only: per-listener handles are resolved
//! when the listener starts, histograms are atomic buckets, and the close kinds are fixed.
//! Relayed connections count through per-listener handles too; only a refusal looks up
//! `sockgate_connections_total` by its reason token (a read lock). What
//! changes with every byte (bytes, open connections, kernel map entries) is read at scrape
//! time instead of counted.

use std::{
    fmt,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet, prometheus_text,
    },
    metrics::{
        MetricType, TypedMetric,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
    },
    registry::Registry,
};

use super::connections::Connections;
use crate::{
    datapath::{End, Path},
    events::Decision,
    policy::Action,
};

/// The `Content-Type` of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Histogram bounds, in seconds: from a local connect (~50 us) to a handshake timeout.
const BOUNDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A histogram of durations in atomic buckets: prometheus-client's own takes a lock per
/// observation.
#[derive(Clone, Debug, Default)]
pub struct Timing(Arc<TimingCounts>);

#[derive(Debug, Default)]
struct TimingCounts {
    /// Observations per bucket of [`BOUNDS`], not cumulative; the last is above them all.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    /// Sum of all observations, in nanoseconds (584 years of them fit).
    sum_ns: AtomicU64,
}

impl Timing {
    /// Counts one duration: two atomic additions.
    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let bucket = BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BOUNDS.len());
        self.0.buckets[bucket].fetch_add(1, Relaxed);
        self.0.sum_ns.fetch_add(took.as_nanos() as u64, Relaxed);
    }
}

impl TypedMetric for Timing {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Timing {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        let counts: Vec<u64> = self.0.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let buckets: Vec<(f64, u64)> = BOUNDS.iter().copied().zip(counts.iter().copied()).collect();
        let count = counts.iter().sum();
        let sum = self.0.sum_ns.load(Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The label of the path that carried a connection; `none` when it was never relayed.
pub fn path_label(path: Option<Path>) -> &'static str {
    match path {
        Some(Path::Sockmap) => "sockmap",
        Some(Path::Splice) => "splice",
        Some(Path::Copy) => "copy",
        None => "none",
    }
}

/// Every way a connection ends, in `sockgate_closes_total`'s order.
const ENDS: [End; 5] = [End::Fin, End::Rst, End::Timeout, End::Error, End::Shutdown];

fn end_label(end: End) -> &'static str {
    match end {
        End::Fin => "fin",
        End::Rst => "rst",
        End::Timeout => "timeout",
        End::Error => "error",
        End::Shutdown => "shutdown",
    }
}

/// The stable token of a decision line's reason: what precedes any `:`, so a detail
/// (`client_hello_malformed: bad_hello`) never becomes a label value of its own.
pub fn reason_token(reason: &str) -> &str {
    reason.split(':').next().unwrap_or_default().trim()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    listener: Arc<str>,
    action: &'static str,
    /// `false` for a denial audit mode relayed anyway.
    enforced: &'static str,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabels {
    end: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    datapath: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpenLabels {
    listener: Arc<str>,
    state: &'static str,
    datapath: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    listener: Arc<str>,
    direction: &'static str,
    datapath: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: &'static str,
}

/// Reads the kernel maps' entry counts, by map name; the agent sets it once the eBPF
/// program is loaded, so admin needs no part of it.
pub type MapEntries = Box<dyn Fn() -> Vec<(&'static str, u64)> + Send + Sync>;

/// One listener's metric handles, resolved when it starts.
#[derive(Clone, Debug)]
pub struct ListenerMetrics {
    /// The listener's name, the `listener` label.
    pub name: Arc<str>,
    /// `sockgate_handshake_seconds` of this listener.
    handshake: Timing,
    /// `sockgate_connections_total` of the enforced allows by [`ALLOWS`]: the connection
    /// path's common case, counted without building labels.
    allowed: [Counter; ALLOWS.len()],
}

/// The reasons of an allow.
const ALLOWS: [&str; 2] = ["rule", "default"];

/// The registry and the handles the connection path counts through.
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    handshakes: Family<ListenerLabels, Timing>,
    upstream_connect: Timing,
    /// By [`ENDS`].
    closes: [Counter; ENDS.len()],
    repeats_cut: Counter,
    reload_ok: Gauge,
    reload_success: Gauge<f64, AtomicU64>,
    build: Family<BuildLabels, Gauge>,
    map_entries: Arc<OnceLock<MapEntries>>,
}

impl Metrics {
    /// Registers every metric; `connections` is read at scrape time.
    pub fn new(connections: Arc<Connections>) -> Self {
        let mut registry = Registry::default();
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "sockgate_connections",
            "Connections decided, by the policy's action, whether it was enforced, and the \
             decision line's reason token",
            decisions.clone(),
        );
        registry.register_collector(Box::new(Table(connections)));
        let handshakes = Family::<ListenerLabels, Timing>::default();
        registry.register(
            "sockgate_handshake_seconds",
            "Time from accept to the decision",
            handshakes.clone(),
        );
        let upstream_connect = Timing::default();
        registry.register(
            "sockgate_upstream_connect_seconds",
            "Time to connect to the server, successful or not (its name already resolved)",
            upstream_connect.clone(),
        );
        let ends = Family::<EndLabels, Counter>::default();
        registry.register(
            "sockgate_closes",
            "Connections closed, by how they ended",
            ends.clone(),
        );
        let closes = ENDS.map(|end| {
            ends.get_or_create_owned(&EndLabels {
                end: end_label(end),
            })
        });
        let reload_ok = Gauge::default();
        registry.register(
            "sockgate_config_last_reload_successful",
            "1 when the last config load or reload succeeded, else 0",
            reload_ok.clone(),
        );
        let reload_success = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "sockgate_config_last_reload_success_timestamp_seconds",
            "When the config was last loaded or reloaded successfully, in Unix seconds",
            reload_success.clone(),
        );
        let map_entries = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(Maps(Arc::clone(&map_entries))));
        let repeats_cut = Counter::default();
        registry.register(
            "sockgate_repeats_cut_bytes",
            "Bytes the kernel handed the verdict twice, which it cut (README, \"A kernel bug \
             the verdict works around\")",
            repeats_cut.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        registry.register(
            "sockgate_build_info",
            "1, labelled with the version and the datapath connections take",
            build.clone(),
        );
        Self {
            registry,
            decisions,
            handshakes,
            upstream_connect,
            closes,
            repeats_cut,
            reload_ok,
            reload_success,
            build,
            map_entries,
        }
    }

    /// The handles of listener `name`; the same ones for a listener restarted by a reload.
    pub fn listener(&self, name: &str) -> ListenerMetrics {
        let name: Arc<str> = Arc::from(name);
        let labels = ListenerLabels {
            listener: Arc::clone(&name),
        };
        let allowed = ALLOWS.map(|reason| {
            self.decisions.get_or_create_owned(&DecisionLabels {
                listener: Arc::clone(&name),
                action: Action::Allow.as_str(),
                enforced: "true",
                reason: reason.to_owned(),
            })
        });
        ListenerMetrics {
            handshake: self.handshakes.get_or_create_owned(&labels),
            allowed,
            name,
        }
    }

    /// A decision line: `sockgate_connections_total` and `sockgate_handshake_seconds`.
    pub fn decided(&self, listener: &ListenerMetrics, line: &Decision, took: Duration) {
        listener.handshake.observe(took);
        if line.action == Action::Allow
            && line.enforced
            && let Some(i) = ALLOWS.iter().position(|r| *r == line.reason)
        {
            listener.allowed[i].inc();
            return;
        }
        let labels = DecisionLabels {
            listener: Arc::clone(&listener.name),
            action: line.action.as_str(),
            enforced: if line.enforced { "true" } else { "false" },
            reason: reason_token(&line.reason).to_owned(),
        };
        self.decisions.get_or_create(&labels).inc();
    }

    /// A connect to a server, successful or not.
    pub fn upstream_connected(&self, took: Duration) {
        self.upstream_connect.observe(took);
    }

    /// A close line: `sockgate_closes_total` and `sockgate_repeats_cut_bytes_total`.
    pub fn closed(&self, end: End, repeats_cut: u64) {
        let i = ENDS.iter().position(|e| *e == end).unwrap_or_default();
        self.closes[i].inc();
        if repeats_cut > 0 {
            self.repeats_cut.inc_by(repeats_cut);
        }
    }

    /// The result of a config load or reload, at `at`.
    pub fn reloaded(&self, ok: bool, at: SystemTime) {
        self.reload_ok.set(ok as i64);
        if ok {
            let secs = at.duration_since(UNIX_EPOCH).unwrap_or_default();
            self.reload_success.set(secs.as_secs_f64());
        }
    }

    /// `sockgate_build_info`, once the datapath is known.
    pub fn built(&self, datapath: Path) {
        let labels = BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
            datapath: path_label(Some(datapath)),
        };
        self.build.get_or_create(&labels).set(1);
    }

    /// Where `sockgate_kernel_map_entries` comes from; only the first call counts.
    pub fn map_entries(&self, read: MapEntries) {
        let _ = self.map_entries.set(read);
    }

    /// The text exposition format, version 0.0.4.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String fails only when a value's Display does, and none here does.
        let _ = prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

/// `sockgate_connections_open` and `sockgate_bytes_total`, from the connection table.
struct Table(Arc<Connections>);

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Table")
    }
}

impl Collector for Table {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let tally = self.0.tally();
        let mut open = encoder.encode_descriptor(
            "sockgate_connections_open",
            "Connections open now, by state (handshake or relaying) and the path relaying them.",
            None,
            MetricType::Gauge,
        )?;
        for ((listener, state, path), n) in &tally.open {
            let labels = OpenLabels {
                listener: Arc::clone(listener),
                state: state.as_str(),
                datapath: path_label(*path),
            };
            ConstGauge::new(*n as i64).encode(open.encode_family(&labels)?)?;
        }
        let mut bytes = encoder.encode_descriptor(
            "sockgate_bytes",
            "Bytes relayed, both closed connections' and open ones' so far.",
            None,
            MetricType::Counter,
        )?;
        for ((listener, path), counted) in &tally.bytes {
            for (direction, n) in [("up", counted.up), ("down", counted.down)] {
                let labels = BytesLabels {
                    listener: Arc::clone(listener),
                    direction,
                    datapath: path_label(*path),
                };
                ConstCounter::new(n).encode(bytes.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// `sockgate_kernel_map_entries`, from the agent's reader.
struct Maps(Arc<OnceLock<MapEntries>>);

impl fmt::Debug for Maps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Maps")
    }
}

impl Collector for Maps {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut gauge = encoder.encode_descriptor(
            "sockgate_kernel_map_entries",
            "Entries of the eBPF program's maps; absent without the program.",
            None,
            MetricType::Gauge,
        )?;
        let Some(read) = self.0.get() else {
            return Ok(());
        };
        for (map, n) in read() {
            ConstGauge::new(n as i64).encode(gauge.encode_family(&MapLabels { map })?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
