use proptest::prelude::*;

use super::*;
use crate::config::RuleConfig;
use crate::names::NameError;
use crate::tls::Protocol;

fn rule(name: &str, action: &str, fqdn: &[&str]) -> RuleConfig {
    RuleConfig {
        name: Some(name.into()),
        action: Some(action.into()),
        fqdn: Some(fqdn.iter().map(|s| s.to_string()).collect()),
        ..RuleConfig::default()
    }
}

fn policy(rules: Vec<RuleConfig>) -> Policy {
    Policy::compile(&PolicyConfig {
        rules: rules.into(),
        ..PolicyConfig::default()
    })
    .unwrap()
}

fn tls(fqdn: &str) -> Query<'_> {
    Query {
        fqdn: Some(fqdn),
        source: None,
        port: None,
        protocol: Protocol::Tls,
    }
}

/// The matched rule's display name, as the decision log and `sockgate decide` show it.
fn name_of(d: &Decision<'_>) -> Option<String> {
    d.rule.map(|r| r.to_string())
}

fn decided(p: &Policy, q: &Query<'_>) -> (Action, Option<String>, String) {
    let d = p.decide(q);
    (d.action, name_of(&d), d.reason.to_string())
}

#[test]
fn pattern_semantics_and_first_match() {
    let p = policy(vec![
        rule("gist", "deny", &["gist.github.com"]),
        rule("github", "allow", &["github.com", "*.github.com"]),
        rule("content", "allow", &[".githubusercontent.com"]),
        rule("wild", "deny", &["*.example"]),
    ]);
    let allow = |r: &str| (Action::Allow, Some(r.to_owned()), "rule".to_owned());
    let deny = |r: &str| (Action::Deny, Some(r.to_owned()), "rule".to_owned());
    let default = (Action::Deny, None, "default".to_owned());
    assert_eq!(decided(&p, &tls("gist.github.com")), deny("gist"));
    assert_eq!(decided(&p, &tls("GitHub.com.")), allow("github"));
    assert_eq!(decided(&p, &tls("api.github.com")), allow("github"));
    assert_eq!(decided(&p, &tls("a.b.github.com")), allow("github"));
    assert_eq!(decided(&p, &tls("notgithub.com")), default);
    assert_eq!(decided(&p, &tls("githubusercontent.com")), allow("content"));
    assert_eq!(
        decided(&p, &tls("raw.githubusercontent.com")),
        allow("content")
    );
    assert_eq!(decided(&p, &tls("example")), default);
    assert_eq!(decided(&p, &tls("x.example")), deny("wild"));
    let d = p.decide(&tls("API.GitHub.com"));
    assert_eq!(d.fqdn.as_deref(), Some("api.github.com"));
}

#[test]
fn invalid_names_are_denied_whatever_the_rules() {
    let mut any = rule("any", "allow", &[]);
    any.fqdn = None;
    let p = Policy::compile(&PolicyConfig {
        default: Action::Allow,
        rules: vec![any].into(),
        ..PolicyConfig::default()
    })
    .unwrap();
    let d = p.decide(&tls("a..b"));
    assert_eq!(
        (d.action, d.rule, d.fqdn.as_deref(), d.reason.to_string()),
        (
            Action::Deny,
            None,
            Some("a..b"),
            "invalid_name: empty_label".to_owned()
        )
    );
    assert_eq!(
        p.decide(&tls("10.0.0.1")).reason,
        Reason::InvalidName(NameError::IpLiteral)
    );
    assert_eq!(
        p.decide(&tls("")).reason,
        Reason::InvalidName(NameError::EmptyName)
    );
}

