//! `GET /devices`: the fleet, filtered with the API's filter language (a bad filter's error is
//! shown), sorted by a column and paged on the server; `GET /devices/{id}`: one device.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::Value;

use super::super::html::{esc, json_text, time, url};
use super::super::layout;
use super::super::session::Session;
use super::super::{ApiAnswer, Console, SignedIn};
use super::{device_facts, field, may, rollout_link, table};
use crate::db::{DevicePage, DevicePageQuery, DeviceSort, SortDirection};
use ota_core::filter::Filter;

/// Devices per page.
pub(crate) const PAGE_SIZE: usize = 50;

/// The sortable columns: (column, query value, heading).
const COLUMNS: [(DeviceSort, &str, &str); 5] = [
    (DeviceSort::Id, "id", "Device"),
    (DeviceSort::Class, "class", "Hardware class"),
    (DeviceSort::Version, "version", "Running version"),
    (DeviceSort::State, "state", "Last update"),
    (DeviceSort::LastSeen, "last-seen", "Last seen"),
];

/// Query of `GET /devices`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default)]
    filter: String,
    #[serde(default)]
    sort: DeviceSort,
    #[serde(default)]
    dir: SortDirection,
    #[serde(default)]
    page: Option<usize>,
}

fn list_url(q: &ListQuery, sort: DeviceSort, dir: SortDirection, page: usize) -> String {
    let name = |s: DeviceSort| {
        COLUMNS
            .iter()
            .find(|(c, _, _)| *c == s)
            .map_or("id", |(_, n, _)| *n)
    };
    format!(
        "/devices?filter={}&amp;sort={}&amp;dir={}&amp;page={page}",
        url(&q.filter),
        name(sort),
        if dir == SortDirection::Asc {
            "asc"
        } else {
            "desc"
        },
    )
}

