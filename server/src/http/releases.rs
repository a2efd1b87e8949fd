//! Release intake and listing: `POST /api/v1/releases`, `GET /api/v1/releases[/{sha256}]`.
//!
//! A publish is one `multipart/form-data` request with two or three parts, in this order:
//!
//! 1. `release`: the signed release bytes (at most `Limits::MAX_RELEASE_BYTES`);
//! 2. `chunk_index`: the artifact's chunk index, exactly when the manifest names one (key 11);
//! 3. `artifact`: the artifact, streamed.
//!
//! A chunk index must have the SHA-256 and size the signed manifest names, decode as a chunk
//! index, and describe an artifact of the manifest's size (`422 chunk-index-missing`,
//! `chunk-index-mismatch`, `chunk-index-invalid`; a `chunk_index` part for a release that names
//! none is `400 chunk-index-unexpected`). It is stored in the artifact store under its own
//! digest, after the artifact and before the release row, so `GET /artifacts/{index sha256}`
//! serves it (Range, ETag) whenever the release is listed.
//!
//! The release is verified against the fleet trust set in force (the configured keys or the
//! last accepted rotation; signatures, format version, expiry; no
//! hardware class or security floor: those are per device) before a byte of the artifact is
//! read. The artifact is hashed while it streams into the store, refused at the first byte past
//! the signed size, and made visible only when its size and SHA-256 match; only then is the
//! release row committed (with its audit event). Every refusal is answered with
//! `{ "error", "cause" }` and recorded as a `release-rejected` audit event.
//!
//! Releases are immutable, with one exception: a *countersignature*. The same artifact with
//! the same product, version, security version and size, signed again (typically by the keys
//! in force after a rotation), replaces the stored signed envelope and its signers
//! (`200 {"status": "re-signed"}`, a `release-resigned` event): rollbacks to that release are
//! then sent with signatures devices trust. Any other difference for a published artifact is
//! `409 release-conflict`; another artifact under a published product and version is
//! `409 version-conflict`, naming the release already published.

use axum::Json;
use axum::extract::multipart::{Field, MultipartRejection};
use axum::extract::{Extension, Multipart, State};
use axum::http::StatusCode;
use ota_core::delta::ChunkIndex;
use ota_core::digest::Digest;
use ota_core::release::{ArtifactVerifier, ChunkIndexRef, Limits, Policy, SignedRelease};
use serde::Serialize;
use serde_json::json;

use super::artifacts::parse_digest;
use super::{ApiError, AppState, Operator, PathParam};
use crate::db::{InsertOutcome, NewEvent, ReleaseRecord};
use crate::event_kinds::EventKind;
use crate::store::{PutOutcome, UploadError};

/// The answer to a successful publish.
#[derive(Debug, Serialize)]
pub(super) struct PublishResponse {
    /// `published`, `already-present` or `re-signed`.
    status: &'static str,
    /// The release.
    release: ReleaseRecord,
}

/// `GET /api/v1/releases` body.
#[derive(Debug, Serialize)]
pub(super) struct ReleaseList {
    releases: Vec<ReleaseView>,
}

/// A release as listed: its record, and whether the trust set in force still verifies its
/// stored signatures (`false` after a rotation revoked its keys: devices would refuse it,
/// also as a rollback target, until it is countersigned).
#[derive(Debug, Serialize)]
pub(super) struct ReleaseView {
    #[serde(flatten)]
    release: ReleaseRecord,
    trusted: bool,
    /// The sha256 of the release's chunk index (served at `/artifacts/{sha256}`), or `null`
    /// when it names none.
    chunk_index: Option<String>,
}

impl ReleaseView {
    async fn of(state: &AppState, release: ReleaseRecord) -> Result<Self, ApiError> {
        let bytes = state.db().get_release_bytes(&release.digest).await?;
        let set = state.trust().set();
        let decoded = bytes.and_then(|b| SignedRelease::decode(&b).ok());
        let trusted = decoded
            .as_ref()
            .is_some_and(|r| r.verify_signatures(&set).is_ok());
        let chunk_index = decoded
            .and_then(|r| r.manifest.chunk_index)
            .map(|c| c.digest().to_string());
        Ok(ReleaseView {
            release,
            trusted,
            chunk_index,
        })
    }
}

