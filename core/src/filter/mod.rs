//! The device filter language: which devices a listing or a rollout is about.
//!
//! ```text
//! hw=gw-a and label:region=eu
//! version!=2.0.0 and (online or label:ring=canary)
//! not drifted and id=gw-*
//! ```
//!
//! # Grammar
//!
//! ```text
//! filter  := or
//! or      := and ( "or" and )*
//! and     := unary ( "and" unary )*
//! unary   := "not" unary | primary
//! primary := "(" or ")" | flag | field ( "=" | "!=" ) value
//! flag    := "online" | "drifted" | "all"
//! field   := "id" | "hw" | "version" | "digest" | "result" | "label:" KEY
//! value   := WORD | "quoted string"        (* in a value matches any run of characters *)
//! ```
//!
//! Words are letters, digits and `_ . - : / + @ *`; anything else goes in double quotes (with
//! `\"` and `\\` escapes). Keywords are lowercase. `not` binds tighter than `and`, which binds
//! tighter than `or`. A field the device does not have never equals a value, so `!=` matches
//! it. `label:KEY` looks at the operator's server label first, then the device's own.
//!
//! Hostile input cannot exhaust the parser: filters are at most [`MAX_FILTER_LEN`] bytes and
//! nest at most [`MAX_DEPTH`] deep. Every error names its 1-based column.

mod parse;

use alloc::boxed::Box;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use crate::digest::Digest;

/// Longest filter accepted, in bytes.
pub const MAX_FILTER_LEN: usize = 4096;
/// Deepest nesting of parentheses and `not` accepted.
pub const MAX_DEPTH: usize = 32;

/// Why a filter does not parse. Columns are 1-based character positions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// The filter is empty (use `all` to mean every device).
    #[error("empty filter (use `all` for every device)")]
    Empty,
    /// The filter is longer than [`MAX_FILTER_LEN`].
    #[error("filter too long: at most {limit} bytes")]
    TooLong {
        /// The limit.
        limit: usize,
    },
    /// A character that cannot start any token.
    #[error("unexpected character {ch:?} at column {column}")]
    InvalidCharacter {
        /// The character.
        ch: char,
        /// Where.
        column: usize,
    },
    /// A quoted string is not closed.
    #[error("unterminated string starting at column {column}")]
    UnterminatedString {
        /// Where the string starts.
        column: usize,
    },
    /// A token where something else was expected.
    #[error("unexpected token '{token}' at column {column}, expected {expected}")]
    UnexpectedToken {
        /// The token found.
        token: String,
        /// Where.
        column: usize,
        /// What would have been valid.
        expected: &'static str,
    },
    /// The filter ends where something else was expected.
    #[error("unexpected end of filter at column {column}, expected {expected}")]
    UnexpectedEnd {
        /// The column just past the end.
        column: usize,
        /// What would have been valid.
        expected: &'static str,
    },
    /// A field name this language does not know.
    #[error(
        "unknown field '{field}' at column {column} (fields: id, hw, version, digest, result, label:KEY; flags: online, drifted, all)"
    )]
    UnknownField {
        /// The name.
        field: String,
        /// Where.
        column: usize,
    },
    /// A flag (`online`, `drifted`, `all`) used with `=` or `!=`.
    #[error("'{field}' at column {column} takes no value: write '{field}' or 'not {field}'")]
    FlagWithValue {
        /// The flag.
        field: String,
        /// Where.
        column: usize,
    },
    /// A field used without `=` or `!=`.
    #[error("field '{field}' at column {column} needs a value: '{field}=...' or '{field}!=...'")]
    MissingComparison {
        /// The field.
        field: String,
        /// Where.
        column: usize,
    },
    /// Nesting deeper than [`MAX_DEPTH`].
    #[error("filter nests too deeply at column {column} (at most {limit} levels)")]
    TooDeep {
        /// Where the limit was passed.
        column: usize,
        /// The limit.
        limit: usize,
    },
}

impl FilterError {
    /// The 1-based character column the error points at, when it points at one (the console
    /// marks it under the filter).
    pub fn column(&self) -> Option<usize> {
        match self {
            FilterError::Empty | FilterError::TooLong { .. } => None,
            FilterError::InvalidCharacter { column, .. }
            | FilterError::UnterminatedString { column }
            | FilterError::UnexpectedToken { column, .. }
            | FilterError::UnexpectedEnd { column, .. }
            | FilterError::UnknownField { column, .. }
            | FilterError::FlagWithValue { column, .. }
            | FilterError::MissingComparison { column, .. }
            | FilterError::TooDeep { column, .. } => Some(*column),
        }
    }
}

