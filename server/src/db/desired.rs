//! Table `desired`: the desired state last published to each device (generation, payload).

use ota_core::digest::Digest;
use ota_core::fleet::RolloutId;
use ota_core::rollout::DesiredKind;
use sqlx::Row;

use super::{Db, DbError, DbTx, opt_rollout_id, parse_digest, to_i64, to_u64};

/// The desired state last published to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DesiredRecord {
    /// The device.
    pub device_id: String,
    /// The desired state's generation.
    pub generation: u64,
    /// The rollout that published it.
    pub rollout_id: Option<RolloutId>,
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
        rollout_id: Option<RolloutId>,
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

impl Db {
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
                    rollout_id: opt_rollout_id(row.try_get("rollout_id")?)?,
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
}

impl DbTx {
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
        .bind(d.rollout_id.map(RolloutId::get))
        .bind(d.digest.to_string())
        .bind(d.kind.name())
        .bind(d.payload.as_slice())
        .bind(d.updated_at)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }
}
