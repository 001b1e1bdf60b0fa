//! One client connection, from accept to close, in the order of the flow:
//!
//! 1. the TCP handshake ended at a listener, and [`run`] adopts the socket;
//! 2. learn where it is going ([`route`]): the CONNECT request, the original destination,
//!    or only the port, until the SNI names the server;
//! 3. read the client's first bytes ([`first_flight`]): a whole ClientHello, other bytes,
//!    or silence;
//! 4. decide with the policy ([`decide`]);
//! 5. connect to the server and forward the first bytes exactly ([`handshake`]);
//! 6. relay the server's ServerHello, and a second ClientHello after a HelloRetryRequest
//!    ([`server_hello`]);
//! 7. hand both sockets to the datapath until they close ([`run`]).
//!
//! [`handshake`] runs steps 2-6 for each listener mode. A refused connection is told why
//! ([`refuse`]). Every connection logs one `decision` line and one `close` line, both
//! written here.

mod context;
mod decide;
mod first_flight;
mod handshake;
mod proxied;
mod refusal;
mod refuse;
mod route;
mod server_hello;

use std::{
    future::Future,
    net::SocketAddr,
    time::{Duration, Instant},
};

pub use context::{Context, ListenerInfo};
use handshake::{Refused, Relayable};
pub use refusal::{ClientFault, Ending, Refusal, UpstreamFault};
use tokio::net::TcpStream;

use crate::{
    admin::connections::Route,
    datapath::{Endpoint, Watch},
    events,
    policy::Action,
    task_size::rare,
};

/// Runs one accepted connection to its end, then drops `open` (the agent counts open
/// connections with it).
///
/// Every connection holds this future as its task for as long as it lasts, so it is kept
/// small ([`crate::task_size`]): `open` is taken here rather than by a wrapping block that
/// would hold the arguments once more, the accepted socket and its address come boxed (the
/// future keeps room for its arguments after the handshake has moved them out), and the
/// start time is kept in 8 bytes.
pub fn run(
    mut cx: Context,
    accepted: Box<(TcpStream, SocketAddr)>,
    conn: u64,
    open: impl Send + 'static,
) -> impl Future<Output = ()> + Send {
    async move {
        let started = Started::now();
        let (stream, peer) = *accepted;
        // The handshake's state is large, and gone once the connection is relayed.
        let Some((client, upstream, request_head, route)) =
            rare(admit(&cx, stream, peer, conn, started.instant())).await
        else {
            drop(open);
            return;
        };
        let watch = cx.listener.admin.as_ref().map(|admin| -> Watch<'_> {
            Box::new(move |path, live| admin.relaying(conn, route, path, live, request_head))
        });
        let outcome = cx
            .datapath
            .splice_watched(client, upstream, &mut cx.pulse, watch)
            .await;
        let line = events::Close {
            conn,
            bytes_up: outcome.bytes_up.saturating_sub(request_head),
            bytes_down: outcome.bytes_down,
            duration_ms: started.instant().elapsed().as_millis() as u64,
            datapath: Some(outcome.path),
            end: outcome.end,
            repeats_cut: outcome.repeats_cut,
        };
        close(&cx, &line);
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
/// request head's length to relay, and the route the decision line named (for the admin
/// endpoint); a refused connection ends here, with its close line.
async fn admit(
    cx: &Context,
    stream: TcpStream,
    peer: SocketAddr,
    conn: u64,
    started: Instant,
) -> Option<(Endpoint, Endpoint, u64, Route)> {
    let mut client = cx.datapath.adopt(stream, conn);
    let mut line = events::Decision::new(conn, &cx.listener.name, peer);
    match handshake::run(cx, &mut client, &mut line).await {
        Ok(Relayable {
            upstream,
            request_head,
            admitted,
        }) => {
            line.action = admitted.action;
            line.enforced = admitted.enforced();
            line.reason = admitted.reason.to_string();
            decision(cx, &line, started);
            // The line is written: its strings move on rather than being copied.
            let route = Route {
                dst: line.dst.take(),
                fqdn: line.fqdn.take(),
                rule: line.rule.take(),
            };
            Some((client, upstream, request_head, route))
        }
        Err(Refused { refusal, channel }) => {
            line.action = Action::Deny;
            line.reason = refusal.to_string();
            decision(cx, &line, started);
            let deny_with = cx.live.policy.deny_with();
            let signal = refuse::signal_for(&refusal, channel, line.fqdn.is_some(), deny_with);
            let bytes_up = client.bytes_read();
            log::debug!("conn {conn}: refused ({refusal}) with {signal:?}");
            // The refusal itself (a 403, an alert) counts as bytes sent to the client.
            let bytes_down = refuse::refuse(client, signal, &line.reason).await;
            let line = events::Close {
                conn,
                bytes_up,
                bytes_down,
                duration_ms: started.elapsed().as_millis() as u64,
                datapath: None,
                end: refuse::end_of(&refusal, signal),
                repeats_cut: 0,
            };
            close(cx, &line);
            None
        }
    }
}

/// Writes the decision line and reports it to the admin endpoint.
fn decision(cx: &Context, line: &events::Decision, started: Instant) {
    events::decision(line);
    if let Some(admin) = &cx.listener.admin {
        admin.decided(line, started.elapsed());
    }
}

/// Writes the close line and reports it to the admin endpoint.
fn close(cx: &Context, line: &events::Close) {
    events::close(line);
    if let Some(admin) = &cx.listener.admin {
        admin.closed(line);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::net::{TcpListener, TcpStream};

    use crate::{
        config::ListenerKind,
        datapath::{Datapath, Mode},
        pulse,
        session::{self, Context, ListenerInfo},
        snapshot::Snapshot,
    };

    /// What the futures measured before the datapath and the session were reshaped
    /// (issue 16), in this (debug) build.
    const SPLICE_FUTURE_BYTES: usize = 440;
    const SESSION_FUTURE_BYTES: usize = 520;

    /// A connected pair of sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connected = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (accepted, connected)
    }

    #[tokio::test]
    async fn the_relayed_futures_do_not_grow() {
        let datapath = Arc::new(Datapath::new(None, Mode::Copy, 0));
        let (accepted, connected) = pair().await;
        let (client, upstream) = (datapath.adopt(accepted, 1), datapath.adopt(connected, 1));
        let mut never = pulse::never();
        let splice = std::mem::size_of_val(&datapath.splice(client, upstream, &mut never));
        let (snapshot, _) = Snapshot::parse("", "test").unwrap();
        let cx = Context {
            datapath: Arc::clone(&datapath),
            live: Arc::new(snapshot),
            listener: Arc::new(ListenerInfo {
                name: "test".into(),
                kind: ListenerKind::Sni { upstream_port: 443 },
                proxy_protocol: None,
                send_proxy_protocol: false,
                admin: None,
            }),
            pulse: pulse::never(),
        };
        let (accepted, _peer) = pair().await;
        let addr = accepted.peer_addr().unwrap();
        let session = std::mem::size_of_val(&session::run(cx, Box::new((accepted, addr)), 1, ()));
        assert!(
            splice <= SPLICE_FUTURE_BYTES && session <= SESSION_FUTURE_BYTES,
            "splice's future is {splice} bytes (at most {SPLICE_FUTURE_BYTES}), a session's \
             {session} (at most {SESSION_FUTURE_BYTES}): every relayed connection holds them"
        );
    }
}
