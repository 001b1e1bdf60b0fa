//! `sockgate relay`: a plain TCP relay over a chosen datapath, for benchmarks and debugging.

use std::{net::SocketAddr, process::ExitCode, sync::Arc};

use anyhow::Context as _;

use crate::{
    datapath::{DEFAULT_SEND_BUFFER, Datapath, Mode},
    relay::{RelayConfig, serve},
};

#[derive(clap::Args)]
pub struct Args {
    /// Address to accept connections on.
    #[arg(long)]
    listen: SocketAddr,
    /// Address every connection is relayed to.
    #[arg(long)]
    upstream: SocketAddr,
    /// auto, sockmap, splice or copy.
    #[arg(long, value_enum, default_value = "auto")]
    datapath: Mode,
    /// SO_SNDBUF of both proxy sockets; 0 keeps the kernel default.
    #[arg(long, default_value_t = DEFAULT_SEND_BUFFER)]
    send_buffer: usize,
    /// Bytes relayed through userspace each way before the handoff.
    #[arg(long, default_value_t = 0)]
    handshake_bytes: usize,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let datapath = Datapath::load(args.datapath, args.send_buffer)
            .context("datapath = sockmap needs the eBPF program")?;
        let datapath = Arc::new(datapath);
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        log::info!(
            "relaying {} -> {} ({:?})",
            args.listen,
            args.upstream,
            args.datapath
        );
        let config = RelayConfig {
            upstream: args.upstream,
            handshake_bytes: args.handshake_bytes,
        };
        tokio::select! {
            res = serve(listener, config, datapath, None) => res?,
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(ExitCode::SUCCESS)
    })
}
