//! `include = ["policy.d/*.toml"]`: rule files appended to the config's own rules, in name
//! order, so teams can own their own. An included file holds `[[policy.rule]]` tables and
//! nothing else, so it cannot change a listener or the default; it includes nothing.
//!
//! Globs go through the `glob` crate: it sorts matches by name, and takes `?`, `[...]`
//! and `**` as operators expect, which a hand-written `*` match would not.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::fast_path::{self, WithRules};
use super::rules::RuleList;
use super::{Config, ConfigError, Position};

/// One included file, kept while its rules are checked so errors can name its lines.
#[derive(Debug, Clone)]
pub struct Included {
    /// The file, as its error messages name it.
    pub path: String,
    /// Its text.
    pub text: String,
    /// The index of its first rule in the config's rule list.
    pub first: usize,
    /// How many rules it holds.
    pub len: usize,
}

impl Included {
    /// Where rule `local` (from 0) of this file is: `path:line:column` of its header, or
    /// the path alone when the rules are not all written as `[[policy.rule]]` tables.
    pub fn locate(&self, local: usize) -> String {
        match fast_path::rule_header(&self.text, local) {
            Some(offset) => format!("{}:{}", self.path, Position::of(&self.text, offset)),
            None => self.path.clone(),
        }
    }
}

/// An included file: `[[policy.rule]]` tables only.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    policy: RulesOnly,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesOnly {
    #[serde(default, rename = "rule")]
    rules: RuleList,
}

impl WithRules for RulesFile {
    fn rules_mut(&mut self) -> &mut RuleList {
        &mut self.policy.rules
    }
}

/// Reads every file `config.include` matches, relative to `dir` (the including file's
/// directory), and appends their rules to `config`'s.
pub(super) fn expand(config: &mut Config, dir: &Path) -> Result<Vec<Included>, ConfigError> {
    let mut included = Vec::new();
    for pattern in &config.include {
        for path in matches(dir, pattern)? {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: shown.clone(),
                source,
            })?;
            let file = parse(&text, &shown)?;
            let first = config.policy.rules.len();
            config.policy.rules.append(&file.policy.rules);
            included.push(Included {
                path: shown,
                text,
                first,
                len: file.policy.rules.len(),
            });
        }
    }
    Ok(included)
}

/// The files `pattern` matches under `dir`, in name order.
fn matches(dir: &Path, pattern: &str) -> Result<Vec<PathBuf>, ConfigError> {
    let bad = |message: String| ConfigError::Include {
        pattern: pattern.to_owned(),
        message,
    };
    // The directory is a path, not a pattern: a `[` in it must match itself.
    let base = glob::Pattern::escape(&dir.to_string_lossy());
    let full = Path::new(&base).join(pattern);
    let paths = glob::glob(&full.to_string_lossy()).map_err(|e| bad(e.to_string()))?;
    let mut files = Vec::new();
    for path in paths {
        let path = path.map_err(|e| bad(e.to_string()))?;
        if path.is_file() {
            files.push(path);
        }
    }
    Ok(files)
}

fn parse(text: &str, origin: &str) -> Result<RulesFile, ConfigError> {
    match fast_path::parse(text) {
        Some(file) => Ok(file),
        None => toml::from_str(text).map_err(|e| ConfigError::syntax(text, origin, &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("sockgate-include-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("policy.d")).unwrap();
        dir
    }

    #[test]
    fn appends_in_name_order_and_remembers_where_each_rule_came_from() {
        let dir = temp_dir("order");
        let rule = |name: &str| {
            format!(
                "[[policy.rule]]\nname = \"{name}\"\naction = \"allow\"\nfqdn = [\"{name}.com\"]\n"
            )
        };
        std::fs::write(dir.join("policy.d/b.toml"), rule("b") + &rule("c")).unwrap();
        std::fs::write(dir.join("policy.d/a.toml"), rule("a")).unwrap();
        std::fs::write(dir.join("policy.d/skip.txt"), "not toml").unwrap();
        let mut config = Config::from_toml(
            &format!("include = [\"policy.d/*.toml\"]\n{}", rule("main")),
            "main.toml",
        )
        .unwrap();
        let included = expand(&mut config, &dir).unwrap();
        let names: Vec<_> = config
            .policy
            .rules
            .iter()
            .map(|r| r.name.unwrap())
            .collect();
        assert_eq!(names, ["main", "a", "b", "c"]);
        assert_eq!((included[0].first, included[0].len), (1, 1));
        assert_eq!((included[1].first, included[1].len), (2, 2));
        let b = dir.join("policy.d/b.toml").display().to_string();
        assert_eq!(included[1].locate(1), format!("{b}:5:1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_included_file_holds_rules_only() {
        let dir = temp_dir("only");
        std::fs::write(
            dir.join("policy.d/x.toml"),
            "[policy]\ndefault = \"allow\"\n",
        )
        .unwrap();
        let mut config =
            Config::from_toml("include = [\"policy.d/*.toml\"]\n", "main.toml").unwrap();
        let e = expand(&mut config, &dir).unwrap_err().to_string();
        let x = dir.join("policy.d/x.toml").display().to_string();
        assert!(
            e.starts_with(&format!("{x}:2:1: unknown field `default`")),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_match_is_no_rules_and_a_bad_pattern_is_an_error() {
        let dir = temp_dir("none");
        let mut config = Config::from_toml("include = [\"policy.d/*.toml\"]\n", "m").unwrap();
        assert!(expand(&mut config, &dir).unwrap().is_empty());
        let mut config = Config::from_toml("include = [\"[\"]\n", "m").unwrap();
        let e = expand(&mut config, &dir).unwrap_err().to_string();
        assert!(e.starts_with("include `[`: "), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
