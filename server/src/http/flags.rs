//! Feature flags: `GET /api/v1/flags` (with the newest changes across flags), `GET /api/v1/flags/{name}[?device=ID]`,
//! `POST /api/v1/flags/{name}/set|kill|revive`, `DELETE /api/v1/flags/{name}`.
//!
//! Edits go to the fleet coordinator, which stores the change, its audit record and its
//! `flag-*` event in one transaction, answers, and publishes the devices' flags (retained).

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Extension, Query, State};
use ota_core::flags::{FlagEdit, FlagName};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, Operator, PathParam, bad_query};
use crate::fleet::flags::{FlagChangeView, FlagDetail};
use crate::fleet::{FlagEditResult, FlagList, FlagSetRequest};

/// Most audit records `GET /api/v1/flags/{name}` returns.
const CHANGES_SHOWN: u32 = 50;

/// Most audit records (across flags) `GET /api/v1/flags` returns.
const RECENT_CHANGES_SHOWN: u32 = 30;

/// Query of `GET /api/v1/flags/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ShowQuery {
    device: Option<String>,
}

/// `GET /api/v1/flags/{name}`: the flag, its counts, its audit trail.
#[derive(Debug, Serialize)]
pub(super) struct Shown {
    #[serde(flatten)]
    detail: FlagDetail,
    changes: Vec<FlagChangeView>,
}

/// `GET /api/v1/flags`: every flag with its counts, and the newest changes across flags.
#[derive(Debug, Serialize)]
pub(super) struct Listed {
    #[serde(flatten)]
    list: FlagList,
    changes: Vec<FlagChangeView>,
}

fn flag_name(text: &str) -> Result<FlagName, ApiError> {
    FlagName::new(text).map_err(|e| ApiError::bad_request("bad-flag-name", e.to_string()))
}

/// `GET /api/v1/flags`.
pub(super) async fn list(State(state): State<AppState>) -> Result<Json<Listed>, ApiError> {
    let list = state.fleet().list_flags().await?;
    let changes = changes(&state, None, RECENT_CHANGES_SHOWN).await?;
    Ok(Json(Listed { list, changes }))
}

/// The newest `limit` changes of flag `name` (of every flag without one), oldest first.
async fn changes(
    state: &AppState,
    name: Option<&FlagName>,
    limit: u32,
) -> Result<Vec<FlagChangeView>, ApiError> {
    Ok(state
        .db()
        .list_flag_changes(name.map(FlagName::as_str), limit)
        .await?
        .iter()
        .map(FlagChangeView::from)
        .collect())
}

/// `GET /api/v1/flags/{name}`.
pub(super) async fn show(
    State(state): State<AppState>,
    PathParam(name): PathParam,
    query: Result<Query<ShowQuery>, QueryRejection>,
) -> Result<Json<Shown>, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let name = flag_name(&name)?;
    let device = q.device.filter(|d| !d.is_empty());
    let detail = state
        .fleet()
        .show_flag(name.as_str(), device.as_deref())
        .await?;
    let changes = changes(&state, Some(&name), CHANGES_SHOWN).await?;
    Ok(Json(Shown { detail, changes }))
}

/// `POST /api/v1/flags/{name}/set` with `{"on": bool, "percent": P?, "filter": EXPR?}`.
pub(super) async fn set(
    State(state): State<AppState>,
    Extension(operator): Extension<Operator>,
    PathParam(name): PathParam,
    body: Result<Json<FlagSetRequest>, JsonRejection>,
) -> Result<Json<FlagEditResult>, ApiError> {
    let Json(body) = body.map_err(|e| ApiError::bad_request("bad-body", e.body_text()))?;
    let name = flag_name(&name)?;
    edit(&state, &operator, name, body.edit()?).await
}

/// `POST /api/v1/flags/{name}/kill`.
pub(super) async fn kill(
    State(state): State<AppState>,
    Extension(operator): Extension<Operator>,
    PathParam(name): PathParam,
) -> Result<Json<FlagEditResult>, ApiError> {
    edit(&state, &operator, flag_name(&name)?, FlagEdit::Kill).await
}

/// `POST /api/v1/flags/{name}/revive`.
pub(super) async fn revive(
    State(state): State<AppState>,
    Extension(operator): Extension<Operator>,
    PathParam(name): PathParam,
) -> Result<Json<FlagEditResult>, ApiError> {
    edit(&state, &operator, flag_name(&name)?, FlagEdit::Revive).await
}

/// `DELETE /api/v1/flags/{name}`.
pub(super) async fn delete(
    State(state): State<AppState>,
    Extension(operator): Extension<Operator>,
    PathParam(name): PathParam,
) -> Result<Json<FlagEditResult>, ApiError> {
    edit(&state, &operator, flag_name(&name)?, FlagEdit::Delete).await
}

async fn edit(
    state: &AppState,
    operator: &Operator,
    name: FlagName,
    edit: FlagEdit,
) -> Result<Json<FlagEditResult>, ApiError> {
    Ok(Json(
        state.fleet().edit_flag(name, edit, &operator.name).await?,
    ))
}
