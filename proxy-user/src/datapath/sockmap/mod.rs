//! The kernel path: the verdict program redirects each skb to the peer socket, and
//! userspace only handles the handoff, FIN and RST.
//!
//! The handoff cannot lose or reorder bytes (ARCHITECTURE.md, "The handoff: go and
//! passed"). Each direction sets `go` to the number of bytes userspace has read from the
//! source and written to the destination; the verdict redirects only while its `passed`
//! count equals `go`, and passes (to our `recv`) otherwise. So every byte userspace sees is
//! written before any later byte is redirected, and a byte that arrives during the handoff
//! is simply read and forwarded here, after which `go` catches up. FIN waits until the
//! peer's send queue has every redirected byte (ARCHITECTURE.md, "FIN draining").
//!
//! Backpressure (ARCHITECTURE.md, "The backpressure bound"): a redirected skb leaves the
//! source's receive memory at once and waits in the peer's psock queue, charged to no
//! socket, so TCP keeps the sender's window open and a slow receiver lets the kernel queue
//! without bound. The verdict therefore redirects only while the peer's send buffer has room
//! for what waits there (it reads the peer's state itself, per skb:
//! `proxy_common::SockLayout`). Without room it passes; the pass wakes the direction, which
//! relays those bytes only once the psock queue is empty and the peer's send buffer takes
//! them (so it blocks with a slow receiver, the source's receive queue fills and TCP closes
//! its window), then hands off again. With a peer that has room, a catch-up relays them
//! without consuming them first, so the handoff completes again even while the sender keeps
//! sending.
//!
//! The send-buffer bound keeps psock queues empty, and that matters to the other direction:
//! a passed skb is charged to its socket's receive memory (closing the window) only when
//! that socket's psock queue is empty. Behind redirected skbs waiting there for send-buffer
//! room it queues uncharged (sk_psock_verdict_apply, net/core/skmsg.c), and passing would
//! push back on nothing.

mod budget;
mod direction;

use std::{future::Future, pin::pin};

use direction::{Direction, Syn};

use super::{BytesRead, End, Endpoint, pair::both};
use crate::ebpf::Kernel;

/// Both directions. Every idle connection on this path holds this future, so it is kept
/// small ([`crate::task_size`]).
pub(super) fn run<'a>(
    kernel: &'a Kernel,
    client: &'a Endpoint,
    upstream: &'a Endpoint,
    read: &'a BytesRead,
) -> impl Future<Output = End> + Send + 'a {
    async move {
        let mut up = Direction::new(kernel, client, upstream, &read.up, Syn::Counted);
        let mut down = Direction::new(kernel, upstream, client, &read.down, Syn::NotCounted);
        both(pin!(up.run()), pin!(down.run())).await
    }
}
