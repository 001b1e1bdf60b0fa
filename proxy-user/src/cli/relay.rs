//! `sockgate relay`: a plain TCP relay over a chosen datapath, for benchmarks and debugging.

use std::{net::SocketAddr, process::ExitCode, sync::Arc};

use anyhow::Context as _;

use crate::{
    datapath::{DEFAULT_SEND_BUFFER, Datapath, Mode},
    ebpf::Kernel,
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
    #[arg(long, default_value = "auto", value_parser = parse_mode)]
    datapath: Mode,
    /// SO_SNDBUF of both proxy sockets; 0 keeps the kernel default.
    #[arg(long, default_value_t = DEFAULT_SEND_BUFFER)]
    send_buffer: usize,
    /// Bytes relayed through userspace each way before the handoff.
    #[arg(long, default_value_t = 0)]
    handshake_bytes: usize,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| format!("unknown datapath {s:?} (auto, sockmap, splice, copy)"))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let kernel = match args.datapath {
            Mode::Auto | Mode::Sockmap => match Kernel::load() {
                Ok(kernel) => {
                    kernel.spawn_log_reader()?;
                    Some(Arc::new(kernel))
                }
                Err(err) if args.datapath == Mode::Sockmap => {
                    return Err(err).context("datapath = sockmap needs the eBPF program");
                }
                Err(err) => {
                    log::warn!("eBPF program not loaded ({err}); using splice(2)");
                    None
                }
            },
            Mode::Splice | Mode::Copy => None,
        };
        let datapath = Arc::new(Datapath::new(kernel, args.datapath, args.send_buffer));
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
