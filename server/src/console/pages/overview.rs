//! `GET /`: the fleet at a glance — devices by running version, hardware class, last update
//! state, online/offline, drifted, deferred — and the recent rollouts; kept live by
//! `/live/overview`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;

use super::super::html::esc;
use super::super::layout;
use super::super::session::Session;
use super::super::{Console, SignedIn};
use super::{field, rollout_link, table};

/// The rows of a count table, largest first; `missing` names the devices without a value.
fn count_rows(counts: &BTreeMap<Option<String>, u64>, missing: &str) -> Vec<Vec<String>> {
    let mut rows: Vec<(&str, u64)> = counts
        .iter()
        .map(|(k, v)| (k.as_deref().unwrap_or(missing), *v))
        .collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    rows.into_iter()
        .map(|(k, v)| vec![esc(k).to_string(), v.to_string()])
        .collect()
}

/// The live part of the overview, as HTML.
pub(crate) async fn fragment(console: &Console, session: &Session) -> Result<String, Response> {
    let t = console
        .state()
        .db()
        .device_tally()
        .await
        .map_err(|e| layout::error_page(session, &crate::http::ApiError::from(e).into()))?;
    let rollouts = console.read(session, "/rollouts").await?;
    let recent: Vec<Vec<String>> = rollouts
        .get("rollouts")
        .and_then(|r| r.as_array())
        .map(|all| {
            // The API lists them newest first.
            all.iter()
                .take(5)
                .map(|r| {
                    let id = field(r, "id");
                    vec![
                        rollout_link(&id),
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
    let summary = format!(
        r#"<ul class="cards" aria-label="Fleet totals">
<li><span class="n">{}</span> devices</li>
<li><span class="n">{}</span> online</li>
<li><a href="/devices?filter=not%20online"><span class="n">{}</span> offline</a></li>
<li><a href="/devices?filter=drifted"><span class="n">{}</span> drifted</a></li>
<li><a href="/devices?filter=result%3Ddeferred*"><span class="n">{}</span> deferred</a></li></ul>"#,
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
            &count_rows(&t.by_version, "unknown")
        ),
        table(
            "By hardware class",
            &["Class", "Devices"],
            &count_rows(&t.by_class, "unknown")
        ),
        table(
            "By last update state",
            &["State", "Devices"],
            &count_rows(&t.by_result, "none yet")
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
