//! `GET /`: the fleet at a glance — devices by running version, hardware class, last update
//! state, online/offline, drifted, deferred — and the recent rollouts; kept live by
//! `/live/overview`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;

use super::super::html::{esc, url};
use super::super::layout;
use super::super::session::Session;
use super::super::{Console, SignedIn};
use super::{field, table};

/// Counts over the fleet.
#[derive(Debug, Default)]
struct Tally {
    total: u64,
    online: u64,
    drifted: u64,
    deferred: u64,
    versions: BTreeMap<String, u64>,
    classes: BTreeMap<String, u64>,
    states: BTreeMap<String, u64>,
}

fn count_rows(counts: &BTreeMap<String, u64>) -> Vec<Vec<String>> {
    let mut rows: Vec<(&String, &u64)> = counts.iter().collect();
    rows.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    rows.into_iter()
        .map(|(k, v)| vec![esc(k).to_string(), v.to_string()])
        .collect()
}

/// The live part of the overview, as HTML.
pub(crate) async fn fragment(console: &Console, session: &Session) -> Result<String, Response> {
    let devices = console
        .state()
        .db()
        .list_devices()
        .await
        .map_err(|e| layout::error_page(session, &crate::http::ApiError::from(e).into()))?;
    let mut t = Tally::default();
    for d in &devices {
        t.total += 1;
        t.online += u64::from(d.online);
        t.drifted += u64::from(d.drifted);
        let state = d.last_result.clone().unwrap_or_else(|| "none yet".into());
        t.deferred += u64::from(state.starts_with("deferred"));
        *t.states.entry(state).or_default() += 1;
        *t.versions
            .entry(
                d.running_version
                    .clone()
                    .unwrap_or_else(|| "unknown".into()),
            )
            .or_default() += 1;
        *t.classes
            .entry(d.hardware_class.clone().unwrap_or_else(|| "unknown".into()))
            .or_default() += 1;
    }
    let rollouts = console.read(session, "/rollouts").await?;
    let mut recent: Vec<Vec<String>> = rollouts
        .get("rollouts")
        .and_then(|r| r.as_array())
        .map(|all| {
            all.iter()
                .rev()
                .take(5)
                .map(|r| {
                    let id = field(r, "id");
                    vec![
                        format!(r#"<a href="/rollouts/{}">#{}</a>"#, url(&id), esc(&id)),
                        esc(&field(r, "version")).to_string(),
                        format!(
                            r#"<span class="status">{}</span>"#,
                            esc(&field(r, "status"))
                        ),
                        esc(&field(r, "targets")).to_string(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    recent.truncate(5);
    let summary = format!(
        r#"<ul class="cards" aria-label="Fleet totals">
<li><span class="n">{}</span> devices</li>
<li><span class="n">{}</span> online</li>
<li><span class="n">{}</span> offline</li>
<li><a href="/devices?filter=drifted"><span class="n">{}</span> drifted</a></li>
<li><span class="n">{}</span> deferred</li></ul>"#,
        t.total,
        t.online,
        t.total - t.online,
        t.drifted,
        t.deferred
    );
    Ok(format!(
        r#"{summary}<div class="grid">{}{}{}{}</div>"#,
        table(
            "Recent rollouts",
            &["Rollout", "Version", "Status", "Targets"],
            &recent
        ),
        table(
            "By running version",
            &["Version", "Devices"],
            &count_rows(&t.versions)
        ),
        table(
            "By hardware class",
            &["Class", "Devices"],
            &count_rows(&t.classes)
        ),
        table(
            "By last update state",
            &["State", "Devices"],
            &count_rows(&t.states)
        ),
    ))
}

/// `GET /`.
pub(crate) async fn page(State(console): State<Console>, SignedIn(session): SignedIn) -> Response {
    match fragment(&console, &session).await {
        Ok(live) => layout::page(
            &session,
            "Fleet overview",
            "/",
            &format!(r#"<div data-live="/live/overview" aria-live="polite">{live}</div>"#),
        ),
        Err(refused) => refused,
    }
}
