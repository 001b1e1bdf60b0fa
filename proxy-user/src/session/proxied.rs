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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{
        io::AsyncWriteExt as _,
        net::{TcpListener, TcpStream},
    };

    use super::*;
    use crate::{
        datapath::{Datapath, Mode},
        proxy_header::v2_header,
    };

    /// An adopted accepted socket, and the client's end.
    async fn pair() -> (Endpoint, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let datapath = Datapath::new(None, Mode::Copy, 0);
        (datapath.adopt(accepted, 1), client)
    }

    /// A header dribbled a byte at a time, with the client's first bytes right behind its
    /// last: exactly the header is read, and the stream after it is left whole.
    #[tokio::test]
    async fn reads_exactly_the_header() {
        for version in [Version::V1, Version::V2] {
            let (mut endpoint, mut client) = pair().await;
            let source: SocketAddr = "192.0.2.7:40000".parse().unwrap();
            let destination: SocketAddr = "198.51.100.1:443".parse().unwrap();
            let header = match version {
                Version::V1 => b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\n".to_vec(),
                Version::V2 => v2_header(source, destination),
            };
            let writer = tokio::spawn(async move {
                let (last, head) = header.split_last().unwrap();
                for byte in head {
                    client.write_all(&[*byte]).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let mut rest = vec![*last];
                rest.extend_from_slice(b"\x16\x03\x01 the stream");
                client.write_all(&rest).await.unwrap();
                client
            });
            let mut line = events::Decision::new(1, "test", "127.0.0.1:1".parse().unwrap());
            let inbound = read(version, &mut endpoint, &mut line).await.unwrap();
            let header_len = match version {
                Version::V1 => 45,
                Version::V2 => 28,
            };
            assert_eq!(inbound.len, header_len);
            assert_eq!(inbound.destination, Some(destination));
            assert_eq!(endpoint.bytes_read(), header_len);
            assert_eq!(line.client, source);
            assert_eq!(line.via, Some("127.0.0.1:1".parse().unwrap()));
            let _client = writer.await.unwrap();
            let mut rest = [0; 64];
            let mut got = Vec::new();
            while got.len() < 14 {
                let n = endpoint.read(&mut rest).await.unwrap();
                got.extend_from_slice(&rest[..n]);
            }
            assert_eq!(got, b"\x16\x03\x01 the stream");
        }
    }

    /// A ClientHello where the header should be is refused, as is a `LOCAL` header.
    #[tokio::test]
    async fn refuses_a_missing_header_and_closes_local() {
        let (mut endpoint, mut client) = pair().await;
        client.write_all(b"\x16\x03\x01\x02\x00\x01").await.unwrap();
        let mut line = events::Decision::new(1, "test", "127.0.0.1:1".parse().unwrap());
        let refusal = read(Version::V2, &mut endpoint, &mut line).await;
        assert!(matches!(
            refusal,
            Err(Refusal::Client(ClientFault::ProxyProtocol))
        ));
        assert_eq!(line.via, None);

        let (mut endpoint, mut client) = pair().await;
        let mut local = ppp::v2::PROTOCOL_PREFIX.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        client.write_all(&local).await.unwrap();
        let refusal = read(Version::V2, &mut endpoint, &mut line).await;
        assert!(matches!(
            refusal,
            Err(Refusal::Sockgate(Ending::ProxyLocal))
        ));
    }
}
