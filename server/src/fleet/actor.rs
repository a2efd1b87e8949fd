//! The coordinator task: registry, rollout planners, batching, persistence, publishing.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ota_core::budget::{BudgetSpec, Budgets, Verdict};
use ota_core::digest::Digest;
use ota_core::flags::{FlagChange, FlagEdit, FlagName};
use ota_core::fleet::routing::{self, RolloutFacts, Route};
use ota_core::fleet::targeting::{self, FleetKnowledge, NO_RELEASE, Selection};
use ota_core::fleet::{DeviceMemo, DriftChange, Generations};
use ota_core::release::{Policy, SignedRelease, SignedTrustUpdate};
use ota_core::rollout::{
    DesiredKind, NoRollbackCause, PlannerAction, ReportOutcome, Rollout, RolloutError, RolloutSpec,
    RolloutState, StateCounts,
};
use ota_core::wire::{
    DesiredState, DeviceId, Event, ExecutionState, FailurePhase, Heartbeat, HeartbeatAck,
    PROTOCOL_VERSION, ReportedState, Status, TopicKind, Topics, Transfer, TrustOutcome,
    TrustReport, UpdateOutcome, WireMessage,
};
use rumqttc::{AsyncClient, QoS, SubscribeFilter};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::flags::{FlagDetail, FlagEditResult, FlagView, Flags, Publish};
use super::outbox::{self, Outbox};
use super::view::{RolloutView, abort_json, counts_json, insert_failure, no_rollback_json};
use super::{
    Command, Counters, DEVICE_EVENTS_PER_MINUTE, Fleet, FleetError, LAST_SEEN_RESOLUTION_SECS,
    MAX_BATCH, Op, REJECT_EVENTS_PER_MINUTE, RolloutRequest, Shared, Snapshot, percent,
};
use crate::clock::Clock;
use crate::db::{
    Db, DbError, DbTx, DesiredRecord, DeviceRecord, DeviceReport, Fence, NewEvent, NewRollout,
    ReleaseRecord, RolloutRecord, TransferRecord,
};
use crate::event_kinds::EventKind;
use crate::mqtt::{INBOUND_QUEUE, Inbound, LinkSpec, MqttLink};
use crate::trust::FleetTrust;
use ota_core::filter::Filter;

/// Rollout statuses the coordinator loads at start: every one but a dry run's (completed and
/// aborted ones are kept only while [`Rollout::needs_driving`] says so).
const LOADED_STATUSES: [&str; 5] = {
    let [_dry_run, rest @ ..] = RolloutState::NAMES;
    rest
};
/// The longest the coordinator sleeps without looking at its timers.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// How long [`start`] waits for the broker to accept the subscriptions.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// The first wait before reloading the state from an unavailable database (doubled up to
/// [`RELOAD_MAX_WAIT`]).
const RELOAD_FIRST_WAIT: Duration = Duration::from_millis(250);
/// The longest wait between two reloads from an unavailable database.
const RELOAD_MAX_WAIT: Duration = Duration::from_secs(5);
/// The largest transfer figure (fetched or full bytes) recorded: 1 TiB. A report above it is
/// not recorded (a device cannot make the stored sums overflow).
const MAX_TRANSFER_BYTES: u64 = 1 << 40;
/// Most device events kept while the database is unavailable (the newest reported state and
/// status of every device are kept whatever their number).
const MAX_KEPT_EVENTS: usize = 100_000;

/// The running coordinator: stop it with [`FleetTask::stop`].
#[derive(Debug)]
pub struct FleetTask {
    stop: watch::Sender<bool>,
    /// `None` once the task ended by itself ([`FleetTask::fenced`]).
    task: Option<JoinHandle<()>>,
    handle: Fleet,
}

impl FleetTask {
    /// Detaches the coordinator from its [`Fleet`] handle (commands now answer
    /// [`FleetError::NotLeader`]), finishes the batch in hand, disconnects from the broker and
    /// ends the task.
    pub async fn stop(self) {
        self.handle.attach(None);
        self.stop.send_replace(true);
        if let Some(task) = self.task {
            let _ = task.await;
        }
    }

    /// Waits until the coordinator ends by itself (a batch was refused as fenced: another
    /// replica took the lease, so it stopped without publishing anything of it), then
    /// detaches it from its [`Fleet`] handle.
    pub async fn fenced(&mut self) {
        if let Some(task) = &mut self.task {
            let _ = task.await;
            self.task = None;
        }
        self.handle.attach(None);
    }
}

/// Attaches to `handle` a coordinator that loads the registry and every unfinished rollout from
/// `db`, connects to the broker of
/// `mqtt` (topics in its namespace, every device's messages against its budget) and starts the
/// coordinator (counters and snapshots go to `shared`; rollback targets are checked against
/// the trust set in force, `keys`). Returns once the broker acknowledged the subscriptions (or
/// fails after 15 s). Every batch it writes first checks `fence` in its transaction
/// ([`DbTx::check_fence`]): once another replica took the lease the coordinator stops, and
/// publishes nothing of the refused batch.
pub async fn start(
    handle: &Fleet,
    db: Db,
    clock: Clock,
    mqtt: &LinkSpec,
    public_url: String,
    keys: FleetTrust,
    fence: Fence,
) -> Result<FleetTask, FleetStartError> {
    let shared = handle.shared.clone();
    let stored = Stored::load(&db, clock.timestamp()).await?;
    let topics = mqtt.topics.clone();
    let mut actor = Actor::new(db, clock, topics, public_url, shared.clone(), keys, fence);
    actor.apply(stored);
    let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
    // Random, so two servers (or two runs) never share a client id on one broker.
    let salt = getrandom::u32().unwrap_or(0);
    let client_id = format!("ota-server-{}-{salt:08x}", std::process::id());
    let link = MqttLink::start(mqtt, &client_id, in_tx, shared.clone());
    let (cmd_tx, cmd_rx) = mpsc::channel(256);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = watch::channel(false);
    let client = link.client().clone();
    let task = tokio::spawn(actor.run(client, link, in_rx, cmd_rx, stop_rx, ready_tx));
    let ready = tokio::time::timeout(READY_TIMEOUT, ready_rx.wait_for(|r| *r))
        .await
        .is_ok_and(|r| r.is_ok());
    if !ready {
        stop_tx.send_replace(true);
        let _ = task.await;
        return Err(FleetStartError::Broker(mqtt.endpoint.to_string()));
    }
    handle.attach(Some(cmd_tx));
    Ok(FleetTask {
        stop: stop_tx,
        task: Some(task),
        handle: handle.clone(),
    })
}

/// Why the coordinator could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetStartError {
    /// Loading the registry or the rollouts failed.
    #[error("cannot load the fleet state: {0}")]
    Db(#[from] DbError),
    /// A stored rollout cannot be decoded.
    #[error("cannot load rollout {id}: {error}")]
    Rollout {
        /// The rollout.
        id: i64,
        /// Why.
        error: RolloutError,
    },
    /// The MQTT broker did not accept the connection and subscriptions in time.
    #[error("cannot connect and subscribe to the MQTT broker at {0} (is it running?)")]
    Broker(String),
    /// The coordinator's start, or the lease task that runs it, panicked.
    #[error("the coordinator's start ended abnormally (a panic)")]
    Panicked,
}

/// A rollout the coordinator drives.
#[derive(Debug)]
struct Loaded {
    record: RolloutRecord,
    planner: Rollout,
    version: Option<String>,
    dirty: bool,
}

/// Everything one batch writes, then publishes.
#[derive(Debug, Default)]
struct Batch {
    reports: BTreeMap<String, DeviceReport>,
    presence: BTreeSet<String>,
    /// Devices whose `last_seen` a heartbeat moves (see [`LAST_SEEN_RESOLUTION_SECS`]).
    seen: BTreeSet<String>,
    desired: Vec<DesiredRecord>,
    events: Vec<NewEvent>,
    /// Download costs first reported in this batch (stored unless already recorded).
    transfers: Vec<TransferRecord>,
    /// The trust-set sequence each device's last trust report of the batch named.
    trust_sequences: BTreeMap<String, u64>,
    /// Desired states, published after the commit.
    publish: Vec<(String, Vec<u8>)>,
    /// Heartbeat acks: published whatever happens.
    acks: Vec<(String, Vec<u8>)>,
    approved: Vec<(i64, String)>,
    /// Flag audit records: their definitions, the records and the fleet flag version are
    /// stored with the batch (the devices' flags are in `publish`).
    flag_changes: Vec<FlagChange>,
    /// Devices whose flags are evaluated again once their rows are written.
    flag_devices: BTreeSet<String>,
    /// A trust-set update to publish (retained) after the batch, whatever happens: it is
    /// stored already.
    trust: Option<Vec<u8>>,
    /// The device messages of the batch (not heartbeats): handled again once the database is
    /// back if the batch cannot be stored.
    raw: Vec<(String, Bytes)>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.reports.is_empty()
            && self.presence.is_empty()
            && self.seen.is_empty()
            && self.desired.is_empty()
            && self.events.is_empty()
            && self.transfers.is_empty()
            && self.trust_sequences.is_empty()
            && self.approved.is_empty()
            && self.flag_changes.is_empty()
            && self.flag_devices.is_empty()
    }
}

/// What the coordinator keeps while the database is unavailable (it is read-only then).
#[derive(Debug, Default)]
struct Degraded {
    /// The newest reported state and status of each device, by topic.
    latest: BTreeMap<String, Bytes>,
    /// Other device messages (events, trust answers), in order, at most [`MAX_KEPT_EVENTS`].
    events: Vec<(String, Bytes)>,
    /// Messages not kept (past [`MAX_KEPT_EVENTS`]).
    dropped: u64,
    /// Devices whose flags are evaluated again once the database is back.
    flag_devices: BTreeSet<String>,
}

