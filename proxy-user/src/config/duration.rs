//! Durations in the config: strings such as `"500ms"`, `"10s"`, `"5m"`, `"1h"` or `"1m30s"`.
//! A bare `"0"` means zero (which some fields read as "off"). Integers are refused, so a
//! unit is never guessed.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// Why a duration string is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad duration `{0}`: expected a number and a unit (ms, s, m, h), as in \"10s\" or \"1m30s\""
)]
pub struct DurationError(String);

/// Parses a duration string; see the module docs.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let fail = || DurationError(text.to_owned());
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return Err(fail());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let unit_len = rest[digits..]
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        if digits == 0 || unit_len == 0 {
            return Err(fail());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| fail())?;
        let part = match &rest[digits..digits + unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(fail)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(fail)?),
            _ => return Err(fail()),
        };
        total = total.checked_add(part).ok_or_else(fail)?;
        rest = &rest[digits + unit_len..];
    }
    Ok(total)
}

/// `#[serde(deserialize_with = "duration::deserialize")]` for a `Duration` field.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration string such as \"10s\" or \"500ms\"")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
            parse(s).map_err(E::custom)
        }
    }
    d.deserialize_str(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        for bad in [
            "",
            "10",
            "s",
            "1.5s",
            "10 s",
            "-1s",
            "1d",
            "1sm",
            "99999999999999999999s",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
