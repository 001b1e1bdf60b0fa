//! `sockgate check -c FILE`: validate a config and print a one-line summary.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::Config;
use crate::policy::Policy;
use crate::snapshot::Snapshot;

/// Arguments of `sockgate check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config file.
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,
}

/// Loads the config as `sockgate run` does. Errors name the file, line and column for TOML
/// errors, else the rule or listener and the field; they make the binary exit 1.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (snapshot, config) = Snapshot::load(&args.config)?;
    println!("{}", summary(&config, &snapshot.policy));
    Ok(ExitCode::SUCCESS)
}

/// `ok: 3 listeners, 12 rules (7 allow, 5 deny), default deny`.
fn summary(config: &Config, policy: &Policy) -> String {
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let (allow, deny) = policy.action_counts();
    format!(
        "ok: {}, {} ({allow} allow, {deny} deny), default {}",
        plural(config.listeners.len(), "listener"),
        plural(policy.rule_count(), "rule"),
        policy.default_action(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_summary() {
        let config = Config::parse(
            r#"
            [[listener]]
            name = "proxy"
            mode = "connect"
            address = "127.0.0.1:3128"
            [[policy.rule]]
            action = "allow"
            fqdn = ["example.com"]
            "#,
            "test",
        )
        .unwrap();
        let policy = Policy::compile(&config.policy).unwrap();
        assert_eq!(
            summary(&config, &policy),
            "ok: 1 listener, 1 rule (1 allow, 0 deny), default deny"
        );
    }
}
