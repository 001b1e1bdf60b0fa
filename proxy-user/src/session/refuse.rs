//! How a refused client is told: a TCP reset, a TLS alert, or an HTTP status line.

use tokio::io::AsyncWriteExt as _;

use crate::{datapath::Endpoint, sockopt};

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
}

/// Sends `signal` and closes the client socket; returns the bytes written to it in all.
pub async fn refuse(mut client: Endpoint, signal: Signal, reason: &str) -> u64 {
    match signal {
        Signal::Reset => {}
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
