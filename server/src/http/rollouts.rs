//! Rollouts: `POST /api/v1/rollouts`, `GET /api/v1/rollouts[/{id}]`,
//! `GET /api/v1/rollouts/{id}/devices`, `POST /api/v1/rollouts/{id}/approve|pause|resume|abort`.
//!
//! Commands go to the fleet coordinator (which owns the planners) and answer once the change
//! and its audit events are committed; reads decode the stored planner state.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Extension, Query, State};
use axum::http::StatusCode;
use ota_core::fleet::RolloutId;
use ota_core::rollout::{ExecutionState, Rollout, STATE_NAMES, TargetView};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ApiError, AppState, Operator, PathParam};
use crate::db::RolloutRecord;
use crate::fleet::{FleetError, Op, RolloutRequest, RolloutView, target_json};

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

fn parse_id(text: &str) -> Result<RolloutId, ApiError> {
    text.parse::<RolloutId>()
        .map_err(|e| ApiError::bad_request("bad-path", format!("{text:?}: {e}")))
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

/// A stored rollout and its planner, or 404.
async fn stored(state: &AppState, id: RolloutId) -> Result<(RolloutRecord, Rollout), ApiError> {
    let record = state
        .db()
        .get_rollout(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("rollout {id} not found")))?;
    let planner =
        Rollout::from_cbor(&record.state).map_err(|e| ApiError::internal("rollout state", &e))?;
    Ok((record, planner))
}

/// The view of a stored rollout.
pub(super) async fn view(state: &AppState, id: RolloutId) -> Result<RolloutView, ApiError> {
    let (record, planner) = stored(state, id).await?;
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

/// Query of `GET /api/v1/rollouts/{id}/devices`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TargetsQuery {
    /// `all` (the default), `troubled`, or one execution state's name.
    state: Option<String>,
    /// Targets skipped (in device id order); default 0.
    offset: Option<usize>,
    /// At most this many listed; default [`TARGETS_DEFAULT`], at most [`TARGETS_MAX`].
    limit: Option<usize>,
}

/// Targets a page lists when the query does not say.
pub(crate) const TARGETS_DEFAULT: usize = 100;
/// The most targets one page lists.
pub(crate) const TARGETS_MAX: usize = 1000;

/// `{ "total", "offset", "devices": [...] }` (see [`target_json`]).
#[derive(Debug, Serialize)]
pub(super) struct Targets {
    total: usize,
    offset: usize,
    devices: Vec<Value>,
}

/// Which targets a page lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Selection {
    /// Every target.
    All,
    /// Those that failed, were rejected, rolled back, timed out, or are deferred.
    Troubled,
    /// Those in the execution state of this name.
    State(&'static str),
}

impl Selection {
    fn parse(text: Option<&str>) -> Result<Selection, ApiError> {
        match text.map(str::trim) {
            None | Some("" | "all") => Ok(Selection::All),
            Some("troubled") => Ok(Selection::Troubled),
            Some("failed") => Ok(Selection::State("failed")),
            Some(name) => STATE_NAMES
                .iter()
                .find(|n| **n == name)
                .map(|n| Selection::State(n))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "bad-query",
                        format!(
                            "state {name:?} is none of all, troubled, failed, {}",
                            STATE_NAMES.join(", ")
                        ),
                    )
                }),
        }
    }

    fn takes(self, state: &ExecutionState) -> bool {
        match self {
            Selection::All => true,
            Selection::Troubled => matches!(
                state,
                ExecutionState::Rejected { .. }
                    | ExecutionState::Failed { .. }
                    | ExecutionState::RolledBack { .. }
                    | ExecutionState::TimedOut
                    | ExecutionState::DeferredPower { .. }
                    | ExecutionState::DeferredWindow { .. }
                    | ExecutionState::DeferredDisk { .. }
            ),
            Selection::State(name) => state.name() == name,
        }
    }
}

/// `GET /api/v1/rollouts/{id}/devices?state=&offset=&limit=`: the rollout's targets as the
/// rollout sees them (its own execution state of each, not the device's latest result), by
/// device id, a page at a time.
pub(super) async fn devices(
    State(state): State<AppState>,
    PathParam(id): PathParam,
    query: Result<Query<TargetsQuery>, QueryRejection>,
) -> Result<Json<Targets>, ApiError> {
    let Query(q) = query.map_err(super::bad_query)?;
    let selection = Selection::parse(q.state.as_deref())?;
    let (_, planner) = stored(&state, parse_id(&id)?).await?;
    let mut picked: Vec<TargetView<'_>> = planner
        .targets()
        .filter(|t| selection.takes(t.state))
        .collect();
    picked.sort_unstable_by(|a, b| a.device_id.cmp(b.device_id));
    let offset = q.offset.unwrap_or(0);
    let limit = q.limit.unwrap_or(TARGETS_DEFAULT).clamp(1, TARGETS_MAX);
    let devices = picked
        .iter()
        .skip(offset)
        .take(limit)
        .map(target_json)
        .collect();
    Ok(Json(Targets {
        total: picked.len(),
        offset,
        devices,
    }))
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
