//! The operator web console, served at `/` beside the REST API (`/api/v1`).
//!
//! Pages are rendered on the server (HTML built in Rust, every value escaped by
//! [`html::esc`]); one small script (`assets/console.js`) drives the live parts (server-sent
//! events) and the confirmations, and one stylesheet styles it. Both are compiled into the
//! binary. See `docs/console.md`.
//!
//! Signing in with an operator token opens a [`session::Session`]; the console then calls the
//! REST API in-process with that token ([`Console::api`]), so reads and changes take exactly
//! the API's code paths: its authentication, its role table (a refusal is the same 403 and
//! `access-denied` audit event), its validation and its errors. Only the devices list and the
//! fleet overview read the database directly (with the API's filter parser), to page and
//! count without serialising the whole fleet.
//!
//! | method | path | what |
//! |---|---|---|
//! | `GET`, `POST` | `/login` | sign-in form, sign in (token) |
//! | `POST` | `/logout` | sign out |
//! | `GET` | `/` | fleet overview (live) |
//! | `GET` | `/devices?filter=&sort=&dir=&page=` | devices, paged on the server |
//! | `GET` | `/devices/{id}`; `POST` `/devices/{id}/labels` | device detail; edit server labels |
//! | `GET` | `/releases`, `/trust` | releases; trust set in force |
//! | `GET` | `/rollouts`, `/rollouts/{id}` | rollouts; one rollout (live) |
//! | `GET`, `POST` | `/rollouts/new` | create form; plan (dry run) or start |
//! | `POST` | `/rollouts/{id}/pause\|resume\|abort\|approve` | rollout actions |
//! | `GET` | `/flags`; `POST` `/flags/{name}/kill\|revive` | flags; kill switch |
//! | `GET` | `/audit?kind=&device=&rollout=&before=` | audit log |
//! | `GET` | `/live/overview`, `/live/rollouts/{id}` | server-sent events (HTML fragments) |
//! | `GET` | `/console.js`, `/console.css` | the assets |

mod actions;
mod html;
mod layout;
mod live;
mod pages;
mod session;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::Value;
use tower::ServiceExt as _;

use crate::http::AppState;
use session::{Session, Sessions};

/// What the console's handlers share.
#[derive(Clone)]
pub(crate) struct Console(Arc<Inner>);

struct Inner {
    state: AppState,
    /// The REST API (`/api/v1`) as a service the console calls in-process.
    api: Router,
    sessions: Sessions,
    /// Cookies get `Secure` (the server speaks HTTPS).
    secure: bool,
}

/// An answer of the REST API: its status and its JSON body (`Null` when not JSON).
#[derive(Debug)]
pub(crate) struct ApiAnswer {
    /// The status.
    pub(crate) status: StatusCode,
    /// The body.
    pub(crate) body: Value,
}

impl ApiAnswer {
    /// The API's error sentence (`error`), or the status.
    pub(crate) fn error_text(&self) -> String {
        self.body
            .get("error")
            .and_then(Value::as_str)
            .map_or_else(|| self.status.to_string(), str::to_owned)
    }
}

impl Console {
    /// The server's state.
    pub(crate) fn state(&self) -> &AppState {
        &self.0.state
    }

    /// Calls the REST API as `session`'s operator: `method` on `path` (below `/api/v1`, with
    /// its query), with an optional JSON body.
    pub(crate) async fn api(
        &self,
        session: &Session,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> ApiAnswer {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("/api/v1{path}"))
            .header(header::AUTHORIZATION, format!("Bearer {}", session.token));
        let body = match body {
            Some(json) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        let request = match builder.body(body) {
            Ok(request) => request,
            Err(e) => return internal_answer(&e),
        };
        let response = match self.0.api.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let status = response.status();
        match axum::body::to_bytes(response.into_body(), usize::MAX).await {
            Ok(bytes) => ApiAnswer {
                status,
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            },
            Err(e) => internal_answer(&e),
        }
    }

    /// [`Console::api`] for a `GET` that must succeed to show the page; its error otherwise.
    pub(crate) async fn read(&self, session: &Session, path: &str) -> Result<Value, Response> {
        let answer = self.api(session, Method::GET, path, None).await;
        if answer.status.is_success() {
            Ok(answer.body)
        } else {
            Err(layout::error_page(session, &answer))
        }
    }
}

fn internal_answer(error: &dyn std::fmt::Display) -> ApiAnswer {
    ApiAnswer {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        body: serde_json::json!({ "error": format!("console: {error}"), "cause": "internal" }),
    }
}

/// The signed-in operator of a page request; without a live session, pages redirect to
/// `/login`.
pub(crate) struct SignedIn(pub(crate) Session);

impl FromRequestParts<Console> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, console: &Console) -> Result<Self, Response> {
        match console.0.sessions.find(&parts.headers) {
            Some(session) => Ok(SignedIn(session)),
            None if parts.uri.path().starts_with("/live/") => {
                Err(StatusCode::UNAUTHORIZED.into_response())
            }
            None => Err(Redirect::to("/login").into_response()),
        }
    }
}

/// The console's routes; `api` is the REST API router (`/api/v1`), `secure` whether the server
/// speaks HTTPS.
pub(crate) fn router(state: AppState, api: Router, secure: bool) -> Router {
    let console = Console(Arc::new(Inner {
        state,
        api,
        sessions: Sessions::default(),
        secure,
    }));
    Router::new()
        .route("/", get(pages::overview::page))
        .route("/login", get(login_form).post(actions::sign_in))
        .route("/logout", post(actions::sign_out))
        .route("/devices", get(pages::devices::list))
        .route("/devices/{id}", get(pages::devices::detail))
        .route("/devices/{id}/labels", post(actions::set_labels))
        .route("/releases", get(pages::misc::releases))
        .route("/trust", get(pages::misc::trust))
        .route("/rollouts", get(pages::rollouts::list))
        .route(
            "/rollouts/new",
            get(pages::create::form).post(pages::create::submit),
        )
        .route("/rollouts/{id}", get(pages::rollouts::detail))
        .route("/rollouts/{id}/devices", get(pages::rollouts::targets))
        .route("/rollouts/{id}/{op}", post(actions::rollout))
        .route("/flags", get(pages::misc::flags))
        .route("/flags/{name}/{op}", post(actions::flag))
        .route("/audit", get(pages::misc::audit))
        .route("/live/overview", get(live::overview))
        .route("/live/rollouts/{id}", get(live::rollout))
        .route("/console.js", get(script))
        .route("/console.css", get(style))
        .with_state(console)
}

async fn login_form() -> Response {
    layout::login_page(None, StatusCode::OK)
}

const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");

async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

async fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

impl From<crate::http::ApiError> for ApiAnswer {
    fn from(e: crate::http::ApiError) -> Self {
        ApiAnswer {
            status: e.status,
            body: serde_json::json!({ "error": e.message, "cause": e.cause }),
        }
    }
}
