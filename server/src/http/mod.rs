//! The HTTP surface (axum): the operator REST API under `/api/v1` (bearer tokens), public
//! content-addressed downloads, `/metrics` and `/healthz`. Every endpoint is documented in
//! `docs/api.md`.
//!
//! | method | path | role |
//! |---|---|---|
//! | `POST` | `/api/v1/releases` (multipart `release`, `artifact`) | publisher |
//! | `GET` | `/api/v1/releases`, `/api/v1/releases/{sha256}` | any |
//! | `GET` | `/api/v1/devices?filter=EXPR`, `/api/v1/devices/{id}` | any |
//! | `PUT` | `/api/v1/devices/{id}/labels` (server labels) | operator |
//! | `GET` | `/api/v1/events?rollout=&device=&kind=&after=&limit=` | any |
//! | `POST` | `/api/v1/rollouts` (JSON spec), `/api/v1/rollouts/{id}/pause\|resume\|abort` | operator |
//! | `POST` | `/api/v1/rollouts/{id}/approve` | approver (not the creator) |
//! | `GET` | `/api/v1/rollouts`, `/api/v1/rollouts/{id}`, `/api/v1/rollouts/{id}/devices` | any |
//! | `GET` | `/api/v1/flags`, `/api/v1/flags/{name}?device=ID` | any |
//! | `POST` | `/api/v1/flags/{name}/set` (JSON), `/api/v1/flags/{name}/kill\|revive` | operator |
//! | `DELETE` | `/api/v1/flags/{name}` | operator |
//! | `GET` | `/api/v1/trust` (the trust set in force) | any |
//! | `GET` | `/api/v1/replicas` (the coordinator lease and every replica's heartbeat) | any |
//! | `POST` | `/api/v1/trust` (body: a signed trust-set update, key rotation) | publisher |
//! | `GET`, `HEAD` | `/artifacts/{sha256}` (Range, If-Range, ETag) | none (no token) |
//! | `GET` | `/releases/{sha256}` (signed release bytes) | none (no token) |
//! | `GET` | `/metrics` (Prometheus text), `/healthz` | none (no token) |
//! | `GET`, `POST` | `/`, `/login`, `/devices`, ... (the operator console, `crate::console`) | session |
//!
//! Every `/api/v1` request needs an operator token (401 `unauthorized`). "any" is every role;
//! `admin` may do everything. The roles of changing requests are declared once, in
//! `auth::ROLE_TABLE` (one line per route; an unlisted changing route needs `admin`), and
//! checked by one route layer before the body is read: a wrong role is 403 `forbidden-role`
//! and an `access-denied` audit event.
//!
//! Errors are `{ "error": "...", "cause": "..." }` with a stable `cause` ([`ApiError`]).
//! Malformed paths, queries and bodies answer 400; unknown paths 404; nothing panics on input.

mod artifacts;
mod auth;
mod error;
mod flags;
mod forward;
pub(crate) mod listen;
mod releases;
mod rollouts;
mod trust;

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Router, middleware};
use serde::{Deserialize, Serialize};

pub(crate) use auth::constant_time_eq;
pub use auth::{Operator, ROLE_TABLE, needed_role};
pub use error::{ApiError, release_cause};

use crate::clock::Clock;
use crate::config::OperatorConfig;
use crate::db::{Db, DeviceRecord, EventFilter, EventRecord};
use crate::event_kinds::EventKind;
use crate::fleet::Fleet;
use crate::store::ArtifactStore;
use crate::trust::FleetTrust;
use ota_core::filter::Filter;
use ota_core::fleet::RolloutId;

/// Everything a request handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    db: Db,
    store: ArtifactStore,
    trust: FleetTrust,
    operators: Vec<OperatorConfig>,
    clock: Clock,
    fleet: Fleet,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("db", &self.0.db)
            .field("store", &self.0.store)
            .field("operators", &self.0.operators.len())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// The state of a server with these parts.
    pub fn new(
        db: Db,
        store: ArtifactStore,
        trust: FleetTrust,
        operators: Vec<OperatorConfig>,
        clock: Clock,
        fleet: Fleet,
    ) -> Self {
        AppState(Arc::new(Inner {
            db,
            store,
            trust,
            operators,
            clock,
            fleet,
        }))
    }

    /// The fleet coordinator.
    pub fn fleet(&self) -> &Fleet {
        &self.0.fleet
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.0.db
    }

    /// The artifact store.
    pub fn store(&self) -> &ArtifactStore {
        &self.0.store
    }

    /// The fleet trust set in force (rotated by `POST /api/v1/trust`).
    pub fn trust(&self) -> &FleetTrust {
        &self.0.trust
    }

    /// The clock.
    pub fn clock(&self) -> &Clock {
        &self.0.clock
    }

    /// The operator a bearer token belongs to. Every configured token is compared, each in
    /// constant time.
    pub fn operator_for(&self, token: &str) -> Option<Operator> {
        let mut found = None;
        for op in &self.0.operators {
            if auth::constant_time_eq(op.token.as_bytes(), token.as_bytes()) {
                found = Some(Operator {
                    name: op.name.clone(),
                    role: op.role,
                });
            }
        }
        found
    }
}

