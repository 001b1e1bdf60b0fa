//! TLS record framing for the first flight: takes bytes as they arrive and hands out whole
//! records, keeping every byte taken so the caller can forward them unchanged.

use std::ops::Range;

use super::Malformed;

/// Bytes in a record header: content type, version, length.
pub(crate) const HEADER_LEN: usize = 5;
/// The largest plaintext fragment (RFC 8446 5.1).
pub(crate) const MAX_FRAGMENT: u16 = 1 << 14;

/// ContentType values (RFC 8446 B.1).
pub(crate) const CHANGE_CIPHER_SPEC: u8 = 0x14;
pub(crate) const ALERT: u8 = 0x15;
pub(crate) const HANDSHAKE: u8 = 0x16;

/// One step of [`RecordReader::step`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// The input ran out inside a record.
    NeedMore,
    /// The first record's header is not a TLS header the caller accepts.
    NotTls,
    /// The record would take the flight past the size limit.
    TooLarge,
    /// A later record is not a valid plaintext handshake record.
    Malformed(Malformed),
    /// A whole record arrived; [`RecordReader::body`] is its body.
    Record {
        /// Its content type.
        content_type: u8,
    },
}

/// Splits a byte stream into TLS plaintext records, up to a size limit.
#[derive(Debug)]
pub(crate) struct RecordReader {
    /// The largest number of bytes (headers included) the flight may take.
    max_len: usize,
    /// Content types the first record may have; later ones must be handshake records.
    first_types: &'static [u8],
    /// Every byte taken: whole records, then the current record's start.
    raw: Vec<u8>,
    /// Where the current (incomplete) record starts in `raw`.
    record_start: usize,
    /// The body of the last whole record, in `raw`.
    body: Range<usize>,
}

impl RecordReader {
    pub(crate) fn new(max_len: usize, first_types: &'static [u8]) -> Self {
        Self {
            max_len,
            first_types,
            raw: Vec::new(),
            record_start: 0,
            body: 0..0,
        }
    }

    /// Every byte taken so far.
    pub(crate) fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Gives up the bytes taken so far.
    pub(crate) fn into_raw(self) -> Vec<u8> {
        self.raw
    }

    /// The body of the record that the last [`Step::Record`] announced.
    pub(crate) fn body(&self) -> &[u8] {
        &self.raw[self.body.clone()]
    }

    /// Takes bytes from `input` until one record is whole or the input runs out, and says how
    /// many it took. It never takes bytes past the end of a record.
    pub(crate) fn step(&mut self, input: &[u8]) -> (usize, Step) {
        let mut taken = 0;
        let have = self.raw.len() - self.record_start;
        if have < HEADER_LEN {
            // One byte at a time through the header, so a bad first byte is rejected before
            // the stream is buffered.
            while self.raw.len() - self.record_start < HEADER_LEN {
                let Some(&b) = input.get(taken) else {
                    return (taken, Step::NeedMore);
                };
                self.raw.push(b);
                taken += 1;
                if let Some(verdict) = self.check_header_prefix() {
                    return (taken, verdict);
                }
            }
        }
        let header = &self.raw[self.record_start..self.record_start + HEADER_LEN];
        let Ok((_, header)) = tls_parser::parse_tls_record_header(header) else {
            unreachable!("a 5-byte header always parses");
        };
        if header.len == 0 {
            return (taken, Step::Malformed(Malformed::EmptyRecord));
        }
        if header.len > MAX_FRAGMENT {
            return (
                taken,
                Step::Malformed(Malformed::RecordOverflow(header.len)),
            );
        }
        let end = self.record_start + HEADER_LEN + usize::from(header.len);
        if end > self.max_len {
            return (taken, Step::TooLarge);
        }
        let n = (end - self.raw.len()).min(input.len() - taken);
        self.raw.extend_from_slice(&input[taken..taken + n]);
        taken += n;
        if self.raw.len() < end {
            return (taken, Step::NeedMore);
        }
        self.body = self.record_start + HEADER_LEN..end;
        self.record_start = end;
        (
            taken,
            Step::Record {
                content_type: header.record_type.0,
            },
        )
    }

