//! What a session is given by the agent.

use std::sync::Arc;

use tokio::sync::watch;

use crate::{
    admin::Reporter,
    config::{ListenerKind, ProxyVersion},
    datapath::Datapath,
    pulse::Pulse,
    snapshot::Snapshot,
};

/// One listener's identity and mode.
#[derive(Debug)]
pub struct ListenerInfo {
    /// The listener's unique name, logged in every decision line.
    pub name: String,
    /// Its mode and mode-specific settings.
    pub kind: ListenerKind,
    /// The PROXY protocol header its clients' streams start with, if any.
    pub proxy_protocol: Option<ProxyVersion>,
    /// Whether a PROXY v2 header goes to each upstream before the client's bytes.
    pub send_proxy_protocol: bool,
    /// What its connections report to the admin endpoint; `None` without `[admin]`.
    pub admin: Option<Reporter>,
}

/// Everything a session needs from the agent.
pub struct Context {
    /// Adopts sockets and splices pairs.
    pub datapath: Arc<Datapath>,
    /// The config snapshot taken at accept: a reload never changes a connection half-way,
    /// but for `idle_timeout` (see [`crate::pulse`]).
    pub live: Arc<Snapshot>,
    /// The listener that accepted the connection.
    pub listener: Arc<ListenerInfo>,
    /// Tells handshakes to stop, and relayed connections when to check idleness and when
    /// to end.
    pub pulse: watch::Receiver<Pulse>,
}
