//! The TOML config: serde defaults first, then [`Config::validate`] with typed errors that
//! name the listener and the field. See `examples/sockgate.toml` for every key.
//!
//! TOML because operators comment their policies. Unknown keys are errors, so a typo does
//! not silently fall back to a default. The rules are kept as written: the policy checks
//! them while it compiles them, so each rule is checked once. The policy depends on this
//! module, never the reverse; neither does this module read the datapath.

mod admin;
mod datapath;
pub mod duration;
mod fast_path;
mod include;
mod limits;
mod listener;
mod policy;
mod resolver;
mod rules;
mod source;

use std::fmt;
use std::path::Path;

use serde::Deserialize;

pub use admin::{AdminConfig, AdminError};
pub use datapath::Datapath;
pub use include::Included;
pub use limits::{LimitError, Limits, MAX_CLIENT_HELLO, MIN_CLIENT_HELLO};
pub use listener::{
    ListenerConfig, ListenerError, ListenerKind, ListenerMode, ListenerProblem, ProxyVersion,
    SendProxyProtocol,
};
pub use policy::{Action, DenyWith, PolicyConfig, PolicyMode, RuleConfig};
pub use resolver::{NameServer, ResolverConfig, ResolverError};
pub use rules::{Ints, RuleList, RuleView, Strs};
pub use source::{HttpsUrl, SourceConfig, SourceError};

/// The whole config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Rule files to append, as globs relative to this file's directory, each expanded
    /// in name order.
    #[serde(default)]
    pub include: Vec<String>,
    /// Reload when this file or an included file changes, as `run --watch`; read at start.
    #[serde(default)]
    pub watch: bool,
    /// How allowed connections are relayed once the handshake is checked.
    #[serde(default)]
    pub datapath: Datapath,
    /// `[policy]`.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// `[[listener]]`.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// `[resolver]`.
    #[serde(default)]
    pub resolver: ResolverConfig,
    /// `[limits]`.
    #[serde(default)]
    pub limits: Limits,
    /// `[admin]`; absent means no admin endpoint.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// `[source]`; present, the config comes from its URL and this file holds it alone.
    #[serde(default)]
    pub source: Option<SourceConfig>,
}

/// Why a config cannot be used. The operator caused every one of them. (A bad rule is the
/// policy's error: the policy checks the rules.)
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML does not parse, or a value has the wrong type or an unknown key.
    #[error("{origin}:{position}: {message}")]
    Syntax {
        /// The file (or other origin) of the text.
        origin: String,
        /// Where in it.
        position: Position,
        /// What the parser said.
        message: String,
    },
    /// An `include` pattern is not a glob, or its directory cannot be listed.
    #[error("include `{pattern}`: {message}")]
    Include {
        /// The pattern as written.
        pattern: String,
        /// What is wrong with it.
        message: String,
    },
    /// A listener is invalid.
    #[error(transparent)]
    Listener(#[from] ListenerError),
    /// The resolver settings are invalid.
    #[error(transparent)]
    Resolver(#[from] ResolverError),
    /// A limit is invalid.
    #[error(transparent)]
    Limits(#[from] LimitError),
    /// `[admin]` is invalid.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// `[source]` is invalid.
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// A 1-based line and column in a config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The line, from 1.
    pub line: usize,
    /// The column in characters, from 1.
    pub column: usize,
}

impl ConfigError {
    /// A TOML error in `text`, which came from `origin`.
    fn syntax(text: &str, origin: &str, e: &toml::de::Error) -> ConfigError {
        ConfigError::Syntax {
            origin: origin.to_owned(),
            position: Position::of(text, e.span().map_or(0, |s| s.start)),
            message: e.message().trim_end().replace('\n', "; "),
        }
    }
}

impl Position {
    /// The position of byte `offset` in `text`.
    fn of(text: &str, offset: usize) -> Position {
        let before = &text[..text.floor_char_boundary(offset.min(text.len()))];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Position {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

impl Config {
    /// Reads and parses a config file and the files it includes: TOML syntax, types and
    /// unknown keys. Not validated: [`Config::validate`] checks the rest. The file's own
    /// text comes back too, and the included files with theirs.
    pub fn read(path: &Path) -> Result<(Config, String, Vec<Included>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Self::from_toml(&text, &path.display().to_string())?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let included = include::expand(&mut config, dir)?;
        Ok((config, text, included))
    }

    /// Parses and validates config text (all but the rules); `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config = Self::from_toml(text, origin)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses config text like [`Config::read`], without validating it.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        // The fast path reads big policies in seconds; anything it is unsure of, errors
        // included, goes through `toml` whole.
        let config = match fast_path::parse(text) {
            Some(config) => config,
            None => toml::from_str(text).map_err(|e| ConfigError::syntax(text, origin, &e))?,
        };
        Ok(config)
    }

    /// Checks what serde cannot, the rules aside: listener modes and names, the resolver's
    /// hosts, the limits' ranges, the admin address.
    pub fn validate(&self) -> Result<(), ConfigError> {
        listener::validate(&self.listeners)?;
        self.resolver.validate()?;
        self.limits.validate()?;
        if let Some(admin) = &self.admin {
            admin.validate()?;
        }
        if let Some(source) = &self.source {
            source.validate()?;
            let alone = Config {
                source: None,
                watch: false,
                ..self.clone()
            };
            if alone != Config::default() {
                return Err(SourceError::NotAlone.into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
