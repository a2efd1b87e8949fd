//! `GET /devices`: the fleet, filtered with the API's filter language (a bad filter's error is
//! shown), sorted by a column and paged on the server; `GET /devices/{id}`: one device.

use std::cmp::Ordering;

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
use super::{field, json_block, may, table};
use crate::db::DeviceRecord;
use ota_core::filter::Filter;

/// Devices per page.
pub(crate) const PAGE_SIZE: usize = 50;

/// A sortable column of the devices list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum SortBy {
    /// Device id.
    #[default]
    Id,
    /// Running version.
    Version,
    /// Hardware class.
    Class,
    /// Last update result.
    State,
    /// Last time heard of.
    LastSeen,
}

impl SortBy {
    const ALL: [(SortBy, &'static str, &'static str); 5] = [
        (SortBy::Id, "id", "Device"),
        (SortBy::Class, "class", "Hardware class"),
        (SortBy::Version, "version", "Running version"),
        (SortBy::State, "state", "Last update"),
        (SortBy::LastSeen, "last-seen", "Last seen"),
    ];

    fn compare(self, a: &DeviceRecord, b: &DeviceRecord) -> Ordering {
        let by = match self {
            SortBy::Id => Ordering::Equal,
            SortBy::Version => a.running_version.cmp(&b.running_version),
            SortBy::Class => a.hardware_class.cmp(&b.hardware_class),
            SortBy::State => a.last_result.cmp(&b.last_result),
            SortBy::LastSeen => a.last_seen.cmp(&b.last_seen),
        };
        by.then_with(|| a.id.cmp(&b.id))
    }
}

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Direction {
    /// Ascending.
    #[default]
    Asc,
    /// Descending.
    Desc,
}

/// Query of `GET /devices`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default)]
    filter: String,
    #[serde(default)]
    sort: SortBy,
    #[serde(default)]
    dir: Direction,
    #[serde(default)]
    page: Option<usize>,
}

/// One page of the devices list, filtered and sorted.
#[derive(Debug)]
pub(crate) struct DevicePage {
    /// Devices matching the filter.
    pub(crate) matched: usize,
    /// The page's devices.
    pub(crate) devices: Vec<DeviceRecord>,
    /// The page shown, from 1.
    pub(crate) page: usize,
    /// Pages in all (at least 1).
    pub(crate) pages: usize,
}

/// Filters, sorts and cuts `devices` to page `page` (from 1; clamped to the last page).
pub(crate) fn paginate(
    mut devices: Vec<DeviceRecord>,
    filter: Option<&Filter>,
    sort: SortBy,
    dir: Direction,
    page: usize,
) -> DevicePage {
    devices.retain(|d| filter.is_none_or(|f| f.matches(d)));
    let matched = devices.len();
    let pages = matched.div_ceil(PAGE_SIZE).max(1);
    let page = page.clamp(1, pages);
    let start = (page - 1) * PAGE_SIZE;
    let end = (start + PAGE_SIZE).min(matched);
    // Only the page needs its final order: select it, then sort it.
    let cmp = |a: &DeviceRecord, b: &DeviceRecord| match dir {
        Direction::Asc => sort.compare(a, b),
        Direction::Desc => sort.compare(b, a),
    };
    if start < matched {
        if start > 0 {
            devices.select_nth_unstable_by(start, cmp);
            devices.drain(..start);
        }
        let len = end - start;
        if len < devices.len() {
            devices.select_nth_unstable_by(len - 1, cmp);
            devices.truncate(len);
        }
        devices.sort_by(cmp);
    } else {
        devices.clear();
    }
    DevicePage {
        matched,
        devices,
        page,
        pages,
    }
}

fn list_url(q: &ListQuery, sort: SortBy, dir: Direction, page: usize) -> String {
    let name = |s: SortBy| {
        SortBy::ALL
            .iter()
            .find(|(c, _, _)| *c == s)
            .map_or("id", |(_, n, _)| *n)
    };
    format!(
        "/devices?filter={}&amp;sort={}&amp;dir={}&amp;page={page}",
        url(&q.filter),
        name(sort),
        if dir == Direction::Asc { "asc" } else { "desc" },
    )
}

