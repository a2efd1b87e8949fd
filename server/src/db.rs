//! The repository: releases, devices, rollouts and the audit log, on SQLite or PostgreSQL.
//!
//! One code path serves both databases through `sqlx::AnyPool`: the SQL is portable (`$N`
//! placeholders, `ON CONFLICT ... DO UPDATE`, `RETURNING`), times are `BIGINT` unix seconds,
//! booleans are `BIGINT` 0/1, JSON is `TEXT`. Only the schema differs (`BLOB`/`BYTEA`, identity
//! columns), so each dialect has its own migrations, embedded in the binary:
//! `server/migrations/` (SQLite) and `server/migrations-postgres/` (PostgreSQL), applied by
//! [`Db::connect`].
//!
//! Every change that touches more than one row (a release and its audit event, a rollout state
//! change and its events) runs in one transaction.
//!
//! # Tables
//!
//! | table | key | what |
//! |---|---|---|
//! | `releases` | artifact sha256 (hex) | verified releases: manifest fields, signers, the signed bytes |
//! | `devices` | device id | last reported state, labels, `online`, `drifted`, `last_seen` |
//! | `rollouts` | identity | release, device filter, spec (JSON), planner state (CBOR), status |
//! | `events` | identity | the append-only audit log |
//! | `desired` | device id | the desired state last published to each device (generation, payload) |
//! | `flags` | flag name | feature flag definitions (CBOR `FlagDefinition`) |
//! | `flag_state` | `1` | the fleet's flag-state version |
//! | `flag_changes` | identity | the flag audit trail (CBOR `FlagChange`: who, when, old → new) |
//! | `trust_updates` | sequence | every accepted signed trust-set update (key rotation); the newest is in force |
//! | `transfers` | device id, generation | what each download cost (fetched vs full bytes), first report only |
//! | `coordinator_lease` | `1` | the coordinator lease: holder, fencing epoch, URL, expiry (database clock); see `lease.rs` |
//! | `replicas` | replica id | every replica's role, epoch, URL and last heartbeat |
//!
//! Reads of the whole registry that must stay fast at 100,000 devices have their own modules:
//! [`Db::device_page`] (one page of the filtered, sorted list, `device_page.rs`) and
//! [`Db::device_tally`] (counts by version, class and result, `device_tally.rs`).
//!
//! Batched writes (the fleet coordinator's device reports, planner states, desired states and
//! their audit events) go through one [`DbTx`] per batch ([`Db::begin`]). Every committed audit
//! event is also handed to the [`EventSink`] (webhooks), if one is installed.

mod device_page;
mod device_tally;
mod device_trust;

pub use device_page::{DevicePage, DevicePageQuery, DeviceSort, SortDirection};
pub use device_tally::DeviceTally;
pub use device_trust::{SequenceCount, TrustTally};

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use ota_core::digest::Digest;
use ota_core::flags::{FlagChange, FlagDefinition, FlagSet};
use ota_core::rollout::DesiredKind;
use ota_core::wire::{ExecutionState, ReportedState, UpdateOutcome, WireMessage};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::AnyConnection;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{MigrateError, Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Row, SqlSafeStr};

use crate::event_kinds::EventKind;

mod lease;
pub use lease::{AcquireOutcome, Fence, LeaseRecord, RenewOutcome, ReplicaRecord};

/// The embedded migrations: (version, description, SQLite SQL, PostgreSQL SQL).
const MIGRATIONS: &[(i64, &str, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../migrations/0001_init.sql"),
        include_str!("../migrations-postgres/0001_init.sql"),
    ),
    (
        2,
        "desired",
        include_str!("../migrations/0002_desired.sql"),
        include_str!("../migrations-postgres/0002_desired.sql"),
    ),
    (
        3,
        "flags",
        include_str!("../migrations/0003_flags.sql"),
        include_str!("../migrations-postgres/0003_flags.sql"),
    ),
    (
        4,
        "trust",
        include_str!("../migrations/0004_trust.sql"),
        include_str!("../migrations-postgres/0004_trust.sql"),
    ),
    (
        5,
        "transfers",
        include_str!("../migrations/0005_transfers.sql"),
        include_str!("../migrations-postgres/0005_transfers.sql"),
    ),
    (
        6,
        "ha",
        include_str!("../migrations/0006_ha.sql"),
        include_str!("../migrations-postgres/0006_ha.sql"),
    ),
    (
        7,
        "device_trust",
        include_str!("../migrations/0007_device_trust.sql"),
        include_str!("../migrations-postgres/0007_device_trust.sql"),
    ),
];

/// Most events [`Db::list_events`] returns at once.
pub const MAX_EVENT_PAGE: u32 = 1000;

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The URL names a database this build does not support.
    #[error("unsupported database URL (use sqlite: or postgres://): {0}")]
    UnsupportedUrl(String),
    /// Connecting to the database failed.
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
    /// Applying the schema migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] MigrateError),
    /// A query failed.
    #[error("database query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// A different release is already stored for this artifact digest (releases are
    /// immutable; only a countersignature of the same product, version and security version
    /// may replace its signatures).
    #[error("a different release is already published for artifact {0}")]
    ReleaseConflict(Digest),
    /// Another artifact is already published under this product and version.
    #[error("release {product} {version} is already published with another artifact ({existing})")]
    VersionConflict {
        /// The product.
        product: String,
        /// The version.
        version: String,
        /// The artifact digest of the release already published.
        existing: Digest,
    },
    /// The row to change does not exist.
    #[error("{what} {id} not found")]
    NotFound {
        /// What was looked for (`device`, `rollout`).
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// A value does not fit the database (e.g. a size above `i64::MAX`).
    #[error("value out of range for the database: {0}")]
    OutOfRange(&'static str),
    /// A stored value cannot be decoded (bad JSON or digest in a row).
    #[error("corrupt database row: {0}")]
    Corrupt(String),
    /// Fencing: another replica took the coordinator lease since `epoch` (see
    /// [`DbTx::check_fence`]); nothing of the transaction was written.
    #[error("fenced: another replica took the coordinator lease after epoch {epoch}")]
    Fenced {
        /// The epoch this replica held.
        epoch: i64,
    },
}

impl DbError {
    /// Whether the database is unreachable or refusing work for now (connection lost, pool
    /// timed out, server shutting down, SQLite busy): retrying later may succeed. Any other
    /// error is about what was asked (a value, a row, a constraint).
    pub fn is_unavailable(&self) -> bool {
        match self {
            DbError::Connect(_) => true,
            DbError::Query(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::BeginFailed => true,
                sqlx::Error::Database(d) => d.code().is_some_and(|c| unavailable_code(&c)),
                _ => false,
            },
            _ => false,
        }
    }
}

/// Whether a database error code says "unavailable": PostgreSQL SQLSTATE classes 08
/// (connection exception), 53 (insufficient resources) and 57 (operator intervention, e.g.
/// shutting down); SQLite's BUSY and LOCKED (primary codes 5 and 6, any extended code).
fn unavailable_code(code: &str) -> bool {
    if code.len() == 5 {
        return ["08", "53", "57"]
            .iter()
            .any(|class| code.starts_with(class));
    }
    code.parse::<u32>().is_ok_and(|n| matches!(n & 0xff, 5 | 6))
}

/// How long a query waits for a pooled connection by default ([`Db::connect_with`]).
pub const DEFAULT_ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Which database a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DbKind {
    /// SQLite (a file, or memory).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

impl DbKind {
    /// The kind a URL names.
    pub fn from_url(url: &str) -> Result<Self, DbError> {
        if url.starts_with("sqlite:") {
            Ok(DbKind::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(DbKind::Postgres)
        } else {
            Err(DbError::UnsupportedUrl(redact_url(url)))
        }
    }
}

/// The URL without its password, for error messages, logs and `Debug`: the password of
/// `scheme://user:password@host` and the value of a `password=` query parameter become `***`.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut out = match (base.find("://"), base.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &base[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &base[..scheme_end + 3], &base[at..]),
                None => base.to_string(),
            }
        }
        _ => base.to_string(),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => param.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

/// A release as stored (metadata; the signed bytes are fetched with
/// [`Db::get_release_bytes`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ReleaseRecord {
    /// The artifact's SHA-256: the release's name everywhere.
    #[serde(serialize_with = "ser_digest")]
    pub digest: Digest,
    /// Product name.
    pub product: String,
    /// Human version string.
    pub version: String,
    /// Security version (anti-rollback).
    pub security_version: u32,
    /// Artifact size in bytes.
    pub size: u64,
    /// Compatible hardware classes.
    pub hardware: Vec<String>,
    /// Manifest creation time, unix seconds.
    pub created: u64,
    /// Manifest expiry, unix seconds.
    pub expires: Option<u64>,
    /// Installer hint.
    pub installer: Option<String>,
    /// Key ids (hex) whose signatures verified at intake.
    pub signers: Vec<String>,
    /// When it was published to this server, unix seconds.
    pub created_at: i64,
    /// The operator who published it.
    pub published_by: String,
}

