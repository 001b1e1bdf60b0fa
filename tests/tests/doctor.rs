//! `sockgate doctor` on this host: as root it loads the verdict for real and exits 0; as
//! `nobody` (setpriv, as in capabilities.rs) it fails naming the missing capabilities and
//! exits 1, unless it holds exactly the documented ones; bad input exits 2 with one line.

use std::process::Command;

use serde_json::Value;
use sockgate_tests::{
    agent::{TempDir, WAIT, config_file, run, unprivileged},
    require_root, sockgate_bin,
};

/// Every check doctor runs without `-c`, in order.
const CHECKS: &[&str] = &[
    "kernel",
    "btf",
    "config",
    "capabilities",
    "layout",
    "verdict",
    "nofile",
];

const DOCUMENTED: &[&str] = &["bpf", "net_admin", "perfmon"];

/// What `doctor` printed, in both forms, and the exit codes (which must agree).
struct Answer {
    code: i32,
    lines: Vec<String>,
    json: Value,
}

impl Answer {
    /// The text line of check `name`.
    fn line(&self, name: &str) -> &str {
        self.lines
            .iter()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no {name} line in:\n{}", self.lines.join("\n")))
    }

    fn names(&self) -> Vec<&str> {
        self.json["checks"]
            .as_array()
            .expect("checks is an array")
            .iter()
            .map(|c| c["check"].as_str().expect("check is a string"))
            .collect()
    }
}

/// Runs `doctor [args]` and `doctor [args] --json` through `cmd` (a fresh command each).
fn doctor(mut cmd: impl FnMut() -> Command, args: &[&str]) -> Answer {
    let (status, out, err) = run("sockgate doctor", cmd().arg("doctor").args(args), WAIT);
    let code = status.code().expect("an exit code");
    let (json_status, json_out, json_err) = run(
        "sockgate doctor --json",
        cmd().arg("doctor").args(args).arg("--json"),
        WAIT,
    );
    assert_eq!(json_status.code(), Some(code), "{json_out}\n{json_err}");
    let json: Value = serde_json::from_str(&json_out)
        .unwrap_or_else(|e| panic!("--json is not JSON ({e}):\n{json_out}\n{json_err}"));
    let lines: Vec<String> = out.lines().map(str::to_owned).collect();
    // One line per check, then the verdict; text and JSON say the same.
    let checks = json["checks"].as_array().expect("checks");
    assert_eq!(lines.len(), checks.len() + 1, "{out}\n{err}");
    for (line, check) in lines.iter().zip(checks) {
        let status = check["status"].as_str().unwrap();
        let name = check["check"].as_str().unwrap();
        assert!(
            line.starts_with(status) && line.split_whitespace().nth(1) == Some(name),
            "{line} vs {check}"
        );
        assert_eq!(status != "ok", check["fix"].is_string(), "{check}");
        if status != "ok" {
            assert!(line.contains("; fix: "), "{line}");
        }
    }
    let failed = checks.iter().any(|c| c["status"] == "fail");
    assert_eq!(json["sockmap"], !failed, "{json}");
    assert_eq!(code, if failed { 1 } else { 0 }, "{out}");
    Answer { code, lines, json }
}

fn as_root() -> Command {
    Command::new(sockgate_bin())
}

#[test]
fn as_root_the_verdict_loads_and_doctor_exits_0() {
    require_root();
    let answer = doctor(as_root, &[]);
    assert_eq!(answer.code, 0, "{}", answer.lines.join("\n"));
    assert_eq!(answer.names(), CHECKS);
    assert_eq!(answer.json["sockmap"], true);
    for name in ["btf", "config", "capabilities", "layout", "verdict"] {
        assert!(
            answer.line(name).starts_with("ok "),
            "{}",
            answer.line(name)
        );
    }
    assert!(answer.line("verdict").contains("then unloaded"));
    assert!(answer.line("layout").contains("sk_buff.cb at 40"));
    assert_eq!(answer.lines.last().unwrap(), "sockmap datapath: yes");
}