/// `GET /devices`.
pub(crate) async fn list(
    State(console): State<Console>,
    SignedIn(session): SignedIn,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    #[allow(clippy::disallowed_methods)] // Left to the devices-page rewrite (issue 13 clock ban).
    let started = std::time::Instant::now();
    let text = q.filter.trim();
    let (filter, filter_error) = if text.is_empty() {
        (None, None)
    } else {
        match Filter::parse(text) {
            Ok(f) => (Some(f), None),
            Err(e) => (None, Some(e.to_string())),
        }
    };
    let all = match console.state().db().list_devices().await {
        Ok(all) => all,
        Err(e) => {
            return layout::error_page(&session, &ApiAnswer::from(crate::http::ApiError::from(e)));
        }
    };
    let shown = if filter_error.is_some() {
        paginate(Vec::new(), None, q.sort, q.dir, 1)
    } else {
        paginate(all, filter.as_ref(), q.sort, q.dir, q.page.unwrap_or(1))
    };
    let mut head = String::from("<tr>");
    for (column, _, label) in SortBy::ALL {
        let (aria, next) = if column == q.sort {
            match q.dir {
                Direction::Asc => ("ascending", Direction::Desc),
                Direction::Desc => ("descending", Direction::Asc),
            }
        } else {
            ("none", Direction::Asc)
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
            r#"<p class="error" role="alert" id="filter-error">Filter error: {}</p>"#,
            esc(&e)
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
        .read(&session, &format!("/events?device={}&limit=50", url(&id)))
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
    let event_rows = event_rows(&events);
    let executions: Vec<Vec<String>> = event_rows
        .iter()
        .filter(|(kind, _)| kind.starts_with("device-") || kind.contains("outcome"))
        .map(|(_, row)| row.clone())
        .collect();
    let all_events: Vec<Vec<String>> = event_rows.into_iter().map(|(_, row)| row).collect();
    let body = format!(
        r#"{dl}{edit}
<h2>Last outcome</h2>{}
<h2>Power</h2>{}
<h2>Inventory</h2>{}
<h2>Flags</h2>{flags}
<h2>Execution history</h2>{}
<h2>Events</h2>{}<p><a href="/audit?device={}">All events of this device</a></p>"#,
        json_block(device.get("last_outcome").unwrap_or(&Value::Null)),
        json_block(device.get("power").unwrap_or(&Value::Null)),
        json_block(device.get("inventory").unwrap_or(&Value::Null)),
        table("Update reports", EVENT_HEAD, &executions),
        table("Newest events", EVENT_HEAD, &all_events),
        url(&id),
    );
    layout::page(&session, &format!("Device {id}"), "/devices", &body)
}

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
                if rollout.is_empty() {
                    String::new()
                } else {
                    format!(
                        r#"<a href="/rollouts/{}">#{}</a>"#,
                        url(&rollout),
                        esc(&rollout)
                    )
                },
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
        rows.push(vec![
            format!(r#"<a href="/flags">{}</a>"#, esc(&name)),
            esc(&field(&explain, "value")).to_string(),
            format!("<code>{}</code>", esc(&json_text(&explain))),
        ]);
    }
    table("Flags of this device", &["Flag", "Value", "Why"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str, version: &str) -> DeviceRecord {
        DeviceRecord {
            id: id.into(),
            hardware_class: None,
            labels: Default::default(),
            server_labels: Default::default(),
            running_version: Some(version.into()),
            running_digest: None,
            known_good_digest: None,
            last_committed_digest: None,
            last_result: None,
            last_outcome: None,
            power: None,
            inventory: None,
            first_seen: 0,
            last_seen: 0,
            online: false,
            drifted: false,
            reported_generation: 0,
            last_transfer: None,
        }
    }

    #[test]
    fn pages_are_sorted_cut_and_clamped() {
        let all: Vec<DeviceRecord> = (0..120)
            .map(|i| {
                device(
                    &format!("dev-{i:03}"),
                    if i % 2 == 0 { "2.0" } else { "1.0" },
                )
            })
            .collect();
        let first = paginate(all.clone(), None, SortBy::Id, Direction::Asc, 1);
        assert_eq!(
            (first.matched, first.pages, first.devices.len()),
            (120, 3, 50)
        );
        assert_eq!(first.devices[0].id, "dev-000");
        assert_eq!(first.devices[49].id, "dev-049");
        let last = paginate(all.clone(), None, SortBy::Id, Direction::Desc, 9);
        assert_eq!(last.page, 3);
        assert_eq!(last.devices.len(), 20);
        assert_eq!(last.devices[19].id, "dev-000");
        let by_version = paginate(all.clone(), None, SortBy::Version, Direction::Asc, 2);
        assert_eq!(by_version.devices[0].id, "dev-101");
        assert_eq!(
            by_version.devices[10].running_version.as_deref(),
            Some("2.0")
        );
        let filter = Filter::parse("version=1.0").unwrap();
        let filtered = paginate(all, Some(&filter), SortBy::Id, Direction::Asc, 1);
        assert_eq!(filtered.matched, 60);
    }

    #[test]
    fn an_empty_fleet_is_one_empty_page() {
        let p = paginate(Vec::new(), None, SortBy::Id, Direction::Asc, 4);
        assert_eq!((p.matched, p.page, p.pages, p.devices.len()), (0, 1, 1, 0));
    }
}
