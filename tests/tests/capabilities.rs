//! sockgate without root. As `nobody` holding exactly the capabilities SECURITY.md
//! documents (CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, plus CAP_NET_BIND_SERVICE for a port
//! below 1024),
//! it loads the sockmap datapath, forces its send buffers, binds a TPROXY listener, and
//! relays an allowed TLS connection end to end. With no capability at all, `datapath =
//! "auto"` falls back to splice(2) and says why. The tests themselves need root, to create
//! the namespace and to hand out the capabilities.

use std::fs;

use serde_json::Value;
use sockgate_tests::{
    agent::{Agent, NOBODY, TempDir, WAIT, config_file, run, unprivileged},
    netns::NetNs,
    programs::{Pki, SClient, Serve, s_server},
    require_root,
};

/// What SECURITY.md tells operators to grant (setpriv names, capability numbers from
/// linux/capability.h).
const DOCUMENTED: &[(&str, u32)] = &[("bpf", 39), ("net_admin", 12), ("perfmon", 38)];
/// Added to [`DOCUMENTED`] when a listener binds a port below 1024.
const LOW_PORT: (&str, u32) = ("net_bind_service", 10);

/// A TLS server on 4433 behind an sni listener at `sni`; with `tproxy`, also a TPROXY
/// listener (which needs IP_TRANSPARENT) that no connection uses.
fn config(datapath: &str, sni: &str, tproxy: bool) -> String {
    let tproxy = if tproxy {
        "[[listener]]\nname = \"tproxy\"\nmode = \"transparent\"\ntproxy = true\n\
         address = \"127.0.0.1:15001\"\n"
    } else {
        ""
    };
    format!(
        r#"
datapath = "{datapath}"

[[listener]]
name = "sni"
mode = "sni"
address = "{sni}"
upstream_port = 4433

{tproxy}
[policy]
default = "deny"

[[policy.rule]]
name = "allow-test"
action = "allow"
fqdn = ["allowed.test"]

[resolver]
hosts = {{ "allowed.test" = ["127.0.0.1"] }}
"#
    )
}

/// The uid and effective capability bits of a running process.
fn identity(pid: u32) -> (u32, u64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            .split_whitespace()
            .next()
            .expect("a value")
            .to_owned()
    };
    let uid = field("Uid:").parse().expect("a uid");
    let eff = u64::from_str_radix(&field("CapEff:"), 16).expect("hex CapEff");
    (uid, eff)
}

fn bits(caps: &[(&str, u32)]) -> u64 {
    caps.iter().fold(0, |acc, (_, bit)| acc | 1 << bit)
}

/// Starts the server and `sockgate` as `nobody` with `caps`, checks who it runs as, relays
/// one TLS connection through `sni` and returns its close line and the agent.
fn relay_as_nobody(datapath: &str, sni: &str, caps: &[(&str, u32)]) -> (Value, Agent) {
    let dir = TempDir::new("caps");
    let pki = Pki::new(&dir, &["allowed.test"]);
    let _server = s_server(&pki, 4433, Serve::Rev, &[]);
    let names: Vec<&str> = caps.iter().map(|(name, _)| *name).collect();
    let agent = Agent::start_unprivileged(&config(datapath, sni, true), &names);

    let (uid, eff) = identity(agent.pid());
    assert_eq!(uid, NOBODY, "sockgate runs as uid {uid}");
    assert_eq!(
        eff,
        bits(caps),
        "sockgate's effective capabilities are {eff:#x}, not exactly {names:?}"
    );

    let cafile = pki.cert.to_str().unwrap();
    let mut client = SClient::start(
        sni,
        &[
            "-servername",
            "allowed.test",
            "-CAfile",
            cafile,
            "-verify_return_error",
        ],
    );
    client.send_line("without root");
    client.expect_stdout("toor tuohtiw");
    let (ok, out, err) = client.finish();
    assert!(ok, "s_client failed:\n{out}\n{err}");

    let conn = agent.conn_for("allowed.test", 0);
    assert_eq!(conn.decision["action"], "allow", "{}", conn.decision);
    let close = conn.close;
    assert_eq!(close["end"], "fin", "{close}");
    assert!(close["bytes_up"].as_u64().unwrap() > 0, "{close}");
    assert!(close["bytes_down"].as_u64().unwrap() > 0, "{close}");
    (close, agent)
}

