//! What a session is given by the agent.

use std::sync::Arc;

use tokio::sync::watch;

use crate::{
    config::{Limits, ListenerKind},
    datapath::Datapath,
    policy::Policy,
    pulse::Pulse,
    upstream::Resolver,
};

/// The config a connection runs under: a snapshot, so a reload never changes a connection
/// half-way. The one exception is `idle_timeout`, which paces the agent's single idle tick
/// ([`crate::pulse`]) and so applies to every relayed connection.
pub struct Live {
    /// The compiled `[policy]`.
    pub policy: Policy,
    /// `[limits]`: timeouts and caps.
    pub limits: Limits,
    /// `[resolver]`: hosts overrides, then the system resolver.
    pub resolver: Resolver,
}

/// One listener's identity and mode.
#[derive(Debug)]
pub struct ListenerInfo {
    /// The listener's unique name, logged in every decision line.
    pub name: String,
    /// Its mode and mode-specific settings.
    pub kind: ListenerKind,
}

/// Everything a session needs from the agent.
pub struct Context {
    /// Adopts sockets and splices pairs.
    pub datapath: Arc<Datapath>,
    /// The config snapshot taken at accept.
    pub live: Arc<Live>,
    /// The listener that accepted the connection.
    pub listener: Arc<ListenerInfo>,
    /// Tells handshakes to stop, and relayed connections when to check idleness and when
    /// to end.
    pub pulse: watch::Receiver<Pulse>,
}