/// The whole HTTP application: the REST API, the public downloads and the operator console
/// (`crate::console`); `https` says whether it is served over TLS (the console's cookies are
/// then `Secure`).
pub fn router(state: AppState, https: bool) -> Router {
    // Coordinator commands run on the leader: a standby forwards them (`forward.rs`).
    let leader = || middleware::from_fn_with_state(state.clone(), forward::to_leader);
    let api = Router::new()
        .route(
            "/releases",
            // Uploads are bounded by the signed size, not by a body limit.
            post(releases::publish)
                .layer(DefaultBodyLimit::disable())
                .layer(leader())
                .get(releases::list),
        )
        .route("/releases/{digest}", get(releases::get))
        .route("/devices", get(list_devices))
        .route("/devices/{id}", get(get_device))
        .route(
            "/devices/{id}/labels",
            axum::routing::put(set_labels).layer(leader()),
        )
        .route("/events", get(list_events))
        .route(
            "/rollouts",
            post(rollouts::create).layer(leader()).get(rollouts::list),
        )
        .route("/rollouts/{id}", get(rollouts::get))
        .route("/rollouts/{id}/devices", get(rollouts::devices))
        .route(
            "/rollouts/{id}/approve",
            post(rollouts::approve).layer(leader()),
        )
        .route(
            "/rollouts/{id}/pause",
            post(rollouts::pause).layer(leader()),
        )
        .route(
            "/rollouts/{id}/resume",
            post(rollouts::resume).layer(leader()),
        )
        .route(
            "/rollouts/{id}/abort",
            post(rollouts::abort).layer(leader()),
        )
        .route("/flags", get(flags::list).layer(leader()))
        .route(
            "/flags/{name}",
            get(flags::show).delete(flags::delete).layer(leader()),
        )
        .route("/flags/{name}/set", post(flags::set).layer(leader()))
        .route("/flags/{name}/kill", post(flags::kill).layer(leader()))
        .route("/flags/{name}/revive", post(flags::revive).layer(leader()))
        .route(
            "/trust",
            get(trust::show)
                .post(trust::rotate)
                .layer(DefaultBodyLimit::max(trust::MAX_BODY_BYTES))
                .layer(leader()),
        )
        .route("/replicas", get(list_replicas))
        // After routing (the matched route picks the row of the role table), before the body
        // is read; only on routes, so unknown paths stay 404 and wrong methods 405.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_role,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // `layer`, not `route_layer`: unknown /api/v1 paths need a token too.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_operator,
        ));
    // The API on its own, so the console can call it in-process with the same layers.
    let api: Router = Router::new().nest("/api/v1", api).with_state(state.clone());
    let public = Router::new()
        .route("/artifacts/{digest}", get(artifacts::get_artifact))
        .route("/releases/{digest}", get(artifacts::get_release_bytes))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(state.clone());
    api.clone()
        .merge(public)
        .merge(crate::console::router(state, api, https))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint (see docs/api.md)")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "method not allowed on this endpoint (see docs/api.md)",
    )
}

/// A path parameter whose rejection is a JSON 400.
pub(crate) struct PathParam(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| PathParam(p))
            .map_err(|e| ApiError::bad_request("bad-path", e.body_text()))
    }
}

fn bad_query(rejection: QueryRejection) -> ApiError {
    ApiError::bad_request("bad-query", rejection.body_text())
}

/// Query of `GET /api/v1/devices`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DevicesQuery {
    filter: Option<String>,
}

#[derive(Debug, Serialize)]
struct DeviceList {
    devices: Vec<DeviceRecord>,
}

