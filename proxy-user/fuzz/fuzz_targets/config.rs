//! The config loader on arbitrary text: no panic, and a config that loads has a policy
//! that can decide.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy_user::policy::Query;
use proxy_user::snapshot::Snapshot;
use proxy_user::tls::Protocol;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((snapshot, _)) = Snapshot::parse(text, "fuzz.toml") else {
        return;
    };
    let policy = &snapshot.policy;
    for fqdn in [
        None,
        Some("example.com"),
        Some("a.b.example.com"),
        Some("xn--bcher-kva.example"),
    ] {
        let d = policy.decide(&Query {
            fqdn,
            source: None,
            port: Some(443),
            protocol: Protocol::Tls,
        });
        if let Some(rule) = d.rule {
            assert!(!rule.to_string().is_empty());
        }
    }
});
