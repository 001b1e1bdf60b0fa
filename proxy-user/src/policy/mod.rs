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
mod decision;
mod guard;
mod huge_pages;
mod packed_name;
mod pattern;
mod rule;
mod trie;

use std::fmt;

pub use cidr::{Cidr, CidrError};
pub use decision::{Decision, Fqdn, Query, Reason, RuleName};
use guard::Guard;
use packed_name::PackedName;
pub use pattern::{Pattern, PatternError};
pub use rule::{Conditions, PolicyError, Rule, RuleProblem, RuleRef};
use trie::{Candidate, MAX_RULES, NameTrie, Slot};

pub use crate::config::Action;
use crate::config::{DenyWith, PolicyConfig, PolicyMode};
use crate::names;

/// A compiled policy, ready for [`Policy::decide`]. Cheap to share behind an `Arc`.
pub struct Policy {
    /// The action when no rule matches a name.
    default: Action,
    /// The action when there is no name and no name-less rule matches.
    no_sni: Action,
    /// How a denied TLS connection is refused.
    deny_with: DenyWith,
    /// The mode of the default and `no_sni` answers, and of rules without their own.
    mode: PolicyMode,
    /// The rules whose effective mode is audit, as a bit set by rule index; empty when
    /// none is, so an enforcing policy pays nothing for it.
    audited: Vec<u64>,
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
            mode: config.mode,
            audited: Vec::new(),
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
            if rule.mode.unwrap_or(config.mode) == PolicyMode::Audit {
                policy.audit(index);
            }
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
                    mode: self.mode,
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
                    mode: self.mode,
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
                mode: self.mode,
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
            mode: self.rule_mode(rule),
        }
    }

    /// Marks rule `index` as audited.
    fn audit(&mut self, index: usize) {
        let word = index / 64;
        if self.audited.len() <= word {
            self.audited.resize(word + 1, 0);
        }
        self.audited[word] |= 1 << (index % 64);
    }

    /// The effective mode of rule `index`.
    fn rule_mode(&self, index: u32) -> PolicyMode {
        let (word, bit) = (index as usize / 64, index % 64);
        match self.audited.get(word) {
            Some(w) if w & (1 << bit) != 0 => PolicyMode::Audit,
            _ => PolicyMode::Enforce,
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
