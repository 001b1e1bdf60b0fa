//! sockgate's datapath as an in-process relay, on its own tokio runtime.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use proxy_user::{
    datapath::{DEFAULT_SEND_BUFFER, Datapath, Mode, Outcome, Path},
    ebpf::{Kernel, MapCounts},
    relay::{RelayConfig, serve},
};
use tokio::sync::mpsc;

/// A running relay. Create it after entering the test's namespace: the runtime's threads
/// inherit the creating thread's namespace.
pub struct Relay {
    pub addr: SocketAddr,
    outcomes: mpsc::UnboundedReceiver<Outcome>,
    kernel: Option<Arc<Kernel>>,
    /// Always `Some` until drop.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Don't wait for connections a failed test left open.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Relay {
    /// Starts a relay to `upstream` that will carry connections on `path`. For
    /// [`Path::Sockmap`] the kernel program must load, or the test fails.
    pub fn start(path: Path, upstream: SocketAddr, handshake_bytes: usize) -> Self {
        let _ = env_logger::builder().is_test(true).try_init();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let mode = match path {
            Path::Sockmap => Mode::Sockmap,
            Path::Splice => Mode::Splice,
            Path::Copy => Mode::Copy,
        };
        let datapath = runtime
            .block_on(async { Datapath::load(mode, DEFAULT_SEND_BUFFER) })
            .expect("loading the eBPF program");
        let kernel = datapath.kernel().cloned();
        let datapath = Arc::new(datapath);
        let (tx, outcomes) = mpsc::unbounded_channel();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("binding the relay");
        let addr = listener.local_addr().expect("local_addr");
        let config = RelayConfig {
            upstream,
            handshake_bytes,
        };
        runtime.spawn(serve(listener, config, datapath, Some(tx)));
        Self {
            addr,
            outcomes,
            kernel,
            runtime: Some(runtime),
        }
    }

    /// The next connection's outcome; fails the test after `timeout`.
    pub fn outcome(&mut self, timeout: Duration) -> Outcome {
        let outcomes = &mut self.outcomes;
        let runtime = self.runtime.as_ref().expect("running");
        runtime
            .block_on(async { tokio::time::timeout(timeout, outcomes.recv()).await })
            .expect("timed out waiting for the relay to finish a connection")
            .expect("relay stopped")
    }

    /// Entry counts of the kernel maps (zero without the kernel program).
    pub fn map_counts(&self) -> MapCounts {
        self.kernel
            .as_ref()
            .map(|k| k.map_counts())
            .unwrap_or_default()
    }
}
