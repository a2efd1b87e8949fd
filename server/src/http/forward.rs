//! Forwarding coordinator commands from a standby replica to the leader (issue 15).
//!
//! The routes that need the fleet coordinator (rollout commands, flag reads and edits, trust
//! publication, server labels, release publication: see `docs/ha.md`) go through
//! [`to_leader`]: on the leader they run here; on a standby the request (its body streamed) is
//! sent on to the leader's advertised URL with the caller's own `Authorization` header (a proxy, not a redirect: HTTP clients drop
//! `Authorization` on a redirect to another origin), and the leader's answer comes back as is.
//! A standby that knows no live leader answers 503 `not-leader`; one that cannot reach it,
//! 503 `leader-unreachable` naming it. A forwarded request is never forwarded again.

use std::sync::LazyLock;
use std::time::Duration;

use axum::extract::{OriginalUri, Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};

/// Marks a request a standby forwarded (the leader never forwards it again).
const FORWARDED: HeaderName = HeaderName::from_static("x-ota-forwarded-by");
/// How long connecting to the leader may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest silence of the leader while it answers (an upload itself may take longer).
const READ_TIMEOUT: Duration = Duration::from_secs(60);

static CLIENT: LazyLock<Result<reqwest::Client, String>> = LazyLock::new(|| {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())
});

/// Runs the request here on the leader; forwards it to the leader from a standby.
pub(super) async fn to_leader(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let c = state.fleet().shared().coordination();
    if c.leader {
        return next.run(request).await;
    }
    let standby = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-leader",
            format!(
                "replica {:?} is a standby and knows no leader right now (a takeover takes at most the lease TTL): retry",
                c.replica_id
            ),
        )
        .into_response()
    };
    if request.headers().contains_key(&FORWARDED) {
        return standby();
    }
    let Some(leader) = c.leader_url else {
        return standby();
    };
    match forward(&leader, &c.replica_id, request).await {
        Ok(response) => response,
        Err(reason) => {
            tracing::warn!(%leader, "cannot forward a coordinator command to the leader: {reason}");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "leader-unreachable",
                format!("the leader at {leader} does not answer ({reason}): retry"),
            )
            .into_response()
        }
    }
}

async fn forward(leader: &str, replica: &str, request: Request) -> Result<Response, String> {
    let client = CLIENT.as_ref().map_err(Clone::clone)?;
    let (parts, body) = request.into_parts();
    // Nested routers see the path without `/api/v1`: the original one is forwarded.
    let uri = parts
        .extensions
        .get::<OriginalUri>()
        .map_or(&parts.uri, |o| &o.0);
    let path = uri
        .path_and_query()
        .map_or_else(|| uri.path(), |p| p.as_str());
    let url = format!("{}{path}", leader.trim_end_matches('/'));
    // Streamed: a release upload is as large as its artifact.
    let body = reqwest::Body::wrap_stream(body.into_data_stream());
    let mut out = client
        .request(parts.method.clone(), &url)
        .header(&FORWARDED, replica)
        .body(body);
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT] {
        if let Some(value) = parts.headers.get(&name) {
            out = out.header(name, value);
        }
    }
    let answer = out.send().await.map_err(|e| e.to_string())?;
    let status = answer.status();
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    let bytes = answer.bytes().await.map_err(|e| e.to_string())?;
    let mut response = (status, bytes).into_response();
    if let Some(value) = content_type {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    Ok(response)
}
