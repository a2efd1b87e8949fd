//! The coordinator lease and the replica list (issue 15), on SQLite or PostgreSQL.
//!
//! Table `coordinator_lease` has one row: the replica holding the lease, its fencing `epoch`,
//! its advertised API URL and `expires_at`, in unix milliseconds **of the database's clock**
//! (no replica's clock is trusted). A replica that takes the lease adds one to the epoch.
//! Every batch the coordinator writes first runs [`DbTx::check_fence`] in its transaction: a
//! conditional update of the lease row that matches only the replica's own id and epoch. On
//! PostgreSQL that update also locks the row until the commit, so a takeover (which updates the
//! same row) waits for the batch in flight and every later batch of the old leader is refused
//! with [`DbError::Fenced`]. SQLite has one writer at a time, which serializes the same way.
//!
//! Table `replicas` holds every replica's last heartbeat (role, epoch, URL), for status; the
//! leader deletes the rows of replicas silent for too long, and a replica that stops cleanly
//! deletes its own.
//! The decisions (when to try, renew, step down) are in [`crate::lease`].

use ota_core::time::Timestamp;
use sqlx::Row;

use super::{Db, DbError, DbKind, DbTx};

/// Who may write as the coordinator: a replica and the epoch it took the lease with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The replica id.
    pub replica: String,
    /// The epoch of its lease.
    pub epoch: i64,
}

/// What [`Db::acquire_lease`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AcquireOutcome {
    /// The lease is ours, with this (new) epoch.
    Acquired {
        /// The new epoch.
        epoch: i64,
    },
    /// Another replica holds an unexpired lease.
    Held(LeaseRecord),
}

/// What [`Db::renew_lease`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RenewOutcome {
    /// The lease is extended by the TTL from the database's now.
    Renewed,
    /// The lease row no longer names this replica and epoch: another replica took it.
    Lost(LeaseRecord),
}

/// The lease row as read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct LeaseRecord {
    /// The replica holding (or that last held) the lease; `None` before the first one.
    pub holder: Option<String>,
    /// The current epoch.
    pub epoch: i64,
    /// The holder's advertised API URL.
    pub advertise_url: Option<String>,
    /// Milliseconds until it expires by the database's clock (0 or less: expired).
    pub expires_in_ms: i64,
}

impl LeaseRecord {
    /// The holder and its URL while the lease is unexpired.
    pub fn live_holder(&self) -> Option<(&str, Option<&str>)> {
        match &self.holder {
            Some(h) if self.expires_in_ms > 0 => Some((h, self.advertise_url.as_deref())),
            _ => None,
        }
    }
}

/// One replica's last heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ReplicaRecord {
    /// The replica id (`[ha] replica_id`).
    pub replica_id: String,
    /// `leader` or `standby`, as it last wrote.
    pub role: String,
    /// The epoch it leads with (leader) or last saw.
    pub epoch: i64,
    /// Its advertised API URL.
    pub advertise_url: Option<String>,
    /// Its last heartbeat, unix milliseconds (database clock); shown in unix seconds.
    #[serde(serialize_with = "ser_unix_millis_as_secs")]
    pub heartbeat_at: i64,
    /// How long ago that was, milliseconds (database clock).
    pub heartbeat_age_ms: i64,
}

/// A unix-milliseconds time as the API shows times: unix seconds (rounded down; a time before
/// the epoch, which the database's clock never gives, shows as 0).
fn ser_unix_millis_as_secs<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    let ms = u64::try_from(*ms).unwrap_or(0);
    s.serialize_u64(Timestamp::from_unix_millis(ms).as_unix_secs())
}

/// The database's now in unix milliseconds, as an SQL expression.
fn db_now(kind: DbKind) -> &'static str {
    match kind {
        DbKind::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
        DbKind::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
    }
}

impl Db {
    /// Takes the lease for `replica` (advertising `url`) for `ttl_ms` if it is free or expired
    /// (with `force`, whatever its state: the one-replica server takes it at start), adding one
    /// to the epoch. Otherwise answers who holds it.
    pub async fn acquire_lease(
        &self,
        replica: &str,
        url: &str,
        ttl_ms: i64,
        force: bool,
    ) -> Result<AcquireOutcome, DbError> {
        let now = db_now(self.kind);
        let sql = format!(
            "UPDATE coordinator_lease SET holder = $1, advertise_url = $2, epoch = epoch + 1, \
             expires_at = {now} + $3 \
             WHERE id = 1 AND ($4 = 1 OR holder IS NULL OR expires_at <= {now}) RETURNING epoch"
        );
        let epoch: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(replica)
            .bind(url)
            .bind(ttl_ms)
            .bind(i64::from(force))
            .fetch_optional(&self.pool)
            .await?;
        match epoch {
            Some(epoch) => Ok(AcquireOutcome::Acquired { epoch }),
            None => Ok(AcquireOutcome::Held(self.lease().await?)),
        }
    }

