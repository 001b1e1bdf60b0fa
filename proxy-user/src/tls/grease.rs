//! GREASE values (RFC 8701): random-looking reserved codepoints that clients send so servers
//! keep tolerating unknown values. They carry no meaning and are dropped from parsed lists.

/// Whether a two-byte codepoint (extension type, version, cipher, group) is a GREASE value:
/// both bytes equal and of the form 0x?A.
pub fn is_grease_u16(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff
}

/// Whether an ALPN protocol id is a GREASE value (RFC 8701 3: two bytes, GREASE-shaped).
pub fn is_grease_alpn(id: &[u8]) -> bool {
    matches!(id, [a, b] if is_grease_u16(u16::from_be_bytes([*a, *b])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grease_values() {
        for v in (0..16u16).map(|n| (n << 12) | 0x0a00 | (n << 4) | 0x0a) {
            assert!(is_grease_u16(v), "{v:#06x}");
        }
        assert!(!is_grease_u16(0x0303));
        assert!(!is_grease_u16(0x1a2a));
        assert!(is_grease_alpn(&[0x3a, 0x3a]));
        assert!(!is_grease_alpn(b"h2"));
        assert!(!is_grease_alpn(&[0x3a, 0x3a, 0x3a]));
    }
}