impl ReleaseRecord {
    /// The record of a verified release, published at `created_at` by `published_by`.
    pub fn from_verified(
        verified: &ota_core::release::VerifiedRelease,
        created_at: i64,
        published_by: impl Into<String>,
    ) -> Self {
        let m = &verified.manifest;
        ReleaseRecord {
            digest: m.artifact_digest(),
            product: m.product.clone(),
            version: m.version.clone(),
            security_version: m.security_version,
            size: m.artifact_size,
            hardware: m.hardware.clone(),
            created: m.created,
            expires: m.expires,
            installer: m.installer.clone(),
            signers: verified.signers.iter().map(|k| k.to_string()).collect(),
            created_at,
            published_by: published_by.into(),
        }
    }
}

/// What [`Db::insert_release`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InsertOutcome {
    /// The row is new.
    Inserted,
    /// The identical release was already stored: nothing changed.
    AlreadyPresent,
}

/// What a device reported: a full snapshot of its state (the MQTT layer maps the wire message
/// to this).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceReport {
    /// Hardware class (kept from earlier reports when `None`).
    pub hardware_class: Option<String>,
    /// Labels the device reports about itself.
    pub labels: BTreeMap<String, String>,
    /// Version string of the running release.
    pub running_version: Option<String>,
    /// Artifact digest of the running release.
    pub running_digest: Option<Digest>,
    /// Digest of the cached known-good release.
    pub known_good_digest: Option<Digest>,
    /// Digest of the last release the device committed.
    pub last_committed_digest: Option<Digest>,
    /// The outcome of the last update attempt (e.g. `committed`, `rolled-back`).
    pub last_result: Option<String>,
    /// Power state (battery, charger), as JSON.
    pub power: Option<serde_json::Value>,
    /// Inventory (OS, kernel, memory, disk), as JSON (kept from earlier reports when `None`).
    pub inventory: Option<serde_json::Value>,
    /// The reported-state message as received (kept for diagnosis).
    pub reported: Option<Vec<u8>>,
}

/// A device as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DeviceRecord {
    /// Device id.
    pub id: String,
    /// Hardware class.
    pub hardware_class: Option<String>,
    /// Labels the device reports.
    pub labels: BTreeMap<String, String>,
    /// Labels set by operators; they win over reported labels of the same key.
    pub server_labels: BTreeMap<String, String>,
    /// Version string of the running release.
    pub running_version: Option<String>,
    /// Artifact digest of the running release.
    #[serde(serialize_with = "ser_opt_digest")]
    pub running_digest: Option<Digest>,
    /// Digest of the cached known-good release.
    #[serde(serialize_with = "ser_opt_digest")]
    pub known_good_digest: Option<Digest>,
    /// Digest of the last committed release.
    #[serde(serialize_with = "ser_opt_digest")]
    pub last_committed_digest: Option<Digest>,
    /// Outcome of the last update attempt.
    pub last_result: Option<String>,
    /// The last update outcome as the device reported it (see [`last_outcome_json`]):
    /// the state, its cause and detail, the release it concerns (for `rolled-back`: the
    /// release the device fell back from), the rollout and the generation. Absent before the
    /// device reported one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_outcome: Option<serde_json::Value>,
    /// Power state.
    pub power: Option<serde_json::Value>,
    /// Inventory.
    pub inventory: Option<serde_json::Value>,
    /// First time the server heard of the device, unix seconds.
    pub first_seen: i64,
    /// Last time the server heard of the device (report, connect, disconnect), unix seconds.
    pub last_seen: i64,
    /// Connected to the broker.
    pub online: bool,
    /// Its running release differs from the one it should run.
    pub drifted: bool,
    /// The last desired-state generation the device reported acting on.
    pub reported_generation: u64,
    /// What the device's newest recorded download cost (see [`TransferRecord`]); absent
    /// before its first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transfer: Option<TransferView>,
}

/// A download's cost as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TransferView {
    /// Body bytes fetched over the network (chunk index included).
    pub fetched_bytes: u64,
    /// The artifact's full size.
    pub full_bytes: u64,
    /// `full_bytes - fetched_bytes`, or 0 when the download fetched more.
    pub saved_bytes: u64,
    /// The desired-state generation it was for.
    pub generation: u64,
    /// The release it fetched, when the device named it.
    #[serde(serialize_with = "ser_opt_digest")]
    pub release: Option<Digest>,
}

impl TransferView {
    /// The view of `fetched` body bytes against `full` artifact bytes.
    pub fn new(fetched: u64, full: u64, generation: u64, release: Option<Digest>) -> Self {
        TransferView {
            fetched_bytes: fetched,
            full_bytes: full,
            saved_bytes: full.saturating_sub(fetched),
            generation,
            release,
        }
    }
}

/// One download's cost as a device reported it (a row of `transfers`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransferRecord {
    /// The device.
    pub device_id: String,
    /// The desired-state generation it was for.
    pub generation: u64,
    /// The desired state's rollout, when it had one.
    pub rollout_id: Option<i64>,
    /// The release's artifact digest, when the device named it.
    pub digest: Option<Digest>,
    /// Body bytes fetched.
    pub fetched: u64,
    /// The artifact's full size.
    pub size: u64,
}

/// Download totals: of a rollout ([`Db::rollout_transfers`]) or of the fleet
/// ([`Db::transfer_totals`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TransferTotals {
    /// Distinct devices with a recorded download.
    pub devices: u64,
    /// Recorded downloads (one per device and desired state).
    pub downloads: u64,
    /// Body bytes fetched, summed.
    pub fetched_bytes: u64,
    /// Full artifact sizes, summed.
    pub full_bytes: u64,
    /// `full - fetched` per download (0 when it fetched more), summed.
    pub saved_bytes: u64,
}

