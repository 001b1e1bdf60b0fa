//! Steps 2 to 6 for each listener mode, after the PROXY header if the listener takes one,
//! within `handshake_timeout` and until shutdown.
//! Each step takes what the one before it learned and returns what the next needs; the
//! decision line is where they note what they learned, for the log.

use std::{future::Future, net::SocketAddr, time::Instant};

use super::{
    Context,
    decide::{self, Admitted},
    first_flight::{self, FirstFlight},
    proxied::{self, Inbound},
    refusal::{ClientFault, Ending, Refusal, UpstreamFault},
    refuse::Channel,
    route::{self, Route},
    server_hello,
};
use crate::{
    config::ListenerKind, datapath::Endpoint, events, names, proxy_header, pulse::Phase, sockopt,
    tls::Protocol, upstream,
};

/// An allowed connection whose handshake is through, ready to relay.
pub struct Relayable {
    /// The server, adopted by the datapath.
    pub upstream: Endpoint,
    /// The CONNECT request head's and the PROXY header's length: read from the client but
    /// never sent upstream, so `bytes_up` leaves them out (as `bytes_down` leaves out our
    /// 200).
    pub request_head: u64,
    /// Why the policy allowed it.
    pub admitted: Admitted,
}

/// A refused connection: why, and what the client still understands.
pub struct Refused {
    pub refusal: Refusal,
    pub channel: Channel,
}

impl From<Refusal> for Refused {
    /// A refusal once the client's own protocol runs on the connection.
    fn from(refusal: Refusal) -> Self {
        Refused {
            refusal,
            channel: Channel::Stream { tls: false },
        }
    }
}

/// Runs the handshake of the connection `client`, noting what it learns in `line`.
pub async fn run(
    cx: &Context,
    client: &mut Endpoint,
    line: &mut events::Decision,
) -> Result<Relayable, Refused> {
    // The PROXY header and the steps after it share one `handshake_timeout`.
    let deadline = tokio::time::Instant::now() + cx.live.limits.handshake_timeout;
    let mut result = async {
        let inbound = proxy_header(cx, client, line, deadline).await?;
        let steps = by_route(cx, client, line, inbound);
        let mut relayable = within(cx, deadline, steps, Ending::Timeout.into()).await?;
        relayable.request_head += inbound.len;
        Ok(relayable)
    }
    .await;
    // Whether the client can read an alert is known only now, from its first bytes.
    if let Err(Refused {
        channel: Channel::Stream { tls },
        ..
    }) = &mut result
    {
        *tls = line.protocol == Protocol::Tls;
    }
    result
}

/// On a `proxy_protocol` listener, the balancer's PROXY header, by `deadline`; a
/// connection it names another client for shows that one in the admin endpoint too.
async fn proxy_header(
    cx: &Context,
    client: &mut Endpoint,
    line: &mut events::Decision,
    deadline: tokio::time::Instant,
) -> Result<Inbound, Refused> {
    let Some(version) = cx.listener.proxy_protocol else {
        return Ok(Inbound::default());
    };
    let header = async { Ok(proxied::read(version, client, line).await?) };
    let inbound = within(cx, deadline, header, ClientFault::ProxyProtocol.into()).await?;
    if let (Some(admin), Some(_)) = (&cx.listener.admin, line.via) {
        admin.proxied(line.conn, line.client);
    }
    Ok(inbound)
}

/// Runs `step` until `deadline`, when it fails with `late`, or until shutdown starts.
async fn within<T>(
    cx: &Context,
    deadline: tokio::time::Instant,
    step: impl Future<Output = Result<T, Refused>>,
    late: Refusal,
) -> Result<T, Refused> {
    let mut pulse = cx.pulse.clone();
    tokio::select! {
        result = tokio::time::timeout_at(deadline, step) => {
            result.unwrap_or_else(|_| Err(late.into()))
        }
        _ = pulse.wait_for(|p| p.phase != Phase::Running) => {
            Err(Refusal::from(Ending::Shutdown).into())
        }
    }
}

