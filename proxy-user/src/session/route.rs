//! Step 2: where the connection is going, as far as the listener can tell before the
//! client's first bytes: the CONNECT request, the original destination, or only the port.

use std::net::SocketAddr;

use super::refusal::{ClientFault, Ending, Refusal};
use crate::{
    config::ListenerKind,
    connect_request::{self, Reject, Request},
    datapath::Endpoint,
    events::{self, FqdnSource},
    sockopt,
};

/// Where a connection is going.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// An explicit proxy's `CONNECT host:port`; its head, `head_len` bytes, was read from
    /// the client and is never sent upstream.
    Connect {
        host: String,
        port: u16,
        head_len: u64,
    },
    /// A transparent listener: the client's original destination.
    Transparent { dst: SocketAddr },
    /// An SNI-routing listener: the server is named by the SNI, at `port`.
    Sni { port: u16 },
}

/// Learns the route for a listener of `kind`, and notes it in the decision line.
pub async fn read(
    kind: &ListenerKind,
    client: &mut Endpoint,
    line: &mut events::Decision,
) -> Result<Route, Refusal> {
    let route = match *kind {
        ListenerKind::Connect { .. } => connect(client).await?,
        ListenerKind::Transparent { tproxy, .. } => Route::Transparent {
            dst: original_destination(client, tproxy).map_err(Ending::OriginalDst)?,
        },
        ListenerKind::Sni { upstream_port } => Route::Sni {
            port: upstream_port,
        },
    };
    match &route {
        Route::Connect { host, port, .. } => {
            line.dst = Some(format!("{host}:{port}"));
            line.fqdn_source = FqdnSource::Connect;
            line.fqdn = Some(host.clone());
        }
        Route::Transparent { dst } => line.dst = Some(dst.to_string()),
        Route::Sni { .. } => {}
    }
    Ok(route)
}

/// Reads `CONNECT host:port`.
async fn connect(client: &mut Endpoint) -> Result<Route, Refusal> {
    let mut head = Vec::new();
    let mut buf = [0; 1024];
    loop {
        let n = match client.read(&mut buf).await {
            Ok(0) | Err(_) => return Err(ClientFault::Closed.into()),
            Ok(n) => n,
        };
        head.extend_from_slice(&buf[..n]);
        match connect_request::parse(&head) {
            Request::NeedMore => {}
            Request::Reject(reject) => return Err(ClientFault::BadRequest(reject).into()),
            // A client that sends tunnel bytes before our 200 cannot be checked the same
            // way; refuse rather than guess.
            Request::Connect { head_len, .. } if head_len != head.len() => {
                let reject = Reject::BadRequest("data before 200");
                return Err(ClientFault::BadRequest(reject).into());
            }
            Request::Connect {
                host,
                port,
                head_len,
            } => {
                return Ok(Route::Connect {
                    host,
                    port,
                    head_len: head_len as u64,
                });
            }
        }
    }
}

/// Where a transparently redirected client was going.
fn original_destination(client: &Endpoint, tproxy: bool) -> std::io::Result<SocketAddr> {
    let stream = client.stream();
    let local = stream.local_addr()?;
    // TPROXY keeps the original destination as the socket's own address.
    if tproxy {
        Ok(local)
    } else {
        sockopt::original_dst(stream, local.is_ipv6())
    }
}
