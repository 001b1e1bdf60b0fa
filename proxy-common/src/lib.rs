//! The map contract between the kernel program (`proxy-ebpf`) and the agent (`proxy-user`).
//!
//! Every map is keyed by the socket cookie: `bpf_get_socket_cookie(skb)` in the kernel and
//! `getsockopt(SO_COOKIE)` in userspace give the same id for the same socket.
//!
//! Each value has exactly one writer per field, so neither side ever overwrites the other's
//! update: userspace replaces [`Handoff`] values whole, and the verdict program updates
//! [`SockCounters`] in place.

#![no_std]

/// The SOCKHASH of every proxied socket, inserted by userspace at accept or connect time.
/// The stream verdict program is attached to it.
pub const SOCKS_MAP: &str = "SOCKS";
/// `cookie -> Handoff`: present once userspace hands that socket's direction to the kernel.
pub const HANDOFF_MAP: &str = "HANDOFF";
/// `cookie -> SockCounters`: what the verdict did with each socket's bytes.
pub const COUNTERS_MAP: &str = "COUNTERS";

/// Capacity of every per-socket map: two sockets per connection.
pub const MAX_SOCKETS: u32 = 1 << 17;

/// How userspace hands one direction (the bytes received on the key socket) to the kernel.
///
/// Written whole by userspace, never by the kernel; read by the verdict program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handoff {
    /// Cookie of the socket that the key socket's bytes are redirected to.
    /// Written by userspace; read by the verdict.
    pub peer: u64,
    /// How many bytes of this socket userspace has read and already written to the peer.
    /// The verdict redirects only while `go == SockCounters::passed`, so every byte it passed
    /// to userspace is written to the peer before any later byte is redirected.
    /// Written by userspace; read by the verdict.
    pub go: u64,
    /// Of the peer's count of bytes ever queued for sending (`bytes_acked + write_seq -
    /// snd_una`), those the verdict did not redirect: what userspace wrote to it (relayed
    /// during the handshake, or passed and relayed since), plus 1 on a socket sockgate
    /// connected, whose `bytes_acked` counts the SYN. The rest are redirected bytes the
    /// peer's send queue has taken, which is how the verdict tells how many still wait in
    /// the peer's psock queue (see [`SockLayout`]). Written by userspace; read by the
    /// verdict.
    pub written: u64,
    /// The agent's connection id, so the kernel's log lines name the same connection as
    /// the decision log. Written by userspace; read by the verdict (for logging only).
    pub conn: u64,
}

/// Per-socket counters of the verdict program.
///
/// Created zeroed by userspace before the socket enters [`SOCKS_MAP`] and deleted by
/// userspace when the connection ends; in between only the verdict writes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockCounters {
    /// Bytes the verdict passed to this socket's own receive queue for userspace to read.
    /// Written by the verdict; read by userspace (to know the handoff is complete).
    pub passed: u64,
    /// Bytes the verdict redirected to the peer's send side.
    /// Written by the verdict; read by userspace (FIN drain check, byte counts, idleness).
    pub redirected: u64,
    /// Redirects that failed (peer gone from the map); those bytes were passed instead.
    /// Written by the verdict; read by userspace (logs and tests).
    pub redirect_failures: u64,
    /// The TCP sequence number just past the last byte the verdict let through, with
    /// [`SEQ_KNOWN`] set once there is one. Written and read by the verdict only.
    pub next_seq: u64,
    /// Bytes the kernel handed to the verdict a second time, which it cut off. A segment
    /// that overlaps bytes already received (a retransmission cut differently, an
    /// out-of-order segment that a retransmission covered in part) stays whole in the
    /// receive queue: `tcp_recvmsg` skips the overlap, but `tcp_read_skb`, which feeds the
    /// verdict, hands over the whole skb, so every overlapping byte would reach the peer
    /// twice. Written by the verdict; read by userspace (logs and tests).
    pub overlap: u64,
    /// Skbs that may repeat bytes and could not be cut: their sequence numbers did not
    /// check out, or trimming failed. They are passed, never redirected, and userspace
    /// resets the connection rather than relay them. Written by the verdict; read by
    /// userspace.
    pub uncut: u64,
}

/// Marks [`SockCounters::next_seq`] as set; the sequence number is the low 32 bits.
pub const SEQ_KNOWN: u64 = 1 << 32;

/// Where the verdict reads an skb's TCP sequence numbers: `struct sk_buff` holds `cb` at
/// this offset, and `struct tcp_skb_cb` starts with `seq` and `end_seq` (u32 each). The
/// context is not allowed to reach them, so the verdict reads kernel memory there;
/// userspace checks this layout against the running kernel's BTF before loading, and the
/// verdict checks every skb's pair against its length.
pub const SKB_CB_OFFSET: usize = 40;

/// Where the verdict finds a peer socket's send-queue state in the running kernel's
/// `struct tcp_sock` (its `struct sock` fields included: a tcp_sock starts with one), in
/// bytes. Redirected skbs wait in the peer's psock queue, charged to no socket, so TCP
/// never closes the sender's window for them; the verdict therefore redirects an skb only
/// while the bytes still waiting there plus this one fit in half the peer's free send
/// buffer, read at that moment, and passes otherwise (see proxy-user's
/// `datapath::sockmap`). Written by userspace, from vmlinux BTF, into the verdict's
/// read-only global [`SOCK_LAYOUT`] before loading; read by the verdict.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockLayout {
    /// `sock.sk_sndbuf` (int): the send buffer size.
    pub sndbuf: u32,
    /// `sock.sk_wmem_queued` (int): memory queued for sending, skb overhead included.
    pub wmem_queued: u32,
    /// `tcp_sock.bytes_acked` (u64): bytes the receiver acknowledged.
    pub bytes_acked: u32,
    /// `tcp_sock.snd_una` (u32): the first unacknowledged sequence number.
    pub snd_una: u32,
    /// `tcp_sock.write_seq` (u32): the sequence number after the last queued byte.
    pub write_seq: u32,
    /// Unused; keeps the size a multiple of 8. Zero.
    pub _pad: u32,
}

/// The verdict's global holding the [`SockLayout`].
pub const SOCK_LAYOUT: &str = "SOCK_LAYOUT";

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), Copy, made only of u64s or only of u32s, so they have no
    // padding and every bit pattern is valid.
    unsafe impl aya::Pod for super::Handoff {}
    unsafe impl aya::Pod for super::SockCounters {}
    unsafe impl aya::Pod for super::SockLayout {}
}
