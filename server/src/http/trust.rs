//! Key rotation: `GET /api/v1/trust` (the trust set in force, and which devices use it) and
//! `POST /api/v1/trust` (body: a signed trust-set update, as `ota key rotate` writes it).
//!
//! A posted update is verified against the set in force (see [`crate::trust`]); accepted, it
//! is stored with its `trust-rotated` audit event, put in force for every later release, and
//! published retained on `ota/v1/trust` for the devices. A refusal answers `{ "error", "cause" }`
//! (400 `malformed`; 409 `stale`; 422 `unknown-key`, `too-few-signatures`, `bad-signature`,
//! `invalid-trust-set`) and is recorded as a `trust-rejected` audit event; nothing changes.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use ota_core::wire::TrustRejectCause;
use serde::Serialize;
use serde_json::json;

use super::{ApiError, AppState, Operator};
use crate::db::{NewEvent, TrustTally};
use crate::event_kinds::EventKind;
use crate::trust::{TrustError, TrustView};

/// Largest accepted body: a trust-set update is a few kilobytes at most.
pub(super) const MAX_BODY_BYTES: usize = 64 * 1024;

/// Devices listed by id in `devices.behind` of `GET /api/v1/trust`.
const BEHIND_LISTED: u32 = 50;

/// `GET /api/v1/trust`: the set in force, and the devices counted by the set they use.
#[derive(Debug, Serialize)]
pub(super) struct TrustAnswer {
    #[serde(flatten)]
    view: TrustView,
    devices: TrustTally,
}

/// `GET /api/v1/trust`.
pub(super) async fn show(State(state): State<AppState>) -> Result<Json<TrustAnswer>, ApiError> {
    let view = state.trust().view();
    let devices = state.db().trust_tally(view.sequence, BEHIND_LISTED).await?;
    Ok(Json(TrustAnswer { view, devices }))
}

/// `POST /api/v1/trust`.
pub(super) async fn rotate(
    State(state): State<AppState>,
    Extension(operator): Extension<Operator>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TrustView>, ApiError> {
    let body = body.map_err(|r| ApiError::new(r.status(), "bad-body", r.body_text()))?;
    let now = state.clock().now_i64();
    let result = state
        .trust()
        .rotate(state.db(), &body, now, &operator.name)
        .await;
    match result {
        Ok(view) => {
            tracing::info!(operator = %operator.name, sequence = view.sequence, threshold = view.threshold, "trust set rotated");
            // Stored already: if the coordinator is stopping, the next start publishes it.
            if let Some(payload) = state.trust().payload()
                && let Err(e) = state.fleet().trust_changed(payload).await
            {
                tracing::error!("the trust-set update is stored but not yet published: {e}");
            }
            Ok(Json(view))
        }
        Err(e) => {
            let error = api_error(e);
            tracing::warn!(operator = %operator.name, cause = error.cause, "trust-set update refused: {}", error.message);
            let event = NewEvent::new(now, &operator.name, EventKind::TrustRejected)
                .details(json!({ "cause": error.cause, "error": error.message }));
            if let Err(e) = state.db().append_event(&event).await {
                tracing::error!("cannot record the trust-rejected event: {e}");
            }
            Err(error)
        }
    }
}

fn api_error(e: TrustError) -> ApiError {
    let Some(cause) = e.cause() else {
        return match e {
            TrustError::Db(e) => e.into(),
            other => ApiError::internal("trust set", &other),
        };
    };
    let status = match cause {
        TrustRejectCause::Malformed => StatusCode::BAD_REQUEST,
        TrustRejectCause::Stale => StatusCode::CONFLICT,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    ApiError::new(status, cause.name(), e.to_string())
}
