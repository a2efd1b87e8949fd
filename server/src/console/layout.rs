//! The frame of every page: head, navigation, the signed-in operator and sign-out, security
//! headers (a strict Content-Security-Policy: only the console's own script and stylesheet).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::ApiAnswer;
use super::html::esc;
use super::session::Session;

/// The navigation: (path, label).
const NAV: &[(&str, &str)] = &[
    ("/", "Overview"),
    ("/devices", "Devices"),
    ("/releases", "Releases"),
    ("/rollouts", "Rollouts"),
    ("/flags", "Flags"),
    ("/audit", "Audit log"),
    ("/trust", "Trust"),
];

/// The hidden CSRF field every changing form carries.
pub(crate) fn csrf_field(session: &Session) -> String {
    format!(
        r#"<input type="hidden" name="csrf" value="{}">"#,
        esc(&session.csrf)
    )
}

/// A whole page: `title`, the navigation with `active` marked, and `body`.
pub(crate) fn page(session: &Session, title: &str, active: &str, body: &str) -> Response {
    page_with_status(session, title, active, body, StatusCode::OK)
}

/// [`page`] answered with `status`.
pub(crate) fn page_with_status(
    session: &Session,
    title: &str,
    active: &str,
    body: &str,
    status: StatusCode,
) -> Response {
    let mut nav = String::new();
    for (path, label) in NAV {
        let current = if *path == active {
            r#" aria-current="page""#
        } else {
            ""
        };
        nav.push_str(&format!(
            r#"<li><a href="{path}"{current}>{label}</a></li>"#
        ));
    }
    let who = format!(
        r#"<form method="post" action="/logout" class="signout">{csrf}<span>{name} ({role})</span> <button type="submit">Sign out</button></form>"#,
        csrf = csrf_field(session),
        name = esc(&session.operator.name),
        role = esc(session.operator.role.as_str()),
    );
    let html = format!(
        r##"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · ota console</title><link rel="stylesheet" href="/console.css"><script src="/console.js" defer></script></head>
<body><a class="skip" href="#main">Skip to content</a>
<header><nav aria-label="Main"><span class="brand">ota</span><ul>{nav}</ul></nav>{who}</header>
<main id="main"><h1>{title}</h1>
{body}
</main></body></html>"##,
        title = esc(title),
    );
    respond(status, html)
}

/// The sign-in page, with an error sentence after a failed attempt.
pub(crate) fn login_page(error: Option<&str>, status: StatusCode) -> Response {
    let error = error.map_or_else(String::new, |e| {
        format!(r#"<p class="error" role="alert">{}</p>"#, esc(e))
    });
    let html = format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · ota console</title><link rel="stylesheet" href="/console.css"></head>
<body><main id="main" class="login"><h1>ota console</h1>{error}
<form method="post" action="/login">
<label for="token">Operator token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button>
</form></main></body></html>"#
    );
    respond(status, html)
}

/// The page of an API refusal or failure: the API's status and sentence.
pub(crate) fn error_page(session: &Session, answer: &ApiAnswer) -> Response {
    let body = format!(
        r#"<p class="error" role="alert">{}</p><p><a href="/">Back to the overview</a></p>"#,
        esc(&answer.error_text())
    );
    let title = answer
        .status
        .canonical_reason()
        .unwrap_or("Request refused");
    page_with_status(session, title, "", &body, answer.status)
}

/// An HTML answer with the console's security headers.
pub(crate) fn respond(status: StatusCode, html: String) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                     form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
                ),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("same-origin"),
            ),
        ],
        html,
    )
        .into_response()
}