impl Degraded {
    fn keep(&mut self, topics: &Topics, topic: String, payload: Bytes) {
        let retained = topics
            .parse_device_topic(&topic)
            .is_ok_and(|(_, kind)| matches!(kind, TopicKind::Reported | TopicKind::Status));
        if retained {
            self.latest.insert(topic, payload);
        } else if self.events.len() < MAX_KEPT_EVENTS {
            self.events.push((topic, payload));
        } else {
            self.dropped += 1;
        }
    }
}

/// Everything the coordinator loads from the database: built apart, then swapped in whole,
/// so it never acts on part of it.
struct Stored {
    rollouts: BTreeMap<i64, Loaded>,
    owner: HashMap<String, i64>,
    devices: HashMap<String, DeviceMemo>,
    generations: Generations,
    flags: Flags,
    trust: Option<Vec<u8>>,
}

impl Stored {
    /// Loads the registry and every unfinished rollout.
    async fn load(db: &Db, now: ota_core::time::Timestamp) -> Result<Stored, FleetStartError> {
        let mut generations = Generations::new();
        for d in db.list_desired().await? {
            // A row whose id is not a device id names no device that can report.
            if let Ok(id) = DeviceId::new(&d.device_id) {
                generations.restore(id, d.generation);
            }
        }
        let mut devices = HashMap::new();
        for d in db.list_devices().await? {
            let mut memo = memo_of(&d);
            // A row stored before reports were checked may hold a generation never issued.
            let issued = DeviceId::new(&d.id).map_or(0, |id| generations.issued(&id));
            memo.reported_generation = memo.reported_generation.min(issued);
            devices.insert(d.id.clone(), memo);
        }
        let mut stored = Stored {
            rollouts: BTreeMap::new(),
            owner: HashMap::new(),
            devices,
            generations,
            flags: Flags::load(db, now).await?,
            trust: db.latest_trust_update().await?,
        };
        for record in db.rollouts_with_status(&LOADED_STATUSES).await? {
            let id = record.id;
            let planner = Rollout::from_cbor(&record.state)
                .map_err(|error| FleetStartError::Rollout { id, error })?;
            if !planner.needs_driving() {
                continue;
            }
            let version = db
                .get_release(&record.release_digest)
                .await?
                .map(|r| r.version);
            insert_rollout(
                &mut stored.rollouts,
                &mut stored.owner,
                Loaded {
                    record: strip(record),
                    planner,
                    version,
                    dirty: false,
                },
            );
        }
        Ok(stored)
    }
}

/// Adds a rollout to drive; an active one owns its devices.
fn insert_rollout(
    rollouts: &mut BTreeMap<i64, Loaded>,
    owner: &mut HashMap<String, i64>,
    loaded: Loaded,
) {
    let id = loaded.record.id;
    if loaded.planner.state().is_active() {
        for d in loaded.planner.devices() {
            owner.insert(d.as_str().to_string(), id);
        }
    }
    rollouts.insert(id, loaded);
}

struct Actor {
    db: Db,
    clock: Clock,
    /// The fleet's topic namespace (`mqtt.topic_prefix`).
    topics: Topics,
    public_url: String,
    shared: Arc<Shared>,
    rollouts: BTreeMap<i64, Loaded>,
    /// Device → its active rollout.
    owner: HashMap<String, i64>,
    devices: HashMap<String, DeviceMemo>,
    /// What was issued to each device, watermarks, the newest outcome of each (core's ledger).
    generations: Generations,
    releases: HashMap<Digest, Option<Arc<Vec<u8>>>>,
    reject_window: (u64, u32),
    /// Publishes the MQTT client had no room for yet.
    outbox: Outbox,
    /// Per device and audit event kind: its budget ([`Actor::event_allowed`]).
    event_budgets: Budgets<(String, EventKind)>,
    connected: bool,
    flags: Flags,
    /// The accepted trust-set update in force (signed bytes), republished on every connect.
    trust: Option<Vec<u8>>,
    /// Set while the database is unavailable: the coordinator is read-only.
    degraded: Option<Degraded>,
    /// A database read failed during the batch in hand: it must not be stored.
    read_failed: bool,
    /// The trust set in force: rollback targets it does not verify are refused by devices.
    keys: FleetTrust,
    /// The lease this coordinator writes under (checked in every batch's transaction).
    fence: Fence,
    /// A batch was refused as fenced: the coordinator stops.
    fenced: bool,
}

