//! One direction of the sockmap path as a state machine: each [`Phase`] is what the
//! direction does next, and each step returns the phase after it.
//!
//! ```text
//! Starting ──> HandedOff ──passed bytes──> CatchingUp ──caught up, or gave up──> HandedOff
//!                  │                            └──nothing moved──> Passing
//!                  └──readable──> Passing ──relayed──> HandedOff
//!                                     └──EOF──> Draining ──final──> FIN passed on (end)
//!                                                  └──early──> HandedOff
//! ```
//!
//! Any step may also end the direction with a reset or an error. The state between steps is
//! all in [`Direction`]: the phase, the bytes read and written, and the `go` last handed
//! off. Inside a step userspace may hold bytes it read and has not written yet; the wait in
//! [`Phase::HandedOff`], where an idle direction sits, holds none, so a direction stopped
//! there (as a handover to another process will) loses nothing, and its `Direction` says
//! where it stood.

use std::{
    future::{Future, poll_fn},
    io,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    task::{Poll, ready},
    time::Instant,
};

use proxy_common::Handoff;
use tokio::net::TcpStream;

use super::budget::BufferShare;
use crate::{
    datapath::{End, Endpoint, fin, pair::write_all},
    ebpf::Kernel,
    sockopt,
    task_size::rare,
};

/// The most passed bytes one catch-up holds (see also [`super::budget::CATCH_UP_BUDGET`]);
/// the receive buffer bounds them anyway.
const CATCH_UP: u64 = 32 << 20;

/// The read buffer while bytes are passed to userspace (before the handoff completes, or
/// after a failed redirect).
const BUFFER: usize = 64 << 10;

/// Whether a socket's `bytes_acked` counts its SYN: it does on the side that connected
/// (the upstream), not on the side that accepted (the client); measured, and pinned by
/// `sockopt::tests::bytes_acked_counts_the_syn_of_a_connect`.
#[derive(Clone, Copy)]
pub(super) enum Syn {
    Counted = 1,
    NotCounted = 0,
}

/// What a direction does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Nothing handed off yet: hand off what the handshake read.
    Starting,
    /// `go` equals the bytes read: the verdict redirects once `passed` reaches it. Waits
    /// for what the verdict does not redirect: passed bytes, EOF or an error. An idle
    /// direction waits here, holding no buffer.
    HandedOff,
    /// Bytes reach userspace: read them and write them to `dst` (before the handoff
    /// completes, or after a catch-up gave up).
    Passing,
    /// Bytes were passed after the handoff (the peer had no room, or a redirect failed):
    /// relay them without consuming them first, then hand off again.
    CatchingUp,
    /// `src` read EOF: wait until it is final and `dst` has taken every redirected byte,
    /// then pass the FIN on.
    Draining,
}

/// The phase after a step, or how the direction ended (cleanly with [`End::Fin`], or not).
type Next = Result<Phase, End>;

/// One direction, `src` to `dst`.
pub(super) struct Direction<'a> {
    kernel: &'a Kernel,
    src: &'a Endpoint,
    dst: &'a Endpoint,
    /// Bytes userspace read from `src` in all; shared with the splice, which reports it.
    read: &'a AtomicU64,
    /// Of `dst`'s count of bytes ever queued (`bytes_acked + SIOCOUTQ`), those the verdict
    /// did not redirect: userspace's writes, and the SYN where it counts.
    written: u64,
    /// The `go` last handed off (none yet in [`Phase::Starting`]): the verdict redirects
    /// while its `passed` equals it.
    go: u64,
    /// When `src` first read an EOF ahead of passed bytes.
    eof_since: Option<Instant>,
    /// The read buffer, [`BUFFER`] bytes, held only while bytes are being passed to us, so
    /// an idle spliced connection keeps no buffer.
    buf: Option<Box<[u8]>>,
    phase: Phase,
}

impl<'a> Direction<'a> {
    /// A direction about to start: `read` is what the handshake read from `src`.
    pub(super) fn new(
        kernel: &'a Kernel,
        src: &'a Endpoint,
        dst: &'a Endpoint,
        read: &'a AtomicU64,
        dst_syn: Syn,
    ) -> Self {
        Self {
            kernel,
            src,
            dst,
            read,
            written: dst.bytes_written() + dst_syn as u64,
            go: 0,
            eof_since: None,
            buf: None,
            phase: Phase::Starting,
        }
    }

