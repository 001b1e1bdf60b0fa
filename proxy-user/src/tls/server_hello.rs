//! The server's first flight: a ServerHello, a HelloRetryRequest, or an alert.
//!
//! After forwarding a ClientHello, the proxy checks that the server answers with a hello
//! before it gets out of the way; a HelloRetryRequest means a second ClientHello is coming,
//! and that one is checked too.

use tls_parser::TlsExtension;

use super::Malformed;
use super::message::{FirstMessage, Gathered};
use super::record::{ALERT, HANDSHAKE, HEADER_LEN, MAX_FRAGMENT};

/// The ServerHello random that marks a HelloRetryRequest: SHA-256("HelloRetryRequest")
/// (RFC 8446 4.1.3).
pub const HRR_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// The most raw bytes the server's first flight may take before its hello is whole: the
/// largest ServerHello RFC 8446 4.1.3 allows (a 4-byte header; a body of version, random,
/// session id, cipher suite, compression and at most 65,535 bytes of extensions), the headers
/// of the five records that can carry it, and the rest of its last record, which may hold
/// later messages (TLS 1.2's Certificate). It is a protocol bound, not the client's
/// `max_client_hello`: a server cannot be told to send less.
pub const MAX_SERVER_HELLO: usize =
    4 + (2 + 32 + 33 + 2 + 1 + 2 + 65_535) + 5 * HEADER_LEN + MAX_FRAGMENT as usize;

/// The handshake type of a ServerHello (and of a HelloRetryRequest).
const SERVER_HELLO: u8 = 2;
/// The supported_versions extension type.
const SUPPORTED_VERSIONS: u16 = 43;

/// The answer to [`ServerHelloAssembler::push`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerProgress {
    /// Every input byte was taken and no answer is whole yet.
    NeedMore,
    /// A ServerHello, at the end of the record holding its last byte.
    ServerHello {
        /// The negotiated version: supported_versions if present, else legacy_version.
        version: u16,
        /// The exact bytes of the records taken, headers included.
        raw: Vec<u8>,
        /// How many bytes of the last input were taken.
        consumed: usize,
    },
    /// A HelloRetryRequest: the client will send a second ClientHello.
    HelloRetryRequest {
        /// The version the server selected.
        version: u16,
        /// The exact bytes of the records taken, headers included.
        raw: Vec<u8>,
        /// How many bytes of the last input were taken.
        consumed: usize,
    },
    /// The server refused with an alert record.
    Alert {
        /// The alert level (1 warning, 2 fatal).
        level: u8,
        /// The alert description (e.g. 112 unrecognized_name).
        description: u8,
        /// The exact bytes of the alert record.
        raw: Vec<u8>,
        /// How many bytes of the last input were taken.
        consumed: usize,
    },
    /// The reply is not TLS; every byte pushed so far is in `bytes`.
    NotTls {
        /// Every byte pushed so far.
        bytes: Vec<u8>,
    },
    /// The reply starts like TLS but is not a valid ServerHello.
    Malformed(Malformed),
    /// The ServerHello would be larger than the limit.
    TooLarge,
}

/// Gathers the server's first handshake message; spent after a final answer.
#[derive(Debug)]
pub struct ServerHelloAssembler {
    /// The reader, until a final answer.
    message: Option<FirstMessage>,
}

impl ServerHelloAssembler {
    /// An assembler capped at `max_len` raw bytes.
    pub fn new(max_len: usize) -> Self {
        Self {
            message: Some(FirstMessage::new(
                max_len,
                &[HANDSHAKE, ALERT],
                SERVER_HELLO,
            )),
        }
    }

    /// The bytes taken so far and not yet handed back.
    pub fn buffered(&self) -> &[u8] {
        self.message.as_ref().map_or(&[], FirstMessage::raw)
    }

    /// Takes the next bytes of the server's stream.
    pub fn push(&mut self, input: &[u8]) -> ServerProgress {
        let Some(message) = self.message.as_mut() else {
            return ServerProgress::Malformed(Malformed::AfterEnd);
        };
        let (consumed, gathered) = message.push(input);
        let answer = match gathered {
            Gathered::NeedMore => return ServerProgress::NeedMore,
            Gathered::TooLarge => ServerProgress::TooLarge,
            Gathered::Malformed(m) => ServerProgress::Malformed(m),
            Gathered::NotTls => {
                let mut bytes = self
                    .message
                    .take()
                    .map(FirstMessage::into_raw)
                    .unwrap_or_default();
                bytes.extend_from_slice(&input[consumed..]);
                return ServerProgress::NotTls { bytes };
            }
            Gathered::OtherRecord { content_type } => match (content_type, message.record_body()) {
                (ALERT, &[level, description]) => {
                    let raw = message.raw().to_vec();
                    ServerProgress::Alert {
                        level,
                        description,
                        raw,
                        consumed,
                    }
                }
                _ => ServerProgress::Malformed(Malformed::BadRecordBody(content_type)),
            },
            // Later handshake messages may share the record (TLS 1.2 Certificate...).
            Gathered::Message { .. } => match parse_server_hello(message.message()) {
                Ok((version, retry)) => {
                    let raw = message.raw().to_vec();
                    if retry {
                        ServerProgress::HelloRetryRequest {
                            version,
                            raw,
                            consumed,
                        }
                    } else {
                        ServerProgress::ServerHello {
                            version,
                            raw,
                            consumed,
                        }
                    }
                }
                Err(m) => ServerProgress::Malformed(m),
            },
        };
        self.message = None;
        answer
    }
}

