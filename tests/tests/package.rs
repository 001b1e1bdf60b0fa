//! The Debian package `cargo xtask dist` builds (`cargo xtask test` builds it first): it
//! holds what the issue lists, installs into this machine with `dpkg -i`, its binary checks
//! the packaged config, and `dpkg -r` leaves nothing behind but that conffile (the unit is
//! a plain file, never enabled by the package, so nothing masks it). `dpkg --purge` takes
//! the conffile too. The `sockgate` system user stays, as Debian keeps system users (see
//! dist/debian/postinst).

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use sockgate_tests::{
    agent::{TempDir, run},
    programs::require,
    require_root,
};

const DEB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/debian/sockgate.deb");
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/sockgate.toml");
const CONFFILE: &str = "/etc/sockgate/sockgate.toml";
const UNIT: &str = "/usr/lib/systemd/system/sockgate.service";
/// dpkg and its maintainer scripts on a busy machine.
const DPKG_WAIT: Duration = Duration::from_secs(120);

/// Where a package puts files; a file or directory named for sockgate anywhere in them
/// counts as left behind.
const ROOTS: &[&str] = &["/etc", "/usr", "/var/lib/systemd"];

/// Every path under [`ROOTS`] whose name contains "sockgate" (symlinks not followed).
fn named_sockgate() -> BTreeSet<PathBuf> {
    fn walk(dir: &Path, found: &mut BTreeSet<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_name().to_string_lossy().contains("sockgate") {
                found.insert(path.clone());
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&path, found);
            }
        }
    }
    let mut found = BTreeSet::new();
    for root in ROOTS {
        walk(Path::new(root), &mut found);
    }
    found
}

/// Runs `program args`, failing the test unless it exits 0; returns stdout.
fn ok(program: &str, args: &[&str]) -> String {
    let (status, out, err) = run(
        program,
        Command::new(require(program)).args(args),
        DPKG_WAIT,
    );
    assert!(status.success(), "{program} {args:?}: {status}\n{out}{err}");
    out
}

/// dpkg's status of the package: `None` when it is neither installed nor remembered.
fn status() -> Option<String> {
    let (code, out, _) = run(
        "dpkg-query",
        Command::new(require("dpkg-query")).args(["-W", "-f=${Status}", "sockgate"]),
        DPKG_WAIT,
    );
    code.success()
        .then_some(out)
        .filter(|s| !s.is_empty() && !s.ends_with("not-installed"))
}

fn user_exists() -> bool {
    let (code, _, _) = run(
        "getent",
        Command::new(require("getent")).args(["passwd", "sockgate"]),
        DPKG_WAIT,
    );
    code.success()
}

fn deb() -> &'static str {
    assert!(
        Path::new(DEB).is_file(),
        "{DEB} is missing: build it with `cargo xtask dist` (cargo xtask test does)"
    );
    DEB
}

#[test]
fn the_package_holds_the_binary_the_conffile_the_unit_and_the_readme() {
    let deb = deb();
    assert_eq!(
        ok("dpkg-deb", &["--field", deb, "Package"]).trim(),
        "sockgate"
    );
    let contents = ok("dpkg-deb", &["--contents", deb]);
    for path in [
        "./usr/bin/sockgate",
        "./etc/sockgate/sockgate.toml",
        "./usr/lib/systemd/system/sockgate.service",
        "./usr/share/doc/sockgate/README.md",
        "./usr/share/doc/sockgate/copyright",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(path)),
            "{path} is not in the package:\n{contents}"
        );
    }

    let control = TempDir::new("control");
    ok(
        "dpkg-deb",
        &["--control", deb, control.path().to_str().unwrap()],
    );
    let conffiles = fs::read_to_string(control.join("conffiles")).unwrap();
    assert_eq!(conffiles.lines().collect::<Vec<_>>(), [CONFFILE]);
    let postinst = fs::read_to_string(control.join("postinst")).unwrap();
    assert!(postinst.contains("useradd --system"), "{postinst}");
    // Not enabled nor started on install: the operator writes the policy first.
    assert!(!postinst.contains("deb-systemd-invoke start"), "{postinst}");
}

#[test]
fn dpkg_installs_it_and_removing_it_leaves_only_the_conffile() {
    require_root();
    let deb = deb();
    // A run that failed half-way may have left it here; it is this test's own package.
    if status().is_some() {
        ok("dpkg", &["--purge", "sockgate"]);
    }

    let before = named_sockgate();
    ok("dpkg", &["--install", deb]);
    assert_eq!(status().as_deref(), Some("install ok installed"));
    let passwd = ok("getent", &["passwd", "sockgate"]);
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "not a system user: {passwd}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{passwd}");

    // The installed binary on the installed config.
    let (code, out, err) = run(
        "sockgate check",
        Command::new("/usr/bin/sockgate").args(["check", "-c", CONFFILE]),
        DPKG_WAIT,
    );
    assert!(code.success(), "sockgate check -c {CONFFILE}:\n{out}{err}");
    // Compared as text, so a mismatch prints lines rather than bytes; a stale package (not
    // rebuilt by `cargo xtask dist` since the example changed) fails here.
    assert_eq!(
        fs::read_to_string(CONFFILE).unwrap(),
        fs::read_to_string(EXAMPLE).unwrap(),
        "the conffile is not examples/sockgate.toml: rebuild the package with `cargo xtask dist`"
    );
    let unit = fs::read_to_string(UNIT).unwrap();
    assert!(
        unit.lines()
            .any(|l| l == "ExecStart=/usr/bin/sockgate run -c /etc/sockgate/sockgate.toml"),
        "{unit}"
    );
    // verify checks the installed unit against the installed binary.
    let (code, _, err) = run(
        "systemd-analyze verify",
        Command::new(require("systemd-analyze"))
            .args(["verify", UNIT])
            .env("SYSTEMD_LOG_LEVEL", "notice"),
        DPKG_WAIT,
    );
    assert!(
        code.success() && err.is_empty(),
        "systemd-analyze verify:\n{err}"
    );

    let installed: Vec<PathBuf> = ok("dpkg-query", &["--listfiles", "sockgate"])
        .lines()
        .map(PathBuf::from)
        .collect();
    assert!(
        installed
            .iter()
            .any(|p| p == Path::new("/usr/bin/sockgate"))
    );

    ok("dpkg", &["--remove", "sockgate"]);
    assert_eq!(status().as_deref(), Some("deinstall ok config-files"));
    let left: Vec<&PathBuf> = installed
        .iter()
        .filter(|p| p.is_file() || p.is_symlink())
        .collect();
    assert_eq!(left, [Path::new(CONFFILE)], "left behind by dpkg -r");
    assert!(
        !Path::new("/usr/share/doc/sockgate").exists(),
        "the docs are left behind"
    );
    let new: Vec<PathBuf> = named_sockgate().difference(&before).cloned().collect();
    let expected: Vec<PathBuf> = ["/etc/sockgate", CONFFILE]
        .into_iter()
        .map(PathBuf::from)
        .collect();
    assert_eq!(new, expected, "left behind by dpkg -r");
    assert!(user_exists(), "dpkg -r removed the sockgate user");

    ok("dpkg", &["--purge", "sockgate"]);
    assert_eq!(status(), None);
    let new: Vec<PathBuf> = named_sockgate().difference(&before).cloned().collect();
    assert!(new.is_empty(), "left behind by dpkg --purge: {new:?}");
    assert!(user_exists(), "purge removed the sockgate user");
}
