//! RLIMIT_NOFILE against `max_connections`.

use super::Check;
use crate::config::{Config, Limits};
use crate::datapath::Path;

/// Descriptors per relayed connection: the client's socket and the server's; splice(2)
/// adds a pipe per direction (SECURITY.md, "Resource exhaustion").
fn per_connection(path: Path) -> u64 {
    match path {
        Path::Sockmap | Path::Copy => 2,
        Path::Splice => 6,
    }
}
/// Descriptors the agent holds whatever the load: stdio, epoll, listeners, BPF maps and
/// programs, the aya-log ring buffer (about 20 on a small config), with room to spare.
const BASE: u64 = 64;

/// The soft limit (what `accept` runs into; sockgate does not raise it) against what
/// `max_connections` can open over `path`.
pub fn check(config: Option<&Config>, path: Path) -> Check {
    let (max, whose) = match config {
        Some(c) => (c.limits.max_connections, "max_connections"),
        None => (
            Limits::default().max_connections,
            "the default max_connections",
        ),
    };
    let per = per_connection(path);
    let need = per * u64::from(max) + BASE;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit, which `limit` is.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Check::warn(
            "nofile",
            format!("getrlimit: {}", std::io::Error::last_os_error()),
            format!("make sure LimitNOFILE is at least {need}"),
        );
    }
    let detail = format!(
        "soft limit {}, {whose} {max} needs {per} x {max} + {BASE} = {need} on {path}",
        limit.rlim_cur
    );
    if limit.rlim_cur >= need {
        Check::ok("nofile", detail)
    } else {
        Check::warn(
            "nofile",
            detail,
            format!(
                "raise it to {need} (LimitNOFILE= in the unit, ulimit -n), or lower \
                 max_connections to {}; past it accept fails with EMFILE",
                limit.rlim_cur.saturating_sub(BASE) / per
            ),
        )
    }
}
