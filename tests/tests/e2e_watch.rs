//! `sockgate run --watch` (and `watch = true`): a change to the config, or to an included
//! file, reloads it as SIGHUP does. The config directory is laid out as the kubelet lays
//! out a ConfigMap mount and updated by the same atomic symlink swap, which a watch on the
//! file itself would never see. Each test runs in its own network namespace.

use std::{
    fs,
    net::{SocketAddr, TcpListener},
    os::unix::fs::symlink,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use sockgate_tests::{
    agent::{Agent, TempDir},
    netns::NetNs,
    programs::{banner_server, connect_tunnel},
};

const PROXY: &str = "127.0.0.1:3128";

/// A connect listener; `action` for allowed.test; `top` goes before any table.
fn config(top: &str, action: &str) -> String {
    format!(
        r#"{top}
datapath = "sockmap"

[[listener]]
name = "proxy"
mode = "connect"
address = "{PROXY}"

[[policy.rule]]
name = "the-rule"
action = "{action}"
fqdn = ["allowed.test"]

[resolver]
hosts = {{ "allowed.test" = ["127.0.0.1"], "other.test" = ["127.0.0.1"] }}

[limits]
client_first_timeout = "200ms"
"#
    )
}

/// The proxy's status line for a CONNECT to `host`:2525 (the banner server).
fn status(host: &str) -> String {
    let proxy: SocketAddr = PROXY.parse().unwrap();
    let (_stream, status) = connect_tunnel(proxy, &format!("{host}:2525"));
    status
}

/// Polls until a CONNECT to `host` gets `want`; returns how long that took.
fn until_status(host: &str, want: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = status(host);
        if got.starts_with(want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{host}: still {got:?} after {limit:?}, want {want:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Writes `text` as the `sockgate.toml` key of a new ConfigMap payload `..{stamp}` and
/// points `..data` at it as the kubelet does: a `..data_tmp` symlink renamed over `..data`
/// (atomic_writer.go), then the old payload removed.
fn publish(dir: &Path, stamp: &str, text: &str) {
    let payload = dir.join(format!("..{stamp}"));
    fs::create_dir(&payload).unwrap();
    fs::write(payload.join("sockgate.toml"), text).unwrap();
    let old = fs::read_link(dir.join("..data")).ok();
    symlink(format!("..{stamp}"), dir.join("..data_tmp")).unwrap();
    fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    if let Some(old) = old {
        fs::remove_dir_all(dir.join(old)).unwrap();
    }
}

/// Lines the agent logged for reloads from the watch.
fn watch_reloads(agent: &Agent) -> Vec<String> {
    agent
        .stderr()
        .lines()
        .filter(|l| l.contains("(watch)"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_configmap_swap_reloads_and_an_invalid_one_keeps_the_old_policy() {
    let _ns = NetNs::enter_new();
    banner_server(TcpListener::bind("127.0.0.1:2525").unwrap(), b"hi\r\n");
    let dir = TempDir::new("configmap");
    publish(dir.path(), "2026_12_01_x", &config("", "allow"));
    let path = dir.join("sockgate.toml");
    symlink("..data/sockgate.toml", &path).unwrap();
    let agent = Agent::start_at(dir, path.clone(), &["--watch"]);
    assert!(status("allowed.test").starts_with("HTTP/1.1 200"));

    let root = path.parent().unwrap();
    publish(root, "2026_12_01_y", &config("", "deny"));
    let took = until_status("allowed.test", "HTTP/1.1 403", Duration::from_secs(5));
    eprintln!("the swapped policy applied after {took:?}");
    assert!(agent.wait_stderr("reloaded"));
    let lines = watch_reloads(&agent);
    assert_eq!(lines.len(), 1, "one reload for one swap: {lines:?}");
    assert!(lines[0].contains("] reloaded "), "{lines:?}");

    // An invalid update is refused, with its one line, and the running policy stays.
    publish(root, "2026_12_01_z", "this is [not toml\n");
    assert!(
        agent.wait_stderr("reload refused (watch)"),
        "{}",
        agent.stderr()
    );
    assert!(
        status("allowed.test").starts_with("HTTP/1.1 403"),
        "the old policy stays"
    );
    let lines = watch_reloads(&agent);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].contains(" ERROR "), "{lines:?}");

    // Fixed again, it applies again.
    publish(root, "2026_12_02_a", &config("", "allow"));
    until_status("allowed.test", "HTTP/1.1 200", Duration::from_secs(5));
}

#[test]
fn watch_in_the_config_follows_its_included_files() {
    let _ns = NetNs::enter_new();
    banner_server(TcpListener::bind("127.0.0.1:2525").unwrap(), b"hi\r\n");
    let dir = TempDir::new("watch-include");
    fs::create_dir(dir.join("policy.d")).unwrap();
    let path = dir.join("sockgate.toml");
    fs::write(
        &path,
        config("watch = true\ninclude = [\"policy.d/*.toml\"]", "allow"),
    )
    .unwrap();
    let policy_d = dir.join("policy.d");
    let agent = Agent::start_at(dir, path, &[]);
    assert!(status("other.test").starts_with("HTTP/1.1 403"));

    // A team adds its file: written aside, then renamed in, as an editor or a deploy does.
    let rule = "[[policy.rule]]\nname = \"other\"\naction = \"allow\"\nfqdn = [\"other.test\"]\n";
    fs::write(policy_d.join(".20-other.toml.tmp"), rule).unwrap();
    fs::rename(
        policy_d.join(".20-other.toml.tmp"),
        policy_d.join("20-other.toml"),
    )
    .unwrap();
    until_status("other.test", "HTTP/1.1 200", Duration::from_secs(5));

    // A bad rule in it is refused, naming the file, and the old policy stays.
    fs::write(
        policy_d.join("20-other.toml"),
        rule.replace("allow", "maybe"),
    )
    .unwrap();
    assert!(
        agent.wait_stderr("reload refused (watch)"),
        "{}",
        agent.stderr()
    );
    assert!(
        agent
            .stderr()
            .contains("20-other.toml:1:1: rule #1 (\"other\")"),
        "{}",
        agent.stderr()
    );
    assert!(status("other.test").starts_with("HTTP/1.1 200"));
}
