//! Table `rollouts`: release, device filter, spec (JSON), planner state (CBOR), status.

use std::collections::BTreeMap;

use ota_core::digest::Digest;
use ota_core::fleet::RolloutId;
use ota_core::rollout::RolloutStatus;
use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{
    Db, DbError, DbTx, from_json, not_found_if_zero, parse_digest, rollout_id, ser_digest, to_json,
};

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
    /// The status it is stored with until the planner's own is written (the planner needs the
    /// row's id first; the coordinator writes both in one transaction).
    pub status: RolloutStatus,
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
        status: RolloutStatus,
        created_by: impl Into<String>,
    ) -> Self {
        NewRollout {
            release_digest,
            filter: filter.into(),
            spec,
            state,
            status,
            created_by: created_by.into(),
        }
    }
}

/// A rollout as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RolloutRecord {
    /// Rollout id.
    pub id: RolloutId,
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
    #[serde(serialize_with = "ser_status")]
    pub status: RolloutStatus,
    /// Who created it.
    pub created_by: String,
    /// Who approved it.
    pub approved_by: Option<String>,
    /// Creation time, unix seconds.
    pub created_at: i64,
    /// Last change, unix seconds.
    pub updated_at: i64,
}

/// Rollouts per status.
pub type StatusCounts = BTreeMap<String, u64>;

const ROLLOUT_COLUMNS: &str = "id, release_digest, device_filter, spec, planner_state, status, \
    created_by, approved_by, created_at, updated_at";

fn format_rollout_select(tail: &str) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts {tail}"))
}

/// A stored status; an unknown name is a corrupt row.
fn parse_status(name: &str) -> Result<RolloutStatus, DbError> {
    RolloutStatus::parse(name)
        .ok_or_else(|| DbError::Corrupt(format!("rollout status {name:?} is not a status")))
}

fn ser_status<S: serde::Serializer>(status: &RolloutStatus, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(status.name())
}

fn rollout_from_row(row: &AnyRow) -> Result<RolloutRecord, DbError> {
    Ok(RolloutRecord {
        id: rollout_id(row.try_get("id")?)?,
        release_digest: parse_digest(&row.try_get::<String, _>("release_digest")?, "release")?,
        filter: row.try_get("device_filter")?,
        spec: from_json(&row.try_get::<String, _>("spec")?, "spec")?,
        state: row.try_get("planner_state")?,
        status: parse_status(&row.try_get::<String, _>("status")?)?,
        created_by: row.try_get("created_by")?,
        approved_by: row.try_get("approved_by")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl Db {
    /// One rollout.
    pub async fn get_rollout(&self, id: RolloutId) -> Result<Option<RolloutRecord>, DbError> {
        let row = sqlx::query(format_rollout_select("WHERE id = $1"))
            .bind(id.get())
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

    /// Rollouts whose status is one of `statuses`, oldest first.
    pub async fn rollouts_with_status(
        &self,
        statuses: &[RolloutStatus],
    ) -> Result<Vec<RolloutRecord>, DbError> {
        let all = sqlx::query(format_rollout_select("ORDER BY id ASC"))
            .fetch_all(&self.pool)
            .await?;
        // Status filtering in Rust keeps the SQL portable (no array binds in AnyPool).
        let mut out = Vec::new();
        for row in &all {
            let status: String = row.try_get("status")?;
            if RolloutStatus::parse(&status).is_some_and(|s| statuses.contains(&s)) {
                out.push(rollout_from_row(row)?);
            }
        }
        Ok(out)
    }

    /// The id and stored planner state of every active rollout ([`RolloutStatus::is_active`]:
    /// awaiting approval, running or paused).
    pub async fn active_planner_states(&self) -> Result<Vec<(RolloutId, Vec<u8>)>, DbError> {
        let active: Vec<String> = RolloutStatus::ALL
            .into_iter()
            .filter(|s| s.is_active())
            .map(|s| format!("'{}'", s.name()))
            .collect();
        // The names are core's constants (kebab-case letters), never input.
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id, planner_state FROM rollouts WHERE status IN ({}) ORDER BY id",
            active.join(", ")
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((rollout_id(row.try_get(0)?)?, row.try_get(1)?)))
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
}

impl DbTx {
    /// Creates a rollout row at `now`; returns its id.
    pub async fn insert_rollout(
        &mut self,
        rollout: &NewRollout,
        now: i64,
    ) -> Result<RolloutId, DbError> {
        rollout_id(
            sqlx::query_scalar(
                "INSERT INTO rollouts (release_digest, device_filter, spec, planner_state, status, \
             created_by, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
             RETURNING id",
            )
            .bind(rollout.release_digest.to_string())
            .bind(&rollout.filter)
            .bind(to_json(&rollout.spec))
            .bind(rollout.state.as_slice())
            .bind(rollout.status.name())
            .bind(&rollout.created_by)
            .bind(now)
            .fetch_one(&mut *self.tx)
            .await?,
        )
    }

    /// Stores a rollout's spec JSON (after the id is known).
    pub async fn set_rollout_spec(
        &mut self,
        id: RolloutId,
        spec: &serde_json::Value,
    ) -> Result<(), DbError> {
        sqlx::query("UPDATE rollouts SET spec = $2 WHERE id = $1")
            .bind(id.get())
            .bind(to_json(spec))
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Stores a rollout's planner state and status at `now`.
    pub async fn update_rollout(
        &mut self,
        id: RolloutId,
        state: &[u8],
        status: RolloutStatus,
        now: i64,
    ) -> Result<(), DbError> {
        let n = sqlx::query(
            "UPDATE rollouts SET planner_state = $2, status = $3, updated_at = $4 WHERE id = $1",
        )
        .bind(id.get())
        .bind(state)
        .bind(status.name())
        .bind(now)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        not_found_if_zero(n, "rollout", &id.to_string())
    }

    /// Records who approved a rollout.
    pub async fn set_rollout_approved(
        &mut self,
        id: RolloutId,
        approved_by: &str,
        now: i64,
    ) -> Result<(), DbError> {
        let n = sqlx::query("UPDATE rollouts SET approved_by = $2, updated_at = $3 WHERE id = $1")
            .bind(id.get())
            .bind(approved_by)
            .bind(now)
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
        not_found_if_zero(n, "rollout", &id.to_string())
    }
}
