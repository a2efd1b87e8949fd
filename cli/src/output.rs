//! Output helpers shared by the fleet commands: writing to stdout, JSON, table cells, aligned
//! tables.

use std::io::Write;
use std::time::Duration;

use serde_json::Value;

use crate::error::CliError;

/// Writes `text` to stdout.
pub(crate) fn out(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(CliError::Stdout)
}

/// Prints `v` as pretty JSON.
pub(crate) fn print_json(v: &Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into());
    out(&format!("{text}\n"))
}

/// A JSON value as a table cell: `-` for null, a string without quotes, anything else as JSON.
pub(crate) fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A sha256 (hex) shortened to its first 12 characters for tables.
pub(crate) fn short(digest: &Value) -> String {
    short_text(&s(digest))
}

/// `text` shortened to its first 12 characters (a sha256 for tables; whatever the server sent,
/// cut at a character boundary).
pub(crate) fn short_text(text: &str) -> String {
    text.chars().take(12).collect()
}

/// Unix seconds as RFC 3339 (`-` when absent).
pub(crate) fn time(v: &Value) -> String {
    v.as_i64()
        .and_then(|t| u64::try_from(t).ok())
        .map(|t| {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(t))
                .to_string()
        })
        .unwrap_or_else(|| "-".into())
}

/// Renders rows as aligned columns.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let line = |cells: Vec<String>, text: &mut String| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        text.push_str(l.trim_end());
        text.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect(), &mut text);
    for row in rows {
        line(row.clone(), &mut text);
    }
    text
}

/// `part` as a percentage of `whole`, one decimal (`-` for an empty whole).
pub(crate) fn percent_of(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".to_string();
    }
    format!("{:.1}%", part as f64 * 100.0 / whole as f64)
}
