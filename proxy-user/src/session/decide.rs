//! Step 4: the policy on what is known. An allowed connection goes on as [`Admitted`], and
//! so does a denied one whose mode is audit; an enforced deny ends with
//! [`Refusal::Policy`]. The last decision asked is the one logged.

use std::net::IpAddr;

use super::refusal::Refusal;
use crate::{
    events,
    policy::{Action, Decision, Policy, Query, Reason},
    tls::Protocol,
};

/// The policy let the connection through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// The policy's answer: a deny here was not enforced.
    pub action: Action,
    /// Why it answered so.
    pub reason: Reason,
}

impl Admitted {
    /// Whether the policy's answer was carried out (false: a deny in audit mode).
    pub fn enforced(&self) -> bool {
        self.action == Action::Allow
    }
}

/// Decides on `fqdn` (or its absence) at `port` for a client speaking `protocol`.
pub fn decide(
    policy: &Policy,
    line: &mut events::Decision,
    fqdn: Option<&str>,
    port: u16,
    protocol: Protocol,
) -> Result<Admitted, Refusal> {
    let decision = query(policy, line.client.ip(), fqdn, port, protocol);
    enforce(line, decision)
}

/// CONNECT before the tunnel opens: the protocol is not known yet, so this refuses only if
/// no protocol could be allowed. The first bytes through the tunnel are decided again.
pub fn decide_connect(
    policy: &Policy,
    line: &mut events::Decision,
    host: &str,
    port: u16,
) -> Result<Admitted, Refusal> {
    let source = line.client.ip();
    let decision = Protocol::ALL
        .iter()
        .map(|&protocol| query(policy, source, Some(host), port, protocol))
        .find(|d| d.action == Action::Allow)
        .unwrap_or_else(|| query(policy, source, Some(host), port, Protocol::None));
    enforce(line, decision)
}

fn query<'q>(
    policy: &'q Policy,
    source: IpAddr,
    fqdn: Option<&'q str>,
    port: u16,
    protocol: Protocol,
) -> Decision<'q> {
    policy.decide(&Query {
        fqdn,
        source: Some(source),
        port: Some(port),
        protocol,
    })
}

/// Notes `decision` in the decision line and applies it.
fn enforce(line: &mut events::Decision, decision: Decision<'_>) -> Result<Admitted, Refusal> {
    if let Some(fqdn) = decision.fqdn {
        line.fqdn = Some(fqdn.to_string());
    }
    line.rule = decision.rule.map(|rule| rule.to_string());
    if decision.enforced() && decision.action == Action::Deny {
        return Err(Refusal::Policy(decision.reason));
    }
    Ok(Admitted {
        action: decision.action,
        reason: decision.reason,
    })
}
