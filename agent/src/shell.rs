//! The shell loop: the core machine wired to the I/O modules.
//!
//! ```text
//! loop {
//!     drain machine.poll_action(), performing each action in order;   // Persist first, always
//!     select! {
//!         shutdown                         => stop gracefully,
//!         MQTT link event                  => handle_connected / _disconnected / _desired / _heartbeat_ack,
//!                                             (trust topic: TrustFile, then set_trust),
//!         a spawned task finished          => handle_download_* / _cache_hashed / _install_done / _probe,
//!         sleep_until(machine.poll_timeout()) => handle_timeout,
//!         power poll (while deferred-power) => handle_power when the reading changed,
//!     }
//! }
//! ```
//!
//! | action | performed by | answer |
//! |---|---|---|
//! | `Persist` | [`Journal::store`] (temp file, fsync, rename, fsync dir), then the floor record's journal when the [`FloorRecord`] changed; a failure holds every later action and is retried with backoff | — |
//! | `PublishEvent`, `PublishReported` | the MQTT [`Link`]'s outbox (QoS 1, queued while offline) | — |
//! | `SendHeartbeat` | the link, only while connected | `HeartbeatAck` from the server |
//! | `ReadPower` | [`PowerSupplies::read`] (sysfs) | `handle_power` |
//! | `CheckDisk` | [`disk_space`] of the data directory | `handle_disk` |
//! | `HashCached` | [`Cache::verify_entry`], in a task | `handle_cache_hashed` |
//! | `InspectPartial` | [`Cache::partial_len`] | `handle_partial` |
//! | `Download` | [`Downloader::download`], in a task (progress fed back); with the `ab` installer the running slot is a delta's chunk source | `handle_download_*` |
//! | `DiscardPartial` | aborts the transfer, [`Cache::remove_partial`] | — |
//! | `Install` | the configured [`Installer`], in a task, with the artifact verified every time, rollbacks too: its size, then SHA-256 as the files and `ab` installers copy it ([`Installer::hashes_while_installing`]), or [`Cache::verify_entry`] before the command installer; a missing or mismatching artifact answers `CorruptArtifact` | `handle_install_done` |
//! | `Commit` | the `ab` installer marks the booted slot good ([`Bootloader::boot_slot`](crate::bootloader::Bootloader::boot_slot)); nothing for the others (logged) | — |
//! | `BootSlot` | [`Bootloader::boot_slot`](crate::bootloader::Bootloader::boot_slot) (`ab` only) | — |
//! | `Reboot` | [`AbInstaller::reboot`](crate::install::AbInstaller::reboot), in a task | `handle_reboot_failed` if it fails; after the reboot, `handle_boot_observed` at start-up |
//! | `ObserveRunning` | [`Installer::running_digest`] (what `current` points to) | `handle_observed_running` |
//! | `Evict` | [`Cache::evict`] and the files installer's release copy | — |
//! | `RunProbe` | the [`HealthProbe`], in a task (no probe: healthy at once) | `handle_probe` |
//! | `CheckHealth` | the same probe after the commit, in a task | `handle_health` |
//!
//! Time is [`ShellClock`]: wall time on tokio's monotonic clock, so a paused tokio clock drives
//! this loop in tests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use ota_core::digest::Digest;
use ota_core::update::{Action, DownloadError as CoreDownloadError, InstallError, ProbeResult};
use ota_core::update::{FloorRecord, PersistedState, Slot, Stage, UpdateMachine};
use ota_core::wire::{
    Event, ExecutionState, Heartbeat, HeartbeatAck, Inventory, PROTOCOL_VERSION, PowerReading,
    RejectCause, TopicKind, TrustOutcome, WireError, WireLimits, WireMessage, truncate_text,
};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::cache::Cache;
use crate::clock::{ShellClock, monotonic_now};
use crate::delta::SeedImage;
use crate::download::{DownloadRequest, Downloader};
use crate::flags::FlagFile;
use crate::health::HealthProbe;
use crate::install::{InstallRequest, Installer};
use crate::inventory::{self, disk_space};
use crate::journal::Journal;
use crate::mqtt::{Delivery, Kind, Link, LinkEvent};
use crate::power::PowerSupplies;
use crate::status::AgentStatus;
use crate::trust::TrustFile;