/// Parses a ServerHello body: the negotiated version, and whether it is a HelloRetryRequest.
fn parse_server_hello(body: &[u8]) -> Result<(u16, bool), Malformed> {
    let (rest, hello) =
        tls_parser::parse_tls_handshake_server_hello(body).map_err(|_| Malformed::BadHello)?;
    if !rest.is_empty() {
        return Err(Malformed::BadHello);
    }
    let mut version = hello.version.0;
    let mut seen: Vec<u16> = Vec::new();
    let mut block = hello.ext.unwrap_or_default();
    while !block.is_empty() {
        let (rest, ext) = tls_parser::parse_tls_server_hello_extension(block)
            .map_err(|_| Malformed::BadExtensions)?;
        let ext_type = u16::from_be_bytes([block[0], block[1]]);
        let data_len = block.len() - rest.len() - 4;
        block = rest;
        if seen.contains(&ext_type) {
            return Err(Malformed::DuplicateExtension(ext_type));
        }
        seen.push(ext_type);
        match ext {
            // The server form is exactly one version (RFC 8446 4.2.1).
            TlsExtension::SupportedVersions(v) if data_len == 2 => version = v[0].0,
            TlsExtension::SupportedVersions(_) => {
                return Err(Malformed::BadExtension(SUPPORTED_VERSIONS));
            }
            _ => {}
        }
    }
    Ok((version, hello.random == HRR_RANDOM))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ServerHello flight with the given random and extensions, in records of `frag`.
    fn server_hello(random: [u8; 32], exts: &[u8], frag: usize) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend(random);
        body.extend([0, 0x13, 0x01, 0]);
        body.extend((exts.len() as u16).to_be_bytes());
        body.extend(exts);
        let mut msg = vec![SERVER_HELLO];
        msg.extend(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend(body);
        msg.chunks(frag)
            .flat_map(|c| [&[0x16, 3, 3][..], &(c.len() as u16).to_be_bytes(), c].concat())
            .collect()
    }

    const TLS13: &[u8] = &[0x00, 0x2b, 0x00, 0x02, 0x03, 0x04];

    fn push_bytewise(input: &[u8]) -> ServerProgress {
        let mut a = ServerHelloAssembler::new(1 << 16);
        for (i, b) in input.iter().enumerate() {
            match a.push(std::slice::from_ref(b)) {
                ServerProgress::NeedMore if i + 1 < input.len() => {}
                other => return other,
            }
        }
        ServerProgress::NeedMore
    }

    #[test]
    fn server_hello_and_hello_retry() {
        let sh = server_hello([1; 32], TLS13, 1 << 14);
        let want = ServerProgress::ServerHello {
            version: 0x0304,
            raw: sh.clone(),
            consumed: 1,
        };
        assert_eq!(push_bytewise(&sh), want);
        let hrr = server_hello(HRR_RANDOM, TLS13, 7);
        let mut input = hrr.clone();
        input.extend([0x14, 3, 3, 0, 1, 1]);
        assert_eq!(
            ServerHelloAssembler::new(1 << 16).push(&input),
            ServerProgress::HelloRetryRequest {
                version: 0x0304,
                raw: hrr.clone(),
                consumed: hrr.len()
            }
        );
        let tls12 = server_hello([2; 32], &[], 1 << 14);
        assert!(matches!(
            push_bytewise(&tls12),
            ServerProgress::ServerHello {
                version: 0x0303,
                ..
            }
        ));
    }

    #[test]
    fn alerts_and_garbage() {
        let alert = [0x15, 3, 3, 0, 2, 2, 112];
        assert_eq!(
            push_bytewise(&alert),
            ServerProgress::Alert {
                level: 2,
                description: 112,
                raw: alert.to_vec(),
                consumed: 1
            }
        );
        assert_eq!(
            ServerHelloAssembler::new(100).push(b"HTTP/1.1 400"),
            ServerProgress::NotTls {
                bytes: b"HTTP/1.1 400".to_vec()
            }
        );
        assert_eq!(
            ServerHelloAssembler::new(100).push(&[0x15, 3, 3, 0, 3, 2, 112, 0]),
            ServerProgress::Malformed(Malformed::BadRecordBody(ALERT))
        );
        let mut a = ServerHelloAssembler::new(40);
        assert_eq!(
            a.push(&server_hello([1; 32], TLS13, 1 << 14)),
            ServerProgress::TooLarge
        );
        assert_eq!(a.push(b"x"), ServerProgress::Malformed(Malformed::AfterEnd));
        assert_eq!(
            ServerHelloAssembler::new(1000).push(&server_hello(
                [1; 32],
                &[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04],
                1 << 14
            )),
            ServerProgress::Malformed(Malformed::BadExtension(SUPPORTED_VERSIONS))
        );
    }
}
