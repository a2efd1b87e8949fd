//! `GET /rollouts/new` and `POST /rollouts/new`: the create form. "Show plan" asks the API for
//! a dry run and shows its plan (targets, deploys and redeploys, waves, conflicts, warnings,
//! excluded devices) with a "Start rollout" button carrying the same spec; only that starts
//! it.

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{OriginalUri, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::super::actions::csrf_refusal;
use super::super::html::{esc, json_text};
use super::super::layout;
use super::super::session::Session;
use super::super::{Console, SignedIn};
use super::{device_link, field, rollout_link, table};

/// What the form asks for.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct CreateForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    release: String,
    #[serde(default)]
    filter: String,
    /// Cumulative wave shares, percent, comma-separated.
    #[serde(default)]
    waves: String,
    #[serde(default)]
    bake_secs: String,
    #[serde(default)]
    success_min: String,
    #[serde(default)]
    max_failure: String,
    #[serde(default)]
    min_executed: String,
    #[serde(default)]
    rate_per_minute: String,
    #[serde(default)]
    inactivity_timeout_secs: String,
    #[serde(default)]
    max_deferral_secs: String,
    #[serde(default)]
    force_reinstall: Option<String>,
    /// `plan` (dry run) or `start`.
    #[serde(default)]
    action: String,
}

/// A number of the form, sent to the API under its own name when filled in (empty: the
/// server's default, docs/api.md).
struct NumberField {
    /// The form's and the API's name.
    name: &'static str,
    /// The label shown.
    label: &'static str,
    /// A percentage (a fraction allowed) rather than a count of devices or seconds.
    percent: bool,
}

/// The gate, pacing and timeout numbers of the form, in the order shown.
const NUMBERS: [NumberField; 7] = [
    NumberField {
        name: "bake_secs",
        label: "Bake time (seconds)",
        percent: false,
    },
    NumberField {
        name: "success_min",
        label: "Gate: minimum success (%)",
        percent: true,
    },
    NumberField {
        name: "max_failure",
        label: "Abort above failures (%)",
        percent: true,
    },
    NumberField {
        name: "min_executed",
        label: "Gate: minimum devices executed",
        percent: false,
    },
    NumberField {
        name: "rate_per_minute",
        label: "Devices notified per minute",
        percent: false,
    },
    NumberField {
        name: "inactivity_timeout_secs",
        label: "Inactivity timeout (seconds)",
        percent: false,
    },
    NumberField {
        name: "max_deferral_secs",
        label: "Longest deferral (seconds)",
        percent: false,
    },
];

impl CreateForm {
    /// The text given for the number `name` (one of [`NUMBERS`]).
    fn number(&self, name: &str) -> &str {
        match name {
            "bake_secs" => &self.bake_secs,
            "success_min" => &self.success_min,
            "max_failure" => &self.max_failure,
            "min_executed" => &self.min_executed,
            "rate_per_minute" => &self.rate_per_minute,
            "inactivity_timeout_secs" => &self.inactivity_timeout_secs,
            "max_deferral_secs" => &self.max_deferral_secs,
            _ => "",
        }
    }
}

/// The API request of a form, or what is wrong with it.
pub(crate) fn spec(form: &CreateForm, dry_run: bool) -> Result<Value, String> {
    let mut spec = json!({
        "release": form.release.trim(),
        "filter": form.filter.trim(),
        "force_reinstall": form.force_reinstall.is_some(),
        "dry_run": dry_run,
    });
    if !form.waves.trim().is_empty() {
        let waves = form
            .waves
            .split(',')
            .map(|w| {
                w.trim()
                    .parse::<f64>()
                    .map_err(|_| format!("waves: {:?} is not a number", w.trim()))
            })
            .collect::<Result<Vec<f64>, String>>()?;
        spec["waves"] = json!(waves);
    }
    for field in &NUMBERS {
        let text = form.number(field.name).trim();
        if text.is_empty() {
            continue;
        }
        spec[field.name] = if field.percent {
            text.parse::<f64>()
                .ok()
                .filter(|p| p.is_finite())
                .map(|p| json!(p))
        } else {
            text.parse::<u64>().ok().map(|n| json!(n))
        }
        .ok_or_else(|| {
            let wanted = if field.percent {
                "a percentage"
            } else {
                "a whole number"
            };
            format!("{}: {text:?} is not {wanted}", field.label)
        })?;
    }
    Ok(spec)
}

