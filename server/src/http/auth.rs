//! Operator bearer tokens and roles: every `/api/v1` request must carry a token
//! ([`require_operator`], 401 otherwise), and a changing request must come from an operator
//! whose role grants what [`ROLE_TABLE`] says the route needs ([`require_role`], 403
//! `forbidden-role` otherwise, recorded as an `access-denied` audit event).

use axum::extract::{MatchedPath, OriginalUri, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiError, AppState};
use crate::config::Role;
use crate::db::NewEvent;
use crate::event_kinds::EventKind;

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

/// The role each changing request needs: `(method, route as declared in the router, role)`.
///
/// `GET` and `HEAD` need no particular role: every operator may read. A changing request on a
/// route that is not listed needs `admin`, so a new endpoint is closed until it is listed
/// here (one line). `admin` is granted everything ([`Role::grants`]).
pub const ROLE_TABLE: &[(Method, &str, Role)] = &[
    (Method::POST, "/api/v1/releases", Role::Publisher),
    (Method::PUT, "/api/v1/devices/{id}/labels", Role::Operator),
    (Method::POST, "/api/v1/rollouts", Role::Operator),
    (Method::POST, "/api/v1/rollouts/{id}/pause", Role::Operator),
    (Method::POST, "/api/v1/rollouts/{id}/resume", Role::Operator),
    (Method::POST, "/api/v1/rollouts/{id}/abort", Role::Operator),
    // Four eyes: the operators who create rollouts do not approve them.
    (
        Method::POST,
        "/api/v1/rollouts/{id}/approve",
        Role::Approver,
    ),
    (Method::POST, "/api/v1/flags/{name}/set", Role::Operator),
    (Method::POST, "/api/v1/flags/{name}/kill", Role::Operator),
    (Method::POST, "/api/v1/flags/{name}/revive", Role::Operator),
    (Method::DELETE, "/api/v1/flags/{name}", Role::Operator),
    // Key rotation: the firmware team, who hold the signing keys, publish the signed update.
    (Method::POST, "/api/v1/trust", Role::Publisher),
];

/// The role a request of `method` on `route` needs; `None` for reads (any role).
pub fn needed_role(method: &Method, route: Option<&str>) -> Option<Role> {
    if method == Method::GET || method == Method::HEAD {
        return None;
    }
    let listed = ROLE_TABLE
        .iter()
        .find(|(m, r, _)| m == method && Some(*r) == route)
        .map(|(_, _, role)| *role);
    Some(listed.unwrap_or(Role::Admin))
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

/// Route middleware (after [`require_operator`]): lets the request through if the operator's
/// role grants what [`needed_role`] says; otherwise answers 403 `forbidden-role` before the
/// body is read, logs the refusal and records an `access-denied` event (never the token).
pub(super) async fn require_role(
    State(state): State<AppState>,
    route: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let route = route.as_ref().map(MatchedPath::as_str);
    let Some(needed) = needed_role(request.method(), route) else {
        return next.run(request).await;
    };
    let Some(operator) = request.extensions().get::<Operator>().cloned() else {
        return ApiError::unauthorized().into_response();
    };
    if operator.role.grants(needed) {
        return next.run(request).await;
    }
    let method = request.method().as_str();
    // The full path (`/api/v1/...`); inside the nested router the URI lacks the prefix.
    let path = request
        .extensions()
        .get::<OriginalUri>()
        .map_or_else(|| request.uri().path(), |uri| uri.path());
    tracing::warn!(
        operator = %operator.name,
        role = %operator.role,
        needed = %needed,
        %method,
        path,
        "request refused: wrong role"
    );
    let event = NewEvent::new(
        state.clock().now_i64(),
        &operator.name,
        EventKind::AccessDenied,
    )
    .details(json!({ "method": method, "path": path, "role": operator.role, "needed": needed }));
    if let Err(e) = state.db().append_event(&event).await {
        tracing::error!("cannot record the access-denied event: {e}");
    }
    forbidden_role(&operator, needed).into_response()
}

/// 403 `forbidden-role`: `operator` lacks `needed`.
fn forbidden_role(operator: &Operator, needed: Role) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden-role",
        format!(
            "this request needs the {needed} role (or admin); operator {:?} has the {} role",
            operator.name, operator.role
        ),
    )
}

/// Compares two byte strings in time independent of where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_need_no_role_and_unlisted_writes_need_admin() {
        assert_eq!(needed_role(&Method::GET, Some("/api/v1/releases")), None);
        assert_eq!(needed_role(&Method::HEAD, None), None);
        assert_eq!(
            needed_role(&Method::POST, Some("/api/v1/releases")),
            Some(Role::Publisher)
        );
        assert_eq!(
            needed_role(&Method::POST, Some("/api/v1/rollouts/{id}/approve")),
            Some(Role::Approver)
        );
        assert_eq!(
            needed_role(&Method::POST, Some("/api/v1/not-listed")),
            Some(Role::Admin)
        );
        assert_eq!(needed_role(&Method::PATCH, None), Some(Role::Admin));
    }

    #[test]
    fn admin_is_granted_everything_and_others_only_their_role() {
        for needed in [Role::Admin, Role::Publisher, Role::Operator, Role::Approver] {
            assert!(Role::Admin.grants(needed));
        }
        assert!(Role::Publisher.grants(Role::Publisher));
        assert!(!Role::Publisher.grants(Role::Operator));
        assert!(!Role::Operator.grants(Role::Approver));
        assert!(!Role::Approver.grants(Role::Operator));
        assert!(!Role::Approver.grants(Role::Admin));
    }
}
