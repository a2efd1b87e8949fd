//! Table `devices`: the registry (last reported state, labels, `online`, `drifted`,
//! `last_seen`). The fleet coordinator is its only writer, through [`DbTx`].

use std::collections::BTreeMap;

use ota_core::digest::Digest;
use ota_core::time::Timestamp;
use ota_core::wire::{ExecutionState, ReportedState, UpdateOutcome, WireMessage};
use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::transfers::TransferView;
use super::{
    Db, DbError, DbTx, from_json, not_found_if_zero, opt_digest, ser_opt_digest, to_i64, to_json,
    to_u64,
};

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

const DEVICE_COLUMNS: &str = "id, hardware_class, labels, server_labels, running_version, \
    running_digest, known_good_digest, last_committed_digest, last_result, power, inventory, \
    first_seen, last_seen, online, drifted, reported_generation, reported";

/// A device row with its newest recorded download (by generation), if any.
pub(super) fn format_device_select(tail: &str) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(format!(
        "SELECT {DEVICE_COLUMNS}, t.fetched AS transfer_fetched, t.size AS transfer_size, \
         t.generation AS transfer_generation, t.digest AS transfer_digest FROM devices \
         LEFT JOIN transfers t ON t.device_id = devices.id AND t.generation = \
         (SELECT MAX(x.generation) FROM transfers x WHERE x.device_id = devices.id) {tail}"
    ))
}

/// A reported update outcome as JSON: `state` (its kebab-case name), `cause` and `detail`
/// (for rejections, failures — `cause` is then the phase — and rollbacks), `release` (the
/// digest it concerns), `rollout` (the rollout id, `null` when the desired state it answered
/// named none or not one of this server's ids), `generation` and `at` (unix seconds by the
/// device's clock).
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
        "rollout": o.rollout(),
        "generation": o.generation,
        "at": Timestamp::from_unix_millis(o.at).as_unix_secs(),
    })
}

pub(super) fn device_from_row(row: &AnyRow) -> Result<DeviceRecord, DbError> {
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

impl Db {
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

    /// How many devices are marked drifted.
    pub async fn count_drifted(&self) -> Result<u64, DbError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM devices WHERE drifted <> 0")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
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

    /// One device, as this transaction sees it (its own writes included).
    pub async fn get_device(&mut self, id: &str) -> Result<Option<DeviceRecord>, DbError> {
        let row = sqlx::query(format_device_select("WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *self.tx)
            .await?;
        row.as_ref().map(device_from_row).transpose()
    }
}
