//! The `[[policy.rule]]` list, packed. A million rules held as a million `RuleConfig`s
//! would take about 300 MB of small allocations; packed back to back in one buffer they
//! take their text plus a few bytes each. Rules are read back in file order as borrowed
//! [`RuleView`]s, which is all validation and compilation need.

use std::fmt;

use serde::Deserialize;

use super::RuleConfig;

/// Field tags in the packed encoding; a rule is a sequence of tagged fields ending in `END`.
mod tag {
    pub const END: u8 = 0;
    pub const NAME: u8 = 1;
    pub const ACTION: u8 = 2;
    pub const FQDN: u8 = 3;
    pub const PORTS: u8 = 4;
    pub const SOURCES: u8 = 5;
    pub const PROTOCOLS: u8 = 6;
    pub const MODE: u8 = 7;
}

/// The rules, in file order, packed (see the module docs).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RuleList {
    /// Every rule's fields, encoded back to back.
    bytes: Vec<u8>,
    /// How many rules there are.
    len: usize,
}

/// One rule as written, borrowed from a [`RuleList`]: the same fields as [`RuleConfig`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleView<'a> {
    /// A unique name, used in decisions and logs.
    pub name: Option<&'a str>,
    /// `allow` or `deny`.
    pub action: Option<&'a str>,
    /// Name patterns; absent matches any name and no name.
    pub fqdn: Option<Strs<'a>>,
    /// Destination ports; absent matches any.
    pub ports: Option<Ints<'a>>,
    /// Source CIDRs; absent matches any.
    pub sources: Option<Strs<'a>>,
    /// Protocols; absent matches any.
    pub protocols: Option<Strs<'a>>,
    /// `enforce` or `audit`; absent takes the policy's.
    pub mode: Option<&'a str>,
}

/// A packed list of strings.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Strs<'a> {
    /// How many.
    len: usize,
    /// The strings, each a varint length and its bytes.
    bytes: &'a [u8],
}

impl<'a> Strs<'a> {
    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The strings, in order.
    pub fn iter(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        let mut rest = self.bytes;
        (0..self.len).map(move |_| read_str(&mut rest))
    }
}

impl fmt::Debug for Strs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A packed list of integers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Ints<'a> {
    /// The integers, 8 bytes little-endian each.
    bytes: &'a [u8],
}

impl<'a> Ints<'a> {
    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The integers, in order.
    pub fn iter(&self) -> impl Iterator<Item = i64> + use<'a> {
        self.bytes
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
}

impl fmt::Debug for Ints<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl RuleList {
    /// No rules.
    pub fn new() -> RuleList {
        RuleList::default()
    }

    /// How many rules.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The rules in file order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            rest: &self.bytes,
            left: self.len,
        }
    }

    /// Appends a rule.
    pub fn push(&mut self, rule: &RuleConfig) {
        let mut w = self.writer();
        if let Some(name) = &rule.name {
            w.str(tag::NAME, name);
        }
        if let Some(action) = &rule.action {
            w.str(tag::ACTION, action);
        }
        if let Some(mode) = &rule.mode {
            w.str(tag::MODE, mode);
        }
        for (t, list) in [
            (tag::FQDN, &rule.fqdn),
            (tag::SOURCES, &rule.sources),
            (tag::PROTOCOLS, &rule.protocols),
        ] {
            if let Some(list) = list {
                let at = w.list(t);
                for s in list {
                    w.item_str(at, s);
                }
            }
        }
        if let Some(ports) = &rule.ports {
            let at = w.list(tag::PORTS);
            for p in ports {
                w.item_int(at, *p);
            }
        }
        w.finish();
    }

    /// Appends every rule of `other`, in order.
    pub fn append(&mut self, other: &RuleList) {
        self.bytes.extend_from_slice(&other.bytes);
        self.len += other.len;
    }

    /// Starts appending a rule field by field; the caller writes each field at most once.
    pub(super) fn writer(&mut self) -> Writer<'_> {
        Writer { list: self }
    }

    /// Releases spare capacity.
    pub fn shrink_to_fit(&mut self) {
        self.bytes.shrink_to_fit();
    }
}

impl fmt::Debug for RuleList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl From<Vec<RuleConfig>> for RuleList {
    fn from(rules: Vec<RuleConfig>) -> Self {
        rules.into_iter().collect()
    }
}

impl FromIterator<RuleConfig> for RuleList {
    fn from_iter<I: IntoIterator<Item = RuleConfig>>(iter: I) -> Self {
        let mut list = RuleList::new();
        for rule in iter {
            list.push(&rule);
        }
        list
    }
}

impl<'de> Deserialize<'de> for RuleList {
    /// Packs each rule as it is deserialized, so the whole list never exists unpacked.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RuleList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of rules")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RuleList, A::Error> {
                let mut list = RuleList::new();
                while let Some(rule) = seq.next_element::<RuleConfig>()? {
                    list.push(&rule);
                }
                Ok(list)
            }
        }
        d.deserialize_seq(Visitor)
    }
}

/// Appends one rule's fields to a [`RuleList`]; [`Writer::finish`] ends the rule.
pub(super) struct Writer<'a> {
    list: &'a mut RuleList,
}

/// Where a list's count sits in the buffer, to bump as items are added.
#[derive(Clone, Copy)]
pub(super) struct ListAt(usize);