/// The documented set is enough for everything but low ports: the kernel program loads
/// (`datapath = "sockmap"` refuses to start otherwise), SO_SNDBUFFORCE works, the TPROXY
/// listener binds, and the connection is relayed by the kernel.
#[test]
fn documented_capabilities_run_the_sockmap_datapath() {
    require_root();
    let _ns = NetNs::enter_new();
    let (close, agent) = relay_as_nobody("sockmap", "127.0.0.1:8443", DOCUMENTED);
    assert_eq!(close["datapath"], "sockmap", "{close}");
    let log = agent.stderr();
    assert!(log.contains("datapath sockmap"), "startup line:\n{log}");
    assert!(log.contains("listener tproxy (transparent)"), "{log}");
    assert!(!log.contains("SO_SNDBUFFORCE refused"), "{log}");
}

/// A listener on port 443 needs CAP_NET_BIND_SERVICE on top, and nothing else.
#[test]
fn low_port_needs_net_bind_service() {
    require_root();
    let _ns = NetNs::enter_new();
    let caps = [DOCUMENTED, &[LOW_PORT]].concat();
    let (close, _agent) = relay_as_nobody("sockmap", "127.0.0.1:443", &caps);
    assert_eq!(close["datapath"], "sockmap", "{close}");
}

/// Without CAP_PERFMON the verdict cannot read sequence numbers, so it is not loaded:
/// `auto` relays over splice(2) and the log names the missing capability.
#[test]
fn without_perfmon_falls_back_to_splice() {
    require_root();
    let _ns = NetNs::enter_new();
    let (close, agent) = relay_as_nobody("auto", "127.0.0.1:8443", &DOCUMENTED[..2]);
    assert_eq!(close["datapath"], "splice", "{close}");
    let log = agent.stderr();
    assert!(log.contains("cannot use helper"), "{log}");
    assert!(log.contains("CAP_PERFMON"), "{log}");
}

/// With no capability, `auto` still relays, over splice(2), and the log says what is
/// missing: the eBPF program (EPERM, with the capabilities to grant) and SO_SNDBUFFORCE.
/// The TPROXY listener is left out: it cannot bind without CAP_NET_ADMIN.
#[test]
fn no_capabilities_fall_back_to_splice() {
    require_root();
    let _ns = NetNs::enter_new();
    let dir = TempDir::new("nocaps");
    let pki = Pki::new(&dir, &["allowed.test"]);
    let _server = s_server(&pki, 4433, Serve::Rev, &[]);
    let sni = "127.0.0.1:8443";
    let agent = Agent::start_unprivileged(&config("auto", sni, false), &[]);
    assert_eq!(identity(agent.pid()), (NOBODY, 0));

    let mut client = SClient::start(sni, &["-servername", "allowed.test"]);
    client.send_line("no caps");
    client.expect_stdout("spac on");
    let (ok, out, err) = client.finish();
    assert!(ok, "s_client failed:\n{out}\n{err}");
    let conn = agent.conn_for("allowed.test", 0);
    assert_eq!(conn.close["datapath"], "splice", "{}", conn.close);

    let log = agent.stderr();
    for needle in [
        "eBPF program not loaded",
        "Operation not permitted",
        "needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON",
        "datapath splice (Auto)",
        "SO_SNDBUFFORCE refused",
    ] {
        assert!(log.contains(needle), "no {needle:?} in the log:\n{log}");
    }
}

/// `datapath = "sockmap"` without the capabilities refuses to start, naming the cause.
#[test]
fn sockmap_without_capabilities_refuses_to_start() {
    require_root();
    let _ns = NetNs::enter_new();
    let dir = TempDir::new("nocaps-sockmap");
    let path = config_file(&dir, &config("sockmap", "127.0.0.1:8443", false));
    let (status, _, err) = run(
        "sockgate as nobody",
        unprivileged(&[]).arg("run").arg("-c").arg(&path),
        WAIT,
    );
    assert!(
        !status.success(),
        "started without the eBPF program:\n{err}"
    );
    assert!(
        err.contains("needs the eBPF program") && err.contains("Operation not permitted"),
        "{err}"
    );
}
