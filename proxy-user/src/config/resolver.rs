//! `[resolver]`: static host entries, and the name servers for everything else.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::duration;
use crate::names::{self, NameError};

/// `[resolver]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverConfig {
    /// Static entries, looked up first: `hosts = { "db.internal" = ["10.0.0.5"] }`.
    /// Keys are names as written; normalise them with [`crate::names::normalize`].
    #[serde(default)]
    pub hosts: BTreeMap<String, Vec<IpAddr>>,
    /// Name servers (`"1.1.1.1"` or `"[2606:4700::1111]:53"`); absent means the system's
    /// (/etc/resolv.conf).
    pub nameservers: Option<Vec<NameServer>>,
    /// How long one resolution may take.
    #[serde(
        default = "default_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub timeout: Duration,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self {
            hosts: BTreeMap::new(),
            nameservers: None,
            timeout: default_timeout(),
        }
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

/// A name server address; the port defaults to 53.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct NameServer(pub SocketAddr);

impl TryFrom<String> for NameServer {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl FromStr for NameServer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(NameServer(addr));
        }
        s.parse::<IpAddr>()
            .map(|ip| NameServer(SocketAddr::new(ip, 53)))
            .map_err(|_| {
                format!("bad name server `{s}`: expected an IP address, optionally with a port")
            })
    }
}

/// An invalid `[resolver]` setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolverError {
    /// A `hosts` key that is not a valid name.
    #[error("resolver: hosts entry `{name}`: invalid name: {why}")]
    BadHost {
        /// The key as written.
        name: String,
        /// Why it is refused.
        why: NameError,
    },
    /// A `hosts` entry without addresses.
    #[error("resolver: hosts entry `{0}`: no addresses")]
    NoAddresses(String),
    /// Two `hosts` keys that normalise to the same name.
    #[error("resolver: hosts entry `{0}`: same name as `{1}`")]
    DuplicateHost(String, String),
    /// `nameservers = []`.
    #[error("resolver: field `nameservers`: empty list (leave the field out to use the system's)")]
    NoNameServers,
    /// `timeout = "0"`.
    #[error("resolver: field `timeout`: must be more than zero")]
    ZeroTimeout,
}

impl ResolverConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ResolverError> {
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for (name, addrs) in &self.hosts {
            let normal = names::normalize(name).map_err(|why| ResolverError::BadHost {
                name: name.clone(),
                why,
            })?;
            if addrs.is_empty() {
                return Err(ResolverError::NoAddresses(name.clone()));
            }
            if let Some(other) = seen.insert(normal, name) {
                return Err(ResolverError::DuplicateHost(name.clone(), other.to_owned()));
            }
        }
        if self.nameservers.as_ref().is_some_and(Vec::is_empty) {
            return Err(ResolverError::NoNameServers);
        }
        if self.timeout.is_zero() {
            return Err(ResolverError::ZeroTimeout);
        }
        Ok(())
    }
}
