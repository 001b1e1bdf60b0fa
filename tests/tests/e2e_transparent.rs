//! `sockgate run` as a transparent gateway: a client namespace routes through a gateway
//! namespace (sockgate plus an nftables REDIRECT or TPROXY rule) to a server namespace,
//! over veth pairs. The gateway does not forward, so the client reaches the server only
//! through sockgate.
//!
//! ```text
//! client 10.1.0.2 --veth-- 10.1.0.1 gateway 10.2.0.1 --veth-- 10.2.0.2, 10.2.0.3 server
//! ```

use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    process::Command,
};

use sockgate_tests::{
    agent::{Agent, Proc, TempDir, WAIT, assert_close_shape, assert_decision_shape, run},
    netns::NetNs,
    programs::{self, Pki, SClient, Serve, banner_server, require, s_client_once, s_server},
};

const SERVER: &str = "10.2.0.2";
/// Another address of the server that no name resolves to.
const OTHER: &str = "10.2.0.3";

/// Three namespaces and two veth pairs.
struct Routed {
    client: NetNs,
    gateway: NetNs,
    server: NetNs,
}

fn ip(args: &[&str]) {
    let (status, _, err) = run("ip", Command::new(require("ip")).args(args), WAIT);
    assert!(status.success(), "ip {args:?}: {err}");
}

impl Routed {
    fn new() -> Self {
        let routed = Self {
            client: NetNs::new(),
            gateway: NetNs::new(),
            server: NetNs::new(),
        };
        let (c, g, s) = (
            routed.client.name(),
            routed.gateway.name(),
            routed.server.name(),
        );
        // Created inside the namespaces, so the names never clash between tests.
        ip(&[
            "link", "add", "c0", "netns", c, "type", "veth", "peer", "name", "g0", "netns", g,
        ]);
        ip(&[
            "link", "add", "s0", "netns", s, "type", "veth", "peer", "name", "g1", "netns", g,
        ]);
        ip(&["-n", c, "addr", "add", "10.1.0.2/24", "dev", "c0"]);
        ip(&["-n", c, "link", "set", "c0", "up"]);
        ip(&["-n", c, "route", "add", "default", "via", "10.1.0.1"]);
        ip(&["-n", g, "addr", "add", "10.1.0.1/24", "dev", "g0"]);
        ip(&["-n", g, "link", "set", "g0", "up"]);
        ip(&["-n", g, "addr", "add", "10.2.0.1/24", "dev", "g1"]);
        ip(&["-n", g, "link", "set", "g1", "up"]);
        ip(&["-n", s, "addr", "add", "10.2.0.2/24", "dev", "s0"]);
        ip(&["-n", s, "addr", "add", "10.2.0.3/24", "dev", "s0"]);
        ip(&["-n", s, "link", "set", "s0", "up"]);
        ip(&["-n", s, "route", "add", "default", "via", "10.2.0.1"]);
        routed
    }

    /// Loads nftables `rules` in the gateway.
    fn nft(&self, dir: &TempDir, rules: &str) {
        self.gateway.enter();
        programs::nft(dir, rules);
    }
}

fn config(port: u16, tproxy: bool) -> String {
    format!(
        r#"
datapath = "sockmap"

[[listener]]
name = "gateway"
mode = "transparent"
address = "0.0.0.0:{port}"
verify_destination = true
tproxy = {tproxy}

[policy]
default = "deny"
no_sni = "deny"

[[policy.rule]]
name = "allow-test"
action = "allow"
fqdn = ["allowed.test"]

[resolver]
hosts = {{ "allowed.test" = ["{SERVER}"], "denied.test" = ["{SERVER}"] }}
"#
    )
}

/// Starts s_server in the server namespace on `port`.
fn server(routed: &Routed, pki: &Pki, port: u16) -> Proc {
    routed.server.enter();
    s_server(pki, port, Serve::Rev, &[])
}

