//! deploy/kubernetes/: the manifests validate against the Kubernetes schemas
//! (`kubernetes-validate --strict`, offline: the PyPI package bundles them), the DaemonSet
//! says what the issue asks, and the ConfigMap's config passes `sockgate check`.

use std::{fs, path::PathBuf, process::Command, time::Duration};

use serde_json::Value;
use sockgate_tests::{
    agent::{TempDir, run},
    programs::require,
    sockgate_bin,
};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes");
const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../dist/systemd/sockgate.service"
);
/// A version the pinned kubernetes-validate bundles (xtask/src/setup.rs).
const KUBERNETES: &str = "1.35.0";
/// Loading the bundled schemas takes a few seconds on a busy machine.
const VALIDATE_WAIT: Duration = Duration::from_secs(120);

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(DIR)
        .unwrap_or_else(|e| panic!("{DIR}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// `kubernetes-validate --strict` on `files`: (passed, stdout and stderr).
fn validate(files: &[PathBuf]) -> (bool, String) {
    let (status, out, err) = run(
        "kubernetes-validate",
        Command::new(require("kubernetes-validate"))
            .args(["--strict", "--kubernetes-version", KUBERNETES])
            .args(files),
        VALIDATE_WAIT,
    );
    (status.success(), format!("{out}{err}"))
}

/// Every document of every manifest, as JSON (through the PyYAML kubernetes-validate uses).
fn documents() -> Vec<Value> {
    let (status, out, err) = run(
        "python3 yaml",
        Command::new(require("python3"))
            .args([
                "-c",
                "import json, sys, yaml\n\
                 docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f))]\n\
                 json.dump(docs, sys.stdout)",
            ])
            .args(manifests()),
        VALIDATE_WAIT,
    );
    assert!(status.success(), "reading the manifests as YAML: {err}");
    serde_json::from_str::<Vec<Value>>(&out).expect("JSON from python3")
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let mut found = docs.iter().filter(|d| d["kind"] == kind);
    let doc = found.next().unwrap_or_else(|| panic!("no {kind} in {DIR}"));
    assert!(found.next().is_none(), "more than one {kind} in {DIR}");
    doc
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().expect("a string"))
        .collect()
}

#[test]
fn the_manifests_validate_against_the_kubernetes_schemas() {
    let files = manifests();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["configmap.yaml", "daemonset.yaml", "namespace.yaml"]
    );

    let (ok, log) = validate(&files);
    assert!(ok, "kubernetes-validate:\n{log}");
    for resource in [
        "namespace/sockgate",
        "configmap/sockgate-config",
        "daemonset/sockgate",
    ] {
        assert!(
            log.contains(&format!("passed for resource {resource}")),
            "{resource} was not validated:\n{log}"
        );
    }

    // The check can fail: --strict refuses a misspelt field, which Kubernetes would drop.
    let dir = TempDir::new("manifests");
    let bad = dir.join("daemonset.yaml");
    let daemonset = fs::read_to_string(&files[1]).unwrap();
    fs::write(&bad, daemonset.replace("hostNetwork:", "hostNetwrk:")).unwrap();
    let (ok, log) = validate(&[bad]);
    assert!(
        !ok && log.contains("'hostNetwrk' was unexpected"),
        "a misspelt field passed:\n{log}"
    );
}

#[test]
fn the_daemonset_runs_sockgate_as_the_issue_asks() {
    let docs = documents();
    let config_map = of_kind(&docs, "ConfigMap");
    let daemonset = of_kind(&docs, "DaemonSet");
    let namespace = of_kind(&docs, "Namespace")["metadata"]["name"].clone();
    assert_eq!(config_map["metadata"]["namespace"], namespace);
    assert_eq!(daemonset["metadata"]["namespace"], namespace);

    let pod = &daemonset["spec"]["template"];
    let spec = &pod["spec"];
    assert_eq!(spec["hostNetwork"], true);
    let containers = spec["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(
        strings(&c["args"]),
        ["run", "--watch", "-c", "/etc/sockgate/sockgate.toml"]
    );

    // Exactly the unit's capabilities, and nothing privileged.
    let unit = fs::read_to_string(UNIT).unwrap();
    let bounding: Vec<&str> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("a CapabilityBoundingSet= line in the unit")
        .split_whitespace()
        .map(|cap| cap.strip_prefix("CAP_").unwrap())
        .collect();
    let security = &c["securityContext"];
    assert_eq!(strings(&security["capabilities"]["add"]), bounding);
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(security["privileged"], false);
    assert_eq!(security["runAsNonRoot"], true);
    // File capabilities are ignored under no_new_privs, which false would set.
    assert_ne!(security["allowPrivilegeEscalation"], false);
    assert!(
        spec.get("securityContext")
            .is_none_or(|s| s.get("privileged").is_none())
    );

    // The ConfigMap as a directory: a subPath mount never sees an update.
    let mounts = c["volumeMounts"].as_array().unwrap();
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0]["mountPath"], "/etc/sockgate");
    assert!(mounts[0].get("subPath").is_none(), "{}", mounts[0]);
    let volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mounts[0]["name"])
        .expect("the mounted volume");
    assert_eq!(
        volume["configMap"]["name"], config_map["metadata"]["name"],
        "the volume is not the ConfigMap"
    );

    // The probes and the scrape go where the ConfigMap's [admin] listens.
    let text = config_map["data"]["sockgate.toml"]
        .as_str()
        .expect("a sockgate.toml key");
    let config = proxy_user::config::Config::parse(text, "configmap.yaml")
        .unwrap_or_else(|e| panic!("the ConfigMap's config: {e}"));
    let admin = config.admin.expect("an [admin] table").address;
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["host"], admin.ip().to_string(), "{probe}");
        assert_eq!(get["port"], admin.port(), "{probe}");
    }
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    assert_eq!(annotations["prometheus.io/port"], admin.port().to_string());

    // SIGTERM's drain fits in the grace Kubernetes gives before SIGKILL.
    let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > config.limits.shutdown_grace.as_secs(),
        "terminationGracePeriodSeconds {grace} <= shutdown_grace {:?}",
        config.limits.shutdown_grace
    );
}

#[test]
fn the_configmaps_config_passes_sockgate_check() {
    let docs = documents();
    let text = of_kind(&docs, "ConfigMap")["data"]["sockgate.toml"]
        .as_str()
        .expect("a sockgate.toml key")
        .to_owned();
    let dir = TempDir::new("configmap");
    let path = dir.join("sockgate.toml");
    fs::write(&path, text).unwrap();
    let (status, out, err) = run(
        "sockgate check",
        Command::new(sockgate_bin())
            .arg("check")
            .arg("-c")
            .arg(&path),
        VALIDATE_WAIT,
    );
    assert!(status.success(), "sockgate check:\n{out}{err}");
}
