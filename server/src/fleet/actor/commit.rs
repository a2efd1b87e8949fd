//! One batch, one transaction: the device rows, planner states, desired states, flags and
//! audit events the batch gathered are written (fenced by the lease epoch), then published.

use std::collections::BTreeSet;

use ota_core::wire::{DeviceId, TopicKind};
use rumqttc::AsyncClient;

use super::{Actor, Batch};
use crate::db::{DbError, DbTx};
use crate::fleet::flags::Publish;

impl Actor {
    /// Writes the batch in one transaction, then publishes; false if it could not be stored.
    /// A batch failing for something it holds (not for the database being unavailable) is
    /// written again with each device report isolated: a report the database refuses is
    /// dropped (`mqtt-rejected`), the rest is stored. A batch that still cannot be stored, or
    /// that needed a read that failed, is dropped with the in-memory state: the coordinator
    /// turns read-only (keeping the batch's device messages) until it can load the state
    /// again ([`Actor::wait_for_db`]).
    pub(super) async fn commit(
        &mut self,
        mut batch: Batch,
        tx: Option<DbTx>,
        client: &AsyncClient,
    ) -> bool {
        let dirty = self.rollouts.values().any(|l| l.dirty);
        let mut stored = true;
        // Device messages are kept for after the outage, unless the database refused them
        // even one by one (handling them again would fail again).
        let mut keep = true;
        if self.read_failed {
            drop(tx);
            stored = false;
            tracing::error!("a database read failed: the batch is not stored");
        } else if !batch.is_empty() || dirty || tx.is_some() {
            let isolable = tx.is_none();
            let mut result = self.write(&batch, tx, false).await;
            if let Err(e) = &result
                && isolable
                && !e.is_unavailable()
                && !matches!(e, DbError::Fenced { .. })
            {
                tracing::warn!("cannot store a batch ({e}): storing its device reports one by one");
                result = self.write(&batch, None, true).await;
                keep = !matches!(&result, Err(e) if !e.is_unavailable());
            }
            match result {
                Ok(flags) => {
                    let flags = flags
                        .into_iter()
                        .map(|(id, payload)| (self.topics.flags(&id), payload));
                    let publish: Vec<_> = std::mem::take(&mut batch.publish)
                        .into_iter()
                        .chain(flags)
                        .collect();
                    for (topic, payload) in publish {
                        self.publish(client, topic, payload, true).await;
                    }
                }
                Err(DbError::Fenced { .. }) => {
                    // Nothing of the batch was stored: publish nothing, not even acks.
                    self.fenced = true;
                    return false;
                }
                Err(e) => {
                    stored = false;
                    tracing::error!("cannot store a batch: {e}");
                }
            }
        }
        if !stored {
            let raw = std::mem::take(&mut batch.raw);
            if !keep {
                tracing::error!(
                    "{} device message(s) dropped: the database refuses their batch",
                    raw.len()
                );
            }
            let raw = if keep { raw } else { Vec::new() };
            self.degrade(raw, std::mem::take(&mut batch.flag_devices));
        }
        for (topic, payload) in batch.acks {
            self.publish(client, topic, payload, false).await;
        }
        if let Some(payload) = batch.trust {
            let topic = self.topics.trust();
            self.publish(client, topic, payload, true).await;
        }
        self.unload_finished();
        stored
    }

