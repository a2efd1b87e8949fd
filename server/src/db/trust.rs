//! Table `trust_updates`: every accepted signed trust-set update; the newest is in force.

use super::{Db, DbError, DbTx, to_i64};

impl Db {
    /// The signed bytes of the newest accepted trust-set update, `None` if the configured
    /// trust set was never rotated.
    pub async fn latest_trust_update(&self) -> Result<Option<Vec<u8>>, DbError> {
        Ok(
            sqlx::query_scalar("SELECT payload FROM trust_updates ORDER BY sequence DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}

impl DbTx {
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
}
