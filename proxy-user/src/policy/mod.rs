//! The FQDN policy: rules compiled into a reversed-label trie, and decisions.
//!
//! Rules are evaluated in file order and the first match wins. A rule matches when one of
//! its name patterns matches the normalised name (or it has no `fqdn` field) and all its
//! other conditions (ports, sources, protocols) hold. The trie finds every rule whose
//! pattern matches in O(labels); among those candidates the lowest-numbered one whose
//! conditions hold is the match.

mod cidr;
mod huge_pages;
mod pattern;
mod rule;
mod trie;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

pub use cidr::{Cidr, CidrError};
pub use pattern::{Pattern, PatternError};
pub use rule::{Conditions, PolicyError, Rule, RuleProblem, RuleRef};
use trie::{HashCollision, MAX_RULES, NameTrie, Slot};

use crate::config::{DenyWith, PolicyConfig};
use crate::names::{self, NameError};
use crate::tls::Protocol;

/// What to do with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Connect to the server and relay.
    Allow,
    /// Refuse the connection.
    Deny,
}

impl Action {
    /// The config and JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "allow" => Ok(Action::Allow),
            "deny" => Ok(Action::Deny),
            _ => Err(()),
        }
    }
}

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

/// A policy decision, as `sockgate decide` prints it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    /// Allow or deny.
    pub action: Action,
    /// The matching rule's name, or `#N` for an unnamed rule; `None` without a match.
    pub rule: Option<String>,
    /// The normalised name; the name as given if it is invalid; `None` without a name.
    pub fqdn: Option<String>,
    /// Why.
    pub reason: Reason,
}

/// A compiled rule: its action, its conditions if it has any, and its name. One aligned
/// 16-byte record, so a match costs one cache miss for all three: short names (most of
/// them) sit inside it, longer ones in `Policy::names`.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(16))]
struct Compiled {
    /// Index into `Policy::conditions`, or `NO_CONDITIONS`.
    conditions: u32,
    /// What a match does.
    action: Action,
    /// The name's length if it is inline (at most `INLINE_NAME`), else `LONG_NAME`.
    name_len: u8,
    /// The name's bytes if inline; else its start and length in `Policy::names`, as two
    /// little-endian u32s.
    name: [u8; INLINE_NAME],
}

/// The longest rule name kept inside its record.
const INLINE_NAME: usize = 10;
/// `Compiled::name_len` of a name kept in `Policy::names`.
const LONG_NAME: u8 = u8::MAX;

impl Compiled {
    fn new(action: Action, conditions: u32, name: &str, names: &mut String) -> Compiled {
        let mut rule = Compiled {
            conditions,
            action,
            name_len: LONG_NAME,
            name: [0; INLINE_NAME],
        };
        if name.len() <= INLINE_NAME {
            rule.name[..name.len()].copy_from_slice(name.as_bytes());
            rule.name_len = name.len() as u8;
        } else {
            let start = u32::try_from(names.len()).expect("rule names below 4 GiB");
            let len = u32::try_from(name.len()).expect("rule names below 4 GiB");
            names.push_str(name);
            rule.name[..4].copy_from_slice(&start.to_le_bytes());
            rule.name[4..8].copy_from_slice(&len.to_le_bytes());
        }
        rule
    }

    /// The name, empty for an unnamed rule.
    fn name<'a>(&'a self, names: &'a str) -> &'a str {
        if self.name_len == LONG_NAME {
            let word = |i: usize| {
                u32::from_le_bytes(self.name[i..i + 4].try_into().expect("4 bytes")) as usize
            };
            &names[word(0)..word(0) + word(4)]
        } else {
            std::str::from_utf8(&self.name[..usize::from(self.name_len)])
                .expect("a whole name was copied in")
        }
    }
}

const NO_CONDITIONS: u32 = u32::MAX;

/// A compiled policy, ready for [`Policy::decide`]. Cheap to share behind an `Arc`.
pub struct Policy {
    /// The action when no rule matches a name.
    default: Action,
    /// The action when there is no name and no name-less rule matches.
    no_sni: Action,
    /// How a denied TLS connection is refused.
    deny_with: DenyWith,
    /// Every rule, in file order.
    rules: Vec<Compiled>,
    /// The conditions of the rules that have any.
    conditions: Vec<Conditions>,
    /// Rule names longer than `INLINE_NAME`, back to back.
    names: String,
    /// Rules with patterns, by name.
    trie: NameTrie,
    /// Rules without an `fqdn` field, which match any name and no name.
    any_name: Vec<u32>,
    /// How many rules allow, and how many deny.
    counts: (usize, usize),
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("default", &self.default)
            .field("rules", &self.rules.len())
            .field("trie_nodes", &self.trie.node_count())
            .finish_non_exhaustive()
    }
}