async fn by_route(
    cx: &Context,
    client: &mut Endpoint,
    line: &mut events::Decision,
    inbound: Inbound,
) -> Result<Relayable, Refused> {
    let before_tunnel = |refusal: Refusal| Refused {
        refusal,
        channel: Channel::Http,
    };
    let route = route::read(&cx.listener.kind, client, line)
        .await
        .map_err(before_tunnel)?;
    let outbound = outbound(cx, client, line, inbound, &route).map_err(before_tunnel)?;
    let outbound = outbound.as_deref();
    let (upstream, request_head, admitted) = match route {
        Route::Connect {
            host,
            port,
            head_len,
        } => {
            let mut upstream = open_tunnel(cx, client, line, outbound, &host, port)
                .await
                .map_err(before_tunnel)?;
            let admitted = through_tunnel(cx, client, line, &mut upstream, &host, port).await?;
            (upstream, head_len, admitted)
        }
        Route::Transparent { dst } => {
            let (upstream, admitted) = transparent(cx, client, line, outbound, dst).await?;
            (upstream, 0, admitted)
        }
        Route::Sni { port } => {
            let (upstream, admitted) = sni(cx, client, line, outbound, port).await?;
            (upstream, 0, admitted)
        }
    };
    Ok(Relayable {
        upstream,
        request_head,
        admitted,
    })
}

/// The PROXY v2 header for the upstream, on a `send_proxy_protocol` listener: from the
/// decision line's client to where it connected (at the balancer, the original
/// destination, or this listener).
fn outbound(
    cx: &Context,
    client: &Endpoint,
    line: &events::Decision,
    inbound: Inbound,
    route: &Route,
) -> Result<Option<Vec<u8>>, Refusal> {
    if !cx.listener.send_proxy_protocol {
        return Ok(None);
    }
    let destination = match (inbound.destination, route) {
        (Some(destination), _) => destination,
        (None, Route::Transparent { dst }) => *dst,
        (None, _) => client
            .stream()
            .local_addr()
            .map_err(|_| ClientFault::Closed)?,
    };
    Ok(Some(proxy_header::v2_header(line.client, destination)))
}

/// CONNECT, before the 200: decide on the host, connect, and open the tunnel.
async fn open_tunnel(
    cx: &Context,
    client: &mut Endpoint,
    line: &mut events::Decision,
    outbound: Option<&[u8]>,
    host: &str,
    port: u16,
) -> Result<Endpoint, Refusal> {
    decide::decide_connect(&cx.live.policy, line, host, port)?;
    let addrs = resolve(cx, host, port).await?;
    let upstream = connect(cx, line, outbound, &addrs).await?;
    client
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await
        .map_err(|_| ClientFault::Closed)?;
    Ok(upstream)
}

/// CONNECT, after the 200: the SNI must name the CONNECT host (unless the listener allows a
/// mismatch), and the protocol of the first bytes must be allowed too.
async fn through_tunnel(
    cx: &Context,
    client: &mut Endpoint,
    line: &mut events::Decision,
    upstream: &mut Endpoint,
    host: &str,
    port: u16,
) -> Result<Admitted, Refusal> {
    let flight = first_flight::read(client, &cx.live.limits, line).await?;
    let checked = matches!(
        cx.listener.kind,
        ListenerKind::Connect {
            allow_sni_mismatch: false
        }
    );
    if checked && let FirstFlight::Hello(hello, _) = &flight {
        let same = match (&hello.sni, names::normalize(host)) {
            (Some(sni), Ok(host)) => names::normalize(sni).is_ok_and(|sni| sni == host),
            _ => false,
        };
        if !same {
            return Err(ClientFault::SniMismatch.into());
        }
    }
    let protocol = line.protocol;
    let admitted = decide::decide(&cx.live.policy, line, Some(host), port, protocol)?;
    forward(cx, client, line, upstream, flight).await?;
    Ok(admitted)
}

/// Transparent: decide on the SNI (or its absence) and the original destination.
async fn transparent(
    cx: &Context,
    client: &mut Endpoint,
    line: &mut events::Decision,
    outbound: Option<&[u8]>,
    dst: SocketAddr,
) -> Result<(Endpoint, Admitted), Refusal> {
    let (flight, admitted) = decide_on_sni(cx, client, line, dst.port()).await?;
    let sni = flight.sni();
    let verify = matches!(
        cx.listener.kind,
        ListenerKind::Transparent {
            verify_destination: true,
            ..
        }
    );
    if verify && let Some(name) = sni {
        let addrs = resolve(cx, name, dst.port()).await?;
        if !addrs.iter().any(|a| a.ip() == dst.ip()) {
            return Err(ClientFault::SniMismatch.into());
        }
    }
    let mut upstream = connect(cx, line, outbound, &[dst]).await?;
    forward(cx, client, line, &mut upstream, flight).await?;
    Ok((upstream, admitted))
}

