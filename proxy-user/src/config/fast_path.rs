//! Loading a config with a million rules in seconds. The `toml` crate builds a document
//! tree before serde sees it: at a million `[[policy.rule]]` tables that takes many
//! seconds and gigabytes. So the text is split first, with `toml_parser`'s exact lexer,
//! into `[[policy.rule]]` tables and everything else. Each rule table is read by a small
//! parser for the plain one-line forms rules are written in (`key = "string"`,
//! `key = ["a", "b"]`, `key = [443]`, comments), or by `toml` alone if it uses any other
//! form; the rest of the document goes through `toml` as usual.
//!
//! This path only ever answers with a config; on any doubt or error it gives up and the
//! caller parses the whole text with `toml`, which also produces every syntax error with
//! its true position. So it can be wrong only by accepting a document `toml` would read
//! differently, and each piece it cuts out is a TOML document on its own: a rule table's
//! keys are those of one array element, whatever the surrounding file says.

use serde::de::DeserializeOwned;
use toml_parser::Source;
use toml_parser::lexer::TokenKind;

use super::rules::{self, RuleList, Writer};
use super::{Config, RuleConfig};

/// A document whose `[[policy.rule]]` tables this path may cut out: the config, or an
/// included rule file.
pub(super) trait WithRules: DeserializeOwned {
    /// Its `policy.rule` list.
    fn rules_mut(&mut self) -> &mut RuleList;
}

impl WithRules for Config {
    fn rules_mut(&mut self) -> &mut RuleList {
        &mut self.policy.rules
    }
}

/// The only header this path cuts out, spelled exactly so.
const RULE_HEADER: &str = "[[policy.rule]]";

/// Parses `text`, or `None` if the whole text must go through `toml` instead.
pub(super) fn parse<T: WithRules>(text: &str) -> Option<T> {
    let mut rest = String::new();
    let mut rules = RuleList::new();
    for chunk in chunks(text)? {
        match chunk {
            Chunk::Other(part) => rest.push_str(part),
            Chunk::Rule { body, .. } => {
                if !read_rule(body, &mut rules) {
                    // A form the small parser does not take: let `toml` read the table.
                    let rule: RuleConfig = toml::from_str(body).ok()?;
                    rules.push(&rule);
                }
            }
        }
    }
    let mut config: T = toml::from_str(&rest).ok()?;
    if !rules.is_empty() {
        // Rules spelled some other way too (`[[ policy.rule ]]`, `rule = [...]`): their
        // order relative to these is lost here, so read the whole text instead.
        if !config.rules_mut().is_empty() {
            return None;
        }
        rules.shrink_to_fit();
        *config.rules_mut() = rules;
    }
    Some(config)
}

/// Where the `index`th (from 0) `[[policy.rule]]` header of `text` starts, for error
/// messages; `None` if the rules are not all spelled so.
pub(super) fn rule_header(text: &str, index: usize) -> Option<usize> {
    chunks(text)?
        .into_iter()
        .filter_map(|chunk| match chunk {
            Chunk::Rule { header, .. } => Some(header),
            Chunk::Other(_) => None,
        })
        .nth(index)
}

/// A piece of the document.
enum Chunk<'a> {
    /// A `[[policy.rule]]` table: where its header starts, and its body (after the
    /// header line).
    Rule { header: usize, body: &'a str },
    /// Anything else, headers included.
    Other(&'a str),
}

/// Splits `text` at every table header; `None` if it does not even lex.
fn chunks(text: &str) -> Option<Vec<Chunk<'_>>> {
    let mut out = Vec::new();
    // Where the current chunk starts, and whether it is a rule table's body.
    let (mut start, mut in_rule, mut header) = (0, false, 0);
    // Bracket depth inside values, and whether only whitespace precedes on this line.
    let (mut depth, mut line_start) = (0usize, true);
    let mut tokens = Source::new(text).lex();
    while let Some(token) = tokens.next() {
        let span = token.span();
        match token.kind() {
            TokenKind::LeftSquareBracket if depth == 0 && line_start => {
                // A header: it runs to the end of its line.
                let header_start = span.start();
                let mut header_end = span.end();
                let mut line_end = text.len();
                for t in tokens.by_ref() {
                    match t.kind() {
                        TokenKind::Newline => {
                            line_end = t.span().end();
                            break;
                        }
                        TokenKind::Whitespace | TokenKind::Comment | TokenKind::Eof => {}
                        _ => header_end = t.span().end(),
                    }
                }
                let piece = &text[start..header_start];
                out.push(if in_rule {
                    Chunk::Rule {
                        header,
                        body: piece,
                    }
                } else {
                    Chunk::Other(piece)
                });
                in_rule = &text[header_start..header_end] == RULE_HEADER;
                if in_rule {
                    header = header_start;
                    start = line_end;
                } else {
                    start = header_start;
                }
            }
            TokenKind::LeftSquareBracket | TokenKind::LeftCurlyBracket => {
                depth += 1;
                line_start = false;
            }
            TokenKind::RightSquareBracket | TokenKind::RightCurlyBracket => {
                depth = depth.checked_sub(1)?;
                line_start = false;
            }
            TokenKind::Newline => line_start = depth == 0,
            TokenKind::Whitespace | TokenKind::Comment | TokenKind::Eof => {}
            _ => line_start = false,
        }
    }
    let piece = &text[start..];
    out.push(if in_rule {
        Chunk::Rule {
            header,
            body: piece,
        }
    } else {
        Chunk::Other(piece)
    });
    Some(out)
}

