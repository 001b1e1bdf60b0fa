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
//!
//! `session::tests::the_relayed_futures_do_not_grow` pins the sizes.

use std::{future::Future, pin::Pin};

/// Boxes `f`, a rare state of a relayed connection: the future that awaits it keeps a
/// pointer to it rather than room for all of it.
pub fn rare<F: Future>(f: F) -> Pin<Box<F>> {
    Box::pin(f)
}
