//! The smaller pages: releases, the trust set, flags (with the kill switch) and the audit log.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::Method;
use axum::response::Response;
use serde::Deserialize;
use serde_json::Value;

use super::super::html::{esc, json_text, time, url};
use super::super::layout;
use super::super::{Console, SignedIn};
use super::devices::{EVENT_HEAD, event_rows};
use super::{device_facts, device_link, field, may, table};

/// `GET /releases`.
pub(crate) async fn releases(
    State(console): State<Console>,
    SignedIn(session): SignedIn,
) -> Response {
    let all = match console.read(&session, "/releases").await {
        Ok(all) => all,
        Err(refused) => return refused,
    };
    // Which devices run each release: one GROUP BY over the registry.
    let by_digest = match console.state().db().devices_by_digest().await {
        Ok(t) => t,
        Err(e) => {
            return layout::error_page(&session, &crate::http::ApiError::from(e).into());
        }
    };
    let now = console.state().clock().now_i64();
    let rows: Vec<Vec<String>> = all
        .get("releases")
        .and_then(Value::as_array)
        .map(|list| {
            // The API lists them newest first.
            list.iter()
                .map(|r| {
                    let digest = field(r, "digest");
                    let running = by_digest.get(&Some(digest.clone())).copied().unwrap_or(0);
                    vec![
                        esc(&field(r, "version")).to_string(),
                        esc(&field(r, "product")).to_string(),
                        format!("<code>{}</code>", esc(&digest)),
                        r.get("size")
                            .and_then(Value::as_u64)
                            .map(device_facts::bytes)
                            .unwrap_or_default(),
                        esc(&field(r, "security_version")).to_string(),
                        esc(&text_list(r, "hardware")).to_string(),
                        expiry(r.get("expires").and_then(Value::as_i64), now),
                        format!("<code>{}</code>", esc(&text_list(r, "signers"))),
                        if r.get("trusted") == Some(&Value::Bool(true)) {
                            "yes".into()
                        } else {
                            "no (revoked signers)".into()
                        },
                        format!(
                            r#"<a href="/devices?filter={}">{running}</a>"#,
                            url(&format!("digest={digest}"))
                        ),
                        esc(&field(r, "published_by")).to_string(),
                        r.get("created_at")
                            .and_then(Value::as_i64)
                            .map(time)
                            .unwrap_or_default(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let body = table(
        "Releases, newest first",
        &[
            "Version",
            "Product",
            "Artifact sha256",
            "Size",
            "Security version",
            "Hardware classes",
            "Expires",
            "Signers (key ids)",
            "Trusted",
            "Devices running it",
            "Published by",
            "Published",
        ],
        &rows,
    );
    layout::page(&session, "Releases", "/releases", &body)
}

/// A JSON list of strings as `a, b` (the value as text when it is not a list).
fn text_list(r: &Value, key: &str) -> String {
    match r.get(key) {
        Some(Value::Array(items)) => items.iter().map(json_text).collect::<Vec<_>>().join(", "),
        Some(other) => json_text(other),
        None => String::new(),
    }
}

/// When a release expires (`never` without an expiry), marked once it has (`now` unix seconds).
fn expiry(expires: Option<i64>, now: i64) -> String {
    match expires {
        None => "never".to_owned(),
        Some(at) if at <= now => format!("<strong>expired</strong> {}", time(at)),
        Some(at) => time(at),
    }
}

/// `GET /trust`: the set in force and which devices have taken it.
pub(crate) async fn trust(State(console): State<Console>, SignedIn(session): SignedIn) -> Response {
    match console.read(&session, "/trust").await {
        Ok(set) => layout::page(&session, "Trust set in force", "/trust", &trust_body(&set)),
        Err(refused) => refused,
    }
}

/// The trust page's body from `GET /api/v1/trust`'s answer.
fn trust_body(set: &Value) -> String {
    let keys = set
        .get("keys")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let source = if set.get("rotated") == Some(&Value::Bool(true)) {
        "a rotation accepted by this server"
    } else {
        "the server's configuration (never rotated)"
    };
    let key_list: String = keys
        .iter()
        .map(|k| format!("<li><code>{}</code></li>", esc(&json_text(k))))
        .collect();
    let d = set.get("devices").unwrap_or(&Value::Null);
    let by_sequence: Vec<Vec<String>> = d
        .get("by_sequence")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|s| {
            vec![
                esc(&field(s, "sequence")).to_string(),
                esc(&field(s, "devices")).to_string(),
            ]
        })
        .collect();
    let behind: Vec<String> = d
        .get("behind")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|id| device_link(&json_text(id)))
        .collect();
    let behind = if behind.is_empty() {
        "<p>No device is on an older set.</p>".to_owned()
    } else {
        format!(
            "<p>On an older set (the first {} by id): {}</p>",
            behind.len(),
            behind.join(", ")
        )
    };
    format!(
        r#"<dl class="facts" id="trust-set"><dt>Sequence</dt><dd>{} — from {source}</dd><dt>Threshold</dt><dd>{} of {} key(s) must sign a release</dd></dl>
<h2>Keys</h2><ul class="keys">{key_list}</ul>
<h2>Devices</h2><p id="trust-devices"><strong>{}</strong> of {} device(s) use this set.</p>{}{behind}
<p>A device counts on the set its last trust report named (taken or refused); one that never sent a report is on the set it was provisioned with (sequence 0). Rotations are signed offline (<code>ota key rotate</code>) and published with <code>ota trust publish</code>.</p>"#,
        esc(&field(set, "sequence")),
        esc(&field(set, "threshold")),
        keys.len(),
        esc(&field(d, "on_this_set")),
        esc(&field(d, "total")),
        table(
            "Devices by trust-set sequence",
            &["Sequence", "Devices"],
            &by_sequence
        ),
    )
}

/// `GET /flags`.
pub(crate) async fn flags(State(console): State<Console>, SignedIn(session): SignedIn) -> Response {
    let all = match console.read(&session, "/flags").await {
        Ok(all) => all,
        Err(refused) => return refused,
    };
    let may_kill = may(&session, &Method::POST, "/api/v1/flags/{name}/kill");
    let may_revive = may(&session, &Method::POST, "/api/v1/flags/{name}/revive");
    let rows: Vec<Vec<String>> = all
        .get("flags")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|detail| {
                    let flag = detail.get("flag").cloned().unwrap_or(Value::Null);
                    let name = field(&flag, "name");
                    let killed = flag.get("killed") == Some(&Value::Bool(true));
                    let (op, label, allowed) = if killed {
                        ("revive", "Revive", may_revive)
                    } else {
                        ("kill", "Kill", may_kill)
                    };
                    let button = if allowed {
                        format!(
                            r#"<form method="post" action="/flags/{}/{op}" data-confirm="{label} flag {}?">{}<button type="submit" id="{op}-{}" class="{}">{label}</button></form>"#,
                            url(&name),
                            esc(&name),
                            layout::csrf_field(&session),
                            esc(&name),
                            if killed { "" } else { "danger" },
                        )
                    } else {
                        String::new()
                    };
                    vec![
                        esc(&name).to_string(),
                        esc(&field(&flag, "default")).to_string(),
                        if killed { "killed".into() } else { String::new() },
                        flag_rules(flag.get("rules").unwrap_or(&Value::Null)),
                        flag_counts(detail.get("counts").unwrap_or(&Value::Null)),
                        button,
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let changes = flag_changes(all.get("changes").unwrap_or(&Value::Null));
    let body = format!(
        r#"{}{changes}<p><a href="/audit?kind=flag-killed">Kill-switch audit</a> · <a href="/audit">All events</a></p>"#,
        table(
            "Flags",
            &[
                "Flag",
                "Default",
                "Kill switch",
                "Rules",
                "Devices on/off",
                "Action"
            ],
            &rows
        )
    );
    layout::page(&session, "Flags", "/flags", &body)
}

/// The flags' audit trail, newest first: who changed which flag when, and its definition
/// before and after (the newest changes across flags, deleted ones included, that
/// `GET /api/v1/flags` lists oldest first).
fn flag_changes(changes: &Value) -> String {
    let at = |c: &Value| c.get("at").and_then(Value::as_i64).unwrap_or(0);
    let rows: Vec<Vec<String>> = changes
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .rev()
        .map(|c| {
            let rules = |side: &str| {
                c.get(side)
                    .filter(|v| v.is_object())
                    .map_or_else(|| "-".to_owned(), flag_state)
            };
            vec![
                esc(&field(c, "flag")).to_string(),
                time(at(c)),
                esc(&field(c, "by")).to_string(),
                esc(&field(c, "kind")).to_string(),
                rules("old"),
                rules("new"),
            ]
        })
        .collect();
    format!(
        "<h2>Audit trail</h2>{}",
        table(
            "Flag changes, newest first",
            &["Flag", "When", "By", "What", "Before", "After"],
            &rows
        )
    )
}

/// A flag definition in one cell: default, kill switch, rules.
fn flag_state(view: &Value) -> String {
    let killed = if view.get("killed") == Some(&Value::Bool(true)) {
        "killed; "
    } else {
        ""
    };
    format!(
        "{killed}default {}; {}",
        esc(&field(view, "default")),
        flag_rules(view.get("rules").unwrap_or(&Value::Null))
    )
}

/// A flag's rules in order (the first whose filter matches a device decides):
/// `1. on for 50% of <code>hw=gw-a</code>`; `none (the default for every device)`.
fn flag_rules(rules: &Value) -> String {
    let list = rules.as_array().map(Vec::as_slice).unwrap_or_default();
    if list.is_empty() {
        return "none (the default for every device)".to_owned();
    }
    let items: String = list
        .iter()
        .map(|rule| {
            let on = if rule.get("on") == Some(&Value::Bool(true)) {
                "on"
            } else {
                "off"
            };
            let filter = match field(rule, "filter") {
                f if f.trim().is_empty() => "all".to_owned(),
                f => f,
            };
            format!(
                "<li>{on} for {}% of <code>{}</code></li>",
                esc(&field(rule, "percent")),
                esc(&filter)
            )
        })
        .collect();
    format!(r#"<ol class="rules">{items}</ol>"#)
}

/// How many devices have a flag on and off.
fn flag_counts(counts: &Value) -> String {
    format!(
        "{} on, {} off (of {})",
        esc(&field(counts, "on")),
        esc(&field(counts, "off")),
        esc(&field(counts, "devices"))
    )
}

/// Query of `GET /audit`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct AuditQuery {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    device: String,
    #[serde(default)]
    rollout: String,
    #[serde(default)]
    actor: String,
    /// Only events below this id (the "Older events" link).
    #[serde(default)]
    before: Option<i64>,
}

/// Events per audit page.
const AUDIT_PAGE: usize = 200;

/// `GET /audit`: the newest events (a page of [`AUDIT_PAGE`]) of a kind, device, rollout and
/// actor, below `before` when given, with a link to the page of older ones.
pub(crate) async fn audit(
    State(console): State<Console>,
    SignedIn(session): SignedIn,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Response {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let mut path = format!("/events?limit={AUDIT_PAGE}");
    let mut filters = String::new();
    for (key, value) in [
        ("kind", &q.kind),
        ("device", &q.device),
        ("rollout", &q.rollout),
        ("actor", &q.actor),
    ] {
        if !value.trim().is_empty() {
            filters.push_str(&format!("&{key}={}", url(value.trim())));
        }
    }
    path.push_str(&filters);
    if let Some(before) = q.before {
        path.push_str(&format!("&before={before}"));
    }
    let answer = console.api(&session, Method::GET, &path, None).await;
    let (rows, error, older) = if answer.status.is_success() {
        let events = event_rows(&answer.body);
        let oldest = answer
            .body
            .get("events")
            .and_then(Value::as_array)
            .and_then(|list| list.first())
            .and_then(|e| e.get("id"))
            .and_then(Value::as_i64);
        let older = match oldest {
            Some(id) if events.len() == AUDIT_PAGE => format!(
                r#"<p><a id="older-events" href="/audit?before={id}{}">Older events</a></p>"#,
                esc(&filters)
            ),
            _ => String::new(),
        };
        let rows: Vec<Vec<String>> = events.into_iter().map(|(_, row)| row).collect();
        (rows, String::new(), older)
    } else {
        (
            Vec::new(),
            format!(
                r#"<p class="error" role="alert">{}</p>"#,
                esc(&answer.error_text())
            ),
            String::new(),
        )
    };
    let body = format!(
        r#"<form method="get" action="/audit" class="filter" role="search">
<label for="kind">Kind</label> <input id="kind" name="kind" value="{}" placeholder="access-denied">
<label for="device">Device</label> <input id="device" name="device" value="{}">
<label for="rollout">Rollout</label> <input id="rollout" name="rollout" inputmode="numeric" value="{}">
<label for="actor">Actor</label> <input id="actor" name="actor" value="{}">
<button type="submit">Apply</button></form>{error}{}{older}"#,
        esc(&q.kind),
        esc(&q.device),
        esc(&q.rollout),
        esc(&q.actor),
        table("Events, newest first", EVENT_HEAD, &rows),
    );
    layout::page(&session, "Audit log", "/audit", &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flag_rules_read_in_order_and_an_empty_filter_is_all() {
        let html = flag_rules(&json!([
            { "filter": "hw=gw-a", "on": true, "percent": 50.0 },
            { "filter": "", "on": false, "percent": 100.0 },
        ]));
        assert_eq!(
            html,
            r#"<ol class="rules"><li>on for 50.0% of <code>hw=gw-a</code></li><li>off for 100.0% of <code>all</code></li></ol>"#
        );
        assert_eq!(
            flag_rules(&json!([])),
            "none (the default for every device)"
        );
        assert_eq!(
            flag_counts(&json!({ "devices": 5, "on": 2, "off": 3 })),
            "2 on, 3 off (of 5)"
        );
    }

    #[test]
    fn an_expired_release_is_marked() {
        assert_eq!(expiry(None, 10), "never");
        assert!(expiry(Some(5), 10).starts_with("<strong>expired</strong>"));
        assert!(!expiry(Some(50), 10).contains("expired"));
    }
}