/// What a filter can ask about a device: the server's registry row implements it (and the
/// fleet's flag evaluation and targeting go through it), so every filter is evaluated by the
/// same code.
pub trait DeviceFacts {
    /// The device id (`id`).
    fn id(&self) -> &str;
    /// The hardware class it reported (`hw`).
    fn hardware_class(&self) -> Option<&str>;
    /// The version string of the release it runs (`version`).
    fn running_version(&self) -> Option<&str>;
    /// The digest of the artifact it runs (`digest`).
    fn running_digest(&self) -> Option<Digest>;
    /// Its last update result (`result`).
    fn last_result(&self) -> Option<&str>;
    /// Label `key` (`label:KEY`): the operator's server label first, then the device's own.
    fn label(&self, key: &str) -> Option<&str>;
    /// Connected to the broker (`online`).
    fn online(&self) -> bool;
    /// Runs something other than it should (`drifted`).
    fn drifted(&self) -> bool;
}

/// A device attribute compared with `=` / `!=`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Field {
    /// `id`: the device id.
    Id,
    /// `hw`: the hardware class.
    Hardware,
    /// `version`: the running version string.
    Version,
    /// `digest`: the running artifact digest (hex).
    Digest,
    /// `result`: the last update result.
    Result,
    /// `label:KEY`: a label (server label first, then reported).
    Label(String),
}

/// A boolean device attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Flag {
    /// Connected to the broker.
    Online,
    /// Runs something other than it should.
    Drifted,
    /// Every device.
    All,
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Filter {
    /// A boolean attribute.
    Flag(Flag),
    /// `field = value` (or `!=` when `negated`); `*` in the value is a wildcard.
    Compare {
        /// The attribute.
        field: Field,
        /// `!=` rather than `=`.
        negated: bool,
        /// The value.
        value: String,
    },
    /// `not f`.
    Not(Box<Filter>),
    /// `a and b`.
    And(Box<Filter>, Box<Filter>),
    /// `a or b`.
    Or(Box<Filter>, Box<Filter>),
}

impl Filter {
    /// Parses a filter.
    pub fn parse(input: &str) -> Result<Self, FilterError> {
        if input.len() > MAX_FILTER_LEN {
            return Err(FilterError::TooLong {
                limit: MAX_FILTER_LEN,
            });
        }
        let tokens = parse::lex(input)?;
        if tokens.is_empty() {
            return Err(FilterError::Empty);
        }
        let end = input.chars().count() + 1;
        let mut p = parse::Parser::new(tokens, end);
        let filter = p.or(0)?;
        match p.peek() {
            None => Ok(filter),
            Some(t) => Err(t.unexpected("'and', 'or' or the end")),
        }
    }

    /// Whether `device` matches.
    pub fn matches<D: DeviceFacts + ?Sized>(&self, device: &D) -> bool {
        match self {
            Filter::Flag(Flag::All) => true,
            Filter::Flag(Flag::Online) => device.online(),
            Filter::Flag(Flag::Drifted) => device.drifted(),
            Filter::Compare {
                field,
                negated,
                value,
            } => {
                let digest;
                let actual: Option<&str> = match field {
                    Field::Id => Some(device.id()),
                    Field::Hardware => device.hardware_class(),
                    Field::Version => device.running_version(),
                    Field::Digest => {
                        digest = device.running_digest().map(|d| d.to_string());
                        digest.as_deref()
                    }
                    Field::Result => device.last_result(),
                    Field::Label(key) => device.label(key),
                };
                let equal = actual.is_some_and(|a| glob_match(value, a));
                equal != *negated
            }
            Filter::Not(f) => !f.matches(device),
            Filter::And(a, b) => a.matches(device) && b.matches(device),
            Filter::Or(a, b) => a.matches(device) || b.matches(device),
        }
    }

    /// Whether evaluating the filter reads any label: a caller that loads device facts
    /// column by column (the server's paged device list) can skip the labels when not.
    pub fn reads_labels(&self) -> bool {
        match self {
            Filter::Flag(_) => false,
            Filter::Compare { field, .. } => matches!(field, Field::Label(_)),
            Filter::Not(f) => f.reads_labels(),
            Filter::And(a, b) | Filter::Or(a, b) => a.reads_labels() || b.reads_labels(),
        }
    }
}

impl fmt::Display for Filter {
    /// The canonical form: fully parenthesized binary operators, values quoted when needed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::Flag(Flag::All) => f.write_str("all"),
            Filter::Flag(Flag::Online) => f.write_str("online"),
            Filter::Flag(Flag::Drifted) => f.write_str("drifted"),
            Filter::Compare {
                field,
                negated,
                value,
            } => {
                match field {
                    Field::Id => f.write_str("id")?,
                    Field::Hardware => f.write_str("hw")?,
                    Field::Version => f.write_str("version")?,
                    Field::Digest => f.write_str("digest")?,
                    Field::Result => f.write_str("result")?,
                    Field::Label(key) => {
                        f.write_str("label:")?;
                        write_value(f, key)?;
                    }
                }
                f.write_str(if *negated { "!=" } else { "=" })?;
                write_value(f, value)
            }
            Filter::Not(inner) => write!(f, "not {inner}"),
            Filter::And(a, b) => write!(f, "({a} and {b})"),
            Filter::Or(a, b) => write!(f, "({a} or {b})"),
        }
    }
}

