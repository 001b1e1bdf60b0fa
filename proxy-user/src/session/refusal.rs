//! Why a connection was not relayed, and who caused it. `Display` is the stable reason
//! token of the decision line (`"reason":"upstream_closed"`).

use std::io;

use crate::{connect_request::Reject, policy::Reason, tls::Malformed, upstream::UpstreamError};

/// Why a connection was not relayed.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The policy denied the name, or the lack of one.
    #[error("{0}")]
    Policy(Reason),
    /// The client broke its protocol, went away, or asked for what sockgate refuses.
    #[error(transparent)]
    Client(#[from] ClientFault),
    /// The server could not be reached, or did not answer as a TLS server.
    #[error(transparent)]
    Upstream(#[from] UpstreamFault),
    /// sockgate ended it: a limit, a shutdown, or a lookup on this host that failed.
    #[error(transparent)]
    Sockgate(#[from] Ending),
}

/// What the client did.
#[derive(Debug, thiserror::Error)]
pub enum ClientFault {
    /// EOF or an error before the handshake was through.
    #[error("client_closed")]
    Closed,
    /// A ClientHello that does not parse.
    #[error("client_hello_malformed: {0}")]
    Malformed(Malformed),
    /// A ClientHello over `max_client_hello`.
    #[error("client_hello_too_large")]
    TooLarge,
    /// A CONNECT request sockgate does not serve.
    #[error("{0}")]
    BadRequest(Reject),
    /// An SNI-routing connection without a name to route by.
    #[error("no_sni")]
    NoSni,
    /// The SNI names another server than the CONNECT host, or than the original
    /// destination resolves to.
    #[error("sni_mismatch")]
    SniMismatch,
    /// The ClientHello after a HelloRetryRequest names another server.
    #[error("hrr_sni_changed")]
    HrrSniChanged,
    /// On a `proxy_protocol` listener: no PROXY header, a malformed or oversized one, or
    /// one slower than `handshake_timeout`.
    #[error("proxy_protocol")]
    ProxyProtocol,
}

/// What the server (or its DNS) did.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamFault {
    /// DNS failed, or the connect failed or timed out.
    #[error("{}", .0.reason())]
    Unreachable(UpstreamError),
    /// EOF or an error before the handshake was through.
    #[error("upstream_closed")]
    Closed,
    /// The reply to a ClientHello is not TLS.
    #[error("upstream_not_tls")]
    NotTls,
    /// The reply starts like TLS but is not a valid ServerHello.
    #[error("server_hello_malformed: {0}")]
    Malformed(Malformed),
    /// The reply claims a ServerHello larger than TLS allows.
    #[error("server_hello_too_large")]
    TooLarge,
    /// A second HelloRetryRequest, which RFC 8446 4.1.4 forbids.
    #[error("hello_retry_repeated")]
    HelloRetryRepeated,
}

/// What sockgate itself ended.
#[derive(Debug, thiserror::Error)]
pub enum Ending {
    /// The handshake took longer than `handshake_timeout`.
    #[error("timeout")]
    Timeout,
    /// sockgate is shutting down.
    #[error("shutdown")]
    Shutdown,
    /// `max_connections` are open already.
    #[error("max_connections")]
    OverLimit,
    /// A PROXY header without a client (a balancer's health check): accepted, then closed.
    #[error("proxy_local")]
    ProxyLocal,
    /// The transparent listener could not learn the original destination.
    #[error("original_dst: {0}")]
    OriginalDst(io::Error),
}

impl Refusal {
    /// Whether the client is refused for the name it asked for, which a TLS alert can say.
    pub fn is_denial(&self) -> bool {
        matches!(
            self,
            Refusal::Policy(_) | Refusal::Client(ClientFault::NoSni | ClientFault::SniMismatch)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::NameError;

    /// The tokens are the decision line's interface; these spellings are documented.
    #[test]
    fn reason_tokens() {
        let cases: [(Refusal, &str); 10] = [
            (Refusal::Policy(Reason::Default), "default"),
            (
                Refusal::Policy(Reason::InvalidName(NameError::IpLiteral)),
                "invalid_name: ip_literal",
            ),
            (ClientFault::Closed.into(), "client_closed"),
            (
                UpstreamFault::Unreachable(UpstreamError::Timeout).into(),
                "connect_timeout",
            ),
            (UpstreamFault::TooLarge.into(), "server_hello_too_large"),
            (
                UpstreamFault::Malformed(Malformed::BadHello).into(),
                "server_hello_malformed: bad_hello",
            ),
            (
                UpstreamFault::HelloRetryRepeated.into(),
                "hello_retry_repeated",
            ),
            (Ending::OverLimit.into(), "max_connections"),
            (ClientFault::ProxyProtocol.into(), "proxy_protocol"),
            (Ending::ProxyLocal.into(), "proxy_local"),
        ];
        for (refusal, token) in cases {
            assert_eq!(refusal.to_string(), token);
        }
    }
}
