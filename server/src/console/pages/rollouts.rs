//! `GET /rollouts` and `GET /rollouts/{id}`: a rollout's waves, gate and bake countdown,
//! failures by phase, the devices that failed, rolled back or deferred (with causes), and the
//! actions the operator's role allows (with confirmation); kept live by
//! `/live/rollouts/{id}`. `GET /rollouts/{id}/devices`: all its targets, a page at a time.

use axum::extract::{Path, Query, State};
use axum::http::Method;
use axum::response::Response;
use ota_core::fleet::RolloutId;
use ota_core::rollout::{RolloutStatus, WavePhaseKind};
use serde::Deserialize;
use serde_json::{Value, json};

use super::super::html::{esc, json_text, time, url};
use super::super::layout;
use super::super::session::Session;
use super::super::{ApiAnswer, Console, SignedIn, internal_answer};
use super::{device_link, field, may, rollout_facts, rollout_link, table};
use crate::fleet::RolloutView;

/// Whether nothing on the rollout's page changes any more: it completed, is a dry run, or
/// aborted with no device it sent back still pending (until then the recall line moves).
pub(crate) fn finished(rollout: &RolloutView) -> bool {
    match rollout.status {
        RolloutStatus::Completed | RolloutStatus::DryRun => true,
        RolloutStatus::Aborted => rollout
            .recall
            .as_ref()
            .and_then(|r| r.get("pending"))
            .and_then(Value::as_u64)
            .is_none_or(|pending| pending == 0),
        _ => false,
    }
}

