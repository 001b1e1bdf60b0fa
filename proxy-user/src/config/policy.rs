//! The `[policy]` table. Rule fields are kept as written (strings and integers): the
//! policy checks them as it compiles them, naming the rule and the field in its errors.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use super::rules::RuleList;

/// What to do with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
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

/// `[policy]`: the default, and the rules in file order.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// What happens when no rule matches a name.
    #[serde(default = "deny")]
    pub default: Action,
    /// What happens when there is no name at all (no SNI, no CONNECT host) and no rule
    /// without `fqdn` matches.
    #[serde(default = "deny")]
    pub no_sni: Action,
    /// How a denied TLS connection is refused.
    #[serde(default)]
    pub deny_with: DenyWith,
    /// Whether denials are enforced or only logged; a rule's own `mode` overrides it.
    #[serde(default)]
    pub mode: PolicyMode,
    /// `[[policy.rule]]`, in file order; the first match wins.
    #[serde(default, rename = "rule")]
    pub rules: RuleList,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            default: Action::Deny,
            no_sni: Action::Deny,
            deny_with: DenyWith::default(),
            mode: PolicyMode::default(),
            rules: RuleList::new(),
        }
    }
}

fn deny() -> Action {
    Action::Deny
}

/// How a denied connection is refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DenyWith {
    /// Close with a TCP reset.
    #[default]
    Reset,
    /// Send a TLS alert (access_denied) before closing, when the client spoke TLS.
    Alert,
}

/// Whether the policy's denials are enforced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    /// Denied connections are refused.
    #[default]
    Enforce,
    /// Denied connections are logged as denied and relayed as if allowed, to trial a
    /// policy before enforcing it.
    Audit,
}

impl PolicyMode {
    /// The config and JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyMode::Enforce => "enforce",
            PolicyMode::Audit => "audit",
        }
    }
}

impl std::str::FromStr for PolicyMode {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "enforce" => Ok(PolicyMode::Enforce),
            "audit" => Ok(PolicyMode::Audit),
            _ => Err(()),
        }
    }
}

/// One `[[policy.rule]]`, as written; [`RuleList`] keeps them packed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// A unique name, used in decisions and logs.
    pub name: Option<String>,
    /// `allow` or `deny`.
    pub action: Option<String>,
    /// Name patterns; absent matches any name and no name.
    pub fqdn: Option<Vec<String>>,
    /// Destination ports; absent matches any.
    pub ports: Option<Vec<i64>>,
    /// Source CIDRs; absent matches any.
    pub sources: Option<Vec<String>>,
    /// Protocols (tls, ssh, http, unknown, none); absent matches any.
    pub protocols: Option<Vec<String>>,
    /// `enforce` or `audit`; absent takes the policy's `mode`.
    pub mode: Option<String>,
}
