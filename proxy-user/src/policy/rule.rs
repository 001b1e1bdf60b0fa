//! One rule from the config, checked field by field. Errors name the rule and the field.

use std::fmt;
use std::net::IpAddr;

use super::Action;
use super::cidr::{Cidr, CidrError};
use super::pattern::{Pattern, PatternError};
use crate::config::{PolicyMode, RuleView};
use crate::tls::{Protocol, UnknownProtocol};

/// Which rule an error or a decision is about: its position in the file, and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    /// The rule's index, from 0, in file order.
    pub index: usize,
    /// Its name, if it has one.
    pub name: Option<String>,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "#{} ({name:?})", self.index + 1),
            None => write!(f, "#{}", self.index + 1),
        }
    }
}

/// An invalid rule: which rule, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule {rule}: field `{field}`: {problem}")]
pub struct PolicyError {
    /// The rule.
    pub rule: RuleRef,
    /// The config field (`name`, `action`, `fqdn`, `ports`, `sources`, `protocols`, `mode`).
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: RuleProblem,
}

/// What is wrong with a rule field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleProblem {
    /// A required field is absent.
    #[error("missing")]
    Missing,
    /// A list is empty, which would match nothing.
    #[error("empty list (leave the field out to match any)")]
    EmptyList,
    /// The name is the empty string.
    #[error("empty name")]
    EmptyName,
    /// Another rule already has this name.
    #[error("duplicate name, already used by rule #{}", .0 + 1)]
    DuplicateName(usize),
    /// A rule of another file already has this name: that file's `path:line:column`.
    #[error("duplicate name, already used at {0}")]
    DuplicateNameAt(String),
    /// An action other than allow or deny.
    #[error("unknown action `{0}` (expected allow or deny)")]
    UnknownAction(String),
    /// A mode other than enforce or audit.
    #[error("unknown mode `{0}` (expected enforce or audit)")]
    UnknownMode(String),
    /// A bad FQDN pattern.
    #[error("bad pattern `{pattern}`: {why}")]
    BadPattern {
        /// The pattern as written.
        pattern: String,
        /// Why it is refused.
        why: PatternError,
    },
    /// A port outside 1-65535.
    #[error("port {0} out of range 1-65535")]
    PortOutOfRange(i64),
    /// A bad source block.
    #[error("bad CIDR `{value}`: {why}")]
    BadCidr {
        /// The block as written.
        value: String,
        /// Why it is refused.
        why: CidrError,
    },
    /// A protocol name the classifier does not produce.
    #[error(transparent)]
    UnknownProtocol(#[from] UnknownProtocol),
    /// More rules than the index can number.
    #[error("too many rules (at most {max})")]
    TooMany {
        /// The most rules a policy can have.
        max: usize,
    },
}

/// A rule's conditions other than the name. A missing condition matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conditions {
    /// Destination ports, sorted.
    pub ports: Option<Box<[u16]>>,
    /// Source address blocks.
    pub sources: Option<Box<[Cidr]>>,
    /// Protocols, as a bit set over [`Protocol::ALL`].
    pub protocols: Option<u8>,
}

impl Conditions {
    /// Whether no condition is set, so the rule matches on its name alone.
    pub fn is_empty(&self) -> bool {
        self.ports.is_none() && self.sources.is_none() && self.protocols.is_none()
    }

    /// Whether a connection with these properties meets every condition. An unknown source
    /// or port meets no condition on it.
    pub fn matches(&self, source: Option<IpAddr>, port: Option<u16>, protocol: Protocol) -> bool {
        let port_ok = |ports: &[u16]| port.is_some_and(|p| ports.binary_search(&p).is_ok());
        let source_ok =
            |cidrs: &[Cidr]| source.is_some_and(|ip| cidrs.iter().any(|c| c.contains(ip)));
        self.ports.as_deref().is_none_or(port_ok)
            && self.sources.as_deref().is_none_or(source_ok)
            && self
                .protocols
                .is_none_or(|set| set & protocol_bit(protocol) != 0)
    }
}

/// The bit of `p` in a protocol set.
pub(super) fn protocol_bit(p: Protocol) -> u8 {
    let i = Protocol::ALL.iter().position(|q| *q == p).unwrap_or(0);
    1 << i
}

/// A checked rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// What a match does.
    pub action: Action,
    /// The name patterns; `None` when the rule has no `fqdn` field and matches any name,
    /// or none.
    pub patterns: Option<Vec<Pattern>>,
    /// The other conditions.
    pub conditions: Conditions,
    /// Its own mode; `None` takes the policy's.
    pub mode: Option<PolicyMode>,
}

impl Rule {
    /// Checks rule number `index` (from 0). Duplicate names are the caller's to check.
    pub fn parse(index: usize, config: RuleView<'_>) -> Result<Rule, PolicyError> {
        let fail = |field, problem| PolicyError {
            rule: RuleRef {
                index,
                name: config.name.map(str::to_owned),
            },
            field,
            problem,
        };
        if config.name == Some("") {
            return Err(fail("name", RuleProblem::EmptyName));
        }
        let action = match config.action {
            None => return Err(fail("action", RuleProblem::Missing)),
            Some(a) => a
                .parse()
                .map_err(|_| fail("action", RuleProblem::UnknownAction(a.to_owned())))?,
        };
        let mode = config
            .mode
            .map(|m| {
                m.parse()
                    .map_err(|_| fail("mode", RuleProblem::UnknownMode(m.to_owned())))
            })
            .transpose()?;
        for (field, empty) in [
            ("fqdn", config.fqdn.is_some_and(|l| l.is_empty())),
            ("ports", config.ports.is_some_and(|l| l.is_empty())),
            ("sources", config.sources.is_some_and(|l| l.is_empty())),
            ("protocols", config.protocols.is_some_and(|l| l.is_empty())),
        ] {
            if empty {
                return Err(fail(field, RuleProblem::EmptyList));
            }
        }
        let patterns = config
            .fqdn
            .map(|list| {
                list.iter()
                    .map(|p| {
                        Pattern::parse(p).map_err(|why| {
                            fail(
                                "fqdn",
                                RuleProblem::BadPattern {
                                    pattern: p.to_owned(),
                                    why,
                                },
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let ports = config
            .ports
            .map(|list| {
                let mut ports = list
                    .iter()
                    .map(|p| {
                        u16::try_from(p)
                            .ok()
                            .filter(|p| *p != 0)
                            .ok_or_else(|| fail("ports", RuleProblem::PortOutOfRange(p)))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                ports.sort_unstable();
                ports.dedup();
                Ok(ports.into_boxed_slice())
            })
            .transpose()?;
        let sources = config
            .sources
            .map(|list| {
                list.iter()
                    .map(|s| {
                        s.parse::<Cidr>().map_err(|why| {
                            fail(
                                "sources",
                                RuleProblem::BadCidr {
                                    value: s.to_owned(),
                                    why,
                                },
                            )
                        })
                    })
                    .collect::<Result<Box<[_]>, _>>()
            })
            .transpose()?;
        let protocols = config
            .protocols
            .map(|list| {
                list.iter().try_fold(0u8, |set, p| {
                    let p: Protocol = p
                        .parse()
                        .map_err(|e| fail("protocols", RuleProblem::UnknownProtocol(e)))?;
                    Ok(set | protocol_bit(p))
                })
            })
            .transpose()?;
        Ok(Rule {
            action,
            patterns,
            conditions: Conditions {
                ports,
                sources,
                protocols,
            },
            mode,
        })
    }
}
