//! Finding and connecting to the server: static hosts first, then the system resolver.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tokio::net::TcpStream;

use crate::{config::ResolverConfig, names};

/// Why the server could not be reached. The upstream (or DNS) caused all of them.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("dns_error: {0}")]
    Dns(String),
    #[error("connect_timeout")]
    Timeout,
    #[error("connect_failed: {0}")]
    Connect(io::Error),
}

impl UpstreamError {
    /// The stable reason token for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            UpstreamError::Dns(_) => "dns_error",
            UpstreamError::Timeout => "connect_timeout",
            UpstreamError::Connect(_) => "connect_failed",
        }
    }
}

/// Name resolution with the config's static entries.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    /// Normalised name -> addresses.
    hosts: HashMap<String, Vec<IpAddr>>,
    timeout: Duration,
}

impl Resolver {
    pub fn new(config: &ResolverConfig) -> Self {
        let hosts = config
            .hosts
            .iter()
            .map(|(name, addrs)| {
                let name = names::normalize(name).unwrap_or_else(|_| name.to_ascii_lowercase());
                (name, addrs.clone())
            })
            .collect();
        Self {
            hosts,
            timeout: config.timeout,
        }
    }

    /// The addresses of `host` (a name or an IP literal) at `port`.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, UpstreamError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let name = names::normalize(host).map_err(|e| UpstreamError::Dns(e.to_string()))?;
        if let Some(addrs) = self.hosts.get(&name) {
            return Ok(addrs.iter().map(|ip| SocketAddr::new(*ip, port)).collect());
        }
        let lookup = tokio::net::lookup_host((name.as_str(), port));
        let addrs: Vec<SocketAddr> = tokio::time::timeout(self.timeout, lookup)
            .await
            .map_err(|_| UpstreamError::Dns(format!("{name}: timed out")))?
            .map_err(|e| UpstreamError::Dns(format!("{name}: {e}")))?
            .collect();
        if addrs.is_empty() {
            return Err(UpstreamError::Dns(format!("{name}: no addresses")));
        }
        Ok(addrs)
    }
}

/// Connects to the first address that answers, all within `timeout`.
pub async fn connect(addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream, UpstreamError> {
    let attempt = async {
        let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address");
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(err) => last = err,
            }
        }
        Err(UpstreamError::Connect(last))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| UpstreamError::Timeout)?
}
