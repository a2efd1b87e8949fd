//! The console's changing requests: sign-in and sign-out, and the forms that call the REST
//! API (labels, rollout actions, flag kill switch). Every form must carry the session's CSRF
//! token (403 otherwise, nothing is called); the API then decides as for any client, so a
//! role the operator lacks is its 403 `forbidden-role` and `access-denied` audit event.

use std::collections::BTreeMap;

use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use ota_core::fleet::RolloutId;
use serde::Deserialize;
use serde_json::json;

use super::html::url;
use super::layout;
use super::session::{self, Session};
use super::{ApiAnswer, Console, SignedIn};
use crate::db::NewEvent;
use crate::event_kinds::EventKind;

/// The sign-in form.
#[derive(Debug, Deserialize)]
pub(crate) struct SignInForm {
    token: String,
}

/// `POST /login`: a configured operator token opens a session.
pub(crate) async fn sign_in(
    State(console): State<Console>,
    form: Result<Form<SignInForm>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return layout::login_page(Some("Enter an operator token."), StatusCode::BAD_REQUEST);
    };
    let token = form.token.trim();
    let Some(operator) = console.state().operator_for(token) else {
        tracing::warn!("console sign-in refused: unknown token");
        return layout::login_page(
            Some("This token is not an operator token of this server."),
            StatusCode::UNAUTHORIZED,
        );
    };
    tracing::info!(operator = %operator.name, "console sign-in");
    match console.0.sessions.open(operator, token) {
        Ok(id) => (
            [(
                header::SET_COOKIE,
                session::set_cookie(&id, console.0.secure),
            )],
            Redirect::to("/"),
        )
            .into_response(),
        Err(e) => layout::login_page(
            Some(&format!("cannot open a session: {e}")),
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
    }
}

/// A form with only the CSRF token.
#[derive(Debug, Deserialize)]
pub(crate) struct CsrfForm {
    csrf: String,
    /// The reason of an abort (optional).
    #[serde(default)]
    reason: String,
}

/// `POST /logout`.
pub(crate) async fn sign_out(
    State(console): State<Console>,
    SignedIn(session): SignedIn,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    if let Some(refused) = csrf_refusal(
        &console,
        &session,
        form.as_ref().ok().map(|f| f.csrf.as_str()),
        &uri,
    )
    .await
    {
        return refused;
    }
    console.0.sessions.close(&headers);
    (
        [(header::SET_COOKIE, session::clear_cookie(console.0.secure))],
        Redirect::to("/login"),
    )
        .into_response()
}

/// The 403 answer when `presented` is not the session's CSRF token; `None` when it is. A
/// refusal is logged and recorded as an `access-denied` audit event with `"cause": "csrf"`
/// (a forged or stale form is worth an operator's attention like a wrong role).
pub(crate) async fn csrf_refusal(
    console: &Console,
    session: &Session,
    presented: Option<&str>,
    path: &Uri,
) -> Option<Response> {
    if presented.is_some_and(|p| session.csrf_ok(p)) {
        return None;
    }
    let path = path.path();
    tracing::warn!(operator = %session.operator.name, path, "console request refused: bad CSRF token");
    let event = NewEvent::new(
        console.state().clock().now_i64(),
        &session.operator.name,
        EventKind::AccessDenied,
    )
    .details(json!({ "method": "POST", "path": path, "cause": "csrf" }));
    if let Err(e) = console.state().db().append_event(&event).await {
        tracing::error!("cannot record the access-denied event: {e}");
    }
    let answer = ApiAnswer {
        status: StatusCode::FORBIDDEN,
        body: json!({
            "error": "this form is stale or was not sent by the console (CSRF token missing or wrong); reload the page",
            "cause": "csrf",
        }),
    };
    Some(layout::error_page(session, &answer))
}

/// After a change: back to `to`, or the API's refusal.
fn after(session: &Session, answer: &ApiAnswer, to: &str) -> Response {
    if answer.status.is_success() {
        Redirect::to(to).into_response()
    } else {
        layout::error_page(session, answer)
    }
}

