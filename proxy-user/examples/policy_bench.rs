//! Policy benchmark, run by `cargo xtask bench policy` (in release):
//!
//! - generates N rules, a mix of exact names, `*.` wildcards and `.` suffixes spread over
//!   many zones and TLDs, with a ports condition on one rule in 50, and writes them as a
//!   TOML config file;
//! - in a fresh process (this program again, with `--load`), loads that file the way
//!   `sockgate run` does (the steps of `Snapshot::load`, timed apart: `Config::read` and
//!   `Config::validate`, then `Policy::compile`, which checks the rules) and reports the
//!   load time, the compile part of it, the process's peak resident memory (VmHWM, so the
//!   file's text and the parsed config count) and what the loaded policy keeps resident
//!   once they are dropped;
//! - times `Policy::decide` one call at a time over random names, half of them hits, and
//!   prints p50/p99/p99.9/max, overall and by kind of name (which pattern kind a hit
//!   matches, whether its rule has a condition; which level a miss stops at). Each sample
//!   includes one `Instant::now()` pair, whose cost is measured and printed too. The names sit back to back in one buffer read in order,
//!   as a server name sits in the ClientHello just read: the lookup's own cache misses
//!   count, not those of fetching a name from a random heap block.
//!
//! Usage: `policy_bench [--rules N] [--lookups M]`, or `policy_bench --load FILE
//! [--rules N] [--lookups M]` for an existing file of generated rules.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proxy_user::config::Config;
use proxy_user::policy::{Policy, Query, Reason};
use proxy_user::tls::Protocol;

const TLDS: &[&str] = &["com", "net", "org", "io", "dev", "de", "co.uk", "example"];
/// Zones per TLD, so upper trie levels are shared the way real policies share them.
const ZONES: usize = 5000;

/// The three pattern kinds, by rule number.
fn pattern(i: usize) -> String {
    let base = format!("svc{i}.zone{}.{}", i % ZONES, TLDS[i % TLDS.len()]);
    match i % 3 {
        0 => base,
        1 => format!("*.{base}"),
        _ => format!(".{base}"),
    }
}

/// Whether rule `i` has a ports condition.
fn has_ports(i: usize) -> bool {
    i.is_multiple_of(50)
}

/// The kinds of names looked up, as `hit` and `miss` label them.
const KINDS: &[&str] = &[
    "hit exact",
    "hit *.wildcard",
    "hit .suffix itself",
    "hit below .suffix",
    "hit rule with port",
    "miss, known zone",
    "miss, unknown zone",
];

/// A name that rule `i` matches, and its kind.
fn hit(i: usize, salt: usize) -> (String, &'static str) {
    let base = format!("svc{i}.zone{}.{}", i % ZONES, TLDS[i % TLDS.len()]);
    let (name, kind) = match i % 3 {
        0 => (base, KINDS[0]),
        1 => (format!("host{salt}.{base}"), KINDS[1]),
        _ if salt.is_multiple_of(2) => (base, KINDS[2]),
        _ => (format!("api.v{salt}.{base}"), KINDS[3]),
    };
    (name, if has_ports(i) { KINDS[4] } else { kind })
}

/// A name no rule matches: an unknown service in a known zone, or an unknown zone.
fn miss(n: usize, salt: usize) -> (String, &'static str) {
    if salt.is_multiple_of(2) {
        let name = format!(
            "svc{}.zone{}.{}",
            n + salt,
            salt % ZONES,
            TLDS[salt % TLDS.len()]
        );
        (name, KINDS[5])
    } else {
        let name = format!("www.nozone{salt}.{}", TLDS[salt % TLDS.len()]);
        (name, KINDS[6])
    }
}

/// The rules as a config file's text.
fn config_text(n: usize) -> String {
    use std::fmt::Write as _;
    let mut text = String::from("[policy]\ndefault = \"deny\"\n");
    for i in 0..n {
        let action = if i.is_multiple_of(4) { "deny" } else { "allow" };
        let ports = if has_ports(i) { "ports = [443]\n" } else { "" };
        let _ = write!(
            text,
            "\n[[policy.rule]]\nname = \"r{i}\"\naction = \"{action}\"\nfqdn = [\"{}\"]\n{ports}",
            pattern(i)
        );
    }
    text
}

/// A field of /proc/self/status, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

/// A small xorshift generator: reproducible, and no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Gives freed heap memory back to the kernel, so VmRSS shows what is still in use.
fn trim() {
    // SAFETY: malloc_trim only releases free heap memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn query(name: &str) -> Query<'_> {
    Query {
        fqdn: Some(name),
        source: None,
        port: Some(443),
        protocol: Protocol::Tls,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut n, mut lookups, mut load) = (1_000_000usize, 1_000_000usize, None);
    while let Some(arg) = args.next() {
        let value = args.next();
        let number = value
            .as_deref()
            .and_then(|v| v.replace('_', "").parse().ok());
        match (arg.as_str(), number) {
            ("--rules", Some(v)) => n = v,
            ("--lookups", Some(v)) => lookups = v,
            ("--load", _) if value.is_some() => load = value.map(PathBuf::from),
            _ => {
                eprintln!("usage: policy_bench [--rules N] [--lookups M] [--load FILE]");
                std::process::exit(2);
            }
        }
    }
    match load {
        Some(path) => measure(&path, n, lookups),
        None => generate_and_measure(n, lookups),
    }
}