/// From the client namespace: the allowed name completes and echoes, the denied one and
/// an allowed name sent to the wrong address are reset; the decision log agrees.
fn check_policy(routed: &Routed, agent: &Agent, pki: &Pki, port: u16) {
    routed.client.enter();
    let target = format!("{SERVER}:{port}");
    let mut client = SClient::start(
        &target,
        &[
            "-servername",
            "allowed.test",
            "-CAfile",
            pki.cert.to_str().unwrap(),
            "-verify_return_error",
        ],
    );
    client.send_line("through the gateway");
    client.expect_stdout("yawetag eht hguorht");
    let (ok, out, err) = client.finish();
    assert!(ok, "s_client through the gateway failed:\n{out}\n{err}");

    let conn = agent.conn_for("allowed.test", 0);
    let d = &conn.decision;
    assert_decision_shape(d);
    assert_eq!(d["listener"], "gateway", "{d}");
    assert_eq!(d["action"], "allow", "{d}");
    assert_eq!(d["fqdn_source"], "sni", "{d}");
    assert_eq!(d["dst"], target.as_str(), "{d}");
    assert!(
        d["client"].as_str().unwrap().starts_with("10.1.0.2:"),
        "{d}"
    );
    let c = &conn.close;
    assert_close_shape(c);
    assert_eq!(c["datapath"], "sockmap", "{c}");
    assert_eq!(c["end"], "fin", "{c}");

    let (ok, out) = s_client_once(&target, &["-servername", "denied.test"]);
    assert!(!ok, "denied.test got through:\n{out}");
    assert!(
        out.contains("errno=104"),
        "denied.test was not reset:\n{out}"
    );
    let conn = agent.conn_for("denied.test", 0);
    assert_eq!(conn.decision["action"], "deny", "{}", conn.decision);
    assert_eq!(conn.decision["reason"], "default", "{}", conn.decision);
    assert_eq!(conn.close["end"], "rst", "{}", conn.close);

    // verify_destination: allowed.test does not resolve to OTHER.
    let (ok, out) = s_client_once(&format!("{OTHER}:{port}"), &["-servername", "allowed.test"]);
    assert!(
        !ok,
        "an allowed name at the wrong address got through:\n{out}"
    );
    let conn = agent.conn_for("allowed.test", 1);
    assert_eq!(conn.decision["action"], "deny", "{}", conn.decision);
    assert_eq!(conn.decision["reason"], "sni_mismatch", "{}", conn.decision);
    assert_eq!(
        conn.decision["dst"],
        format!("{OTHER}:{port}").as_str(),
        "{}",
        conn.decision
    );
    assert_eq!(conn.close["end"], "rst", "{}", conn.close);
}

/// nftables REDIRECT: sockgate finds the original destination with SO_ORIGINAL_DST.
#[test]
fn transparent_redirect() {
    let routed = Routed::new();
    let dir = TempDir::new("redirect");
    let pki = Pki::new(&dir, &["allowed.test", "denied.test"]);
    let _server = server(&routed, &pki, 443);
    routed.nft(
        &dir,
        "table ip sockgate {\n  chain prerouting {\n    type nat hook prerouting priority dstnat;\n    \
         tcp dport 443 redirect to :15001\n  }\n}\n",
    );
    routed.gateway.enter();
    let agent = Agent::start(&config(15001, false));
    check_policy(&routed, &agent, &pki, 443);
}

/// nftables TPROXY: the original destination is the accepted socket's own address; the
/// listener needs IP_TRANSPARENT, marked packets are routed to the local table.
#[test]
fn transparent_tproxy() {
    let routed = Routed::new();
    let dir = TempDir::new("tproxy");
    let pki = Pki::new(&dir, &["allowed.test", "denied.test"]);
    let _server = server(&routed, &pki, 443);
    routed.nft(
        &dir,
        "table ip sockgate {\n  chain prerouting {\n    type filter hook prerouting priority mangle;\n    \
         tcp dport 443 tproxy to :15002 meta mark set 1 accept\n  }\n}\n",
    );
    let g = routed.gateway.name();
    ip(&["-n", g, "rule", "add", "fwmark", "1", "lookup", "100"]);
    ip(&[
        "-n",
        g,
        "route",
        "add",
        "local",
        "0.0.0.0/0",
        "dev",
        "lo",
        "table",
        "100",
    ]);
    routed.gateway.enter();
    let agent = Agent::start(&config(15002, true));
    check_policy(&routed, &agent, &pki, 443);
}

/// REDIRECT of port 443 to sockgate on 15001 in the gateway.
const REDIRECT_443: &str = "table ip sockgate {\n  chain prerouting {\n    type nat hook prerouting priority dstnat;\n    \
     tcp dport 443 redirect to :15001\n  }\n}\n";

/// A server-speaks-first banner service on the server's port 443, sockgate behind a
/// REDIRECT with `no_sni = <no_sni>`, and the client namespace entered.
fn banner_gateway(no_sni: &str) -> (Routed, Agent) {
    let routed = Routed::new();
    let dir = TempDir::new("no-sni");
    routed.server.enter();
    let listener = TcpListener::bind(format!("{SERVER}:443")).expect("binding the banner server");
    banner_server(listener, BANNER);
    routed.nft(&dir, REDIRECT_443);
    routed.gateway.enter();
    let agent = Agent::start(
        &config(15001, false)
            .replace("no_sni = \"deny\"", &format!("no_sni = \"{no_sni}\""))
            .replace(
                "[resolver]",
                "[limits]\nclient_first_timeout = \"300ms\"\n\n[resolver]",
            ),
    );
    routed.client.enter();
    (routed, agent)
}

const BANNER: &[u8] = b"220 banner.test ready\r\n";

