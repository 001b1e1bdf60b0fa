//! Policy benchmark, run by `cargo xtask bench policy` (in release):
//!
//! - generates N rules, a mix of exact names, `*.` wildcards and `.` suffixes spread over
//!   many zones and TLDs, with a ports condition on one rule in 50;
//! - measures the compile ("load") time and the resident memory it adds (VmRSS before and
//!   after, from /proc/self/status), and the process peak (VmHWM);
//! - times `Policy::decide` one call at a time over random names, half of them hits, and
//!   prints p50/p99/p99.9/max. Each sample includes one `Instant::now()` pair, whose cost
//!   is measured and printed too.
//!
//! Usage: `policy_bench [--rules N] [--lookups M]`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use proxy_user::config::{Config, PolicyConfig, RuleConfig};
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

/// A name that rule `i` matches.
fn hit(i: usize, salt: usize) -> String {
    let base = format!("svc{i}.zone{}.{}", i % ZONES, TLDS[i % TLDS.len()]);
    match i % 3 {
        0 => base,
        1 => format!("host{salt}.{base}"),
        _ if salt.is_multiple_of(2) => base,
        _ => format!("api.v{salt}.{base}"),
    }
}

/// A name no rule matches: an unknown service in a known zone, or an unknown zone.
fn miss(n: usize, salt: usize) -> String {
    if salt.is_multiple_of(2) {
        format!(
            "svc{}.zone{}.{}",
            n + salt,
            salt % ZONES,
            TLDS[salt % TLDS.len()]
        )
    } else {
        format!("www.nozone{salt}.{}", TLDS[salt % TLDS.len()])
    }
}

fn rules(n: usize) -> PolicyConfig {
    let rules = (0..n)
        .map(|i| RuleConfig {
            name: Some(format!("r{i}")),
            action: Some(if i.is_multiple_of(4) { "deny" } else { "allow" }.to_owned()),
            fqdn: Some(vec![pattern(i)]),
            ports: i.is_multiple_of(50).then(|| vec![443]),
            ..RuleConfig::default()
        })
        .collect();
    PolicyConfig {
        rules,
        ..PolicyConfig::default()
    }
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

/// The whole load path an operator sees: the rules as a TOML file's text, parsed and
/// validated by `Config::parse`, then compiled.
fn load_toml(n: usize) {
    use std::fmt::Write as _;
    let mut text = String::from("[policy]\ndefault = \"deny\"\n");
    for i in 0..n {
        let action = if i.is_multiple_of(4) { "deny" } else { "allow" };
        let ports = if i.is_multiple_of(50) {
            "ports = [443]\n"
        } else {
            ""
        };
        let _ = write!(
            text,
            "\n[[policy.rule]]\nname = \"r{i}\"\naction = \"{action}\"\nfqdn = [\"{}\"]\n{ports}",
            pattern(i)
        );
    }
    let rss_before = status_kib("VmRSS:");
    let start = Instant::now();
    let config = Config::parse(&text, "bench.toml").expect("generated config is valid");
    let parsed = start.elapsed();
    let start = Instant::now();
    let policy = Policy::compile(&config.policy).expect("generated rules are valid");
    let compiled = start.elapsed();
    let text_mib = text.len() as f64 / (1024.0 * 1024.0);
    drop(config);
    drop(text);
    trim();
    println!(
        "rules:            {} from {text_mib:.1} MiB of TOML",
        policy.rule_count()
    );
    println!(
        "parse + validate: {:.3} s (toml + serde + every rule checked)",
        parsed.as_secs_f64()
    );
    println!("compile:          {:.3} s", compiled.as_secs_f64());
    println!(
        "total load:       {:.3} s",
        (parsed + compiled).as_secs_f64()
    );
    println!(
        "memory:           process VmRSS {:.1} MiB with the policy loaded (text and config dropped; {:.1} MiB before parsing, text included); peak VmHWM {:.1} MiB",
        status_kib("VmRSS:") as f64 / 1024.0,
        rss_before as f64 / 1024.0,
        status_kib("VmHWM:") as f64 / 1024.0
    );
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
    let (mut n, mut lookups) = (1_000_000usize, 1_000_000usize);
    let mut toml = false;
    while let Some(arg) = args.next() {
        if arg == "--toml" {
            toml = true;
            continue;
        }
        let value = args.next().and_then(|v| v.replace('_', "").parse().ok());
        match (arg.as_str(), value) {
            ("--rules", Some(v)) => n = v,
            ("--lookups", Some(v)) => lookups = v,
            _ => {
                eprintln!("usage: policy_bench [--rules N] [--lookups M] [--toml]");
                std::process::exit(2);
            }
        }
    }
    if toml {
        return load_toml(n);
    }

    let config = rules(n);
    let rss_before = status_kib("VmRSS:");
    let start = Instant::now();
    let policy = Policy::compile(&config).expect("generated rules are valid");
    let load = start.elapsed();
    let rss_after = status_kib("VmRSS:");
    drop(config);
    trim();
    let rss_policy_only = status_kib("VmRSS:");

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let names: Vec<(String, bool)> = (0..lookups)
        .map(|k| {
            if rng.below(2) == 0 {
                (hit(rng.below(n), k), true)
            } else {
                (miss(n, rng.below(1 << 20)), false)
            }
        })
        .collect();
    // Warm up caches and the branch predictor, and check that hits hit and misses miss.
    for (name, expect_hit) in names.iter().take(100_000) {
        let d = policy.decide(&query(name));
        assert_eq!(d.reason == Reason::Rule, *expect_hit, "{name}: {d:?}");
    }
    let mut samples = Vec::with_capacity(lookups);
    for (name, _) in &names {
        let start = Instant::now();
        black_box(policy.decide(black_box(&query(name))));
        samples.push(start.elapsed());
    }
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
    let hits = names.iter().filter(|(_, h)| *h).count();

    let policy_mib = rss_after.saturating_sub(rss_before) as f64 / 1024.0;
    let (p50, p99) = (
        percentile(&samples, 0.50).as_nanos(),
        percentile(&samples, 0.99).as_nanos(),
    );
    println!(
        "rules:            {n} (exact, *.wildcard and .suffix in equal parts; 1 in 50 with a port condition)"
    );
    println!("load (compile):   {:.3} s", load.as_secs_f64());
    println!(
        "resident memory:  +{:.1} MiB for the compiled policy (VmRSS {:.1} -> {:.1} MiB; process {:.1} MiB once the config is dropped)",
        policy_mib,
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        rss_policy_only as f64 / 1024.0,
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
        "peak (VmHWM):     {:.1} MiB, generated config included",
        status_kib("VmHWM:") as f64 / 1024.0
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
    println!(
        "timer overhead:   p50 {} ns, p99 {} ns (an empty sample; included above)",
        percentile(&empty, 0.50).as_nanos(),
        percentile(&empty, 0.99).as_nanos(),
    );
    // One machine-readable line for `cargo xtask bench policy`.
    println!(
        "result load_s={:.3} policy_mib={policy_mib:.1} p50_ns={p50} p99_ns={p99}",
        load.as_secs_f64()
    );
}
