//! `sockgate check` and `sockgate decide`, run as the operator runs them.

use std::path::PathBuf;
use std::process::{Command, Output};

/// The example config shipped in the repository.
fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/sockgate.toml")
}

fn sockgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sockgate"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run sockgate")
}

/// Writes `text` to `NAME.toml` in this run's temp dir; returns its path.
fn config_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sockgate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write the config");
    path
}

/// Writes `text` to a file of its own and runs `sockgate check` on it: (exit code, stderr,
/// the file's path).
fn check_text(name: &str, text: &str) -> (i32, String, String) {
    let path = config_file(name, text);
    let out = sockgate(&["check", "-c", path.to_str().expect("UTF-8 path")]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (
        out.status.code().expect("exit code"),
        stderr,
        path.display().to_string(),
    )
}

#[test]
fn check_accepts_the_example() {
    let out = sockgate(&["check", "-c", example().to_str().expect("UTF-8 path")]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok: 2 listeners, 5 rules (4 allow, 1 deny), default deny\n"
    );
}

#[test]
fn check_names_what_is_wrong() {
    let rule = |body: &str| {
        format!(
            "[[policy.rule]]\nname = \"r\"\naction = \"allow\"\nfqdn = [\"example.com\"]\n{body}\n"
        )
    };
    let cases: &[(&str, String, &str)] = &[
        (
            "syntax",
            "[policy\ndefault = \"deny\"\n".to_owned(),
            ":1:8: ",
        ),
        (
            "cidr",
            rule("sources = [\"10.0.0.0/33\"]"),
            "rule #1 (\"r\"): field `sources`: bad CIDR `10.0.0.0/33`",
        ),
        (
            "pattern",
            rule("").replace("example.com", "api.*.example.com"),
            "rule #1 (\"r\"): field `fqdn`: bad pattern `api.*.example.com`",
        ),
        (
            "action",
            rule("").replace("\"allow\"", "\"permit\""),
            "rule #1 (\"r\"): field `action`: unknown action `permit`",
        ),
        (
            "port",
            rule("ports = [443, 70000]"),
            "rule #1 (\"r\"): field `ports`: port 70000 out of range 1-65535",
        ),
        (
            "duplicate",
            format!("{}{}", rule(""), rule("")),
            "rule #2 (\"r\"): field `name`: duplicate name, already used by rule #1",
        ),
        (
            "unknown_key",
            rule("prots = [443]"),
            ":5:1: unknown field `prots`",
        ),
    ];
    for (name, text, want) in cases {
        let (code, stderr, path) = check_text(name, text);
        assert_eq!(code, 1, "{name}: {stderr}");
        assert!(
            stderr.contains(want),
            "{name}: {stderr:?} should contain {want:?}"
        );
        if want.starts_with(':') {
            assert!(
                stderr.contains(&format!("{path}{want}")),
                "{name}: {stderr:?} names the file"
            );
        }
    }
}

#[test]
fn decide_prints_one_json_object() {
    let config = example();
    let config = config.to_str().expect("UTF-8 path");
    let decide = |extra: &[&str]| {
        let mut args = vec!["decide", "-c", config];
        args.extend_from_slice(extra);
        let out = sockgate(&args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    };
    assert_eq!(
        decide(&["--fqdn", "API.GitHub.com", "--port", "443"]),
        "{\"action\":\"allow\",\"rule\":\"github\",\"fqdn\":\"api.github.com\",\"reason\":\"rule\",\"mode\":\"enforce\"}\n"
    );
    assert_eq!(
        decide(&["--fqdn", "example.org", "--port", "443"]),
        "{\"action\":\"deny\",\"rule\":null,\"fqdn\":\"example.org\",\"reason\":\"default\",\"mode\":\"enforce\"}\n"
    );
    assert_eq!(
        decide(&["--fqdn", "bad..name"]),
        "{\"action\":\"deny\",\"rule\":null,\"fqdn\":\"bad..name\",\"reason\":\"invalid_name: empty_label\",\"mode\":\"enforce\"}\n"
    );
    assert_eq!(
        decide(&["--port", "22", "--source", "10.20.3.4", "--protocol", "ssh"]),
        "{\"action\":\"allow\",\"rule\":\"lab-ssh\",\"fqdn\":null,\"reason\":\"rule\",\"mode\":\"enforce\"}\n"
    );
}

/// `decide` shows the mode of the rule that matched.
#[test]
fn decide_shows_the_mode() {
    let text = "[policy]\nmode = \"audit\"\n[[policy.rule]]\nname = \"strict\"\naction = \"deny\"\nfqdn = [\"strict.test\"]\nmode = \"enforce\"\n";
    let path = config_file("audit", text);
    let path = path.to_str().expect("UTF-8 path");
    let decide = |fqdn: &str| {
        let out = sockgate(&["decide", "-c", path, "--fqdn", fqdn]);
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8(out.stdout).expect("UTF-8 output")
    };
    assert_eq!(
        decide("strict.test"),
        "{\"action\":\"deny\",\"rule\":\"strict\",\"fqdn\":\"strict.test\",\"reason\":\"rule\",\"mode\":\"enforce\"}\n"
    );
    assert_eq!(
        decide("other.test"),
        "{\"action\":\"deny\",\"rule\":null,\"fqdn\":\"other.test\",\"reason\":\"default\",\"mode\":\"audit\"}\n"
    );
}

/// Writes a config that includes `policy.d/*.toml` and the given rule files, each
/// `(name, text)`; returns the config's path.
fn with_includes(dir_name: &str, files: &[(&str, String)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sockgate-cli-{dir_name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("policy.d")).expect("temp dir");
    for (name, text) in files {
        std::fs::write(dir.join("policy.d").join(name), text).expect("write a rule file");
    }
    let path = dir.join("sockgate.toml");
    std::fs::write(
        &path,
        "include = [\"policy.d/*.toml\"]\n\
         [[listener]]\nname = \"sni\"\naddress = \"127.0.0.1:8443\"\nmode = \"sni\"\nupstream_port = 443\n\
         [[policy.rule]]\nname = \"main\"\naction = \"allow\"\nfqdn = [\"main.example\"]\n",
    )
    .expect("write the config");
    path
}

fn rule(name: &str, extra: &str) -> String {
    format!(
        "# {name}\n[[policy.rule]]\nname = \"{name}\"\naction = \"allow\"\nfqdn = [\"{name}.example\"]\n{extra}"
    )
}

#[test]
fn check_follows_includes_in_name_order() {
    let path = with_includes(
        "include-ok",
        &[
            // Both files have a rule for a.example: the first match wins.
            (
                "20-b.toml",
                rule("b", "").replace("\"b.example", "\"a.example"),
            ),
            (
                "10-a.toml",
                rule("a", "") + &rule("deny-c", "").replace("allow", "deny"),
            ),
        ],
    );
    let out = sockgate(&["check", "-c", path.to_str().expect("UTF-8 path")]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok: 1 listener, 4 rules (3 allow, 1 deny), default deny\n"
    );
    let out = sockgate(&[
        "decide",
        "-c",
        path.to_str().expect("UTF-8 path"),
        "--fqdn",
        "a.example",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("{\"action\":\"allow\",\"rule\":\"a\""),
        "{stdout}"
    );
}

#[test]
fn check_names_the_included_file_line_and_rule() {
    let bad = rule("ok", "") + &rule("bad", "ports = [70000]\n");
    let path = with_includes(
        "include-bad",
        &[
            ("10-first.toml", rule("first", "")),
            ("20-second.toml", bad),
        ],
    );
    let out = sockgate(&["check", "-c", path.to_str().expect("UTF-8 path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let second = path.with_file_name("policy.d/20-second.toml");
    // The second rule of that file: its header is on line 7.
    let want = format!(
        "{}:7:1: rule #2 (\"bad\"): field `ports`: port 70000 out of range 1-65535",
        second.display()
    );
    assert!(stderr.contains(&want), "{stderr:?} should contain {want:?}");

    let path = with_includes(
        "include-dup",
        &[
            ("10-first.toml", rule("first", "")),
            ("20-second.toml", rule("first", "")),
        ],
    );
    let out = sockgate(&["check", "-c", path.to_str().expect("UTF-8 path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = path.with_file_name("policy.d/10-first.toml");
    let want = format!(
        "{}:2:1: rule #1 (\"first\"): field `name`: duplicate name, already used at {}:2:1",
        path.with_file_name("policy.d/20-second.toml").display(),
        first.display()
    );
    assert!(stderr.contains(&want), "{stderr:?} should contain {want:?}");
}
