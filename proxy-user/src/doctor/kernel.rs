//! The running kernel: its version, its BTF, and the build options the verdict needs.

use std::{
    io::Read,
    path::{Path, PathBuf},
};

use super::Check;

/// CAP_BPF and CAP_PERFMON, which SECURITY.md's capability set relies on.
const MINIMUM: (u32, u32) = (5, 8);
/// From here BPF memory is charged to the cgroup, not RLIMIT_MEMLOCK.
const MEMCG: (u32, u32) = (5, 11);

/// Options without which the verdict cannot be attached (stream parser, sockmap) or
/// would not be built at all.
const OPTIONS: &[&str] = &[
    "CONFIG_BPF_STREAM_PARSER",
    "CONFIG_NET_SOCK_MSG",
    "CONFIG_CGROUP_BPF",
];

const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// `6.18.44-fc` -> (6, 18).
fn major_minor(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The kernel version against what the datapath relies on.
pub fn version() -> Check {
    let release = release();
    let Some(version) = major_minor(&release) else {
        return Check::warn(
            "kernel",
            format!("cannot parse the kernel release {release:?}"),
            "run a kernel of 5.11 or later; the verdict check below is what counts",
        );
    };
    if version < MINIMUM {
        Check::fail(
            "kernel",
            format!("{release}: older than 5.8, which has no CAP_BPF or CAP_PERFMON"),
            "run a kernel of 5.11 or later",
        )
    } else if version < MEMCG {
        Check::warn(
            "kernel",
            format!("{release}: before 5.11 BPF maps count against RLIMIT_MEMLOCK"),
            "add LimitMEMLOCK=infinity to the unit, or run 5.11 or later",
        )
    } else {
        Check::ok("kernel", release)
    }
}

/// The kernel's type information, where the verdict's offsets come from.
pub fn btf() -> Check {
    match std::fs::metadata(VMLINUX_BTF) {
        Ok(meta) => Check::ok("btf", format!("{VMLINUX_BTF}, {} bytes", meta.len())),
        Err(err) => Check::fail(
            "btf",
            format!("{VMLINUX_BTF}: {err}"),
            "run a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        ),
    }
}

/// The build options, from /proc/config.gz or /boot/config-<release>.
pub fn options() -> Check {
    let boot = PathBuf::from(format!("/boot/config-{}", release()));
    options_from(&[PathBuf::from("/proc/config.gz"), boot])
}

fn options_from(sources: &[PathBuf]) -> Check {
    let Some((source, text)) = sources
        .iter()
        .find_map(|p| read_config(p).map(|t| (p.as_path(), t)))
    else {
        let names: Vec<String> = sources.iter().map(|p| p.display().to_string()).collect();
        return Check::warn(
            "config",
            format!(
                "cannot tell {}: neither {} is readable",
                OPTIONS.join(", "),
                names.join(" nor ")
            ),
            "load the configs module (modprobe configs) for /proc/config.gz; the verdict \
             check below loads the program for real",
        );
    };
    let missing: Vec<&str> = OPTIONS
        .iter()
        .copied()
        .filter(|o| !enabled(&text, o))
        .collect();
    if missing.is_empty() {
        Check::ok(
            "config",
            format!("{} (from {})", OPTIONS.join(", "), source.display()),
        )
    } else {
        Check::fail(
            "config",
            format!("{} not set in {}", missing.join(", "), source.display()),
            format!("run a kernel built with {}", missing.join("=y, ") + "=y"),
        )
    }
}

/// A config file's text; `.gz` ones are gunzipped.
fn read_config(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut text = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut text)
            .ok()?;
        Some(text)
    } else {
        String::from_utf8(bytes).ok()
    }
}

/// `CONFIG_X=y` or `=m`; `# CONFIG_X is not set` and absence are both off.
fn enabled(config: &str, option: &str) -> bool {
    config.lines().any(|line| {
        line.strip_prefix(option)
            .and_then(|rest| rest.strip_prefix('='))
            .is_some_and(|value| value == "y" || value == "m")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    #[test]
    fn versions() {
        assert_eq!(major_minor("6.18.44-fc-v1098"), Some((6, 18)));
        assert_eq!(major_minor("5.4.0"), Some((5, 4)));
        assert_eq!(major_minor("rolling"), None);
    }

    #[test]
    fn options_set_unset_and_absent() {
        let text = "CONFIG_BPF_STREAM_PARSER=y\n# CONFIG_NET_SOCK_MSG is not set\n\
                    CONFIG_CGROUP_BPF_EXTRA=y\n";
        assert!(enabled(text, "CONFIG_BPF_STREAM_PARSER"));
        assert!(!enabled(text, "CONFIG_NET_SOCK_MSG"));
        // A longer name with the same prefix is another option.
        assert!(!enabled(text, "CONFIG_CGROUP_BPF"));
    }

    #[test]
    fn unreadable_config_is_a_warning_and_a_missing_option_a_failure() {
        let dir = std::env::temp_dir().join(format!("doctor-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let none = options_from(&[dir.join("config.gz"), dir.join("config")]);
        assert_eq!(none.status, Status::Warn, "{none}");
        assert!(none.detail.contains("neither"), "{none}");

        let plain = dir.join("config");
        std::fs::write(&plain, "CONFIG_BPF_STREAM_PARSER=y\nCONFIG_CGROUP_BPF=y\n").unwrap();
        let missing = options_from(&[dir.join("config.gz"), plain.clone()]);
        assert_eq!(missing.status, Status::Fail, "{missing}");
        assert!(
            missing.detail.starts_with("CONFIG_NET_SOCK_MSG not set"),
            "{missing}"
        );

        let gz = dir.join("config.gz");
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut encoder, OPTIONS.join("=y\n").as_bytes()).unwrap();
        std::io::Write::write_all(&mut encoder, b"=y\n").unwrap();
        std::fs::write(&gz, encoder.finish().unwrap()).unwrap();
        let all = options_from(&[gz, plain]);
        assert_eq!(all.status, Status::Ok, "{all}");
        assert!(all.detail.ends_with("config.gz)"), "{all}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn this_kernel_passes() {
        assert_eq!(version().status, Status::Ok, "{}", version());
        assert_eq!(btf().status, Status::Ok, "{}", btf());
    }
}
