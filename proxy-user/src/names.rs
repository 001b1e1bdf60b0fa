//! FQDN normalisation and validation, applied to SNI names, CONNECT hosts and rule patterns
//! alike, so that both sides of a match are spelled the same way.
//!
//! Normal form: ASCII lowercase, no trailing dot, internationalised labels as A-labels
//! (punycode, via the `idna` crate). Invalid names are refused with a stable reason token.

use std::net::Ipv6Addr;

/// The longest name in octets, without the trailing dot (RFC 1035 2.3.4).
pub const MAX_NAME_LEN: usize = 253;
/// The longest label in octets (RFC 1035 2.3.4).
pub const MAX_LABEL_LEN: usize = 63;

/// Why a name is refused. `Display` is a stable snake_case token for decision records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum NameError {
    /// The name is empty (or only a dot).
    #[error("empty_name")]
    EmptyName,
    /// Two dots in a row, or a leading dot.
    #[error("empty_label")]
    EmptyLabel,
    /// A label longer than 63 octets.
    #[error("label_too_long")]
    LabelTooLong,
    /// A name longer than 253 octets.
    #[error("name_too_long")]
    NameTooLong,
    /// A character other than a letter, digit, hyphen or underscore.
    #[error("bad_character")]
    BadCharacter,
    /// An IP address; RFC 6066 3 forbids literal addresses in SNI.
    #[error("ip_literal")]
    IpLiteral,
    /// An internationalised name that does not convert to A-labels, or a bad `xn--` label.
    #[error("bad_idna")]
    BadIdna,
}

/// Normalises and validates `name`; see the module docs.
pub fn normalize(name: &str) -> Result<String, NameError> {
    normal_form(name).map(|n| n.to_string())
}

/// Normalises and validates `name` without allocating (every SNI goes through here on the
/// way to the policy): a name given in normal form, as most are, is borrowed; another is
/// rewritten inline.
pub fn normal_form(name: &str) -> Result<Normal<'_>, NameError> {
    if let Some(normal) = normalize_plain(name) {
        return Ok(normal);
    }
    // Internationalised or invalid names: rare, and allowed to allocate.
    let general = normalize_general(name)?;
    Ok(Normal::Rewritten(NormalName::copy(&general)))
}

/// A name in normal form; see [`normal_form`]. Derefs to the name.
#[derive(Clone, Copy, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "inline, so that normalising allocates nothing; boxing it would"
)]
pub enum Normal<'a> {
    /// The name as given, which is in normal form.
    Given(&'a str),
    /// The name rewritten in normal form.
    Rewritten(NormalName),
}

impl std::ops::Deref for Normal<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Normal::Given(name) => name,
            Normal::Rewritten(name) => name,
        }
    }
}

impl std::fmt::Display for Normal<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

impl std::fmt::Debug for Normal<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

/// A normalised name held inline. Only ASCII is ever written to it.
#[derive(Clone, Copy)]
pub struct NormalName {
    /// How many bytes of `bytes` are the name.
    len: u8,
    /// The name, then unused bytes.
    bytes: [u8; MAX_NAME_LEN],
}

impl NormalName {
    /// A copy of `name`, which is ASCII and at most `MAX_NAME_LEN` long.
    fn copy(name: &str) -> NormalName {
        debug_assert!(name.is_ascii());
        let mut normal = NormalName {
            len: u8::try_from(name.len()).expect("validated: at most 253 bytes"),
            bytes: [0; MAX_NAME_LEN],
        };
        normal.bytes[..name.len()].copy_from_slice(name.as_bytes());
        normal
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        let bytes = &self.bytes[..usize::from(self.len)];
        debug_assert!(bytes.is_ascii());
        // SAFETY: only ASCII bytes are written below `len` (`copy` is only given validated
        // ASCII names).
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }
}

impl std::ops::Deref for NormalName {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for NormalName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq for NormalName {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for NormalName {}

/// [`normalize`] for any name.
fn normalize_general(name: &str) -> Result<String, NameError> {
    if name.is_empty() {
        return Err(NameError::EmptyName);
    }
    if (name.starts_with('[') || name.contains(':')) && is_v6_literal(name) {
        return Err(NameError::IpLiteral);
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err(NameError::EmptyName);
    }
    // ASCII names (nearly all of them) skip the UTS 46 machinery unless they carry A-labels
    // that need checking.
    let ascii = if name.is_ascii() && !has_a_label(name) {
        name.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(name).map_err(|_| NameError::BadIdna)?
    };
    validate_ascii(&ascii)?;
    Ok(ascii)
}

/// The common case in one pass, since every SNI goes through here: a valid name made of
/// ASCII letters, digits, hyphens, underscores and dots, without A-labels; borrowed if it
/// is already lowercase without a trailing dot. `None` sends the name down the general
/// path (which also gives every error, so errors do not depend on which path saw the name
/// first).
fn normalize_plain(given: &str) -> Option<Normal<'_>> {
    let name = given.strip_suffix('.').unwrap_or(given);
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_NAME_LEN {
        return None;
    }
    let plain_label =
        |label: &[u8]| (1..=MAX_LABEL_LEN).contains(&label.len()) && !is_a_label(label);
    let (mut label_start, mut upper) = (0, false);
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => {}
            b'A'..=b'Z' => upper = true,
            b'.' if plain_label(&bytes[label_start..i]) => label_start = i + 1,
            _ => return None,
        }
    }
    let last = &bytes[label_start..];
    if !plain_label(last) || is_number(last) {
        return None;
    }
    if !upper && name.len() == given.len() {
        return Some(Normal::Given(given));
    }
    let mut normal = NormalName::copy(name);
    normal.bytes[..bytes.len()].make_ascii_lowercase();
    Some(Normal::Rewritten(normal))
}

