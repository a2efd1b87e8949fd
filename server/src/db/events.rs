//! Table `events`: the append-only audit log.

use ota_core::fleet::RolloutId;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{Db, DbError, DbTx, from_json, opt_rollout_id, to_json};
use crate::event_kinds::EventKind;

/// Most events [`Db::list_events`] returns at once.
pub const MAX_EVENT_PAGE: u32 = 1000;

/// An audit event to append.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct NewEvent {
    /// When, unix seconds.
    pub at: i64,
    /// Who: an operator name, `device:<id>` or `server`.
    pub actor: String,
    /// What.
    pub kind: EventKind,
    /// The rollout it concerns.
    pub rollout_id: Option<RolloutId>,
    /// The device it concerns.
    pub device_id: Option<String>,
    /// Details, a JSON object.
    pub details: serde_json::Value,
}

impl NewEvent {
    /// An event with no rollout or device and empty details.
    pub fn new(at: i64, actor: impl Into<String>, kind: EventKind) -> Self {
        NewEvent {
            at,
            actor: actor.into(),
            kind,
            rollout_id: None,
            device_id: None,
            details: serde_json::Value::Object(serde_json::Map::new()),
        }
    }

    /// Sets the rollout.
    pub fn rollout(mut self, id: RolloutId) -> Self {
        self.rollout_id = Some(id);
        self
    }

    /// Sets the device.
    pub fn device(mut self, id: impl Into<String>) -> Self {
        self.device_id = Some(id.into());
        self
    }

    /// Sets the details.
    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

/// An audit event as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct EventRecord {
    /// Event id (increasing).
    pub id: i64,
    /// When, unix seconds.
    pub at: i64,
    /// Who.
    pub actor: String,
    /// What.
    pub kind: EventKind,
    /// The rollout it concerns.
    pub rollout_id: Option<RolloutId>,
    /// The device it concerns.
    pub device_id: Option<String>,
    /// Details.
    pub details: serde_json::Value,
}

/// Which events [`Db::list_events`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventFilter {
    /// Only events of this rollout.
    pub rollout: Option<RolloutId>,
    /// Only events of this device.
    pub device: Option<String>,
    /// Only events of this kind.
    pub kind: Option<EventKind>,
    /// Only events recorded by this actor (an operator's name, `server`, `mqtt`,
    /// `device:<id>`).
    pub actor: Option<String>,
    /// Only events with an id above this one (the cursor for following the log); without it
    /// the newest events are returned.
    pub after: Option<i64>,
    /// Only events with an id below this one (the cursor for paging back through the log, the
    /// newest of those first); ignored with `after`.
    pub before: Option<i64>,
    /// At most this many (0 means 100; capped at [`MAX_EVENT_PAGE`]).
    pub limit: u32,
}

pub(super) async fn insert_event(
    conn: &mut AnyConnection,
    event: &NewEvent,
) -> Result<EventRecord, DbError> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO events (at, actor, kind, rollout_id, device_id, details) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(event.at)
    .bind(&event.actor)
    .bind(event.kind.name())
    .bind(event.rollout_id.map(RolloutId::get))
    .bind(event.device_id.as_deref())
    .bind(to_json(&event.details))
    .fetch_one(conn)
    .await?;
    Ok(EventRecord {
        id,
        at: event.at,
        actor: event.actor.clone(),
        kind: event.kind,
        rollout_id: event.rollout_id,
        device_id: event.device_id.clone(),
        details: event.details.clone(),
    })
}

const EVENT_SELECT: &str = "SELECT id, at, actor, kind, rollout_id, device_id, details FROM events";

fn event_from_row(row: &AnyRow) -> Result<EventRecord, DbError> {
    Ok(EventRecord {
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        actor: row.try_get("actor")?,
        kind: {
            let name: String = row.try_get("kind")?;
            EventKind::parse(&name)
                .ok_or_else(|| DbError::Corrupt(format!("event kind {name:?}")))?
        },
        rollout_id: opt_rollout_id(row.try_get("rollout_id")?)?,
        device_id: row.try_get("device_id")?,
        details: from_json(&row.try_get::<String, _>("details")?, "details")?,
    })
}

impl Db {
    /// Appends one audit event; returns its id.
    pub async fn append_event(&self, event: &NewEvent) -> Result<i64, DbError> {
        let mut conn = self.pool.acquire().await?;
        let record = insert_event(&mut conn, event).await?;
        let id = record.id;
        self.notify(&[record]);
        Ok(id)
    }

    /// Events matching `filter`, in increasing id order: those after `filter.after`, or the
    /// newest ones without it.
    pub async fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventRecord>, DbError> {
        let limit = match filter.limit {
            0 => 100,
            n => n.min(MAX_EVENT_PAGE),
        };
        const WHERE: &str = "WHERE ($1 IS NULL OR rollout_id = $1) \
            AND ($2 IS NULL OR device_id = $2) AND ($3 IS NULL OR kind = $3) \
            AND ($6 IS NULL OR actor = $6) AND id > $4 AND id < $7";
        let sql = if filter.after.is_some() {
            format!("{EVENT_SELECT} {WHERE} ORDER BY id ASC LIMIT $5")
        } else {
            format!("{EVENT_SELECT} {WHERE} ORDER BY id DESC LIMIT $5")
        };
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(filter.rollout.map(RolloutId::get))
            .bind(filter.device.as_deref())
            .bind(filter.kind.map(EventKind::name))
            .bind(filter.after.unwrap_or(i64::MIN))
            .bind(i64::from(limit))
            .bind(filter.actor.as_deref())
            .bind(
                filter
                    .before
                    .filter(|_| filter.after.is_none())
                    .unwrap_or(i64::MAX),
            )
            .fetch_all(&self.pool)
            .await?;
        let mut events = rows
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        if filter.after.is_none() {
            events.reverse();
        }
        Ok(events)
    }
}

impl DbTx {
    /// Appends an audit event; returns its id.
    pub async fn append_event(&mut self, event: &NewEvent) -> Result<i64, DbError> {
        let record = insert_event(&mut self.tx, event).await?;
        let id = record.id;
        self.events.push(record);
        Ok(id)
    }
}
