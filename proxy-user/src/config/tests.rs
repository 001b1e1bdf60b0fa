use std::time::Duration;

use super::*;

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, "test.toml").map_err(|e| e.to_string())
}

#[test]
fn defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.datapath, Datapath::Auto);
    assert_eq!(c.policy.default, Action::Deny);
    assert_eq!(c.policy.deny_with, DenyWith::Reset);
    assert_eq!(c.limits.handshake_timeout, Duration::from_secs(10));
    assert_eq!(c.limits.max_client_hello, 65536);
    assert_eq!(c.resolver.timeout, Duration::from_secs(2));
}

#[test]
fn the_example_config_is_valid() {
    let text = include_str!("../../../examples/sockgate.toml");
    let c = parse(text).unwrap();
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(
        c.listeners[1].kind(),
        ListenerKind::Sni { upstream_port: 443 }
    );
    assert_eq!(
        c.listeners[0].kind(),
        ListenerKind::Connect {
            allow_sni_mismatch: false
        }
    );
    assert!(c.listeners.iter().all(|l| l.address.ip().is_loopback()));
}

#[test]
fn syntax_errors_carry_file_line_and_column() {
    assert_eq!(
        parse("[policy]\ndefault = \"deny\"\nfoo = 1\n").unwrap_err(),
        "test.toml:3:1: unknown field `foo`, expected one of `default`, `no_sni`, `deny_with`, `mode`, `rule`"
    );
    let e = parse("[policy\n").unwrap_err();
    assert!(e.starts_with("test.toml:1:8: "), "{e}");
    let e = parse("[[listener]]\nname = \"x\"\nmode = \"connect\"\naddress = \"localhost:80\"\n")
        .unwrap_err();
    assert!(e.starts_with("test.toml:4:11: "), "{e}");
    let e = parse("[limits]\nidle_timeout = 5\n").unwrap_err();
    assert!(e.starts_with("test.toml:2:16: "), "{e}");
}

#[test]
fn listener_errors_name_listener_and_field() {
    let l =
        |extra: &str| format!("[[listener]]\nname = \"a\"\naddress = \"[::1]:8443\"\n{extra}\n");
    assert_eq!(
        parse(&l("mode = \"sni\"")).unwrap_err(),
        "listener #1 (\"a\"): field `upstream_port`: required for mode = \"sni\""
    );
    assert_eq!(
        parse(&l("mode = \"connect\"\ntproxy = true")).unwrap_err(),
        "listener #1 (\"a\"): field `tproxy`: only applies to mode = \"transparent\", not \"connect\""
    );
    assert_eq!(
        parse(&l("mode = \"sni\"\nupstream_port = 0")).unwrap_err(),
        "listener #1 (\"a\"): field `upstream_port`: port 0"
    );
    let two = format!(
        "{}{}",
        l("mode = \"connect\""),
        l("mode = \"connect\"").replace("8443", "8444")
    );
    assert_eq!(
        parse(&two).unwrap_err(),
        "listener #2 (\"a\"): field `name`: duplicate name, already used by listener #1"
    );
    let c = parse(&l("mode = \"transparent\"")).unwrap();
    assert_eq!(
        c.listeners[0].kind(),
        ListenerKind::Transparent {
            verify_destination: true,
            tproxy: false
        }
    );
}

#[test]
fn resolver_and_limits() {
    let c = parse("[resolver]\nnameservers = [\"1.1.1.1\", \"[::1]:5353\"]\nhosts = { \"Db.Internal\" = [\"10.0.0.5\"] }\n").unwrap();
    let ns = c.resolver.nameservers.unwrap();
    assert_eq!(ns[0].0, "1.1.1.1:53".parse().unwrap());
    assert_eq!(ns[1].0, "[::1]:5353".parse().unwrap());
    assert_eq!(
        parse("[resolver]\nhosts = { \"a..b\" = [\"10.0.0.5\"] }").unwrap_err(),
        "resolver: hosts entry `a..b`: invalid name: empty_label"
    );
    assert_eq!(
        parse("[resolver]\nhosts = { \"a\" = [] }").unwrap_err(),
        "resolver: hosts entry `a`: no addresses"
    );
    assert_eq!(
        parse("[limits]\nhandshake_timeout = \"0\"").unwrap_err(),
        "limits: field `handshake_timeout`: must be more than zero"
    );
    assert_eq!(
        parse("[limits]\nmax_client_hello = 100").unwrap_err(),
        "limits: field `max_client_hello`: must be between 512 and 1048576 bytes"
    );
    assert_eq!(
        parse("[limits]\nidle_timeout = \"0\"")
            .unwrap()
            .limits
            .idle_timeout,
        Duration::ZERO
    );
}
