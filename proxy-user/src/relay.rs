//! A plain TCP relay over the [`Datapath`]: no TLS and no policy. `sockgate relay` uses it
//! for benchmarks, and the datapath tests drive it to stress the handoff.

use std::{net::SocketAddr, sync::Arc};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

use crate::datapath::{Datapath, Endpoint, Outcome};

/// What the relay does with each connection.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Where every accepted connection is relayed to.
    pub upstream: SocketAddr,
    /// Bytes relayed through userspace each way before the handoff, standing in for a TLS
    /// handshake (client first, then upstream).
    pub handshake_bytes: usize,
}

/// Accepts forever, relaying each connection on its own task. Outcomes go to `outcomes`
/// when given, and to the log otherwise.
pub async fn serve(
    listener: TcpListener,
    config: RelayConfig,
    datapath: Arc<Datapath>,
    outcomes: Option<mpsc::UnboundedSender<Outcome>>,
) -> std::io::Result<()> {
    let mut conn = 0u64;
    loop {
        conn += 1;
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // EMFILE and friends are transient; keep the listener.
                log::warn!("accept: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let datapath = Arc::clone(&datapath);
        let config = config.clone();
        let outcomes = outcomes.clone();
        tokio::spawn(async move {
            let client = datapath.adopt(stream, conn);
            match relay(client, &config, &datapath).await {
                Ok(outcome) => {
                    log::info!("conn {conn} from {peer}: {outcome:?}");
                    if let Some(tx) = outcomes {
                        let _ = tx.send(outcome);
                    }
                }
                Err(err) => log::warn!("{peer}: {err}"),
            }
        });
    }
}

async fn relay(
    mut client: Endpoint,
    config: &RelayConfig,
    datapath: &Datapath,
) -> std::io::Result<Outcome> {
    let conn = client.conn();
    let mut upstream = datapath.adopt(TcpStream::connect(config.upstream).await?, conn);
    copy_exact(&mut client, &mut upstream, config.handshake_bytes).await?;
    copy_exact(&mut upstream, &mut client, config.handshake_bytes).await?;
    Ok(datapath
        .splice(client, upstream, &mut crate::pulse::never())
        .await)
}

/// Relays exactly `len` bytes (fewer at EOF) from `from` to `to` through userspace.
async fn copy_exact(from: &mut Endpoint, to: &mut Endpoint, len: usize) -> std::io::Result<()> {
    let mut buf = vec![0; len.min(64 << 10)];
    let mut left = len;
    while left > 0 {
        let want = left.min(buf.len());
        let n = from.read(&mut buf[..want]).await?;
        if n == 0 {
            break;
        }
        to.write_all(&buf[..n]).await?;
        left -= n;
    }
    Ok(())
}
