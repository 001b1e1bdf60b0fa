//! Where a received stream first differs from what its sender wrote, and what the wrong
//! bytes are: a hash only says that a transfer is wrong, this says how. Every stream
//! [`crate::peers::exchange`] sends is reproducible from its seed, which is its first 8
//! bytes, so the receiver regenerates it and compares as it reads.

use crate::Rng;

/// Bytes of the wrong data kept for the diagnosis.
const SAMPLE: usize = 64;

/// The bytes [`crate::peers::exchange`] sends for a seed, in the chunks its writer writes:
/// the writer and [`Expected`] both draw them here.
pub struct Chunks {
    rng: Rng,
    /// The seed's bytes, until the first chunk starts with them.
    id: Option<[u8; 8]>,
    chunk: Vec<u8>,
}

impl Chunks {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Rng::new(seed),
            id: Some(seed.to_le_bytes()),
            chunk: Vec::new(),
        }
    }

    /// The next chunk: 1 to 64 KiB of random bytes, the first one at least 8 and starting
    /// with the seed. With a shorter first chunk the receiver's id was part random (the
    /// soak's one "no server report" in 20,000 transfers).
    pub fn next_chunk(&mut self) -> &[u8] {
        let mut n = self.rng.range(1, 64 << 10) as usize;
        if self.id.is_some() {
            n = n.max(8);
        }
        self.chunk.resize(n, 0);
        self.rng.fill(&mut self.chunk);
        if let Some(id) = self.id.take() {
            self.chunk[..8].copy_from_slice(&id);
        }
        &self.chunk
    }
}

/// The stream for `seed`, byte by byte.
struct Expected {
    chunks: Chunks,
    len: usize,
    at: usize,
}

impl Expected {
    fn new(seed: u64) -> Self {
        Self {
            chunks: Chunks::new(seed),
            len: 0,
            at: 0,
        }
    }

    fn next(&mut self) -> u8 {
        if self.at == self.len {
            self.len = self.chunks.next_chunk().len();
            self.at = 0;
        }
        self.at += 1;
        self.chunks.chunk[self.at - 1]
    }

    /// The first offset at or after `from` where the stream holds `pattern`.
    fn find(seed: u64, pattern: &[u8], from: u64, to: u64) -> Option<u64> {
        let mut stream = Self::new(seed);
        let mut window = std::collections::VecDeque::with_capacity(pattern.len());
        for offset in 0..to + pattern.len() as u64 {
            if window.len() == pattern.len() {
                window.pop_front();
            }
            window.push_back(stream.next());
            let Some(start) = (offset + 1).checked_sub(pattern.len() as u64) else {
                continue;
            };
            if start >= from && window.iter().eq(pattern.iter()) {
                return Some(start);
            }
        }
        None
    }
}

/// The first `len` bytes `exchange` sends for `seed`, for a sender that cannot use it (one
/// that resets halfway, say) but whose receiver verifies.
pub fn stream(seed: u64, len: usize) -> Vec<u8> {
    let mut expected = Expected::new(seed);
    (0..len).map(|_| expected.next()).collect()
}

/// Checks a received stream byte by byte against its sender's.
pub struct Verifier {
    id: [u8; 8],
    received: u64,
    expected: Option<Expected>,
    /// Offset of the first wrong byte, and the received bytes from there.
    wrong: Option<(u64, Vec<u8>)>,
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Verifier {
    pub fn new() -> Self {
        Self {
            id: [0; 8],
            received: 0,
            expected: None,
            wrong: None,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            let at = self.received;
            self.received += 1;
            if at < 8 {
                self.id[at as usize] = b;
                if at == 7 {
                    let mut expected = Expected::new(u64::from_le_bytes(self.id));
                    for _ in 0..8 {
                        expected.next();
                    }
                    self.expected = Some(expected);
                }
                continue;
            }
            if let Some((_, sample)) = &mut self.wrong {
                if sample.len() < SAMPLE {
                    sample.push(b);
                }
                continue;
            }
            if let Some(expected) = &mut self.expected
                && expected.next() != b
            {
                self.wrong = Some((at, vec![b]));
            }
        }
    }

    /// None if every byte matched; otherwise where the stream went wrong and where the wrong
    /// bytes come from: an earlier (or later) part of the same stream, or the receiver's
    /// own stream (`own_seed`) sent back to it.
    pub fn diagnosis(&self, own_seed: u64) -> Option<String> {
        let (at, sample) = self.wrong.as_ref()?;
        let seed = u64::from_le_bytes(self.id);
        let mut report = format!(
            "stream {seed:#x}: first wrong byte at offset {at} of {} received",
            self.received
        );
        if sample.len() < 16 {
            return Some(report + " (too few bytes after it to say where they come from)");
        }
        let pattern = &sample[..16];
        let window = 64 << 20;
        let from = at.saturating_sub(window);
        if let Some(source) = Expected::find(seed, pattern, from, at + window) {
            let delta = source as i64 - *at as i64;
            report += &format!(
                "; the bytes there are the same stream's offset {source} ({delta:+} bytes)"
            );
        } else if let Some(source) = Expected::find(own_seed, pattern, 0, at + window) {
            report += &format!("; the bytes there are the receiver's own stream at {source}");
        } else {
            report += &format!(
                "; the bytes there ({:02x?}) match neither stream",
                &sample[..16]
            );
        }
        Some(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_range_is_named() {
        let sent = stream(7, 1 << 20);
        let mut received = sent[..500_000].to_vec();
        received.extend_from_slice(&sent[400_000..]);
        let mut v = Verifier::new();
        v.update(&received);
        let d = v.diagnosis(9).expect("a wrong stream");
        assert!(
            d.contains("offset 500000") && d.contains("offset 400000 (-100000 bytes)"),
            "{d}"
        );
    }

    #[test]
    fn the_receivers_own_bytes_are_named() {
        let mut received = stream(7, 300_000);
        received.extend_from_slice(&stream(9, 200_000)[1000..2000]);
        let mut v = Verifier::new();
        v.update(&received);
        let d = v.diagnosis(9).expect("a wrong stream");
        assert!(d.contains("own stream at 1000"), "{d}");
    }

    /// This seed draws a first chunk shorter than 8 bytes (the soak's worker 0 #3009).
    #[test]
    fn the_id_comes_first_even_after_a_short_first_chunk() {
        let seed = 0x9d09_43f5_ffdd_1401;
        assert_eq!(stream(seed, 8), seed.to_le_bytes());
    }

    #[test]
    fn a_right_stream_passes() {
        let mut v = Verifier::new();
        v.update(&stream(7, 1 << 20));
        assert_eq!(v.diagnosis(9), None);
    }
}
