//! Which trust set each device uses (table `device_trust`, migration 0007): written from the
//! devices' trust reports by the coordinator, read as counts per sequence and the devices not
//! yet on the set in force (`GET /api/v1/trust`, the console's trust page).

use serde::Serialize;
use sqlx::Row;

use super::{Db, DbError, DbTx, to_i64, to_u64};

/// Devices using one trust-set sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SequenceCount {
    /// The sequence (0: the set devices were provisioned with).
    pub sequence: u64,
    /// Devices whose last trust report named it (or, for 0, that never sent one).
    pub devices: u64,
}

/// The registry's devices counted by the trust set they use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TrustTally {
    /// Devices known.
    pub total: u64,
    /// Devices on the sequence asked about (the set in force).
    pub on_this_set: u64,
    /// Devices per sequence, lowest first.
    pub by_sequence: Vec<SequenceCount>,
    /// The first devices (by id) on an older sequence than the one asked about.
    pub behind: Vec<String>,
}

impl Db {
    /// Counts the devices by trust sequence and lists up to `limit` of those below `current`
    /// (the set in force). A device that never sent a trust report counts as sequence 0.
    pub async fn trust_tally(&self, current: u64, limit: u32) -> Result<TrustTally, DbError> {
        let rows = sqlx::query(
            "SELECT COALESCE(t.sequence, 0) AS seq, COUNT(*) AS n \
             FROM devices d LEFT JOIN device_trust t ON t.device_id = d.id \
             GROUP BY COALESCE(t.sequence, 0) ORDER BY COALESCE(t.sequence, 0)",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut tally = TrustTally::default();
        for row in &rows {
            let sequence = to_u64(row.try_get("seq")?, "trust sequence")?;
            let devices = to_u64(row.try_get("n")?, "count")?;
            tally.total += devices;
            if sequence == current {
                tally.on_this_set = devices;
            }
            tally.by_sequence.push(SequenceCount { sequence, devices });
        }
        tally.behind = sqlx::query_scalar(
            "SELECT d.id FROM devices d LEFT JOIN device_trust t ON t.device_id = d.id \
             WHERE COALESCE(t.sequence, 0) < $1 ORDER BY d.id LIMIT $2",
        )
        .bind(to_i64(current, "trust sequence")?)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(tally)
    }
}

impl DbTx {
    /// Records that `device` uses trust-set `sequence`, as its trust report at `now` said.
    pub async fn set_device_trust(
        &mut self,
        device: &str,
        sequence: u64,
        now: i64,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO device_trust (device_id, sequence, at) VALUES ($1, $2, $3) \
             ON CONFLICT (device_id) DO UPDATE SET sequence = excluded.sequence, at = excluded.at",
        )
        .bind(device)
        .bind(to_i64(sequence, "trust sequence")?)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }
}
