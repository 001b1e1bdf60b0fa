//! What the client's first bytes look like. Policy rules can be limited to protocols.

use std::fmt;
use std::str::FromStr;

/// The protocol a connection's first client bytes look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// A TLS handshake record.
    Tls,
    /// An SSH identification string (`SSH-`).
    Ssh,
    /// An HTTP/1 request line or the HTTP/2 preface.
    Http,
    /// Bytes that are none of the above.
    Unknown,
    /// No bytes at all: the client stayed silent (a server-speaks-first protocol).
    None,
}

impl Protocol {
    /// Every protocol, in a fixed order (used for bit sets and help texts).
    pub const ALL: [Protocol; 5] = [Self::Tls, Self::Ssh, Self::Http, Self::Unknown, Self::None];

    /// The config and JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tls => "tls",
            Self::Ssh => "ssh",
            Self::Http => "http",
            Self::Unknown => "unknown",
            Self::None => "none",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A protocol name that is not one of tls, ssh, http, unknown, none.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol `{0}` (expected tls, ssh, http, unknown or none)")]
pub struct UnknownProtocol(pub String);

impl FromStr for Protocol {
    type Err = UnknownProtocol;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownProtocol(s.to_owned()))
    }
}

/// Request methods that start an HTTP/1 request line, with their space; `PRI ` starts the
/// HTTP/2 connection preface.
const HTTP_METHODS: [&[u8]; 10] = [
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"CONNECT ",
    b"OPTIONS ",
    b"TRACE ",
    b"PATCH ",
    b"PRI ",
];

/// Classifies the client's first bytes. It looks at no more than the first few bytes, and a
/// prefix of a signature counts as a match, so it can be called as soon as anything arrives.
pub fn classify(first: &[u8]) -> Protocol {
    if first.is_empty() {
        return Protocol::None;
    }
    if looks_like_tls(first) {
        return Protocol::Tls;
    }
    if starts_with_or_is_prefix(first, b"SSH-") {
        return Protocol::Ssh;
    }
    if HTTP_METHODS
        .iter()
        .any(|m| starts_with_or_is_prefix(first, m))
    {
        return Protocol::Http;
    }
    Protocol::Unknown
}

/// A handshake record header: content type 22, then a 3.x record version with x <= 4.
pub(crate) fn looks_like_tls(first: &[u8]) -> bool {
    match first {
        [] => false,
        [0x16] => true,
        [0x16, 0x03] => true,
        [0x16, 0x03, minor, ..] => *minor <= 0x04,
        _ => false,
    }
}

/// `bytes` starts with `sig`, or is a (non-empty) prefix of it.
fn starts_with_or_is_prefix(bytes: &[u8], sig: &[u8]) -> bool {
    let n = bytes.len().min(sig.len());
    bytes[..n] == sig[..n]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_first_bytes() {
        assert_eq!(classify(b""), Protocol::None);
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02, 0x00]), Protocol::Tls);
        assert_eq!(classify(&[0x16]), Protocol::Tls);
        assert_eq!(classify(&[0x16, 0x03, 0x09]), Protocol::Unknown);
        assert_eq!(classify(&[0x17, 0x03, 0x03]), Protocol::Unknown);
        assert_eq!(classify(b"SSH-2.0-OpenSSH_9.2\r\n"), Protocol::Ssh);
        assert_eq!(classify(b"SS"), Protocol::Ssh);
        assert_eq!(classify(b"SSX"), Protocol::Unknown);
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Protocol::Http);
        assert_eq!(
            classify(b"CONNECT example.com:443 HTTP/1.1\r\n"),
            Protocol::Http
        );
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), Protocol::Http);
        assert_eq!(classify(b"P"), Protocol::Http);
        assert_eq!(classify(b"GETX"), Protocol::Unknown);
        assert_eq!(classify(b"get / HTTP/1.1"), Protocol::Unknown);
        assert_eq!(classify(b"\x00\x00"), Protocol::Unknown);
    }

    #[test]
    fn protocol_names_round_trip() {
        for p in Protocol::ALL {
            assert_eq!(p.as_str().parse::<Protocol>(), Ok(p));
        }
        assert!("TLS".parse::<Protocol>().is_err());
    }
}