/// `POST /api/v1/releases`.
pub(super) async fn publish(
    State(state): State<AppState>,
    Extension(operator): Extension<Operator>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<(StatusCode, Json<PublishResponse>), ApiError> {
    let mut digest = None;
    let result = match multipart {
        Ok(mut multipart) => publish_inner(&state, &operator, &mut multipart, &mut digest).await,
        Err(rejection) => Err(ApiError::bad_request(
            "bad-multipart",
            format!(
                "expected multipart/form-data with parts `release`, `chunk_index` (if the \
                 release names one) and `artifact`: {}",
                rejection.body_text()
            ),
        )),
    };
    if let Err(error) = &result {
        tracing::warn!(operator = %operator.name, cause = error.cause, "release refused: {}", error.message);
        let mut details = json!({ "cause": error.cause, "error": error.message });
        if let (Some(d), Some(map)) = (digest, details.as_object_mut()) {
            map.insert("digest".into(), json!(d.to_string()));
        }
        let event = NewEvent::new(
            state.clock().now_i64(),
            &operator.name,
            EventKind::ReleaseRejected,
        )
        .details(details);
        if let Err(e) = state.db().append_event(&event).await {
            tracing::error!("cannot record the release-rejected event: {e}");
        }
    }
    result
}

async fn publish_inner(
    state: &AppState,
    operator: &Operator,
    multipart: &mut Multipart,
    digest_out: &mut Option<Digest>,
) -> Result<(StatusCode, Json<PublishResponse>), ApiError> {
    // Part 1: the signed release, bounded.
    let field = next_field(multipart, "release").await?;
    let bytes = read_bounded(field, Limits::MAX_RELEASE_BYTES).await?;
    let signed = SignedRelease::decode(&bytes).map_err(|e| ApiError::from_release(&e))?;
    *digest_out = Some(signed.manifest.artifact_digest());
    let policy = Policy {
        hardware_class: None,
        security_floor: 0,
        now: state.clock().now(),
    };
    let verified = signed
        .verify(&state.trust().set(), &policy)
        .map_err(|e| ApiError::from_release(&e))?;
    let digest = verified.manifest.artifact_digest();

    // Refuse a conflicting release before reading the artifact; a countersignature (same
    // artifact, product, version, security version and size) re-signs the stored one.
    let m = &verified.manifest;
    if let Some(other) = state
        .db()
        .other_release_of_version(&m.product, &m.version, &digest)
        .await?
    {
        return Err(crate::db::DbError::VersionConflict {
            product: other.product,
            version: other.version,
            existing: other.digest,
        }
        .into());
    }
    let mut resign = false;
    if let Some(existing) = state.db().get_release_bytes(&digest).await?
        && existing != bytes
    {
        let same = state.db().get_release(&digest).await?.is_some_and(|r| {
            r.product == m.product
                && r.version == m.version
                && r.security_version == m.security_version
                && r.size == m.artifact_size
        });
        if !same {
            return Err(crate::db::DbError::ReleaseConflict(digest).into());
        }
        resign = true;
    }

    // Part 2 (when the manifest names one): the chunk index, checked against the signed
    // reference before it is parsed.
    let index = match verified.manifest.chunk_index {
        Some(named) => Some((
            named,
            read_chunk_index(multipart, named, m.artifact_size).await?,
        )),
        None => None,
    };

    // Part 3: the artifact, verified while it streams into the store.
    let field = next_part(multipart).await?;
    if index.is_none() && field.as_ref().and_then(Field::name) == Some("chunk_index") {
        return Err(ApiError::bad_request(
            "chunk-index-unexpected",
            "the release names no chunk index: send no `chunk_index` part",
        ));
    }
    let mut field = named(field, "artifact")?;
    let verifier = ArtifactVerifier::for_manifest(&verified.manifest);
    let mut upload = state.store().begin_upload(verifier, digest).await?;
    loop {
        let chunk = match field.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => {
                upload.abort().await;
                return Err(UploadError::Body(e.body_text()).into());
            }
        };
        if let Err(e) = upload.write(&chunk).await {
            upload.abort().await;
            return Err(e.into());
        }
    }
    let stored = upload.finish().await?;
    if let Some((named, bytes)) = &index {
        store_chunk_index(state, *named, bytes).await?;
    }

    // The artifact checked out: commit the release row and its audit event together.
    let now = state.clock().now_i64();
    let record = ReleaseRecord::from_verified(&verified, now, &operator.name);
    if resign {
        return resign_release(state, operator, record, &bytes).await;
    }
    let event = NewEvent::new(now, &operator.name, EventKind::ReleasePublished).details(json!({
        "digest": digest.to_string(),
        "product": record.product,
        "version": record.version,
        "security_version": record.security_version,
        "size": record.size,
        "signers": record.signers,
        "artifact": match stored { PutOutcome::Stored => "stored", _ => "already-present" },
        "chunk_index": index.as_ref().map(|(named, _)| json!({
            "digest": named.digest().to_string(),
            "size": named.size,
        })),
    }));
    let outcome = state
        .db()
        .insert_release(&record, &bytes, Some(&event))
        .await?;
    let (status, text, record) = match outcome {
        InsertOutcome::Inserted => {
            tracing::info!(operator = %operator.name, %digest, version = %record.version, "release published");
            (StatusCode::CREATED, "published", record)
        }
        _ => {
            let stored = state.db().get_release(&digest).await?.unwrap_or(record);
            (StatusCode::OK, "already-present", stored)
        }
    };
    Ok((
        status,
        Json(PublishResponse {
            status: text,
            release: record,
        }),
    ))
}