/// Device executions per state over the active rollouts as stored (the planner states the
/// leader's last batch wrote): what a standby's `/metrics` reports, read at scrape time. A
/// stored state that cannot be decoded is left out (the leader refuses to start with it).
pub async fn stored_executions(db: &Db) -> Result<StateCounts, DbError> {
    let mut executions = StateCounts::default();
    for (id, state) in db.active_planner_states().await? {
        match Rollout::from_cbor(&state) {
            Ok(planner) if planner.state().is_active() => {
                executions.merge(&planner.status().totals);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(rollout = id, "cannot decode the stored rollout: {e}"),
        }
    }
    Ok(executions)
}

impl Actor {
    fn new(
        db: Db,
        clock: Clock,
        topics: Topics,
        public_url: String,
        shared: Arc<Shared>,
        keys: FleetTrust,
        fence: Fence,
    ) -> Self {
        Actor {
            db,
            topics,
            public_url: public_url.trim_end_matches('/').to_string(),
            shared,
            rollouts: BTreeMap::new(),
            owner: HashMap::new(),
            devices: HashMap::new(),
            generations: Generations::new(),
            releases: HashMap::new(),
            reject_window: (0, 0),
            outbox: Outbox::default(),
            event_budgets: Budgets::new(BudgetSpec::new(
                DEVICE_EVENTS_PER_MINUTE,
                DEVICE_EVENTS_PER_MINUTE,
            )),
            connected: false,
            flags: Flags::new(clock.timestamp()),
            trust: None,
            degraded: None,
            read_failed: false,
            keys,
            fence,
            fenced: false,
            clock,
        }
    }

    fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    // ----- loading -----

    /// Swaps in a state loaded from the database.
    fn apply(&mut self, stored: Stored) {
        self.rollouts = stored.rollouts;
        self.owner = stored.owner;
        self.devices = stored.devices;
        self.generations = stored.generations;
        self.flags = stored.flags;
        self.trust = stored.trust;
        self.update_snapshot();
    }

    /// Refuses (as `mqtt-rejected`) a message acknowledging `reported` unless the server
    /// issued that generation to `id`; true if accepted. A refused value within one agent
    /// step above the last one issued is kept as the device's watermark
    /// ([`Generations::acknowledge`]): the next generation issued to it is above it.
    fn acknowledges_issued(
        &mut self,
        id: &DeviceId,
        reported: u64,
        topic: &str,
        batch: &mut Batch,
    ) -> bool {
        match self.generations.acknowledge(id, reported) {
            Ok(()) => true,
            Err(e) => {
                self.reject(Some(id), topic, &e.to_string(), batch);
                false
            }
        }
    }

    /// A device whose watermark moved above the last generation issued to it
    /// ([`Generations::is_ahead`]) ignores the desired state it was sent: if a rollout still waits
    /// for it (its state there is not final), the rollout's desired state is issued again,
    /// above the watermark.
    async fn reissue_above_watermark(&mut self, id: &DeviceId, batch: &mut Batch) {
        if !self.generations.is_ahead(id) {
            return;
        }
        let Some(&rid) = self.owner.get(id.as_str()) else {
            return;
        };
        let Some(loaded) = self.rollouts.get(&rid) else {
            return;
        };
        let waiting = loaded
            .planner
            .device_state(id)
            .is_some_and(|s| !s.is_final());
        if !waiting {
            return;
        }
        let release = loaded.record.release_digest;
        let force = loaded.planner.spec().force_reinstall;
        self.publish_desired(id, rid, release, force, DesiredKind::Notify, batch)
            .await;
    }

    fn insert_loaded(&mut self, loaded: Loaded) {
        insert_rollout(&mut self.rollouts, &mut self.owner, loaded);
    }

    // ----- the loop -----

    async fn run(
        mut self,
        client: AsyncClient,
        link: MqttLink,
        mut inbound: mpsc::Receiver<Inbound>,
        mut commands: mpsc::Receiver<Command>,
        mut stop: watch::Receiver<bool>,
        ready: watch::Sender<bool>,
    ) {
        loop {
            self.outbox.flush(&client, &self.shared.counters);
            let sleep = self.next_wakeup();
            let mut batch = Batch::default();
            let mut replies: Vec<Reply> = Vec::new();
            let mut tx: Option<DbTx> = None;
            if self.degraded.is_some() {
                let resumed = self
                    .wait_for_db(&client, &mut inbound, &mut commands, &mut stop, &ready)
                    .await;
                match resumed {
                    Some(kept) => self.resume(kept, &client, &mut batch).await,
                    None => break,
                }
            } else {
                tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    cmd = commands.recv() => match cmd {
                        Some(cmd) => self.command(cmd, &mut batch, &mut tx, &mut replies).await,
                        None => break,
                    },
                    msg = inbound.recv() => match msg {
                        Some(msg) => {
                            self.inbound(msg, &client, &ready, &mut batch).await;
                            let mut n = 1;
                            while n < MAX_BATCH {
                                match inbound.try_recv() {
                                    Ok(msg) => self.inbound(msg, &client, &ready, &mut batch).await,
                                    Err(_) => break,
                                }
                                n += 1;
                            }
                        }
                        None => break,
                    },
                    _ = tokio::time::sleep(sleep) => {}
                }
            }
            self.fire_timers();
            self.drain("server", &mut batch).await;
            let stored = self.commit(batch, tx, &client).await;
            for reply in replies {
                reply.send(stored, self.fenced);
            }
            if self.fenced {
                tracing::error!(
                    epoch = self.fence.epoch,
                    "fenced: another replica took the coordinator lease; this one stops coordinating"
                );
                break;
            }
            self.update_snapshot();
        }
        link.stop().await;
    }

    fn next_wakeup(&self) -> Duration {
        let now = self.clock.now_millis();
        self.rollouts
            .values()
            .filter_map(|l| l.planner.poll_timeout())
            .min()
            .map(|t| Duration::from_millis(t.as_unix_millis().saturating_sub(now)).min(MAX_SLEEP))
            .unwrap_or(Duration::from_secs(3600))
            .min(if self.outbox.is_empty() {
                Duration::MAX
            } else {
                outbox::RETRY
            })
    }

    fn fire_timers(&mut self) {
        let now = self.clock.timestamp();
        for loaded in self.rollouts.values_mut() {
            if loaded.planner.poll_timeout().is_some_and(|t| t <= now) {
                loaded.planner.handle_timeout(now);
                loaded.dirty = true;
            }
        }
    }

    // ----- MQTT input -----

    async fn inbound(
        &mut self,
        msg: Inbound,
        client: &AsyncClient,
        ready: &watch::Sender<bool>,
        batch: &mut Batch,
    ) {
        match msg {
            Inbound::Connected => {
                self.connected = true;
                subscribe(client, &self.topics).await;
                self.republish_all(client).await;
            }
            Inbound::Subscribed => {
                ready.send_replace(true);
                tracing::info!("subscribed to the fleet's MQTT topics");
            }
            Inbound::SubscribeRefused => subscribe(client, &self.topics).await,
            Inbound::Disconnected(e) => {
                self.connected = false;
                tracing::debug!("MQTT disconnected: {e}");
            }
            Inbound::Message { topic, payload } => {
                Counters::inc(&self.counters().mqtt_received);
                self.message(&topic, payload, batch).await;
            }
        }
    }

    /// Publishes every stored desired state, the devices' flags and the trust-set update in
    /// force again (all retained).
    async fn republish_all(&mut self, client: &AsyncClient) {
        self.republish_desired(client).await;
        for (id, payload) in self.flags.all() {
            let topic = self.topics.flags(&id);
            self.publish(client, topic, payload, true).await;
        }
        if let Some(payload) = self.trust.clone() {
            let topic = self.topics.trust();
            self.publish(client, topic, payload, true).await;
        }
    }

    /// Publishes every stored desired state again (retained, same generation): after a
    /// (re)connect, the broker may have lost them (the embedded broker keeps retained
    /// messages in memory only), and devices ignore generations they acted on. If the
    /// database cannot be read, the coordinator turns read-only and does it once it is back.
    async fn republish_desired(&mut self, client: &AsyncClient) {
        let rows = match self.db.list_desired().await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!("cannot read desired states to republish: {e}");
                self.read_failed |= e.is_unavailable();
                return;
            }
        };
        for row in rows {
            let Ok(id) = DeviceId::new(&row.device_id) else {
                continue;
            };
            let topic = self.topics.device(&id, TopicKind::Desired);
            self.publish(client, topic, row.payload, true).await;
        }
    }

    async fn message(&mut self, topic: &str, payload: Bytes, batch: &mut Batch) {
        let (id, kind) = match self.topics.parse_device_topic(topic) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.reject(None, topic, &e.to_string(), batch);
                return;
            }
        };
        if payload.is_empty() {
            // A cleared retained message (e.g. a decommissioned device): nothing to do.
            return;
        }
        if kind != TopicKind::Heartbeat {
            batch.raw.push((topic.to_string(), payload.clone()));
        }
        match kind {
            TopicKind::Reported => match ReportedState::from_cbor(&payload) {
                Ok(r) if r.device_id == id.as_str() => {
                    let acknowledged = [r.generation]
                        .into_iter()
                        .chain(r.last_result.as_ref().map(|o| o.generation))
                        .max()
                        .unwrap_or(0);
                    if self.acknowledges_issued(&id, acknowledged, topic, batch) {
                        self.on_reported(&id, r, &payload, batch);
                    } else {
                        self.reissue_above_watermark(&id, batch).await;
                    }
                }
                Ok(r) => self.reject(
                    Some(&id),
                    topic,
                    &format!("reported state names device {:?}", r.device_id),
                    batch,
                ),
                Err(e) => self.reject(Some(&id), topic, &e.to_string(), batch),
            },
            TopicKind::Events => match Event::from_cbor(&payload) {
                Ok(e) if e.device_id == id.as_str() => {
                    if !self.is_known(&id).await {
                        self.reject(Some(&id), topic, "event from an unknown device", batch);
                    } else if self.acknowledges_issued(&id, e.generation, topic, batch) {
                        let outcome = e.outcome();
                        self.note_transfer(&id, &outcome, batch);
                        self.route(&id, &outcome, topic, batch);
                    }
                }
                Ok(e) => self.reject(
                    Some(&id),
                    topic,
                    &format!("event names device {:?}", e.device_id),
                    batch,
                ),
                Err(e) => self.reject(Some(&id), topic, &e.to_string(), batch),
            },
            TopicKind::Status => match Status::from_cbor(&payload) {
                Ok(s) => self.on_status(&id, s.online, batch),
                Err(e) => self.reject(Some(&id), topic, &e.to_string(), batch),
            },
            TopicKind::Heartbeat => match heartbeat_ack(&self.topics, &id, &payload) {
                Ok((heartbeat, ack)) => {
                    self.on_heartbeat(&id, heartbeat.healthy, batch);
                    batch.acks.push(ack);
                }
                Err(e) => self.reject(Some(&id), topic, &e, batch),
            },
            TopicKind::Trust => match TrustReport::from_cbor(&payload) {
                Ok(r) if r.device_id == id.as_str() => {
                    // The set in force on the device is state: recorded even when its event
                    // is rate-limited.
                    batch
                        .trust_sequences
                        .insert(id.as_str().to_owned(), r.sequence);
                    if self.event_allowed(id.as_str(), trust_event_kind(&r.outcome)) {
                        on_trust_report(&id, &r, self.clock.now_i64(), batch);
                    }
                }
                Ok(r) => self.reject(
                    Some(&id),
                    topic,
                    &format!("trust report names device {:?}", r.device_id),
                    batch,
                ),
                Err(e) => self.reject(Some(&id), topic, &e.to_string(), batch),
            },
            _ => {}
        }
    }

    async fn is_known(&mut self, id: &DeviceId) -> bool {
        if self.devices.get(id.as_str()).is_some_and(|m| m.registered) {
            return true;
        }
        // Rows written behind the coordinator's back (e.g. by tools) count too.
        match self.db.get_device(id.as_str()).await {
            Ok(Some(d)) => {
                let memo = memo_of(&d);
                let known = memo.registered;
                self.devices.insert(d.id, memo);
                known
            }
            Ok(None) => false,
            Err(e) => {
                tracing::error!("cannot read device {id}: {e}");
                self.read_failed |= e.is_unavailable();
                false
            }
        }
    }

    /// Whether `device` may have another audit event of `kind` now: at most
    /// [`DEVICE_EVENTS_PER_MINUTE`] a minute per device and kind (bursts of as many); the rest
    /// are counted in `ota_events_suppressed_total`.
    fn event_allowed(&mut self, device: &str, kind: EventKind) -> bool {
        let now = self.clock.now_millis();
        match self.event_budgets.take((device.to_owned(), kind), now) {
            Verdict::Pass => true,
            _ => {
                Counters::inc(&self.counters().events_suppressed);
                false
            }
        }
    }

    /// Records a refused message (rate-limited in all and per device) and counts it.
    fn reject(&mut self, device: Option<&DeviceId>, topic: &str, reason: &str, batch: &mut Batch) {
        if let Some(event) = self.reject_event(device.map(DeviceId::as_str), topic, reason) {
            batch.events.push(event);
        }
    }

    /// Counts a refused message; its `mqtt-rejected` audit event unless over the rate limit.
    fn reject_event(
        &mut self,
        device: Option<&str>,
        topic: &str,
        reason: &str,
    ) -> Option<NewEvent> {
        Counters::inc(&self.counters().mqtt_rejected);
        tracing::debug!(topic, "MQTT message refused: {reason}");
        if device.is_some_and(|d| !self.event_allowed(d, EventKind::MqttRejected)) {
            return None;
        }
        let now = self.clock.now_millis();
        if now.saturating_sub(self.reject_window.0) >= 60_000 {
            self.reject_window = (now, 0);
        }
        if self.reject_window.1 >= REJECT_EVENTS_PER_MINUTE {
            return None;
        }
        self.reject_window.1 += 1;
        let actor = device.map_or_else(|| "mqtt".to_string(), |d| format!("device:{d}"));
        let mut event = NewEvent::new(self.clock.now_i64(), actor, EventKind::MqttRejected)
            .details(
                json!({ "topic": ota_core::wire::truncate_text(topic, 256), "reason": reason }),
            );
        if let Some(d) = device {
            event = event.device(d);
        }
        Some(event)
    }

    /// A heartbeat is a sign of life: `last_seen` moves when the stored one is stale.
    /// A heartbeat from a known device: `last_seen`, and its health (issue 17) when it
    /// changed, for the gates of the rollouts it is in.
    fn on_heartbeat(&mut self, id: &DeviceId, healthy: Option<bool>, batch: &mut Batch) {
        let Some(memo) = self.devices.get_mut(id.as_str()) else {
            return;
        };
        if self.clock.now_i64().saturating_sub(memo.last_seen) >= LAST_SEEN_RESOLUTION_SECS {
            batch.seen.insert(id.as_str().to_string());
        }
        let Some(healthy) = healthy else {
            return;
        };
        if !memo.handle_health(healthy) {
            return;
        }
        let now = self.clock.timestamp();
        for loaded in self.rollouts.values_mut() {
            if loaded.planner.device_state(id).is_some()
                && loaded
                    .planner
                    .handle_device_health(id, healthy, now)
                    .is_ok()
            {
                loaded.dirty = true;
            }
        }
    }

    fn on_status(&mut self, id: &DeviceId, online: bool, batch: &mut Batch) {
        let memo = self.devices.entry(id.as_str().to_string()).or_default();
        memo.handle_presence(online);
        batch.presence.insert(id.as_str().to_string());
        // Told every time (idempotent in the planner): after a restart the planner's view of
        // presence may be older than the registry's.
        let now = self.clock.timestamp();
        for loaded in self.rollouts.values_mut() {
            if loaded.planner.device_state(id).is_none() {
                continue;
            }
            let result = if online {
                loaded.planner.handle_device_online(id, now)
            } else {
                loaded.planner.handle_device_offline(id, now)
            };
            if result.is_ok() {
                loaded.dirty = true;
            }
        }
    }

    fn on_reported(&mut self, id: &DeviceId, r: ReportedState, raw: &[u8], batch: &mut Batch) {
        let key = id.as_str().to_string();
        let owned = self.owner.contains_key(&key);
        let now = self.clock.now_i64();
        let memo = self.devices.entry(key.clone()).or_default();
        let seen = memo.handle_report(&r, owned);
        let last_committed = memo.last_committed;
        let running = r.running.as_ref().map(|x| x.digest);
        let known_good = r.known_good.as_ref().map(|x| x.digest);
        if seen.first {
            batch.events.push(
                NewEvent::new(now, format!("device:{id}"), EventKind::DeviceRegistered)
                    .device(id.as_str())
                    .details(json!({
                        "hardware_class": r.hardware_class,
                        "running": running.map(|d| d.to_string()),
                        "agent_version": r.agent_version,
                    })),
            );
        }
        let drift_kind = seen.drift.map(|change| match change {
            DriftChange::Drifted => EventKind::DeviceDrifted,
            DriftChange::Cleared => EventKind::DeviceDriftCleared,
        });
        if let Some(kind) = drift_kind
            && self.event_allowed(id.as_str(), kind)
        {
            batch.events.push(
                NewEvent::new(now, "server", kind)
                    .device(id.as_str())
                    .details(json!({
                        "running": running.map(|d| d.to_string()),
                        "last_committed": last_committed.map(|d| d.to_string()),
                    })),
            );
        }
        let report = DeviceReport {
            hardware_class: Some(r.hardware_class.clone()),
            labels: r.labels.clone(),
            running_version: r.running.as_ref().map(|x| x.version.clone()),
            running_digest: running,
            known_good_digest: known_good,
            last_committed_digest: last_committed,
            last_result: r.last_result.as_ref().map(|o| result_name(&o.state)),
            power: r.power.map(|p| {
                json!({
                    "battery_percent": p.battery_percent,
                    "charging": p.charging,
                    "mains_online": p.mains_online,
                })
            }),
            inventory: Some(json!({
                "os": r.inventory.os,
                "kernel": r.inventory.kernel,
                "arch": r.inventory.arch,
                "hostname": r.inventory.hostname,
                "memory_total": r.inventory.memory_total,
                "disk_free": r.inventory.disk_free,
                "agent_version": r.agent_version,
                "security_floor": r.security_floor,
                "cached": r.cached.len(),
            })),
            reported: Some(raw.to_vec()),
        };
        batch.flag_devices.insert(key.clone());
        batch.reports.insert(key, report);
        if let Some(outcome) = &r.last_result {
            let topic = self.topics.device(id, TopicKind::Reported);
            self.note_transfer(id, outcome, batch);
            self.route(id, outcome, &topic, batch);
        }
    }

    /// Queues the download cost an outcome carries, the first time the device reports one
    /// for its generation (the database keeps the first per device and generation too, so a
    /// repeat after a restart counts once). Figures above [`MAX_TRANSFER_BYTES`] are ignored.
    fn note_transfer(&mut self, id: &DeviceId, o: &UpdateOutcome, batch: &mut Batch) {
        let Some(t) = o.transfer else {
            return;
        };
        if t.fetched > MAX_TRANSFER_BYTES || t.size > MAX_TRANSFER_BYTES {
            tracing::debug!(device = %id, "transfer figures out of range: not recorded");
            return;
        }
        let Some(memo) = self.devices.get_mut(id.as_str()) else {
            return;
        };
        if !memo.note_transfer(o.generation, t) {
            return;
        }
        batch.transfers.push(TransferRecord {
            device_id: id.as_str().to_string(),
            generation: o.generation,
            rollout_id: o.rollout_id.as_deref().and_then(|r| r.parse().ok()),
            digest: o.digest,
            fetched: t.fetched,
            size: t.size,
        });
    }

    /// Hands an execution report to the rollout it belongs to.
    fn route(&mut self, id: &DeviceId, o: &UpdateOutcome, topic: &str, batch: &mut Batch) {
        let Some(rid) = o.rollout_id.as_deref().and_then(|s| s.parse::<i64>().ok()) else {
            return;
        };
        let Some(loaded) = self.rollouts.get_mut(&rid) else {
            // A finished rollout: nothing to drive.
            return;
        };
        let facts = RolloutFacts {
            release: loaded.record.release_digest,
            aborted: matches!(loaded.planner.state(), RolloutState::Aborted { .. }),
            holds_device: loaded.planner.device_state(id).is_some(),
        };
        let recall = match routing::route(o, facts, self.generations.issued(id)) {
            Route::NotOurs => return,
            Route::Report => None,
            Route::Recall(to) => Some(to),
        };
        if !self.generations.is_fresh_outcome(id, o.generation, o.at) {
            return;
        }
        let handled = match recall {
            Some(to) => loaded.planner.handle_recall_report(id, to, o.state.clone()),
            None => loaded
                .planner
                .handle_report(id, o.state.clone(), self.clock.timestamp()),
        };
        match handled {
            Ok(ReportOutcome::Applied | ReportOutcome::Progress) => loaded.dirty = true,
            Ok(_) => {}
            Err(e) => {
                let reason = format!("rollout {rid}: {e}");
                self.reject(Some(id), topic, &reason, batch);
            }
        }
    }

    // ----- planner actions -----

    /// Drains the actions of every changed planner into `batch`.
    async fn drain(&mut self, actor: &str, batch: &mut Batch) {
        let dirty: Vec<i64> = self
            .rollouts
            .iter()
            .filter(|(_, l)| l.dirty)
            .map(|(id, _)| *id)
            .collect();
        for rid in dirty {
            let mut actions = Vec::new();
            if let Some(loaded) = self.rollouts.get_mut(&rid) {
                while let Some(a) = loaded.planner.poll_action() {
                    actions.push(a);
                }
            }
            for action in actions {
                self.act(rid, action, actor, batch).await;
            }
        }
    }

    async fn act(&mut self, rid: i64, action: PlannerAction, actor: &str, batch: &mut Batch) {
        let now = self.clock.now_i64();
        let Some(loaded) = self.rollouts.get(&rid) else {
            return;
        };
        let release = loaded.record.release_digest;
        let force = loaded.planner.spec().force_reinstall;
        let status = loaded.planner.status();
        let success_min = loaded.planner.spec().success_min;
        let event = |kind: EventKind| NewEvent::new(now, actor, kind).rollout(rid);
        match action {
            PlannerAction::Notify { device_id } => {
                if self
                    .owner
                    .get(device_id.as_str())
                    .is_some_and(|o| *o != rid)
                {
                    // A late device of a completed rollout, now in a newer one.
                    return;
                }
                self.publish_desired(&device_id, rid, release, force, DesiredKind::Notify, batch)
                    .await;
            }
            PlannerAction::Rollback {
                device_id,
                to_digest,
            } => {
                if let Some(cause) = self.rollback_refusal(rid, &device_id, to_digest).await {
                    self.no_rollback_target(rid, &device_id, to_digest, cause, actor, batch);
                    return;
                }
                batch.events.push(
                    event(EventKind::DeviceRollback)
                        .device(device_id.as_str())
                        .details(json!({ "to": to_digest.to_string() })),
                );
                self.publish_desired(
                    &device_id,
                    rid,
                    to_digest,
                    false,
                    DesiredKind::Rollback,
                    batch,
                )
                .await;
            }
            PlannerAction::Cancel {
                device_id,
                to_digest,
            } if to_digest == NO_RELEASE => {
                // The device ran nothing when the rollout began: a cancel would point nowhere,
                // so it goes on with the release and is listed as left on it.
                if let Some(loaded) = self.rollouts.get_mut(&rid)
                    && loaded
                        .planner
                        .handle_no_rollback_target(&device_id, NoRollbackCause::NoKnownGood)
                        .is_ok()
                {
                    loaded.dirty = true;
                }
                batch.events.push(
                    event(EventKind::DeviceCancel)
                        .device(device_id.as_str())
                        .details(json!({
                            "to": null,
                            "sent": false,
                            "reason": "the device ran no release: there is nothing to cancel to",
                        })),
                );
            }
            PlannerAction::Cancel {
                device_id,
                to_digest,
            } => {
                batch.events.push(
                    event(EventKind::DeviceCancel)
                        .device(device_id.as_str())
                        .details(json!({ "to": to_digest.to_string() })),
                );
                self.publish_desired(
                    &device_id,
                    rid,
                    to_digest,
                    false,
                    DesiredKind::Cancel,
                    batch,
                )
                .await;
            }
            PlannerAction::WaveStarted { index } => {
                let members = status.waves.get(index).map_or(0, |w| w.cumulative_members);
                batch.events.push(
                    event(EventKind::WaveStarted)
                        .details(json!({ "wave": index, "members": members })),
                );
            }
            PlannerAction::WaveAdvanced { from, to } => {
                batch.events.push(
                    event(EventKind::WaveAdvanced).details(json!({ "from": from, "to": to })),
                );
            }
            PlannerAction::WaveHeld {
                index,
                succeeded,
                executed,
            } => {
                batch.events.push(event(EventKind::WaveHeld).details(json!({
                    "wave": index, "succeeded": succeeded, "executed": executed,
                    "success_min": success_min.to_string(),
                })));
            }
            PlannerAction::Completed => {
                let totals = status.totals;
                batch.events.push(
                    event(EventKind::RolloutCompleted)
                        .details(json!({ "totals": counts_json(&totals) })),
                );
            }
            PlannerAction::Aborted { reason } => {
                batch.events.push(
                    event(EventKind::RolloutAborted)
                        .details(json!({ "reason": abort_json(&reason) })),
                );
            }
            PlannerAction::Recalled {
                device_id,
                to_digest,
                state,
                report,
            } => {
                let mut details = json!({
                    "to": to_digest.to_string(),
                    "recall": state.name(),
                    "state": report.name(),
                });
                if let Some(map) = details.as_object_mut() {
                    insert_failure(map, &report);
                }
                batch.events.push(
                    NewEvent::new(
                        now,
                        format!("device:{device_id}"),
                        EventKind::DeviceRecalled,
                    )
                    .rollout(rid)
                    .device(device_id.as_str())
                    .details(details),
                );
            }
            PlannerAction::StateChanged {
                device_id,
                old,
                new,
            } => {
                let who = match new {
                    ExecutionState::Notified | ExecutionState::TimedOut => "server".to_string(),
                    _ => format!("device:{device_id}"),
                };
                let mut details = json!({ "from": old.name(), "to": new.name() });
                if let Some(map) = details.as_object_mut() {
                    insert_failure(map, &new);
                }
                // The download's cost, on the states that follow a completed download
                // (judged by the state: a batch may hold the device's later events already),
                // when the device reported one for the desired state it is acting on.
                let transfer = self
                    .devices
                    .get(device_id.as_str())
                    .and_then(|m| m.transfer)
                    .filter(|(g, _)| self.generations.issued(&device_id) == *g)
                    .filter(|_| after_download(&new));
                if let (Some((_, t)), Some(map)) = (transfer, details.as_object_mut()) {
                    map.insert("transfer".into(), transfer_json(&t));
                }
                batch.events.push(
                    NewEvent::new(now, who, EventKind::DeviceStateChanged)
                        .rollout(rid)
                        .device(device_id.as_str())
                        .details(details),
                );
            }
            _ => {}
        }
    }

    /// Why `device` would refuse to go back to `to` (its known-good release) after rollout
    /// `rid` aborted, judged as the device judges it: the trust set in force, the device's
    /// security floor (raised to the rollout's release once it committed it), the expiry.
    /// `None`: the device will accept it.
    async fn rollback_refusal(
        &mut self,
        rid: i64,
        device: &DeviceId,
        to: Digest,
    ) -> Option<NoRollbackCause> {
        if to == NO_RELEASE {
            return Some(NoRollbackCause::NoKnownGood);
        }
        let Some(bytes) = self.release_bytes(&to).await else {
            return Some(NoRollbackCause::Unpublished);
        };
        let Ok(signed) = SignedRelease::decode(&bytes) else {
            return Some(NoRollbackCause::Unusable);
        };
        let loaded = self.rollouts.get(&rid)?;
        let committed = matches!(
            loaded.planner.device_state(device),
            Some(ExecutionState::Succeeded)
        );
        let release = loaded.record.release_digest;
        let mut floor = self
            .devices
            .get(device.as_str())
            .map_or(0, |m| m.security_floor);
        if committed
            && let Some(bytes) = self.release_bytes(&release).await
            && let Ok(release) = SignedRelease::decode(&bytes)
        {
            floor = floor.max(release.manifest.security_version);
        }
        let policy = Policy {
            hardware_class: None,
            security_floor: floor,
            now: self.clock.now(),
        };
        signed
            .verify(&self.keys.set(), &policy)
            .err()
            .map(|e| NoRollbackCause::from(&e))
    }

    /// Records that `device` stays on rollout `rid`'s release: no rollback target it would
    /// accept (`cause`). Nothing is sent to it; the rollout lists it and a
    /// `no-rollback-target` event says so.
    fn no_rollback_target(
        &mut self,
        rid: i64,
        device: &DeviceId,
        to: Digest,
        cause: NoRollbackCause,
        actor: &str,
        batch: &mut Batch,
    ) {
        let mut details = no_rollback_json(device.as_str(), &cause);
        if let Some(map) = details.as_object_mut() {
            let to = (to != NO_RELEASE).then(|| to.to_string());
            map.insert("to".into(), json!(to));
        }
        tracing::warn!(rollout = rid, device = %device, cause = cause.name(), "no rollback target");
        if let Some(loaded) = self.rollouts.get_mut(&rid)
            && loaded
                .planner
                .handle_no_rollback_target(device, cause)
                .is_ok()
        {
            loaded.dirty = true;
        }
        batch.events.push(
            NewEvent::new(self.clock.now_i64(), actor, EventKind::NoRollbackTarget)
                .rollout(rid)
                .device(device.as_str())
                .details(details),
        );
    }

    /// Queues the desired state "run `digest`" for `device` (a new generation), to be stored
    /// and published with the batch. Without the release's bytes (never published here), an
    /// event says so instead.
    async fn publish_desired(
        &mut self,
        device: &DeviceId,
        rid: i64,
        digest: Digest,
        force_reinstall: bool,
        kind: DesiredKind,
        batch: &mut Batch,
    ) {
        let now = self.clock.now_i64();
        // Why no desired state could be issued: the device keeps the one it has.
        let unavailable = |error: String| {
            NewEvent::new(now, "server", EventKind::DesiredUnavailable)
                .rollout(rid)
                .device(device.as_str())
                .details(json!({
                    "kind": kind.name(),
                    "digest": digest.to_string(),
                    "error": error,
                }))
        };
        let Some(bytes) = self.release_bytes(&digest).await else {
            batch.events.push(unavailable(
                "the release is not published on this server: the device keeps its desired state"
                    .into(),
            ));
            return;
        };
        // Reports acknowledge only generations issued here, so the last one issued (or the
        // device's watermark above it) is the highest the device knows.
        let generation = match self.generations.issue(device) {
            Ok(g) => g,
            Err(e) => {
                batch.events.push(unavailable(e.to_string()));
                return;
            }
        };
        self.supersede_recalls(device, rid);
        let desired = DesiredState {
            v: PROTOCOL_VERSION,
            generation,
            rollout_id: Some(rid.to_string()),
            release: bytes.to_vec(),
            artifact_urls: vec![format!("{}/artifacts/{digest}", self.public_url)],
            force_reinstall,
        };
        let payload = desired.to_cbor();
        batch.desired.push(DesiredRecord::new(
            device.as_str(),
            generation,
            Some(rid),
            digest,
            kind,
            payload.clone(),
            now,
        ));
        batch
            .publish
            .push((self.topics.device(device, TopicKind::Desired), payload));
    }

    /// A desired state of rollout `rid` goes to `device`: an aborted rollout that sent it back
    /// and still waits for its answer will not get one (the device acts on the newer state),
    /// so that recall is superseded.
    fn supersede_recalls(&mut self, device: &DeviceId, rid: i64) {
        for (id, loaded) in self.rollouts.iter_mut() {
            if *id != rid && loaded.planner.handle_recall_superseded(device) {
                loaded.dirty = true;
            }
        }
    }

    async fn release_bytes(&mut self, digest: &Digest) -> Option<Arc<Vec<u8>>> {
        if *digest == NO_RELEASE {
            return None;
        }
        if let Some(cached) = self.releases.get(digest) {
            return cached.clone();
        }
        match self.db.get_release_bytes(digest).await {
            Ok(found) => {
                let found = found.map(Arc::new);
                self.releases.insert(*digest, found.clone());
                found
            }
            Err(e) => {
                tracing::error!("cannot read release {digest}: {e}");
                self.read_failed |= e.is_unavailable();
                None
            }
        }
    }

    // ----- commit -----

    /// Writes the batch in one transaction, then publishes; false if it could not be stored.
    /// A batch failing for something it holds (not for the database being unavailable) is
    /// written again with each device report isolated: a report the database refuses is
    /// dropped (`mqtt-rejected`), the rest is stored. A batch that still cannot be stored, or
    /// that needed a read that failed, is dropped with the in-memory state: the coordinator
    /// turns read-only (keeping the batch's device messages) until it can load the state
    /// again ([`Actor::wait_for_db`]).
    async fn commit(&mut self, mut batch: Batch, tx: Option<DbTx>, client: &AsyncClient) -> bool {
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
    async fn write(
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
                let status = loaded.planner.state().name();
                tx.update_rollout(loaded.record.id, &loaded.planner.to_cbor(), status, now)
                    .await?;
                loaded.record.status = status.to_string();
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
    async fn reevaluate_flags(
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
    async fn publish(
        &mut self,
        client: &AsyncClient,
        topic: String,
        payload: Vec<u8>,
        retain: bool,
    ) {
        self.outbox
            .publish(client, &self.shared.counters, topic, payload, retain);
    }

    // ----- database outages -----

    /// Drops the in-memory state (it may hold changes that were not stored) and turns
    /// read-only, keeping `raw` (device messages) and `flag_devices` for when the database
    /// is back.
    fn degrade(&mut self, raw: Vec<(String, Bytes)>, flag_devices: BTreeSet<String>) {
        if self.degraded.is_none() {
            tracing::error!(
                "the fleet coordinator is read-only until the database answers again (rollout and flag changes get 503)"
            );
        }
        self.read_failed = false;
        self.rollouts.clear();
        self.owner.clear();
        self.devices.clear();
        self.generations.forget_all();
        let degraded = self.degraded.get_or_insert_with(Degraded::default);
        for (topic, payload) in raw {
            degraded.keep(&self.topics, topic, payload);
        }
        degraded.flag_devices.extend(flag_devices);
    }

    /// While read-only: loads the state again (waiting longer after each failure) until it
    /// loads whole, answering meanwhile heartbeats (acks) and commands (503), and keeping
    /// device messages. Returns what was kept, or `None` when the coordinator stops.
    async fn wait_for_db(
        &mut self,
        client: &AsyncClient,
        inbound: &mut mpsc::Receiver<Inbound>,
        commands: &mut mpsc::Receiver<Command>,
        stop: &mut watch::Receiver<bool>,
        ready: &watch::Sender<bool>,
    ) -> Option<(Stored, Degraded)> {
        let mut wait = RELOAD_FIRST_WAIT;
        loop {
            let db = self.db.clone();
            let now = self.clock.timestamp();
            let load = async move {
                tokio::time::sleep(wait).await;
                Stored::load(&db, now).await
            };
            tokio::pin!(load);
            let loaded = loop {
                tokio::select! {
                    biased;
                    _ = stop.changed() => return None,
                    cmd = commands.recv() => self.command_read_only(cmd?, client).await,
                    msg = inbound.recv() => self.inbound_read_only(msg?, client, ready).await,
                    loaded = &mut load => break loaded,
                }
            };
            match loaded {
                Ok(stored) => {
                    let kept = self.degraded.take().unwrap_or_default();
                    return Some((stored, kept));
                }
                Err(e) => {
                    tracing::warn!("the database is still unavailable: {e}");
                    wait = (wait * 2).min(RELOAD_MAX_WAIT);
                }
            }
        }
    }

    /// Leaves read-only: swaps in the state loaded whole, republishes what a reconnect
    /// meanwhile may have lost, and hands the kept device messages to `batch`.
    async fn resume(
        &mut self,
        (stored, kept): (Stored, Degraded),
        client: &AsyncClient,
        batch: &mut Batch,
    ) {
        self.apply(stored);
        tracing::info!(
            kept = kept.latest.len() + kept.events.len(),
            dropped = kept.dropped,
            "the database answers again: the fleet coordinator resumes"
        );
        if self.connected {
            self.republish_all(client).await;
        }
        batch.flag_devices.extend(kept.flag_devices);
        for (topic, payload) in kept.events.into_iter().chain(kept.latest) {
            self.message(&topic, payload, batch).await;
        }
    }

    /// A command while read-only: reads served from memory, changes refused.
    async fn command_read_only(&mut self, cmd: Command, client: &AsyncClient) {
        match cmd {
            Command::Tick { reply } => {
                let _ = reply.send(());
            }
            Command::FlagList { reply } => {
                let _ = reply.send(self.flags.list());
            }
            Command::FlagShow { reply, .. } => {
                let _ = reply.send(Err(FleetError::Unavailable));
            }
            Command::Flag { reply, .. } => {
                let _ = reply.send(Err(FleetError::Unavailable));
            }
            Command::Create { reply, .. } | Command::Operate { reply, .. } => {
                let _ = reply.send(Err(FleetError::Unavailable));
            }
            Command::ReleaseChanged { digest } => {
                self.releases.remove(&digest);
            }
            Command::DeviceChanged { id } => {
                if let Some(degraded) = &mut self.degraded {
                    degraded.flag_devices.insert(id);
                }
            }
            Command::TrustChanged { payload } => {
                if let Some(payload) = self.accept_trust(payload) {
                    let topic = self.topics.trust();
                    self.publish(client, topic, payload, true).await;
                }
            }
        }
    }

    /// An MQTT input while read-only: heartbeats acked, device messages kept.
    async fn inbound_read_only(
        &mut self,
        msg: Inbound,
        client: &AsyncClient,
        ready: &watch::Sender<bool>,
    ) {
        match msg {
            Inbound::Connected => {
                // Desired states, flags and trust are republished once the database is back.
                self.connected = true;
                subscribe(client, &self.topics).await;
            }
            Inbound::Subscribed => {
                ready.send_replace(true);
            }
            Inbound::SubscribeRefused => subscribe(client, &self.topics).await,
            Inbound::Disconnected(e) => {
                self.connected = false;
                tracing::debug!("MQTT disconnected: {e}");
            }
            Inbound::Message { topic, payload } => {
                Counters::inc(&self.counters().mqtt_received);
                let heartbeat = match self.topics.parse_device_topic(&topic) {
                    Ok((id, TopicKind::Heartbeat)) => heartbeat_ack(&self.topics, &id, &payload)
                        .ok()
                        .map(|(_, ack)| ack),
                    _ => None,
                };
                match heartbeat {
                    Some((topic, ack)) => self.publish(client, topic, ack, false).await,
                    None if payload.is_empty() => {}
                    None => {
                        if let Some(degraded) = &mut self.degraded {
                            degraded.keep(&self.topics, topic, payload);
                        }
                    }
                }
            }
        }
    }

    /// Forgets rollouts that need no more driving, and frees their devices.
    fn unload_finished(&mut self) {
        let done: Vec<i64> = self
            .rollouts
            .iter()
            .filter(|(_, l)| !l.planner.needs_driving())
            .map(|(id, _)| *id)
            .collect();
        for id in &done {
            self.rollouts.remove(id);
        }
        let active: HashSet<i64> = self
            .rollouts
            .iter()
            .filter(|(_, l)| l.planner.state().is_active())
            .map(|(id, _)| *id)
            .collect();
        self.owner.retain(|_, rid| active.contains(rid));
    }

    fn update_snapshot(&self) {
        let mut executions = StateCounts::default();
        let mut active = 0;
        for l in self.rollouts.values() {
            if l.planner.state().is_active() {
                active += 1;
                executions.merge(&l.planner.status().totals);
            }
        }
        self.shared.set_snapshot(Snapshot {
            executions,
            mqtt_connected: self.connected,
            active_rollouts: active,
            db_unavailable: self.degraded.is_some(),
        });
    }

    // ----- operator commands -----

    async fn command(
        &mut self,
        cmd: Command,
        batch: &mut Batch,
        tx: &mut Option<DbTx>,
        replies: &mut Vec<Reply>,
    ) {
        match cmd {
            Command::Tick { reply } => replies.push(Reply::Tick(reply)),
            Command::Flag {
                name,
                edit,
                operator,
                reply,
            } => match self.edit_flag(&name, edit, &operator, batch).await {
                Ok(result) => replies.push(Reply::Flag(reply, Box::new(Ok(result)))),
                Err(e) => {
                    let e = Err(e);
                    self.note(&e);
                    let _ = reply.send(e);
                }
            },
            Command::FlagList { reply } => {
                let _ = reply.send(self.flags.list());
            }
            Command::FlagShow {
                name,
                device,
                reply,
            } => {
                let result = self.show_flag(&name, device.as_deref()).await;
                self.note(&result);
                let _ = reply.send(result);
            }
            Command::ReleaseChanged { digest } => {
                self.releases.remove(&digest);
            }
            Command::DeviceChanged { id } => {
                batch.flag_devices.insert(id);
            }
            Command::TrustChanged { payload } => {
                if let Some(payload) = self.accept_trust(payload) {
                    batch.trust = Some(payload);
                }
            }
            Command::Create {
                request,
                operator,
                reply,
            } => {
                let result = self.create(request, &operator, batch, tx).await;
                self.note(&result);
                match result {
                    Ok(id) => {
                        self.drain(&operator, batch).await;
                        replies.push(Reply::View(reply, Box::new(self.view_of(id, true))));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Operate {
                id,
                op,
                operator,
                reply,
            } => match self.operate(id, &op, &operator, batch).await {
                Ok(()) => {
                    self.drain(&operator, batch).await;
                    replies.push(Reply::View(reply, Box::new(self.view_of(id, false))));
                }
                Err(e) => {
                    let e = Err(e);
                    self.note(&e);
                    let _ = reply.send(e);
                }
            },
        }
    }

    /// Takes a stored trust-set update as the one in force unless a newer one is (two
    /// rotations' notices may arrive out of order: the retained message must be the update
    /// in force); returns it to publish.
    fn accept_trust(&mut self, payload: Vec<u8>) -> Option<Vec<u8>> {
        let sequence = |p: &[u8]| {
            SignedTrustUpdate::decode(p)
                .map(|s| s.update.sequence)
                .unwrap_or(0)
        };
        if self
            .trust
            .as_deref()
            .is_none_or(|current| sequence(&payload) > sequence(current))
        {
            self.trust = Some(payload.clone());
            return Some(payload);
        }
        None
    }

    /// Notes a command's failure to read the database: the batch is not stored.
    fn note<T>(&mut self, result: &Result<T, FleetError>) {
        if let Err(FleetError::Db(e)) = result
            && e.is_unavailable()
        {
            self.read_failed = true;
        }
    }

    /// Applies an operator's flag edit: the change, its audit record and event go into the
    /// batch, and so do the flags of every device they change (published after the commit).
    async fn edit_flag(
        &mut self,
        name: &FlagName,
        edit: FlagEdit,
        operator: &str,
        batch: &mut Batch,
    ) -> Result<FlagEditResult, FleetError> {
        let records = if self.flags.needs_records(name.as_str(), &edit) {
            Some(self.db.list_devices().await?)
        } else {
            None
        };
        let now = self.clock.timestamp();
        let Some((change, publish)) =
            self.flags
                .apply(name, edit, operator, now, records.as_deref())?
        else {
            return Ok(FlagEditResult {
                changed: false,
                version: self.flags.version(),
                flag: self.flags.view(name.as_str()),
                published: 0,
            });
        };
        let old = change.old.as_ref().map(FlagView::from);
        let new = change.new.as_ref().map(FlagView::from);
        batch.events.push(
            NewEvent::new(
                self.clock.now_i64(),
                operator,
                EventKind::of_flag_change(change.kind()),
            )
            .details(json!({
                "flag": name.as_str(),
                "version": change.version,
                "at_ms": change.at.as_unix_millis(),
                "old": old,
                "new": new,
            })),
        );
        let result = FlagEditResult {
            changed: true,
            version: change.version,
            flag: new,
            published: publish.len() as u64,
        };
        batch.publish.extend(
            publish
                .into_iter()
                .map(|(id, payload)| (self.topics.flags(&id), payload)),
        );
        batch.flag_changes.push(change);
        Ok(result)
    }

    async fn show_flag(
        &mut self,
        name: &str,
        device: Option<&str>,
    ) -> Result<FlagDetail, FleetError> {
        let record = match device {
            Some(id) => Some(
                self.db
                    .get_device(id)
                    .await?
                    .ok_or_else(|| FleetError::DeviceNotFound(id.to_string()))?,
            ),
            None => None,
        };
        self.flags.show(name, record.as_ref())
    }

    fn view_of(&self, id: i64, created: bool) -> Result<RolloutView, FleetError> {
        let loaded = self
            .rollouts
            .get(&id)
            .ok_or(FleetError::RolloutNotFound(id))?;
        let mut view = RolloutView::new(&loaded.record, &loaded.planner, loaded.version.clone());
        if created {
            view.excluded = loaded.record.spec.get("excluded").cloned();
            view.conflicts = loaded.record.spec.get("conflicts").cloned();
            view.warnings = loaded.record.spec.get("warnings").cloned();
        }
        Ok(view)
    }

    async fn resolve_release(&self, wanted: &str) -> Result<(ReleaseRecord, Vec<u8>), FleetError> {
        let wanted = wanted.trim();
        let record = if let Ok(digest) = wanted.parse::<Digest>() {
            self.db.get_release(&digest).await?
        } else {
            let matches: Vec<ReleaseRecord> = self
                .db
                .list_releases()
                .await?
                .into_iter()
                .filter(|r| r.version == wanted)
                .collect();
            if matches.len() > 1 {
                return Err(FleetError::AmbiguousRelease(wanted.to_string()));
            }
            matches.into_iter().next()
        };
        let record = record.ok_or_else(|| FleetError::ReleaseNotFound(wanted.to_string()))?;
        let bytes = self
            .db
            .get_release_bytes(&record.digest)
            .await?
            .ok_or_else(|| FleetError::ReleaseNotFound(wanted.to_string()))?;
        Ok((record, bytes))
    }

    async fn create(
        &mut self,
        req: RolloutRequest,
        operator: &str,
        batch: &mut Batch,
        tx_slot: &mut Option<DbTx>,
    ) -> Result<i64, FleetError> {
        let (release, bytes) = self.resolve_release(&req.release).await?;
        let warnings = expiry_warnings(&release, &req, self.clock.now())?;
        let filter_text = req.filter.trim();
        let filter = Filter::parse(if filter_text.is_empty() {
            "all"
        } else {
            filter_text
        })
        .map_err(|e| FleetError::BadFilter(e.to_string()))?;
        let mut spec = RolloutSpec::new("0", release.digest, operator);
        spec.waves = req
            .waves
            .iter()
            .map(|w| percent(*w, "a wave"))
            .collect::<Result<_, _>>()?;
        spec.bake_time = Duration::from_secs(req.bake_secs);
        spec.success_min = percent(req.success_min, "success-min")?;
        spec.max_failure = percent(req.max_failure, "max-failure")?;
        spec.min_executed = req.min_executed;
        spec.rate_per_minute = req.rate_per_minute;
        spec.inactivity_timeout = Duration::from_secs(req.inactivity_timeout_secs);
        spec.max_deferral = Duration::from_secs(req.max_deferral_secs);
        spec.force_reinstall = req.force_reinstall;
        spec.dry_run = req.dry_run;
        spec.validate()?;

        let registry = self.db.list_devices().await?;
        let known = Known {
            owner: &self.owner,
            devices: &self.devices,
        };
        let Selection {
            targets,
            matched,
            incompatible,
            conflicts,
        } = targeting::select(&registry, &filter, &release.hardware, &known);
        let conflicts: Vec<(String, i64)> = conflicts
            .into_iter()
            .map(|(device, rollout)| (device.as_str().to_string(), rollout))
            .collect();
        if targets.is_empty() {
            return Err(FleetError::NoTargets {
                matched,
                incompatible,
            });
        }
        // A dry run notifies nobody, so it may plan over devices another rollout holds: it
        // answers the plan with the devices a real create would be refused for.
        if !conflicts.is_empty() && !req.dry_run {
            return Err(FleetError::Conflict(conflicts));
        }
        let mut spec_json = serde_json::to_value(&req).unwrap_or_else(|_| json!({}));
        if let Some(map) = spec_json.as_object_mut() {
            map.insert("release".into(), json!(release.digest.to_string()));
            map.insert(
                "excluded".into(),
                json!({ "incompatible_hardware": incompatible }),
            );
            if !warnings.is_empty() {
                map.insert("warnings".into(), json!(warnings));
            }
            if req.dry_run {
                let list: Vec<_> = conflicts
                    .iter()
                    .map(|(device, rollout)| json!({ "device": device, "rollout": rollout }))
                    .collect();
                map.insert("conflicts".into(), json!(list));
            }
        }
        let now = self.clock.now_i64();
        let mut tx = self.db.begin().await?;
        let new = NewRollout::new(
            release.digest,
            filter_text,
            spec_json.clone(),
            Vec::new(),
            "created",
            operator,
        );
        let id = tx.insert_rollout(&new, now).await?;
        spec.id = id.to_string();
        let planner = Rollout::new(spec, targets, self.clock.timestamp())?;
        let status = planner.status();
        let state = planner.state().name();
        batch.events.push(
            NewEvent::new(now, operator, EventKind::RolloutCreated)
                .rollout(id)
                .details(json!({
                    "release": release.digest.to_string(),
                    "version": release.version,
                    "filter": filter_text,
                    "targets": status.deploys + status.redeploys,
                    "deploys": status.deploys,
                    "redeploys": status.redeploys,
                    "excluded_incompatible_hardware": incompatible,
                    "dry_run": req.dry_run,
                    "conflicts": conflicts.len(),
                    "force_reinstall": req.force_reinstall,
                    "state": state,
                    "warnings": warnings,
                })),
        );
        if matches!(planner.state(), RolloutState::Running { .. }) {
            batch.events.push(
                NewEvent::new(now, operator, EventKind::RolloutStarted)
                    .rollout(id)
                    .details(json!({ "deploys": status.deploys, "redeploys": status.redeploys })),
            );
        }
        let record = RolloutRecord {
            id,
            release_digest: release.digest,
            filter: filter_text.to_string(),
            spec: spec_json,
            state: Vec::new(),
            status: state.to_string(),
            created_by: operator.to_string(),
            approved_by: None,
            created_at: now,
            updated_at: now,
        };
        self.releases.insert(release.digest, Some(Arc::new(bytes)));
        self.insert_loaded(Loaded {
            record,
            planner,
            version: Some(release.version.clone()),
            dirty: true,
        });
        *tx_slot = Some(tx);
        Ok(id)
    }

    async fn operate(
        &mut self,
        id: i64,
        op: &Op,
        operator: &str,
        batch: &mut Batch,
    ) -> Result<(), FleetError> {
        if !self.rollouts.contains_key(&id) {
            let record = self
                .db
                .get_rollout(id)
                .await?
                .ok_or(FleetError::RolloutNotFound(id))?;
            let planner = Rollout::from_cbor(&record.state)?;
            let version = self
                .db
                .get_release(&record.release_digest)
                .await?
                .map(|r| r.version);
            // Kept until the end of this batch (a finished rollout is unloaded again).
            self.rollouts.insert(
                id,
                Loaded {
                    record: strip(record),
                    planner,
                    version,
                    dirty: false,
                },
            );
        }
        let now_ts = self.clock.timestamp();
        let now = self.clock.now_i64();
        let loaded = self
            .rollouts
            .get_mut(&id)
            .ok_or(FleetError::RolloutNotFound(id))?;
        let before = loaded.planner.state().clone();
        let kind = match op {
            Op::Approve => {
                loaded.planner.approve(operator, now_ts)?;
                batch.approved.push((id, operator.to_string()));
                loaded.record.approved_by = Some(operator.to_string());
                EventKind::RolloutApproved
            }
            Op::Pause => {
                loaded.planner.pause(now_ts)?;
                EventKind::RolloutPaused
            }
            Op::Resume => {
                loaded.planner.resume(now_ts)?;
                EventKind::RolloutResumed
            }
            Op::Abort(reason) => {
                let reason = if reason.trim().is_empty() {
                    format!("aborted by {operator}")
                } else {
                    reason.clone()
                };
                loaded.planner.abort(reason, now_ts)?;
                EventKind::RolloutAbortRequested
            }
        };
        if *loaded.planner.state() == before {
            // Idempotent repeat (pause of a paused rollout, ...): nothing to record.
            return Ok(());
        }
        loaded.dirty = true;
        batch.events.push(
            NewEvent::new(now, operator, kind)
                .rollout(id)
                .details(json!({
                    "from": before.name(),
                    "to": loaded.planner.state().name(),
                })),
        );
        if matches!(op, Op::Approve) {
            let status = loaded.planner.status();
            batch.events.push(
                NewEvent::new(now, operator, EventKind::RolloutStarted)
                    .rollout(id)
                    .details(json!({ "deploys": status.deploys, "redeploys": status.redeploys })),
            );
        }
        Ok(())
    }
}

/// An answer to send once the batch is stored.
enum Reply {
    Tick(oneshot::Sender<()>),
    View(
        oneshot::Sender<Result<RolloutView, FleetError>>,
        Box<Result<RolloutView, FleetError>>,
    ),
    Flag(
        oneshot::Sender<Result<FlagEditResult, FleetError>>,
        Box<Result<FlagEditResult, FleetError>>,
    ),
}

impl Reply {
    fn send(self, stored: bool, fenced: bool) {
        match self {
            Reply::Tick(tx) => {
                let _ = tx.send(());
            }
            Reply::View(tx, result) => {
                let _ = tx.send(stored_or(stored, fenced, *result));
            }
            Reply::Flag(tx, result) => {
                let _ = tx.send(stored_or(stored, fenced, *result));
            }
        }
    }
}

/// `result` if the batch was stored; else nothing was stored: [`FleetError::NotLeader`] if it
/// was fenced (another replica coordinates now), [`FleetError::Unavailable`] otherwise (the
/// coordinator is read-only until the database is back).
fn stored_or<T>(
    stored: bool,
    fenced: bool,
    result: Result<T, FleetError>,
) -> Result<T, FleetError> {
    match (stored, fenced) {
        (true, _) => result,
        (false, true) => Err(FleetError::NotLeader),
        (false, false) => Err(FleetError::Unavailable),
    }
}

/// Runs `write` in `tx`; with `isolate`, under a savepoint: if the database refuses it (for
/// what it writes, not for being unavailable), it is undone and its error returned, and the
/// transaction goes on.
async fn isolated(
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

/// Subscribes to every device topic the server reads (in the fleet's namespace `topics`).
async fn subscribe(client: &AsyncClient, topics: &Topics) {
    let filters = [
        TopicKind::Reported,
        TopicKind::Events,
        TopicKind::Status,
        TopicKind::Heartbeat,
        TopicKind::Trust,
    ]
    .map(|k| SubscribeFilter::new(topics.fleet_filter(k), QoS::AtLeastOnce));
    if let Err(e) = client.subscribe_many(filters).await {
        tracing::error!("cannot subscribe: {e}");
    }
}

/// Heartbeat `payload` from `id` and its acknowledgement (topic in `topics`, payload); else
/// why not.
fn heartbeat_ack(
    topics: &Topics,
    id: &DeviceId,
    payload: &[u8],
) -> Result<(Heartbeat, (String, Vec<u8>)), String> {
    let h = Heartbeat::from_cbor(payload).map_err(|e| e.to_string())?;
    let ack = HeartbeatAck {
        v: PROTOCOL_VERSION,
        seq: h.seq,
    };
    Ok((
        h,
        (topics.device(id, TopicKind::HeartbeatAck), ack.to_cbor()),
    ))
}

/// Refuses a release that expired by `now` (unix seconds): devices would refuse it. Answers
/// a warning when it expires before the rollout can plausibly finish (one bake per wave).
fn expiry_warnings(
    release: &ReleaseRecord,
    req: &RolloutRequest,
    now: u64,
) -> Result<Vec<String>, FleetError> {
    let Some(expires) = release.expires else {
        return Ok(Vec::new());
    };
    if now >= expires {
        return Err(FleetError::ReleaseExpired {
            version: release.version.clone(),
            expires,
        });
    }
    let waves = u64::try_from(req.waves.len()).unwrap_or(u64::MAX);
    let plausible = waves.saturating_mul(req.bake_secs);
    if now.saturating_add(plausible) > expires {
        return Ok(vec![format!(
            "release {} expires at {expires} (unix seconds), in {} s: before the rollout can \
             plausibly finish ({waves} wave(s) x {} s bake = {plausible} s); devices refuse it \
             once expired",
            release.version,
            expires - now,
            req.bake_secs,
        )]);
    }
    Ok(Vec::new())
}

/// The record without its (large) state blob.
fn strip(mut record: RolloutRecord) -> RolloutRecord {
    record.state = Vec::new();
    record
}

/// The audit event kind of a device's answer to a trust-set update.
fn trust_event_kind(outcome: &TrustOutcome) -> EventKind {
    match outcome {
        TrustOutcome::Rotated { .. } => EventKind::TrustRotated,
        TrustOutcome::Rejected { .. } => EventKind::TrustRejected,
    }
}

/// A device's answer to a trust-set update, as a `trust-rotated` or `trust-rejected` audit
/// event at `now` (the device's own time is in `at_ms`).
fn on_trust_report(id: &DeviceId, r: &TrustReport, now: i64, batch: &mut Batch) {
    let mut details = json!({ "sequence": r.sequence, "offered": r.offered, "at_ms": r.at });
    let extra = match &r.outcome {
        TrustOutcome::Rotated { keys, threshold } => {
            json!({ "keys": keys, "threshold": threshold })
        }
        TrustOutcome::Rejected { cause, detail } => {
            json!({ "cause": cause.name(), "detail": detail })
        }
    };
    if let (Some(map), serde_json::Value::Object(extra)) = (details.as_object_mut(), extra) {
        map.extend(extra);
    }
    batch.events.push(
        NewEvent::new(now, format!("device:{id}"), trust_event_kind(&r.outcome))
            .device(id.as_str())
            .details(details),
    );
}

/// What the coordinator knows of the fleet beyond the registry, for target selection: which
/// rollout holds a device and its presence as last heard.
struct Known<'a> {
    owner: &'a HashMap<String, i64>,
    devices: &'a HashMap<String, DeviceMemo>,
}

impl FleetKnowledge<i64> for Known<'_> {
    fn holder(&self, device: &DeviceId) -> Option<i64> {
        self.owner.get(device.as_str()).copied()
    }
    fn presence(&self, device: &DeviceId) -> Option<bool> {
        self.devices.get(device.as_str()).map(|m| m.online)
    }
}

fn memo_of(d: &DeviceRecord) -> DeviceMemo {
    DeviceMemo {
        online: d.online,
        drifted: d.drifted,
        registered: d.hardware_class.is_some() || d.running_digest.is_some(),
        running: d.running_digest,
        last_committed: d.last_committed_digest,
        on_trial: false,
        // Known again from its next heartbeat (the planners persisted what it meant).
        healthy: None,
        reported_generation: d.reported_generation,
        last_seen: d.last_seen,
        transfer: d.last_transfer.map(|t| {
            let figures = Transfer {
                fetched: t.fetched_bytes,
                size: t.full_bytes,
            };
            (t.generation, figures)
        }),
        security_floor: d
            .inventory
            .as_ref()
            .and_then(|i| i["security_floor"].as_u64())
            .and_then(|f| u32::try_from(f).ok())
            .unwrap_or(0),
    }
}

/// Whether a device in execution state `state` has the artifact in its cache: the states that
/// can carry a download's cost.
fn after_download(state: &ExecutionState) -> bool {
    matches!(
        state,
        ExecutionState::Installing
            | ExecutionState::Trial
            | ExecutionState::Succeeded
            | ExecutionState::RolledBack { .. }
            | ExecutionState::Failed {
                phase: FailurePhase::Install | FailurePhase::Trial,
                ..
            }
    )
}

/// A download's cost in an audit event's details.
fn transfer_json(t: &Transfer) -> serde_json::Value {
    json!({
        "fetched_bytes": t.fetched,
        "full_bytes": t.size,
        "saved_bytes": t.saved(),
    })
}

/// `last_result` as stored: the state name, with the phase for failures.
fn result_name(state: &ExecutionState) -> String {
    match state {
        ExecutionState::Failed { phase, .. } => format!("failed-{}", phase.name()),
        other => other.name().to_string(),
    }
}