    /// Checks the header bytes of the current record that have arrived so far.
    fn check_header_prefix(&self) -> Option<Step> {
        let h = &self.raw[self.record_start..];
        let first = self.record_start == 0;
        let reject = |m: Malformed| {
            Some(if first {
                Step::NotTls
            } else {
                Step::Malformed(m)
            })
        };
        let ct = h[0];
        let type_ok = if first {
            self.first_types.contains(&ct)
        } else {
            ct == HANDSHAKE
        };
        if !type_ok {
            return reject(Malformed::UnexpectedRecord(ct));
        }
        match h {
            [_, major, ..] if *major != 0x03 => {
                reject(Malformed::RecordVersion(u16::from(*major) << 8))
            }
            [_, major, minor, ..] if *minor > 0x04 => {
                reject(Malformed::RecordVersion(u16::from_be_bytes([
                    *major, *minor,
                ])))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ct: u8, body: &[u8]) -> Vec<u8> {
        let mut r = vec![ct, 3, 1];
        r.extend_from_slice(&(body.len() as u16).to_be_bytes());
        r.extend_from_slice(body);
        r
    }

    #[test]
    fn splits_records_and_stops_at_their_end() {
        let mut input = record(HANDSHAKE, b"abc");
        input.extend(record(HANDSHAKE, b"de"));
        let mut r = RecordReader::new(1000, &[HANDSHAKE]);
        assert_eq!(
            r.step(&input),
            (
                8,
                Step::Record {
                    content_type: HANDSHAKE
                }
            )
        );
        assert_eq!(r.body(), b"abc");
        assert_eq!(
            r.step(&input[8..]),
            (
                7,
                Step::Record {
                    content_type: HANDSHAKE
                }
            )
        );
        assert_eq!(r.body(), b"de");
        assert_eq!(r.raw(), &input[..]);
    }

    #[test]
    fn one_byte_at_a_time() {
        let input = record(HANDSHAKE, b"hello");
        let mut r = RecordReader::new(1000, &[HANDSHAKE]);
        for b in &input[..input.len() - 1] {
            assert_eq!(r.step(std::slice::from_ref(b)), (1, Step::NeedMore));
        }
        assert_eq!(
            r.step(&input[input.len() - 1..]),
            (
                1,
                Step::Record {
                    content_type: HANDSHAKE
                }
            )
        );
        assert_eq!(r.body(), b"hello");
    }

    #[test]
    fn rejects_early() {
        let mut r = RecordReader::new(1000, &[HANDSHAKE]);
        assert_eq!(r.step(b"GET / HTTP/1.1"), (1, Step::NotTls));
        let mut r = RecordReader::new(1000, &[HANDSHAKE]);
        assert_eq!(r.step(&[0x16, 0x02]), (2, Step::NotTls));
        let mut r = RecordReader::new(1000, &[HANDSHAKE]);
        assert_eq!(r.step(&[0x16, 0x03, 0x05]), (3, Step::NotTls));
        let mut r = RecordReader::new(10, &[HANDSHAKE]);
        assert_eq!(r.step(&[0x16, 0x03, 0x01, 0x00, 0x06]), (5, Step::TooLarge));
        let mut r = RecordReader::new(100_000, &[HANDSHAKE]);
        assert_eq!(
            r.step(&[0x16, 0x03, 0x01, 0x40, 0x01]),
            (5, Step::Malformed(Malformed::RecordOverflow(0x4001)))
        );
        let mut r = RecordReader::new(100, &[HANDSHAKE]);
        assert_eq!(
            r.step(&[0x16, 0x03, 0x01, 0x00, 0x00]),
            (5, Step::Malformed(Malformed::EmptyRecord))
        );
    }

    #[test]
    fn later_records_must_be_handshake() {
        let mut input = record(HANDSHAKE, b"a");
        input.extend(record(0x17, b"b"));
        let mut r = RecordReader::new(1000, &[HANDSHAKE]);
        assert_eq!(
            r.step(&input).1,
            Step::Record {
                content_type: HANDSHAKE
            }
        );
        assert_eq!(
            r.step(&input[6..]),
            (1, Step::Malformed(Malformed::UnexpectedRecord(0x17)))
        );
    }
}