/// `GET /devices`.
pub(crate) async fn list(
    State(console): State<Console>,
    SignedIn(session): SignedIn,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let started = crate::clock::monotonic_now();
    let text = q.filter.trim();
    let (filter, filter_error) = if text.is_empty() {
        (None, None)
    } else {
        match Filter::parse(text) {
            Ok(f) => (Some(f), None),
            Err(e) => (None, Some(e)),
        }
    };
    let query = DevicePageQuery {
        filter: filter.as_ref(),
        sort: q.sort,
        dir: q.dir,
        page: q.page.unwrap_or(1),
        page_size: PAGE_SIZE,
    };
    let shown = if filter_error.is_some() {
        // A filter that does not parse shows its error over an empty list.
        DevicePage {
            matched: 0,
            devices: Vec::new(),
            page: 1,
            pages: 1,
        }
    } else {
        match console.state().db().device_page(query).await {
            Ok(page) => page,
            Err(e) => {
                return layout::error_page(
                    &session,
                    &ApiAnswer::from(crate::http::ApiError::from(e)),
                );
            }
        }
    };
    let mut head = String::from("<tr>");
    for (column, _, label) in COLUMNS {
        let (aria, next) = if column == q.sort {
            match q.dir {
                SortDirection::Asc => ("ascending", SortDirection::Desc),
                SortDirection::Desc => ("descending", SortDirection::Asc),
            }
        } else {
            ("none", SortDirection::Asc)
        };
        head.push_str(&format!(
            r#"<th scope="col" aria-sort="{aria}"><a href="{}">{label}</a></th>"#,
            list_url(&q, column, next, 1)
        ));
    }
    head.push_str(r#"<th scope="col">Online</th><th scope="col">Drifted</th></tr>"#);
    let mut rows = String::new();
    for d in &shown.devices {
        rows.push_str(&format!(
            r#"<tr><td><a href="/devices/{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            url(&d.id),
            esc(&d.id),
            esc(d.hardware_class.as_deref().unwrap_or("")),
            esc(d.running_version.as_deref().unwrap_or("")),
            esc(d.last_result.as_deref().unwrap_or("")),
            esc(&time(d.last_seen)),
            if d.online { "online" } else { "offline" },
            if d.drifted { "drifted" } else { "" },
        ));
    }
    let error = filter_error.map_or_else(String::new, |e| {
        format!(
            r#"<p class="error" role="alert" id="filter-error">Filter error: {}</p>{}"#,
            esc(&e.to_string()),
            e.column().map_or_else(String::new, |c| caret(text, c))
        )
    });
    let described = if error.is_empty() {
        ""
    } else {
        r#" aria-describedby="filter-error" aria-invalid="true""#
    };
    let mut pager = format!(
        r#"<nav aria-label="Pages" class="pager"><span>{} devices · page {} of {}</span>"#,
        shown.matched, shown.page, shown.pages
    );
    if shown.page > 1 {
        pager.push_str(&format!(
            r#" <a href="{}" rel="prev">Previous</a>"#,
            list_url(&q, q.sort, q.dir, shown.page - 1)
        ));
    }
    if shown.page < shown.pages {
        pager.push_str(&format!(
            r#" <a href="{}" rel="next">Next</a>"#,
            list_url(&q, q.sort, q.dir, shown.page + 1)
        ));
    }
    pager.push_str("</nav>");
    let body = format!(
        r#"<form method="get" action="/devices" class="filter" role="search">
<label for="filter">Filter</label> <input id="filter" name="filter" value="{}" placeholder="hw=rpi4 and version!=1.2.0"{described}>
<button type="submit">Apply</button></form>{error}{pager}
<table id="devices"><caption>Devices</caption><thead>{head}</thead><tbody>{rows}</tbody></table>
<p class="timing">Listed in {} ms on the server.</p>"#,
        esc(&q.filter),
        started.elapsed().as_millis()
    );
    layout::page(&session, "Devices", "/devices", &body)
}

/// The filter with a caret under its 1-based character `column` (past the end: after it).
fn caret(filter: &str, column: usize) -> String {
    let before: String = filter
        .chars()
        .take(column.saturating_sub(1))
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    format!(
        r#"<pre class="caret" aria-hidden="true">{}
{}^</pre>"#,
        esc(filter),
        before
    )
}

/// `GET /devices/{id}`: releases, power, inventory, labels (editable), flags and why,
/// executions and events.
pub(crate) async fn detail(
    State(console): State<Console>,
    SignedIn(session): SignedIn,
    Path(id): Path<String>,
) -> Response {
    let device = match console
        .read(&session, &format!("/devices/{}", url(&id)))
        .await
    {
        Ok(d) => d,
        Err(refused) => return refused,
    };
    let events = match console
        .read(
            &session,
            &format!("/events?device={}&limit={HISTORY_EVENTS}", url(&id)),
        )
        .await
    {
        Ok(e) => e,
        Err(refused) => return refused,
    };
    let flags = flags_of(&console, &session, &id).await;
    let labels_row = |key: &str| {
        device
            .get(key)
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{}={}", esc(k), esc(&json_text(v))))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let server_labels_text = device
        .get("server_labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", json_text(v)))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    let facts = [
        (
            "Hardware class",
            esc(&field(&device, "hardware_class")).to_string(),
        ),
        (
            "Running version",
            esc(&field(&device, "running_version")).to_string(),
        ),
        (
            "Running release",
            format!("<code>{}</code>", esc(&field(&device, "running_digest"))),
        ),
        (
            "Known-good release",
            format!("<code>{}</code>", esc(&field(&device, "known_good_digest"))),
        ),
        (
            "Last committed release",
            format!(
                "<code>{}</code>",
                esc(&field(&device, "last_committed_digest"))
            ),
        ),
        (
            "Last update",
            esc(&field(&device, "last_result")).to_string(),
        ),
        (
            "Online",
            if device.get("online") == Some(&Value::Bool(true)) {
                "online".into()
            } else {
                "offline".into()
            },
        ),
        (
            "Drifted",
            if device.get("drifted") == Some(&Value::Bool(true)) {
                "yes".into()
            } else {
                "no".into()
            },
        ),
        (
            "Last seen",
            device
                .get("last_seen")
                .and_then(Value::as_i64)
                .map(time)
                .unwrap_or_default(),
        ),
        ("Reported labels", labels_row("labels")),
        ("Server labels", labels_row("server_labels")),
    ];
    let mut dl = String::from("<dl class=\"facts\">");
    for (k, v) in facts {
        dl.push_str(&format!("<dt>{k}</dt><dd>{v}</dd>"));
    }
    dl.push_str("</dl>");
    let edit = if may(&session, &Method::PUT, "/api/v1/devices/{id}/labels") {
        format!(
            r#"<form method="post" action="/devices/{}/labels" class="labels">{}<label for="labels">Server labels (one key=value a line)</label>
<textarea id="labels" name="labels" rows="4">{}</textarea><button type="submit">Save labels</button></form>"#,
            url(&id),
            layout::csrf_field(&session),
            esc(&server_labels_text)
        )
    } else {
        String::new()
    };
    let newest_events: Vec<Vec<String>> = event_rows(&events)
        .into_iter()
        .take(SHOWN_EVENTS)
        .map(|(_, row)| row)
        .collect();
    let body = format!(
        r#"{dl}{edit}
<h2>Last outcome</h2>{}
<h2>Power</h2>{}
<h2>Inventory</h2>{}
<h2>Flags</h2>{flags}
<h2>Execution history</h2>{}
<h2>Events</h2>{}<p><a href="/audit?device={}">All events of this device</a></p>"#,
        device_facts::outcome(device.get("last_outcome").unwrap_or(&Value::Null)),
        device_facts::power(device.get("power").unwrap_or(&Value::Null)),
        device_facts::inventory(device.get("inventory").unwrap_or(&Value::Null)),
        device_facts::executions(&events),
        table("Newest events", EVENT_HEAD, &newest_events),
        url(&id),
    );
    layout::page(&session, &format!("Device {id}"), "/devices", &body)
}

/// Events read for the execution history (the newest of the device's).
const HISTORY_EVENTS: u32 = 500;

/// Events listed under "Events" on a device's page (the newest).
const SHOWN_EVENTS: usize = 50;

/// The columns of an event table.
pub(crate) const EVENT_HEAD: &[&str] = &[
    "Id", "When", "Actor", "Kind", "Rollout", "Device", "Details",
];

/// Event rows (newest first) with their kind.
pub(crate) fn event_rows(events: &Value) -> Vec<(String, Vec<String>)> {
    let Some(list) = events.get("events").and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .rev()
        .map(|e| {
            let kind = field(e, "kind");
            let rollout = field(e, "rollout_id");
            let device = field(e, "device_id");
            let row = vec![
                esc(&field(e, "id")).to_string(),
                e.get("at")
                    .and_then(Value::as_i64)
                    .map(time)
                    .unwrap_or_default(),
                esc(&field(e, "actor")).to_string(),
                esc(&kind).to_string(),
                rollout_link(&rollout),
                if device.is_empty() {
                    String::new()
                } else {
                    format!(
                        r#"<a href="/devices/{}">{}</a>"#,
                        url(&device),
                        esc(&device)
                    )
                },
                format!("<code>{}</code>", esc(&field(e, "details"))),
            ];
            (kind, row)
        })
        .collect()
}

/// The device's flags and why each has its value (the API's explanation).
async fn flags_of(console: &Console, session: &Session, id: &str) -> String {
    let list = console.api(session, Method::GET, "/flags", None).await;
    let names: Vec<String> = list
        .body
        .get("flags")
        .and_then(Value::as_array)
        .map(|flags| {
            flags
                .iter()
                .filter_map(|f| {
                    f.get("flag")
                        .and_then(|f| f.get("name"))
                        .and_then(Value::as_str)
                })
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let mut rows = Vec::new();
    for name in names {
        let answer = console
            .api(
                session,
                Method::GET,
                &format!("/flags/{}?device={}", url(&name), url(id)),
                None,
            )
            .await;
        if answer.status != StatusCode::OK {
            continue;
        }
        let explain = answer.body.get("device").cloned().unwrap_or(Value::Null);
        let value = match explain.get("on").and_then(Value::as_bool) {
            Some(true) => "on",
            Some(false) => "off",
            None => "",
        };
        rows.push(vec![
            format!(r#"<a href="/flags">{}</a>"#, esc(&name)),
            value.to_owned(),
            esc(&field(&explain, "cause")).to_string(),
        ]);
    }
    table("Flags of this device", &["Flag", "Value", "Why"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue16_the_caret_stands_under_the_column() {
        let html = caret("hw=a and colour=blue", 10);
        assert!(
            html.ends_with("hw=a and colour=blue\n         ^</pre>"),
            "{html}"
        );
        assert!(caret("x<y", 2).contains("x&lt;y\n ^"));
        assert!(caret("hw=a and", 9).ends_with("        ^</pre>"));
    }
}
