//! Rollouts: `POST /api/v1/rollouts`, `GET /api/v1/rollouts[/{id}]`,
//! `POST /api/v1/rollouts/{id}/approve|pause|resume|abort`.
//!
//! Commands go to the fleet coordinator (which owns the planners) and answer once the change
//! and its audit events are committed; reads decode the stored planner state.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use ota_core::rollout::Rollout;
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, Operator, PathParam};
use crate::fleet::{FleetError, Op, RolloutRequest, RolloutView};

/// `{ "rollout": RolloutView }`.
#[derive(Debug, Serialize)]
pub(super) struct One {
    rollout: RolloutView,
}

/// `{ "rollouts": [RolloutView] }`.
#[derive(Debug, Serialize)]
pub(super) struct Many {
    rollouts: Vec<RolloutView>,
}

/// Body of `POST .../abort` (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AbortBody {
    #[serde(default)]
    reason: String,
}

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> Self {
        let message = e.to_string();
        match e {
            FleetError::ReleaseNotFound(_)
            | FleetError::RolloutNotFound(_)
            | FleetError::FlagNotFound(_)
            | FleetError::DeviceNotFound(_) => ApiError::not_found(message),
            FleetError::AmbiguousRelease(_) => ApiError::bad_request("ambiguous-release", message),
            FleetError::BadFilter(_) => ApiError::bad_request("bad-filter", message),
            FleetError::BadSpec(_) => ApiError::bad_request("bad-spec", message),
            FleetError::BadFlag(_) => ApiError::bad_request("bad-flag", message),
            FleetError::ReleaseExpired { .. } => {
                ApiError::new(StatusCode::CONFLICT, "release-expired", message)
            }
            FleetError::NoTargets { .. } => ApiError::bad_request("no-targets", message),
            FleetError::Conflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "rollout-conflict", message)
            }
            FleetError::SelfApproval => {
                ApiError::new(StatusCode::FORBIDDEN, "self-approval", message)
            }
            FleetError::InvalidState(_) => {
                ApiError::new(StatusCode::CONFLICT, "invalid-state", message)
            }
            FleetError::Stopped => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            FleetError::Unavailable => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "db-unavailable", message)
            }
            FleetError::NotLeader => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not-leader", message)
            }
            FleetError::Db(e) if e.is_unavailable() => FleetError::Unavailable.into(),
            FleetError::Db(e) => ApiError::internal("database", &e),
            other => ApiError::internal("rollout", &other),
        }
    }
}

fn bad_body(rejection: JsonRejection) -> ApiError {
    ApiError::bad_request("bad-body", rejection.body_text())
}

fn parse_id(text: &str) -> Result<i64, ApiError> {
    text.parse::<i64>()
        .map_err(|_| ApiError::bad_request("bad-path", format!("{text:?} is not a rollout id")))
}

/// `POST /api/v1/rollouts`.
pub(super) async fn create(
    State(state): State<AppState>,
    Extension(operator): Extension<Operator>,
    body: Result<Json<RolloutRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<One>), ApiError> {
    let Json(request) = body.map_err(bad_body)?;
    let rollout = state
        .fleet()
        .create_rollout(request, &operator.name)
        .await?;
    let rollout = with_downloads(&state, rollout).await;
    Ok((StatusCode::CREATED, Json(One { rollout })))
}

/// The view of a stored rollout.
pub(super) async fn view(state: &AppState, id: i64) -> Result<RolloutView, ApiError> {
    let record = state
        .db()
        .get_rollout(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("rollout {id} not found")))?;
    let planner =
        Rollout::from_cbor(&record.state).map_err(|e| ApiError::internal("rollout state", &e))?;
    let version = state
        .db()
        .get_release(&record.release_digest)
        .await?
        .map(|r| r.version);
    let mut view = RolloutView::new(&record, &planner, version);
    view.downloads = Some(
        state
            .db()
            .rollout_transfers(record.id, &record.release_digest)
            .await?,
    );
    Ok(view)
}

/// A command's answer with the rollout's download totals. The command is done: a failed read
/// leaves them out (logged) rather than failing the answer.
async fn with_downloads(state: &AppState, mut view: RolloutView) -> RolloutView {
    let digest = match view.release.parse() {
        Ok(digest) => digest,
        Err(_) => return view,
    };
    match state.db().rollout_transfers(view.id, &digest).await {
        Ok(totals) => view.downloads = Some(totals),
        Err(e) => tracing::warn!("cannot read the downloads of rollout {}: {e}", view.id),
    }
    view
}

/// `GET /api/v1/rollouts`.
pub(super) async fn list(State(state): State<AppState>) -> Result<Json<Many>, ApiError> {
    let mut rollouts = Vec::new();
    for record in state.db().list_rollouts().await? {
        rollouts.push(view(&state, record.id).await?);
    }
    Ok(Json(Many { rollouts }))
}

/// `GET /api/v1/rollouts/{id}`.
pub(super) async fn get(
    State(state): State<AppState>,
    PathParam(id): PathParam,
) -> Result<Json<One>, ApiError> {
    let rollout = view(&state, parse_id(&id)?).await?;
    Ok(Json(One { rollout }))
}

async fn operate(
    state: &AppState,
    operator: &Operator,
    id: &str,
    op: Op,
) -> Result<Json<One>, ApiError> {
    let id = parse_id(id)?;
    let rollout = state.fleet().operate(id, op, &operator.name).await?;
    let rollout = with_downloads(state, rollout).await;
    Ok(Json(One { rollout }))
}

/// `POST /api/v1/rollouts/{id}/approve`.
pub(super) async fn approve(
    State(state): State<AppState>,
    Extension(operator): Extension<Operator>,
    PathParam(id): PathParam,
) -> Result<Json<One>, ApiError> {
    operate(&state, &operator, &id, Op::Approve).await
}

/// `POST /api/v1/rollouts/{id}/pause`.
pub(super) async fn pause(
    State(state): State<AppState>,
    Extension(operator): Extension<Operator>,
    PathParam(id): PathParam,
) -> Result<Json<One>, ApiError> {
    operate(&state, &operator, &id, Op::Pause).await
}

/// `POST /api/v1/rollouts/{id}/resume`.
pub(super) async fn resume(
    State(state): State<AppState>,
    Extension(operator): Extension<Operator>,
    PathParam(id): PathParam,
) -> Result<Json<One>, ApiError> {
    operate(&state, &operator, &id, Op::Resume).await
}

/// `POST /api/v1/rollouts/{id}/abort` with an optional `{ "reason": "..." }`.
pub(super) async fn abort(
    State(state): State<AppState>,
    Extension(operator): Extension<Operator>,
    PathParam(id): PathParam,
    body: Option<Json<AbortBody>>,
) -> Result<Json<One>, ApiError> {
    let reason = body.map(|Json(b)| b.reason).unwrap_or_default();
    operate(&state, &operator, &id, Op::Abort(reason)).await
}