impl DeviceRecord {
    /// The value of label `key`: the server label if set, else the reported one.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.server_labels
            .get(key)
            .or_else(|| self.labels.get(key))
            .map(String::as_str)
    }
}

/// The registry row is what every device filter is evaluated over (listings, rollout
/// targets, flags).
impl ota_core::filter::DeviceFacts for DeviceRecord {
    fn id(&self) -> &str {
        &self.id
    }
    fn hardware_class(&self) -> Option<&str> {
        self.hardware_class.as_deref()
    }
    fn running_version(&self) -> Option<&str> {
        self.running_version.as_deref()
    }
    fn running_digest(&self) -> Option<Digest> {
        self.running_digest
    }
    fn last_result(&self) -> Option<&str> {
        self.last_result.as_deref()
    }
    fn label(&self, key: &str) -> Option<&str> {
        DeviceRecord::label(self, key)
    }
    fn online(&self) -> bool {
        self.online
    }
    fn drifted(&self) -> bool {
        self.drifted
    }
}

/// Rollout targets are selected over the registry rows (core's `fleet::targeting`).
impl ota_core::fleet::targeting::Candidate for DeviceRecord {
    fn known_good(&self) -> Option<Digest> {
        self.known_good_digest
    }
    fn last_committed(&self) -> Option<Digest> {
        self.last_committed_digest
    }
}

/// Online and total device counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DeviceCounts {
    /// Devices known.
    pub total: u64,
    /// Devices online.
    pub online: u64,
}

/// A rollout to create.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct NewRollout {
    /// The release (artifact digest) to roll out; must be published.
    pub release_digest: Digest,
    /// The device filter (see [`ota_core::filter`]).
    pub filter: String,
    /// The rollout spec (cohorts, waves, gates), as JSON.
    pub spec: serde_json::Value,
    /// The planner's initial state blob.
    pub state: Vec<u8>,
    /// Initial status.
    pub status: String,
    /// The operator who created it.
    pub created_by: String,
}

impl NewRollout {
    /// A rollout of `release_digest` to the devices matching `filter`.
    pub fn new(
        release_digest: Digest,
        filter: impl Into<String>,
        spec: serde_json::Value,
        state: Vec<u8>,
        status: impl Into<String>,
        created_by: impl Into<String>,
    ) -> Self {
        NewRollout {
            release_digest,
            filter: filter.into(),
            spec,
            state,
            status: status.into(),
            created_by: created_by.into(),
        }
    }
}

/// A rollout as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RolloutRecord {
    /// Rollout id.
    pub id: i64,
    /// The release rolled out.
    #[serde(serialize_with = "ser_digest")]
    pub release_digest: Digest,
    /// The device filter.
    pub filter: String,
    /// The spec.
    pub spec: serde_json::Value,
    /// The planner's state blob (not serialized to JSON).
    #[serde(skip)]
    pub state: Vec<u8>,
    /// Status.
    pub status: String,
    /// Who created it.
    pub created_by: String,
    /// Who approved it.
    pub approved_by: Option<String>,
    /// Creation time, unix seconds.
    pub created_at: i64,
    /// Last change, unix seconds.
    pub updated_at: i64,
}

/// An audit event to append.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct NewEvent {
    /// When, unix seconds.
    pub at: i64,
    /// Who: an operator name, `device:<id>` or `server`.
    pub actor: String,
    /// What.
    pub kind: EventKind,
    /// The rollout it concerns.
    pub rollout_id: Option<i64>,
    /// The device it concerns.
    pub device_id: Option<String>,
    /// Details, a JSON object.
    pub details: serde_json::Value,
}

impl NewEvent {
    /// An event with no rollout or device and empty details.
    pub fn new(at: i64, actor: impl Into<String>, kind: EventKind) -> Self {
        NewEvent {
            at,
            actor: actor.into(),
            kind,
            rollout_id: None,
            device_id: None,
            details: serde_json::Value::Object(serde_json::Map::new()),
        }
    }

    /// Sets the rollout.
    pub fn rollout(mut self, id: i64) -> Self {
        self.rollout_id = Some(id);
        self
    }

    /// Sets the device.
    pub fn device(mut self, id: impl Into<String>) -> Self {
        self.device_id = Some(id.into());
        self
    }

    /// Sets the details.
    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

/// An audit event as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct EventRecord {
    /// Event id (increasing).
    pub id: i64,
    /// When, unix seconds.
    pub at: i64,
    /// Who.
    pub actor: String,
    /// What.
    pub kind: EventKind,
    /// The rollout it concerns.
    pub rollout_id: Option<i64>,
    /// The device it concerns.
    pub device_id: Option<String>,
    /// Details.
    pub details: serde_json::Value,
}

/// Which events [`Db::list_events`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventFilter {
    /// Only events of this rollout.
    pub rollout: Option<i64>,
    /// Only events of this device.
    pub device: Option<String>,
    /// Only events of this kind.
    pub kind: Option<EventKind>,
    /// Only events recorded by this actor (an operator's name, `server`, `mqtt`,
    /// `device:<id>`).
    pub actor: Option<String>,
    /// Only events with an id above this one (the cursor for following the log); without it
    /// the newest events are returned.
    pub after: Option<i64>,
    /// Only events with an id below this one (the cursor for paging back through the log, the
    /// newest of those first); ignored with `after`.
    pub before: Option<i64>,
    /// At most this many (0 means 100; capped at [`MAX_EVENT_PAGE`]).
    pub limit: u32,
}

/// The desired state last published to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DesiredRecord {
    /// The device.
    pub device_id: String,
    /// The desired state's generation.
    pub generation: u64,
    /// The rollout that published it.
    pub rollout_id: Option<i64>,
    /// The release's artifact digest.
    pub digest: Digest,
    /// Which planner action it carries out.
    pub kind: DesiredKind,
    /// The `DesiredState` CBOR as published.
    pub payload: Vec<u8>,
    /// When it was published, unix seconds.
    pub updated_at: i64,
}

impl DesiredRecord {
    /// A desired-state row.
    pub fn new(
        device_id: impl Into<String>,
        generation: u64,
        rollout_id: Option<i64>,
        digest: Digest,
        kind: DesiredKind,
        payload: Vec<u8>,
        updated_at: i64,
    ) -> Self {
        DesiredRecord {
            device_id: device_id.into(),
            generation,
            rollout_id,
            digest,
            kind,
            payload,
            updated_at,
        }
    }
}

/// Receives every audit event after its transaction committed (the webhook queue). It must
/// not block.
#[derive(Clone)]
pub struct EventSink(Arc<dyn Fn(&EventRecord) + Send + Sync>);

impl EventSink {
    /// A sink calling `f` for every committed event.
    pub fn new(f: impl Fn(&EventRecord) + Send + Sync + 'static) -> Self {
        EventSink(Arc::new(f))
    }
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventSink")
    }
}

/// Rollouts per status.
pub type StatusCounts = BTreeMap<String, u64>;

/// The repository over the server's database.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    kind: DbKind,
    sink: Arc<std::sync::RwLock<Option<EventSink>>>,
}

