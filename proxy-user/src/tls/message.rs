//! The first handshake message of a flight, gathered from as many records as it spans.

use super::Malformed;
use super::record::{HANDSHAKE, RecordReader, Step};

/// Bytes in a handshake message header: type and 24-bit length.
const MSG_HEADER_LEN: usize = 4;

/// One answer of [`FirstMessage::push`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Gathered {
    /// The input ran out before the message was whole.
    NeedMore,
    /// The first record's header is not TLS.
    NotTls,
    /// The message, or the records carrying it, would pass the size limit.
    TooLarge,
    /// The records or the message header are wrong.
    Malformed(Malformed),
    /// A whole non-handshake record arrived (a first-record type the caller allowed);
    /// [`FirstMessage::record_body`] is its body. The caller may go on pushing.
    OtherRecord {
        /// Its content type.
        content_type: u8,
    },
    /// The message is whole, at the end of a record; [`FirstMessage::message`] is its body.
    Message {
        /// Handshake bytes after the message in its last record.
        trailing: usize,
    },
}

/// Gathers the first handshake message of a flight, which must have type `msg_type`.
#[derive(Debug)]
pub(crate) struct FirstMessage {
    /// The record layer, which keeps the raw bytes.
    records: RecordReader,
    /// The largest flight, in raw bytes.
    max_len: usize,
    /// The handshake type the message must have.
    msg_type: u8,
    /// Handshake-layer bytes from the whole records so far.
    handshake: Vec<u8>,
}

impl FirstMessage {
    pub(crate) fn new(max_len: usize, first_types: &'static [u8], msg_type: u8) -> Self {
        Self {
            records: RecordReader::new(max_len, first_types),
            max_len,
            msg_type,
            handshake: Vec::new(),
        }
    }

    /// Every raw byte taken so far.
    pub(crate) fn raw(&self) -> &[u8] {
        self.records.raw()
    }

    /// Gives up the raw bytes taken so far.
    pub(crate) fn into_raw(self) -> Vec<u8> {
        self.records.into_raw()
    }

    /// The body of the record that [`Gathered::OtherRecord`] announced.
    pub(crate) fn record_body(&self) -> &[u8] {
        self.records.body()
    }

    /// The message body (after its 4-byte header), once [`Gathered::Message`] was answered.
    pub(crate) fn message(&self) -> &[u8] {
        let len = self.message_len().unwrap_or(0);
        &self.handshake[MSG_HEADER_LEN..MSG_HEADER_LEN + len]
    }

    /// The body length from the message header, once it has arrived.
    fn message_len(&self) -> Option<usize> {
        match self.handshake[..] {
            [_, a, b, c, ..] => Some(usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c)),
            _ => None,
        }
    }

    /// Takes bytes from `input` until the message or a non-handshake record is whole, or
    /// the input runs out, and says how many it took.
    pub(crate) fn push(&mut self, input: &[u8]) -> (usize, Gathered) {
        let mut taken = 0;
        loop {
            let (n, step) = self.records.step(&input[taken..]);
            taken += n;
            let content_type = match step {
                Step::NeedMore => return (taken, Gathered::NeedMore),
                Step::NotTls => return (taken, Gathered::NotTls),
                Step::TooLarge => return (taken, Gathered::TooLarge),
                Step::Malformed(m) => return (taken, Gathered::Malformed(m)),
                Step::Record { content_type } => content_type,
            };
            if content_type != HANDSHAKE {
                if !self.handshake.is_empty() {
                    // RFC 8446 5.1: other records must not interleave with a fragmented message.
                    return (
                        taken,
                        Gathered::Malformed(Malformed::UnexpectedRecord(content_type)),
                    );
                }
                return (taken, Gathered::OtherRecord { content_type });
            }
            self.handshake.extend_from_slice(self.records.body());
            if self.handshake[0] != self.msg_type {
                return (
                    taken,
                    Gathered::Malformed(Malformed::UnexpectedMessage(self.handshake[0])),
                );
            }
            let Some(len) = self.message_len() else {
                continue;
            };
            if MSG_HEADER_LEN + len > self.max_len {
                return (taken, Gathered::TooLarge);
            }
            if let Some(trailing) = self.handshake.len().checked_sub(MSG_HEADER_LEN + len) {
                return (taken, Gathered::Message { trailing });
            }
        }
    }
}