async fn list_devices(
    State(state): State<AppState>,
    query: Result<Query<DevicesQuery>, QueryRejection>,
) -> Result<Json<DeviceList>, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let filter = match query.filter.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => Some(
            Filter::parse(text).map_err(|e| ApiError::bad_request("bad-filter", e.to_string()))?,
        ),
    };
    let devices = state
        .db()
        .list_devices()
        .await?
        .into_iter()
        .filter(|d| filter.as_ref().is_none_or(|f| f.matches(d)))
        .collect();
    Ok(Json(DeviceList { devices }))
}

async fn get_device(
    State(state): State<AppState>,
    PathParam(id): PathParam,
) -> Result<Json<DeviceRecord>, ApiError> {
    device_answer(&state, &id).await
}

/// One device as an answer, or 404.
async fn device_answer(state: &AppState, id: &str) -> Result<Json<DeviceRecord>, ApiError> {
    state
        .db()
        .get_device(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("device {id:?} not found")))
}

/// Body of `PUT /api/v1/devices/{id}/labels`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelsBody {
    labels: std::collections::BTreeMap<String, String>,
}

/// Most server labels per device, and their sizes (as the wire limits for reported labels).
const MAX_LABELS: usize = 32;

/// `PUT /api/v1/devices/{id}/labels`: replaces the operator-set labels (they win over the
/// device's own in filters).
async fn set_labels(
    State(state): State<AppState>,
    axum::extract::Extension(operator): axum::extract::Extension<Operator>,
    PathParam(id): PathParam,
    body: Result<Json<LabelsBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<DeviceRecord>, ApiError> {
    let Json(body) = body.map_err(|e| ApiError::bad_request("bad-body", e.body_text()))?;
    if body.labels.len() > MAX_LABELS
        || body
            .labels
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 128 || v.len() > 256)
    {
        return Err(ApiError::bad_request(
            "bad-body",
            format!("at most {MAX_LABELS} labels, keys 1-128 bytes, values at most 256 bytes"),
        ));
    }
    // The labels and their event in one transaction: an unknown device is a 404 (the
    // transaction is dropped, so nothing is written), and no labels change without their event.
    let mut tx = state.db().begin().await?;
    tx.set_server_labels(&id, &body.labels).await?;
    let event = crate::db::NewEvent::new(
        state.clock().now_i64(),
        &operator.name,
        EventKind::DeviceLabelsSet,
    )
    .device(&id)
    .details(serde_json::json!({ "labels": body.labels }));
    tx.append_event(&event).await?;
    tx.commit().await?;
    // Flag rules may filter on labels: the coordinator evaluates the device's flags again.
    if let Err(e) = state.fleet().device_changed(&id).await {
        tracing::error!("cannot re-evaluate the flags of device {id}: {e}");
    }
    device_answer(&state, &id).await
}

/// Query of `GET /api/v1/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    rollout: Option<RolloutId>,
    device: Option<String>,
    kind: Option<String>,
    actor: Option<String>,
    after: Option<i64>,
    before: Option<i64>,
    limit: Option<u32>,
}

#[derive(Debug, Serialize)]
struct EventList {
    events: Vec<EventRecord>,
    /// Pass as `after` to get the events that follow (the last id returned, or `after`).
    next_after: Option<i64>,
}

/// `GET /api/v1/replicas`: the coordinator lease and every replica's last heartbeat.
#[derive(Debug, Serialize)]
struct ReplicaList {
    /// The replica that answered.
    answered_by: String,
    /// The lease row (holder, epoch, milliseconds to expiry by the database's clock).
    lease: crate::db::LeaseRecord,
    /// Every replica, by id.
    replicas: Vec<crate::db::ReplicaRecord>,
}

async fn list_replicas(State(state): State<AppState>) -> Result<Json<ReplicaList>, ApiError> {
    let lease = state.db().lease().await?;
    let replicas = state.db().list_replicas().await?;
    Ok(Json(ReplicaList {
        answered_by: state.fleet().shared().coordination().replica_id,
        lease,
        replicas,
    }))
}

async fn list_events(
    State(state): State<AppState>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<EventList>, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let mut filter = EventFilter::default();
    filter.rollout = q.rollout;
    filter.device = q.device.filter(|d| !d.is_empty());
    filter.kind = match q.kind.filter(|k| !k.is_empty()) {
        None => None,
        Some(name) => Some(EventKind::parse(&name).ok_or_else(|| {
            ApiError::bad_request("unknown-kind", format!("{name:?} is not an event kind"))
        })?),
    };
    filter.actor = q.actor.filter(|a| !a.is_empty());
    filter.after = q.after;
    filter.before = q.before;
    filter.limit = q.limit.unwrap_or(0);
    let events = state.db().list_events(&filter).await?;
    let next_after = events.last().map(|e| e.id).or(q.after);
    Ok(Json(EventList { events, next_after }))
}