    /// Returns the flags of the devices evaluated again (see [`Batch::flag_devices`]), to
    /// publish after the commit. With `isolate`, each device report is written under its own
    /// savepoint: one the database refuses is dropped and recorded as `mqtt-rejected`.
    pub(super) async fn write(
        &mut self,
        batch: &Batch,
        tx: Option<DbTx>,
        isolate: bool,
    ) -> Result<Vec<Publish>, DbError> {
        let now = self.clock.now_i64();
        let mut tx = match tx {
            Some(tx) => tx,
            None => self.db.begin().await?,
        };
        // First: the lease row stays locked (PostgreSQL) until the commit.
        tx.check_fence(&self.fence).await?;
        let mut dropped = Vec::new();
        for (id, report) in &batch.reports {
            let m = self.devices.get(id).cloned().unwrap_or_default();
            let write = async |tx: &mut DbTx| {
                tx.upsert_device(id, report, m.online, m.drifted, m.reported_generation, now)
                    .await
            };
            if let Some(e) = isolated(&mut tx, isolate, write).await? {
                dropped.push((id.clone(), TopicKind::Reported, e));
            }
        }
        for id in &batch.presence {
            if batch.reports.contains_key(id) {
                continue;
            }
            let online = self.devices.get(id).is_some_and(|m| m.online);
            let write = async |tx: &mut DbTx| tx.set_online(id, online, now).await;
            if let Some(e) = isolated(&mut tx, isolate, write).await? {
                dropped.push((id.clone(), TopicKind::Status, e));
            }
        }
        for (id, kind, error) in dropped {
            // Read again from its row when it next speaks.
            self.devices.remove(&id);
            let topic =
                DeviceId::new(&id).map_or_else(|_| id.clone(), |d| self.topics.device(&d, kind));
            let reason = format!("the database refused the device's message: {error}");
            if let Some(event) = self.reject_event(Some(&id), &topic, &reason) {
                tx.append_event(&event).await?;
            }
        }
        for id in &batch.seen {
            if !batch.reports.contains_key(id) && !batch.presence.contains(id) {
                tx.touch_device(id, now).await?;
            }
        }
        for id in batch
            .reports
            .keys()
            .chain(&batch.presence)
            .chain(&batch.seen)
        {
            if let Some(memo) = self.devices.get_mut(id) {
                memo.last_seen = now;
            }
        }
        for t in &batch.transfers {
            tx.insert_transfer(t, now).await?;
        }
        for (device, sequence) in &batch.trust_sequences {
            tx.set_device_trust(device, *sequence, now).await?;
        }
        for (id, by) in &batch.approved {
            tx.set_rollout_approved(*id, by, now).await?;
        }
        for loaded in self.rollouts.values_mut() {
            if loaded.dirty {
                let status = loaded.planner.state().status();
                tx.update_rollout(loaded.record.id, &loaded.planner.to_cbor(), status, now)
                    .await?;
                loaded.record.status = status;
                loaded.record.updated_at = now;
            }
        }
        for d in &batch.desired {
            tx.put_desired(d).await?;
        }
        for change in &batch.flag_changes {
            match &change.new {
                Some(def) => tx.put_flag(def, now).await?,
                None => tx.delete_flag(change.flag.as_str()).await?,
            }
            tx.append_flag_change(change).await?;
        }
        if !batch.flag_changes.is_empty() {
            tx.set_flag_version(self.flags.version()).await?;
        }
        let flags = self.reevaluate_flags(&batch.flag_devices, &mut tx).await?;
        for e in &batch.events {
            tx.append_event(e).await?;
        }
        tx.commit().await?;
        for loaded in self.rollouts.values_mut() {
            loaded.dirty = false;
        }
        Ok(flags)
    }

    /// Evaluates the flags of `devices` again from their rows as written in `tx`; renews the
    /// fleet flag version (stored in `tx`) when a device already sent the current version
    /// needs other flags.
    pub(super) async fn reevaluate_flags(
        &mut self,
        devices: &BTreeSet<String>,
        tx: &mut DbTx,
    ) -> Result<Vec<Publish>, DbError> {
        let mut records = Vec::new();
        for id in devices {
            if let Some(record) = tx.get_device(id).await? {
                records.push(record);
            }
        }
        if records.iter().any(|r| self.flags.needs_renewal(r)) {
            let version = self.flags.renew(self.clock.timestamp())?;
            tx.set_flag_version(version).await?;
        }
        Ok(records
            .iter()
            .filter_map(|r| self.flags.reevaluate(r))
            .collect())
    }

    /// Publishes through the outbox: never waits on the MQTT client (see `outbox.rs`).
    pub(super) async fn publish(
        &mut self,
        client: &AsyncClient,
        topic: String,
        payload: Vec<u8>,
        retain: bool,
    ) {
        self.outbox
            .publish(client, &self.shared.counters, topic, payload, retain);
    }
}

/// Runs `write` in `tx`; with `isolate`, under a savepoint: if the database refuses it (for
/// what it writes, not for being unavailable), it is undone and its error returned, and the
/// transaction goes on.
pub(super) async fn isolated(
    tx: &mut DbTx,
    isolate: bool,
    write: impl AsyncFnOnce(&mut DbTx) -> Result<(), DbError>,
) -> Result<Option<DbError>, DbError> {
    if !isolate {
        write(tx).await?;
        return Ok(None);
    }
    tx.savepoint().await?;
    match write(tx).await {
        Ok(()) => {
            tx.release_savepoint().await?;
            Ok(None)
        }
        Err(e) if !e.is_unavailable() => {
            tx.rollback_to_savepoint().await?;
            Ok(Some(e))
        }
        Err(e) => Err(e),
    }
}