    /// Extends the lease of `replica` at `epoch` to `ttl_ms` from the database's now, if the
    /// row still names them.
    pub async fn renew_lease(
        &self,
        replica: &str,
        epoch: i64,
        ttl_ms: i64,
    ) -> Result<RenewOutcome, DbError> {
        let now = db_now(self.kind);
        let sql = format!(
            "UPDATE coordinator_lease SET expires_at = {now} + $3 \
             WHERE id = 1 AND holder = $1 AND epoch = $2"
        );
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(replica)
            .bind(epoch)
            .bind(ttl_ms)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 1 {
            Ok(RenewOutcome::Renewed)
        } else {
            Ok(RenewOutcome::Lost(self.lease().await?))
        }
    }

    /// Gives the lease of `replica` at `epoch` up (it expires now; the epoch stays), so a
    /// standby takes over without waiting for the TTL. Does nothing if another replica took it.
    pub async fn release_lease(&self, replica: &str, epoch: i64) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE coordinator_lease SET expires_at = 0 WHERE id = 1 AND holder = $1 AND epoch = $2",
        )
        .bind(replica)
        .bind(epoch)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The lease row.
    pub async fn lease(&self) -> Result<LeaseRecord, DbError> {
        let now = db_now(self.kind);
        let sql = format!(
            "SELECT holder, epoch, advertise_url, expires_at - {now} FROM coordinator_lease \
             WHERE id = 1"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| DbError::Corrupt("the coordinator_lease row is missing".into()))?;
        Ok(LeaseRecord {
            holder: row.try_get(0)?,
            epoch: row.try_get(1)?,
            advertise_url: row.try_get(2)?,
            expires_in_ms: row.try_get(3)?,
        })
    }

    /// Records `replica`'s heartbeat now (database clock) with its role, epoch and URL.
    pub async fn replica_heartbeat(
        &self,
        replica: &str,
        role: &str,
        epoch: i64,
        url: &str,
    ) -> Result<(), DbError> {
        let now = db_now(self.kind);
        let sql = format!(
            "INSERT INTO replicas (replica_id, role, epoch, advertise_url, heartbeat_at) \
             VALUES ($1, $2, $3, $4, {now}) \
             ON CONFLICT (replica_id) DO UPDATE SET role = excluded.role, epoch = excluded.epoch, \
             advertise_url = excluded.advertise_url, heartbeat_at = excluded.heartbeat_at"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(replica)
            .bind(role)
            .bind(epoch)
            .bind(url)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Removes the rows of the replicas whose last heartbeat is older than `max_age_ms`
    /// (database clock); returns how many. The leader calls it at every renewal.
    pub async fn forget_replicas(&self, max_age_ms: i64) -> Result<u64, DbError> {
        let now = db_now(self.kind);
        let sql = format!("DELETE FROM replicas WHERE heartbeat_at < {now} - $1");
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(max_age_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Removes `replica`'s row (a replica that stops cleanly).
    pub async fn remove_replica(&self, replica: &str) -> Result<(), DbError> {
        sqlx::query("DELETE FROM replicas WHERE replica_id = $1")
            .bind(replica)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every replica with a row: those that sent a heartbeat, did not stop cleanly and were
    /// not forgotten yet ([`Db::forget_replicas`]), by id.
    pub async fn list_replicas(&self) -> Result<Vec<ReplicaRecord>, DbError> {
        let now = db_now(self.kind);
        let sql = format!(
            "SELECT replica_id, role, epoch, advertise_url, heartbeat_at, {now} - heartbeat_at \
             FROM replicas ORDER BY replica_id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(ReplicaRecord {
                    replica_id: row.try_get(0)?,
                    role: row.try_get(1)?,
                    epoch: row.try_get(2)?,
                    advertise_url: row.try_get(3)?,
                    heartbeat_at: row.try_get(4)?,
                    heartbeat_age_ms: row.try_get(5)?,
                })
            })
            .collect()
    }
}

impl DbTx {
    /// Fencing: refuses ([`DbError::Fenced`]) unless the lease row still names `fence`'s
    /// replica and epoch. On PostgreSQL the row stays locked until this transaction ends, so no
    /// takeover can commit in between; a takeover committed before makes this fail.
    pub async fn check_fence(&mut self, fence: &Fence) -> Result<(), DbError> {
        let done = sqlx::query(
            "UPDATE coordinator_lease SET epoch = epoch WHERE id = 1 AND holder = $1 AND epoch = $2",
        )
        .bind(&fence.replica)
        .bind(fence.epoch)
        .execute(&mut *self.tx)
        .await?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(DbError::Fenced { epoch: fence.epoch })
        }
    }
}
