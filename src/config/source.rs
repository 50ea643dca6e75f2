//! The file being parsed ([`Source`]): byte spans turned into [`ConfigError`]s with
//! file:line:col and the dotted key, and toml's messages polished.
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::checks::*;

use super::{units, ConfigError, MAX_TIMEOUT};

/// The file being parsed: turns byte spans into [`ConfigError`]s.
pub(super) struct Source<'a> {
    pub(super) file: &'a Path,
    pub(super) text: &'a str,
}

impl Source<'_> {
    /// An error at the value or key at byte range `span`.
    pub(super) fn at(&self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        let (line, col) = line_col(self.text, span.start);
        ConfigError { file: self.file.to_path_buf(), line, col, key: key.into(), message: message.into() }
    }

    /// An error with no place in the text (a default that does not work, say).
    pub(super) fn whole(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError { file: self.file.to_path_buf(), line: 0, col: 0, key: key.into(), message: message.into() }
    }

    pub(super) fn maybe_at(&self, span: Option<Range<usize>>, key: &str, message: String) -> ConfigError {
        match span {
            Some(s) => self.at(s, key, message),
            None => self.whole(key, message),
        }
    }

    pub(super) fn syntax(&self, e: &toml::de::Error) -> ConfigError {
        // toml gives no place for a few errors (a dotted key past its recursion limit):
        // they point at the start of the file rather than at no line at all.
        self.at(e.span().unwrap_or(0..0), "(syntax)", e.message())
    }

    /// Turns a serde error into a `ConfigError`, finding the key from toml's span.
    pub(super) fn deserialize(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span().unwrap_or(0..0);
        // The text parsed a moment ago; if it somehow does not now, the error still
        // has its place, only no key.
        let path = DeTable::parse(self.text).map(|doc| key_path_at(doc.get_ref(), &span)).unwrap_or_default();
        let msg = e.message();
        let (key, message) = if let Some(field) = backticked(msg, "missing field `") {
            // The span is the table that lacks the key.
            let key = join_key(&path, field);
            let message = if path.is_empty() && field == "workers" {
                "the [workers] table is required".to_string()
            } else {
                "required key is missing".to_string()
            };
            (key, message)
        } else if let Some(field) = backticked(msg, "unknown field `") {
            // The span is the unknown key itself, so the path normally ends with it.
            let key = if path == field || path.ends_with(&format!(".{field}")) { path } else { join_key(&path, field) };
            let rest = msg.split_once("`, ").map_or("", |(_, rest)| rest);
            let message = if rest.is_empty() { "unknown key".to_string() } else { format!("unknown key, {rest}") };
            (key, message)
        } else {
            let key = if path.is_empty() { "(file)".to_string() } else { path };
            (key, polish(msg))
        };
        self.at(span, key, message)
    }

    pub(super) fn int_in(
        &self,
        v: Option<&Spanned<i64>>,
        key: &str,
        default: i64,
        lo: i64,
        hi: i64,
    ) -> Result<i64, ConfigError> {
        let Some(v) = v else { return Ok(default) };
        let n = *v.get_ref();
        if (lo..=hi).contains(&n) {
            return Ok(n);
        }
        let message = if hi == i64::MAX {
            format!("must be at least {lo}, not {n}")
        } else {
            format!("must be between {lo} and {hi}, not {n}")
        };
        Err(self.at(v.span(), key, message))
    }

    /// A duration of at most `max`, if given.
    pub(super) fn duration(
        &self,
        v: Option<&Spanned<DurationText>>,
        key: &str,
        max: Duration,
    ) -> Result<Option<Duration>, ConfigError> {
        v.map(|v| {
            units::parse_duration(&v.get_ref().0)
                .and_then(|d| at_most(d, max))
                .map_err(|why| self.at(v.span(), key, why))
        })
        .transpose()
    }

    /// A duration that must not be zero nor longer than [`MAX_TIMEOUT`], or `default` if
    /// not given.
    pub(super) fn positive_duration(
        &self,
        v: Option<&Spanned<DurationText>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match (v, self.duration(v, key, MAX_TIMEOUT)?) {
            (Some(v), Some(d)) if d.is_zero() => Err(self.at(v.span(), key, "must be greater than 0")),
            (_, d) => Ok(d.unwrap_or(default)),
        }
    }

    /// A top-level string entry, read leniently (for `control_socket_of`).
    pub(super) fn string_entry(&self, doc: &DeTable<'_>, key: &str) -> Result<Option<Spanned<String>>, ConfigError> {
        for (k, v) in doc {
            if k.get_ref() == key {
                return match v.get_ref() {
                    DeValue::String(s) => Ok(Some(Spanned::new(v.span(), s.to_string()))),
                    other => {
                        Err(self.at(v.span(), key, format!("invalid type: {}, expected a string", other.type_str())))
                    }
                };
            }
        }
        Ok(None)
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let col = before.get(line_start..).unwrap_or("").chars().count() + 1;
    (line, col)
}

/// The text between `prefix` and the next backtick, if `msg` starts with `prefix`.
pub(super) fn backticked<'m>(msg: &'m str, prefix: &str) -> Option<&'m str> {
    msg.strip_prefix(prefix)?.split('`').next()
}

pub(super) fn join_key(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// serde's type names → TOML's.
pub(super) fn polish(msg: &str) -> String {
    msg.replace("expected i64", "expected an integer")
        .replace("invalid type: map", "invalid type: table")
        .replace("invalid type: sequence", "invalid type: array")
        .replace("expected a sequence", "expected an array")
        .replace("expected a map", "expected a table")
}

/// The dotted key (`listen[1].name`) of the key or value whose span is exactly `span`;
/// empty if none (the document root). Where an array and its first element share a span
/// (`[[listen]]`), the element wins.
pub(super) fn key_path_at(root: &DeTable<'_>, span: &Range<usize>) -> String {
    let mut path = Vec::new();
    let mut best = None;
    search_table(root, span, &mut path, &mut best);
    best.map(|segs| render_path(&segs)).unwrap_or_default()
}

#[derive(Clone)]
pub(super) enum Segment {
    Key(String),
    Index(usize),
}

pub(super) fn consider(path: &[Segment], best: &mut Option<Vec<Segment>>) {
    // Deeper wins a tie: visited later, so replace on `>=`.
    if best.as_ref().is_none_or(|b| path.len() >= b.len()) {
        *best = Some(path.to_vec());
    }
}

pub(super) fn search_table(
    table: &DeTable<'_>,
    span: &Range<usize>,
    path: &mut Vec<Segment>,
    best: &mut Option<Vec<Segment>>,
) {
    for (k, v) in table {
        path.push(Segment::Key(k.get_ref().to_string()));
        if k.span() == *span {
            consider(path, best);
        }
        search_value(v, span, path, best);
        path.pop();
    }
}

pub(super) fn search_value(
    v: &Spanned<DeValue<'_>>,
    span: &Range<usize>,
    path: &mut Vec<Segment>,
    best: &mut Option<Vec<Segment>>,
) {
    if v.span() == *span {
        consider(path, best);
    }
    match v.get_ref() {
        DeValue::Table(t) => search_table(t, span, path, best),
        DeValue::Array(a) => {
            for (i, e) in a.iter().enumerate() {
                path.push(Segment::Index(i));
                search_value(e, span, path, best);
                path.pop();
            }
        }
        _ => {}
    }
}

pub(super) fn render_path(segs: &[Segment]) -> String {
    let mut out = String::new();
    for s in segs {
        match s {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}
