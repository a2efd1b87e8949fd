//! Tables `flags`, `flag_state` and `flag_changes`: feature flag definitions (CBOR
//! `FlagDefinition`), the fleet flag-state version and the flag audit trail.

use ota_core::flags::{FlagChange, FlagDefinition, FlagSet};
use ota_core::wire::WireMessage;

use super::events::MAX_EVENT_PAGE;
use super::{Db, DbError, DbTx, to_i64, to_u64};

impl Db {
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

impl DbTx {
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
}