    /// Runs one step after another until the direction ends, then logs how it ended. Rare
    /// steps are boxed, so the future an idle direction holds has room only for waiting in
    /// [`Phase::HandedOff`].
    pub(super) fn run(&mut self) -> impl Future<Output = End> + '_ {
        async move {
            loop {
                let next = match self.phase {
                    Phase::Starting => self.set_go(self.read.load(Relaxed)),
                    Phase::HandedOff => self.await_passed().await,
                    Phase::Passing => rare(self.relay_passed()).await,
                    Phase::CatchingUp => rare(self.catch_up()).await,
                    Phase::Draining => rare(self.drain_and_finish()).await,
                };
                match next {
                    Ok(phase) => self.phase = phase,
                    Err(end) => {
                        self.log_end(end);
                        return end;
                    }
                }
            }
        }
    }

    /// Logs how the direction ended, at debug level.
    fn log_end(&self, end: End) {
        if !log::log_enabled!(log::Level::Debug) {
            return;
        }
        let c = self.kernel.counters(self.src.cookie());
        log::debug!(
            "conn {}: sock {} -> {} ended {end:?} in {:?}: read {} written {} go {} passed {} \
             redirected {} repeated bytes cut {}",
            self.src.conn(),
            self.src.cookie(),
            self.dst.cookie(),
            self.phase,
            self.read.load(Relaxed),
            self.written,
            self.go,
            c.passed,
            c.redirected,
            c.overlap
        );
    }

    /// Into [`Phase::HandedOff`]: hands off at what userspace has read, unless `go`
    /// already says so.
    fn hand_off(&mut self) -> Next {
        let read = self.read.load(Relaxed);
        if self.go == read {
            return Ok(Phase::HandedOff);
        }
        self.set_go(read)
    }

    /// [`Phase::HandedOff`]: waits until `src` is readable, which it is only for bytes the
    /// verdict passed, EOF or an error: redirected skbs never show up in the socket's own
    /// queue. One `poll_fn`, not an async block: this is the future an idle direction holds.
    fn await_passed(&mut self) -> impl Future<Output = Next> + '_ {
        // A move closure holds `self` alone, not a reference to each field it reads.
        poll_fn(move |cx| {
            // poll_read_ready keeps the waker in the socket's registration, where
            // readable() would hold a waiter in this future; this direction is the
            // socket's only reader.
            if let Err(err) = ready!(self.src.stream().poll_read_ready(cx)) {
                return Poll::Ready(Err(End::from_io(&err)));
            }
            let passed = self.kernel.counters(self.src.cookie()).passed;
            Poll::Ready(Ok(if passed > self.read.load(Relaxed) {
                Phase::CatchingUp
            } else {
                Phase::Passing
            }))
        })
    }

    /// [`Phase::Passing`]: reads what was passed and writes it to `dst`, behind every byte
    /// redirected before it, then hands off again.
    async fn relay_passed(&mut self) -> Next {
        let mut buf = self
            .buf
            .take()
            .unwrap_or_else(|| vec![0; BUFFER].into_boxed_slice());
        let n = match self.src.stream().try_read(&mut buf) {
            Ok(0) => return Ok(Phase::Draining),
            Ok(n) => n,
            // Woken with nothing to read (the readiness left over from the handshake, say):
            // an idle connection keeps no buffer.
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return self.hand_off(),
            Err(err) => return Err(End::from_io(&err)),
        };
        let counters = self.kernel.counters(self.src.cookie());
        if counters.uncut > 0 {
            return Err(self.uncut());
        }
        // Redirected skbs may still wait in the peer's psock queue; ours must not overtake
        // them.
        if counters.redirected > 0 {
            let target = self.written + counters.redirected;
            fin::drained(self.src, self.dst.stream(), target).await?;
        }
        if let Err(err) = write_all(self.dst.stream(), &buf[..n]).await {
            return Err(End::from_io(&err));
        }
        self.written += n as u64;
        let total = self.read.fetch_add(n as u64, Relaxed) + n as u64;
        // Kept while more passed bytes wait; caught up, the handoff completes now.
        if counters.passed != total {
            self.buf = Some(buf);
        }
        self.hand_off()
    }

    /// [`Phase::CatchingUp`]: relays the bytes passed while the peer had no room and
    /// completes the handoff again. Reading them as they come, `go` chased `passed` for as
    /// long as the sender kept up (most of a 4 GiB transfer, measured), since every read
    /// reopened the window. Peeked bytes stay queued instead: each round writes the ones
    /// not written yet, the receive queue fills, the window shuts, `passed` stops moving,
    /// and `go` is set to it before a byte is consumed, so the verdict redirects whatever
    /// comes next. Gives up (consuming what it wrote) when the peer lacks room, rather than
    /// hold a large buffer for a slow peer.
    async fn catch_up(&mut self) -> Next {
        let io_end = |err: io::Error| End::from_io(&err);
        let (kernel, src, dst) = (self.kernel, self.src, self.dst);
        let read = self.read.load(Relaxed);
        let mut counters = kernel.counters(src.cookie());
        let mut buf = Vec::new();
        let mut share = BufferShare::default();
        // Bytes at the head of `src`'s queue already written to `dst`.
        let mut sent = 0u64;
        let caught_up = loop {
            let pending = counters.passed.saturating_sub(read);
            if pending == sent {
                break Some(counters.passed);
            }
            let room = sockopt::send_space(dst.stream()).map_err(io_end)? / 2;
            if pending > CATCH_UP || room < pending - sent || !share.grow(pending) {
                break None;
            }
            buf.resize(pending as usize, 0);
            let peeked = match sockopt::recv(src.stream(), &mut buf, libc::MSG_PEEK) {
                Ok(n) => n as u64,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => 0,
                Err(err) => return Err(io_end(err)),
            };
            // Counters read after the peek, so ordered after it by the socket's locks: an
            // uncut skb among the peeked bytes must not reach the peer.
            if kernel.counters(src.cookie()).uncut > 0 {
                return Err(self.uncut());
            }
            // Passed bytes not readable yet (queued behind the psock backlog): plain reads.
            if peeked <= sent {
                break None;
            }
            if counters.redirected > 0 {
                fin::drained(src, dst.stream(), self.written + counters.redirected).await?;
            }
            write_all(dst.stream(), &buf[sent as usize..peeked as usize])
                .await
                .map_err(io_end)?;
            self.written += peeked - sent;
            sent = peeked;
            counters = kernel.counters(src.cookie());
        };
        // Handed off before the written bytes are consumed, so the window stays shut until
        // the verdict redirects.
        if let Some(go) = caught_up {
            self.set_go(go)?;
        }
        consume(src.stream(), &mut buf, sent).map_err(io_end)?;
        self.read.fetch_add(sent, Relaxed);
        if caught_up.is_none() && sent == 0 {
            // Nothing moved: a plain read waits for readiness, where handing off and
            // waiting again would spin on readiness the peek never cleared.
            return Ok(Phase::Passing);
        }
        self.hand_off()
    }

    /// [`Phase::Draining`]: once the EOF is final and `dst`'s send queue has taken every
    /// redirected byte, passes the FIN on. An early EOF goes back to waiting.
    async fn drain_and_finish(&mut self) -> Next {
        let (kernel, src, written) = (self.kernel, self.src, self.written);
        // Read once the EOF is final: `redirected` cannot grow after it.
        let drain_to = || Some(written + kernel.counters(src.cookie()).redirected);
        let read = self.read.load(Relaxed);
        match fin::finish(src, self.dst.stream(), read, &mut self.eof_since, drain_to).await {
            Some(end) => Err(end),
            None => self.hand_off(),
        }
    }

    /// Writes the handoff, into [`Phase::HandedOff`]: the verdict redirects once `go` bytes
    /// have passed; userspace has written `written` bytes to `dst` itself.
    fn set_go(&mut self, go: u64) -> Next {
        let handoff = Handoff {
            peer: self.dst.cookie(),
            go,
            written: self.written,
            conn: self.src.conn(),
        };
        self.kernel
            .set_handoff(self.src.cookie(), handoff)
            .map_err(|err| {
                log::warn!(
                    "sock {}: handoff map update failed: {err}",
                    self.src.cookie()
                );
                End::Error
            })?;
        self.go = go;
        Ok(Phase::HandedOff)
    }

    /// The direction's end when the verdict passed an skb it could not cut
    /// (ARCHITECTURE.md, "The duplicate-bytes workaround").
    fn uncut(&self) -> End {
        log::error!(
            "conn {}: sock {}: the kernel passed bytes that may repeat earlier ones and could \
             not be cut; resetting",
            self.src.conn(),
            self.src.cookie()
        );
        End::Error
    }
}

/// Reads and drops the `len` bytes at the head of `src`'s queue, which a peek has seen.
fn consume(src: &TcpStream, buf: &mut Vec<u8>, len: u64) -> io::Result<()> {
    buf.resize(len as usize, 0);
    let mut done = 0;
    while done < buf.len() {
        match sockopt::recv(src, &mut buf[done..], 0)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => done += n,
        }
    }
    Ok(())
}