async fn release_options(console: &Console, session: &Session, chosen: &str) -> String {
    let answer = console.api(session, Method::GET, "/releases", None).await;
    let mut out = String::new();
    if let Some(list) = answer.body.get("releases").and_then(Value::as_array) {
        // The API lists them newest first: the newest is the default choice.
        for r in list {
            let digest = field(r, "digest");
            let selected = if digest == chosen { " selected" } else { "" };
            out.push_str(&format!(
                r#"<option value="{}"{selected}>{} ({}…)</option>"#,
                esc(&digest),
                esc(&field(r, "version")),
                esc(digest.get(..12).unwrap_or(&digest))
            ));
        }
    }
    out
}

async fn form_page(
    console: &Console,
    session: &Session,
    form: &CreateForm,
    extra: &str,
    status: StatusCode,
) -> Response {
    let options = release_options(console, session, &form.release).await;
    let checked = if form.force_reinstall.is_some() {
        " checked"
    } else {
        ""
    };
    let body = format!(
        r#"<form method="post" action="/rollouts/new" class="create">{csrf}
<label for="release">Release</label><select id="release" name="release" required>{options}</select>
<label for="filter">Device filter</label><input id="filter" name="filter" value="{filter}" placeholder="empty: every device">
<label for="waves">Waves (cumulative percent)</label><input id="waves" name="waves" value="{waves}" placeholder="1,10,50,100">
<fieldset><legend>Gate, pace and timeouts (empty: the server's default)</legend>{numbers}</fieldset>
<label class="check"><input type="checkbox" name="force_reinstall" value="on"{checked}> Reinstall on devices already running it (needs approval)</label>
<button type="submit" name="action" value="plan" id="plan-button">Show plan</button>
</form>{extra}"#,
        csrf = layout::csrf_field(session),
        filter = esc(&form.filter),
        waves = esc(&form.waves),
        numbers = NUMBERS
            .iter()
            .map(|f| format!(
                r#"<label for="{name}">{label}</label><input id="{name}" name="{name}" inputmode="{mode}" value="{value}" placeholder="default">"#,
                name = f.name,
                label = esc(f.label),
                mode = if f.percent { "decimal" } else { "numeric" },
                value = esc(form.number(f.name)),
            ))
            .collect::<String>(),
    );
    layout::page_with_status(session, "New rollout", "/rollouts", &body, status)
}

/// `GET /rollouts/new`.
pub(crate) async fn form(State(console): State<Console>, SignedIn(session): SignedIn) -> Response {
    form_page(
        &console,
        &session,
        &CreateForm::default(),
        "",
        StatusCode::OK,
    )
    .await
}

/// What the plan warns about, as sentences and a table: warnings (e.g. the release expires
/// before the rollout can finish), matching devices left out for their hardware class, and
/// targets already in another active rollout (a real create is refused for them).
fn plan_notes(plan: &Value) -> String {
    let mut notes = String::new();
    for warning in plan
        .get("warnings")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        notes.push_str(&format!(
            r#"<p class="warning" role="note">Warning: {}</p>"#,
            esc(&json_text(warning))
        ));
    }
    let left_out = plan
        .pointer("/excluded/incompatible_hardware")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if left_out > 0 {
        notes.push_str(&format!(
            "<p>Left out: {left_out} matching device(s) of a hardware class the release does not list.</p>"
        ));
    }
    let conflicts: Vec<Vec<String>> = plan
        .get("conflicts")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let rollout = field(c, "rollout");
            vec![device_link(&field(c, "device")), rollout_link(&rollout)]
        })
        .collect();
    if !conflicts.is_empty() {
        notes.push_str(&format!(
            "<p>{} target(s) are already in another active rollout: starting is refused until it ends.</p>{}",
            conflicts.len(),
            table(
                "Targets in another active rollout",
                &["Device", "Rollout"],
                &conflicts
            )
        ));
    }
    notes
}