/// A client that sends nothing has no SNI: after `client_first_timeout`, `no_sni =
/// "allow"` lets the connection through to its original destination, so the banner
/// arrives and bytes flow both ways.
#[test]
fn transparent_no_sni_allowed() {
    let (_routed, agent) = banner_gateway("allow");
    let target = format!("{SERVER}:443");
    let mut stream = TcpStream::connect(&target).expect("connecting through the gateway");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut banner = [0u8; BANNER.len()];
    stream.read_exact(&mut banner).expect("the banner");
    assert_eq!(&banner, BANNER);
    stream.write_all(b"EHLO client\r\n").unwrap();
    let mut echo = [0u8; 13];
    stream.read_exact(&mut echo).expect("the echo");
    assert_eq!(&echo, b"EHLO client\r\n");
    stream.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("EOF after our FIN");
    assert!(rest.is_empty(), "unexpected bytes: {rest:?}");

    let conn = agent.wait_conn("the banner connection", |_| true);
    let d = &conn.decision;
    assert_decision_shape(d);
    assert_eq!(d["action"], "allow", "{d}");
    assert_eq!(d["reason"], "no_sni", "{d}");
    assert_eq!(d["protocol"], "none", "{d}");
    assert_eq!(d["fqdn"], serde_json::Value::Null, "{d}");
    assert_eq!(d["fqdn_source"], "none", "{d}");
    assert_eq!(d["dst"], target.as_str(), "{d}");
    let c = &conn.close;
    assert_close_shape(c);
    assert_eq!(c["datapath"], "sockmap", "{c}");
    assert_eq!(c["end"], "fin", "{c}");
    assert_eq!(
        c["bytes_down"].as_u64().unwrap(),
        BANNER.len() as u64 + 13,
        "{c}"
    );
    assert!(c["duration_ms"].as_u64().unwrap() >= 300, "{c}");
}

/// The same silent client with `no_sni = "deny"`: reset after `client_first_timeout`,
/// and the banner never arrives.
#[test]
fn transparent_no_sni_denied() {
    let (_routed, agent) = banner_gateway("deny");
    let mut stream =
        TcpStream::connect(format!("{SERVER}:443")).expect("connecting through the gateway");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = Vec::new();
    let err = stream
        .read_to_end(&mut got)
        .expect_err("a reset, not a clean end");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert!(got.is_empty(), "bytes got through: {got:?}");

    let conn = agent.wait_conn("the silent connection", |_| true);
    let d = &conn.decision;
    assert_decision_shape(d);
    assert_eq!(d["action"], "deny", "{d}");
    assert_eq!(d["reason"], "no_sni", "{d}");
    assert_eq!(d["protocol"], "none", "{d}");
    assert_eq!(d["fqdn"], serde_json::Value::Null, "{d}");
    assert_eq!(conn.close["end"], "rst", "{}", conn.close);
    assert_eq!(conn.close["datapath"], serde_json::Value::Null);
}

/// `deny_with = "alert"`: a denied TLS name gets a fatal access_denied alert and a FIN
/// instead of a reset; the allowed name still completes.
#[test]
fn transparent_deny_with_alert() {
    let routed = Routed::new();
    let dir = TempDir::new("alert");
    let pki = Pki::new(&dir, &["allowed.test", "denied.test"]);
    let _server = server(&routed, &pki, 443);
    routed.nft(&dir, REDIRECT_443);
    routed.gateway.enter();
    let agent = Agent::start(&config(15001, false).replace(
        "no_sni = \"deny\"",
        "no_sni = \"deny\"\ndeny_with = \"alert\"",
    ));
    routed.client.enter();
    let target = format!("{SERVER}:443");

    let (ok, out) = s_client_once(&target, &["-servername", "denied.test"]);
    assert!(!ok, "denied.test got through:\n{out}");
    assert!(
        out.contains("alert access denied"),
        "no access_denied alert:\n{out}"
    );
    assert!(
        !out.contains("errno=104"),
        "reset as well as the alert:\n{out}"
    );
    let conn = agent.conn_for("denied.test", 0);
    let d = &conn.decision;
    assert_eq!(d["action"], "deny", "{d}");
    assert_eq!(d["reason"], "default", "{d}");
    assert_eq!(d["protocol"], "tls", "{d}");
    let c = &conn.close;
    assert_eq!(c["end"], "fin", "{c}");
    // One alert record: 5 bytes of header, 2 of alert.
    assert_eq!(c["bytes_down"], 7, "{c}");
    assert_eq!(c["datapath"], serde_json::Value::Null);

    let mut client = SClient::start(
        &target,
        &[
            "-servername",
            "allowed.test",
            "-CAfile",
            pki.cert.to_str().unwrap(),
            "-verify_return_error",
        ],
    );
    client.send_line("still allowed");
    client.expect_stdout("dewolla llits");
    let (ok, out, err) = client.finish();
    assert!(ok, "s_client to allowed.test failed:\n{out}\n{err}");
}