impl Writer<'_> {
    /// A string field.
    pub(super) fn str(&mut self, t: u8, s: &str) {
        self.list.bytes.push(t);
        write_str(&mut self.list.bytes, s);
    }

    /// Starts a list field: a tag, then a 4-byte count that the items bump.
    pub(super) fn list(&mut self, t: u8) -> ListAt {
        self.list.bytes.push(t);
        let at = self.list.bytes.len();
        self.list.bytes.extend_from_slice(&0u32.to_le_bytes());
        ListAt(at)
    }

    /// A string item of the list at `at`.
    pub(super) fn item_str(&mut self, at: ListAt, s: &str) {
        self.bump(at);
        write_str(&mut self.list.bytes, s);
    }

    /// An integer item of the list at `at`.
    pub(super) fn item_int(&mut self, at: ListAt, v: i64) {
        self.bump(at);
        self.list.bytes.extend_from_slice(&v.to_le_bytes());
    }

    fn bump(&mut self, ListAt(at): ListAt) {
        let count = &mut self.list.bytes[at..at + 4];
        let n = u32::from_le_bytes(count.try_into().expect("4 bytes")) + 1;
        count.copy_from_slice(&n.to_le_bytes());
    }

    /// Ends the rule.
    pub(super) fn finish(self) {
        self.list.bytes.push(tag::END);
        self.list.len += 1;
    }

    /// Forgets the fields written so far (the rule is parsed another way instead).
    pub(super) fn abandon(self, mark: usize) {
        self.list.bytes.truncate(mark);
    }

    /// Where the rule starts, for [`Writer::abandon`].
    pub(super) fn mark(&self) -> usize {
        self.list.bytes.len()
    }
}

/// The field tags, for the TOML fast path.
pub(super) use tag::{ACTION, FQDN, MODE, NAME, PORTS, PROTOCOLS, SOURCES};

/// Iterator over a [`RuleList`].
pub struct Iter<'a> {
    rest: &'a [u8],
    left: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = RuleView<'a>;

    fn next(&mut self) -> Option<RuleView<'a>> {
        self.left = self.left.checked_sub(1)?;
        let mut rule = RuleView::default();
        loop {
            let (&t, rest) = self.rest.split_first().expect("rules are END-terminated");
            self.rest = rest;
            match t {
                tag::END => return Some(rule),
                tag::NAME => rule.name = Some(read_str(&mut self.rest)),
                tag::ACTION => rule.action = Some(read_str(&mut self.rest)),
                tag::MODE => rule.mode = Some(read_str(&mut self.rest)),
                tag::PORTS => {
                    let len = read_count(&mut self.rest);
                    let (bytes, rest) = self.rest.split_at(len * 8);
                    self.rest = rest;
                    rule.ports = Some(Ints { bytes });
                }
                _ => {
                    let len = read_count(&mut self.rest);
                    let start = self.rest;
                    for _ in 0..len {
                        read_str(&mut self.rest);
                    }
                    let bytes = &start[..start.len() - self.rest.len()];
                    let strs = Some(Strs { len, bytes });
                    match t {
                        tag::FQDN => rule.fqdn = strs,
                        tag::SOURCES => rule.sources = strs,
                        _ => rule.protocols = strs,
                    }
                }
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Iter<'_> {}

/// A LEB128 length, then the bytes.
fn write_str(out: &mut Vec<u8>, s: &str) {
    let mut n = s.len();
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(s.as_bytes());
}

fn read_str<'a>(rest: &mut &'a [u8]) -> &'a str {
    let (mut n, mut shift) = (0usize, 0);
    loop {
        let (&b, tail) = rest.split_first().expect("well-formed length");
        *rest = tail;
        n |= usize::from(b & 0x7f) << shift;
        if b < 0x80 {
            break;
        }
        shift += 7;
    }
    let (s, tail) = rest.split_at(n);
    *rest = tail;
    debug_assert!(std::str::from_utf8(s).is_ok());
    // SAFETY: `bytes` is private and only `write_str` puts strings in it, each a whole
    // `&str` behind its length; readers walk it from the start, so `s` is one of them.
    // (Checking again cost 6% of loading a million rules.)
    unsafe { std::str::from_utf8_unchecked(s) }
}

fn read_count(rest: &mut &[u8]) -> usize {
    let (n, tail) = rest.split_at(4);
    *rest = tail;
    u32::from_le_bytes(n.try_into().expect("4 bytes")) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_field() {
        let long = "x".repeat(300);
        let rules = vec![
            RuleConfig {
                name: Some("a".into()),
                action: Some("allow".into()),
                fqdn: Some(vec!["a.com".into(), long.clone(), String::new()]),
                ports: Some(vec![443, -1, i64::MAX]),
                sources: Some(vec!["10.0.0.0/8".into()]),
                protocols: Some(vec![]),
                mode: Some("audit".into()),
            },
            RuleConfig::default(),
            RuleConfig {
                action: Some("ünï".into()),
                ports: Some(vec![]),
                ..RuleConfig::default()
            },
        ];
        let list = RuleList::from(rules.clone());
        assert_eq!(list.len(), 3);
        let back: Vec<RuleConfig> = list
            .iter()
            .map(|v| RuleConfig {
                name: v.name.map(str::to_owned),
                action: v.action.map(str::to_owned),
                fqdn: v.fqdn.map(|l| l.iter().map(str::to_owned).collect()),
                ports: v.ports.map(|l| l.iter().collect()),
                sources: v.sources.map(|l| l.iter().map(str::to_owned).collect()),
                protocols: v.protocols.map(|l| l.iter().map(str::to_owned).collect()),
                mode: v.mode.map(str::to_owned),
            })
            .collect();
        assert_eq!(back, rules);
        assert!(list.iter().nth(2).unwrap().ports.unwrap().is_empty());
        assert_eq!(list.iter().nth(3), None);
    }
}
