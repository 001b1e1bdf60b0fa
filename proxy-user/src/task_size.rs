//! Why relayed connections' futures are kept small, stated once.
//!
//! Every relayed connection holds its task's future for as long as it lasts, often idle
//! among thousands, so each byte of that future is paid per connection. Two habits keep it
//! small on that path:
//! - Functions are written as `fn … -> impl Future` returning an async block, not as
//!   `async fn`s: an async fn stores its arguments twice (rust-lang/rust#62958). Hence
//!   `clippy::manual_async_fn` is expected crate-wide, in lib.rs.
//! - States that are rare there (an EOF, bytes passed after the handoff, a catch-up) are
//!   awaited through [`rare`], boxed, so an idle connection's future reserves no room for
//!   them.

use std::{future::Future, pin::Pin};

/// Boxes `f`, a rare state of a relayed connection: the future that awaits it keeps a
/// pointer to it rather than room for all of it.
pub fn rare<F: Future>(f: F) -> Pin<Box<F>> {
    Box::pin(f)
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