/// `GET /rollouts`.
pub(crate) async fn list(State(console): State<Console>, SignedIn(session): SignedIn) -> Response {
    let all = match console.read(&session, "/rollouts").await {
        Ok(all) => all,
        Err(refused) => return refused,
    };
    let rows: Vec<Vec<String>> = all
        .get("rollouts")
        .and_then(Value::as_array)
        .map(|list| {
            // The API lists them newest first.
            list.iter()
                .map(|r| {
                    let id = field(r, "id");
                    vec![
                        rollout_link(&id),
                        esc(&field(r, "version")).to_string(),
                        format!("<code>{}</code>", esc(&field(r, "filter"))),
                        format!(
                            r#"<span class="status">{}</span>"#,
                            esc(&field(r, "status"))
                        ),
                        esc(&field(r, "targets")).to_string(),
                        esc(&field(r, "created_by")).to_string(),
                        r.get("created_at")
                            .and_then(Value::as_i64)
                            .map(time)
                            .unwrap_or_default(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let create = if may(&session, &Method::POST, "/api/v1/rollouts") {
        r#"<p><a class="button" href="/rollouts/new">New rollout</a></p>"#
    } else {
        ""
    };
    let body = format!(
        "{create}{}",
        table(
            "Rollouts, newest first",
            &[
                "Rollout",
                "Version",
                "Filter",
                "Status",
                "Targets",
                "Created by",
                "Created"
            ],
            &rows
        )
    );
    layout::page(&session, "Rollouts", "/rollouts", &body)
}

fn count(counts: &Value, state: &str) -> String {
    counts.get(state).map(json_text).unwrap_or_default()
}

/// The live part of a rollout's page.
pub(crate) fn fragment(session: &Session, rollout: &RolloutView, devices: &Troubled) -> String {
    let id = rollout.id;
    let phase = rollout.phase.map_or("", WavePhaseKind::name);
    let bake = rollout
        .bake_until
        .filter(|_| rollout.phase == Some(WavePhaseKind::Baking))
        .map(|until| {
            format!(
                r#"<p>Baking: the gate opens in <span class="countdown" data-until="{until}">…</span>.</p>"#
            )
        })
        .unwrap_or_default();
    let wave = rollout
        .current_wave
        .map(|w| format!("wave {} of {}", w + 1, rollout.waves.len()))
        .unwrap_or_default();
    let totals = &rollout.totals;
    let failed = totals.get("failed").cloned().unwrap_or(Value::Null);
    let mut totals_rows: Vec<Vec<String>> = ota_core::rollout::STATE_NAMES
        .iter()
        .map(|s| vec![esc(s).to_string(), esc(&count(totals, s)).to_string()])
        .filter(|row| row[1] != "0")
        .collect();
    for p in ota_core::rollout::FAILURE_PHASES.map(|p| p.name()) {
        let n = count(&failed, p);
        if n != "0" {
            totals_rows.push(vec![format!("failed ({})", esc(p)), esc(&n).to_string()]);
        }
    }
    let waves: Vec<Vec<String>> = rollout
        .waves
        .iter()
        .map(|w| {
            vec![
                (w.index + 1).to_string(),
                format!("{}%", json_text(&json!(w.share))),
                w.members.to_string(),
                esc(&count(&w.counts, "succeeded")).to_string(),
                esc(&count(&w.counts, "failures")).to_string(),
                w.unsettled.to_string(),
                w.started_at
                    .and_then(|t| i64::try_from(t).ok())
                    .map(time)
                    .unwrap_or_default(),
            ]
        })
        .collect();
    let reason = match &rollout.abort_reason {
        Some(Value::Null) | None => String::new(),
        Some(r) => rollout_facts::abort_reason(r),
    };
    let recall = match &rollout.recall {
        Some(c @ Value::Object(_)) => format!(
            r#"<p class="recall" id="rollout-recall">Sent back by the abort: <strong>{}</strong> · back {} · pending {} · failed {} · superseded {}</p>"#,
            esc(&field(c, "sent")),
            esc(&field(c, "back")),
            esc(&field(c, "pending")),
            esc(&field(c, "failed")),
            esc(&field(c, "superseded")),
        ),
        _ => String::new(),
    };
    let stranded = rollout_facts::left_on_release(&rollout.no_rollback_target);
    format!(
        r#"<p class="state">Status <strong class="status" id="rollout-status">{status}</strong> {phase} {wave}</p>{bake}
{actions}
<div class="grid">{totals}{waves}</div>{reason}{recall}{stranded}
{devices}"#,
        status = rollout.status,
        phase = phase,
        wave = esc(&wave),
        actions = actions(session, id, rollout.status),
        totals = table("Executions by state", &["State", "Devices"], &totals_rows),
        waves = table(
            "Waves",
            &[
                "Wave",
                "Share",
                "Members",
                "Succeeded",
                "Failures",
                "Unsettled",
                "Started"
            ],
            &waves
        ),
        devices = troubled_table(&id.to_string(), devices),
    )
}

/// The troubled devices' table, with how many are not shown and a link to all of them.
fn troubled_table(id: &str, devices: &Troubled) -> String {
    let more = devices.total.saturating_sub(devices.rows.len());
    let note = if more == 0 {
        String::new()
    } else {
        format!(
            r#"<p class="note" id="troubled-more">{} devices in all; the first {} by id are shown. <a href="/rollouts/{}/devices?state=troubled">All of them</a></p>"#,
            devices.total,
            devices.rows.len(),
            url(id)
        )
    };
    format!(
        "{}{note}",
        table(
            "Devices that failed, rolled back, were rejected or deferred",
            TARGET_COLUMNS,
            &devices.rows
        )
    )
}

/// The action buttons the operator's role allows in this status.
fn actions(session: &Session, id: RolloutId, status: RolloutStatus) -> String {
    let offered: &[(&str, &str, &str)] = match status {
        RolloutStatus::Running => &[("pause", "Pause", ""), ("abort", "Abort", "danger")],
        RolloutStatus::Paused => &[("resume", "Resume", ""), ("abort", "Abort", "danger")],
        RolloutStatus::AwaitingApproval => {
            &[("approve", "Approve", ""), ("abort", "Abort", "danger")]
        }
        _ => &[],
    };
    let mut out = String::new();
    for (op, label, class) in offered {
        if !may(
            session,
            &Method::POST,
            &format!("/api/v1/rollouts/{{id}}/{op}"),
        ) {
            continue;
        }
        let reason = if *op == "abort" {
            r#"<label for="reason">Reason</label> <input id="reason" name="reason" placeholder="optional">"#
        } else {
            ""
        };
        out.push_str(&format!(
            r#"<form method="post" action="/rollouts/{id}/{op}" class="action" data-confirm="{label} rollout #{id}?">{csrf}{reason}<button type="submit" class="{class}" id="{op}-button">{label}</button></form>"#,
            id = url(&id.to_string()),
            csrf = layout::csrf_field(session),
        ));
    }
    if out.is_empty() {
        out
    } else {
        format!(r#"<div class="actions">{out}</div>"#)
    }
}

/// At most this many troubled devices are listed on a rollout's page (the count says how
/// many there are in all, and a link leads to all of them).
const TROUBLED_SHOWN: usize = 100;

/// The columns of a table of targets ([`target_rows`]).
const TARGET_COLUMNS: &[&str] = &["Device", "Wave", "State", "Cause", "Detail", "Recall"];

/// A rollout's troubled devices as the rollout sees them: the first [`TROUBLED_SHOWN`] rows
/// (by id) and how many there are.
pub(crate) struct Troubled {
    rows: Vec<Vec<String>>,
    total: usize,
}

/// The rows of a page of targets (`GET /api/v1/rollouts/{id}/devices`'s `devices`).
fn target_rows(page: &Value) -> Vec<Vec<String>> {
    let Some(list) = page.get("devices").and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .map(|t| {
            let device = field(t, "device");
            let wave = t.get("wave").and_then(Value::as_u64).map_or(0, |w| w + 1);
            let cause = match t.get("phase") {
                Some(phase) => json_text(phase),
                None => field(t, "cause"),
            };
            let recall = t
                .get("recall")
                .map(|r| field(r, "state"))
                .unwrap_or_default();
            vec![
                device_link(&device),
                wave.to_string(),
                esc(&field(t, "state")).to_string(),
                esc(&cause).to_string(),
                esc(&field(t, "reason")).to_string(),
                esc(&recall).to_string(),
            ]
        })
        .collect()
}

/// The rollout (from the API) and its troubled devices, or the refusal.
pub(crate) async fn load(
    console: &Console,
    session: &Session,
    id: RolloutId,
) -> Result<(RolloutView, Troubled), ApiAnswer> {
    let answer = console
        .api(session, Method::GET, &format!("/rollouts/{id}"), None)
        .await;
    if !answer.status.is_success() {
        return Err(answer);
    }
    let rollout = RolloutView::deserialize(answer.body.get("rollout").unwrap_or(&Value::Null))
        .map_err(|e| internal_answer(&format!("the rollout view does not read: {e}")))?;
    let page = console
        .api(
            session,
            Method::GET,
            &format!("/rollouts/{id}/devices?state=troubled&limit={TROUBLED_SHOWN}"),
            None,
        )
        .await;
    if !page.status.is_success() {
        return Err(page);
    }
    let total = page
        .body
        .get("total")
        .and_then(Value::as_u64)
        .unwrap_or_default();
    Ok((
        rollout,
        Troubled {
            rows: target_rows(&page.body),
            total: usize::try_from(total).unwrap_or(usize::MAX),
        },
    ))
}

/// Targets a page of `GET /rollouts/{id}/devices` lists.
const TARGETS_PAGE: usize = 100;

/// Query of `GET /rollouts/{id}/devices`: the API's `state` and the page's first target.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct TargetsPage {
    #[serde(default)]
    state: String,
    #[serde(default)]
    offset: usize,
}

/// `GET /rollouts/{id}/devices`: the rollout's targets in one state (or all, or the troubled
/// ones) as the rollout sees them, [`TARGETS_PAGE`] a page, with previous and next links.
pub(crate) async fn targets(
    State(console): State<Console>,
    SignedIn(session): SignedIn,
    Path(id): Path<RolloutId>,
    Query(q): Query<TargetsPage>,
) -> Response {
    let state = if q.state.is_empty() {
        "all"
    } else {
        q.state.as_str()
    };
    let query = format!(
        "state={}&offset={}&limit={TARGETS_PAGE}",
        url(state),
        q.offset
    );
    let page = console
        .api(
            &session,
            Method::GET,
            &format!("/rollouts/{id}/devices?{query}"),
            None,
        )
        .await;
    if !page.status.is_success() {
        return layout::error_page(&session, &page);
    }
    let total = page
        .body
        .get("total")
        .and_then(Value::as_u64)
        .map_or(0, |t| usize::try_from(t).unwrap_or(usize::MAX));
    let rows = target_rows(&page.body);
    let link = |offset: usize, label: &str, anchor: &str| {
        format!(
            r#"<a id="{anchor}" href="/rollouts/{id}/devices?state={}&amp;offset={offset}">{label}</a>"#,
            url(state)
        )
    };
    let mut nav = Vec::new();
    if q.offset > 0 {
        nav.push(link(
            q.offset.saturating_sub(TARGETS_PAGE),
            "Previous",
            "targets-previous",
        ));
    }
    if q.offset + rows.len() < total {
        nav.push(link(q.offset + rows.len(), "Next", "targets-next"));
    }
    let shown = if rows.is_empty() {
        "none".to_string()
    } else {
        format!("{}–{}", q.offset + 1, q.offset + rows.len())
    };
    let body = format!(
        r#"<p><a href="/rollouts/{id}">Rollout #{id}</a> · state <code>{}</code> · {total} devices, {shown} shown</p>{}<p class="pager">{}</p>"#,
        esc(state),
        table("Targets as the rollout sees them", TARGET_COLUMNS, &rows),
        nav.join(" · ")
    );
    layout::page(
        &session,
        &format!("Rollout #{id}: devices"),
        "/rollouts",
        &body,
    )
}

/// `GET /rollouts/{id}`.
pub(crate) async fn detail(
    State(console): State<Console>,
    SignedIn(session): SignedIn,
    Path(id): Path<RolloutId>,
) -> Response {
    let (rollout, devices) = match load(&console, &session, id).await {
        Ok(loaded) => loaded,
        Err(answer) => return layout::error_page(&session, &answer),
    };
    let live = fragment(&session, &rollout, &devices);
    let attr = if finished(&rollout) {
        String::new()
    } else {
        format!(r#" data-live="/live/rollouts/{id}""#)
    };
    let filter = match rollout.filter.trim() {
        "" => "every device",
        f => f,
    };
    let forced = rollout
        .spec
        .pointer("/force_reinstall")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let approved = match rollout.approved_by.as_deref() {
        Some(by) if !by.is_empty() => by,
        _ if forced => "nobody yet (a forced reinstall waits for an approver)",
        _ => "not needed (no forced reinstall)",
    };
    let body = format!(
        r#"<dl class="facts"><dt>Release</dt><dd>{} <code>{}</code></dd><dt>Filter</dt><dd><code>{}</code></dd><dt>Targets</dt><dd>{} ({} deploy, {} redeploy, {} offline)</dd><dt>Created by</dt><dd>{}</dd><dt>Approved by</dt><dd>{}</dd></dl>
<div{attr} aria-live="polite">{live}</div>
{}<p><a href="/audit?rollout={id}">Events of this rollout</a></p>"#,
        esc(rollout.version.as_deref().unwrap_or_default()),
        esc(&rollout.release),
        esc(filter),
        rollout.targets,
        rollout.deploys,
        rollout.redeploys,
        rollout.offline,
        esc(&rollout.created_by),
        esc(approved),
        rollout_facts::spec(&rollout.spec),
    );
    layout::page(&session, &format!("Rollout #{id}"), "/rollouts", &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;
    use crate::http::Operator;

    fn session(role: Role) -> Session {
        Session::for_tests(Operator {
            name: "someone".into(),
            role,
        })
    }

    #[test]
    fn only_the_actions_the_role_grants_are_offered() {
        let id = RolloutId::new(4).unwrap();
        let operator = actions(
            &session(Role::Operator),
            id,
            RolloutStatus::AwaitingApproval,
        );
        assert!(!operator.contains("approve-button"), "{operator}");
        assert!(operator.contains("abort-button"));
        let approver = actions(
            &session(Role::Approver),
            id,
            RolloutStatus::AwaitingApproval,
        );
        assert!(approver.contains("approve-button"));
        assert!(!approver.contains("abort-button"));
        let admin = actions(&session(Role::Admin), id, RolloutStatus::Running);
        assert!(admin.contains("pause-button") && admin.contains("abort-button"));
        assert!(admin.contains(r#"data-confirm="Abort rollout #4?""#));
        assert!(admin.contains(r#"value="csrf-of-the-test""#));
        assert_eq!(
            actions(&session(Role::Admin), id, RolloutStatus::Completed),
            ""
        );
        assert_eq!(
            actions(&session(Role::Publisher), id, RolloutStatus::Running),
            ""
        );
    }
}
