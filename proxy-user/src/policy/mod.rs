//! The FQDN policy: rules compiled into a reversed-label trie, and decisions.
//!
//! Rules are evaluated in file order and the first match wins. A rule matches when one of
//! its name patterns matches the normalised name (or it has no `fqdn` field) and all its
//! other conditions (ports, sources, protocols) hold. The trie finds every rule whose
//! pattern matches in O(labels); among those candidates the lowest-numbered one whose
//! conditions hold is the match.
//!
//! Deciding is on every connection's path, and a cache miss costs ~200 ns: a decision on
//! a rule without conditions reads only the trie, one with conditions also its 32-byte
//! guard, and a rule's name is read only when the decision is displayed.

mod cidr;
mod guard;
mod huge_pages;
mod pattern;
mod rule;
mod trie;

use std::fmt;
use std::net::IpAddr;

pub use cidr::{Cidr, CidrError};
use guard::Guard;
pub use pattern::{Pattern, PatternError};
pub use rule::{Conditions, PolicyError, Rule, RuleProblem, RuleRef};
use trie::{Candidate, MAX_RULES, NameTrie, Slot};

pub use crate::config::Action;
use crate::config::{DenyWith, PolicyConfig};
use crate::names::{self, NameError, Normal};
use crate::tls::Protocol;

/// What is known about a connection when it is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query<'a> {
    /// The server name as sent (SNI, CONNECT host), not yet normalised; `None` if unknown.
    pub fqdn: Option<&'a str>,
    /// The client's address.
    pub source: Option<IpAddr>,
    /// The destination port.
    pub port: Option<u16>,
    /// What the client's first bytes looked like.
    pub protocol: Protocol,
}

/// Why a decision came out the way it did. `Display` (and JSON) is a stable token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A rule matched.
    Rule,
    /// No rule matched the name; the policy default applied.
    Default,
    /// There was no name and no name-less rule matched; `no_sni` applied.
    NoSni,
    /// The name is invalid, so the connection is denied.
    InvalidName(NameError),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Rule => f.write_str("rule"),
            Reason::Default => f.write_str("default"),
            Reason::NoSni => f.write_str("no_sni"),
            Reason::InvalidName(why) => write!(f, "invalid_name: {why}"),
        }
    }
}

impl serde::Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A policy decision, as `sockgate decide` prints it. Making one allocates nothing: it
/// borrows the policy (for the rule's name) and the query (for an invalid name).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision<'a> {
    /// Allow or deny.
    pub action: Action,
    /// The matching rule; `None` without a match.
    pub rule: Option<RuleName<'a>>,
    /// The normalised name; the name as given if it is invalid; `None` without a name.
    pub fqdn: Option<Fqdn<'a>>,
    /// Why.
    pub reason: Reason,
}

/// The rule a decision matched. Displays (and serialises) as the rule's name, or `#N` for
/// an unnamed rule; the name is read only then, not while deciding.
#[derive(Clone, Copy)]
pub struct RuleName<'a> {
    /// The policy the rule is in.
    policy: &'a Policy,
    /// The rule's index.
    index: u32,
}

impl RuleName<'_> {
    /// The rule's index, from 0, in file order.
    pub fn index(&self) -> usize {
        self.index as usize
    }
}

impl fmt::Display for RuleName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.policy.rule_names[self.index()].get(&self.policy.long_names) {
            "" => write!(f, "#{}", self.index + 1),
            name => f.write_str(name),
        }
    }
}

impl fmt::Debug for RuleName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

impl PartialEq for RuleName<'_> {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.policy, other.policy) && self.index == other.index
    }
}

impl Eq for RuleName<'_> {}

impl serde::Serialize for RuleName<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The name a decision was made on. Derefs (and serialises) to the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "the name is inline so that deciding allocates nothing; boxing it would not"
)]
pub enum Fqdn<'a> {
    /// The normalised name.
    Normal(Normal<'a>),
    /// An invalid name, as given.
    Invalid(&'a str),
}

impl std::ops::Deref for Fqdn<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Fqdn::Normal(name) => name,
            Fqdn::Invalid(name) => name,
        }
    }
}

impl fmt::Display for Fqdn<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl serde::Serialize for Fqdn<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self)
    }
}

