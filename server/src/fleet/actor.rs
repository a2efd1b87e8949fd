//! The coordinator task: registry, rollout planners, batching, persistence, publishing.
//!
//! This file holds the task, its state and its loop; the work is in one child module per
//! concern: [`inbound`] (what devices send), [`planner_actions`] (what the planners ask
//! for), [`commit`] (one batch, one transaction, then publish), [`outage`] (read-only while
//! the database is away) and [`commands`] (what operators ask). The decisions themselves are
//! in core's `fleet` module and the rollout planner.

mod commands;
mod commit;
mod inbound;
mod outage;
mod planner_actions;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ota_core::budget::{BudgetSpec, Budgets};
use ota_core::digest::Digest;
use ota_core::flags::FlagChange;
use ota_core::fleet::{DeviceMemo, Generations, RolloutId, reissue_above_watermark};
use ota_core::rollout::{DesiredKind, Rollout, RolloutError, RolloutStatus, StateCounts};
use ota_core::wire::{DeviceId, ExecutionState, TopicKind, Topics, Transfer};
use rumqttc::{AsyncClient, QoS, SubscribeFilter};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::flags::{FlagEditResult, Flags};
use super::outbox::{self, Outbox};
use super::view::RolloutView;
use super::{Command, Counters, DEVICE_EVENTS_PER_MINUTE, Fleet, FleetError, MAX_BATCH, Shared};
use crate::clock::{Clock, ClockJumps};
use crate::db::{
    Db, DbError, DbTx, DesiredRecord, DeviceRecord, DeviceReport, Fence, NewEvent, RolloutRecord,
    TransferRecord,
};
use crate::event_kinds::EventKind;
use crate::mqtt::{INBOUND_QUEUE, Inbound, LinkSpec, MqttLink};
use crate::trust::FleetTrust;

/// Rollout statuses the coordinator loads at start: every one but a dry run's (completed and
/// aborted ones are kept only while [`Rollout::needs_driving`] says so).
const LOADED_STATUSES: [RolloutStatus; 5] = {
    let [_dry_run, rest @ ..] = RolloutStatus::ALL;
    rest
};
/// How long [`start`] waits for the broker's first answer (CONNACK): a broker that does not
/// answer at all fails the start quickly, with a clear error.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long [`start`] then waits for the broker to grant the subscriptions: a cluster that just
/// lost a node answers but delays or refuses subscriptions for tens of seconds (docs/ha.md),
/// and a fresh start would begin the connection over.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(45);
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

/// The lease a coordinator starts under ([`start`]).
#[derive(Debug)]
pub struct StartLease {
    /// The fencing token every batch is checked against.
    pub fence: Fence,
    /// Turns true to call the start off (the lease was lost, or the replica stops).
    pub cancel: watch::Receiver<bool>,
}

/// How far the coordinator's broker link got ([`start`] waits on it). Only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum LinkProgress {
    /// No answer from the broker yet.
    Waiting,
    /// The broker answered a connection (CONNACK).
    Answered,
    /// The broker granted the fleet's subscriptions: the coordinator is ready.
    Subscribed,
}

/// Attaches to `handle` a coordinator that loads the registry and every unfinished rollout from
/// `db`, connects to the broker of
/// `mqtt` (topics in its namespace, every device's messages against its budget) and starts the
/// coordinator (counters and snapshots go to `shared`; rollback targets are checked against
/// the trust set in force, `keys`). Returns once the broker acknowledged the subscriptions;
/// fails when the broker did not answer within [`ANSWER_TIMEOUT`] (15 s) or did not grant the
/// subscriptions within [`SUBSCRIBE_TIMEOUT`] (45 s) more, and with
/// [`FleetStartError::Cancelled`] as soon as `lease.cancel` turns true (the load, or the wait for the
/// broker, is abandoned and the link and actor task it began are stopped first). Every batch it
/// writes first checks `lease.fence` in its transaction ([`DbTx::check_fence`]): once another
/// replica took the lease the coordinator stops, and publishes nothing of the refused batch.
pub async fn start(
    handle: &Fleet,
    db: Db,
    clock: Clock,
    mqtt: &LinkSpec,
    public_url: String,
    keys: FleetTrust,
    lease: StartLease,
) -> Result<FleetTask, FleetStartError> {
    let StartLease { fence, mut cancel } = lease;
    let shared = handle.shared.clone();
    let stored = tokio::select! {
        stored = Stored::load(&db, clock.timestamp()) => stored?,
        true = called_off(&mut cancel) => return Err(FleetStartError::Cancelled),
    };
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
    let (ready_tx, mut ready_rx) = watch::channel(LinkProgress::Waiting);
    let client = link.client().clone();
    let task = tokio::spawn(actor.run(client, link, in_rx, cmd_rx, stop_rx, ready_tx));
    let failure = tokio::select! {
        ready = link_ready(&mut ready_rx) => {
            (!ready).then(|| FleetStartError::Broker(mqtt.endpoint.to_string()))
        }
        true = called_off(&mut cancel) => Some(FleetStartError::Cancelled),
    };
    if let Some(e) = failure {
        stop_tx.send_replace(true);
        let _ = task.await;
        return Err(e);
    }
    handle.attach(Some(cmd_tx));
    Ok(FleetTask {
        stop: stop_tx,
        task: Some(task),
        handle: handle.clone(),
    })
}