#[test]
fn conditions_pick_the_first_rule_that_holds() {
    let mut ssh = rule("ssh", "allow", &[".github.com"]);
    ssh.ports = Some(vec![22]);
    ssh.protocols = Some(vec!["ssh".into()]);
    let mut office = rule("office", "allow", &["*.github.com"]);
    office.sources = Some(vec!["10.0.0.0/8".into()]);
    let block = rule("block", "deny", &["github.com", "api.github.com"]);
    let p = policy(vec![ssh, office, block]);
    let q = |fqdn, source: Option<&str>, port, protocol| Query {
        fqdn: Some(fqdn),
        source: source.map(|s| s.parse().unwrap()),
        port,
        protocol,
    };
    let rule_of = |q: Query<'_>| name_of(&p.decide(&q));
    assert_eq!(
        rule_of(q("github.com", None, Some(22), Protocol::Ssh)).as_deref(),
        Some("ssh")
    );
    assert_eq!(
        rule_of(q("github.com", None, Some(443), Protocol::Tls)).as_deref(),
        Some("block")
    );
    assert_eq!(
        rule_of(q(
            "api.github.com",
            Some("10.1.1.1"),
            Some(443),
            Protocol::Tls
        ))
        .as_deref(),
        Some("office")
    );
    assert_eq!(
        rule_of(q(
            "api.github.com",
            Some("192.0.2.1"),
            Some(443),
            Protocol::Tls
        ))
        .as_deref(),
        Some("block")
    );
    assert_eq!(
        rule_of(q("api.github.com", None, None, Protocol::Tls)).as_deref(),
        Some("block")
    );
    assert_eq!(rule_of(q("x.github.com", None, None, Protocol::Tls)), None);
}

#[test]
fn no_name_uses_name_less_rules_then_no_sni() {
    let mut ssh = RuleConfig {
        action: Some("allow".into()),
        ports: Some(vec![22]),
        ..RuleConfig::default()
    };
    ssh.protocols = Some(vec!["ssh".into(), "none".into()]);
    let p = Policy::compile(&PolicyConfig {
        no_sni: Action::Allow,
        rules: vec![ssh].into(),
        ..PolicyConfig::default()
    })
    .unwrap();
    let q = |port, protocol| Query {
        fqdn: None,
        source: None,
        port: Some(port),
        protocol,
    };
    let d = p.decide(&q(22, Protocol::None));
    assert_eq!(
        (d.action, name_of(&d).as_deref(), d.reason),
        (Action::Allow, Some("#1"), Reason::Rule)
    );
    let d = p.decide(&q(443, Protocol::Tls));
    assert_eq!(
        (d.action, name_of(&d), d.reason),
        (Action::Allow, None, Reason::NoSni)
    );
    // A name-less rule also matches named connections.
    let d = p.decide(&Query {
        fqdn: Some("example.com"),
        ..q(22, Protocol::Ssh)
    });
    assert_eq!(name_of(&d).as_deref(), Some("#1"));
}

#[test]
fn errors_name_the_rule_and_the_field() {
    let err = |rules: Vec<RuleConfig>| {
        Policy::compile(&PolicyConfig {
            rules: rules.into(),
            ..PolicyConfig::default()
        })
        .unwrap_err()
        .to_string()
    };
    assert_eq!(
        err(vec![rule("a", "permit", &["x.com"])]),
        "rule #1 (\"a\"): field `action`: unknown action `permit` (expected allow or deny)"
    );
    assert_eq!(
        err(vec![rule("a", "allow", &["*foo.com"])]),
        "rule #1 (\"a\"): field `fqdn`: bad pattern `*foo.com`: `*` may only be the whole first label, as in `*.example.com`"
    );
    assert_eq!(
        err(vec![rule("a", "allow", &["x..com"])]),
        "rule #1 (\"a\"): field `fqdn`: bad pattern `x..com`: invalid name: empty_label"
    );
    let mut r = rule("a", "allow", &["x.com"]);
    r.ports = Some(vec![0]);
    assert_eq!(
        err(vec![r]),
        "rule #1 (\"a\"): field `ports`: port 0 out of range 1-65535"
    );
    let mut r = rule("b", "allow", &["x.com"]);
    r.sources = Some(vec!["10.0.0.1/8".into()]);
    assert_eq!(
        err(vec![rule("a", "allow", &["y.com"]), r]),
        "rule #2 (\"b\"): field `sources`: bad CIDR `10.0.0.1/8`: host bits set below the prefix"
    );
    let mut r = rule("a", "allow", &["x.com"]);
    r.protocols = Some(vec!["quic".into()]);
    assert_eq!(
        err(vec![r]),
        "rule #1 (\"a\"): field `protocols`: unknown protocol `quic` (expected tls, ssh, http, unknown or none)"
    );
    assert_eq!(
        err(vec![
            rule("a", "allow", &["x.com"]),
            rule("a", "deny", &["y.com"])
        ]),
        "rule #2 (\"a\"): field `name`: duplicate name, already used by rule #1"
    );
    let unnamed = RuleConfig {
        fqdn: Some(vec!["x.com".into()]),
        ..RuleConfig::default()
    };
    assert_eq!(err(vec![unnamed]), "rule #1: field `action`: missing");
    assert_eq!(
        err(vec![rule("a", "allow", &[])]),
        "rule #1 (\"a\"): field `fqdn`: empty list (leave the field out to match any)"
    );
}