/// The longest wait between retries of a failed journal write.
const MAX_PERSIST_RETRY: Duration = Duration::from_secs(60);

/// Everything a [`Shell`] is built from.
pub(crate) struct Parts {
    pub(crate) flags: FlagFile,
    pub(crate) trust: TrustFile,
    pub(crate) machine: UpdateMachine,
    pub(crate) clock: ShellClock,
    pub(crate) journal: Journal,
    /// The floor record's journal (issue 19.7).
    pub(crate) floor: Journal,
    /// The floor record last stored.
    pub(crate) floor_record: FloorRecord,
    pub(crate) cache: Cache,
    pub(crate) downloader: Downloader,
    pub(crate) installer: Installer,
    pub(crate) probe: Option<HealthProbe>,
    pub(crate) power: PowerSupplies,
    pub(crate) data_dir: PathBuf,
    pub(crate) link: Link,
    pub(crate) link_rx: mpsc::UnboundedReceiver<LinkEvent>,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) agent_version: String,
    pub(crate) power_poll_interval: Duration,
    pub(crate) persist_retry: Duration,
    pub(crate) status: watch::Sender<AgentStatus>,
    pub(crate) boot_count: u32,
    /// The boot slot the system was booted from (`ab` installer only).
    pub(crate) booted: Option<Slot>,
}

/// What a spawned task reports back.
#[derive(Debug)]
enum TaskDone {
    Progress {
        id: u64,
        digest: Digest,
        done: u64,
    },
    Downloaded {
        id: u64,
        digest: Digest,
        result: Result<u64, CoreDownloadError>,
    },
    Hashed {
        digest: Digest,
        ok: bool,
    },
    Installed {
        digest: Digest,
        result: Result<(), InstallError>,
    },
    /// A trial probe's answer (`RunProbe`).
    Probed(ProbeResult),
    /// A post-commit health check's answer (`CheckHealth`).
    HealthChecked(ProbeResult),
    /// The reboot command failed (`Reboot`).
    RebootFailed(String),
}

/// The download in flight.
struct Transfer {
    id: u64,
    digest: Digest,
    task: JoinHandle<()>,
}

impl Drop for Transfer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Host facts that do not change while the agent runs.
struct Host {
    os: String,
    kernel: String,
    arch: String,
    hostname: String,
    memory_total: u64,
}

/// The shell loop's state (see the [module documentation](self)).
pub(crate) struct Shell {
    /// The feature flags and their file (independent of the update machine).
    flags: FlagFile,
    /// The trust state and its record (key rotation).
    trust: TrustFile,
    /// What the last trust-set update gave.
    last_trust: Option<TrustOutcome>,
    machine: UpdateMachine,
    clock: ShellClock,
    journal: Journal,
    floor: Journal,
    floor_record: FloorRecord,
    cache: Cache,
    downloader: Downloader,
    installer: Installer,
    probe: Option<HealthProbe>,
    power: PowerSupplies,
    data_dir: PathBuf,
    link: Link,
    link_rx: mpsc::UnboundedReceiver<LinkEvent>,
    labels: BTreeMap<String, String>,
    agent_version: String,
    power_poll_interval: Duration,
    status: watch::Sender<AgentStatus>,
    boot_count: u32,
    booted: Option<Slot>,
    host: Host,

    tasks_tx: mpsc::UnboundedSender<TaskDone>,
    tasks_rx: mpsc::UnboundedReceiver<TaskDone>,
    jobs: JoinSet<()>,
    transfer: Option<Transfer>,
    next_transfer: u64,

    pending_persist: Option<Box<PersistedState>>,
    persist_first_wait: Duration,
    persist_wait: Duration,
    persist_retry_at: Option<Instant>,
    next_power_poll: Option<Instant>,
    activated_at: SystemTime,
    decision_started: Option<Instant>,
    unacked: Vec<Delivery>,

