//! Rule names, packed for a million rules.

/// A rule's name, packed in one aligned 16-byte record: short names (most of them) sit
/// inside it, longer ones in `Policy::long_names`. Deciding does not read it; displaying a
/// decision's rule does.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(16))]
pub(super) struct PackedName {
    /// The name's length if it is inline (at most `INLINE_NAME`), else `LONG_NAME`.
    name_len: u8,
    /// The name's bytes if inline; else its start and length in `Policy::long_names`, as
    /// two little-endian u32s.
    name: [u8; INLINE_NAME],
}

/// The longest rule name kept inside its record.
const INLINE_NAME: usize = 15;
/// `PackedName::name_len` of a name kept in `Policy::long_names`.
const LONG_NAME: u8 = u8::MAX;

impl PackedName {
    pub(super) fn new(name: &str, long_names: &mut String) -> PackedName {
        let mut packed = PackedName {
            name_len: LONG_NAME,
            name: [0; INLINE_NAME],
        };
        if name.len() <= INLINE_NAME {
            packed.name[..name.len()].copy_from_slice(name.as_bytes());
            packed.name_len = name.len() as u8;
        } else {
            let start = u32::try_from(long_names.len()).expect("rule names below 4 GiB");
            let len = u32::try_from(name.len()).expect("rule names below 4 GiB");
            long_names.push_str(name);
            packed.name[..4].copy_from_slice(&start.to_le_bytes());
            packed.name[4..8].copy_from_slice(&len.to_le_bytes());
        }
        packed
    }

    /// The name, empty for an unnamed rule.
    pub(super) fn get<'a>(&'a self, long_names: &'a str) -> &'a str {
        if self.name_len == LONG_NAME {
            let word = |i: usize| {
                u32::from_le_bytes(self.name[i..i + 4].try_into().expect("4 bytes")) as usize
            };
            &long_names[word(0)..word(0) + word(4)]
        } else {
            std::str::from_utf8(&self.name[..usize::from(self.name_len)])
                .expect("a whole name was copied in")
        }
    }
}