/// SNI routing: the SNI names the server.
async fn sni(
    cx: &Context,
    client: &mut Endpoint,
    line: &mut events::Decision,
    outbound: Option<&[u8]>,
    port: u16,
) -> Result<(Endpoint, Admitted), Refusal> {
    let (flight, admitted) = decide_on_sni(cx, client, line, port).await?;
    let name = flight.sni().ok_or(ClientFault::NoSni)?;
    let addrs = resolve(cx, name, port).await?;
    let mut upstream = connect(cx, line, outbound, &addrs).await?;
    forward(cx, client, line, &mut upstream, flight).await?;
    Ok((upstream, admitted))
}

/// Transparent and SNI routing: reads the first flight and decides on its SNI (or its
/// absence), noted as the connection's name, at `port`.
async fn decide_on_sni(
    cx: &Context,
    client: &mut Endpoint,
    line: &mut events::Decision,
    port: u16,
) -> Result<(FirstFlight, Admitted), Refusal> {
    let flight = first_flight::read(client, &cx.live.limits, line).await?;
    if let Some(sni) = flight.sni() {
        line.fqdn = Some(sni.to_owned());
        line.fqdn_source = events::FqdnSource::Sni;
    }
    let protocol = line.protocol;
    let admitted = decide::decide(&cx.live.policy, line, flight.sni(), port, protocol)?;
    Ok((flight, admitted))
}

async fn resolve(cx: &Context, host: &str, port: u16) -> Result<Vec<SocketAddr>, Refusal> {
    let addrs = cx.live.resolver.resolve(host, port).await;
    Ok(addrs.map_err(UpstreamFault::Unreachable)?)
}

/// Step 5: the new TCP connection to the server, and the PROXY header `outbound` on it
/// first, before any of the client's bytes (or at once, if the server speaks first).
async fn connect(
    cx: &Context,
    line: &mut events::Decision,
    outbound: Option<&[u8]>,
    addrs: &[SocketAddr],
) -> Result<Endpoint, Refusal> {
    let started = Instant::now();
    let stream = upstream::connect(addrs, cx.live.limits.connect_timeout).await;
    if let Some(admin) = &cx.listener.admin {
        admin.upstream_connected(started.elapsed());
    }
    let stream = stream.map_err(UpstreamFault::Unreachable)?;
    if let Ok(addr) = stream.peer_addr() {
        line.dst = Some(addr.to_string());
    }
    // Dropping the upstream before both directions end with FIN (a refusal, a timeout, a
    // shutdown, a relay cut short) must read as a reset to the server, not as a client that
    // finished: the server may already have seen a ClientHello. The datapath clears this
    // only once both directions have ended with FIN.
    let _ = sockopt::set_linger_zero(&stream);
    let mut upstream = cx.datapath.adopt(stream, line.conn);
    if let Some(header) = outbound {
        // Counted as written, as the FIN drain needs; the close line counts only bytes
        // read from each side, so the header is never in it.
        upstream
            .write_all(header)
            .await
            .map_err(|_| UpstreamFault::Closed)?;
    }
    Ok(upstream)
}

/// Step 5, then 6: the first bytes exactly as received, then the server's answer.
async fn forward(
    cx: &Context,
    client: &mut Endpoint,
    line: &mut events::Decision,
    upstream: &mut Endpoint,
    flight: FirstFlight,
) -> Result<(), Refusal> {
    if let FirstFlight::Silence = flight {
        return Ok(());
    }
    let (bytes, hello) = flight.into_bytes();
    upstream
        .write_all(&bytes)
        .await
        .map_err(|_| UpstreamFault::Closed)?;
    match hello {
        Some(hello) => server_hello::relay(client, upstream, &hello, &cx.live.limits, line).await,
        None => Ok(()),
    }
}
