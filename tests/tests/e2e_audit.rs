//! Audit mode with real openssl peers through an SNI listener: a denial the policy does not
//! enforce is relayed end to end and logged `action = "deny", enforced = false`; an
//! enforcing rule next to an audited one still refuses; an invalid name is refused in
//! audit mode too (a protocol error, not policy). Each test runs in its own network
//! namespace.

use sockgate_tests::{
    agent::{Agent, TempDir, assert_decision_shape},
    netns::NetNs,
    programs::{Pki, SClient, Serve, s_client_once, s_server},
};

const SNI: &str = "127.0.0.1:8443";

/// An sni listener on [`SNI`] to port 4433 with the policy `mode` and `rules` given.
fn config(mode: &str, rules: &str) -> String {
    format!(
        r#"
datapath = "sockmap"

[[listener]]
name = "sni"
mode = "sni"
address = "{SNI}"
upstream_port = 4433

[policy]
default = "deny"
mode = "{mode}"

{rules}

[resolver]
hosts = {{ "trial.test" = ["127.0.0.1"], "blocked.test" = ["127.0.0.1"], "other.test" = ["127.0.0.1"] }}
"#
    )
}

/// A full handshake and two reversed lines with `name` as the SNI, verified against `pki`.
fn relayed(pki: &Pki, name: &str) {
    let cafile = pki.cert.to_str().unwrap();
    let mut client = SClient::start(
        SNI,
        &[
            "-servername",
            name,
            "-CAfile",
            cafile,
            "-verify_return_error",
        ],
    );
    client.send_line("audited line");
    client.expect_stdout("enil detidua");
    client.send_line("0123456789");
    client.expect_stdout("9876543210");
    let (ok, out, err) = client.finish();
    assert!(ok, "s_client to {name} failed:\n{out}\n{err}");
}

/// `name` is reset before any certificate.
fn refused(name: &str) {
    let (ok, out) = s_client_once(SNI, &["-servername", name]);
    assert!(!ok, "handshake to {name} succeeded:\n{out}");
    assert!(out.contains("no peer certificate"), "{out}");
}

#[test]
fn global_audit_relays_denied_names_and_logs_them() {
    let _ns = NetNs::enter_new();
    let dir = TempDir::new("audit");
    let pki = Pki::new(&dir, &["trial.test", "other.test"]);
    let _server = s_server(&pki, 4433, Serve::Rev, &[]);
    let agent = Agent::start(&config("audit", ""));

    relayed(&pki, "other.test");
    let conn = agent.conn_for("other.test", 0);
    let d = &conn.decision;
    assert_decision_shape(d);
    assert_eq!(d["action"], "deny", "{d}");
    assert_eq!(d["enforced"], false, "{d}");
    assert_eq!(d["reason"], "default", "{d}");
    assert_eq!(conn.close["datapath"], "sockmap", "{}", conn.close);
    assert_eq!(conn.close["end"], "fin", "{}", conn.close);

    // An IP literal is not a valid SNI: refused whatever the mode.
    refused("127.0.0.1");
    let d = agent.wait_event("the invalid name", |e| {
        e["event"] == "decision" && e["fqdn"] == "127.0.0.1"
    });
    assert_eq!(d["action"], "deny", "{d}");
    assert_eq!(d["reason"], "invalid_name: ip_literal", "{d}");
    assert!(
        d.get("enforced").is_none(),
        "an enforced line says nothing: {d}"
    );
}

#[test]
fn a_rule_in_audit_next_to_enforcing_rules() {
    let _ns = NetNs::enter_new();
    let dir = TempDir::new("audit-rule");
    let pki = Pki::new(&dir, &["trial.test", "blocked.test"]);
    let _server = s_server(&pki, 4433, Serve::Rev, &[]);
    let rules = r#"
[[policy.rule]]
name = "trial"
action = "deny"
fqdn = ["trial.test"]
mode = "audit"

[[policy.rule]]
name = "blocked"
action = "deny"
fqdn = ["blocked.test"]
"#;
    let agent = Agent::start(&config("enforce", rules));

    relayed(&pki, "trial.test");
    let d = agent.conn_for("trial.test", 0).decision;
    assert_eq!(
        (&d["action"], &d["enforced"], &d["rule"]),
        (&"deny".into(), &false.into(), &"trial".into()),
        "{d}"
    );

    refused("blocked.test");
    let d = agent.conn_for("blocked.test", 0).decision;
    assert_eq!(d["action"], "deny", "{d}");
    assert_eq!(d["rule"], "blocked", "{d}");
    assert!(d.get("enforced").is_none(), "{d}");

    refused("other.test");
    let d = agent.conn_for("other.test", 0).decision;
    assert_eq!(d["reason"], "default", "{d}");
    assert!(d.get("enforced").is_none(), "the default enforces: {d}");
}