/// `POST /rollouts/{id}/{op}`: pause, resume, abort (with a reason) or approve.
pub(crate) async fn rollout(
    State(console): State<Console>,
    SignedIn(session): SignedIn,
    OriginalUri(uri): OriginalUri,
    Path((id, op)): Path<(RolloutId, String)>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let form = form.ok();
    if let Some(refused) = csrf_refusal(
        &console,
        &session,
        form.as_ref().map(|f| f.0.csrf.as_str()),
        &uri,
    )
    .await
    {
        return refused;
    }
    if !matches!(op.as_str(), "pause" | "resume" | "abort" | "approve") {
        return StatusCode::NOT_FOUND.into_response();
    }
    let body = form
        .map(|Form(f)| f.reason)
        .filter(|r| op == "abort" && !r.trim().is_empty())
        .map(|reason| json!({ "reason": reason.trim() }));
    let answer = console
        .api(
            &session,
            Method::POST,
            &format!("/rollouts/{id}/{op}"),
            body.as_ref(),
        )
        .await;
    after(&session, &answer, &format!("/rollouts/{id}"))
}

/// `POST /flags/{name}/{op}`: kill or revive.
pub(crate) async fn flag(
    State(console): State<Console>,
    SignedIn(session): SignedIn,
    OriginalUri(uri): OriginalUri,
    Path((name, op)): Path<(String, String)>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    if let Some(refused) = csrf_refusal(
        &console,
        &session,
        form.as_ref().ok().map(|f| f.csrf.as_str()),
        &uri,
    )
    .await
    {
        return refused;
    }
    if !matches!(op.as_str(), "kill" | "revive") {
        return StatusCode::NOT_FOUND.into_response();
    }
    let answer = console
        .api(
            &session,
            Method::POST,
            &format!("/flags/{}/{op}", url(&name)),
            None,
        )
        .await;
    after(&session, &answer, "/flags")
}

/// The labels form: one `key=value` a line.
#[derive(Debug, Deserialize)]
pub(crate) struct LabelsForm {
    csrf: String,
    labels: String,
}

/// Parses `key=value` lines (blank lines skipped).
pub(crate) fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: {line:?} is not key=value", n + 1));
        };
        labels.insert(key.trim().to_owned(), value.trim().to_owned());
    }
    Ok(labels)
}

/// `POST /devices/{id}/labels`.
pub(crate) async fn set_labels(
    State(console): State<Console>,
    SignedIn(session): SignedIn,
    OriginalUri(uri): OriginalUri,
    Path(id): Path<String>,
    form: Result<Form<LabelsForm>, FormRejection>,
) -> Response {
    let form = form.ok();
    if let Some(refused) = csrf_refusal(
        &console,
        &session,
        form.as_ref().map(|f| f.0.csrf.as_str()),
        &uri,
    )
    .await
    {
        return refused;
    }
    let text = form.map(|Form(f)| f.labels).unwrap_or_default();
    let labels = match parse_labels(&text) {
        Ok(labels) => labels,
        Err(e) => {
            let answer = ApiAnswer {
                status: StatusCode::BAD_REQUEST,
                body: json!({ "error": format!("labels: {e}"), "cause": "bad-body" }),
            };
            return layout::error_page(&session, &answer);
        }
    };
    let answer = console
        .api(
            &session,
            Method::PUT,
            &format!("/devices/{}/labels", url(&id)),
            Some(&json!({ "labels": labels })),
        )
        .await;
    after(&session, &answer, &format!("/devices/{}", url(&id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_per_line_and_reject_lines_without_equals() {
        let labels = parse_labels("site = north\n\nring=canary\n").unwrap();
        assert_eq!(labels.get("site").map(String::as_str), Some("north"));
        assert_eq!(labels.len(), 2);
        assert!(parse_labels("site").unwrap_err().contains("line 1"));
    }
}
