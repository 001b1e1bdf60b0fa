//! sockgate's kernel side: one `sk_skb/stream_verdict` program on a SOCKHASH that splices
//! each handed-off socket to its peer. Policy never lives here; this only moves bytes.

#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        BPF_F_NO_PREALLOC,
        sk_action::{SK_DROP, SK_PASS},
    },
    cty::c_void,
    helpers::{
        bpf_get_socket_cookie, bpf_map_lookup_elem, bpf_probe_read_kernel, bpf_sk_release,
        bpf_skc_to_tcp_sock,
    },
    macros::{map, stream_verdict},
    maps::{HashMap, SockHash},
    programs::SkBuffContext,
};
use aya_log_ebpf::{info, warn};
use proxy_common::{Handoff, MAX_SOCKETS, SEQ_KNOWN, SKB_CB_OFFSET, SockCounters, SockLayout};

#[map(name = "SOCKS")]
static SOCKS: SockHash<u64> = SockHash::with_max_entries(MAX_SOCKETS, 0);

// NO_PREALLOC: an element replaced by userspace is freed only after an RCU grace period, so
// the verdict never reads a recycled element.
#[map(name = "HANDOFF")]
static HANDOFF: HashMap<u64, Handoff> = HashMap::with_max_entries(MAX_SOCKETS, BPF_F_NO_PREALLOC);

#[map(name = "COUNTERS")]
static COUNTERS: HashMap<u64, SockCounters> =
    HashMap::with_max_entries(MAX_SOCKETS, BPF_F_NO_PREALLOC);

/// Set by userspace at load, from the kernel's BTF; read with `read_volatile`, as the
/// compiler would fold these zeros.
#[unsafe(no_mangle)]
static SOCK_LAYOUT: SockLayout = SockLayout {
    sndbuf: 0,
    wmem_queued: 0,
    bytes_acked: 0,
    snd_una: 0,
    write_seq: 0,
    _pad: 0,
};

/// Every skb with bytes gets SK_PASS, with or without a redirect set: SK_DROP would discard
/// bytes the kernel has already ACKed (sk_psock_verdict_apply, net/core/skmsg.c). Only an
/// empty skb (a bare FIN) is dropped.
#[stream_verdict]
pub fn sockgate_verdict(ctx: SkBuffContext) -> u32 {
    try_verdict(&ctx)
}

#[inline(always)]
fn try_verdict(ctx: &SkBuffContext) -> u32 {
    // SAFETY: the helper only reads the skb's socket.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    let len = u64::from(ctx.len());
    // Not ours (no counters yet or any more): the socket's own queue, where recv() reads it.
    let Some(counters) = COUNTERS.get_ptr_mut(cookie) else {
        return SK_PASS;
    };
    // SAFETY: only this program writes the counters, and verdicts for one socket run
    // serialised under its lock (tcp_read_skb), so this is the only writer.
    let counters = unsafe { &mut *counters };
    // A bare FIN comes through here as an empty skb (tcp_read_skb, net/ipv4/tcp.c); TCP has
    // already recorded the FIN, so recv() reports EOF without it. Queued anywhere it does
    // harm: the psock backlog that meets it (our socket's if passed behind pending
    // redirects, the peer's if redirected) sends or delivers 0 bytes, counts that as a hard
    // error (sk_psock_backlog, net/core/skmsg.c), reports EPIPE and stops transmitting, and
    // every byte redirected to that socket afterwards is dropped. Nothing to lose: drop it.
    if len == 0 {
        return SK_DROP;
    }
    let len = match cut_overlap(ctx, counters, len) {
        Cut::Keep(len) => len,
        Cut::Drop => return SK_DROP,
        // Userspace resets the connection when it sees `uncut`; it must not be redirected.
        Cut::Uncut(len) => return pass(counters, len),
    };
    // Not handed off yet, or userspace has not caught up with what it was passed: pass, so
    // that userspace writes those bytes to the peer before anything later is redirected.
    let handoff = match HANDOFF.get_ptr(cookie) {
        // SAFETY: a NO_PREALLOC element stays valid for this RCU read section; copy it out.
        Some(h) => unsafe { *h },
        None => return pass(counters, len),
    };
    let mut peer = handoff.peer;
    // No room at the peer: passing closes the TCP window once userspace stops reading,
    // which is the backpressure a redirect lacks. Every later skb passes too (`go` now
    // lags) until userspace has relayed the passed bytes.
    if handoff.go != counters.passed || !peer_has_room(&mut peer, &handoff, counters, len) {
        return pass(counters, len);
    }
    // Egress redirect (flags 0): the skb is sent out of the peer socket. A miss returns
    // SK_DROP without setting a redirect (bpf_sk_redirect_hash, net/core/sock_map.c); we pass
    // instead so nothing is lost.
    if SOCKS.redirect_skb(ctx, &mut peer, 0) != i64::from(SK_PASS) {
        counters.redirect_failures += 1;
        warn!(
            ctx,
            "conn {}: sock {} redirect to {} failed, {} bytes passed",
            handoff.conn,
            cookie,
            peer,
            len
        );
        return pass(counters, len);
    }
    if counters.redirected == 0 {
        info!(
            ctx,
            "conn {}: first skb spliced, sock {} to {} ({} bytes)", handoff.conn, cookie, peer, len
        );
    }
    counters.redirected += len;
    SK_PASS
}