/// A rule's name, packed in one aligned 16-byte record: short names (most of them) sit
/// inside it, longer ones in `Policy::long_names`. Deciding does not read it; displaying a
/// decision's rule does.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(16))]
struct PackedName {
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
    fn new(name: &str, long_names: &mut String) -> PackedName {
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
    fn get<'a>(&'a self, long_names: &'a str) -> &'a str {
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

/// A compiled policy, ready for [`Policy::decide`]. Cheap to share behind an `Arc`.
pub struct Policy {
    /// The action when no rule matches a name.
    default: Action,
    /// The action when there is no name and no name-less rule matches.
    no_sni: Action,
    /// How a denied TLS connection is refused.
    deny_with: DenyWith,
    /// Every rule's name, in file order.
    rule_names: Vec<PackedName>,
    /// The guards of the rules with conditions, in file order.
    guards: Vec<Guard>,
    /// Conditions too big for their guard.
    apart: Vec<Conditions>,
    /// Rule names longer than `INLINE_NAME`, back to back.
    long_names: String,
    /// Rules with patterns, by name.
    trie: NameTrie,
    /// Rules without an `fqdn` field, which match any name and no name.
    any_name: Vec<Candidate>,
    /// How many rules allow, and how many deny.
    counts: (usize, usize),
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("default", &self.default)
            .field("rules", &self.rule_names.len())
            .field("trie_nodes", &self.trie.node_count())
            .finish_non_exhaustive()
    }
}

impl Policy {
    /// Checks every rule and builds the index. The rules are checked one at a time and not
    /// kept, so compiling a large policy needs little memory beyond the result.
    pub fn compile(config: &PolicyConfig) -> Result<Policy, PolicyError> {
        check_names(config)?;
        let mut policy = Policy {
            default: config.default,
            no_sni: config.no_sni,
            deny_with: config.deny_with,
            rule_names: Vec::with_capacity(config.rules.len()),
            guards: Vec::new(),
            apart: Vec::new(),
            long_names: String::new(),
            // Most rules add one node: sizing for them up front saves growing the table.
            trie: NameTrie::with_capacity(config.rules.len()),
            any_name: Vec::new(),
            counts: (0, 0),
        };
        for (index, rule_config) in config.rules.iter().enumerate() {
            if index >= MAX_RULES {
                return Err(PolicyError {
                    rule: RuleRef {
                        index,
                        name: rule_config.name.map(str::to_owned),
                    },
                    field: "name",
                    problem: RuleProblem::TooMany { max: MAX_RULES },
                });
            }
            let rule = Rule::parse(index, rule_config)?;
            let id = u32::try_from(index).expect("checked against MAX_RULES");
            let candidate = if rule.conditions.is_empty() {
                Candidate::Unconditional {
                    rule: id,
                    deny: rule.action == Action::Deny,
                }
            } else {
                let guard = Guard::new(id, rule.action, rule.conditions, &mut policy.apart);
                policy.guards.push(guard);
                Candidate::Guarded(
                    u32::try_from(policy.guards.len() - 1).expect("checked against MAX_RULES"),
                )
            };
            for p in rule.patterns.iter().flatten() {
                let trie = &mut policy.trie;
                match p {
                    Pattern::Exact(n) => trie.insert(n, Slot::Exact, candidate),
                    Pattern::Below(n) => trie.insert(n, Slot::Below, candidate),
                    Pattern::Suffix(n) => {
                        trie.insert(n, Slot::Exact, candidate);
                        trie.insert(n, Slot::Below, candidate);
                    }
                }
            }
            if rule.patterns.is_none() {
                policy.any_name.push(candidate);
            }
            policy.rule_names.push(PackedName::new(
                rule_config.name.unwrap_or_default(),
                &mut policy.long_names,
            ));
            match rule.action {
                Action::Allow => policy.counts.0 += 1,
                Action::Deny => policy.counts.1 += 1,
            }
        }
        policy.trie.shrink_to_fit();
        policy.long_names.shrink_to_fit();
        policy.rule_names = huge_pages::copy(&policy.rule_names);
        policy.guards = huge_pages::copy(&policy.guards);
        Ok(policy)
    }

    /// Decides a connection; see the module docs. An invalid name is always denied.
    pub fn decide<'a>(&'a self, query: &Query<'a>) -> Decision<'a> {
        let Some(given) = query.fqdn else {
            return match self.first_match(None, query) {
                Some(found) => self.matched(found, None),
                None => Decision {
                    action: self.no_sni,
                    rule: None,
                    fqdn: None,
                    reason: Reason::NoSni,
                },
            };
        };
        let name = match names::normal_form(given) {
            Ok(name) => name,
            Err(why) => {
                return Decision {
                    action: Action::Deny,
                    rule: None,
                    fqdn: Some(Fqdn::Invalid(given)),
                    reason: Reason::InvalidName(why),
                };
            }
        };
        match self.first_match(Some(&name), query) {
            Some(found) => self.matched(found, Some(Fqdn::Normal(name))),
            None => Decision {
                action: self.default,
                rule: None,
                fqdn: Some(Fqdn::Normal(name)),
                reason: Reason::Default,
            },
        }
    }

    /// How a denied TLS connection is refused.
    pub fn deny_with(&self) -> DenyWith {
        self.deny_with
    }

    /// The action when no rule matches a name.
    pub fn default_action(&self) -> Action {
        self.default
    }

    /// The number of rules.
    pub fn rule_count(&self) -> usize {
        self.rule_names.len()
    }

    /// How many rules allow and how many deny.
    pub fn action_counts(&self) -> (usize, usize) {
        self.counts
    }

    /// The display name of rule `index`: its name, or `#N` (from 1) if it has none.
    pub fn rule_name(&self, index: usize) -> String {
        RuleName {
            policy: self,
            index: u32::try_from(index).expect("a rule index"),
        }
        .to_string()
    }

    fn matched<'a>(
        &'a self,
        (rule, action): (u32, Action),
        fqdn: Option<Fqdn<'a>>,
    ) -> Decision<'a> {
        Decision {
            action,
            rule: Some(RuleName {
                policy: self,
                index: rule,
            }),
            fqdn,
            reason: Reason::Rule,
        }
    }

