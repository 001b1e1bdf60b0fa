//! The PROXY protocol header a load balancer puts before a client's stream (HAProxy's
//! proxy-protocol.txt: v1 is a text line, v2 binary), and the v2 header sockgate sends.
//!
//! The `ppp` crate parses a header; where one ends ([`frame`]) is decided here, from its
//! first bytes, so that the session reads exactly the header and never a byte of the stream
//! after it (ARCHITECTURE.md, "The handoff: go and passed").

use std::net::{IpAddr, SocketAddr};

use ppp::{v1, v2};
use serde::Deserialize;

/// The longest v1 header, `\r\n` included (proxy-protocol.txt, 2.1).
pub const V1_MAX: usize = 107;
/// The longest v2 header accepted: the 16 fixed bytes, the addresses and room for TLVs
/// (AWS's and HAProxy's are tens of bytes). A v2 header may claim up to 64 KiB; a longer one
/// than this is refused rather than buffered.
pub const V2_MAX: usize = 1024;
/// The fixed part of a v2 header: the signature, version and command, family, length.
const V2_FIXED: usize = 16;

/// A PROXY protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Version {
    /// The text header, `PROXY TCP4 ...\r\n`.
    V1,
    /// The binary header.
    V2,
}

impl Version {
    /// The longest header of this version that is accepted.
    pub fn max_len(self) -> usize {
        match self {
            Version::V1 => V1_MAX,
            Version::V2 => V2_MAX,
        }
    }
}

/// How much of a stream's first bytes is the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// All the bytes so far belong to the header, which goes on.
    NeedMore,
    /// The header is the first `len` bytes.
    Complete(usize),
    /// The header would be longer than [`Version::max_len`].
    TooLarge,
    /// The bytes do not start a header of this version.
    NotHeader,
}

/// Where a `version` header starting `bytes` ends, as far as `bytes` tell.
pub fn frame(version: Version, bytes: &[u8]) -> Frame {
    match version {
        Version::V1 => {
            let prefix = b"PROXY ";
            let n = bytes.len().min(prefix.len());
            if bytes[..n] != prefix[..n] {
                return Frame::NotHeader;
            }
            match bytes.iter().take(V1_MAX).position(|&b| b == b'\n') {
                Some(end) => Frame::Complete(end + 1),
                None if bytes.len() >= V1_MAX => Frame::TooLarge,
                None => Frame::NeedMore,
            }
        }
        Version::V2 => {
            let prefix = v2::PROTOCOL_PREFIX;
            let n = bytes.len().min(prefix.len());
            if bytes[..n] != prefix[..n] {
                return Frame::NotHeader;
            }
            let Some(&[hi, lo]) = bytes.get(V2_FIXED - 2..V2_FIXED) else {
                return Frame::NeedMore;
            };
            let len = V2_FIXED + usize::from(u16::from_be_bytes([hi, lo]));
            if len > V2_MAX {
                Frame::TooLarge
            } else if bytes.len() < len {
                Frame::NeedMore
            } else {
                Frame::Complete(len)
            }
        }
    }
}

/// What a header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// A client's connection: where it came from and where it went, at the balancer.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// No client address: a v2 `LOCAL` command or a v1 `UNKNOWN` line, which balancers
    /// send for their health checks.
    Local,
}

/// Why a framed header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// It does not parse (the `ppp` crate's reason).
    #[error("malformed: {0}")]
    Malformed(String),
    /// It is well-formed but names no TCP client over IP (a UNIX socket, a datagram, an
    /// unspecified family): sockgate has no address to decide on.
    #[error("not a TCP client over IP")]
    NotTcp,
}

/// Parses `bytes`, exactly one header as [`frame`] found it.
pub fn parse(version: Version, bytes: &[u8]) -> Result<Header, HeaderError> {
    let malformed = |e: &dyn std::fmt::Display| HeaderError::Malformed(e.to_string());
    match version {
        Version::V1 => {
            let header = v1::Header::try_from(bytes).map_err(|e| malformed(&e))?;
            // ppp stops at the first `\r`; anything between it and the `\n` is garbage.
            if header.header.len() != bytes.len() {
                return Err(HeaderError::Malformed("stray carriage return".into()));
            }
            Ok(match header.addresses {
                v1::Addresses::Tcp4(a) => proxied(
                    (a.source_address.into(), a.source_port),
                    (a.destination_address.into(), a.destination_port),
                ),
                v1::Addresses::Tcp6(a) => proxied(
                    (a.source_address.into(), a.source_port),
                    (a.destination_address.into(), a.destination_port),
                ),
                v1::Addresses::Unknown => Header::Local,
            })
        }
        Version::V2 => {
            let header = v2::Header::try_from(bytes).map_err(|e| malformed(&e))?;
            if header.command == v2::Command::Local {
                return Ok(Header::Local);
            }
            if header.protocol != v2::Protocol::Stream {
                return Err(HeaderError::NotTcp);
            }
            match header.addresses {
                v2::Addresses::IPv4(a) => Ok(proxied(
                    (a.source_address.into(), a.source_port),
                    (a.destination_address.into(), a.destination_port),
                )),
                v2::Addresses::IPv6(a) => Ok(proxied(
                    (a.source_address.into(), a.source_port),
                    (a.destination_address.into(), a.destination_port),
                )),
                v2::Addresses::Unspecified | v2::Addresses::Unix(_) => Err(HeaderError::NotTcp),
            }
        }
    }
}