/// Whether a label starts with the ACE prefix `xn--` (any case).
fn is_a_label(label: &[u8]) -> bool {
    label
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"xn--"))
}

/// Checks a lowercase ASCII name against the rules in the module docs.
fn validate_ascii(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::EmptyName);
    }
    // A name whose last label is a number is an IPv4 address to URL parsers (WHATWG "ends in
    // a number"), even in short forms like 127.1 or 0x7f.1; refuse them all.
    let last = name.rsplit('.').next().unwrap_or(name);
    if is_number(last.as_bytes()) {
        return Err(NameError::IpLiteral);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::NameTooLong);
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(NameError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(NameError::LabelTooLong);
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(NameError::BadCharacter);
        }
    }
    Ok(())
}

/// An IPv6 literal, bracketed or not. (IPv4 literals are caught by the last-label check.)
fn is_v6_literal(name: &str) -> bool {
    let inner = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    inner.parse::<Ipv6Addr>().is_ok()
}

/// Whether any label starts with the ACE prefix `xn--` (any case).
fn has_a_label(name: &str) -> bool {
    name.split('.').any(|l| is_a_label(l.as_bytes()))
}

/// A decimal or 0x-hex number, as the WHATWG URL parser reads IPv4 parts.
fn is_number(label: &[u8]) -> bool {
    if let Some(hex) = label
        .strip_prefix(b"0x")
        .or_else(|| label.strip_prefix(b"0X"))
    {
        return hex.iter().all(u8::is_ascii_hexdigit);
    }
    !label.is_empty() && label.iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn normal_forms() {
        assert_eq!(normalize("Example.COM.").as_deref(), Ok("example.com"));
        assert_eq!(normalize("api.github.com").as_deref(), Ok("api.github.com"));
        assert_eq!(
            normalize("_dmarc.example.com").as_deref(),
            Ok("_dmarc.example.com")
        );
        assert_eq!(
            normalize("bücher.example").as_deref(),
            Ok("xn--bcher-kva.example")
        );
        assert_eq!(
            normalize("BÜCHER.example").as_deref(),
            Ok("xn--bcher-kva.example")
        );
        assert_eq!(
            normalize("XN--BCHER-KVA.example").as_deref(),
            Ok("xn--bcher-kva.example")
        );
        assert_eq!(
            normalize("例え.テスト").as_deref(),
            Ok("xn--r8jz45g.xn--zckzah")
        );
        assert_eq!(normalize("localhost").as_deref(), Ok("localhost"));
        assert_eq!(normalize("1password.com").as_deref(), Ok("1password.com"));
    }

    #[test]
    fn names_in_normal_form_are_borrowed() {
        let given = |name| matches!(normal_form(name), Ok(Normal::Given(n)) if n == name);
        assert!(given("api.github.com"));
        assert!(given("_dmarc.example.com"));
        // A-labels are checked on the general path, which rewrites.
        assert!(!given("xn--bcher-kva.example"));
        assert!(!given("API.github.com"));
        assert!(!given("api.github.com."));
        assert_eq!(
            normal_form("API.GitHub.com.").as_deref(),
            Ok("api.github.com")
        );
        assert_eq!(
            normal_form("bücher.example").as_deref(),
            Ok("xn--bcher-kva.example")
        );
    }

    #[test]
    fn refused_names() {
        let bad = |name: &str, why| assert_eq!(normalize(name), Err(why), "{name:?}");
        bad("", NameError::EmptyName);
        bad(".", NameError::EmptyName);
        bad("a..b", NameError::EmptyLabel);
        bad(".a.b", NameError::EmptyLabel);
        bad("a.b..", NameError::EmptyLabel);
        bad(&format!("{}.com", "a".repeat(64)), NameError::LabelTooLong);
        let long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        assert_eq!(long.len(), 253);
        assert!(normalize(&long).is_ok());
        bad(&format!("{long}e"), NameError::NameTooLong);
        bad("a b.com", NameError::BadCharacter);
        bad("*.example.com", NameError::BadCharacter);
        bad("ex%41mple.com", NameError::BadCharacter);
        bad("example.com:443", NameError::BadCharacter);
        bad("1.2.3.4", NameError::IpLiteral);
        bad("1.2.3.4.", NameError::IpLiteral);
        bad("127.1", NameError::IpLiteral);
        bad("0x7f.1", NameError::IpLiteral);
        bad("::1", NameError::IpLiteral);
        bad("[2001:db8::1]", NameError::IpLiteral);
        bad("１２７.０.０.１", NameError::IpLiteral);
        bad("xn--zz.example", NameError::BadIdna);
    }

    proptest! {
        #[test]
        fn the_fast_path_agrees(name in "[a-zA-Z0-9_.-]{0,70}|(xn--)?[a-z]{1,3}(\\.[0-9]{1,3}){0,2}\\.?") {
            if let Some(fast) = normalize_plain(&name) {
                let general = normalize_general(&name);
                prop_assert_eq!(general.as_deref(), Ok(&*fast));
            }
        }

        #[test]
        fn normal_form_is_a_fixed_point(name in "[a-zA-Z0-9_.ü-]{0,40}") {
            if let Ok(once) = normalize(&name) {
                prop_assert_eq!(normalize(&once), Ok(once.clone()));
            }
        }
    }
}