/// `GET /healthz`: this replica's part in coordination (`docs/ha.md`).
#[derive(Debug, Serialize)]
struct Health {
    /// Always `ok`: the status is 200 whenever the server answers.
    status: &'static str,
    replica_id: String,
    /// `leader` while this replica holds the coordinator lease, else `standby`.
    role: &'static str,
    /// `running`, `starting` (lease held, coordinator loading) or `none`.
    coordinator: &'static str,
    epoch: i64,
    leader_url: Option<String>,
    lease_renewed_ms_ago: Option<u64>,
    heartbeat_ms_ago: Option<u64>,
    database_reachable: Option<bool>,
    mqtt_connected: Option<bool>,
}

/// Milliseconds since `at`.
fn ms_ago(at: Option<tokio::time::Instant>) -> Option<u64> {
    let now = crate::clock::monotonic_now();
    at.map(|at| u64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(u64::MAX))
}

/// `GET /healthz`: 200 whenever the server answers (load balancers send to every replica),
/// with this replica's role, epoch, last lease renewal and heartbeat, and what it knows of the
/// database's and the broker's reachability, from memory (no query).
async fn healthz(State(state): State<AppState>) -> Json<Health> {
    let shared = state.fleet().shared();
    let c = shared.coordination();
    let snapshot = shared.snapshot();
    let role = if c.holds_lease {
        crate::lease::Role::Leader
    } else {
        crate::lease::Role::Standby
    };
    let coordinator = match (c.leader, c.holds_lease) {
        (true, _) => "running",
        (false, true) => "starting",
        (false, false) => "none",
    };
    let database_reachable = if c.leader && snapshot.db_unavailable {
        Some(false)
    } else {
        c.database_reachable
    };
    Json(Health {
        status: "ok",
        replica_id: c.replica_id,
        role: role.name(),
        coordinator,
        epoch: c.epoch,
        leader_url: c.leader_url,
        lease_renewed_ms_ago: ms_ago(c.lease_renewed_at),
        heartbeat_ms_ago: ms_ago(c.heartbeat_at),
        database_reachable,
        mqtt_connected: c.leader.then_some(snapshot.mqtt_connected),
    })
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    use std::sync::atomic::Ordering::Relaxed;
    let devices = state.db().device_counts().await?;
    let drifted = state.db().count_drifted().await?;
    let releases = state.db().count_releases().await?;
    let rollouts = state.db().rollout_status_counts().await?;
    let transfers = state.db().transfer_totals().await?;
    let shared = state.fleet().shared();
    let snapshot = shared.snapshot();
    let coordination = shared.coordination();
    // The fleet-wide gauges are the same on every replica: a standby reads the executions
    // from the stored planner states (a scrape through a load balancer hits any replica).
    let executions = if coordination.leader {
        snapshot.executions
    } else {
        crate::fleet::stored_executions(state.db()).await?
    };
    let c = &executions;
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |v: u64| vec![(String::new(), v)];
    family(
        "ota_coordinator_leader",
        "gauge",
        "1 while this replica holds the coordinator lease and runs the coordinator, else 0.",
        &one(u64::from(coordination.leader)),
    );
    family(
        "ota_coordinator_epoch",
        "gauge",
        "The coordinator lease's fencing epoch this replica leads with or last saw.",
        &one(u64::try_from(coordination.epoch).unwrap_or(0)),
    );
    family(
        "ota_coordinator_failovers_total",
        "counter",
        "Times this replica took the coordinator lease over (not counting its first attempt at start).",
        &one(coordination.failovers),
    );
    family(
        "ota_devices",
        "gauge",
        "Devices known to the server.",
        &one(devices.total),
    );
    family(
        "ota_devices_online",
        "gauge",
        "Devices connected to the broker.",
        &one(devices.online),
    );
    family(
        "ota_devices_drifted",
        "gauge",
        "Devices running something other than the last release the server saw them commit, outside any rollout.",
        &one(drifted),
    );
    family(
        "ota_releases",
        "gauge",
        "Releases published.",
        &one(releases),
    );
    let by_state: Vec<(String, u64)> = ota_core::rollout::RolloutStatus::ALL
        .iter()
        .map(|s| {
            (
                format!("{{state=\"{s}\"}}"),
                rollouts.get(s.name()).copied().unwrap_or(0),
            )
        })
        .collect();
    family("ota_rollouts", "gauge", "Rollouts by state.", &by_state);
    let mut samples: Vec<(String, u64)> = c
        .by_state()
        .iter()
        .map(|(s, v)| (format!("{{state=\"{s}\"}}"), u64::from(*v)))
        .collect();
    samples.push(("{state=\"failed\"}".into(), u64::from(c.failed())));
    family(
        "ota_executions",
        "gauge",
        "Device executions in active rollouts, by execution state (a standby reads the stored rollouts).",
        &samples,
    );
    let samples: Vec<(String, u64)> = c
        .failed_by_phase()
        .iter()
        .map(|(p, v)| (format!("{{phase=\"{}\"}}", p.name()), u64::from(*v)))
        .collect();
    family(
        "ota_executions_failed",
        "gauge",
        "Failed device executions in active rollouts, by failure phase (a standby reads the stored rollouts).",
        &samples,
    );
    let downloads = [
        (
            "ota_downloads_total",
            "Artifact downloads devices reported completing (one per device and desired state).",
            transfers.downloads,
        ),
        (
            "ota_download_fetched_bytes_total",
            "Body bytes those downloads fetched over the network (delta chunks and chunk index, or the whole artifact).",
            transfers.fetched_bytes,
        ),
        (
            "ota_download_full_bytes_total",
            "Full artifact sizes of those downloads (what whole-artifact downloads would have fetched).",
            transfers.full_bytes,
        ),
        (
            "ota_download_saved_bytes_total",
            "Bytes delta downloads saved: full minus fetched, per download (0 when it fetched more).",
            transfers.saved_bytes,
        ),
    ];
    for (name, help, value) in downloads {
        family(name, "counter", help, &one(value));
    }
    let counters = &shared.counters;
    family(
        "ota_mqtt_connected",
        "gauge",
        "Whether the server's MQTT client is connected.",
        &one(u64::from(snapshot.mqtt_connected)),
    );
    family(
        "ota_database_unavailable",
        "gauge",
        "Whether the fleet coordinator is read-only, waiting for the database to answer again.",
        &one(u64::from(snapshot.db_unavailable)),
    );
    let mqtt_counters = [
        (
            "ota_mqtt_messages_received_total",
            "MQTT messages received from devices.",
            &counters.mqtt_received,
        ),
        (
            "ota_mqtt_messages_published_total",
            "MQTT messages published (desired states, heartbeat acks).",
            &counters.mqtt_published,
        ),
        (
            "ota_mqtt_messages_rejected_total",
            "MQTT messages refused (malformed, unknown device, not a target).",
            &counters.mqtt_rejected,
        ),
        (
            "ota_mqtt_connections_refused_total",
            "MQTT connections the embedded broker refused (authentication, TLS handshake).",
            &counters.mqtt_auth_refused,
        ),
        (
            "ota_mqtt_acl_denied_total",
            "MQTT connections closed for a topic outside the device's ACL.",
            &counters.mqtt_acl_denied,
        ),
        (
            "ota_mqtt_messages_dropped_total",
            "MQTT messages dropped because their device exceeded its message budget.",
            &counters.mqtt_dropped,
        ),
        (
            "ota_mqtt_flood_disconnects_total",
            "MQTT connections closed because their device kept publishing beyond its budget.",
            &counters.mqtt_flood_disconnects,
        ),
        (
            "ota_events_suppressed_total",
            "Audit events not recorded because their device exceeded its budget for the kind.",
            &counters.events_suppressed,
        ),
    ];
    for (name, help, counter) in mqtt_counters {
        family(name, "counter", help, &one(counter.load(Relaxed)));
    }
    family(
        "ota_webhook_deliveries_total",
        "counter",
        "Webhook deliveries by outcome.",
        &[
            (
                "{outcome=\"delivered\"}".into(),
                counters.webhook_delivered.load(Relaxed),
            ),
            (
                "{outcome=\"failed\"}".into(),
                counters.webhook_failed.load(Relaxed),
            ),
            (
                "{outcome=\"dropped\"}".into(),
                counters.webhook_dropped.load(Relaxed),
            ),
        ],
    );
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        out,
    )
        .into_response())
}