/// Ports for the property test: more than a guard holds inline, so some rules keep their
/// conditions apart.
const PORTS: [i64; 12] = [22, 443, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10];

/// A rule for the property test: a pattern over a small alphabet of names, and maybe
/// port, source and protocol conditions, so rules overlap often.
fn arb_rule() -> impl Strategy<Value = RuleConfig> {
    let label = prop::sample::select(vec!["a", "b", "c", "com"]);
    let name = prop::collection::vec(label, 1..4).prop_map(|l| l.join("."));
    let pattern =
        (prop::sample::select(vec!["", "*.", "."]), name).prop_map(|(p, n)| format!("{p}{n}"));
    (
        prop::collection::vec(pattern, 0..3),
        any::<bool>(),
        prop::option::of(prop::sample::subsequence(PORTS.to_vec(), 1..=12)),
        prop::option::of(prop::sample::subsequence(
            vec!["10.0.0.0/8", "192.0.2.0/24"],
            1..=2,
        )),
        prop::option::of(prop::sample::subsequence(vec!["tls", "ssh"], 1..=2)),
    )
        .prop_map(|(fqdn, allow, ports, sources, protocols)| RuleConfig {
            name: None,
            action: Some(if allow { "allow" } else { "deny" }.into()),
            fqdn: (!fqdn.is_empty()).then_some(fqdn),
            ports,
            sources: sources.map(|l| l.into_iter().map(str::to_owned).collect()),
            protocols: protocols.map(|l| l.into_iter().map(str::to_owned).collect()),
            mode: None,
        })
}

proptest! {
    /// The trie agrees with a linear scan of the rules in file order.
    #[test]
    fn trie_matches_linear_scan(
        rules in prop::collection::vec(arb_rule(), 0..12),
        names in prop::collection::vec(prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "com"]), 1..5), 1..20),
        port in prop::option::of(prop::sample::select(vec![22u16, 443, 80, 5])),
        source in prop::option::of(prop::sample::select(vec!["10.1.1.1", "198.51.100.7"])),
        protocol in prop::sample::select(vec![Protocol::Tls, Protocol::Ssh, Protocol::Http]),
    ) {
        let config = PolicyConfig { rules: rules.clone().into(), ..PolicyConfig::default() };
        let p = Policy::compile(&config).unwrap();
        let source = source.map(|s| s.parse().unwrap());
        for name in names.iter().map(|l| l.join(".")) {
            let q = Query { fqdn: Some(&name), source, port, protocol };
            let want = config.rules.iter().position(|r| {
                let parsed = Rule::parse(0, r).unwrap();
                let name_ok = parsed.patterns.as_ref().is_none_or(|ps| ps.iter().any(|p| p.matches(&name)));
                name_ok && parsed.conditions.matches(source, port, protocol)
            });
            let got = p.decide(&q);
            prop_assert_eq!(name_of(&got), want.map(|i| format!("#{}", i + 1)), "{}", name);
            let want_action = want.map(|i| rules[i].action.as_deref().unwrap());
            prop_assert_eq!(want_action, (got.reason == Reason::Rule).then_some(got.action.as_str()));
        }
    }
}