/// Reads a rule table's body written in the plain forms (see the module docs) into
/// `rules`; `false`, with nothing added, if it uses any other form or is invalid.
fn read_rule(body: &str, rules: &mut RuleList) -> bool {
    let mut w = rules.writer();
    let mark = w.mark();
    if read_fields(body, &mut w).is_some() {
        w.finish();
        true
    } else {
        w.abandon(mark);
        false
    }
}

fn read_fields(body: &str, w: &mut Writer<'_>) -> Option<()> {
    let mut seen = 0u8;
    for line in body.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let mut s = Cursor(line);
        s.skip_ws();
        if s.0.is_empty() || s.0.starts_with('#') {
            s.comment_or_end()?;
            continue;
        }
        let key = s.take_while(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        let t = match key {
            "name" => rules::NAME,
            "action" => rules::ACTION,
            "mode" => rules::MODE,
            "fqdn" => rules::FQDN,
            "ports" => rules::PORTS,
            "sources" => rules::SOURCES,
            "protocols" => rules::PROTOCOLS,
            _ => return None,
        };
        // Each key once.
        if seen & (1 << t) != 0 {
            return None;
        }
        seen |= 1 << t;
        s.skip_ws();
        s.eat(b'=')?;
        s.skip_ws();
        match t {
            rules::NAME | rules::ACTION | rules::MODE => w.str(t, s.string()?),
            rules::PORTS => {
                let at = w.list(t);
                s.array(|s| {
                    w.item_int(at, s.integer()?);
                    Some(())
                })?;
            }
            _ => {
                let at = w.list(t);
                s.array(|s| {
                    w.item_str(at, s.string()?);
                    Some(())
                })?;
            }
        }
        s.skip_ws();
        s.comment_or_end()?;
    }
    Some(())
}

/// The rest of a line being read.
struct Cursor<'a>(&'a str);

impl<'a> Cursor<'a> {
    fn skip_ws(&mut self) {
        self.0 = self.0.trim_start_matches([' ', '\t']);
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        self.0 = self.0.strip_prefix(char::from(b))?;
        Some(())
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a str {
        let n = self.0.bytes().position(|b| !f(b)).unwrap_or(self.0.len());
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        head
    }

    /// A comment (without control characters, as TOML wants) or nothing.
    fn comment_or_end(&mut self) -> Option<()> {
        match self.0.strip_prefix('#') {
            None if self.0.is_empty() => Some(()),
            None => None,
            Some(c) => (!c.bytes().any(is_control)).then_some(()),
        }
    }

    /// A basic string without escapes, or a literal string, on one line.
    fn string(&mut self) -> Option<&'a str> {
        let quote = match self.0.as_bytes().first()? {
            b'"' => '"',
            b'\'' => '\'',
            _ => return None,
        };
        let inner = &self.0[1..];
        let end = inner.find(quote)?;
        let s = &inner[..end];
        if s.bytes()
            .any(|b| is_control(b) || (quote == '"' && b == b'\\'))
        {
            return None;
        }
        // `""` or `''` followed by another quote opens a multi-line string.
        if s.is_empty() && inner[end + 1..].starts_with(quote) {
            return None;
        }
        self.0 = &inner[end + 1..];
        Some(s)
    }

    /// A decimal integer without underscores: `0`, `-12`, `+443`.
    fn integer(&mut self) -> Option<i64> {
        let sign = self.take_while(|b| b == b'+' || b == b'-');
        let digits = self.take_while(|b| b.is_ascii_digit());
        let no_leading_zero = digits.len() == 1 || !digits.starts_with('0');
        if sign.len() > 1 || digits.is_empty() || !no_leading_zero {
            return None;
        }
        // Anything glued on (`1_000`, `0x1f`, `1.5`, `1e3`) is another form.
        if self
            .0
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        {
            return None;
        }
        let v: i64 = digits.parse().ok()?;
        Some(if sign == "-" { -v } else { v })
    }

