//! `[source] url`: the config fetched over HTTPS, polled with `If-None-Match`, and cached
//! on disk so a restart while the URL is down starts from the last good text.
//!
//! This fetches, remembers and caches; the agent validates and swaps, as for a SIGHUP.
//! TLS is rustls, with `ca_file`'s roots or the system's.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{Config, HttpsUrl, SourceConfig, SourceError};
use crate::snapshot::{Snapshot, SnapshotError};

/// The largest config a URL may serve (a million rules take about 60 MiB).
const MAX_BODY: usize = 256 << 20;
/// How long one fetch may take, connect to last byte. The agent's signals wait for it.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a fetch failed. The server or the network caused each of them, except `Roots`.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// `ca_file` cannot be read, or holds no certificate.
    #[error("ca_file {path}: {message}")]
    Roots {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Connecting, TLS or HTTP failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The HTTP exchange failed.
    #[error("{0}")]
    Http(#[from] hyper::Error),
    /// An answer other than 200 or 304.
    #[error("HTTP {0}")]
    Status(StatusCode),
    /// The body is too large or not UTF-8.
    #[error("body: {0}")]
    Body(String),
    /// No answer within the fetch timeout.
    #[error("no answer within {FETCH_TIMEOUT:?}")]
    Timeout,
}

/// Why fetched text is not a config sockgate runs.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// It does not load.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// It names a source or includes files.
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// What a poll found.
pub enum Fetched {
    /// 304, or the same body as last time: nothing to reload.
    Unchanged,
    /// A new body.
    New(String),
}

/// A polled URL, with what its last answer was.
pub struct Source {
    settings: SourceConfig,
    url: HttpsUrl,
    tls: TlsConnector,
    /// The last answer's `ETag`, sent back as `If-None-Match`.
    etag: Option<String>,
    /// The last body's SHA-256, for servers without ETags.
    last: Option<[u8; 32]>,
    ticks: tokio::time::Interval,
}

impl Source {
    /// Reads the roots; the URL was checked with the config.
    pub fn new(settings: &SourceConfig) -> Result<Source, FetchError> {
        let url = settings
            .https_url()
            .expect("[source] url is validated with the config");
        let mut roots = rustls::RootCertStore::empty();
        match &settings.ca_file {
            Some(path) => {
                let bad = |message: String| FetchError::Roots {
                    path: path.display().to_string(),
                    message,
                };
                let certs: Vec<_> = CertificateDer::pem_file_iter(path)
                    .map_err(|e| bad(e.to_string()))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| bad(e.to_string()))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(bad("no certificate".into()));
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for err in &found.errors {
                    log::warn!("[source] system roots: {err}");
                }
                roots.add_parsable_certificates(found.certs);
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| FetchError::Io(std::io::Error::other(e)))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // The first poll after one interval: the agent fetches once at start itself.
        let start = tokio::time::Instant::now() + settings.interval;
        let mut ticks = tokio::time::interval_at(start, settings.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Source {
            settings: settings.clone(),
            url,
            tls: TlsConnector::from(Arc::new(tls)),
            etag: None,
            last: None,
            ticks,
        })
    }

    /// The URL, as logs and the admin endpoint name it.
    pub fn url(&self) -> &str {
        &self.settings.url
    }

    /// Fetches the URL, conditionally after the first answer.
    pub async fn fetch(&mut self) -> Result<Fetched, FetchError> {
        let (status, etag, body) = tokio::time::timeout(FETCH_TIMEOUT, self.get())
            .await
            .map_err(|_| FetchError::Timeout)??;
        if status == StatusCode::NOT_MODIFIED {
            return Ok(Fetched::Unchanged);
        }
        if status != StatusCode::OK {
            return Err(FetchError::Status(status));
        }
        let text = String::from_utf8(body.to_vec()).map_err(|e| FetchError::Body(e.to_string()))?;
        // Remembered whether or not the text is valid: a bad body is refused once, not at
        // every poll, and its fix is a new body.
        self.etag = etag;
        let hash: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        if self.last.replace(hash) == Some(hash) {
            return Ok(Fetched::Unchanged);
        }
        Ok(Fetched::New(text))
    }

    async fn get(&self) -> Result<(StatusCode, Option<String>, Bytes), FetchError> {
        let tcp = TcpStream::connect((self.url.host.as_str(), self.url.port)).await?;
        let name = ServerName::try_from(self.url.host.clone())
            .map_err(|e| FetchError::Io(std::io::Error::other(e)))?;
        let tls = self.tls.connect(name, tcp).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let host = if self.url.port == 443 {
            self.url.host.clone()
        } else {
            format!("{}:{}", self.url.host, self.url.port)
        };
        let mut request = Request::get(&self.url.path)
            .header(header::HOST, host)
            .header(
                header::USER_AGENT,
                concat!("sockgate/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(etag) = &self.etag {
            request = request.header(header::IF_NONE_MATCH, etag);
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Io(std::io::Error::other(e)))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let etag = response
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| FetchError::Body(e.to_string()))?
            .to_bytes();
        Ok((status, etag, body))
    }

    /// Loads fetched (or cached) text as the running config would be.
    pub fn load(&self, text: &str) -> Result<(Snapshot, Config), LoadError> {
        let (snapshot, config) = Snapshot::parse(text, self.url())?;
        if config.source.is_some() || !config.include.is_empty() {
            return Err(SourceError::Nested.into());
        }
        Ok((snapshot, config))
    }

    /// Keeps `text`, which loaded, as the last good config. A failure is logged: the
    /// running config is not affected, only a later restart while the URL is down.
    pub fn save(&self, text: &str) {
        let Some(cache) = &self.settings.cache else {
            return;
        };
        // Write aside, then rename: a crash never leaves half a file to start from.
        let tmp = cache.with_extension("tmp");
        if let Err(err) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, cache)) {
            log::warn!("[source] cache {}: {err}", cache.display());
        }
    }

    /// The cached text, if there is a cache and it can be read.
    pub fn cached(&self) -> Option<(&Path, String)> {
        let cache = self.settings.cache.as_deref()?;
        match std::fs::read_to_string(cache) {
            Ok(text) => Some((cache, text)),
            Err(err) => {
                log::warn!("[source] cache {}: {err}", cache.display());
                None
            }
        }
    }

    /// Marks `text` as the body already running, so an unchanged answer is no reload.
    pub fn running(&mut self, text: &str) {
        self.last = Some(Sha256::digest(text.as_bytes()).into());
    }
}

/// Waits for the next poll of `source`, or forever without one.
pub async fn due(source: &mut Option<Source>) {
    match source {
        Some(s) => {
            s.ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}
