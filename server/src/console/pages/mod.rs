//! The console's pages, one module per area.

pub(crate) mod create;
pub(crate) mod device_facts;
pub(crate) mod devices;
pub(crate) mod misc;
pub(crate) mod overview;
pub(crate) mod rollout_facts;
pub(crate) mod rollouts;

use axum::http::Method;
use serde_json::Value;

use super::html::{esc, json_text, url};
use super::session::Session;
use crate::http::needed_role;

/// Whether `session`'s operator may `method` the API `route` (as declared in the role table):
/// actions the role may not take are not offered (the API refuses them anyway).
pub(crate) fn may(session: &Session, method: &Method, route: &str) -> bool {
    needed_role(method, Some(route)).is_none_or(|needed| session.operator.role.grants(needed))
}

/// A field of a JSON object as short text.
pub(crate) fn field(value: &Value, key: &str) -> String {
    value.get(key).map(json_text).unwrap_or_default()
}

/// A table with a caption: `head` the column names, `rows` cells already escaped HTML.
pub(crate) fn table(caption: &str, head: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("<table><caption>{}</caption><thead><tr>", esc(caption));
    for h in head {
        out.push_str(&format!(r#"<th scope="col">{}</th>"#, esc(h)));
    }
    out.push_str("</tr></thead><tbody>");
    if rows.is_empty() {
        out.push_str(&format!(
            r#"<tr><td colspan="{}">none</td></tr>"#,
            head.len().max(1)
        ));
    }
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            out.push_str(&format!("<td>{cell}</td>"));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// A link to a device's page, its id as the text.
pub(crate) fn device_link(id: &str) -> String {
    format!(r#"<a href="/devices/{}">{}</a>"#, url(id), esc(id))
}

/// A link to rollout `id`'s page (`#7`); nothing for an empty id (no rollout).
pub(crate) fn rollout_link(id: &str) -> String {
    if id.is_empty() {
        return String::new();
    }
    format!(r#"<a href="/rollouts/{}">#{}</a>"#, url(id), esc(id))
}
