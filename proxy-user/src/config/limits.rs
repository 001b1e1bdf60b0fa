//! `[limits]`: timeouts and caps.

use std::time::Duration;

use serde::Deserialize;

use super::duration;
use crate::tls::DEFAULT_MAX_CLIENT_HELLO;

/// `[limits]`. Durations are strings such as `"10s"` (see [`super::duration`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// How long to wait for the client's first bytes before deciding on what is known (the
    /// CONNECT host or the destination), for server-speaks-first protocols. A TLS client
    /// sends its ClientHello at once, so this only has to cover one slow round trip.
    #[serde(deserialize_with = "duration::deserialize")]
    pub client_first_timeout: Duration,
    /// How long the whole first flight (ClientHello, server reply, a second ClientHello
    /// after a HelloRetryRequest) may take.
    #[serde(deserialize_with = "duration::deserialize")]
    pub handshake_timeout: Duration,
    /// How long connecting to the server may take.
    #[serde(deserialize_with = "duration::deserialize")]
    pub connect_timeout: Duration,
    /// Close a relayed connection after this long without traffic; `"0"` turns it off. A
    /// reload's value applies to open connections too.
    #[serde(deserialize_with = "duration::deserialize")]
    pub idle_timeout: Duration,
    /// On SIGTERM, how long open connections may drain before they are closed.
    #[serde(deserialize_with = "duration::deserialize")]
    pub shutdown_grace: Duration,
    /// Connections open at once; more are refused.
    pub max_connections: u32,
    /// The largest ClientHello in bytes (all its records); a larger one is refused.
    pub max_client_hello: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            client_first_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(3600),
            shutdown_grace: Duration::from_secs(30),
            max_connections: 10_000,
            max_client_hello: DEFAULT_MAX_CLIENT_HELLO,
        }
    }
}

/// The smallest `max_client_hello`: smaller would refuse ordinary clients.
pub const MIN_CLIENT_HELLO: usize = 512;
/// The largest `max_client_hello`: a ClientHello is at most 2^24 bytes, but anything near
/// a megabyte is an attack on memory.
pub const MAX_CLIENT_HELLO: usize = 1 << 20;

/// An invalid `[limits]` field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("limits: field `{field}`: {problem}")]
pub struct LimitError {
    /// The field.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl Limits {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), LimitError> {
        let fail = |field, problem| Err(LimitError { field, problem });
        for (field, d) in [
            ("client_first_timeout", self.client_first_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if d.is_zero() {
                return fail(field, "must be more than zero");
            }
        }
        if self.client_first_timeout > self.handshake_timeout {
            return fail("client_first_timeout", "must not exceed handshake_timeout");
        }
        if self.max_connections == 0 {
            return fail("max_connections", "must be at least 1");
        }
        if !(MIN_CLIENT_HELLO..=MAX_CLIENT_HELLO).contains(&self.max_client_hello) {
            return fail("max_client_hello", "must be between 512 and 1048576 bytes");
        }
        Ok(())
    }
}
