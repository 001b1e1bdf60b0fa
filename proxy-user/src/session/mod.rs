//! One client connection, from accept to close, in the order of the flow:
//!
//! 1. the TCP handshake ended at a listener (`Session::start` adopts the socket);
//! 2. learn where it is going: the original destination
//!    (`Session::original_destination`), the CONNECT request (`Session::connect_request`),
//!    or later the SNI;
//! 3. read the client's first bytes: a whole ClientHello, other bytes, or silence
//!    (`Session::first_flight`);
//! 4. decide with the policy (`Session::decide_or_refuse`, `Session::decide_connect`);
//! 5. connect to the server (`Session::connect`) and forward the first bytes exactly
//!    (`Session::forward`);
//! 6. relay the server's ServerHello, and a second ClientHello after a HelloRetryRequest
//!    (`Session::server_hello`);
//! 7. hand both sockets to the datapath until they close ([`run`]).
//!
//! `Session::handshake` runs steps 2-6 for each listener mode. Every connection logs one
//! `decision` line and one `close` line.

mod refuse;

use std::{
    future::Future,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use refuse::{ACCESS_DENIED, Signal, UNRECOGNIZED_NAME, refuse};
use tokio::{net::TcpStream, sync::watch};

use crate::{
    config::{DenyWith, ListenerKind},
    connect::{self, Request},
    datapath::{Datapath, End, Endpoint},
    events::{self, FqdnSource, tls_version_name},
    names,
    policy::{Action, Decision, Query, Reason},
    pulse::{Phase, Pulse},
    snapshot::Snapshot,
    sockopt,
    tls::{
        self, ClientHello, ClientHelloAssembler, Progress, Protocol, ServerHelloAssembler,
        ServerProgress,
    },
    upstream::{self, UpstreamError},
};

/// One listener's identity and mode.
#[derive(Debug)]
pub struct ListenerInfo {
    /// The listener's unique name, logged in every decision line.
    pub name: String,
    /// Its mode and mode-specific settings.
    pub kind: ListenerKind,
}

/// Everything a session needs from the agent.
pub struct Context {
    /// Adopts sockets and splices pairs.
    pub datapath: Arc<Datapath>,
    /// The config snapshot taken at accept.
    pub live: Arc<Snapshot>,
    /// The listener that accepted the connection.
    pub listener: Arc<ListenerInfo>,
    /// Tells handshakes to stop, and relayed connections when to check idleness and when
    /// to end.
    pub pulse: watch::Receiver<Pulse>,
}

/// Why a connection was not relayed. Each has a reason token for the decision log and a
/// signal for the client.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("{0}")]
    Policy(String),
    #[error("timeout")]
    Timeout,
    #[error("shutdown")]
    Shutdown,
    #[error("client_closed")]
    ClientClosed,
    #[error("client_hello_malformed: {0}")]
    Malformed(tls::Malformed),
    #[error("client_hello_too_large")]
    TooLarge,
    #[error("{0}")]
    BadRequest(connect::Reject),
    #[error("no_sni")]
    NoSni,
    #[error("sni_mismatch")]
    SniMismatch,
    #[error("hrr_sni_changed")]
    HrrSniChanged,
    #[error("{}", .0.reason())]
    Upstream(UpstreamError),
    #[error("upstream_closed")]
    UpstreamClosed,
    #[error("upstream_not_tls")]
    UpstreamNotTls,
    #[error("original_dst: {0}")]
    OriginalDst(std::io::Error),
}

/// The client's first bytes.
enum FirstFlight {
    /// A whole ClientHello, and the bytes that came after it in the same read.
    Hello(ClientHello, Vec<u8>),
    /// Bytes that are not TLS, forwarded as they are.
    Other(Vec<u8>),
    /// Nothing within `client_first_timeout`: the server speaks first.
    Silence,
}

