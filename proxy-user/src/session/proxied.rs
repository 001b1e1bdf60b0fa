//! Step 1b, on a `proxy_protocol` listener: the balancer's PROXY header, before anything
//! else. It is read exactly: peeked, then only its own bytes are read, through the endpoint
//! so its count stays whole for the handoff, and the client's stream after it is left to
//! the steps that follow.

use std::net::SocketAddr;

use super::refusal::{ClientFault, Ending, Refusal};
use crate::{
    datapath::Endpoint,
    events,
    proxy_header::{self, Frame, Header, Version},
};

/// What a PROXY header told.
#[derive(Clone, Copy, Debug, Default)]
pub struct Inbound {
    /// The header's length: read from the client but not the client's stream, so `bytes_up`
    /// leaves it out.
    pub len: u64,
    /// Where the client connected, at the balancer.
    pub destination: Option<SocketAddr>,
}

/// Reads a `version` header from `client`: the client it names becomes the decision
/// line's `client`, and the TCP peer its `via`.
pub async fn read(
    version: Version,
    client: &mut Endpoint,
    line: &mut events::Decision,
) -> Result<Inbound, Refusal> {
    let (header, len) = take(version, client).await?;
    match header {
        Header::Proxied {
            source,
            destination,
        } => {
            line.via = Some(line.client);
            line.client = source;
            Ok(Inbound {
                len: len as u64,
                destination: Some(destination),
            })
        }
        Header::Local => Err(Ending::ProxyLocal.into()),
    }
}

/// Peeks until the header is framed, consuming the bytes known to be header as it goes
/// (so the next peek waits for new ones), and never one byte past it.
async fn take(version: Version, client: &mut Endpoint) -> Result<(Header, usize), Refusal> {
    let max = version.max_len();
    let mut head = Vec::with_capacity(max);
    let mut buf = vec![0; max];
    loop {
        // Framing never asks for more while the header is at its limit, so room is left.
        let room = max - head.len();
        let n = match client.stream().peek(&mut buf[..room]).await {
            Ok(0) | Err(_) => return Err(ClientFault::Closed.into()),
            Ok(n) => n,
        };
        let had = head.len();
        head.extend_from_slice(&buf[..n]);
        match proxy_header::frame(version, &head) {
            Frame::NeedMore => consume(client, &mut buf, n).await?,
            Frame::Complete(len) => {
                consume(client, &mut buf, len - had).await?;
                let header = proxy_header::parse(version, &head[..len]).map_err(|why| {
                    log::debug!("conn {}: PROXY header {why}", client.conn());
                    ClientFault::ProxyProtocol
                })?;
                return Ok((header, len));
            }
            Frame::TooLarge | Frame::NotHeader => {
                log::debug!("conn {}: no PROXY header ({:?})", client.conn(), head);
                return Err(ClientFault::ProxyProtocol.into());
            }
        }
    }
}

/// Reads exactly `n` bytes the last peek saw.
async fn consume(client: &mut Endpoint, buf: &mut [u8], mut n: usize) -> Result<(), Refusal> {
    while n > 0 {
        match client.read(&mut buf[..n]).await {
            Ok(0) | Err(_) => return Err(ClientFault::Closed.into()),
            Ok(read) => n -= read,
        }
    }
    Ok(())
}