/// Stores a countersigned envelope for an already published artifact (see the module docs),
/// and tells the fleet coordinator, which sends the new envelope from then on.
async fn resign_release(
    state: &AppState,
    operator: &Operator,
    record: ReleaseRecord,
    bytes: &[u8],
) -> Result<(StatusCode, Json<PublishResponse>), ApiError> {
    let digest = record.digest;
    let event = NewEvent::new(
        record.created_at,
        &operator.name,
        EventKind::ReleaseResigned,
    )
    .details(json!({
        "digest": digest.to_string(),
        "product": record.product,
        "version": record.version,
        "security_version": record.security_version,
        "signers": record.signers,
    }));
    state.db().resign_release(&record, bytes, &event).await?;
    if let Err(e) = state.fleet().release_changed(digest).await {
        tracing::error!("cannot tell the fleet coordinator about re-signed release {digest}: {e}");
    }
    tracing::info!(operator = %operator.name, %digest, version = %record.version, "release re-signed");
    let stored = state.db().get_release(&digest).await?.unwrap_or(record);
    Ok((
        StatusCode::OK,
        Json(PublishResponse {
            status: "re-signed",
            release: stored,
        }),
    ))
}

/// Reads the `chunk_index` part (the next one) and checks it against the signed reference:
/// SHA-256 and size first, then that it decodes and describes an artifact of `artifact_size`.
async fn read_chunk_index(
    multipart: &mut Multipart,
    named: ChunkIndexRef,
    artifact_size: u64,
) -> Result<Vec<u8>, ApiError> {
    let field = match next_part(multipart).await? {
        Some(field) if field.name() == Some("chunk_index") => field,
        other => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "chunk-index-missing",
                format!(
                    "the release names chunk index {} ({} bytes): send it as the part \
                     `chunk_index` between `release` and `artifact` (got {})",
                    named.digest(),
                    named.size,
                    other
                        .as_ref()
                        .map_or("no more parts".to_string(), |f| format!(
                            "the part `{}`",
                            f.name().unwrap_or("")
                        ))
                ),
            ));
        }
    };
    let mismatch = |what: String| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "chunk-index-mismatch",
            format!(
                "the chunk index is not the one the release names (sha256 {}, {} bytes): {what}",
                named.digest(),
                named.size
            ),
        )
    };
    let limit = usize::try_from(named.size).unwrap_or(usize::MAX);
    let bytes = read_part(field, limit, |limit| {
        mismatch(format!("it is longer than {limit} bytes"))
    })
    .await?;
    if bytes.len() != limit {
        return Err(mismatch(format!("it has {} bytes", bytes.len())));
    }
    let actual = Digest::of(&bytes);
    if actual != named.digest() {
        return Err(mismatch(format!("its sha256 is {actual}")));
    }
    let invalid = |message: String| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "chunk-index-invalid",
            message,
        )
    };
    let index = ChunkIndex::from_cbor(&bytes).map_err(|e| invalid(e.to_string()))?;
    if index.artifact_size != artifact_size {
        return Err(invalid(format!(
            "the chunk index describes an artifact of {} bytes, the release one of {artifact_size}",
            index.artifact_size
        )));
    }
    Ok(bytes)
}

