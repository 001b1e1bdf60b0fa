//! The kernel program for real: the offsets it reads, then loading and attaching it with
//! the agent's own loader, and unloading it again.

use proxy_common::SKB_CB_OFFSET;

use super::Check;
use crate::ebpf::{Kernel, LoadError};
use crate::kernel_layout;

/// The sk_buff and tcp_sock offsets the verdict needs, from BTF.
pub fn layout() -> Check {
    match kernel_layout::read() {
        Ok(l) => Check::ok(
            "layout",
            format!(
                "sk_buff.cb at {SKB_CB_OFFSET}; tcp_sock sk_sndbuf {}, sk_wmem_queued {}, \
                 bytes_acked {}, snd_una {}, write_seq {}",
                l.sndbuf, l.wmem_queued, l.bytes_acked, l.snd_una, l.write_seq
            ),
        ),
        Err(err) => Check::fail(
            "layout",
            err.to_string(),
            "none on this kernel: the verdict cannot read its skbs; auto relays with splice(2)",
        ),
    }
}

/// Loads and attaches the verdict as `sockgate run` does, then drops it, which detaches
/// the program and frees its maps; checks that no BPF object is left open.
pub fn load() -> Check {
    let before = bpf_fds();
    let loaded = Kernel::load();
    let result = loaded.as_ref().map(|_| ()).map_err(explain);
    drop(loaded);
    match result {
        Ok(()) => {
            let left = bpf_fds().saturating_sub(before);
            if left == 0 {
                Check::ok(
                    "verdict",
                    "sockgate_verdict loaded and attached to its SOCKHASH, then unloaded",
                )
            } else {
                Check::warn(
                    "verdict",
                    format!("loaded and attached, but {left} BPF objects stayed open"),
                    "report this as a bug",
                )
            }
        }
        Err((detail, fix)) => Check::fail("verdict", detail, fix),
    }
}

/// The error with its root cause (aya's `Display` leaves out the errno), and the fix.
fn explain(err: &LoadError) -> (String, String) {
    let detail = err.with_root_cause();
    let fix = match err {
        LoadError::NoObject => "build without AYA_BUILD_SKIP=1".to_owned(),
        LoadError::Layout(_) => "none on this kernel; auto relays with splice(2)".to_owned(),
        _ if err.lacks_capabilities() => {
            "grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (see the capabilities check)".to_owned()
        }
        _ => "see the error; auto relays with splice(2) meanwhile".to_owned(),
    };
    (one_line(&detail), fix)
}

/// The error without the verifier's log, which runs to dozens of lines, but with the
/// line saying why the verifier refused.
fn one_line(text: &str) -> String {
    let Some((head, log)) = text.split_once(" Verifier output:") else {
        return text.split_whitespace().collect::<Vec<_>>().join(" ");
    };
    let head = head.trim_end_matches('.');
    // Instructions start with their index, source lines with `;`; then come statistics.
    let noise = ["verification time", "stack depth", "processed", ":"];
    let why = log.lines().map(str::trim).rev().find(|l| {
        !l.is_empty()
            && !l.starts_with(|c: char| c.is_ascii_digit() || c == ';')
            && !noise.iter().any(|n| l.starts_with(n))
    });
    match why {
        Some(why) => format!("{head}; the verifier: {why}"),
        None => head.to_owned(),
    }
}

/// Open descriptors of BPF programs, maps and links.
fn bpf_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| {
        dir.filter_map(Result::ok)
            .filter(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|t| t.to_string_lossy().starts_with("anon_inode:bpf"))
            })
            .count()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_verifier_log_shrinks_to_its_verdict() {
        let text = "stream verdict program: the BPF_PROG_LOAD syscall returned Invalid \
                    argument (os error 22). Verifier output: 0: R1=ctx() R10=fp0\n\
                    ; #[stream_verdict] @ main.rs:51\n\
                    20: (85) call bpf_probe_read#4\n\
                    program of this type cannot use helper bpf_probe_read#4\n\
                    verification time 303 usec\nstack depth 16\n\
                    processed 20 insns (limit 1000000)\n: Invalid argument (os error 22)";
        assert_eq!(
            super::one_line(text),
            "stream verdict program: the BPF_PROG_LOAD syscall returned Invalid argument \
             (os error 22); the verifier: program of this type cannot use helper \
             bpf_probe_read#4"
        );
        assert_eq!(super::one_line("a\nb"), "a b");
    }
}
