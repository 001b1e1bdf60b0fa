//! How a refused client is told: a TCP reset, a TLS alert, or an HTTP status line.

use tokio::io::AsyncWriteExt as _;

use super::refusal::{ClientFault, Ending, Refusal, UpstreamFault};
use crate::{
    config::DenyWith, datapath::End, datapath::Endpoint, policy::Reason, sockopt,
    upstream::UpstreamError,
};

/// TLS alert descriptions (RFC 8446 6).
pub const ACCESS_DENIED: u8 = 49;
pub const UNRECOGNIZED_NAME: u8 = 112;

/// What the client gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// TCP RST.
    Reset,
    /// A fatal TLS alert, then FIN.
    Alert(u8),
    /// An HTTP status with a one-line reason, then FIN (CONNECT before the tunnel opened).
    Http(u16, &'static str),
    /// FIN alone: a balancer's health check, which did nothing wrong.
    Close,
}

/// What the client still understands when it is refused, which depends on how far the
/// handshake got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// A CONNECT client waiting for the answer to its request: it reads HTTP.
    Http,
    /// The client's own protocol runs on the connection; `tls` if it sent a ClientHello.
    Stream { tls: bool },
}

/// The signal for `refusal` on `channel`. `named` says whether the connection had a name
/// when it was refused; `deny_with` is the policy's choice for denied TLS connections.
pub fn signal_for(refusal: &Refusal, channel: Channel, named: bool, deny_with: DenyWith) -> Signal {
    match (channel, refusal) {
        (_, Refusal::Sockgate(Ending::ProxyLocal)) => Signal::Close,
        (Channel::Http, Refusal::Policy(_)) => Signal::Http(403, "Forbidden"),
        (Channel::Http, Refusal::Client(ClientFault::BadRequest(reject))) => {
            let (status, text) = reject.status();
            Signal::Http(status, text)
        }
        (Channel::Http, Refusal::Upstream(UpstreamFault::Unreachable(UpstreamError::Timeout))) => {
            Signal::Http(504, "Gateway Timeout")
        }
        (Channel::Http, Refusal::Upstream(_)) => Signal::Http(502, "Bad Gateway"),
        (Channel::Stream { tls: true }, _)
            if refusal.is_denial() && deny_with == DenyWith::Alert =>
        {
            let fitting = named && !matches!(refusal, Refusal::Policy(Reason::InvalidName(_)));
            Signal::Alert(if fitting {
                ACCESS_DENIED
            } else {
                UNRECOGNIZED_NAME
            })
        }
        _ => Signal::Reset,
    }
}

/// The close line's `end` for a refusal told with `signal`.
pub fn end_of(refusal: &Refusal, signal: Signal) -> End {
    match refusal {
        Refusal::Sockgate(Ending::Timeout) => End::Timeout,
        Refusal::Sockgate(Ending::Shutdown) => End::Shutdown,
        _ if signal == Signal::Reset => End::Rst,
        _ => End::Fin,
    }
}

/// Sends `signal` and closes the client socket; returns the bytes written to it in all.
pub async fn refuse(mut client: Endpoint, signal: Signal, reason: &str) -> u64 {
    match signal {
        Signal::Reset | Signal::Close => {}
        Signal::Alert(description) => {
            // level 2 = fatal; record version 0x0303 as TLS 1.2 and 1.3 both send.
            let alert = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, description];
            let _ = client.write_all(&alert).await;
        }
        Signal::Http(status, text) => {
            let body = format!("sockgate: {reason}\n");
            let response = format!(
                "HTTP/1.1 {status} {text}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = client.write_all(response.as_bytes()).await;
        }
    }
    if signal == Signal::Reset {
        let _ = sockopt::set_linger_zero(client.stream());
    } else {
        let _ = client.stream_mut().shutdown().await;
    }
    client.bytes_written()
}
