//! This process's effective capabilities against the ones SECURITY.md measured.

use super::Check;
use crate::config::Config;

/// What the sockmap datapath needs, with their bits from linux/capability.h.
const NEEDED: &[(&str, u32)] = &[("CAP_BPF", 39), ("CAP_NET_ADMIN", 12), ("CAP_PERFMON", 38)];
/// Also needed when a listener binds a port below 1024.
const NET_BIND_SERVICE: (&str, u32) = ("CAP_NET_BIND_SERVICE", 10);

const FIX: &str = "run as root, or grant them as ambient capabilities \
                   (dist/systemd/sockgate.service; SECURITY.md, \"Running as root\")";

/// Effective capabilities from /proc/self/status; a listener below port 1024 in `config`
/// adds CAP_NET_BIND_SERVICE.
pub fn check(config: Option<&Config>) -> Check {
    let effective = match std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| cap_eff(&s))
    {
        Some(bits) => bits,
        None => {
            return Check::fail(
                "capabilities",
                "cannot read CapEff from /proc/self/status",
                FIX,
            );
        }
    };
    let low_port = config.is_some_and(|c| c.listeners.iter().any(|l| l.address.port() < 1024));
    let needed: Vec<(&str, u32)> = NEEDED
        .iter()
        .copied()
        .chain(low_port.then_some(NET_BIND_SERVICE))
        .collect();
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(_, bit)| effective & (1 << bit) == 0)
        .map(|(name, _)| *name)
        .collect();
    let names: Vec<&str> = needed.iter().map(|(name, _)| *name).collect();
    if missing.is_empty() {
        Check::ok("capabilities", format!("effective {}", names.join(", ")))
    } else {
        Check::fail(
            "capabilities",
            format!("missing {} (effective {effective:#x})", missing.join(", ")),
            FIX,
        )
    }
}

/// The `CapEff:` bits of a /proc/<pid>/status text.
fn cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cap_eff() {
        let status = "Name:\tsockgate\nCapPrm:\t0000000000000001\nCapEff:\t000000c000001000\n";
        assert_eq!(cap_eff(status), Some(0xc0_0000_1000));
        assert_eq!(cap_eff("Name:\tx\n"), None);
    }
}
