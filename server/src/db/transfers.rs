//! Table `transfers`: what each download cost (fetched vs full bytes), the first report
//! per device and generation only.

use ota_core::digest::Digest;
use ota_core::fleet::RolloutId;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Db, DbError, DbTx, ser_opt_digest, to_i64, to_u64};

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
    pub rollout_id: Option<RolloutId>,
    /// The release's artifact digest, when the device named it.
    pub digest: Option<Digest>,
    /// Body bytes fetched.
    pub fetched: u64,
    /// The artifact's full size.
    pub size: u64,
}

/// Download totals: of a rollout ([`Db::rollout_transfers`]) or of the fleet
/// ([`Db::transfer_totals`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
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

impl Db {
    /// The download totals of rollout `id` for its release `digest` (rollback downloads of
    /// other releases are not counted).
    pub async fn rollout_transfers(
        &self,
        id: RolloutId,
        digest: &Digest,
    ) -> Result<TransferTotals, DbError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{TRANSFER_TOTALS} WHERE rollout_id = $1 AND digest = $2"
        )))
        .bind(id.get())
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
}

impl DbTx {
    /// Records a download's cost at `now` unless one is recorded for the same device and
    /// generation already (the first report wins); returns whether it was new.
    pub async fn insert_transfer(&mut self, t: &TransferRecord, now: i64) -> Result<bool, DbError> {
        let n = sqlx::query(
            "INSERT INTO transfers (device_id, generation, rollout_id, digest, fetched, size, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (device_id, generation) DO NOTHING",
        )
        .bind(&t.device_id)
        .bind(to_i64(t.generation, "generation")?)
        .bind(t.rollout_id.map(RolloutId::get))
        .bind(t.digest.map(|d| d.to_string()))
        .bind(to_i64(t.fetched, "fetched")?)
        .bind(to_i64(t.size, "size")?)
        .bind(now)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        Ok(n > 0)
    }
}
