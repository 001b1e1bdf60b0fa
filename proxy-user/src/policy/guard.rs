//! A rule's conditions besides the name, compiled for lookups: one aligned 32-byte record
//! that also holds the rule's number and action, so that checking a conditional candidate
//! costs one cache miss and no rule record. Protocol sets and up to `INLINE_PORTS` ports sit
//! inside it; source blocks and longer port lists are kept apart, in the plain
//! [`Conditions`] form.

use std::net::IpAddr;

use super::Action;
use super::rule::{Conditions, protocol_bit};
use crate::tls::Protocol;

/// The most ports kept inside a guard.
const INLINE_PORTS: usize = 10;
/// `Guard::ports_len` when there is no port condition.
const ANY_PORT: u8 = u8::MAX;
/// `Guard::apart` when the conditions are all inside the guard.
const INLINE: u32 = u32::MAX;

/// A conditional rule's guard; see the module docs.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
pub struct Guard {
    /// The rule's number.
    pub rule: u32,
    /// Index of the rule's conditions in the policy's conditions kept apart, or `INLINE`.
    apart: u32,
    /// What the rule does when its conditions hold.
    pub action: Action,
    /// The protocols allowed, as a bit set over [`Protocol::ALL`]; all bits set without a
    /// protocol condition.
    protocols: u8,
    /// How many of `ports` are used, or `ANY_PORT`.
    ports_len: u8,
    /// The destination ports allowed.
    ports: [u16; INLINE_PORTS],
}

const _: () = assert!(size_of::<Guard>() == 32);

impl Guard {
    /// The guard of rule `rule`, which does `action` when `conditions` hold. Conditions
    /// that do not fit inside go to the end of `apart`.
    pub fn new(
        rule: u32,
        action: Action,
        conditions: Conditions,
        apart: &mut Vec<Conditions>,
    ) -> Guard {
        let mut guard = Guard {
            rule,
            apart: INLINE,
            action,
            protocols: u8::MAX,
            ports_len: ANY_PORT,
            ports: [0; INLINE_PORTS],
        };
        let ports_fit = conditions
            .ports
            .as_deref()
            .is_none_or(|p| p.len() <= INLINE_PORTS);
        if conditions.sources.is_some() || !ports_fit {
            guard.apart = u32::try_from(apart.len()).expect("fewer guards than rules");
            apart.push(conditions);
            return guard;
        }
        if let Some(set) = conditions.protocols {
            guard.protocols = set;
        }
        if let Some(ports) = conditions.ports.as_deref() {
            guard.ports[..ports.len()].copy_from_slice(ports);
            guard.ports_len = ports.len() as u8;
        }
        guard
    }

    /// Whether a connection with these properties meets the conditions; the same answer as
    /// [`Conditions::matches`].
    pub fn holds(
        &self,
        source: Option<IpAddr>,
        port: Option<u16>,
        protocol: Protocol,
        apart: &[Conditions],
    ) -> bool {
        if self.apart != INLINE {
            return apart[self.apart as usize].matches(source, port, protocol);
        }
        let port_ok = || {
            self.ports_len == ANY_PORT
                || port.is_some_and(|p| self.ports[..usize::from(self.ports_len)].contains(&p))
        };
        self.protocols & protocol_bit(protocol) != 0 && port_ok()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::policy::Cidr;

    fn arb_conditions() -> impl Strategy<Value = Conditions> {
        let ports = prop::collection::btree_set(
            prop_oneof![prop::sample::select(vec![22u16, 80, 443, 8443]), 1u16..40],
            1..14,
        )
        .prop_map(|set| set.into_iter().collect::<Box<[u16]>>());
        let sources =
            prop::sample::subsequence(vec!["10.0.0.0/8", "192.0.2.0/24", "2001:db8::/32"], 1..=2)
                .prop_map(|l| {
                    l.iter()
                        .map(|c| c.parse::<Cidr>().unwrap())
                        .collect::<Box<[_]>>()
                });
        (
            prop::option::of(ports),
            prop::option::of(sources),
            prop::option::of(1u8..32),
        )
            .prop_map(|(ports, sources, protocols)| Conditions {
                ports,
                sources,
                protocols,
            })
    }

    proptest! {
        /// A guard answers as the conditions it was made from, inline or apart.
        #[test]
        fn agrees_with_the_conditions(
            conditions in arb_conditions(),
            port in prop::option::of(prop::sample::select(vec![22u16, 80, 443, 8443, 5, 39, 40])),
            source in prop::option::of(prop::sample::select(vec!["10.1.2.3", "192.0.2.9", "198.51.100.1", "2001:db8::1"])),
            protocol in prop::sample::select(Protocol::ALL.to_vec()),
        ) {
            let mut apart = Vec::new();
            let guard = Guard::new(7, Action::Deny, conditions.clone(), &mut apart);
            prop_assert_eq!((guard.rule, guard.action), (7, Action::Deny));
            let inline = conditions.sources.is_none()
                && conditions.ports.as_ref().is_none_or(|p| p.len() <= INLINE_PORTS);
            prop_assert_eq!(apart.len(), usize::from(!inline));
            let source = source.map(|s| s.parse().unwrap());
            prop_assert_eq!(
                guard.holds(source, port, protocol, &apart),
                conditions.matches(source, port, protocol)
            );
        }
    }
}
