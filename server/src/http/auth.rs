//! Operator bearer tokens: every `/api/v1` request must carry one.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::config::Role;

/// The operator a request was authenticated as; handlers take it as
/// `Extension<Operator>` and record `name` as the audit `actor`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Operator {
    /// The operator's name.
    pub name: String,
    /// The operator's role.
    pub role: Role,
}

/// Middleware: resolves `Authorization: Bearer <token>` to an [`Operator`] or answers 401.
pub(super) async fn require_operator(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let Some(operator) = token.and_then(|t| state.operator_for(t)) else {
        return ApiError::unauthorized().into_response();
    };
    request.extensions_mut().insert(operator);
    next.run(request).await
}

/// Compares two byte strings in time independent of where they differ.
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