/// A proxied header's addresses, an IPv4-mapped one as the IPv4 address it is, so that
/// the policy's IPv4 `sources` match it.
fn proxied(source: (IpAddr, u16), destination: (IpAddr, u16)) -> Header {
    let canonical = |(ip, port): (IpAddr, u16)| SocketAddr::new(ip.to_canonical(), port);
    Header::Proxied {
        source: canonical(source),
        destination: canonical(destination),
    }
}

/// The v2 `PROXY` header for a TCP connection from `source` to `destination`. Both are
/// sent as IPv4 (`TCP4`) when both are IPv4 or IPv4-mapped: a `TCP6 ::ffff:a.b.c.d`
/// header breaks servers that expect the IPv4 address (dlundquist/sniproxy#333).
pub fn v2_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (src_ip, dst_ip) = (source.ip().to_canonical(), destination.ip().to_canonical());
    let (src_port, dst_port) = (source.port(), destination.port());
    let addresses: v2::Addresses = match (src_ip, dst_ip) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => v2::IPv4::new(src, dst, src_port, dst_port).into(),
        _ => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            v2::IPv6::new(v6(src_ip), v6(dst_ip), src_port, dst_port).into()
        }
    };
    let command = v2::Version::Two | v2::Command::Proxy;
    v2::Builder::with_addresses(command, v2::Protocol::Stream, addresses)
        .build()
        // Building writes into a Vec, which cannot fail.
        .expect("a PROXY v2 header without TLVs builds")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_frames_and_parses() {
        let line = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\n";
        let mut stream = line.to_vec();
        stream.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(frame(Version::V1, &line[..10]), Frame::NeedMore);
        assert_eq!(frame(Version::V1, &stream), Frame::Complete(line.len()));
        assert_eq!(
            parse(Version::V1, line),
            Ok(Header::Proxied {
                source: addr("192.0.2.7:40000"),
                destination: addr("198.51.100.1:443"),
            })
        );
        assert_eq!(parse(Version::V1, b"PROXY UNKNOWN\r\n"), Ok(Header::Local));
    }

    #[test]
    fn v1_refusals() {
        assert_eq!(frame(Version::V1, b"\x16\x03\x01"), Frame::NotHeader);
        assert_eq!(frame(Version::V1, b"GET / HTTP/1.1\r\n"), Frame::NotHeader);
        assert_eq!(frame(Version::V1, &[b'P'; 200]), Frame::NotHeader);
        let long = [b"PROXY ".as_slice(), &[b'1'; 200]].concat();
        assert_eq!(frame(Version::V1, &long), Frame::TooLarge);
        let stray = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\rx\n";
        assert!(parse(Version::V1, stray).is_err());
        let bad = b"PROXY TCP4 192.0.2.700 198.51.100.1 40000 443\r\n";
        assert!(matches!(
            parse(Version::V1, bad),
            Err(HeaderError::Malformed(_))
        ));
    }

    #[test]
    fn v2_round_trips_and_maps_ipv4() {
        let header = v2_header(addr("[::ffff:192.0.2.7]:40000"), addr("198.51.100.1:443"));
        // TCP4 (0x11) and 12 address bytes, not TCP6 ::ffff:...
        assert_eq!(&header[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(frame(Version::V2, &header[..15]), Frame::NeedMore);
        let mut stream = header.clone();
        stream.push(0x16);
        assert_eq!(frame(Version::V2, &stream), Frame::Complete(header.len()));
        assert_eq!(
            parse(Version::V2, &header),
            Ok(Header::Proxied {
                source: addr("192.0.2.7:40000"),
                destination: addr("198.51.100.1:443"),
            })
        );
        let six = v2_header(addr("[2001:db8::7]:40000"), addr("198.51.100.1:443"));
        assert_eq!(&six[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(
            parse(Version::V2, &six),
            Ok(Header::Proxied {
                source: addr("[2001:db8::7]:40000"),
                destination: addr("198.51.100.1:443"),
            })
        );
    }

    #[test]
    fn v2_local_and_refusals() {
        let mut local = v2::PROTOCOL_PREFIX.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(frame(Version::V2, &local), Frame::Complete(16));
        assert_eq!(parse(Version::V2, &local), Ok(Header::Local));
        let mut unix = v2::PROTOCOL_PREFIX.to_vec();
        unix.extend_from_slice(&[0x21, 0x31, 0, 216]);
        unix.extend_from_slice(&[0; 216]);
        assert_eq!(parse(Version::V2, &unix), Err(HeaderError::NotTcp));
        let mut huge = v2::PROTOCOL_PREFIX.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(frame(Version::V2, &huge), Frame::TooLarge);
        assert_eq!(frame(Version::V2, b"PROXY TCP4 "), Frame::NotHeader);
        let mut short = v2::PROTOCOL_PREFIX.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert!(matches!(
            parse(Version::V2, &short),
            Err(HeaderError::Malformed(_))
        ));
    }
}
