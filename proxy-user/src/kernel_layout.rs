//! The pieces of kernel layout the verdict relies on, from the running kernel's BTF: where
//! an skb keeps its TCP sequence numbers (`proxy_common::SKB_CB_OFFSET`, checked) and where
//! a TCP socket keeps its send-queue state (`proxy_common::SockLayout`, read). Only what
//! that needs of BTF is read: the header, the strings and the struct members.

use proxy_common::{SKB_CB_OFFSET, SockLayout};

const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("reading {VMLINUX_BTF}: {0}")]
    Read(#[from] std::io::Error),
    #[error("{VMLINUX_BTF} is not BTF this reader understands")]
    Format,
    #[error("the kernel has no {0}.{1}")]
    NoMember(&'static str, &'static str),
    #[error("{0}.{1} is at byte {2}, the verdict reads it at {3}")]
    Moved(&'static str, &'static str, u32, usize),
}

/// Checks that `sk_buff.cb` and `tcp_skb_cb.{seq,end_seq}` are where the verdict reads
/// them and that a `tcp_sock` starts with its `sock`, and returns the send-queue offsets.
pub fn read() -> Result<SockLayout, LayoutError> {
    let btf = std::fs::read(VMLINUX_BTF)?;
    let offset = |strukt: &'static str, member: &'static str| {
        member_offset(&btf, strukt, member)?.ok_or(LayoutError::NoMember(strukt, member))
    };
    for (strukt, member, expected) in [
        ("sk_buff", "cb", SKB_CB_OFFSET),
        ("tcp_skb_cb", "seq", 0),
        ("tcp_skb_cb", "end_seq", 4),
        ("tcp_sock", "inet_conn", 0),
        ("inet_connection_sock", "icsk_inet", 0),
        ("inet_sock", "sk", 0),
    ] {
        let at = offset(strukt, member)?;
        if at as usize != expected {
            return Err(LayoutError::Moved(strukt, member, at, expected));
        }
    }
    Ok(SockLayout {
        sndbuf: offset("sock", "sk_sndbuf")?,
        wmem_queued: offset("sock", "sk_wmem_queued")?,
        bytes_acked: offset("tcp_sock", "bytes_acked")?,
        snd_una: offset("tcp_sock", "snd_una")?,
        write_seq: offset("tcp_sock", "write_seq")?,
        _pad: 0,
    })
}

const KIND_STRUCT: u32 = 4;

/// The byte offset of `member` in the first struct named `strukt`.
fn member_offset(btf: &[u8], strukt: &str, member: &str) -> Result<Option<u32>, LayoutError> {
    let u32_at = |at: usize| -> Result<u32, LayoutError> {
        let bytes = btf.get(at..at + 4).ok_or(LayoutError::Format)?;
        Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
    };
    if btf.get(..2) != Some(&[0x9f, 0xeb]) {
        return Err(LayoutError::Format);
    }
    let header = u32_at(4)? as usize;
    let (types_at, types_len) = (header + u32_at(8)? as usize, u32_at(12)? as usize);
    let strings_at = header + u32_at(16)? as usize;
    let name = |off: u32| -> &[u8] {
        let start = strings_at + off as usize;
        let tail = btf.get(start..).unwrap_or_default();
        &tail[..tail.iter().position(|&b| b == 0).unwrap_or(tail.len())]
    };
    let mut at = types_at;
    while at < types_at + types_len {
        let (name_off, info) = (u32_at(at)?, u32_at(at + 4)?);
        let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
        at += 12;
        if kind == KIND_STRUCT && name(name_off) == strukt.as_bytes() {
            for m in 0..vlen {
                let entry = at + 12 * m;
                if name(u32_at(entry)?) == member.as_bytes() {
                    let offset = u32_at(entry + 8)?;
                    // With the kind flag, the high byte is a bitfield size.
                    let bits = if info >> 31 == 1 {
                        offset & 0xff_ffff
                    } else {
                        offset
                    };
                    return Ok(Some(bits / 8));
                }
            }
            return Ok(None);
        }
        at += match kind {
            1 | 14 | 17 => 4,
            3 => 12,
            4 | 5 | 15 | 19 => 12 * vlen,
            6 | 13 => 8 * vlen,
            2 | 7..=12 | 16 | 18 => 0,
            _ => return Err(LayoutError::Format),
        };
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_kernel_has_the_layout_the_verdict_reads() {
        let layout = super::read().expect("kernel layout");
        // All inside a tcp_sock, past its sock_common, and distinct.
        let all = [
            layout.sndbuf,
            layout.wmem_queued,
            layout.bytes_acked,
            layout.snd_una,
            layout.write_seq,
        ];
        for (i, at) in all.iter().enumerate() {
            assert!((100..4096).contains(at), "{layout:?}");
            assert!(!all[..i].contains(at), "{layout:?}");
        }
    }
}