/// The state of one connection through the handshake.
struct Session<'a> {
    cx: &'a Context,
    /// The client socket, adopted by the datapath at accept.
    client: Endpoint,
    /// The decision line, filled in as the handshake learns things.
    record: events::Decision,
    /// Why the policy answered as it did, once asked (its rule and name are in `record`).
    decision: Option<Reason>,
    /// CONNECT only: the 200 has been sent, so refusals can no longer be HTTP.
    tunnel_open: bool,
    /// CONNECT only: the request head's length. It was read from the client but never
    /// sent upstream, so a relayed connection's `bytes_up` leaves it out (as `bytes_down`
    /// leaves out our 200).
    request_head: u64,
}

const READ_CHUNK: usize = 16 * 1024;

/// Refuses a connection over `max_connections` at once, with its two log lines.
pub async fn refuse_over_limit(cx: &Context, stream: TcpStream, peer: SocketAddr, conn: u64) {
    events::decision(&events::Decision {
        reason: "max_connections".into(),
        ..events::Decision::new(conn, &cx.listener.name, peer)
    });
    let _ = sockopt::set_linger_zero(&stream);
    drop(stream);
    events::close(&events::Close {
        conn,
        bytes_up: 0,
        bytes_down: 0,
        duration_ms: 0,
        datapath: None,
        end: End::Rst,
        repeats_cut: 0,
    });
}

/// Runs one accepted connection to its end, then drops `open` (the agent counts open
/// connections with it).
///
/// Every connection holds this future as its task for as long as it lasts, so it is kept
/// small: an async block, not an async fn, which would store its arguments twice
/// (rust-lang/rust#62958), `open` is taken here rather than by a wrapping block that
/// would hold the arguments once more, the accepted socket and its address come boxed (the
/// future keeps room for its arguments after the handshake has moved them out), and the
/// start time is kept in 8 bytes.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice (rust-lang/rust#62958)"
)]
pub fn run(
    mut cx: Context,
    accepted: Box<(TcpStream, SocketAddr)>,
    conn: u64,
    open: impl Send + 'static,
) -> impl Future<Output = ()> + Send {
    async move {
        let started = Started::now();
        let (stream, peer) = *accepted;
        // Boxed: the handshake's state is large, and gone once the connection is relayed.
        let Some((client, upstream, request_head)) =
            Box::pin(admit(&cx, stream, peer, conn, started.instant())).await
        else {
            drop(open);
            return;
        };
        let outcome = cx.datapath.splice(client, upstream, &mut cx.pulse).await;
        events::close(&events::Close {
            conn,
            bytes_up: outcome.bytes_up.saturating_sub(request_head),
            bytes_down: outcome.bytes_down,
            duration_ms: started.instant().elapsed().as_millis() as u64,
            datapath: Some(outcome.path),
            end: outcome.end,
            repeats_cut: outcome.repeats_cut,
        });
        drop(open);
    }
}

/// When a connection was accepted, in 8 bytes (an `Instant` takes 16), as every relayed
/// connection's future keeps it: nanoseconds since the first.
#[derive(Clone, Copy)]
struct Started(u64);

static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

impl Started {
    fn now() -> Self {
        let epoch = *EPOCH.get_or_init(Instant::now);
        Self(epoch.elapsed().as_nanos() as u64)
    }

    fn instant(self) -> Instant {
        *EPOCH.get_or_init(Instant::now) + Duration::from_nanos(self.0)
    }
}

/// Steps 1 to 6 and the decision line. Returns the client, the upstream and the CONNECT
/// request head's length to relay; a refused connection ends here, with its close line.
async fn admit(
    cx: &Context,
    stream: TcpStream,
    peer: SocketAddr,
    conn: u64,
    started: Instant,
) -> Option<(Endpoint, Endpoint, u64)> {
    let (result, session) = Session::start(cx, stream, peer, conn).await;
    let Session {
        client,
        mut record,
        decision,
        tunnel_open,
        request_head,
        ..
    } = session;
    match result {
        Ok(upstream) => {
            record.action = Action::Allow;
            record.reason = decision.map_or_else(String::new, |reason| reason.to_string());
            events::decision(&record);
            Some((client, upstream, request_head))
        }
        Err(refusal) => {
            record.action = Action::Deny;
            record.reason = refusal.to_string();
            events::decision(&record);
            let signal = signal_for(&refusal, cx, &record, tunnel_open);
            let bytes_up = client.bytes_read();
            log::debug!("conn {conn}: refused ({refusal}) with {signal:?}");
            // The refusal itself (a 403, an alert) counts as bytes sent to the client.
            let bytes_down = refuse(client, signal, &record.reason).await;
            events::close(&events::Close {
                conn,
                bytes_up,
                bytes_down,
                duration_ms: started.elapsed().as_millis() as u64,
                datapath: None,
                end: match refusal {
                    Refusal::Timeout => End::Timeout,
                    Refusal::Shutdown => End::Shutdown,
                    _ if signal == Signal::Reset => End::Rst,
                    _ => End::Fin,
                },
                repeats_cut: 0,
            });
            None
        }
    }
}

