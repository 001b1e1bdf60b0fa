//! `[source]`: the config comes from an HTTPS URL instead of this file, which then holds
//! `[source]` alone. The agent polls it (see `crate::source`); this is only the schema.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::duration;

/// `[source]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Where the config is, `https://...`.
    pub url: String,
    /// How often it is polled.
    #[serde(
        default = "default_interval",
        deserialize_with = "duration::deserialize"
    )]
    pub interval: Duration,
    /// PEM roots to verify the server with, instead of the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Where the last good text is kept, so a restart while the URL is down starts with it.
    #[serde(default)]
    pub cache: Option<PathBuf>,
}

fn default_interval() -> Duration {
    Duration::from_secs(60)
}

/// Why `[source]` is invalid.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// Not an `https://host[:port]/path` URL.
    #[error("[source] url `{0}`: expected https://host[:port]/path")]
    Url(String),
    /// An interval of zero would poll without pause.
    #[error("[source] interval must be at least 1s")]
    Interval,
    /// The file holds more than `[source]`.
    #[error("with [source], the config comes from its url: this file holds [source] alone")]
    NotAlone,
    /// The fetched config names a source or includes files of its own.
    #[error("a config fetched from [source] url cannot have [source] or include")]
    Nested,
}

/// An `https://` URL, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsUrl {
    /// The host name (or address) to connect to and verify.
    pub host: String,
    /// The port, 443 unless given.
    pub port: u16,
    /// The path and query, from `/`.
    pub path: String,
}

impl SourceConfig {
    /// Checks the URL and the interval.
    pub fn validate(&self) -> Result<(), SourceError> {
        self.https_url()?;
        if self.interval < Duration::from_secs(1) {
            return Err(SourceError::Interval);
        }
        Ok(())
    }

    /// The URL, split.
    pub fn https_url(&self) -> Result<HttpsUrl, SourceError> {
        let bad = || SourceError::Url(self.url.clone());
        let rest = self.url.strip_prefix("https://").ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse().map_err(|_| bad())?)
            }
            _ => (authority, 443),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || authority.contains('@') {
            return Err(bad());
        }
        Ok(HttpsUrl {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(url: &str) -> SourceConfig {
        SourceConfig {
            url: url.into(),
            interval: default_interval(),
            ca_file: None,
            cache: None,
        }
    }

    #[test]
    fn urls() {
        let u = source("https://config.example/a/sockgate.toml?x=1")
            .https_url()
            .unwrap();
        assert_eq!(
            u,
            HttpsUrl {
                host: "config.example".into(),
                port: 443,
                path: "/a/sockgate.toml?x=1".into()
            }
        );
        let u = source("https://127.0.0.1:8443").https_url().unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 8443, "/")
        );
        let u = source("https://[::1]:8443/x").https_url().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8443));
        for bad in [
            "http://x/",
            "https://",
            "https://x:99999/",
            "https://u@x/",
            "ftp://x",
        ] {
            assert!(source(bad).validate().is_err(), "{bad}");
        }
    }
}