/// Whether `len` more bytes fit in half the peer's free send buffer, after the redirected
/// bytes still waiting in its psock queue: those the peer's send queue has not taken, and
/// it has taken all it ever queued (`bytes_acked + write_seq - snd_una`) but the handoff's
/// `written`. Half, as the kernel counts skb overhead in `sk_wmem_queued` too. The fields
/// are read without the peer's lock, so a reading can be off by what moved meanwhile.
/// True for a peer gone from the map, so the redirect below fails and says so.
#[inline(always)]
fn peer_has_room(peer: &mut u64, handoff: &Handoff, counters: &SockCounters, len: u64) -> bool {
    let socks = core::ptr::from_ref(&SOCKS).cast_mut().cast::<c_void>();
    // SAFETY: a lookup from a program takes a reference on the socket, released below.
    let sk = unsafe { bpf_map_lookup_elem(socks, core::ptr::from_mut(peer).cast()) };
    if sk.is_null() {
        return true;
    }
    // SAFETY: `sk` is a referenced socket; the cast checks that it is a TCP one.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk) };
    let state = if tp.is_null() {
        None
    } else {
        // SAFETY: the layout is the running kernel's; the reads are checked by the helper.
        unsafe { send_queue(tp.cast::<u8>()) }
    };
    // SAFETY: the reference taken by the lookup.
    unsafe { bpf_sk_release(sk) };
    let Some((queued_ever, free)) = state else {
        return false;
    };
    let taken = queued_ever.saturating_sub(handoff.written);
    let waiting = counters.redirected.saturating_sub(taken);
    waiting + len <= free / 2
}

/// A TCP socket's bytes ever queued for sending, and its free send buffer.
#[inline(always)]
unsafe fn send_queue(tp: *const u8) -> Option<(u64, u64)> {
    // SAFETY: userspace wrote the global before loading; nothing writes it after.
    let layout = unsafe { core::ptr::read_volatile(&SOCK_LAYOUT) };
    // SAFETY: bpf_probe_read_kernel fails cleanly on a bad address.
    let field = |at: u32| unsafe { bpf_probe_read_kernel(tp.add(at as usize).cast::<u32>()) };
    let sndbuf = field(layout.sndbuf).ok()? as i32;
    let wmem_queued = field(layout.wmem_queued).ok()? as i32;
    // In this order, an ACK between the reads can only make the sum short (the waiting
    // bytes seem more: the safe side), and write_seq, read last, is never behind snd_una.
    // SAFETY: as above.
    let bytes_acked =
        unsafe { bpf_probe_read_kernel(tp.add(layout.bytes_acked as usize).cast::<u64>()) }.ok()?;
    let snd_una = field(layout.snd_una).ok()?;
    let write_seq = field(layout.write_seq).ok()?;
    let queued_ever = bytes_acked + u64::from(write_seq.wrapping_sub(snd_una));
    let free = if sndbuf > wmem_queued {
        (sndbuf - wmem_queued) as u64
    } else {
        0
    };
    Some((queued_ever, free))
}

enum Cut {
    /// Deliver the skb, now this long.
    Keep(u64),
    /// Every byte was delivered before.
    Drop,
    /// It may repeat bytes and could not be cut; pass it, now this long.
    Uncut(u64),
}

/// The most `bpf_skb_adjust_room` removes per call (sk_skb_adjust_room, net/core/filter.c).
const CUT_STEP: u32 = 0xfff;
/// Calls per skb: 528,255 bytes, more than the largest skb TCP receives (64 KiB GSO on
/// loopback, 512 KiB with BIG TCP). A larger overlap is left uncut, and reset.
const MAX_CUTS: u32 = 129;

/// Cuts off the front of an skb whatever this socket's verdict already let through.
/// `tcp_read_skb` hands over whole skbs from the receive queue, including one that starts
/// before `rcv_nxt` had reached it (see `SockCounters::overlap`); without this the peer
/// got those bytes twice (datapath::prehandoff_flood_sockmap, every run).
#[inline(always)]
fn cut_overlap(ctx: &SkBuffContext, counters: &mut SockCounters, len: u64) -> Cut {
    // SAFETY: the context is the kernel's sk_buff; the helper reads kernel memory safely.
    let seqs = unsafe {
        bpf_probe_read_kernel(
            ctx.skb
                .skb
                .cast::<u8>()
                .add(SKB_CB_OFFSET)
                .cast::<[u32; 2]>(),
        )
    };
    let Ok([seq, end_seq]) = seqs else {
        counters.uncut += 1;
        return Cut::Uncut(len);
    };
    // A FIN takes one sequence number of its own.
    let span = u64::from(end_seq.wrapping_sub(seq));
    if span != len && span != len + 1 {
        counters.uncut += 1;
        return Cut::Uncut(len);
    }
    let known = counters.next_seq & SEQ_KNOWN != 0;
    let overlap = (counters.next_seq as u32).wrapping_sub(seq) as i32;
    if known && overlap > 0 && overlap as u64 >= len {
        counters.overlap += len;
        return Cut::Drop;
    }
    counters.next_seq = SEQ_KNOWN | u64::from(end_seq);
    if !known || overlap == 0 {
        return Cut::Keep(len);
    }
    // Starts past the next byte: bytes never reached the verdict. Not seen, but a silent
    // loss is worse than a reset.
    if overlap < 0 {
        counters.uncut += 1;
        return Cut::Uncut(len);
    }
    let overlap = overlap as u32;
    let mut left = overlap;
    for _ in 0..MAX_CUTS {
        if left == 0 {
            break;
        }
        let step = if left < CUT_STEP { left } else { CUT_STEP };
        if ctx.adjust_room(-(step as i32), 0, 0).is_err() {
            break;
        }
        left -= step;
    }
    if left != 0 {
        counters.uncut += 1;
        return Cut::Uncut(len - u64::from(overlap - left));
    }
    counters.overlap += u64::from(overlap);
    Cut::Keep(len - u64::from(overlap))
}

#[inline(always)]
fn pass(counters: &mut SockCounters, len: u64) -> u32 {
    counters.passed += len;
    SK_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