/// What the client is told for a refusal.
fn signal_for(
    refusal: &Refusal,
    cx: &Context,
    record: &events::Decision,
    tunnel_open: bool,
) -> Signal {
    if matches!(cx.listener.kind, ListenerKind::Connect { .. }) && !tunnel_open {
        return match refusal {
            Refusal::Policy(_) => Signal::Http(403, "Forbidden"),
            Refusal::BadRequest(reject) => {
                let (status, text) = reject.status();
                Signal::Http(status, text)
            }
            Refusal::Upstream(UpstreamError::Timeout) => Signal::Http(504, "Gateway Timeout"),
            Refusal::Upstream(_) => Signal::Http(502, "Bad Gateway"),
            _ => Signal::Reset,
        };
    }
    let denied = matches!(
        refusal,
        Refusal::Policy(_) | Refusal::NoSni | Refusal::SniMismatch
    );
    if denied && record.protocol == Protocol::Tls && cx.live.policy.deny_with() == DenyWith::Alert {
        let no_fitting_name = record.fqdn.is_none() || record.reason.starts_with("invalid_name");
        return Signal::Alert(if no_fitting_name {
            UNRECOGNIZED_NAME
        } else {
            ACCESS_DENIED
        });
    }
    Signal::Reset
}

impl<'a> Session<'a> {
    /// Adopts the client socket (step 1), then runs the handshake within
    /// `handshake_timeout`, unless shutdown starts first.
    async fn start(
        cx: &'a Context,
        stream: TcpStream,
        peer: SocketAddr,
        conn: u64,
    ) -> (Result<Endpoint, Refusal>, Self) {
        let mut session = Session {
            cx,
            client: cx.datapath.adopt(stream, conn),
            record: events::Decision::new(conn, &cx.listener.name, peer),
            decision: None,
            tunnel_open: false,
            request_head: 0,
        };
        let mut pulse = cx.pulse.clone();
        let handshake = tokio::time::timeout(cx.live.limits.handshake_timeout, session.handshake());
        let result = tokio::select! {
            result = handshake => result.unwrap_or(Err(Refusal::Timeout)),
            _ = pulse.wait_for(|p| p.phase != Phase::Running) => Err(Refusal::Shutdown),
        };
        (result, session)
    }

    async fn handshake(&mut self) -> Result<Endpoint, Refusal> {
        match self.cx.listener.kind {
            ListenerKind::Connect { allow_sni_mismatch } => {
                let (host, port) = self.connect_request().await?;
                self.decide_connect(&host, port)?;
                let addrs = self.resolve(&host, port).await?;
                let mut upstream = self.connect(&addrs).await?;
                self.client
                    .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .await
                    .map_err(|_| Refusal::ClientClosed)?;
                self.tunnel_open = true;
                let flight = self.first_flight().await?;
                self.check_tunnel(&host, port, &flight, allow_sni_mismatch)?;
                self.forward(&mut upstream, flight).await?;
                Ok(upstream)
            }
            ListenerKind::Transparent {
                verify_destination,
                tproxy,
            } => {
                let dst = self.original_destination(tproxy)?;
                let flight = self.first_flight().await?;
                let sni = self.sni(&flight);
                self.decide_or_refuse(sni.as_deref(), dst.port())?;
                if verify_destination && let Some(name) = &sni {
                    let addrs = self.resolve(name, dst.port()).await?;
                    if !addrs.iter().any(|a| a.ip() == dst.ip()) {
                        return Err(Refusal::SniMismatch);
                    }
                }
                let mut upstream = self.connect(&[dst]).await?;
                self.forward(&mut upstream, flight).await?;
                Ok(upstream)
            }
            ListenerKind::Sni { upstream_port } => {
                let flight = self.first_flight().await?;
                let sni = self.sni(&flight);
                self.decide_or_refuse(sni.as_deref(), upstream_port)?;
                let Some(name) = sni else {
                    return Err(Refusal::NoSni);
                };
                let addrs = self.resolve(&name, upstream_port).await?;
                let mut upstream = self.connect(&addrs).await?;
                self.forward(&mut upstream, flight).await?;
                Ok(upstream)
            }
        }
    }

