//! What the policy answers: a [`Decision`] on a [`Query`], and why ([`Reason`]).

use std::fmt;
use std::net::IpAddr;

use super::{Action, Policy};
use crate::config::PolicyMode;
use crate::names::{NameError, Normal};
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
    /// The mode of the rule that matched, or the policy's when none did.
    pub mode: PolicyMode,
}

impl Decision<'_> {
    /// Whether the answer is carried out: every allow, and a deny unless its mode is audit.
    /// An invalid name is a protocol error, not policy, so it is refused in audit mode too.
    pub fn enforced(&self) -> bool {
        self.action == Action::Allow
            || self.mode == PolicyMode::Enforce
            || matches!(self.reason, Reason::InvalidName(_))
    }
}

/// The rule a decision matched. Displays (and serialises) as the rule's name, or `#N` for
/// an unnamed rule; the name is read only then, not while deciding.
#[derive(Clone, Copy)]
pub struct RuleName<'a> {
    /// The policy the rule is in.
    pub(super) policy: &'a Policy,
    /// The rule's index.
    pub(super) index: u32,
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