    /// `[item, item, ...]` on one line, with an optional trailing comma.
    fn array(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        self.skip_ws();
        loop {
            if self.eat(b']').is_some() {
                return Some(());
            }
            item(self)?;
            self.skip_ws();
            if self.eat(b',').is_some() {
                self.skip_ws();
            } else {
                self.skip_ws();
                return self.eat(b']');
            }
        }
    }
}

/// Control characters, which TOML allows in neither strings nor comments (tab aside).
fn is_control(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path's answer, and the `toml` crate's, for the same text.
    fn both(text: &str) -> (Option<Config>, Option<Config>) {
        (parse(text), toml::from_str(text).ok())
    }

    #[test]
    fn agrees_with_toml_on_plain_and_unusual_rules() {
        let text = r#"
datapath = "auto"
# a comment with [[policy.rule]] in it
[policy]
default = "allow"   # trailing comment

[[policy.rule]]
name = "a"
action = 'deny'
fqdn = ["a.com", "*.b.com",]
ports = [443, +22, -0]   # odd but valid

[[listener]]
name = "l"
mode = "connect"
address = "127.0.0.1:8080"

[[policy.rule]]  # a comment
action = "allow"
fqdn = [
  "multi.line",  # the small parser leaves this to toml
]
sources = ["10.0.0.0/8"]

[resolver]
nameservers = ["1.1.1.1"]
hosts = { "x" = ["10.0.0.1"] }
notes = """
[[policy.rule]]
name = "inside a string"
"""
"#;
        // `notes` is not a resolver key: toml refuses it, so the fast path must too.
        let (fast, full) = both(text);
        assert!(fast.is_none() && full.is_none());
        let text = text.replace(
            "notes = \"\"\"\n[[policy.rule]]\nname = \"inside a string\"\n\"\"\"\n",
            "",
        );
        let (fast, full) = both(&text);
        let fast = fast.expect("the fast path reads it");
        assert_eq!(Some(&fast), full.as_ref());
        assert_eq!(fast.policy.rules.len(), 2);
        assert_eq!(
            fast.policy
                .rules
                .iter()
                .next()
                .unwrap()
                .ports
                .unwrap()
                .iter()
                .collect::<Vec<_>>(),
            [443, 22, 0]
        );
    }

    #[test]
    fn gives_up_rather_than_guess() {
        for text in [
            // Rules spelled two ways: their order would be lost.
            "[[policy.rule]]\naction = \"allow\"\n[[ policy.rule ]]\naction = \"deny\"\n",
            // A sub-table of a rule.
            "[[policy.rule]]\naction = \"allow\"\n[policy.rule.x]\ny = 1\n",
            // Errors of every kind: toml must produce them.
            "[[policy.rule]]\naction = \"allow\"\naction = \"deny\"\n",
            "[[policy.rule]]\nactoin = \"allow\"\n",
            "[[policy.rule]]\nports = [1_000_000_000_000_000_000_000]\n",
            "[[policy.rule]]\nname = \"a\\\"\n",
            "[[policy.rule]]\nname = \"a\" b\n",
            "[[policy.rule]]\nports = [01]\n",
            "[policy\n",
            "x = ]\n",
        ] {
            assert_eq!(parse::<Config>(text), None, "{text}");
        }
    }

    #[test]
    fn escapes_and_other_forms_go_through_toml() {
        let text = "[[policy.rule]]\nname = \"tab\\there\"\naction = \"\"\"allow\"\"\"\nports = [0x1bb, 1_000]\n";
        let (fast, full) = both(text);
        assert!(fast.is_some());
        assert_eq!(fast, full);
        let rule = full.as_ref().unwrap().policy.rules.iter().next().unwrap();
        assert_eq!(rule.name, Some("tab\there"));
        assert_eq!(rule.ports.unwrap().iter().collect::<Vec<_>>(), [443, 1000]);
    }

    #[test]
    fn the_small_parser_reads_exactly_the_plain_forms() {
        let mut list = RuleList::new();
        assert!(read_rule(
            "name = \"r\"\n\t action='x y' # c\r\nfqdn = []\nports = [ 1 , 2 ]\n\n",
            &mut list
        ));
        for body in [
            "name = \"a\\tb\"",
            "name = \"\"\"a\"\"\"",
            "ports = [1_000]",
            "ports = [0x10]",
            "ports = [1.5]",
            "ports = [\n1]",
            "fqdn = [\"a\" \"b\"]",
            "name.x = \"a\"",
            "\"name\" = \"a\"",
            "name = \"a\u{1}\"",
            "# bad \u{7f} comment",
        ] {
            assert!(!read_rule(body, &mut list), "{body}");
        }
        assert_eq!(list.len(), 1);
        let rule = list.iter().next().unwrap();
        assert_eq!((rule.name, rule.action), (Some("r"), Some("x y")));
        assert!(rule.fqdn.unwrap().is_empty());
        assert_eq!(rule.ports.unwrap().iter().collect::<Vec<_>>(), [1, 2]);
    }
}
