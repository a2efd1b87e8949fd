//! The API's error type and its JSON body `{ "error": "...", "cause": "..." }`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ota_core::release::ReleaseError;
use serde::Serialize;

use crate::db::DbError;
use crate::store::{StoreError, UploadError};

/// An API error: an HTTP status, a stable machine-readable `cause` (kebab-case) and a
/// human-readable message. Rendered as `{ "error": message, "cause": cause }`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {cause}: {message}")]
#[non_exhaustive]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable cause, e.g. `threshold-not-met` (listed in `docs/api.md`).
    pub cause: &'static str,
    /// The message for humans.
    pub message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    cause: &'a str,
}

impl ApiError {
    /// An error of `status` with `cause` and `message`.
    pub fn new(status: StatusCode, cause: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            cause,
            message: message.into(),
        }
    }

    /// 400 Bad Request.
    pub fn bad_request(cause: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, cause, message)
    }

    /// 404 Not Found.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", message)
    }

    /// 401 Unauthorized.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid operator token is required: Authorization: Bearer <token>",
        )
    }

    /// 500 Internal Server Error (the detail is logged, not sent).
    pub fn internal(what: &str, error: &dyn std::fmt::Display) -> Self {
        tracing::error!("{what}: {error}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error: {what} failed (see the server log)"),
        )
    }

    /// The error a release verification failure maps to (422, or 413 for size limits).
    pub fn from_release(error: &ReleaseError) -> Self {
        let status = match error {
            ReleaseError::LimitExceeded { .. } | ReleaseError::ArtifactTooLong { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        Self::new(status, release_cause(error), error.to_string())
    }
}

/// The stable cause string of a release error.
pub fn release_cause(error: &ReleaseError) -> &'static str {
    match error {
        ReleaseError::Malformed(_) => "malformed",
        ReleaseError::LimitExceeded { .. } => "limit-exceeded",
        ReleaseError::TrailingData(_) => "trailing-data",
        ReleaseError::UnsupportedFormat(_) => "unsupported-format",
        ReleaseError::UnsupportedAlgorithm(_) => "unsupported-algorithm",
        ReleaseError::UnknownKey => "unknown-key",
        ReleaseError::BadSignature(_) => "bad-signature",
        ReleaseError::ThresholdNotMet { .. } => "threshold-not-met",
        ReleaseError::Expired { .. } => "expired",
        ReleaseError::IncompatibleHardware => "incompatible-hardware",
        ReleaseError::Downgrade { .. } => "downgrade",
        ReleaseError::DigestMismatch { .. } => "digest-mismatch",
        ReleaseError::SizeMismatch { .. } => "size-mismatch",
        ReleaseError::ArtifactTooLong { .. } => "artifact-too-long",
        ReleaseError::Read(_) => "read-error",
        _ => "invalid-release",
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::ReleaseConflict(digest) => ApiError::new(
                StatusCode::CONFLICT,
                "release-conflict",
                format!(
                    "a different release is already published for artifact {digest}; releases are immutable"
                ),
            ),
            DbError::VersionConflict { .. } => {
                ApiError::new(StatusCode::CONFLICT, "version-conflict", e.to_string())
            }
            DbError::NotFound { what, id } => ApiError::not_found(format!("{what} {id} not found")),
            other => ApiError::internal("database", &other),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(digest) => {
                ApiError::not_found(format!("artifact {digest} not found"))
            }
            other => ApiError::internal("artifact store", &other),
        }
    }
}

impl From<UploadError> for ApiError {
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::Verify(e) => ApiError::from_release(&e),
            UploadError::Body(m) => ApiError::bad_request("bad-body", m),
            UploadError::Store(e) => e.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: &self.message,
            cause: self.cause,
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ota\""),
            );
        }
        response
    }
}
