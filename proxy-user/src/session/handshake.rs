//! Steps 2 to 6 for each listener mode, within `handshake_timeout` and until shutdown.
//! Each step takes what the one before it learned and returns what the next needs; the
//! decision line is where they note what they learned, for the log.

use std::{net::SocketAddr, time::Instant};

use super::{
    Context,
    decide::{self, Admitted},
    first_flight::{self, FirstFlight},
    refusal::{ClientFault, Ending, Refusal, UpstreamFault},
    refuse::Channel,
    route::{self, Route},
    server_hello,
};
use crate::{
    config::ListenerKind, datapath::Endpoint, events, names, pulse::Phase, sockopt, tls::Protocol,
    upstream,
};

/// An allowed connection whose handshake is through, ready to relay.
pub struct Relayable {
    /// The server, adopted by the datapath.
    pub upstream: Endpoint,
    /// The CONNECT request head's length: read from the client but never sent upstream,
    /// so `bytes_up` leaves it out (as `bytes_down` leaves out our 200).
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
    let mut pulse = cx.pulse.clone();
    let limit = cx.live.limits.handshake_timeout;
    let handshake = tokio::time::timeout(limit, by_route(cx, client, line));
    let mut result = tokio::select! {
        result = handshake => result.unwrap_or_else(|_| Err(Refusal::from(Ending::Timeout).into())),
        _ = pulse.wait_for(|p| p.phase != Phase::Running) => {
            Err(Refusal::from(Ending::Shutdown).into())
        }
    };
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

async fn by_route(
    cx: &Context,
    client: &mut Endpoint,
    line: &mut events::Decision,
) -> Result<Relayable, Refused> {
    let before_tunnel = |refusal: Refusal| Refused {
        refusal,
        channel: Channel::Http,
    };
    let route = route::read(&cx.listener.kind, client, line)
        .await
        .map_err(before_tunnel)?;
    let (upstream, request_head, admitted) = match route {
        Route::Connect {
            host,
            port,
            head_len,
        } => {
            let mut upstream = open_tunnel(cx, client, line, &host, port)
                .await
                .map_err(before_tunnel)?;
            let admitted = through_tunnel(cx, client, line, &mut upstream, &host, port).await?;
            (upstream, head_len, admitted)
        }
        Route::Transparent { dst } => {
            let (upstream, admitted) = transparent(cx, client, line, dst).await?;
            (upstream, 0, admitted)
        }
        Route::Sni { port } => {
            let (upstream, admitted) = sni(cx, client, line, port).await?;
            (upstream, 0, admitted)
        }
    };
    Ok(Relayable {
        upstream,
        request_head,
        admitted,
    })
}

/// CONNECT, before the 200: decide on the host, connect, and open the tunnel.
async fn open_tunnel(
    cx: &Context,
    client: &mut Endpoint,
    line: &mut events::Decision,
    host: &str,
    port: u16,
) -> Result<Endpoint, Refusal> {
    decide::decide_connect(&cx.live.policy, line, host, port)?;
    let addrs = resolve(cx, host, port).await?;
    let upstream = connect(cx, line, &addrs).await?;
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
    let mut upstream = connect(cx, line, &[dst]).await?;
    forward(cx, client, line, &mut upstream, flight).await?;
    Ok((upstream, admitted))
}

/// SNI routing: the SNI names the server.
async fn sni(
    cx: &Context,
    client: &mut Endpoint,
    line: &mut events::Decision,
    port: u16,
) -> Result<(Endpoint, Admitted), Refusal> {
    let (flight, admitted) = decide_on_sni(cx, client, line, port).await?;
    let name = flight.sni().ok_or(ClientFault::NoSni)?;
    let addrs = resolve(cx, name, port).await?;
    let mut upstream = connect(cx, line, &addrs).await?;
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

/// Step 5: the new TCP connection to the server.
async fn connect(
    cx: &Context,
    line: &mut events::Decision,
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
    Ok(cx.datapath.adopt(stream, line.conn))
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