impl Policy {
    /// Checks every rule and builds the index. The rules are checked one at a time and not
    /// kept, so compiling a large policy needs little memory beyond the result.
    ///
    /// # Panics
    ///
    /// If the trie's randomly seeded 64-bit name hash collides ten times in a row, which
    /// does not happen with a working hasher.
    pub fn compile(config: &PolicyConfig) -> Result<Policy, PolicyError> {
        check_names(config)?;
        // Each attempt seeds the trie's hash anew; two names hashing alike is a 1-in-2^40
        // event even at a million rules, so a second attempt is already unheard of and a
        // tenth would mean the hasher is broken.
        for _ in 0..10 {
            if let Ok(policy) = Self::build(config)? {
                return Ok(policy);
            }
        }
        panic!("10 trie hash collisions in a row: the name hasher is broken");
    }

    /// One attempt at [`Policy::compile`], after the name check.
    fn build(config: &PolicyConfig) -> Result<Result<Policy, HashCollision>, PolicyError> {
        let mut policy = Policy {
            default: config.default,
            no_sni: config.no_sni,
            deny_with: config.deny_with,
            rules: Vec::with_capacity(config.rules.len()),
            conditions: Vec::new(),
            names: String::new(),
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
            let unconditional = rule.conditions.is_empty();
            for p in rule.patterns.iter().flatten() {
                let trie = &mut policy.trie;
                let inserted = match p {
                    Pattern::Exact(n) => trie.insert(n, Slot::Exact, id, unconditional),
                    Pattern::Below(n) => trie.insert(n, Slot::Below, id, unconditional),
                    Pattern::Suffix(n) => trie
                        .insert(n, Slot::Exact, id, unconditional)
                        .and_then(|()| trie.insert(n, Slot::Below, id, unconditional)),
                };
                if let Err(collision) = inserted {
                    return Ok(Err(collision));
                }
            }
            if rule.patterns.is_none() {
                policy.any_name.push(id);
            }
            let conditions = if unconditional {
                NO_CONDITIONS
            } else {
                policy.conditions.push(rule.conditions);
                u32::try_from(policy.conditions.len() - 1).expect("checked against MAX_RULES")
            };
            policy.rules.push(Compiled::new(
                rule.action,
                conditions,
                rule_config.name.unwrap_or_default(),
                &mut policy.names,
            ));
            match rule.action {
                Action::Allow => policy.counts.0 += 1,
                Action::Deny => policy.counts.1 += 1,
            }
        }
        policy.trie.shrink_to_fit();
        policy.names.shrink_to_fit();
        policy.rules = huge_pages::copy(&policy.rules);
        Ok(Ok(policy))
    }

    /// Decides a connection; see the module docs. An invalid name is always denied.
    pub fn decide(&self, query: &Query<'_>) -> Decision {
        let Some(given) = query.fqdn else {
            return match self.first_match(None, query) {
                Some(rule) => self.matched(rule, None),
                None => Decision {
                    action: self.no_sni,
                    rule: None,
                    fqdn: None,
                    reason: Reason::NoSni,
                },
            };
        };
        let name = match names::normalize(given) {
            Ok(name) => name,
            Err(why) => {
                return Decision {
                    action: Action::Deny,
                    rule: None,
                    fqdn: Some(given.to_owned()),
                    reason: Reason::InvalidName(why),
                };
            }
        };
        match self.first_match(Some(&name), query) {
            Some(rule) => self.matched(rule, Some(name)),
            None => Decision {
                action: self.default,
                rule: None,
                fqdn: Some(name),
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
        self.rules.len()
    }

    /// How many rules allow and how many deny.
    pub fn action_counts(&self) -> (usize, usize) {
        self.counts
    }

    /// The display name of rule `index`: its name, or `#N` (from 1) if it has none.
    pub fn rule_name(&self, index: usize) -> String {
        let name = self.rules[index].name(&self.names);
        if name.is_empty() {
            format!("#{}", index + 1)
        } else {
            name.to_owned()
        }
    }

    fn matched(&self, rule: u32, fqdn: Option<String>) -> Decision {
        Decision {
            action: self.rules[rule as usize].action,
            rule: Some(self.rule_name(rule as usize)),
            fqdn,
            reason: Reason::Rule,
        }
    }

    /// The lowest-numbered rule that matches, if any.
    fn first_match(&self, name: Option<&str>, query: &Query<'_>) -> Option<u32> {
        let mut best = u32::MAX;
        let mut consider = |candidates: &[u32]| {
            // Sorted ascending: the first that holds is this list's best.
            for &r in candidates.iter().take_while(|&&r| r < best) {
                if self.conditions_hold(r, query) {
                    best = r;
                    break;
                }
            }
        };
        consider(&self.any_name);
        if let Some(name) = name {
            self.trie.lookup(name, &mut consider);
        }
        (best != u32::MAX).then_some(best)
    }

    fn conditions_hold(&self, rule: u32, query: &Query<'_>) -> bool {
        match self.rules[rule as usize].conditions {
            NO_CONDITIONS => true,
            c => self.conditions[c as usize].matches(query.source, query.port, query.protocol),
        }
    }
}

/// Checks every rule without building the index (what `sockgate check` needs).
pub fn validate(config: &PolicyConfig) -> Result<(), PolicyError> {
    check_names(config)?;
    for (index, rule) in config.rules.iter().enumerate() {
        Rule::parse(index, rule)?;
    }
    Ok(())
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
