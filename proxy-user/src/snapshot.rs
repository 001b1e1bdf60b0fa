//! One config load: the file read and parsed, its rules compiled into the policy (which
//! checks each rule, once), the rest validated, and the resolver built. `sockgate run`,
//! every reload, `sockgate check` and `sockgate decide` load through here.

use std::path::Path;

use crate::config::{Config, ConfigError, Included, Limits};
use crate::policy::{Policy, PolicyError, RuleProblem};
use crate::upstream::Resolver;

/// The config a connection runs under: a snapshot, so a reload never changes a connection
/// half-way. The one exception is `idle_timeout`, which paces the agent's single idle tick
/// ([`crate::pulse`]) and so applies to every relayed connection.
pub struct Snapshot {
    /// The compiled `[policy]`.
    pub policy: Policy,
    /// `[limits]`: timeouts and caps.
    pub limits: Limits,
    /// `[resolver]`: hosts overrides, then the system resolver.
    pub resolver: Resolver,
}

/// Why a config file cannot be loaded. The operator caused every one of them.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file cannot be read or parsed, or a listener, the resolver or a limit is
    /// invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A rule is invalid.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A rule of an included file is invalid: its `path:line:column`, and the error with
    /// the rule numbered within that file.
    #[error("{location}: {error}")]
    IncludedRule {
        /// Where the rule is.
        location: String,
        /// What is wrong with it.
        error: PolicyError,
    },
    /// `[resolver] nameservers` parses, but nothing uses it yet.
    #[error(
        "resolver.nameservers is not supported yet: sockgate uses the system resolver \
         (/etc/resolv.conf) and [resolver] hosts"
    )]
    NameserversUnsupported,
}

impl Snapshot {
    /// Loads a config file and the files it includes. The config comes back too, for
    /// what the agent reads from it once (listeners, datapath).
    pub fn load(path: &Path) -> Result<(Snapshot, Config), SnapshotError> {
        Self::load_with_text(path).map(|(snapshot, config, _)| (snapshot, config))
    }

    /// Like [`Snapshot::load`], with the text too (the file's, then each included file's):
    /// the admin endpoint shows its hash.
    pub fn load_with_text(path: &Path) -> Result<(Snapshot, Config, String), SnapshotError> {
        let (config, mut text, included) = Config::read(path)?;
        let (snapshot, config) = Self::build(config, &path.display().to_string(), &included)?;
        for file in included {
            text.push_str(&file.text);
        }
        Ok((snapshot, config, text))
    }

    /// Loads config text; `origin` names it in errors. It includes nothing.
    pub fn parse(text: &str, origin: &str) -> Result<(Snapshot, Config), SnapshotError> {
        Self::build(Config::from_toml(text, origin)?, origin, &[])
    }

    fn build(
        config: Config,
        origin: &str,
        included: &[Included],
    ) -> Result<(Snapshot, Config), SnapshotError> {
        // Rules before the rest, as validation always went: a file with several mistakes
        // reports the same one as before.
        let policy = Policy::compile(&config.policy).map_err(|e| locate(e, origin, included))?;
        config.validate()?;
        if config.resolver.nameservers.is_some() {
            return Err(SnapshotError::NameserversUnsupported);
        }
        let snapshot = Snapshot {
            policy,
            limits: config.limits.clone(),
            resolver: Resolver::new(&config.resolver),
        };
        Ok((snapshot, config))
    }
}

/// Names the included file a bad rule came from, numbering rules within each file. A
/// rule of the config file itself is reported as it always was.
fn locate(mut error: PolicyError, origin: &str, included: &[Included]) -> SnapshotError {
    let file_of = |index: usize| {
        included
            .iter()
            .find(|f| (f.first..f.first + f.len).contains(&index))
    };
    let Some(file) = file_of(error.rule.index) else {
        return SnapshotError::Policy(error);
    };
    error.rule.index -= file.first;
    if let RuleProblem::DuplicateName(first) = error.problem {
        error.problem = match file_of(first) {
            Some(other) if std::ptr::eq(other, file) => {
                RuleProblem::DuplicateName(first - file.first)
            }
            Some(other) => RuleProblem::DuplicateNameAt(other.locate(first - other.first)),
            None => RuleProblem::DuplicateNameAt(format!("{origin}, rule #{}", first + 1)),
        };
    }
    SnapshotError::IncludedRule {
        location: file.locate(error.rule.index),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Snapshot, String> {
        Snapshot::parse(text, "test.toml")
            .map(|(snapshot, _)| snapshot)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn rule_errors_come_through() {
        let e = parse(
            "[[policy.rule]]\nname = \"r\"\naction = \"allow\"\nfqdn = [\"x.com\"]\nports = [65536]\n",
        )
        .err()
        .unwrap();
        assert_eq!(
            e,
            "rule #1 (\"r\"): field `ports`: port 65536 out of range 1-65535"
        );
    }

    #[test]
    fn a_bad_rule_is_reported_before_a_bad_listener() {
        let e = parse(
            "[[listener]]\nname = \"a\"\naddress = \"[::1]:8443\"\nmode = \"sni\"\n\
             [[policy.rule]]\naction = \"permit\"\n",
        )
        .err()
        .unwrap();
        assert_eq!(
            e,
            "rule #1: field `action`: unknown action `permit` (expected allow or deny)"
        );
    }

    #[test]
    fn nameservers_are_refused() {
        let e = parse("[resolver]\nnameservers = [\"1.1.1.1\"]\n")
            .err()
            .unwrap();
        assert_eq!(
            e,
            "resolver.nameservers is not supported yet: sockgate uses the system resolver \
             (/etc/resolv.conf) and [resolver] hosts"
        );
    }

    #[test]
    fn a_valid_file_compiles_its_rules_and_keeps_its_limits() {
        let s = parse(
            "[limits]\nmax_connections = 7\n\
             [[policy.rule]]\nname = \"r\"\naction = \"allow\"\nfqdn = [\"x.com\"]\n",
        )
        .unwrap();
        assert_eq!(s.policy.rule_count(), 1);
        assert_eq!(s.limits.max_connections, 7);
    }
}