fn write_value(f: &mut fmt::Formatter<'_>, value: &str) -> fmt::Result {
    if !value.is_empty() && value.chars().all(is_word_char) && !is_keyword(value) {
        f.write_str(value)
    } else {
        f.write_str("\"")?;
        for c in value.chars() {
            if c == '"' || c == '\\' {
                f.write_str("\\")?;
            }
            write!(f, "{c}")?;
        }
        f.write_str("\"")
    }
}

fn is_keyword(word: &str) -> bool {
    matches!(word, "and" | "or" | "not")
}

/// `*` matches any run of characters (including none); everything else matches itself.
fn glob_match(pattern: &str, text: &str) -> bool {
    if !pattern.contains('*') {
        return pattern == text;
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative wildcard matching with one backtrack point: O(len(p) * len(t)) worst case.
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match (p.get(pi), t.get(ti)) {
            (Some('*'), _) => {
                star = Some((pi, ti));
                pi += 1;
            }
            (Some(pc), Some(tc)) if pc == tc => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | ':' | '/' | '+' | '@' | '*')
}

#[cfg(test)]
mod tests {
    use alloc::collections::BTreeMap;

    use super::*;

    #[test]
    fn issue16_errors_name_their_column() {
        let at = |text: &str| Filter::parse(text).unwrap_err().column();
        assert_eq!(at("hw=a and colour=blue"), Some(10));
        assert_eq!(at("hw=\"open"), Some(4));
        assert_eq!(at("hw=a and"), Some(9));
        assert_eq!(at(" "), None);
    }

    #[test]
    fn glob() {
        assert!(glob_match("gw-*", "gw-17"));
        assert!(glob_match("*", ""));
        assert!(glob_match("2.*.1", "2.4.1"));
        assert!(!glob_match("2.*.1", "2.4.2"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("abc", "abcd"));
    }

    /// A device as a test writes it: server labels win over its own.
    struct Facts {
        labels: BTreeMap<&'static str, &'static str>,
        server_labels: BTreeMap<&'static str, &'static str>,
    }

    impl DeviceFacts for Facts {
        fn id(&self) -> &str {
            "gw-1"
        }
        fn hardware_class(&self) -> Option<&str> {
            Some("gw-a")
        }
        fn running_version(&self) -> Option<&str> {
            Some("2.0.0")
        }
        fn running_digest(&self) -> Option<Digest> {
            Some(Digest::of(b"fw"))
        }
        fn last_result(&self) -> Option<&str> {
            None
        }
        fn label(&self, key: &str) -> Option<&str> {
            self.server_labels
                .get(key)
                .or_else(|| self.labels.get(key))
                .copied()
        }
        fn online(&self) -> bool {
            true
        }
        fn drifted(&self) -> bool {
            false
        }
    }

    #[test]
    fn matching() {
        let d = Facts {
            labels: [("region", "eu"), ("ring", "beta")].into(),
            server_labels: [("region", "us")].into(),
        };
        let m = |s: &str| Filter::parse(s).unwrap().matches(&d);
        assert!(m("hw=gw-a and version=2.0.0"));
        assert!(m("label:region=us"), "server labels win");
        assert!(!m("label:region=eu"));
        assert!(m("label:ring=beta"));
        assert!(m("label:missing!=x"), "a missing field never equals");
        assert!(!m("label:missing=*"));
        assert!(m("result!=committed"));
        assert!(m(&alloc::format!("digest={}", Digest::of(b"fw"))));
        assert!(m("online and not drifted"));
        assert!(m("drifted or id=gw-*"));
        assert!(!m("not all"));
    }

    #[test]
    fn reads_labels_finds_a_label_anywhere() {
        let r = |s: &str| Filter::parse(s).unwrap().reads_labels();
        assert!(!r("hw=gw-a and (online or not version=1.*)"));
        assert!(r("label:site=a"));
        assert!(r("online and not (drifted or label:ring!=beta)"));
        assert!(r("label:a=b or all"));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "hw=gw-a and label:region=eu",
            "not (online or drifted) and version!=\"2 0\"",
            "label:\"my key\"=\"a\\\"b\"",
        ] {
            let f = Filter::parse(s).unwrap();
            assert_eq!(Filter::parse(&f.to_string()).unwrap(), f, "{s} -> {f}");
        }
    }
}
