//! `[[listener]]`: where sockgate accepts connections, and how it learns the destination.

use std::fmt;
use std::net::SocketAddr;

use serde::Deserialize;

pub use crate::proxy_header::Version as ProxyVersion;

/// How a listener learns where a connection is going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerMode {
    /// Redirected traffic (nftables REDIRECT or TPROXY): the original destination.
    Transparent,
    /// An explicit proxy: the client sends `CONNECT host:port`.
    Connect,
    /// SNI routing: the SNI names the server, the port is fixed.
    Sni,
}

impl fmt::Display for ListenerMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ListenerMode::Transparent => "transparent",
            ListenerMode::Connect => "connect",
            ListenerMode::Sni => "sni",
        })
    }
}

/// One `[[listener]]`, as written. Use [`ListenerConfig::kind`] after validation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// A unique name, used in logs and decision records.
    pub name: String,
    /// How the destination is learnt.
    pub mode: ListenerMode,
    /// The address to listen on (IPv4 or IPv6, with port).
    pub address: SocketAddr,
    /// transparent only: check that the SNI resolves to the original destination, so a
    /// client cannot reach a denied server by naming an allowed one (default true).
    pub verify_destination: Option<bool>,
    /// connect only: allow a TLS SNI that differs from the CONNECT host (default false).
    pub allow_sni_mismatch: Option<bool>,
    /// sni only, required: the server port to connect to.
    pub upstream_port: Option<u16>,
    /// transparent only: the traffic comes from an nftables TPROXY rule rather than
    /// REDIRECT, so the socket needs IP_TRANSPARENT (default false).
    pub tproxy: Option<bool>,
    /// Any mode: a PROXY protocol header of this version comes before anything else, from
    /// a load balancer; the client address it carries is the one decided on and logged
    /// (default none). Only for listeners that clients cannot reach directly.
    pub proxy_protocol: Option<ProxyVersion>,
    /// Any mode: write a PROXY protocol header to the upstream before the client's bytes,
    /// so the server sees the client's address (default none; only "v2").
    pub send_proxy_protocol: Option<SendProxyProtocol>,
}

/// The PROXY protocol versions sockgate sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SendProxyProtocol {
    /// The binary header; v1 is not sent.
    V2,
}

/// A validated listener's mode with its mode-specific settings, defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// See [`ListenerMode::Transparent`].
    Transparent {
        /// See [`ListenerConfig::verify_destination`].
        verify_destination: bool,
        /// See [`ListenerConfig::tproxy`].
        tproxy: bool,
    },
    /// See [`ListenerMode::Connect`].
    Connect {
        /// See [`ListenerConfig::allow_sni_mismatch`].
        allow_sni_mismatch: bool,
    },
    /// See [`ListenerMode::Sni`].
    Sni {
        /// See [`ListenerConfig::upstream_port`].
        upstream_port: u16,
    },
}

impl ListenerConfig {
    /// The mode and its settings. On an unvalidated config a missing `upstream_port` reads
    /// as 443.
    pub fn kind(&self) -> ListenerKind {
        match self.mode {
            ListenerMode::Transparent => ListenerKind::Transparent {
                verify_destination: self.verify_destination.unwrap_or(true),
                tproxy: self.tproxy.unwrap_or(false),
            },
            ListenerMode::Connect => ListenerKind::Connect {
                allow_sni_mismatch: self.allow_sni_mismatch.unwrap_or(false),
            },
            ListenerMode::Sni => ListenerKind::Sni {
                upstream_port: self.upstream_port.unwrap_or(443),
            },
        }
    }
}

/// An invalid listener: which one, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("listener {listener}: field `{field}`: {problem}")]
pub struct ListenerError {
    /// `#N ("name")`, N counting from 1.
    pub listener: String,
    /// The config field.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: ListenerProblem,
}

/// What is wrong with a listener field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenerProblem {
    /// The name is the empty string.
    #[error("empty name")]
    EmptyName,
    /// Another listener already has this name.
    #[error("duplicate name, already used by listener #{}", .0 + 1)]
    DuplicateName(usize),
    /// Another listener already listens on this address.
    #[error("address already used by listener `{0}`")]
    DuplicateAddress(String),
    /// Port 0 (an ephemeral port) where a fixed one is needed.
    #[error("port 0")]
    ZeroPort,
    /// A field that only applies to another mode.
    #[error("only applies to mode = \"{applies_to}\", not \"{mode}\"")]
    WrongMode {
        /// The mode the field belongs to.
        applies_to: ListenerMode,
        /// The listener's mode.
        mode: ListenerMode,
    },
    /// A field the mode requires is absent.
    #[error("required for mode = \"{0}\"")]
    Missing(ListenerMode),
}

/// Checks every listener, and that names and addresses are unique.
pub fn validate(listeners: &[ListenerConfig]) -> Result<(), ListenerError> {
    for (i, l) in listeners.iter().enumerate() {
        let fail = |field, problem| {
            let listener = format!("#{} ({:?})", i + 1, l.name);
            Err(ListenerError {
                listener,
                field,
                problem,
            })
        };
        if l.name.is_empty() {
            return fail("name", ListenerProblem::EmptyName);
        }
        if let Some(first) = listeners[..i].iter().position(|o| o.name == l.name) {
            return fail("name", ListenerProblem::DuplicateName(first));
        }
        if let Some(other) = listeners[..i].iter().find(|o| o.address == l.address) {
            return fail(
                "address",
                ListenerProblem::DuplicateAddress(other.name.clone()),
            );
        }
        if l.address.port() == 0 {
            return fail("address", ListenerProblem::ZeroPort);
        }
        let mode_fields: [(&str, bool, ListenerMode); 4] = [
            (
                "verify_destination",
                l.verify_destination.is_some(),
                ListenerMode::Transparent,
            ),
            ("tproxy", l.tproxy.is_some(), ListenerMode::Transparent),
            (
                "allow_sni_mismatch",
                l.allow_sni_mismatch.is_some(),
                ListenerMode::Connect,
            ),
            (
                "upstream_port",
                l.upstream_port.is_some(),
                ListenerMode::Sni,
            ),
        ];
        for (field, present, applies_to) in mode_fields {
            if present && applies_to != l.mode {
                return fail(
                    field,
                    ListenerProblem::WrongMode {
                        applies_to,
                        mode: l.mode,
                    },
                );
            }
        }
        match (l.mode, l.upstream_port) {
            (ListenerMode::Sni, None) => {
                return fail("upstream_port", ListenerProblem::Missing(l.mode));
            }
            (_, Some(0)) => return fail("upstream_port", ListenerProblem::ZeroPort),
            _ => {}
        }
    }
    Ok(())
}
