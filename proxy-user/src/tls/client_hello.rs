//! The incremental ClientHello assembler.
//!
//! Feed it the client's bytes as they arrive. It answers "need more" until the record that
//! completes the ClientHello has arrived, and then hands back the parsed fields together
//! with the exact bytes of every record it took, so an allowed connection can forward them
//! unchanged. Bytes after that record are left to the caller.

use tls_parser::TlsExtension;

use super::grease::{is_grease_alpn, is_grease_u16};
use super::message::{FirstMessage, Gathered};
use super::record::{CHANGE_CIPHER_SPEC, HANDSHAKE};
use super::{Malformed, Protocol, classify};

/// The default cap on the raw bytes of a ClientHello (all its records, headers included).
pub const DEFAULT_MAX_CLIENT_HELLO: usize = 64 * 1024;

/// The handshake type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// The encrypted_client_hello extension (draft-ietf-tls-esni), which tls-parser lacks.
const ECH_EXTENSION: u16 = 0xfe0d;
/// The host_name NameType of server_name (RFC 6066 3).
const HOST_NAME: u8 = 0;

/// A whole ClientHello: what the policy needs, plus the bytes to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The server_name host_name, exactly as sent (not yet normalised); `None` without SNI.
    pub sni: Option<String>,
    /// The ALPN protocol ids in the client's order, GREASE dropped (lossy UTF-8).
    pub alpn: Vec<String>,
    /// The ClientHello's legacy_version field (0x0303 for TLS 1.2 and 1.3).
    pub legacy_version: u16,
    /// The supported_versions list in the client's order, GREASE dropped; empty if absent.
    pub supported_versions: Vec<u16>,
    /// Whether an encrypted_client_hello extension (0xfe0d) is present.
    pub ech: bool,
    /// The exact bytes of every record that made up the ClientHello, headers included.
    pub raw: Vec<u8>,
}

/// The client's first bytes when they are not TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstBytes {
    /// What they look like.
    pub protocol: Protocol,
    /// Every byte pushed so far, earlier pushes included: the caller forwards these as-is.
    pub bytes: Vec<u8>,
}

/// The answer to [`ClientHelloAssembler::push`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Every input byte was taken and the ClientHello is not whole yet.
    NeedMore,
    /// The ClientHello is whole. The assembler took `consumed` bytes of this input; the rest
    /// belongs to whatever follows the ClientHello.
    Complete {
        /// The parsed ClientHello and its raw bytes.
        hello: ClientHello,
        /// How many bytes of the last input were taken.
        consumed: usize,
    },
    /// The stream does not start with a TLS handshake record. Every input byte was taken and
    /// is in [`FirstBytes::bytes`].
    NotTls(FirstBytes),
    /// The stream starts like TLS but is not a valid ClientHello.
    Malformed(Malformed),
    /// The ClientHello would be larger than the limit.
    TooLarge,
}

/// Gathers one ClientHello; see the module docs. After a final answer (anything but
/// [`Progress::NeedMore`]) it is spent.
#[derive(Debug)]
pub struct ClientHelloAssembler {
    /// The reader, until a final answer.
    message: Option<FirstMessage>,
}

impl ClientHelloAssembler {
    /// An assembler for the first ClientHello of a connection, capped at `max_len` raw bytes.
    pub fn new(max_len: usize) -> Self {
        Self {
            message: Some(FirstMessage::new(max_len, &[HANDSHAKE], CLIENT_HELLO)),
        }
    }

    /// An assembler for the second ClientHello, after a HelloRetryRequest. It also accepts
    /// one ChangeCipherSpec record in front, which clients in middlebox compatibility mode
    /// send (RFC 8446 D.4); that record is part of `raw`.
    pub fn after_hello_retry(max_len: usize) -> Self {
        Self {
            message: Some(FirstMessage::new(
                max_len,
                &[HANDSHAKE, CHANGE_CIPHER_SPEC],
                CLIENT_HELLO,
            )),
        }
    }

    /// The bytes taken so far and not yet handed back.
    pub fn buffered(&self) -> &[u8] {
        self.message.as_ref().map_or(&[], FirstMessage::raw)
    }