impl Db {
    /// Connects to `url` (`sqlite://path?mode=rwc`, `postgres://...`) with at most
    /// `max_connections` pooled connections, and applies the migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DbError> {
        Self::connect_with(url, max_connections, DEFAULT_ACQUIRE_TIMEOUT).await
    }

    /// Like [`connect`](Self::connect); a query waits at most `acquire_timeout` for a pooled
    /// connection (opening one included) before it fails as unavailable.
    pub async fn connect_with(
        url: &str,
        max_connections: u32,
        acquire_timeout: std::time::Duration,
    ) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let kind = DbKind::from_url(url)?;
        // Each connection to an in-memory SQLite database is a different database.
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let max = if kind == DbKind::Sqlite && in_memory {
            1
        } else {
            max_connections.max(1)
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(acquire_timeout)
            .connect(url)
            .await
            .map_err(DbError::Connect)?;
        migrator(kind).run(&pool).await?;
        if kind == DbKind::Sqlite && !in_memory {
            // Readers do not block the writer; persisted in the database file.
            sqlx::query("PRAGMA journal_mode = WAL")
                .fetch_optional(&pool)
                .await?;
        }
        Ok(Db {
            pool,
            kind,
            sink: Arc::new(std::sync::RwLock::new(None)),
        })
    }

    /// Installs the sink that receives every audit event committed from now on.
    pub fn set_event_sink(&self, sink: Option<EventSink>) {
        if let Ok(mut slot) = self.sink.write() {
            *slot = sink;
        }
    }

    fn notify(&self, events: &[EventRecord]) {
        if events.is_empty() {
            return;
        }
        let sink = self.sink.read().ok().and_then(|s| s.clone());
        if let Some(sink) = sink {
            for e in events {
                (sink.0)(e);
            }
        }
    }

    /// Starts a transaction for a batch of writes; nothing is visible until
    /// [`DbTx::commit`].
    pub async fn begin(&self) -> Result<DbTx, DbError> {
        Ok(DbTx {
            tx: self.pool.begin().await?,
            events: Vec::new(),
            db: self.clone(),
        })
    }

    /// Which database this is.
    pub fn kind(&self) -> DbKind {
        self.kind
    }

    /// Closes every pooled connection (waits for checked-out ones).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    // ----- releases -----

    /// Stores a verified release and, in the same transaction, `event`. Idempotent: the same
    /// bytes again give [`InsertOutcome::AlreadyPresent`] (and no event); different bytes for
    /// the same artifact digest give [`DbError::ReleaseConflict`].
    pub async fn insert_release(
        &self,
        release: &ReleaseRecord,
        bytes: &[u8],
        event: Option<&NewEvent>,
    ) -> Result<InsertOutcome, DbError> {
        let digest = release.digest.to_string();
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO releases (digest, product, version, security_version, size, hardware, \
             created, expires, installer, signers, release_bytes, created_at, published_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (digest) DO NOTHING",
        )
        .bind(&digest)
        .bind(&release.product)
        .bind(&release.version)
        .bind(i64::from(release.security_version))
        .bind(to_i64(release.size, "release size")?)
        .bind(to_json(&release.hardware))
        .bind(to_i64(release.created, "release created")?)
        .bind(
            release
                .expires
                .map(|e| to_i64(e, "release expires"))
                .transpose()?,
        )
        .bind(release.installer.as_deref())
        .bind(to_json(&release.signers))
        .bind(bytes)
        .bind(release.created_at)
        .bind(&release.published_by)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            let existing: Vec<u8> =
                sqlx::query_scalar("SELECT release_bytes FROM releases WHERE digest = $1")
                    .bind(&digest)
                    .fetch_one(&mut *tx)
                    .await?;
            tx.rollback().await?;
            return if existing == bytes {
                Ok(InsertOutcome::AlreadyPresent)
            } else {
                Err(DbError::ReleaseConflict(release.digest))
            };
        }
        let mut committed = Vec::new();
        if let Some(event) = event {
            committed.push(insert_event(&mut tx, event).await?);
        }
        tx.commit().await?;
        self.notify(&committed);
        Ok(InsertOutcome::Inserted)
    }

    /// Replaces the signed bytes and manifest metadata of the release of artifact
    /// `release.digest` with a countersigned envelope of the same product, version, security
    /// version and size (signatures by the keys in force after a rotation), and stores `event`
    /// with it. [`DbError::ReleaseConflict`] if the stored release differs in any of those.
    pub async fn resign_release(
        &self,
        release: &ReleaseRecord,
        bytes: &[u8],
        event: &NewEvent,
    ) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE releases SET release_bytes = $1, signers = $2, hardware = $3, created = $4, \
             expires = $5, installer = $6 \
             WHERE digest = $7 AND product = $8 AND version = $9 AND security_version = $10 \
             AND size = $11",
        )
        .bind(bytes)
        .bind(to_json(&release.signers))
        .bind(to_json(&release.hardware))
        .bind(to_i64(release.created, "release created")?)
        .bind(
            release
                .expires
                .map(|e| to_i64(e, "release expires"))
                .transpose()?,
        )
        .bind(release.installer.as_deref())
        .bind(release.digest.to_string())
        .bind(&release.product)
        .bind(&release.version)
        .bind(i64::from(release.security_version))
        .bind(to_i64(release.size, "release size")?)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            tx.rollback().await?;
            return Err(DbError::ReleaseConflict(release.digest));
        }
        let committed = vec![insert_event(&mut tx, event).await?];
        tx.commit().await?;
        self.notify(&committed);
        Ok(())
    }

    /// A release of `product` and `version` for another artifact than `digest`, if one is
    /// published.
    pub async fn other_release_of_version(
        &self,
        product: &str,
        version: &str,
        digest: &Digest,
    ) -> Result<Option<ReleaseRecord>, DbError> {
        let row = sqlx::query(format_release_select(
            "WHERE product = $1 AND version = $2 AND digest <> $3 ORDER BY created_at LIMIT 1",
        ))
        .bind(product)
        .bind(version)
        .bind(digest.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(release_from_row).transpose()
    }

    /// The release of artifact `digest`.
    pub async fn get_release(&self, digest: &Digest) -> Result<Option<ReleaseRecord>, DbError> {
        let row = sqlx::query(format_release_select("WHERE digest = $1"))
            .bind(digest.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(release_from_row).transpose()
    }

    /// The signed release bytes of artifact `digest`, exactly as uploaded.
    pub async fn get_release_bytes(&self, digest: &Digest) -> Result<Option<Vec<u8>>, DbError> {
        Ok(
            sqlx::query_scalar("SELECT release_bytes FROM releases WHERE digest = $1")
                .bind(digest.to_string())
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Every release, newest first.
    pub async fn list_releases(&self) -> Result<Vec<ReleaseRecord>, DbError> {
        let rows = sqlx::query(format_release_select(
            "ORDER BY created_at DESC, created DESC, digest",
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(release_from_row).collect()
    }

    /// How many releases are published.
    pub async fn count_releases(&self) -> Result<u64, DbError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM releases")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    // ----- devices -----

    /// Marks every device offline (at server start: the broker's sessions are gone).
    pub async fn set_all_offline(&self) -> Result<(), DbError> {
        sqlx::query("UPDATE devices SET online = 0 WHERE online <> 0")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// One device.
    pub async fn get_device(&self, id: &str) -> Result<Option<DeviceRecord>, DbError> {
        let row = sqlx::query(format_device_select("WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(device_from_row).transpose()
    }

    /// The raw reported-state message a device last sent.
    pub async fn get_device_reported(&self, id: &str) -> Result<Option<Vec<u8>>, DbError> {
        let v: Option<Option<Vec<u8>>> =
            sqlx::query_scalar("SELECT reported FROM devices WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(v.flatten())
    }

    /// Every device, by id.
    pub async fn list_devices(&self) -> Result<Vec<DeviceRecord>, DbError> {
        let rows = sqlx::query(format_device_select("ORDER BY id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(device_from_row).collect()
    }

    /// How many devices are known and online.
    pub async fn device_counts(&self) -> Result<DeviceCounts, DbError> {
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM devices")
            .fetch_one(&self.pool)
            .await?;
        let online: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM devices WHERE online <> 0")
            .fetch_one(&self.pool)
            .await?;
        Ok(DeviceCounts {
            total: u64::try_from(total).unwrap_or(0),
            online: u64::try_from(online).unwrap_or(0),
        })
    }

    // ----- rollouts -----

    /// One rollout.
    pub async fn get_rollout(&self, id: i64) -> Result<Option<RolloutRecord>, DbError> {
        let row = sqlx::query(format_rollout_select("WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rollout_from_row).transpose()
    }

    /// Every rollout, newest first.
    pub async fn list_rollouts(&self) -> Result<Vec<RolloutRecord>, DbError> {
        let rows = sqlx::query(format_rollout_select("ORDER BY id DESC"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rollout_from_row).collect()
    }

    // ----- events -----

    /// Appends one audit event; returns its id.
    pub async fn append_event(&self, event: &NewEvent) -> Result<i64, DbError> {
        let mut conn = self.pool.acquire().await?;
        let record = insert_event(&mut conn, event).await?;
        let id = record.id;
        self.notify(&[record]);
        Ok(id)
    }

    // ----- coordination -----

    /// Every desired-state row (republished at every broker (re)connect).
    pub async fn list_desired(&self) -> Result<Vec<DesiredRecord>, DbError> {
        let rows = sqlx::query(
            "SELECT device_id, generation, rollout_id, digest, kind, payload, updated_at \
             FROM desired ORDER BY device_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DesiredRecord {
                    device_id: row.try_get("device_id")?,
                    generation: to_u64(row.try_get("generation")?, "generation")?,
                    rollout_id: row.try_get("rollout_id")?,
                    digest: parse_digest(&row.try_get::<String, _>("digest")?, "desired digest")?,
                    kind: {
                        let name: String = row.try_get("kind")?;
                        DesiredKind::parse(&name)
                            .ok_or_else(|| DbError::Corrupt(format!("desired kind {name:?}")))?
                    },
                    payload: row.try_get("payload")?,
                    updated_at: row.try_get("updated_at")?,
                })
            })
            .collect()
    }

    /// Rollouts whose status is one of `statuses`, oldest first.
    pub async fn rollouts_with_status(
        &self,
        statuses: &[&str],
    ) -> Result<Vec<RolloutRecord>, DbError> {
        let all = sqlx::query(format_rollout_select("ORDER BY id ASC"))
            .fetch_all(&self.pool)
            .await?;
        // Status filtering in Rust keeps the SQL portable (no array binds in AnyPool).
        let mut out = Vec::new();
        for row in &all {
            let status: String = row.try_get("status")?;
            if statuses.contains(&status.as_str()) {
                out.push(rollout_from_row(row)?);
            }
        }
        Ok(out)
    }

    /// The id and stored planner state of every rollout awaiting approval, running or paused.
    pub async fn active_planner_states(&self) -> Result<Vec<(i64, Vec<u8>)>, DbError> {
        let rows = sqlx::query(
            "SELECT id, planner_state FROM rollouts \
             WHERE status IN ('awaiting-approval', 'running', 'paused') ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    /// How many rollouts are in each status.
    pub async fn rollout_status_counts(&self) -> Result<StatusCounts, DbError> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM rollouts GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        let mut out = BTreeMap::new();
        for row in &rows {
            let n: i64 = row.try_get("n")?;
            out.insert(row.try_get("status")?, u64::try_from(n).unwrap_or(0));
        }
        Ok(out)
    }

    /// How many devices are marked drifted.
    pub async fn count_drifted(&self) -> Result<u64, DbError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM devices WHERE drifted <> 0")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The download totals of rollout `id` for its release `digest` (rollback downloads of
    /// other releases are not counted).
    pub async fn rollout_transfers(
        &self,
        id: i64,
        digest: &Digest,
    ) -> Result<TransferTotals, DbError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{TRANSFER_TOTALS} WHERE rollout_id = $1 AND digest = $2"
        )))
        .bind(id)
        .bind(digest.to_string())
        .fetch_one(&self.pool)
        .await?;
        transfer_totals_from_row(&row)
    }

    /// The download totals over every recorded download (for `/metrics`).
    pub async fn transfer_totals(&self) -> Result<TransferTotals, DbError> {
        let row = sqlx::query(TRANSFER_TOTALS).fetch_one(&self.pool).await?;
        transfer_totals_from_row(&row)
    }

    /// Events matching `filter`, in increasing id order: those after `filter.after`, or the
    /// newest ones without it.
    pub async fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventRecord>, DbError> {
        let limit = match filter.limit {
            0 => 100,
            n => n.min(MAX_EVENT_PAGE),
        };
        const WHERE: &str = "WHERE ($1 IS NULL OR rollout_id = $1) \
            AND ($2 IS NULL OR device_id = $2) AND ($3 IS NULL OR kind = $3) \
            AND ($6 IS NULL OR actor = $6) AND id > $4 AND id < $7";
        let sql = if filter.after.is_some() {
            format!("{EVENT_SELECT} {WHERE} ORDER BY id ASC LIMIT $5")
        } else {
            format!("{EVENT_SELECT} {WHERE} ORDER BY id DESC LIMIT $5")
        };
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(filter.rollout)
            .bind(filter.device.as_deref())
            .bind(filter.kind.map(EventKind::name))
            .bind(filter.after.unwrap_or(i64::MIN))
            .bind(i64::from(limit))
            .bind(filter.actor.as_deref())
            .bind(
                filter
                    .before
                    .filter(|_| filter.after.is_none())
                    .unwrap_or(i64::MAX),
            )
            .fetch_all(&self.pool)
            .await?;
        let mut events = rows
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        if filter.after.is_none() {
            events.reverse();
        }
        Ok(events)
    }

    /// The stored flag set (every definition and the fleet flag-state version), `None` if no
    /// flag was ever changed.
    pub async fn load_flag_set(&self) -> Result<Option<FlagSet>, DbError> {
        let version: Option<i64> =
            sqlx::query_scalar("SELECT version FROM flag_state WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?;
        let Some(version) = version else {
            return Ok(None);
        };
        let rows: Vec<Vec<u8>> = sqlx::query_scalar("SELECT definition FROM flags ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        let definitions = rows
            .iter()
            .map(|b| {
                FlagDefinition::from_cbor(b).map_err(|e| DbError::Corrupt(format!("flag: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        FlagSet::from_definitions(to_u64(version, "flag version")?, definitions)
            .map(Some)
            .map_err(|e| DbError::Corrupt(format!("flag set: {e}")))
    }

    /// The signed bytes of the newest accepted trust-set update, `None` if the configured
    /// trust set was never rotated.
    pub async fn latest_trust_update(&self) -> Result<Option<Vec<u8>>, DbError> {
        Ok(
            sqlx::query_scalar("SELECT payload FROM trust_updates ORDER BY sequence DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// The newest `limit` audit records of flag `name` (of every flag, deleted ones included,
    /// without a name), oldest first.
    pub async fn list_flag_changes(
        &self,
        name: Option<&str>,
        limit: u32,
    ) -> Result<Vec<FlagChange>, DbError> {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT record FROM flag_changes WHERE ($1 IS NULL OR flag = $1) \
             ORDER BY id DESC LIMIT $2",
        )
        .bind(name)
        .bind(i64::from(limit.min(MAX_EVENT_PAGE)))
        .fetch_all(&self.pool)
        .await?;
        let mut changes = rows
            .iter()
            .map(|b| {
                FlagChange::from_cbor(b).map_err(|e| DbError::Corrupt(format!("flag change: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        changes.reverse();
        Ok(changes)
    }
}

fn migrator(kind: DbKind) -> Migrator {
    let migrations = MIGRATIONS
        .iter()
        .map(|&(version, description, sqlite, postgres)| {
            let sql = match kind {
                DbKind::Sqlite => sqlite,
                DbKind::Postgres => postgres,
            };
            Migration::new(
                version,
                Cow::Borrowed(description),
                MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )
        })
        .collect();
    Migrator::with_migrations(migrations)
}

async fn insert_event(conn: &mut AnyConnection, event: &NewEvent) -> Result<EventRecord, DbError> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO events (at, actor, kind, rollout_id, device_id, details) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(event.at)
    .bind(&event.actor)
    .bind(event.kind.name())
    .bind(event.rollout_id)
    .bind(event.device_id.as_deref())
    .bind(to_json(&event.details))
    .fetch_one(conn)
    .await?;
    Ok(EventRecord {
        id,
        at: event.at,
        actor: event.actor.clone(),
        kind: event.kind,
        rollout_id: event.rollout_id,
        device_id: event.device_id.clone(),
        details: event.details.clone(),
    })
}

/// One transaction of batched writes ([`Db::begin`]). Dropping it without
/// [`commit`](Self::commit) rolls everything back.
pub struct DbTx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    events: Vec<EventRecord>,
    db: Db,
}

impl std::fmt::Debug for DbTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbTx")
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl DbTx {
    /// Records a device's reported state at `now` (creating the device on its first report),
    /// with the coordinator's view of `online`, `drifted`, the last committed release and the
    /// reported generation. `hardware_class` and `inventory` keep earlier values when `None`.
    pub async fn upsert_device(
        &mut self,
        id: &str,
        report: &DeviceReport,
        online: bool,
        drifted: bool,
        generation: u64,
        now: i64,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO devices (id, hardware_class, labels, running_version, running_digest, \
             known_good_digest, last_committed_digest, last_result, power, inventory, reported, \
             first_seen, last_seen, online, drifted, reported_generation) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $13, $14, $15) \
             ON CONFLICT (id) DO UPDATE SET \
             hardware_class = COALESCE(excluded.hardware_class, devices.hardware_class), \
             labels = excluded.labels, \
             running_version = excluded.running_version, \
             running_digest = excluded.running_digest, \
             known_good_digest = excluded.known_good_digest, \
             last_committed_digest = excluded.last_committed_digest, \
             last_result = excluded.last_result, \
             power = excluded.power, \
             inventory = COALESCE(excluded.inventory, devices.inventory), \
             reported = excluded.reported, \
             last_seen = excluded.last_seen, \
             online = excluded.online, \
             drifted = excluded.drifted, \
             reported_generation = excluded.reported_generation",
        )
        .bind(id)
        .bind(report.hardware_class.as_deref())
        .bind(to_json(&report.labels))
        .bind(report.running_version.as_deref())
        .bind(report.running_digest.map(|d| d.to_string()))
        .bind(report.known_good_digest.map(|d| d.to_string()))
        .bind(report.last_committed_digest.map(|d| d.to_string()))
        .bind(report.last_result.as_deref())
        .bind(report.power.as_ref().map(to_json))
        .bind(report.inventory.as_ref().map(to_json))
        .bind(report.reported.as_deref())
        .bind(now)
        .bind(i64::from(online))
        .bind(i64::from(drifted))
        .bind(to_i64(generation, "generation")?)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Marks a device online or offline at `now` (creating it if unknown).
    pub async fn set_online(&mut self, id: &str, online: bool, now: i64) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO devices (id, first_seen, last_seen, online) VALUES ($1, $2, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET online = excluded.online, last_seen = excluded.last_seen",
        )
        .bind(id)
        .bind(now)
        .bind(i64::from(online))
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Moves a known device's `last_seen` to `now` (a heartbeat; an unknown id changes nothing).
    pub async fn touch_device(&mut self, id: &str, now: i64) -> Result<(), DbError> {
        sqlx::query("UPDATE devices SET last_seen = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Replaces a device's operator-set labels; [`DbError::NotFound`] for an unknown device
    /// (nothing written).
    pub async fn set_server_labels(
        &mut self,
        id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), DbError> {
        let n = sqlx::query("UPDATE devices SET server_labels = $2 WHERE id = $1")
            .bind(id)
            .bind(to_json(labels))
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
        not_found_if_zero(n, "device", id)
    }

    /// Sets a device's drift flag (no-op for an unknown device).
    pub async fn set_drifted(&mut self, id: &str, drifted: bool) -> Result<(), DbError> {
        sqlx::query("UPDATE devices SET drifted = $2 WHERE id = $1")
            .bind(id)
            .bind(i64::from(drifted))
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Creates a rollout row at `now`; returns its id.
    pub async fn insert_rollout(&mut self, rollout: &NewRollout, now: i64) -> Result<i64, DbError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO rollouts (release_digest, device_filter, spec, planner_state, status, \
             created_by, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
             RETURNING id",
        )
        .bind(rollout.release_digest.to_string())
        .bind(&rollout.filter)
        .bind(to_json(&rollout.spec))
        .bind(rollout.state.as_slice())
        .bind(&rollout.status)
        .bind(&rollout.created_by)
        .bind(now)
        .fetch_one(&mut *self.tx)
        .await?)
    }

    /// Stores a rollout's spec JSON (after the id is known).
    pub async fn set_rollout_spec(
        &mut self,
        id: i64,
        spec: &serde_json::Value,
    ) -> Result<(), DbError> {
        sqlx::query("UPDATE rollouts SET spec = $2 WHERE id = $1")
            .bind(id)
            .bind(to_json(spec))
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Stores a rollout's planner state and status at `now`.
    pub async fn update_rollout(
        &mut self,
        id: i64,
        state: &[u8],
        status: &str,
        now: i64,
    ) -> Result<(), DbError> {
        let n = sqlx::query(
            "UPDATE rollouts SET planner_state = $2, status = $3, updated_at = $4 WHERE id = $1",
        )
        .bind(id)
        .bind(state)
        .bind(status)
        .bind(now)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        not_found_if_zero(n, "rollout", &id.to_string())
    }

    /// Records who approved a rollout.
    pub async fn set_rollout_approved(
        &mut self,
        id: i64,
        approved_by: &str,
        now: i64,
    ) -> Result<(), DbError> {
        let n = sqlx::query("UPDATE rollouts SET approved_by = $2, updated_at = $3 WHERE id = $1")
            .bind(id)
            .bind(approved_by)
            .bind(now)
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
        not_found_if_zero(n, "rollout", &id.to_string())
    }

    /// Stores the desired state published to a device (replacing the previous one).
    pub async fn put_desired(&mut self, d: &DesiredRecord) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO desired (device_id, generation, rollout_id, digest, kind, payload, \
             updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (device_id) DO UPDATE SET generation = excluded.generation, \
             rollout_id = excluded.rollout_id, digest = excluded.digest, kind = excluded.kind, \
             payload = excluded.payload, updated_at = excluded.updated_at",
        )
        .bind(&d.device_id)
        .bind(to_i64(d.generation, "generation")?)
        .bind(d.rollout_id)
        .bind(d.digest.to_string())
        .bind(d.kind.name())
        .bind(d.payload.as_slice())
        .bind(d.updated_at)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// One device, as this transaction sees it (its own writes included).
    pub async fn get_device(&mut self, id: &str) -> Result<Option<DeviceRecord>, DbError> {
        let row = sqlx::query(format_device_select("WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *self.tx)
            .await?;
        row.as_ref().map(device_from_row).transpose()
    }

    /// Stores a flag definition at `now` (replacing the previous one of that name).
    pub async fn put_flag(&mut self, def: &FlagDefinition, now: i64) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO flags (name, definition, version, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, \
             version = excluded.version, updated_at = excluded.updated_at",
        )
        .bind(def.name.as_str())
        .bind(def.to_cbor())
        .bind(to_i64(def.version, "flag version")?)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Removes a flag definition.
    pub async fn delete_flag(&mut self, name: &str) -> Result<(), DbError> {
        sqlx::query("DELETE FROM flags WHERE name = $1")
            .bind(name)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Stores the fleet flag-state version.
    pub async fn set_flag_version(&mut self, version: u64) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO flag_state (id, version) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET version = excluded.version",
        )
        .bind(to_i64(version, "flag version")?)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Appends a flag audit record.
    pub async fn append_flag_change(&mut self, change: &FlagChange) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO flag_changes (flag, version, at, actor, kind, record) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(change.flag.as_str())
        .bind(to_i64(change.version, "flag version")?)
        .bind(to_i64(change.at.as_unix_millis(), "flag change time")?)
        .bind(&change.by)
        .bind(change.kind().name())
        .bind(change.to_cbor())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Stores an accepted trust-set update (`sequence` must be new: a duplicate is a query
    /// error, so two racing rotations cannot both commit).
    pub async fn insert_trust_update(
        &mut self,
        sequence: u64,
        payload: &[u8],
        now: i64,
        actor: &str,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO trust_updates (sequence, payload, accepted_at, actor) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(to_i64(sequence, "trust sequence")?)
        .bind(payload)
        .bind(now)
        .bind(actor)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Records a download's cost at `now` unless one is recorded for the same device and
    /// generation already (the first report wins); returns whether it was new.
    pub async fn insert_transfer(&mut self, t: &TransferRecord, now: i64) -> Result<bool, DbError> {
        let n = sqlx::query(
            "INSERT INTO transfers (device_id, generation, rollout_id, digest, fetched, size, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (device_id, generation) DO NOTHING",
        )
        .bind(&t.device_id)
        .bind(to_i64(t.generation, "generation")?)
        .bind(t.rollout_id)
        .bind(t.digest.map(|d| d.to_string()))
        .bind(to_i64(t.fetched, "fetched")?)
        .bind(to_i64(t.size, "size")?)
        .bind(now)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Appends an audit event; returns its id.
    pub async fn append_event(&mut self, event: &NewEvent) -> Result<i64, DbError> {
        let record = insert_event(&mut self.tx, event).await?;
        let id = record.id;
        self.events.push(record);
        Ok(id)
    }

    /// Sets a savepoint: [`rollback_to_savepoint`](Self::rollback_to_savepoint) undoes what
    /// follows it and nothing before (one at a time: isolates one row's write).
    pub async fn savepoint(&mut self) -> Result<(), DbError> {
        self.execute_raw("SAVEPOINT ota_item").await
    }

    /// Keeps what followed the savepoint.
    pub async fn release_savepoint(&mut self) -> Result<(), DbError> {
        self.execute_raw("RELEASE SAVEPOINT ota_item").await
    }

    /// Undoes what followed the savepoint; the transaction goes on.
    pub async fn rollback_to_savepoint(&mut self) -> Result<(), DbError> {
        self.execute_raw("ROLLBACK TO SAVEPOINT ota_item").await?;
        self.release_savepoint().await
    }

    async fn execute_raw(&mut self, sql: &'static str) -> Result<(), DbError> {
        sqlx::query(sql).execute(&mut *self.tx).await?;
        Ok(())
    }

    /// Commits everything; the events go to the [`EventSink`]. Returns them.
    pub async fn commit(self) -> Result<Vec<EventRecord>, DbError> {
        self.tx.commit().await?;
        self.db.notify(&self.events);
        Ok(self.events)
    }
}

fn not_found_if_zero(n: u64, what: &'static str, id: &str) -> Result<(), DbError> {
    if n == 0 {
        Err(DbError::NotFound {
            what,
            id: id.to_string(),
        })
    } else {
        Ok(())
    }
}

fn to_i64(v: u64, what: &'static str) -> Result<i64, DbError> {
    i64::try_from(v).map_err(|_| DbError::OutOfRange(what))
}

fn to_u64(v: i64, what: &str) -> Result<u64, DbError> {
    u64::try_from(v).map_err(|_| DbError::Corrupt(format!("negative {what}")))
}

fn to_json<T: Serialize + ?Sized>(value: &T) -> String {
    // Serializing maps with string keys, strings and JSON values cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_string())
}

fn from_json<T: DeserializeOwned>(text: &str, what: &str) -> Result<T, DbError> {
    serde_json::from_str(text).map_err(|e| DbError::Corrupt(format!("{what}: {e}")))
}

fn parse_digest(text: &str, what: &str) -> Result<Digest, DbError> {
    text.parse()
        .map_err(|e| DbError::Corrupt(format!("{what}: {e}")))
}

fn opt_digest(text: Option<String>, what: &str) -> Result<Option<Digest>, DbError> {
    text.map(|t| parse_digest(&t, what)).transpose()
}

const RELEASE_COLUMNS: &str = "digest, product, version, security_version, size, hardware, \
    created, expires, installer, signers, created_at, published_by";

fn format_release_select(tail: &str) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(format!("SELECT {RELEASE_COLUMNS} FROM releases {tail}"))
}

fn release_from_row(row: &AnyRow) -> Result<ReleaseRecord, DbError> {
    let security_version: i64 = row.try_get("security_version")?;
    Ok(ReleaseRecord {
        digest: parse_digest(&row.try_get::<String, _>("digest")?, "release digest")?,
        product: row.try_get("product")?,
        version: row.try_get("version")?,
        security_version: u32::try_from(security_version)
            .map_err(|_| DbError::Corrupt("security_version out of range".into()))?,
        size: to_u64(row.try_get("size")?, "size")?,
        hardware: from_json(&row.try_get::<String, _>("hardware")?, "hardware")?,
        created: to_u64(row.try_get("created")?, "created")?,
        expires: row
            .try_get::<Option<i64>, _>("expires")?
            .map(|e| to_u64(e, "expires"))
            .transpose()?,
        installer: row.try_get("installer")?,
        signers: from_json(&row.try_get::<String, _>("signers")?, "signers")?,
        created_at: row.try_get("created_at")?,
        published_by: row.try_get("published_by")?,
    })
}

const DEVICE_COLUMNS: &str = "id, hardware_class, labels, server_labels, running_version, \
    running_digest, known_good_digest, last_committed_digest, last_result, power, inventory, \
    first_seen, last_seen, online, drifted, reported_generation, reported";

/// A device row with its newest recorded download (by generation), if any.
fn format_device_select(tail: &str) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(format!(
        "SELECT {DEVICE_COLUMNS}, t.fetched AS transfer_fetched, t.size AS transfer_size, \
         t.generation AS transfer_generation, t.digest AS transfer_digest FROM devices \
         LEFT JOIN transfers t ON t.device_id = devices.id AND t.generation = \
         (SELECT MAX(x.generation) FROM transfers x WHERE x.device_id = devices.id) {tail}"
    ))
}

/// Download totals over `transfers` (add a `WHERE`). The sums are cast back to BIGINT:
/// PostgreSQL sums BIGINT as NUMERIC.
const TRANSFER_TOTALS: &str = "SELECT COUNT(DISTINCT device_id) AS devices, \
    COUNT(*) AS downloads, \
    CAST(COALESCE(SUM(fetched), 0) AS BIGINT) AS fetched, \
    CAST(COALESCE(SUM(size), 0) AS BIGINT) AS size, \
    CAST(COALESCE(SUM(CASE WHEN size > fetched THEN size - fetched ELSE 0 END), 0) AS BIGINT) \
    AS saved FROM transfers";

fn transfer_totals_from_row(row: &AnyRow) -> Result<TransferTotals, DbError> {
    Ok(TransferTotals {
        devices: to_u64(row.try_get("devices")?, "devices")?,
        downloads: to_u64(row.try_get("downloads")?, "downloads")?,
        fetched_bytes: to_u64(row.try_get("fetched")?, "fetched")?,
        full_bytes: to_u64(row.try_get("size")?, "size")?,
        saved_bytes: to_u64(row.try_get("saved")?, "saved")?,
    })
}

/// A reported update outcome as JSON: `state` (its kebab-case name), `cause` and `detail`
/// (for rejections, failures — `cause` is then the phase — and rollbacks), `release` (the
/// digest it concerns), `rollout`, `generation` and `at_ms` (device time).
pub fn last_outcome_json(o: &UpdateOutcome) -> serde_json::Value {
    let (cause, detail) = match &o.state {
        ExecutionState::Rejected { cause, detail } => (Some(cause.name()), Some(detail)),
        ExecutionState::Failed { phase, reason } => (Some(phase.name()), Some(reason)),
        ExecutionState::RolledBack { reason, detail } => (Some(reason.name()), Some(detail)),
        _ => (None, None),
    };
    serde_json::json!({
        "state": o.state.name(),
        "cause": cause,
        "detail": detail,
        "release": o.digest.map(|d| d.to_string()),
        "rollout": o.rollout_id,
        "generation": o.generation,
        "at_ms": o.at,
    })
}

fn device_from_row(row: &AnyRow) -> Result<DeviceRecord, DbError> {
    let json_opt = |col: &str| -> Result<Option<serde_json::Value>, DbError> {
        row.try_get::<Option<String>, _>(col)?
            .map(|t| from_json(&t, col))
            .transpose()
    };
    Ok(DeviceRecord {
        id: row.try_get("id")?,
        hardware_class: row.try_get("hardware_class")?,
        labels: from_json(&row.try_get::<String, _>("labels")?, "labels")?,
        server_labels: from_json(&row.try_get::<String, _>("server_labels")?, "server_labels")?,
        running_version: row.try_get("running_version")?,
        running_digest: opt_digest(row.try_get("running_digest")?, "running_digest")?,
        known_good_digest: opt_digest(row.try_get("known_good_digest")?, "known_good_digest")?,
        last_committed_digest: opt_digest(
            row.try_get("last_committed_digest")?,
            "last_committed_digest",
        )?,
        last_result: row.try_get("last_result")?,
        last_outcome: row
            .try_get::<Option<Vec<u8>>, _>("reported")?
            .and_then(|raw| ReportedState::from_cbor(&raw).ok())
            .and_then(|r| r.last_result.as_ref().map(last_outcome_json)),
        power: json_opt("power")?,
        inventory: json_opt("inventory")?,
        first_seen: row.try_get("first_seen")?,
        last_seen: row.try_get("last_seen")?,
        online: row.try_get::<i64, _>("online")? != 0,
        drifted: row.try_get::<i64, _>("drifted")? != 0,
        reported_generation: to_u64(row.try_get("reported_generation")?, "reported_generation")?,
        last_transfer: match (
            row.try_get::<Option<i64>, _>("transfer_fetched")?,
            row.try_get::<Option<i64>, _>("transfer_size")?,
            row.try_get::<Option<i64>, _>("transfer_generation")?,
        ) {
            (Some(fetched), Some(size), Some(generation)) => Some(TransferView::new(
                to_u64(fetched, "fetched")?,
                to_u64(size, "size")?,
                to_u64(generation, "generation")?,
                opt_digest(row.try_get("transfer_digest")?, "transfer digest")?,
            )),
            _ => None,
        },
    })
}

const ROLLOUT_COLUMNS: &str = "id, release_digest, device_filter, spec, planner_state, status, \
    created_by, approved_by, created_at, updated_at";

fn format_rollout_select(tail: &str) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts {tail}"))
}

fn rollout_from_row(row: &AnyRow) -> Result<RolloutRecord, DbError> {
    Ok(RolloutRecord {
        id: row.try_get("id")?,
        release_digest: parse_digest(&row.try_get::<String, _>("release_digest")?, "release")?,
        filter: row.try_get("device_filter")?,
        spec: from_json(&row.try_get::<String, _>("spec")?, "spec")?,
        state: row.try_get("planner_state")?,
        status: row.try_get("status")?,
        created_by: row.try_get("created_by")?,
        approved_by: row.try_get("approved_by")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

const EVENT_SELECT: &str = "SELECT id, at, actor, kind, rollout_id, device_id, details FROM events";

fn event_from_row(row: &AnyRow) -> Result<EventRecord, DbError> {
    Ok(EventRecord {
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        actor: row.try_get("actor")?,
        kind: {
            let name: String = row.try_get("kind")?;
            EventKind::parse(&name)
                .ok_or_else(|| DbError::Corrupt(format!("event kind {name:?}")))?
        },
        rollout_id: row.try_get("rollout_id")?,
        device_id: row.try_get("device_id")?,
        details: from_json(&row.try_get::<String, _>("details")?, "details")?,
    })
}

fn ser_digest<S: serde::Serializer>(d: &Digest, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(d)
}

fn ser_opt_digest<S: serde::Serializer>(d: &Option<Digest>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.collect_str(d),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://ota:s3cret@db:5432/ota"),
            "postgres://ota:***@db:5432/ota"
        );
        assert_eq!(redact_url("postgres://ota@db/ota"), "postgres://ota@db/ota");
        assert_eq!(
            redact_url("postgres://ota:p@ss@db/ota?sslmode=require&password=x&application_name=y"),
            "postgres://ota:***@db/ota?sslmode=require&password=***&application_name=y"
        );
        assert_eq!(
            redact_url("sqlite:///data/ota.db?mode=rwc"),
            "sqlite:///data/ota.db?mode=rwc"
        );
        assert!(DbKind::from_url("mysql://x").is_err());
    }
}
