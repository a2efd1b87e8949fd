//! Public, content-addressed downloads: `GET|HEAD /artifacts/{sha256}` (with Range, If-Range,
//! ETag) and `GET /releases/{sha256}` (the signed release bytes).
//!
//! No token is needed: a device checks every byte against the digest its signed release names,
//! so serving them publicly (or from any mirror) cannot make it install anything else.

use std::ops::Range;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ota_core::digest::Digest;

use super::{ApiError, AppState, PathParam};
use crate::store::StoreError;

/// `Cache-Control` of content-addressed bodies: they never change.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// What a `Range` header asks for, given the representation's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RangeRequest {
    /// No usable range (absent, malformed, several ranges, other unit): send everything.
    Full,
    /// One satisfiable range (end exclusive).
    Partial(Range<u64>),
    /// A valid range that starts at or past the end: 416.
    Unsatisfiable,
}

/// Parses `Range: bytes=N-`, `bytes=N-M` and `bytes=-S` (RFC 9110 §14.1.2). Anything the
/// server does not support is ignored, as the RFC allows, and the full body is sent.
pub(super) fn parse_range(value: &str, size: u64) -> RangeRequest {
    let Some((unit, spec)) = value.split_once('=') else {
        return RangeRequest::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((start, end)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let number = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    let (start, end) = (start.trim(), end.trim());
    if start.is_empty() {
        // Suffix range: the last `n` bytes.
        return match number(end) {
            None => RangeRequest::Full,
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if size == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Partial(size - n.min(size)..size),
        };
    }
    let Some(first) = number(start) else {
        return RangeRequest::Full;
    };
    let last = if end.is_empty() {
        None
    } else {
        match number(end) {
            Some(last) if last >= first => Some(last),
            _ => return RangeRequest::Full,
        }
    };
    if first >= size {
        return RangeRequest::Unsatisfiable;
    }
    let end = last.map_or(size, |l| l.saturating_add(1).min(size));
    RangeRequest::Partial(first..end)
}

/// Whether `If-Range` (absent, or a strong ETag equal to ours) lets the range apply. A date
/// or a weak tag never matches: our ETags are strong and we send no `Last-Modified`.
fn if_range_allows(headers: &HeaderMap, etag: &str) -> bool {
    match headers.get(header::IF_RANGE) {
        None => true,
        Some(v) => v.to_str().is_ok_and(|v| v.trim() == etag),
    }
}

/// Whether `If-None-Match` lists our ETag (or `*`).
fn if_none_match_hits(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

pub(super) fn parse_digest(text: &str) -> Result<Digest, ApiError> {
    text.parse().map_err(|e| {
        ApiError::bad_request(
            "bad-digest",
            format!("{text:?} is not a sha256 digest: {e}"),
        )
    })
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `GET|HEAD /artifacts/{sha256}`.
pub(super) async fn get_artifact(
    State(state): State<AppState>,
    method: Method,
    PathParam(digest): PathParam,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let digest = parse_digest(&digest)?;
    let store = state.store();
    let size = store
        .head(&digest)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("artifact {digest} not found")))?;
    let etag = format!("\"{digest}\"");

    let mut response_headers = HeaderMap::new();
    response_headers.insert(header::ETAG, header_value(&etag));
    response_headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    response_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));

    if if_none_match_hits(&headers, &etag) {
        return Ok((StatusCode::NOT_MODIFIED, response_headers).into_response());
    }

    let request = match headers.get(header::RANGE) {
        Some(range) if if_range_allows(&headers, &etag) => match range.to_str() {
            Ok(range) => parse_range(range, size),
            Err(_) => RangeRequest::Full,
        },
        _ => RangeRequest::Full,
    };
    let (status, range) = match request {
        RangeRequest::Full => (StatusCode::OK, None),
        RangeRequest::Partial(r) => (StatusCode::PARTIAL_CONTENT, Some(r)),
        RangeRequest::Unsatisfiable => {
            response_headers.insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes */{size}")),
            );
            let error = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range-not-satisfiable",
                format!("the artifact has {size} bytes"),
            );
            return Ok((response_headers, error).into_response());
        }
    };
    let served = range.clone().unwrap_or(0..size);
    if let Some(r) = &range {
        response_headers.insert(
            header::CONTENT_RANGE,
            header_value(&format!(
                "bytes {}-{}/{size}",
                r.start,
                r.end.saturating_sub(1)
            )),
        );
    }
    response_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response_headers.insert(
        header::CONTENT_LENGTH,
        header_value(&(served.end - served.start).to_string()),
    );
    if method == Method::HEAD {
        return Ok((status, response_headers).into_response());
    }
    let body = match store.get(&digest, range).await {
        Ok(body) => body,
        Err(StoreError::RangeNotSatisfiable { .. }) => {
            return Err(ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range-not-satisfiable",
                format!("the artifact has {size} bytes"),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    Ok((status, response_headers, Body::from_stream(body.stream)).into_response())
}

/// `GET /releases/{sha256}`: the signed release bytes of a published release.
pub(super) async fn get_release_bytes(
    State(state): State<AppState>,
    PathParam(digest): PathParam,
) -> Result<Response, ApiError> {
    let digest = parse_digest(&digest)?;
    let bytes = state
        .db()
        .get_release_bytes(&digest)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("release {digest} not found")))?;
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/cose; cose-type=\"cose-sign\""),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    Ok((headers, bytes).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range("bytes=0-", 10), Partial(0..10));
        assert_eq!(parse_range("bytes=3-", 10), Partial(3..10));
        assert_eq!(parse_range("bytes=3-5", 10), Partial(3..6));
        assert_eq!(parse_range("bytes=3-500", 10), Partial(3..10));
        assert_eq!(parse_range("bytes=-4", 10), Partial(6..10));
        assert_eq!(parse_range("bytes=-40", 10), Partial(0..10));
        assert_eq!(parse_range("bytes=10-", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-3", 10), Full);
        assert_eq!(parse_range("bytes=0-1,3-4", 10), Full);
        assert_eq!(parse_range("items=0-1", 10), Full);
        assert_eq!(parse_range("bytes=x-", 10), Full);
        assert_eq!(parse_range("bytes=+1-", 10), Full);
        assert_eq!(parse_range("bytes=99999999999999999999999-", 10), Full);
    }
}