    /// Takes the next bytes of the client's stream.
    pub fn push(&mut self, input: &[u8]) -> Progress {
        let Some(message) = self.message.as_mut() else {
            return Progress::Malformed(Malformed::AfterEnd);
        };
        let mut taken = 0;
        let trailing = loop {
            let (n, gathered) = message.push(&input[taken..]);
            taken += n;
            match gathered {
                Gathered::NeedMore => return Progress::NeedMore,
                Gathered::Message { trailing } => break trailing,
                Gathered::OtherRecord {
                    content_type: CHANGE_CIPHER_SPEC,
                } if message.record_body() == [1] => {}
                Gathered::OtherRecord { content_type } => {
                    return self.fail(Malformed::BadRecordBody(content_type));
                }
                Gathered::Malformed(m) => return self.fail(m),
                Gathered::TooLarge => {
                    self.message = None;
                    return Progress::TooLarge;
                }
                Gathered::NotTls => {
                    let mut bytes = self
                        .message
                        .take()
                        .map(FirstMessage::into_raw)
                        .unwrap_or_default();
                    bytes.extend_from_slice(&input[taken..]);
                    return Progress::NotTls(FirstBytes {
                        protocol: classify(&bytes),
                        bytes,
                    });
                }
            }
        };
        if trailing != 0 {
            // Nothing may follow a ClientHello in its flight (RFC 8446 4.1.2, 5.1).
            return self.fail(Malformed::TrailingData);
        }
        let parsed = parse_client_hello(message.message());
        let raw = self
            .message
            .take()
            .map(FirstMessage::into_raw)
            .unwrap_or_default();
        match parsed {
            Ok(fields) => Progress::Complete {
                hello: fields.with_raw(raw),
                consumed: taken,
            },
            Err(m) => Progress::Malformed(m),
        }
    }

    fn fail(&mut self, m: Malformed) -> Progress {
        self.message = None;
        Progress::Malformed(m)
    }
}

/// The ClientHello fields, before the raw bytes are attached (see [`ClientHello`]).
struct Fields {
    /// [`ClientHello::sni`].
    sni: Option<String>,
    /// [`ClientHello::alpn`].
    alpn: Vec<String>,
    /// [`ClientHello::legacy_version`].
    legacy_version: u16,
    /// [`ClientHello::supported_versions`].
    supported_versions: Vec<u16>,
    /// [`ClientHello::ech`].
    ech: bool,
}

impl Fields {
    fn with_raw(self, raw: Vec<u8>) -> ClientHello {
        let Fields {
            sni,
            alpn,
            legacy_version,
            supported_versions,
            ech,
        } = self;
        ClientHello {
            sni,
            alpn,
            legacy_version,
            supported_versions,
            ech,
            raw,
        }
    }
}

/// Parses a ClientHello body (after the handshake header) strictly: every byte accounted for.
fn parse_client_hello(body: &[u8]) -> Result<Fields, Malformed> {
    let (rest, hello) =
        tls_parser::parse_tls_handshake_client_hello(body).map_err(|_| Malformed::BadHello)?;
    if !rest.is_empty() {
        // tls-parser skips an extension block it cannot take whole; we do not.
        return Err(Malformed::BadHello);
    }
    let mut fields = Fields {
        sni: None,
        alpn: Vec::new(),
        legacy_version: hello.version.0,
        supported_versions: Vec::new(),
        ech: false,
    };
    let mut seen: Vec<u16> = Vec::new();
    let mut block = hello.ext.unwrap_or_default();
    while !block.is_empty() {
        let (rest, ext) = tls_parser::parse_tls_client_hello_extension(block)
            .map_err(|_| Malformed::BadExtensions)?;
        // parse_tls_client_hello_extension took type, length and body.
        let ext_type = u16::from_be_bytes([block[0], block[1]]);
        let data = &block[4..block.len() - rest.len()];
        block = rest;
        if is_grease_u16(ext_type) {
            continue;
        }
        if seen.contains(&ext_type) {
            return Err(Malformed::DuplicateExtension(ext_type));
        }
        seen.push(ext_type);
        let bad = Malformed::BadExtension(ext_type);
        match ext {
            TlsExtension::SNI(names) => {
                // tls-parser ignores bytes after the list and a partial last entry.
                let listed: usize = names.iter().map(|(_, n)| 3 + n.len()).sum();
                if names.is_empty() || data.len() != 2 + listed {
                    return Err(bad);
                }
                for (_, name) in names.iter().filter(|(t, _)| t.0 == HOST_NAME) {
                    if fields.sni.is_some() {
                        return Err(Malformed::DuplicateServerName);
                    }
                    let name =
                        std::str::from_utf8(name).map_err(|_| Malformed::ServerNameNotUtf8)?;
                    fields.sni = Some(name.to_owned());
                }
            }
            TlsExtension::ALPN(ids) => {
                let listed: usize = ids.iter().map(|id| 1 + id.len()).sum();
                if data.len() != 2 + listed {
                    return Err(bad);
                }
                fields.alpn = ids
                    .iter()
                    .filter(|id| !is_grease_alpn(id))
                    .map(|id| String::from_utf8_lossy(id).into_owned())
                    .collect();
            }
            TlsExtension::SupportedVersions(versions) => {
                // The client form is a 1-byte length and a list (tls-parser also takes the
                // 2-byte server form here).
                if data.len() != 1 + 2 * versions.len()
                    || usize::from(data[0]) != 2 * versions.len()
                {
                    return Err(bad);
                }
                fields.supported_versions = versions
                    .iter()
                    .map(|v| v.0)
                    .filter(|v| !is_grease_u16(*v))
                    .collect();
            }
            TlsExtension::Unknown(t, _) if t.0 == ECH_EXTENSION => fields.ech = true,
            _ => {}
        }
    }
    Ok(fields)
}

#[cfg(test)]
mod tests;
