//! The config loader on arbitrary text: no panic, and a config that validates must compile
//! into a policy that can decide.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy_user::config::Config;
use proxy_user::policy::{Policy, Query};
use proxy_user::tls::Protocol;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::parse(text, "fuzz.toml") else {
        return;
    };
    let policy = Policy::compile(&config.policy).expect("a validated policy compiles");
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