    bytes_downloaded: Arc<AtomicU64>,
    installs: Vec<(Digest, bool)>,
    desired_received: u64,
    malformed_payloads: u64,
    last_error: Option<String>,
    broker_error: Option<String>,
}

fn name(s: Option<String>) -> String {
    truncate_text(&s.unwrap_or_default(), WireLimits::MAX_NAME_BYTES)
}

/// Sleeps until `at`, or forever when there is no deadline.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Shell {
    pub(crate) fn new(p: Parts) -> Self {
        let facts = inventory::Inventory::collect(&p.data_dir);
        let os = match (facts.os_name, facts.os_version) {
            (Some(n), Some(v)) => Some(format!("{n} {v}")),
            (n, v) => n.or(v),
        };
        let host = Host {
            os: name(os),
            kernel: name(facts.kernel_version),
            arch: name(Some(facts.arch)),
            hostname: name(facts.hostname),
            memory_total: facts.memory_total_bytes,
        };
        let (tasks_tx, tasks_rx) = mpsc::unbounded_channel();
        Shell {
            flags: p.flags,
            trust: p.trust,
            last_trust: None,
            machine: p.machine,
            clock: p.clock,
            journal: p.journal,
            floor: p.floor,
            floor_record: p.floor_record,
            cache: p.cache,
            downloader: p.downloader,
            installer: p.installer,
            probe: p.probe,
            power: p.power,
            data_dir: p.data_dir,
            link: p.link,
            link_rx: p.link_rx,
            labels: p.labels,
            agent_version: p.agent_version,
            power_poll_interval: p.power_poll_interval.max(Duration::from_millis(1)),
            status: p.status,
            boot_count: p.boot_count,
            booted: p.booted,
            host,
            tasks_tx,
            tasks_rx,
            jobs: JoinSet::new(),
            transfer: None,
            next_transfer: 0,
            pending_persist: None,
            persist_first_wait: p.persist_retry.max(Duration::from_millis(1)),
            persist_wait: p.persist_retry.max(Duration::from_millis(1)),
            persist_retry_at: None,
            next_power_poll: None,
            activated_at: ShellClock::file_system_now(),
            decision_started: None,
            unacked: Vec::new(),
            bytes_downloaded: Arc::new(AtomicU64::new(0)),
            installs: Vec::new(),
            desired_received: 0,
            malformed_payloads: 0,
            last_error: None,
            broker_error: None,
        }
    }

    /// The loop; returns after a graceful stop (shutdown requested, or the handle dropped).
    pub(crate) async fn run(mut self, mut shutdown: mpsc::Receiver<()>) {
        loop {
            self.drain().await;
            if self.pending_persist.is_none() {
                // Whatever the desired states asked is journaled: acknowledge them.
                for delivery in self.unacked.drain(..) {
                    self.link.ack(delivery);
                }
            }
            if let Some(at) = self.decision_started.take() {
                tracing::debug!(elapsed = ?at.elapsed(), "desired state handled");
            }
            self.publish_status();
            let timer = self.next_wake();
            let power_at = self.power_poll_at();
            tokio::select! {
                biased;
                _ = shutdown.recv() => break,
                Some(ev) = self.link_rx.recv() => self.on_link(ev),
                Some(done) = self.tasks_rx.recv() => self.on_task(done),
                () = sleep_until(timer) => self.on_timer(),
                () = sleep_until(power_at) => self.poll_power(),
            }
            while self.jobs.try_join_next().is_some() {}
        }
        self.stop().await;
    }

    fn now(&self) -> ota_core::update::Timestamp {
        self.clock.now()
    }

    fn error(&mut self, message: String) {
        tracing::error!("{message}");
        self.last_error = Some(message);
    }

    fn publish_status(&mut self) {
        let machine = self.machine.status();
        let new = AgentStatus {
            // Connected and subscribed (the machine heard of it).
            connected: machine.connected,
            machine,
            bytes_downloaded: self.bytes_downloaded.load(Ordering::Relaxed),
            installs: self.installs.clone(),
            desired_received: self.desired_received,
            malformed_payloads: self.malformed_payloads,
            outbox: self.link.queued(),
            last_error: self.last_error.clone(),
            broker_error: self.broker_error.clone(),
            boot_count: self.boot_count,
            trust_sequence: self.trust.state().sequence(),
            last_trust: self.last_trust.clone(),
        };
        self.status.send_if_modified(|s| {
            if *s == new {
                false
            } else {
                *s = new;
                true
            }
        });
    }

    /// The earliest of the machine's next timer and a journal retry.
    fn next_wake(&self) -> Option<Instant> {
        let machine = self
            .machine
            .poll_timeout()
            .map(|at| self.clock.instant_at(at));
        match (machine, self.persist_retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn power_poll_at(&mut self) -> Option<Instant> {
        if matches!(self.machine.status().stage, Stage::DeferredPower) {
            Some(
                *self
                    .next_power_poll
                    .get_or_insert_with(|| monotonic_now() + self.power_poll_interval),
            )
        } else {
            self.next_power_poll = None;
            None
        }
    }

    // ---- actions ---------------------------------------------------------------------------

    /// Performs the machine's actions in order. A journal write that fails holds every later
    /// action until a retry succeeds (write-ahead: nothing happens that the journal does not
    /// already say).
    async fn drain(&mut self) {
        loop {
            if let Some(state) = self.pending_persist.take() {
                if self.persist_retry_at.is_some_and(|at| monotonic_now() < at) {
                    self.pending_persist = Some(state);
                    return;
                }
                if !self.store(&state) {
                    self.pending_persist = Some(state);
                    return;
                }
            }
            let Some(action) = self.machine.poll_action() else {
                return;
            };
            match action {
                Action::Persist(state) => {
                    if !self.store(&state) {
                        self.pending_persist = Some(state);
                        return;
                    }
                }
                other => self.perform(other).await,
            }
        }
    }

    /// Stores a persisted state; on failure arms a retry with backoff.
    fn store(&mut self, state: &PersistedState) -> bool {
        // The journal first, then the floor record when it changed (never ahead of the journal).
        let record = FloorRecord::of(state);
        let stored = self.journal.store(&state.to_cbor()).and_then(|()| {
            if record != self.floor_record {
                self.floor.store(&record.to_cbor())?;
                self.floor_record = record;
            }
            Ok(())
        });
        match stored {
            Ok(()) => {
                self.persist_wait = self.persist_first_wait;
                self.persist_retry_at = None;
                true
            }
            Err(e) => {
                let wait = self.persist_wait;
                self.error(format!(
                    "cannot write the journal ({e}); everything waits, retrying in {wait:?}"
                ));
                self.persist_retry_at = Some(monotonic_now() + wait);
                self.persist_wait = (wait * 2).min(MAX_PERSIST_RETRY);
                false
            }
        }
    }

    async fn perform(&mut self, action: Action) {
        let now = self.now();
        match action {
            Action::Persist(_) => {}
            Action::PublishEvent(event) => {
                let kind = if matches!(event.kind, ExecutionState::Downloading { .. }) {
                    tracing::debug!(generation = event.generation, state = ?event.kind, "progress");
                    Kind::Progress
                } else {
                    tracing::info!(
                        generation = event.generation,
                        rollout = event.rollout_id.as_deref().unwrap_or("-"),
                        state = event.kind.name(),
                        detail = %crate::report::state_detail(&event.kind),
                        "update state"
                    );
                    Kind::Event
                };
                self.link.publish(TopicKind::Events, event.to_cbor(), kind);
            }
            Action::PublishReported => {
                let reported = self.machine.reported_state(
                    &self.agent_version,
                    self.inventory(),
                    self.labels.clone(),
                );
                self.link
                    .publish(TopicKind::Reported, reported.to_cbor(), Kind::Reported);
            }
            Action::ReadPower => {
                let reading = self.read_power();
                self.machine.handle_power(reading, now);
            }
            Action::CheckDisk { needed } => {
                let free = match disk_space(&self.data_dir) {
                    Ok(s) => s.available,
                    Err(e) => {
                        self.error(format!("cannot measure free disk space: {e}"));
                        0
                    }
                };
                tracing::debug!(needed, free, "disk check");
                self.machine.handle_disk(free, now);
            }
            Action::HashCached { digest, size } => {
                let cache = self.cache.clone();
                let tx = self.tasks_tx.clone();
                self.jobs.spawn(async move {
                    let ok = match cache.verify_entry(&digest, size).await {
                        Ok(ok) => ok,
                        Err(e) => {
                            tracing::error!("cannot re-hash cached {digest}: {e}");
                            false
                        }
                    };
                    if !ok {
                        tracing::warn!(%digest, "cached artifact missing or corrupt");
                    }
                    let _ = tx.send(TaskDone::Hashed { digest, ok });
                });
            }
            Action::InspectPartial { digest } => {
                let len = match self.cache.partial_len(&digest) {
                    Ok(len) => len.unwrap_or(0),
                    Err(e) => {
                        self.error(format!("cannot inspect the partial download: {e}"));
                        0
                    }
                };
                self.machine.handle_partial(digest, len, now);
            }
            Action::Download {
                url,
                digest,
                size,
                resume_from,
                chunk_index,
            } => {
                self.stop_transfer().await;
                let req = DownloadRequest::new(url, digest, size)
                    .with_resume_from(resume_from)
                    .with_chunk_index(chunk_index)
                    .with_running_slot(self.running_slot());
                self.start_transfer(req);
            }
            Action::DiscardPartial { digest } => {
                if self.transfer.as_ref().is_some_and(|t| t.digest == digest) {
                    self.stop_transfer().await;
                }
                if let Err(e) = self.cache.remove_partial(&digest) {
                    self.error(format!("cannot discard the partial download: {e}"));
                }
            }
            Action::Install {
                release,
                rollback,
                slot,
            } => {
                tracing::info!(version = %release.version, digest = %release.digest, rollback, slot = ?slot, "installing");
                self.installs.push((release.digest, rollback));
                let installer = self.installer.clone();
                let artifact = self.cache.path(&release.digest);
                let cache = self.cache.clone();
                let tx = self.tasks_tx.clone();
                self.jobs.spawn(async move {
                    let digest = release.digest;
                    // Verified at every install, rollbacks included (issue 19.8): the files and
                    // `ab` installers hash the bytes they install, the command installer's
                    // artifact is re-hashed first.
                    let checked = if installer.hashes_while_installing() {
                        cache.has_size(&digest, release.size)
                    } else {
                        cache.verify_entry(&digest, release.size).await
                    };
                    let result = match checked {
                        Ok(true) => {
                            let req = InstallRequest {
                                artifact: &artifact,
                                digest,
                                version: &release.version,
                            };
                            match installer.install(&req, slot).await {
                                Ok(_) => Ok(()),
                                Err(e @ crate::install::InstallError::ArtifactMismatch { .. }) => {
                                    Err(InstallError::corrupt_artifact(e.to_string()))
                                }
                                Err(e) => Err(InstallError::new(e.to_string())),
                            }
                        }
                        Ok(false) => Err(InstallError::corrupt_artifact(format!(
                            "{} is missing or does not match the signed size and SHA-256",
                            artifact.display()
                        ))),
                        Err(e) => Err(InstallError::new(e.to_string())),
                    };
                    let _ = tx.send(TaskDone::Installed { digest, result });
                });
            }
            Action::Commit { digest } => {
                tracing::info!(%digest, "release committed: it is the new known-good release");
                if let (Some(ab), Some(slot)) = (self.installer.ab(), self.booted)
                    && let Err(e) = ab.bootloader().boot_slot(slot).await
                {
                    self.error(format!("cannot mark slot {slot} good: {e}"));
                }
            }
            Action::BootSlot { slot } => {
                tracing::info!(%slot, "bootloader: boot slot {slot} from now on");
                if let Some(ab) = self.installer.ab()
                    && let Err(e) = ab.bootloader().boot_slot(slot).await
                {
                    self.error(format!("cannot make slot {slot} the default: {e}"));
                }
            }
            Action::Reboot => {
                tracing::warn!("rebooting");
                let Some(ab) = self.installer.ab().cloned() else {
                    return self
                        .machine
                        .handle_reboot_failed("this installer cannot reboot", now);
                };
                let tx = self.tasks_tx.clone();
                self.jobs.spawn(async move {
                    if let Err(e) = ab.reboot().await {
                        let _ = tx.send(TaskDone::RebootFailed(e.to_string()));
                    }
                });
            }
            Action::Evict { digest } => {
                if let Err(e) = self.cache.evict(&digest) {
                    self.error(format!("cannot evict {digest} from the cache: {e}"));
                }
                if let Err(e) = self.installer.remove_release(&digest) {
                    self.error(format!("cannot remove the installed copy of {digest}: {e}"));
                }
            }
            Action::RunProbe { .. } => match self.probe.clone() {
                None => self.machine.handle_probe(ProbeResult::Healthy, now),
                Some(probe) => self.spawn_probe(probe, TaskDone::Probed),
            },
            Action::CheckHealth { .. } => match self.probe.clone() {
                None => self.machine.handle_health(ProbeResult::Healthy, now),
                Some(probe) => self.spawn_probe(probe, TaskDone::HealthChecked),
            },
            Action::SendHeartbeat { seq, healthy } => {
                let hb = Heartbeat {
                    v: PROTOCOL_VERSION,
                    seq,
                    at: now.as_unix_millis(),
                    healthy,
                };
                self.link
                    .publish(TopicKind::Heartbeat, hb.to_cbor(), Kind::Heartbeat);
            }
            Action::ObserveRunning => {
                let digest = match self.installer.running_digest().await {
                    Ok(digest) => digest,
                    Err(e) => {
                        self.error(format!("cannot tell which release runs: {e}"));
                        None
                    }
                };
                self.machine.handle_observed_running(digest, now);
            }
            other => tracing::warn!(?other, "action not supported by this agent"),
        }
    }

    /// Runs `probe` in a task; its answer comes back as `done(answer)`.
    fn spawn_probe(&mut self, probe: HealthProbe, done: fn(ProbeResult) -> TaskDone) {
        let tx = self.tasks_tx.clone();
        let activated = self.activated_at;
        self.jobs.spawn(async move {
            let result = match probe.check(activated, ShellClock::file_system_now()).await {
                Ok(()) => ProbeResult::Healthy,
                Err(e) => ProbeResult::NotYet(e.to_string()),
            };
            let _ = tx.send(done(result));
        });
    }

    /// The `ab` installer's booted slot and the running release it holds (its first `size`
    /// bytes), a chunk source for deltas; `None` for the other installers, or when the booted
    /// slot or the running release is unknown.
    fn running_slot(&self) -> Option<SeedImage> {
        let ab = self.installer.ab()?;
        let slot = self.booted?;
        let running = self.machine.status().running?;
        Some(SeedImage {
            path: ab.slot_path(slot).to_path_buf(),
            digest: running.digest,
            size: running.size,
        })
    }

    fn start_transfer(&mut self, req: DownloadRequest) {
        let (digest, size) = (req.digest, req.size);
        self.next_transfer += 1;
        let id = self.next_transfer;
        let downloader = self.downloader.clone();
        let tx = self.tasks_tx.clone();
        let counter = self.bytes_downloaded.clone();
        tracing::info!(url = %req.url, %digest, size, resume_from = ?req.resume_from, delta = req.chunk_index.is_some(), "downloading");
        let task = tokio::spawn(async move {
            let step = (size / 100).max(256 * 1024);
            let mut last_sent = 0u64;
            let mut last_done: Option<u64> = None;
            let result = downloader
                .download(&req, |p| {
                    if let Some(prev) = last_done
                        && p.done > prev
                    {
                        counter.fetch_add(p.done - prev, Ordering::Relaxed);
                    }
                    last_done = Some(p.done);
                    if p.done >= last_sent.saturating_add(step) || p.done == p.total {
                        last_sent = p.done;
                        let _ = tx.send(TaskDone::Progress {
                            id,
                            digest,
                            done: p.done,
                        });
                    }
                })
                .await;
            let result = match result {
                Ok(done) => {
                    tracing::info!(
                        %digest,
                        resumed_from = done.resumed_from,
                        received = done.received,
                        delta = ?done.delta,
                        "download complete and verified"
                    );
                    // A prefix kept from an earlier attempt counts as fetched, except what a
                    // delta copied into it from the device's own files.
                    Ok(done.fetched_bytes())
                }
                Err(e) => {
                    tracing::warn!(%digest, class = ?e.class(), "download failed: {e}");
                    Err(match e.release_error() {
                        Some(re) => CoreDownloadError::Verify(re.clone()),
                        None => CoreDownloadError::Transient(truncate_text(
                            &e.to_string(),
                            WireLimits::MAX_TEXT_BYTES,
                        )),
                    })
                }
            };
            let _ = tx.send(TaskDone::Downloaded { id, digest, result });
        });
        self.transfer = Some(Transfer { id, digest, task });
    }

    /// Stops the transfer in flight (its partial file stays), and waits until it is gone.
    async fn stop_transfer(&mut self) {
        if let Some(mut t) = self.transfer.take() {
            t.task.abort();
            let _ = (&mut t.task).await;
        }
    }

    fn read_power(&mut self) -> PowerReading {
        match self.power.read() {
            Ok(r) => PowerReading {
                battery_percent: r.battery_percent,
                charging: r.charging,
                mains_online: r.mains_online,
            },
            Err(e) => {
                // No power-supply tree at all (a container, a board without one): mains.
                tracing::debug!("{e}: assuming mains power");
                PowerReading::MAINS
            }
        }
    }

    fn inventory(&self) -> Inventory {
        Inventory {
            os: self.host.os.clone(),
            kernel: self.host.kernel.clone(),
            arch: self.host.arch.clone(),
            hostname: self.host.hostname.clone(),
            memory_total: self.host.memory_total,
            disk_free: disk_space(&self.data_dir).map(|s| s.available).unwrap_or(0),
        }
    }

    // ---- inputs ----------------------------------------------------------------------------

    fn on_link(&mut self, ev: LinkEvent) {
        let now = self.now();
        match ev {
            LinkEvent::Connected => {
                self.broker_error = None;
                self.machine.handle_connected(now);
            }
            LinkEvent::Disconnected(why) => {
                tracing::debug!("disconnected: {why}");
                self.broker_error = Some(why);
                self.machine.handle_disconnected(now);
            }
            LinkEvent::ConnectFailed(why) => self.broker_error = Some(why),
            LinkEvent::Desired(delivery) => {
                self.desired_received += 1;
                self.decision_started = Some(delivery.received);
                if let Err(e) = self.machine.handle_desired_bytes(&delivery.payload, now) {
                    self.malformed(&e, "desired state");
                }
                self.unacked.push(delivery);
            }
            LinkEvent::HeartbeatAck(delivery) => {
                match HeartbeatAck::from_cbor(&delivery.payload) {
                    Ok(ack) => self.machine.handle_heartbeat_ack(ack.seq, now),
                    Err(e) => {
                        self.malformed_payloads += 1;
                        tracing::warn!("ignored a heartbeat ack that does not decode: {e}");
                    }
                }
                self.unacked.push(delivery);
            }
            LinkEvent::Flags(delivery) => {
                self.flags.on_payload(&delivery.payload);
                self.unacked.push(delivery);
            }
            LinkEvent::Trust(delivery) => {
                self.on_trust(&delivery.payload);
                self.unacked.push(delivery);
            }
            LinkEvent::Other(delivery) => self.unacked.push(delivery),
        }
    }

    /// A delivery on `ota/v1/trust`: verified, persisted and put in force (the machine verifies
    /// every later offer against the new set), or refused; reported either way.
    fn on_trust(&mut self, payload: &[u8]) {
        let now = self.now().as_unix_millis();
        let Some(handled) = self.trust.on_payload(payload, now) else {
            return;
        };
        if let Some(set) = handled.rotated {
            self.machine.set_trust(set);
        }
        self.last_trust = Some(handled.report.outcome.clone());
        self.link
            .publish(TopicKind::Trust, handled.report.to_cbor(), Kind::Event);
    }

    /// A desired state that does not decode: logged, and reported as a `rejected` event with
    /// generation 0 (its generation is unknown). Nothing else changes.
    fn malformed(&mut self, e: &WireError, what: &str) {
        self.malformed_payloads += 1;
        tracing::error!("refused a {what} from the server: {e}");
        let cause = match e {
            WireError::TooLarge { .. } | WireError::LimitExceeded { .. } => RejectCause::TooLarge,
            _ => RejectCause::Malformed,
        };
        let event = Event {
            v: PROTOCOL_VERSION,
            device_id: self.machine.config().device_id.as_str().to_owned(),
            generation: 0,
            rollout_id: None,
            at: self.now().as_unix_millis(),
            kind: ExecutionState::Rejected {
                cause,
                detail: truncate_text(&format!("{what}: {e}"), WireLimits::MAX_TEXT_BYTES),
            },
            digest: None,
            transfer: None,
        };
        self.link
            .publish(TopicKind::Events, event.to_cbor(), Kind::Event);
    }

    fn on_task(&mut self, done: TaskDone) {
        let now = self.now();
        let current = |id: u64, t: &Option<Transfer>| t.as_ref().is_some_and(|t| t.id == id);
        match done {
            TaskDone::Progress { id, digest, done } => {
                if current(id, &self.transfer) {
                    self.machine.handle_download_progress(digest, done, now);
                }
            }
            TaskDone::Downloaded { id, digest, result } => {
                if !current(id, &self.transfer) {
                    return;
                }
                self.transfer = None;
                match result {
                    Ok(fetched) => self.machine.handle_download_complete(digest, fetched, now),
                    Err(e) => self.machine.handle_download_failed(digest, e, now),
                }
            }
            TaskDone::Hashed { digest, ok } => self.machine.handle_cache_hashed(digest, ok, now),
            TaskDone::Installed { digest, result } => {
                if let Err(e) = &result {
                    tracing::error!(%digest, "install failed: {e}");
                } else {
                    self.activated_at = ShellClock::file_system_now();
                }
                self.machine.handle_install_done(digest, result, now);
            }
            TaskDone::Probed(result) => {
                if let ProbeResult::NotYet(why) = &result {
                    tracing::info!("health probe: not yet: {why}");
                }
                self.machine.handle_probe(result, now);
            }
            TaskDone::RebootFailed(why) => {
                tracing::error!("reboot failed: {why}");
                self.machine.handle_reboot_failed(&why, now);
            }
            TaskDone::HealthChecked(result) => {
                if let ProbeResult::NotYet(why) = &result {
                    tracing::warn!("health check of the running release failed: {why}");
                }
                self.machine.handle_health(result, now);
            }
        }
    }

    fn on_timer(&mut self) {
        let now = monotonic_now();
        if self.persist_retry_at.is_some_and(|at| at <= now) {
            self.persist_retry_at = None;
        }
        self.machine.handle_timeout(self.now());
    }

    fn poll_power(&mut self) {
        self.next_power_poll = None;
        let reading = self.read_power();
        if self.machine.status().power != Some(reading) {
            tracing::info!(?reading, "power supply changed");
            self.machine.handle_power(reading, self.now());
        }
    }

    async fn stop(mut self) {
        tracing::info!("stopping");
        self.stop_transfer().await;
        self.jobs.shutdown().await;
        let now = self.now().as_unix_millis();
        self.link.shutdown(now).await;
    }
}