    /// Reads from the client; its EOF or an error ends the handshake.
    async fn read_client(&mut self, buf: &mut [u8]) -> Result<usize, Refusal> {
        match self.client.read(buf).await {
            Ok(0) | Err(_) => Err(Refusal::ClientClosed),
            Ok(n) => Ok(n),
        }
    }

    /// Step 2, transparent: where the client was going.
    fn original_destination(&mut self, tproxy: bool) -> Result<SocketAddr, Refusal> {
        let stream = self.client.stream();
        let local = stream.local_addr().map_err(Refusal::OriginalDst)?;
        // TPROXY keeps the original destination as the socket's own address.
        let dst = if tproxy {
            local
        } else {
            sockopt::original_dst(stream, local.is_ipv6()).map_err(Refusal::OriginalDst)?
        };
        self.record.dst = Some(dst.to_string());
        Ok(dst)
    }

    /// Step 2, connect: reads `CONNECT host:port`.
    async fn connect_request(&mut self) -> Result<(String, u16), Refusal> {
        let mut head = Vec::new();
        let mut buf = [0; 1024];
        loop {
            let n = self.read_client(&mut buf).await?;
            head.extend_from_slice(&buf[..n]);
            match connect::parse(&head) {
                Request::NeedMore => {}
                Request::Reject(reject) => return Err(Refusal::BadRequest(reject)),
                Request::Connect {
                    host,
                    port,
                    head_len,
                } => {
                    // A client that sends tunnel bytes before our 200 cannot be checked the
                    // same way; refuse rather than guess.
                    if head_len != head.len() {
                        return Err(Refusal::BadRequest(connect::Reject::BadRequest(
                            "data before 200",
                        )));
                    }
                    self.request_head = head_len as u64;
                    self.record.dst = Some(format!("{host}:{port}"));
                    self.record.fqdn_source = FqdnSource::Connect;
                    self.record.fqdn = Some(host.clone());
                    return Ok((host, port));
                }
            }
        }
    }

    /// Step 3: the client's first bytes. Silence for `client_first_timeout` means a
    /// server-speaks-first protocol.
    async fn first_flight(&mut self) -> Result<FirstFlight, Refusal> {
        let limits = &self.cx.live.limits;
        let mut assembler = ClientHelloAssembler::new(limits.max_client_hello);
        let mut buf = vec![0; READ_CHUNK];
        let first =
            tokio::time::timeout(limits.client_first_timeout, self.client.read(&mut buf)).await;
        let mut n = match first {
            Err(_) => return Ok(FirstFlight::Silence),
            Ok(Err(_) | Ok(0)) => return Err(Refusal::ClientClosed),
            Ok(Ok(n)) => n,
        };
        loop {
            match assembler.push(&buf[..n]) {
                Progress::NeedMore => {}
                Progress::Complete { hello, consumed } => {
                    self.note_hello(&hello);
                    return Ok(FirstFlight::Hello(hello, buf[consumed..n].to_vec()));
                }
                Progress::NotTls(first) => {
                    self.record.protocol = first.protocol;
                    return Ok(FirstFlight::Other(first.bytes));
                }
                Progress::Malformed(why) => {
                    self.record.protocol = Protocol::Tls;
                    return Err(Refusal::Malformed(why));
                }
                Progress::TooLarge => {
                    self.record.protocol = Protocol::Tls;
                    return Err(Refusal::TooLarge);
                }
            }
            n = self.read_client(&mut buf).await?;
        }
    }

