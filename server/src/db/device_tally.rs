//! The fleet counted by running version and release, hardware class and last result, in the
//! database.
//!
//! One `GROUP BY` over the registry: the overview of a 100,000-device fleet reads a few hundred
//! groups, not 100,000 rows.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;

use super::{Db, DbError, to_u64};

/// The registry counted (the console's fleet overview).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DeviceTally {
    /// Devices known.
    pub total: u64,
    /// Devices online.
    pub online: u64,
    /// Devices running something other than they should.
    pub drifted: u64,
    /// Devices whose last result is a deferral (`deferred-power`, `deferred-window`, ...).
    pub deferred: u64,
    /// Devices by running version (`None`: not reported yet).
    pub by_version: BTreeMap<Option<String>, u64>,
    /// Devices by hardware class (`None`: not reported yet).
    pub by_class: BTreeMap<Option<String>, u64>,
    /// Devices by last update result (`None`: none yet).
    pub by_result: BTreeMap<Option<String>, u64>,
}

impl Db {
    /// Counts the registry (see [`DeviceTally`]).
    pub async fn device_tally(&self) -> Result<DeviceTally, DbError> {
        let rows = sqlx::query(
            "SELECT running_version, hardware_class, last_result, online, drifted, \
             COUNT(*) AS n FROM devices \
             GROUP BY running_version, hardware_class, last_result, online, drifted",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut t = DeviceTally::default();
        for row in &rows {
            let n = to_u64(row.try_get("n")?, "count")?;
            let result: Option<String> = row.try_get("last_result")?;
            t.total += n;
            if row.try_get::<i64, _>("online")? != 0 {
                t.online += n;
            }
            if row.try_get::<i64, _>("drifted")? != 0 {
                t.drifted += n;
            }
            if result.as_deref().is_some_and(|r| r.starts_with("deferred")) {
                t.deferred += n;
            }
            *t.by_version
                .entry(row.try_get("running_version")?)
                .or_default() += n;
            *t.by_class
                .entry(row.try_get("hardware_class")?)
                .or_default() += n;
            *t.by_result.entry(result).or_default() += n;
        }
        Ok(t)
    }

    /// Devices by the artifact digest (hex) they run (`None`: not reported yet), for the
    /// releases page.
    pub async fn devices_by_digest(&self) -> Result<BTreeMap<Option<String>, u64>, DbError> {
        let rows = sqlx::query(
            "SELECT running_digest, COUNT(*) AS n FROM devices GROUP BY running_digest",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut by_digest = BTreeMap::new();
        for row in &rows {
            by_digest.insert(
                row.try_get("running_digest")?,
                to_u64(row.try_get("n")?, "count")?,
            );
        }
        Ok(by_digest)
    }
}
