//! FQDN patterns: `example.com` (exactly), `*.example.com` (strictly below) and
//! `.example.com` (the name and everything below it). Nothing else is a pattern.

use crate::names::{self, NameError};

/// A parsed, normalised pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `example.com`: that name only.
    Exact(String),
    /// `*.example.com`: one or more labels below the name, not the name itself.
    Below(String),
    /// `.example.com`: the name and everything below it.
    Suffix(String),
}

/// Why a pattern is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// A `*` anywhere but as the whole first label (`api.*.example.com`, `*foo.com`, `**`).
    #[error("`*` may only be the whole first label, as in `*.example.com`")]
    Wildcard,
    /// The name part is not a valid name.
    #[error("invalid name: {0}")]
    Name(#[from] NameError),
}

impl Pattern {
    /// Parses and normalises a pattern from the config.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let (make, base): (fn(String) -> Pattern, &str) =
            if let Some(base) = text.strip_prefix("*.") {
                (Pattern::Below, base)
            } else if let Some(base) = text.strip_prefix('.') {
                (Pattern::Suffix, base)
            } else {
                (Pattern::Exact, text)
            };
        if base.contains('*') {
            return Err(PatternError::Wildcard);
        }
        Ok(make(names::normalize(base)?))
    }

    /// The normalised name the pattern is anchored at.
    pub fn name(&self) -> &str {
        match self {
            Pattern::Exact(n) | Pattern::Below(n) | Pattern::Suffix(n) => n,
        }
    }

    /// Whether `name` (normalised) matches. The policy uses its trie instead; this is the
    /// reference the trie is tested against.
    pub fn matches(&self, name: &str) -> bool {
        let below = |base: &str| {
            name.strip_suffix(base)
                .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
        };
        match self {
            Pattern::Exact(base) => name == base,
            Pattern::Below(base) => below(base),
            Pattern::Suffix(base) => name == base || below(base),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(
            Pattern::parse("GitHub.com."),
            Ok(Pattern::Exact("github.com".into()))
        );
        assert_eq!(
            Pattern::parse("*.github.com"),
            Ok(Pattern::Below("github.com".into()))
        );
        assert_eq!(
            Pattern::parse(".githubusercontent.com"),
            Ok(Pattern::Suffix("githubusercontent.com".into()))
        );
        assert_eq!(Pattern::parse("*.com"), Ok(Pattern::Below("com".into())));
        assert_eq!(
            Pattern::parse("*.bücher.example"),
            Ok(Pattern::Below("xn--bcher-kva.example".into()))
        );
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "api.*.example.com",
            "*foo.com",
            "**",
            "*",
            "*.*.example.com",
            "foo*.com",
            "**.example.com",
        ] {
            assert_eq!(Pattern::parse(bad), Err(PatternError::Wildcard), "{bad}");
        }
        assert_eq!(
            Pattern::parse(""),
            Err(PatternError::Name(NameError::EmptyName))
        );
        assert_eq!(
            Pattern::parse("*."),
            Err(PatternError::Name(NameError::EmptyName))
        );
        assert_eq!(
            Pattern::parse("."),
            Err(PatternError::Name(NameError::EmptyName))
        );
        assert_eq!(
            Pattern::parse("..example.com"),
            Err(PatternError::Name(NameError::EmptyLabel))
        );
        assert_eq!(
            Pattern::parse("10.0.0.1"),
            Err(PatternError::Name(NameError::IpLiteral))
        );
        assert_eq!(
            Pattern::parse("exa mple.com"),
            Err(PatternError::Name(NameError::BadCharacter))
        );
    }

    #[test]
    fn reference_matching() {
        let exact = Pattern::parse("example.com").unwrap();
        let below = Pattern::parse("*.example.com").unwrap();
        let suffix = Pattern::parse(".example.com").unwrap();
        for (name, e, b, s) in [
            ("example.com", true, false, true),
            ("a.example.com", false, true, true),
            ("a.b.example.com", false, true, true),
            ("badexample.com", false, false, false),
            ("example.com.evil", false, false, false),
            ("com", false, false, false),
        ] {
            assert_eq!(
                (
                    exact.matches(name),
                    below.matches(name),
                    suffix.matches(name)
                ),
                (e, b, s),
                "{name}"
            );
        }
    }
}