    fn note_hello(&mut self, hello: &ClientHello) {
        self.record.protocol = Protocol::Tls;
        self.record.alpn.clone_from(&hello.alpn);
        self.record.ech = hello.ech;
        let version = hello
            .supported_versions
            .first()
            .copied()
            .unwrap_or(hello.legacy_version);
        self.record.tls_version = Some(tls_version_name(version));
    }

    /// The SNI of a TLS first flight; records it as the connection's name.
    fn sni(&mut self, flight: &FirstFlight) -> Option<String> {
        let FirstFlight::Hello(hello, _) = flight else {
            return None;
        };
        let sni = hello.sni.clone()?;
        self.record.fqdn = Some(sni.clone());
        self.record.fqdn_source = FqdnSource::Sni;
        Some(sni)
    }

    /// The policy's answer. It borrows the policy, not the session, so the session can
    /// keep it.
    fn query<'q>(&self, fqdn: Option<&'q str>, port: u16, protocol: Protocol) -> Decision<'q>
    where
        'a: 'q,
    {
        let cx: &'a Context = self.cx;
        cx.live.policy.decide(&Query {
            fqdn,
            source: Some(self.record.client.ip()),
            port: Some(port),
            protocol,
        })
    }

    /// Step 4: the policy on what is known; a deny ends the session.
    fn decide_or_refuse(&mut self, fqdn: Option<&str>, port: u16) -> Result<(), Refusal> {
        let decision = self.query(fqdn, port, self.record.protocol);
        let allowed = decision.action == Action::Allow;
        self.keep(decision);
        if allowed {
            Ok(())
        } else {
            Err(Refusal::Policy(self.reason()))
        }
    }

    /// Step 4 for CONNECT, before the tunnel opens: the protocol is not known yet, so
    /// refuse (403) only if no protocol could be allowed; `check_tunnel` decides again on
    /// the first bytes.
    fn decide_connect(&mut self, host: &str, port: u16) -> Result<(), Refusal> {
        let decision = Protocol::ALL
            .iter()
            .map(|&protocol| self.query(Some(host), port, protocol))
            .find(|d| d.action == Action::Allow)
            .unwrap_or_else(|| self.query(Some(host), port, Protocol::None));
        let allowed = decision.action == Action::Allow;
        self.keep(decision);
        if allowed {
            Ok(())
        } else {
            Err(Refusal::Policy(self.reason()))
        }
    }

    /// CONNECT after 200: the SNI must name the CONNECT host, and the protocol must be
    /// allowed too.
    fn check_tunnel(
        &mut self,
        host: &str,
        port: u16,
        flight: &FirstFlight,
        allow_sni_mismatch: bool,
    ) -> Result<(), Refusal> {
        if let FirstFlight::Hello(hello, _) = flight
            && !allow_sni_mismatch
        {
            let same = match (&hello.sni, names::normalize(host)) {
                (Some(sni), Ok(host)) => names::normalize(sni).is_ok_and(|sni| sni == host),
                _ => false,
            };
            if !same {
                return Err(Refusal::SniMismatch);
            }
        }
        self.decide_or_refuse(Some(host), port)
    }

    /// Notes a decision in the decision line: the last one asked is the one logged.
    fn keep(&mut self, decision: Decision<'_>) {
        if let Some(fqdn) = decision.fqdn {
            self.record.fqdn = Some(fqdn.to_string());
        }
        self.record.rule = decision.rule.map(|rule| rule.to_string());
        self.decision = Some(decision.reason);
    }

    fn reason(&self) -> String {
        self.decision
            .map_or_else(String::new, |reason| reason.to_string())
    }

    async fn resolve(&mut self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Refusal> {
        self.cx
            .live
            .resolver
            .resolve(host, port)
            .await
            .map_err(Refusal::Upstream)
    }

    /// Step 5: the new TCP connection to the server.
    async fn connect(&mut self, addrs: &[SocketAddr]) -> Result<Endpoint, Refusal> {
        let stream = upstream::connect(addrs, self.cx.live.limits.connect_timeout)
            .await
            .map_err(Refusal::Upstream)?;
        if let Ok(addr) = stream.peer_addr() {
            self.record.dst = Some(addr.to_string());
        }
        // Until the handshake is through, dropping the upstream (a refusal, a timeout, a
        // shutdown) must read as a reset to the server, not as a client that finished:
        // the server may already have seen a ClientHello. `run` clears this at the handoff.
        let _ = sockopt::set_linger_zero(&stream);
        Ok(self.cx.datapath.adopt(stream, self.record.conn))
    }

    /// Steps 5 and 6: the first bytes exactly as received, then the server's answer.
    async fn forward(
        &mut self,
        upstream: &mut Endpoint,
        flight: FirstFlight,
    ) -> Result<(), Refusal> {
        let (bytes, hello) = match flight {
            FirstFlight::Hello(hello, extra) => {
                let mut bytes = hello.raw.clone();
                bytes.extend_from_slice(&extra);
                (bytes, Some(hello))
            }
            FirstFlight::Other(bytes) => (bytes, None),
            FirstFlight::Silence => return Ok(()),
        };
        upstream
            .write_all(&bytes)
            .await
            .map_err(|_| Refusal::UpstreamClosed)?;
        let Some(hello) = hello else {
            return Ok(());
        };
        self.server_hello(upstream, &hello).await
    }

    /// Step 6: relays the server's reply until a ServerHello. After a HelloRetryRequest
    /// the client's second ClientHello is checked and forwarded too.
    async fn server_hello(
        &mut self,
        upstream: &mut Endpoint,
        first: &ClientHello,
    ) -> Result<(), Refusal> {
        let max = self.cx.live.limits.max_client_hello;
        let mut buf = vec![0; READ_CHUNK];
        let mut retried = false;
        loop {
            let mut assembler = ServerHelloAssembler::new(max);
            let answer = loop {
                let n = upstream
                    .read(&mut buf)
                    .await
                    .map_err(|_| Refusal::UpstreamClosed)?;
                if n == 0 {
                    return Err(Refusal::UpstreamClosed);
                }
                // Everything the server sent goes to the client unchanged.
                self.client
                    .write_all(&buf[..n])
                    .await
                    .map_err(|_| Refusal::ClientClosed)?;
                match assembler.push(&buf[..n]) {
                    ServerProgress::NeedMore => continue,
                    answer => break answer,
                }
            };
            match answer {
                ServerProgress::ServerHello { version, .. } => {
                    self.record.tls_version = Some(tls_version_name(version));
                    return Ok(());
                }
                // The client learns why from the alert; nothing more to check.
                ServerProgress::Alert { .. } => return Ok(()),
                ServerProgress::HelloRetryRequest { .. } if !retried => {
                    retried = true;
                    let second = self.second_client_hello(first).await?;
                    upstream
                        .write_all(&second)
                        .await
                        .map_err(|_| Refusal::UpstreamClosed)?;
                }
                _ => return Err(Refusal::UpstreamNotTls),
            }
        }
    }

    /// The ClientHello after a HelloRetryRequest: it must name the same server.
    async fn second_client_hello(&mut self, first: &ClientHello) -> Result<Vec<u8>, Refusal> {
        let mut assembler =
            ClientHelloAssembler::after_hello_retry(self.cx.live.limits.max_client_hello);
        let mut buf = vec![0; READ_CHUNK];
        loop {
            let n = self.read_client(&mut buf).await?;
            match assembler.push(&buf[..n]) {
                Progress::NeedMore => {}
                Progress::Complete { hello, consumed } => {
                    let normal = |s: &Option<String>| s.as_deref().map(names::normalize);
                    if normal(&hello.sni) != normal(&first.sni) {
                        return Err(Refusal::HrrSniChanged);
                    }
                    let mut bytes = hello.raw;
                    bytes.extend_from_slice(&buf[consumed..n]);
                    return Ok(bytes);
                }
                Progress::Malformed(why) => return Err(Refusal::Malformed(why)),
                Progress::TooLarge => return Err(Refusal::TooLarge),
                Progress::NotTls(_) => {
                    return Err(Refusal::Malformed(tls::Malformed::AfterEnd));
                }
            }
        }
    }
}