/// `-c` adds the datapath line, nft for a transparent listener, CAP_NET_BIND_SERVICE for
/// a port below 1024, and sizes the descriptor check; `datapath = "splice"` fails.
#[test]
fn a_config_adds_its_own_checks() {
    require_root();
    let dir = TempDir::new("doctor");
    let config = |datapath: &str| {
        format!(
            "datapath = \"{datapath}\"\n[[listener]]\nname = \"t\"\nmode = \"transparent\"\n\
             address = \"127.0.0.1:443\"\n[limits]\nmax_connections = 100\n"
        )
    };
    let path = config_file(&dir, &config("auto"));
    let answer = doctor(as_root, &["-c", path.to_str().unwrap()]);
    assert_eq!(answer.code, 0, "{}", answer.lines.join("\n"));
    assert!(answer.names().contains(&"datapath") && answer.names().contains(&"nft"));
    assert!(
        answer.line("nft").starts_with("ok "),
        "{}",
        answer.line("nft")
    );
    assert!(answer.line("capabilities").contains("CAP_NET_BIND_SERVICE"));
    assert!(
        answer.line("nofile").contains("2 x 100 + 64 = 264"),
        "{}",
        answer.line("nofile")
    );

    let path = config_file(&dir, &config("splice"));
    let answer = doctor(as_root, &["-c", path.to_str().unwrap()]);
    assert_eq!(answer.code, 1);
    assert!(answer.line("datapath").starts_with("fail "));
    assert!(
        answer.line("nofile").contains("6 x 100"),
        "{}",
        answer.line("nofile")
    );
    assert_eq!(
        answer.lines.last().unwrap(),
        "sockmap datapath: no (datapath failed)"
    );
}

/// With no capability, the capability check names all three and the load fails on EPERM.
#[test]
fn as_nobody_without_capabilities_doctor_names_them_and_exits_1() {
    require_root();
    let answer = doctor(|| unprivileged(&[]), &[]);
    assert_eq!(answer.code, 1);
    assert_eq!(answer.names(), CHECKS);
    let caps = answer.line("capabilities");
    assert!(
        caps.starts_with("fail capabilities missing CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON"),
        "{caps}"
    );
    let verdict = answer.line("verdict");
    assert!(
        verdict.starts_with("fail") && verdict.contains("Operation not permitted"),
        "{verdict}"
    );
    // Unprivileged reads of BTF and the kernel config still work.
    assert!(answer.line("layout").starts_with("ok "));
    assert_eq!(
        answer.lines.last().unwrap(),
        "sockmap datapath: no (capabilities, verdict failed)"
    );
}

/// Without CAP_PERFMON only that one is named, and the verifier's refusal is one line.
#[test]
fn as_nobody_without_perfmon_doctor_names_it() {
    require_root();
    let answer = doctor(|| unprivileged(&DOCUMENTED[..2]), &[]);
    assert_eq!(answer.code, 1);
    let caps = answer.line("capabilities");
    assert!(
        caps.starts_with("fail capabilities missing CAP_PERFMON ("),
        "{caps}"
    );
    let verdict = answer.line("verdict");
    assert!(verdict.contains("cannot use helper"), "{verdict}");
}

/// The documented set is enough: the same answer as root.
#[test]
fn as_nobody_with_the_documented_capabilities_doctor_exits_0() {
    require_root();
    let answer = doctor(|| unprivileged(DOCUMENTED), &[]);
    assert_eq!(answer.code, 0, "{}", answer.lines.join("\n"));
    assert!(answer.line("verdict").starts_with("ok "));
}

/// An unreadable or invalid `-c` file: exit 2, one line on stderr naming it, no stdout.
#[test]
fn bad_input_exits_2_with_one_line() {
    let dir = TempDir::new("doctor-bad");
    let missing = dir.join("missing.toml");
    let invalid = config_file(&dir, "[limits]\nmax_connections = 0\n");
    for (path, needle) in [
        (&missing, "No such file or directory"),
        (&invalid, "max_connections"),
    ] {
        for json in [false, true] {
            let mut cmd = as_root();
            cmd.arg("doctor").arg("-c").arg(path);
            if json {
                cmd.arg("--json");
            }
            let (status, out, err) = run("sockgate doctor", &mut cmd, WAIT);
            assert_eq!(status.code(), Some(2), "{out}\n{err}");
            assert_eq!(out, "", "{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(
                err.starts_with("sockgate doctor: ") && err.contains(needle),
                "{err}"
            );
        }
    }
}
