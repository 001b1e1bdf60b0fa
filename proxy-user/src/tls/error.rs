//! Why a first flight is not a well-formed hello. The peer that sent the bytes caused it.

/// A malformed first flight. `Display` starts with a stable snake_case token, for logs and
/// decision records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// A record after the first one has a content type that cannot appear here.
    #[error("unexpected_record: content type {0:#04x}")]
    UnexpectedRecord(u8),
    /// A record after the first one does not carry a TLS 1.x record version.
    #[error("record_version: {0:#06x}")]
    RecordVersion(u16),
    /// A zero-length handshake record, which RFC 8446 5.1 forbids.
    #[error("empty_record")]
    EmptyRecord,
    /// A plaintext record longer than 2^14 bytes (RFC 8446 5.1).
    #[error("record_overflow: {0} bytes")]
    RecordOverflow(u16),
    /// A ChangeCipherSpec or alert record with the wrong body.
    #[error("bad_record_body: content type {0:#04x}")]
    BadRecordBody(u8),
    /// The first handshake message is not the one expected.
    #[error("unexpected_message: handshake type {0}")]
    UnexpectedMessage(u8),
    /// More handshake bytes follow the ClientHello in its last record.
    #[error("trailing_data")]
    TrailingData,
    /// tls-parser rejected the hello body, or left bytes it did not account for.
    #[error("bad_hello")]
    BadHello,
    /// The extension block does not parse into whole extensions.
    #[error("bad_extensions")]
    BadExtensions,
    /// An extension's body does not match its declared structure.
    #[error("bad_extension: type {0}")]
    BadExtension(u16),
    /// The same extension type appears twice (RFC 8446 4.2).
    #[error("duplicate_extension: type {0}")]
    DuplicateExtension(u16),
    /// The server_name extension lists more than one host_name (RFC 6066 3).
    #[error("duplicate_server_name")]
    DuplicateServerName,
    /// The host_name is not UTF-8 (it should be ASCII A-labels).
    #[error("server_name_not_utf8")]
    ServerNameNotUtf8,
    /// `push` was called after a final answer: a caller bug.
    #[error("after_end")]
    AfterEnd,
}