/// Writes the rules to a file and measures loading it in a fresh process, whose peak
/// memory is then the load's alone.
fn generate_and_measure(n: usize, lookups: usize) {
    let path =
        std::env::temp_dir().join(format!("sockgate-policy-bench-{}.toml", std::process::id()));
    std::fs::write(&path, config_text(n)).expect("write the rules file");
    let status = std::process::Command::new(std::env::current_exe().expect("own path"))
        .args([
            "--rules",
            &n.to_string(),
            "--lookups",
            &lookups.to_string(),
            "--load",
        ])
        .arg(&path)
        .status();
    let _ = std::fs::remove_file(&path);
    let status = status.expect("run the measuring process");
    std::process::exit(status.code().unwrap_or(1));
}

/// Loads the rules file at `path` (generated for `n` rules) and times lookups.
fn measure(path: &Path, n: usize, lookups: usize) {
    let file_mib = std::fs::metadata(path).expect("rules file").len() as f64 / (1024.0 * 1024.0);
    let rss_before = status_kib("VmRSS:");
    let start = Instant::now();
    let (config, _, _) = Config::read(path).expect("generated config parses");
    config.validate().expect("generated config is valid");
    let parsed = start.elapsed();
    let start = Instant::now();
    let policy = Policy::compile(&config.policy).expect("generated rules are valid");
    let compiled = start.elapsed();
    let load = parsed + compiled;
    let peak_mib = status_kib("VmHWM:") as f64 / 1024.0;
    drop(config);
    trim();
    let policy_mib = status_kib("VmRSS:").saturating_sub(rss_before) as f64 / 1024.0;
    assert_eq!(policy.rule_count(), n, "the file holds --rules rules");

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut text, mut names) = (String::new(), Vec::with_capacity(lookups));
    for k in 0..lookups {
        let (hit, (name, kind)) = if rng.below(2) == 0 {
            (true, hit(rng.below(n), k))
        } else {
            (false, miss(n, rng.below(1 << 20)))
        };
        names.push((text.len()..text.len() + name.len(), hit, kind));
        text.push_str(&name);
    }
    // Warm up caches and the branch predictor, and check that hits hit and misses miss.
    for (span, expect_hit, _) in names.iter().take(100_000) {
        let name = &text[span.clone()];
        let d = policy.decide(&query(name));
        assert_eq!(d.reason == Reason::Rule, *expect_hit, "{name}: {d:?}");
    }
    let mut samples = Vec::with_capacity(lookups);
    for (span, _, _) in &names {
        let name = &text[span.clone()];
        let start = Instant::now();
        black_box(policy.decide(black_box(&query(name))));
        samples.push(start.elapsed());
    }
    let by_kind: Vec<(&str, usize, u128, u128)> = KINDS
        .iter()
        .map(|kind| {
            let mut of_kind: Vec<Duration> = (samples.iter().zip(&names))
                .filter(|(_, (_, _, k))| k == kind)
                .map(|(d, _)| *d)
                .collect();
            of_kind.sort_unstable();
            let (p50, p99) = (
                percentile(&of_kind, 0.50).as_nanos(),
                percentile(&of_kind, 0.99).as_nanos(),
            );
            (*kind, of_kind.len(), p50, p99)
        })
        .collect();
    samples.sort_unstable();
    // What an empty sample measures: the timer's own cost, included in every sample.
    let mut empty: Vec<Duration> = (0..lookups.min(1_000_000))
        .map(|_| {
            let start = Instant::now();
            black_box(());
            start.elapsed()
        })
        .collect();
    empty.sort_unstable();
    let hits = names.iter().filter(|(_, h, _)| *h).count();

    let (p50, p99) = (
        percentile(&samples, 0.50).as_nanos(),
        percentile(&samples, 0.99).as_nanos(),
    );
    println!(
        "rules:            {n} (exact, *.wildcard and .suffix in equal parts; 1 in 50 with a port condition), {file_mib:.1} MiB of TOML"
    );
    println!(
        "load from file:   {:.3} s (read + parse + validate {:.3} s, compile {:.3} s)",
        load.as_secs_f64(),
        parsed.as_secs_f64(),
        compiled.as_secs_f64()
    );
    println!("compile only:     {:.3} s", compiled.as_secs_f64());
    println!(
        "memory:           peak {peak_mib:.1} MiB for the whole process while loading (VmHWM); the loaded policy keeps +{policy_mib:.1} MiB resident once text and config are dropped"
    );
    let huge = std::fs::read_to_string("/proc/self/smaps_rollup")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("AnonHugePages:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        });
    println!(
        "huge pages:       {} MiB of anonymous memory on transparent huge pages",
        huge.unwrap_or(0) / 1024
    );
    println!(
        "lookups:          {lookups} ({hits} hits, {} misses), one decide() per sample",
        lookups - hits
    );
    println!(
        "lookup latency:   p50 {p50} ns, p99 {p99} ns, p99.9 {} ns, max {} ns",
        percentile(&samples, 0.999).as_nanos(),
        samples.last().map_or(0, Duration::as_nanos),
    );
    for (kind, count, p50, p99) in by_kind {
        println!("  {kind:<20} {count:>7} lookups: p50 {p50} ns, p99 {p99} ns");
    }
    println!(
        "timer overhead:   p50 {} ns, p99 {} ns (an empty sample; included above)",
        percentile(&empty, 0.50).as_nanos(),
        percentile(&empty, 0.99).as_nanos(),
    );
    // One machine-readable line for `cargo xtask bench policy`.
    println!(
        "result load_s={:.3} compile_s={:.3} peak_mib={peak_mib:.1} policy_mib={policy_mib:.1} p50_ns={p50} p99_ns={p99}",
        load.as_secs_f64(),
        compiled.as_secs_f64()
    );
}