/// Whether the broker answered within [`ANSWER_TIMEOUT`] and then granted the subscriptions
/// within [`SUBSCRIBE_TIMEOUT`] more.
async fn link_ready(progress: &mut watch::Receiver<LinkProgress>) -> bool {
    let answered = tokio::time::timeout(
        ANSWER_TIMEOUT,
        progress.wait_for(|p| *p >= LinkProgress::Answered),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    answered
        && tokio::time::timeout(
            SUBSCRIBE_TIMEOUT,
            progress.wait_for(|p| *p == LinkProgress::Subscribed),
        )
        .await
        .is_ok_and(|r| r.is_ok())
}

/// Whether `cancel` turned true; `false` at once when its sender is gone (a `true = ...`
/// branch of a `select!` is then disabled, not taken).
async fn called_off(cancel: &mut watch::Receiver<bool>) -> bool {
    cancel.wait_for(|c| *c).await.is_ok()
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
        id: RolloutId,
        /// Why.
        error: RolloutError,
    },
    /// The MQTT broker did not accept the connection and subscriptions in time.
    #[error("cannot connect and subscribe to the MQTT broker at {0} (is it running?)")]
    Broker(String),
    /// The start was called off before it was ready (the replica lost the lease, or stops);
    /// what it had begun (the broker link, the actor task) is stopped.
    #[error("the coordinator's start was called off")]
    Cancelled,
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
    approved: Vec<(RolloutId, String)>,
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
    rollouts: BTreeMap<RolloutId, Loaded>,
    owner: HashMap<String, RolloutId>,
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
                generations.restore(id, d.generation, Some(d.digest));
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
    rollouts: &mut BTreeMap<RolloutId, Loaded>,
    owner: &mut HashMap<String, RolloutId>,
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
    /// Wakes the coordinator when its clock is advanced by hand (tests).
    jumps: ClockJumps,
    /// The fleet's topic namespace (`mqtt.topic_prefix`).
    topics: Topics,
    public_url: String,
    shared: Arc<Shared>,
    rollouts: BTreeMap<RolloutId, Loaded>,
    /// Device → its active rollout.
    owner: HashMap<String, RolloutId>,
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
            Err(e) => tracing::warn!(rollout = %id, "cannot decode the stored rollout: {e}"),
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
            jumps: clock.jumps(),
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
    /// issued that generation to `id`, or whose `outcome` answers the last generation issued
    /// about another release than the one issued; true if accepted. A refused value within
    /// one agent step above the last one issued, or the generation another release took, is
    /// kept as the device's watermark ([`Generations::acknowledge`]): the next generation
    /// issued to it is above it.
    fn acknowledges_issued(
        &mut self,
        id: &DeviceId,
        reported: u64,
        outcome: Option<&ota_core::wire::UpdateOutcome>,
        topic: &str,
        batch: &mut Batch,
    ) -> bool {
        match self.generations.acknowledge(id, reported, outcome) {
            Ok(()) => true,
            Err(e) => {
                self.reject(Some(id), topic, &e.to_string(), batch);
                false
            }
        }
    }

    /// A device whose watermark moved above the last generation issued to it ignores the
    /// desired state it was sent: what a rollout still waits for from it (its release, or
    /// after an abort where the abort sent it back: [`reissue_above_watermark`]) is issued
    /// again, above the watermark.
    async fn reissue_above_watermark(&mut self, id: &DeviceId, batch: &mut Batch) {
        let again = self.rollouts.iter().find_map(|(rid, loaded)| {
            reissue_above_watermark(&self.generations, &loaded.planner, id).map(|(to, kind)| {
                let force = kind == DesiredKind::Notify && loaded.planner.spec().force_reinstall;
                (*rid, to, kind, force)
            })
        });
        if let Some((rid, to, kind, force)) = again {
            self.publish_desired(id, rid, to, force, kind, batch).await;
        }
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
        ready: watch::Sender<LinkProgress>,
    ) {
        loop {
            self.outbox.flush(&client, &self.shared.counters);
            let wakeup = self.next_wakeup();
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
                    () = sleep_for(wakeup) => {}
                    () = self.jumps.moved() => {}
                }
            }
            let seen = self.jumps.seen();
            self.fire_timers();
            self.drain("server", &mut batch).await;
            let stored = self.commit(batch, tx, &client).await;
            for reply in replies {
                reply.send(stored, self.fenced);
            }
            self.jumps.acted(seen);
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

    /// How long the coordinator may sleep: until the earliest planner deadline by its clock,
    /// or the outbox's next retry; `None` when nothing is due ever (a message, a command or a
    /// jump of the clock wakes it).
    fn next_wakeup(&self) -> Option<Duration> {
        let now = self.clock.now_millis();
        let deadline = self
            .rollouts
            .values()
            .filter_map(|l| l.planner.poll_timeout())
            .min()
            .map(|t| Duration::from_millis(t.as_unix_millis().saturating_sub(now)));
        let retry = (!self.outbox.is_empty()).then_some(outbox::RETRY);
        deadline.into_iter().chain(retry).min()
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
}

/// Sleeps for `wakeup`, or for ever when it is `None`.
async fn sleep_for(wakeup: Option<Duration>) {
    match wakeup {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// An answer to send once the batch is stored.
enum Reply {
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

/// The record without its (large) state blob.
fn strip(mut record: RolloutRecord) -> RolloutRecord {
    record.state = Vec::new();
    record
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

/// `last_result` as stored: the state name, with the phase for failures.
fn result_name(state: &ExecutionState) -> String {
    match state {
        ExecutionState::Failed { phase, .. } => format!("failed-{}", phase.name()),
        other => other.name().to_string(),
    }
}