/// The plan of a dry run, and the button that starts it.
fn plan(session: &Session, form: &CreateForm, plan: &Value) -> String {
    let waves: Vec<Vec<String>> = plan
        .get("waves")
        .and_then(Value::as_array)
        .map(|waves| {
            waves
                .iter()
                .map(|w| {
                    vec![
                        (w.get("index").and_then(Value::as_u64).unwrap_or(0) + 1).to_string(),
                        format!("{}%", esc(&field(w, "share"))),
                        esc(&field(w, "members")).to_string(),
                        esc(&field(w, "deploys")).to_string(),
                        esc(&field(w, "redeploys")).to_string(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let notes = plan_notes(plan);
    let hidden = |name: &str, value: &str| {
        format!(
            r#"<input type="hidden" name="{name}" value="{}">"#,
            esc(value)
        )
    };
    format!(
        r#"<section aria-labelledby="plan-title" id="plan"><h2 id="plan-title">Plan</h2>
<p>{} targets: {} install the release, {} already run it, {} offline now.</p>{}{notes}
<form method="post" action="/rollouts/new" data-confirm="Start this rollout?">{}{}{}{}{}{}
<button type="submit" name="action" value="start" id="start-button">Start rollout</button></form></section>"#,
        esc(&field(plan, "targets")),
        esc(&field(plan, "deploys")),
        esc(&field(plan, "redeploys")),
        esc(&field(plan, "offline")),
        table(
            "Waves",
            &["Wave", "Share", "Members", "Deploys", "Redeploys"],
            &waves
        ),
        layout::csrf_field(session),
        hidden("release", &form.release),
        hidden("filter", &form.filter),
        hidden("waves", &form.waves),
        NUMBERS
            .iter()
            .map(|f| hidden(f.name, form.number(f.name)))
            .collect::<String>(),
        form.force_reinstall
            .as_ref()
            .map_or_else(String::new, |_| hidden("force_reinstall", "on")),
    )
}

/// `POST /rollouts/new`: `action=plan` shows the dry run, `action=start` creates it.
pub(crate) async fn submit(
    State(console): State<Console>,
    SignedIn(session): SignedIn,
    OriginalUri(uri): OriginalUri,
    form: Result<Form<CreateForm>, FormRejection>,
) -> Response {
    let form = form.map(|Form(f)| f).unwrap_or_default();
    if let Some(refused) = csrf_refusal(&console, &session, Some(&form.csrf), &uri).await {
        return refused;
    }
    let start = form.action == "start";
    let request = match spec(&form, !start) {
        Ok(request) => request,
        Err(e) => {
            let error = format!(r#"<p class="error" role="alert">{}</p>"#, esc(&e));
            return form_page(&console, &session, &form, &error, StatusCode::BAD_REQUEST).await;
        }
    };
    let answer = console
        .api(&session, Method::POST, "/rollouts", Some(&request))
        .await;
    if !answer.status.is_success() {
        if answer.status == StatusCode::FORBIDDEN {
            return layout::error_page(&session, &answer);
        }
        let error = format!(
            r#"<p class="error" role="alert">{}</p>"#,
            esc(&answer.error_text())
        );
        return form_page(&console, &session, &form, &error, answer.status).await;
    }
    let rollout = answer.body.get("rollout").cloned().unwrap_or(Value::Null);
    if start {
        let id = field(&rollout, "id");
        return Redirect::to(&format!("/rollouts/{}", super::super::html::url(&id)))
            .into_response();
    }
    let shown = plan(&session, &form, &rollout);
    form_page(&console, &session, &form, &shown, StatusCode::OK).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_becomes_the_api_spec() {
        let form = CreateForm {
            release: " 1.2.0 ".into(),
            filter: "hw=gw".into(),
            waves: "10, 100".into(),
            bake_secs: "30".into(),
            success_min: "97.5".into(),
            max_failure: " 2 ".into(),
            min_executed: "4".into(),
            rate_per_minute: "600".into(),
            inactivity_timeout_secs: "900".into(),
            max_deferral_secs: "3600".into(),
            force_reinstall: Some("on".into()),
            ..CreateForm::default()
        };
        let spec = spec(&form, true).unwrap();
        assert_eq!(spec["release"], "1.2.0");
        assert_eq!(spec["waves"], json!([10.0, 100.0]));
        assert_eq!(spec["bake_secs"], 30);
        assert_eq!(spec["success_min"], 97.5);
        assert_eq!(spec["max_failure"], 2.0);
        assert_eq!(spec["min_executed"], 4);
        assert_eq!(spec["rate_per_minute"], 600);
        assert_eq!(spec["inactivity_timeout_secs"], 900);
        assert_eq!(spec["max_deferral_secs"], 3600);
        assert_eq!(spec["dry_run"], true);
        assert_eq!(spec["force_reinstall"], true);
        let defaults = super::spec(&CreateForm::default(), false).unwrap();
        assert!(defaults.get("waves").is_none());
        let bad = CreateForm {
            waves: "10,x".into(),
            ..CreateForm::default()
        };
        assert!(super::spec(&bad, true).unwrap_err().contains("\"x\""));
        for (bad, wanted) in [
            (
                CreateForm {
                    min_executed: "-1".into(),
                    ..CreateForm::default()
                },
                "Gate: minimum devices executed: \"-1\" is not a whole number",
            ),
            (
                CreateForm {
                    success_min: "NaN".into(),
                    ..CreateForm::default()
                },
                "Gate: minimum success (%): \"NaN\" is not a percentage",
            ),
        ] {
            assert_eq!(super::spec(&bad, true).unwrap_err(), wanted);
        }
    }
}