    /// The lowest-numbered rule that matches, if any, and its action.
    fn first_match(&self, name: Option<&str>, query: &Query<'_>) -> Option<(u32, Action)> {
        let mut best = None;
        self.consider(self.any_name.iter().copied(), query, &mut best);
        if let Some(name) = name {
            self.trie.lookup(name, |candidates| {
                self.consider(candidates.iter(), query, &mut best)
            });
        }
        best
    }

    /// Updates `best` with the first of `candidates` (in rule order) that holds, if it is
    /// numbered below `best`.
    fn consider(
        &self,
        candidates: impl Iterator<Item = Candidate>,
        query: &Query<'_>,
        best: &mut Option<(u32, Action)>,
    ) {
        let bound = best.map_or(u32::MAX, |(rule, _)| rule);
        for candidate in candidates {
            match candidate {
                Candidate::Unconditional { rule, deny } => {
                    if rule < bound {
                        let action = if deny { Action::Deny } else { Action::Allow };
                        *best = Some((rule, action));
                    }
                    return;
                }
                Candidate::Guarded(g) => {
                    let guard = &self.guards[g as usize];
                    if guard.rule >= bound {
                        return;
                    }
                    if guard.holds(query.source, query.port, query.protocol, &self.apart) {
                        *best = Some((guard.rule, guard.action));
                        return;
                    }
                }
            }
        }
    }
}

/// Refuses two rules with the same name. Sorting borrowed names needs one allocation,
/// which matters at a million rules.
fn check_names(config: &PolicyConfig) -> Result<(), PolicyError> {
    let mut named: Vec<(&str, usize)> = config
        .rules
        .iter()
        .enumerate()
        .filter_map(|(i, r)| Some((r.name?, i)))
        .collect();
    named.sort_unstable();
    for pair in named.windows(2) {
        if let [(a, first), (b, again)] = pair
            && a == b
        {
            return Err(PolicyError {
                rule: RuleRef {
                    index: *again,
                    name: Some((*b).to_owned()),
                },
                field: "name",
                problem: RuleProblem::DuplicateName(*first),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