/// Stores a checked chunk index in the artifact store under its own digest.
async fn store_chunk_index(
    state: &AppState,
    named: ChunkIndexRef,
    bytes: &[u8],
) -> Result<(), ApiError> {
    let verifier = ArtifactVerifier::new(named.digest(), named.size);
    let mut upload = state.store().begin_upload(verifier, named.digest()).await?;
    if let Err(e) = upload.write(bytes).await {
        upload.abort().await;
        return Err(e.into());
    }
    upload.finish().await?;
    Ok(())
}

/// The next part, if any (a malformed body is `400 bad-multipart`).
async fn next_part<'m>(multipart: &'m mut Multipart) -> Result<Option<Field<'m>>, ApiError> {
    multipart.next_field().await.map_err(|e| {
        ApiError::bad_request(
            "bad-multipart",
            format!("malformed multipart body: {}", e.body_text()),
        )
    })
}

async fn next_field<'m>(
    multipart: &'m mut Multipart,
    name: &'static str,
) -> Result<Field<'m>, ApiError> {
    named(next_part(multipart).await?, name)
}

/// `field` if it is the part `name`, else `400 bad-multipart`.
fn named<'m>(field: Option<Field<'m>>, name: &'static str) -> Result<Field<'m>, ApiError> {
    const ORDER: &str =
        "send `release`, then `chunk_index` if the release names one, then `artifact`";
    match field {
        Some(field) if field.name() == Some(name) => Ok(field),
        Some(field) => Err(ApiError::bad_request(
            "bad-multipart",
            format!(
                "expected the part `{name}`, got `{}` ({ORDER})",
                field.name().unwrap_or("")
            ),
        )),
        None => Err(ApiError::bad_request(
            "bad-multipart",
            format!("the part `{name}` is missing ({ORDER})"),
        )),
    }
}

async fn read_bounded(field: Field<'_>, limit: usize) -> Result<Vec<u8>, ApiError> {
    read_part(field, limit, |limit| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "release-too-large",
            format!("the signed release is larger than {limit} bytes"),
        )
    })
    .await
}

/// Reads a whole part of at most `limit` bytes; a longer one is `too_long(limit)`.
async fn read_part(
    mut field: Field<'_>,
    limit: usize,
    too_long: impl Fn(usize) -> ApiError,
) -> Result<Vec<u8>, ApiError> {
    let mut bytes = Vec::new();
    loop {
        match field.chunk().await {
            Ok(Some(chunk)) => {
                if bytes.len() + chunk.len() > limit {
                    return Err(too_long(limit));
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(bytes),
            Err(e) => return Err(UploadError::Body(e.body_text()).into()),
        }
    }
}

/// `GET /api/v1/releases`.
pub(super) async fn list(State(state): State<AppState>) -> Result<Json<ReleaseList>, ApiError> {
    let mut releases = Vec::new();
    for release in state.db().list_releases().await? {
        releases.push(ReleaseView::of(&state, release).await?);
    }
    Ok(Json(ReleaseList { releases }))
}

/// `GET /api/v1/releases/{sha256}`.
pub(super) async fn get(
    State(state): State<AppState>,
    PathParam(digest): PathParam,
) -> Result<Json<ReleaseView>, ApiError> {
    let digest = parse_digest(&digest)?;
    let release = state
        .db()
        .get_release(&digest)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("release {digest} not found")))?;
    Ok(Json(ReleaseView::of(&state, release).await?))
}
