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
//! One module per table holds its record types, its queries on [`Db`] and its writes on
//! [`DbTx`]: `releases.rs`, `devices.rs`, `rollouts.rs`, `events.rs`, `desired.rs`,
//! `flags.rs`, `trust.rs` (and `device_trust.rs`), `transfers.rs`, `lease.rs` (the lease and
//! replicas); this file keeps the connection, migrations, transactions and conversions. Reads
//! of the whole registry that must stay fast at 100,000 devices have their own modules:
//! [`Db::device_page`] (one page of the filtered, sorted list, `device_page.rs`) and
//! [`Db::device_tally`] (counts by version, class and result, `device_tally.rs`).
//!
//! Batched writes (the fleet coordinator's device reports, planner states, desired states and
//! their audit events) go through one [`DbTx`] per batch ([`Db::begin`]). Every committed audit
//! event is also handed to the [`EventSink`] (webhooks), if one is installed.

mod desired;
mod device_page;
mod device_tally;
mod device_trust;
mod devices;
mod events;
mod flags;
mod releases;
mod rollouts;
mod transfers;
mod trust;

pub use desired::DesiredRecord;
pub use device_page::{DevicePage, DevicePageQuery, DeviceSort, SortDirection};
pub use device_tally::DeviceTally;
pub use device_trust::{SequenceCount, TrustTally};
pub use devices::{DeviceCounts, DeviceRecord, DeviceReport, last_outcome_json};
pub use events::{EventFilter, EventRecord, MAX_EVENT_PAGE, NewEvent};
pub use releases::{InsertOutcome, ReleaseRecord};
pub use rollouts::{NewRollout, RolloutRecord, StatusCounts};
pub use transfers::{TransferRecord, TransferTotals, TransferView};

use std::borrow::Cow;
use std::sync::Arc;

use ota_core::digest::Digest;
use ota_core::fleet::RolloutId;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::{MigrateError, Migration, MigrationType, Migrator};
use sqlx::{AnyPool, SqlSafeStr};

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

/// How long PostgreSQL lets a transaction of [`Db::connect`] sit idle (the default lease TTL):
/// see [`Db::connect_with`].
pub const DEFAULT_IDLE_TRANSACTION_LIMIT: std::time::Duration =
    std::time::Duration::from_secs(crate::config::DEFAULT_LEASE_TTL_SECS);

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
        Self::connect_with(
            url,
            max_connections,
            DEFAULT_ACQUIRE_TIMEOUT,
            DEFAULT_IDLE_TRANSACTION_LIMIT,
        )
        .await
    }

    /// Like [`connect`](Self::connect); a query waits at most `acquire_timeout` for a pooled
    /// connection (opening one included) before it fails as unavailable. On PostgreSQL every
    /// connection is opened with `idle_in_transaction_session_timeout = idle_transaction_limit`
    /// (whole milliseconds, at least 1): a transaction of a process that stands still between
    /// two statements (SIGSTOP, a paused VM) is ended by the database, so the row locks it
    /// holds (the coordinator lease's, taken by every batch's fencing check) do not block a
    /// takeover for longer than that. The server passes its lease TTL.
    pub async fn connect_with(
        url: &str,
        max_connections: u32,
        acquire_timeout: std::time::Duration,
        idle_transaction_limit: std::time::Duration,
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
        let idle_ms = idle_transaction_limit.as_millis().max(1);
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(acquire_timeout)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if kind == DbKind::Postgres {
                        let set = format!("SET idle_in_transaction_session_timeout = {idle_ms}");
                        sqlx::query(sqlx::AssertSqlSafe(set)).execute(conn).await?;
                    }
                    Ok(())
                })
            })
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

/// A stored rollout id; zero or negative is a corrupt row.
fn rollout_id(id: i64) -> Result<RolloutId, DbError> {
    RolloutId::new(id).ok_or_else(|| DbError::Corrupt(format!("rollout id {id}")))
}

fn opt_rollout_id(id: Option<i64>) -> Result<Option<RolloutId>, DbError> {
    id.map(rollout_id).transpose()
}

fn opt_digest(text: Option<String>, what: &str) -> Result<Option<Digest>, DbError> {
    text.map(|t| parse_digest(&t, what)).transpose()
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
