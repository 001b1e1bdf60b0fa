//! The listeners: binding, the accept loop, and the over-limit refusal.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::{Agent, lock, snapshot};
use crate::{
    config::{ListenerConfig, ListenerKind},
    datapath::End,
    events,
    session::{self, Context, Ending, ListenerInfo, Refusal},
    sockopt,
};

async fn bind(config: &ListenerConfig) -> anyhow::Result<TcpListener> {
    let addr: SocketAddr = config.address;
    let socket = if addr.is_ipv6() {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    socket.set_reuseaddr(true)?;
    if let ListenerKind::Transparent { tproxy: true, .. } = config.kind() {
        sockopt::set_ip_transparent(&socket, addr.is_ipv6())
            .context("IP_TRANSPARENT (needs CAP_NET_ADMIN)")?;
    }
    socket
        .bind(addr)
        .with_context(|| format!("binding {addr}"))?;
    Ok(socket.listen(1024)?)
}

pub(super) async fn start_listener(
    agent: &Arc<Agent>,
    config: &ListenerConfig,
) -> anyhow::Result<()> {
    let listener = bind(config)
        .await
        .with_context(|| format!("listener {}", config.name))?;
    let info = Arc::new(ListenerInfo {
        name: config.name.clone(),
        kind: config.kind(),
        proxy_protocol: config.proxy_protocol,
        send_proxy_protocol: config.send_proxy_protocol.is_some(),
        admin: agent.admin.as_ref().map(|(_, a)| a.reporter(&config.name)),
    });
    log::info!(
        "listener {} ({}) on {}",
        config.name,
        config.mode,
        config.address
    );
    let task = tokio::spawn(accept_loop(Arc::clone(agent), listener, info));
    lock(&agent.listeners).insert(config.name.clone(), (config.clone(), task));
    Ok(())
}

/// Counts open connection `.1` until dropped.
struct Active(Arc<Agent>, u64);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
        // A session that panicked wrote no close line and left its row; the row goes, so
        // `/connections` and the open gauge do not keep it forever.
        if std::thread::panicking()
            && let Some((_, admin)) = &self.0.admin
        {
            admin.forget(self.1);
        }
    }
}

async fn accept_loop(agent: Arc<Agent>, listener: TcpListener, info: Arc<ListenerInfo>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // EMFILE and friends pass; the listener stays.
                log::warn!("listener {}: accept: {err}", info.name);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let conn = agent.next_conn.fetch_add(1, Relaxed) + 1;
        if let Some(admin) = &info.admin {
            admin.opened(conn, peer);
        }
        let live = snapshot(&agent);
        let cx = Context {
            datapath: Arc::clone(&agent.datapath),
            live: Arc::clone(&live),
            listener: Arc::clone(&info),
            pulse: agent.pulse.subscribe(),
        };
        let open = agent.active.fetch_add(1, Relaxed) + 1;
        let guard = Active(Arc::clone(&agent), conn);
        if open > live.limits.max_connections as usize {
            log::warn!(
                "conn {conn}: over max_connections ({}); reset",
                live.limits.max_connections
            );
            refuse_over_limit(&info, stream, peer, conn);
            drop(guard);
            continue;
        }
        tokio::spawn(session::run(cx, Box::new((stream, peer)), conn, guard));
    }
}

/// Refuses a connection over `max_connections` at once, with a reset and its two log lines.
fn refuse_over_limit(listener: &ListenerInfo, stream: TcpStream, peer: SocketAddr, conn: u64) {
    let decision = events::Decision {
        reason: Refusal::from(Ending::OverLimit).to_string(),
        ..events::Decision::new(conn, &listener.name, peer)
    };
    events::decision(&decision);
    let _ = sockopt::set_linger_zero(&stream);
    drop(stream);
    let close = events::Close {
        conn,
        bytes_up: 0,
        bytes_down: 0,
        duration_ms: 0,
        datapath: None,
        end: End::Rst,
        repeats_cut: 0,
    };
    events::close(&close);
    if let Some(admin) = &listener.admin {
        admin.decided(&decision, Duration::ZERO);
        admin.closed(&close);
    }
}