#[test]
fn short_and_long_rule_names_come_back_whole() {
    let long = "a-rather-long-rule-name-stored-apart";
    let p = policy(vec![
        rule("sixteen-chars!!!", "allow", &["a.test"]),
        rule("fifteen-chars!!", "allow", &["f.test"]),
        rule(long, "allow", &["b.test"]),
        rule("twelve-chars", "deny", &["c.test"]),
        RuleConfig {
            action: Some("allow".into()),
            fqdn: Some(vec!["d.test".into()]),
            ..RuleConfig::default()
        },
        rule("ünïcödé-näme", "allow", &["e.test"]),
    ]);
    let name = |fqdn| name_of(&p.decide(&tls(fqdn)));
    assert_eq!(name("a.test").as_deref(), Some("sixteen-chars!!!"));
    assert_eq!(name("b.test").as_deref(), Some(long));
    assert_eq!(name("c.test").as_deref(), Some("twelve-chars"));
    assert_eq!(name("d.test").as_deref(), Some("#5"));
    assert_eq!(name("e.test").as_deref(), Some("ünïcödé-näme"));
    // The longest name kept inside the rule's record.
    assert_eq!(name("f.test").as_deref(), Some("fifteen-chars!!"));
}

#[test]
fn audit_mode_marks_denials_unenforced() {
    let audited = |mode: Option<&str>| RuleConfig {
        mode: mode.map(str::to_owned),
        ..rule("trial", "deny", &["trial.test"])
    };
    let rules = || {
        vec![
            audited(Some("audit")),
            rule("blocked", "deny", &["blocked.test"]),
            rule("open", "allow", &["open.test"]),
        ]
    };
    // A per-rule audit next to enforcing rules.
    let p = policy(rules());
    let trial = p.decide(&tls("trial.test"));
    assert_eq!(
        (trial.action, trial.mode),
        (Action::Deny, PolicyMode::Audit)
    );
    assert!(!trial.enforced());
    assert!(p.decide(&tls("blocked.test")).enforced());
    assert!(
        p.decide(&tls("other.test")).enforced(),
        "the default enforces"
    );
    // The whole policy in audit: rules without a mode and the default follow it; a rule
    // that says enforce keeps enforcing; an invalid name is refused whatever the mode.
    let mut list = rules();
    list[1].mode = Some("enforce".into());
    let p = Policy::compile(&PolicyConfig {
        mode: PolicyMode::Audit,
        rules: list.into(),
        ..PolicyConfig::default()
    })
    .unwrap();
    assert!(!p.decide(&tls("trial.test")).enforced());
    assert!(p.decide(&tls("blocked.test")).enforced());
    let default = p.decide(&tls("other.test"));
    assert_eq!(
        (default.reason, default.enforced()),
        (Reason::Default, false)
    );
    assert!(p.decide(&tls("open.test")).enforced());
    let invalid = p.decide(&tls("bad..name"));
    assert_eq!(invalid.mode, PolicyMode::Audit);
    assert!(invalid.enforced(), "{invalid:?}");
}

#[test]
fn an_unknown_mode_names_the_rule_and_field() {
    let err = Policy::compile(&PolicyConfig {
        rules: vec![RuleConfig {
            mode: Some("log".into()),
            ..rule("r", "deny", &["a.test"])
        }]
        .into(),
        ..PolicyConfig::default()
    })
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "rule #1 (\"r\"): field `mode`: unknown mode `log` (expected enforce or audit)"
    );
}
