//! What a trie node holds for its rules: [`Candidate`]s, packed into u32 entries, one
//! inline or a list of them.

/// A rule as the trie holds it, with what a decision needs to know of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Candidate {
    /// A rule without conditions besides the name: it holds whenever it is a candidate.
    Unconditional {
        /// The rule's number (its index in file order).
        rule: u32,
        /// The rule denies; it allows otherwise.
        deny: bool,
    },
    /// A rule with conditions, by the number of its guard (see `policy/guard.rs`), which
    /// holds the rule's number. Guards are numbered in rule order.
    Guarded(u32),
}

impl Candidate {
    /// Set on an unconditional rule's entry.
    const UNCONDITIONAL: u32 = 1 << 30;
    /// Set on an unconditional rule's entry when it denies.
    const DENY: u32 = 1 << 29;
    const INDEX: u32 = Self::DENY - 1;

    /// The candidate packed into a u32 (bit 31 stays clear).
    pub(super) fn entry(self) -> u32 {
        match self {
            Candidate::Unconditional { rule, deny } => {
                rule | Self::UNCONDITIONAL | if deny { Self::DENY } else { 0 }
            }
            Candidate::Guarded(guard) => guard,
        }
    }

    pub(super) fn from_entry(entry: u32) -> Candidate {
        if entry & Self::UNCONDITIONAL != 0 {
            Candidate::Unconditional {
                rule: entry & Self::INDEX,
                deny: entry & Self::DENY != 0,
            }
        } else {
            Candidate::Guarded(entry & Self::INDEX)
        }
    }

    pub(super) fn closes(entry: u32) -> bool {
        entry & Self::UNCONDITIONAL != 0
    }
}

/// The candidates of one node that apply to a lookup, in rule order. All but the last are
/// guarded: an unconditional rule closes a node's list, since no later rule can win there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidates<'a>(pub(super) &'a [u32]);

impl Candidates<'_> {
    /// The candidates, in rule order.
    pub fn iter(&self) -> impl Iterator<Item = Candidate> + '_ {
        self.0.iter().map(|&e| Candidate::from_entry(e))
    }
}

/// A node's rule list: empty, one candidate's entry, or an index into the trie's overflow
/// lists. Most nodes hold one rule, so most lookups touch no list at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Rules(pub(super) u32);

impl Rules {
    pub(super) const EMPTY: Rules = Rules(u32::MAX);
    /// Set when the value indexes `NameTrie::lists`; clear when it is an entry.
    pub(super) const LIST: u32 = 1 << 31;
}

/// `rules` with `rule` appended, unless a rule without conditions already closes it or
/// `rule` is already last (a rule listing both `a.com` and `.a.com`).
pub(super) fn add(lists: &mut Vec<Vec<u32>>, rules: Rules, rule: Candidate) -> Rules {
    let entry = rule.entry();
    if rules == Rules::EMPTY {
        return Rules(entry);
    }
    if rules.0 & Rules::LIST == 0 {
        if Candidate::closes(rules.0) || rules.0 == entry {
            return rules;
        }
        let list = u32::try_from(lists.len())
            .ok()
            .filter(|l| *l < !Rules::LIST)
            .expect("fewer than 2^31 - 1 lists");
        lists.push(vec![rules.0, entry]);
        return Rules(list | Rules::LIST);
    }
    let list = &mut lists[(rules.0 & !Rules::LIST) as usize];
    match list.last() {
        Some(&last) if Candidate::closes(last) || last == entry => {}
        _ => list.push(entry),
    }
    rules
}
