//! From a desired state to an install: verification, the identical and cached shortcuts, the
//! power / window / disk gates, and the download with its retries (rules 1 to 7).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::cache;
use super::machine::UpdateMachine;
use super::state::{DownloadState, Phase, Prep, Step};
use super::{Action, DownloadError, Job, ReleaseInfo, Timer, Timestamp};
use crate::digest::Digest;
use crate::release::{Policy, SignedRelease};
use crate::wire::{
    DesiredState, ExecutionState, FailurePhase, PowerReading, Transfer, UpdateOutcome, WireLimits,
    truncate_text,
};

impl UpdateMachine {
    /// Acts on a new desired state (its generation is above the last one acted on, and no
    /// install, trial or rollback is running).
    pub(super) fn offer(&mut self, desired: DesiredState, now: Timestamp) {
        self.last_generation = desired.generation;
        // Rule 1: verify before fetching anything. The floor is the persisted one, so a
        // replayed old release can never downgrade.
        let policy = Policy {
            hardware_class: Some(self.config.hardware_class.clone()),
            security_floor: self.floor,
            now: now.as_unix_millis() / 1000,
        };
        let decoded = SignedRelease::decode(&desired.release);
        let digest = decoded.as_ref().ok().map(|r| r.manifest.artifact_digest());
        let verified = decoded.and_then(|r| r.verify(&self.config.trust, &policy));
        // The newest desired state wins: whatever was being prepared is abandoned (unless it
        // is the same artifact, which goes on under the new generation).
        let release = match verified {
            Ok(v) => ReleaseInfo::from_manifest(&v.manifest),
            Err(e) => {
                self.abandon_prep();
                let outcome = UpdateOutcome {
                    generation: desired.generation,
                    rollout_id: desired.rollout_id,
                    digest,
                    state: ExecutionState::Rejected {
                        cause: (&e).into(),
                        detail: reason(&e),
                    },
                    at: now.0,
                    transfer: None,
                };
                return self.conclude(outcome, Vec::new(), now);
            }
        };
        let job = Job {
            generation: desired.generation,
            rollout_id: desired.rollout_id,
            release,
            urls: desired.artifact_urls,
            force: desired.force_reinstall,
            transfer: None,
        };
        if let Phase::Preparing(p) = &mut self.phase
            && p.job.release.digest == job.release.digest
        {
            p.job = job.clone();
            self.persist();
            return self.announce(job.outcome(ExecutionState::Notified, now.0));
        }
        self.abandon_prep();
        // Rule 2: the running release again is a success with zero bytes downloaded; not
        // when the installer was seen running something else (drift: the offer repairs it).
        if !job.force
            && self.observed.is_none()
            && self.running.as_ref().map(|r| r.digest) == Some(job.release.digest)
        {
            let outcome = job.outcome(ExecutionState::SkippedIdentical, now.0);
            return self.conclude(outcome, Vec::new(), now);
        }
        self.prepare(job, now);
    }

    /// Starts (or, after a restart, restarts) preparing `job`: rule 3 (re-hash a cached
    /// artifact) or straight to the gates.
    pub(super) fn prepare(&mut self, job: Job, now: Timestamp) {
        let digest = job.release.digest;
        let size = job.release.size;
        let cached = cache::contains(&self.cache, &digest);
        self.phase = Phase::Preparing(Prep {
            job: job.clone(),
            from_cache: false,
            step: Step::HashCache,
            download: DownloadState::default(),
        });
        self.persist();
        self.announce(job.outcome(ExecutionState::Notified, now.0));
        if cached {
            self.push(Action::HashCached { digest, size });
        } else {
            self.begin_gates();
        }
    }

    /// Drops the job being prepared, if any, and its partial download.
    fn abandon_prep(&mut self) {
        if let Phase::Preparing(p) = &self.phase {
            if matches!(
                p.step,
                Step::InspectPartial | Step::Downloading { .. } | Step::RetryWait
            ) {
                let digest = p.job.release.digest;
                self.push(Action::DiscardPartial { digest });
            }
            self.phase = Phase::Idle;
            self.stop_job_timers();
        }
    }

    /// The job being prepared if it is for `digest` (when given) and at a step `at` accepts.
    fn prep_at(&mut self, digest: Option<&Digest>, at: impl Fn(Step) -> bool) -> Option<&mut Prep> {
        match &mut self.phase {
            Phase::Preparing(p)
                if at(p.step) && digest.is_none_or(|d| *d == p.job.release.digest) =>
            {
                Some(p)
            }
            _ => None,
        }
    }

    fn set_step(&mut self, step: Step) {
        if let Phase::Preparing(p) = &mut self.phase {
            p.step = step;
        }
    }

    /// The job being prepared, for reports.
    fn prep_outcome(&self, state: ExecutionState, now: Timestamp) -> Option<UpdateOutcome> {
        match &self.phase {
            Phase::Preparing(p) => Some(p.job.outcome(state, now.0)),
            _ => None,
        }
    }

    /// Announces a state of the job being prepared.
    fn announce_prep(&mut self, state: ExecutionState, now: Timestamp) {
        if let Some(outcome) = self.prep_outcome(state, now) {
            self.announce(outcome);
        }
    }

    /// Ends the job being prepared with a failure.
    fn fail_prep(&mut self, phase: FailurePhase, why: &str, now: Timestamp) {
        let state = ExecutionState::Failed {
            phase,
            reason: truncate_text(why, WireLimits::MAX_TEXT_BYTES),
        };
        if let Some(outcome) = self.prep_outcome(state, now) {
            self.conclude(outcome, Vec::new(), now);
        }
    }

    /// The re-hash of a cached artifact, answering [`Action::HashCached`]. A bad or missing
    /// file is dropped from the index and the artifact is downloaded instead.
    pub fn handle_cache_hashed(&mut self, digest: Digest, ok: bool, _now: Timestamp) {
        let Some(p) = self.prep_at(Some(&digest), |s| s == Step::HashCache) else {
            return;
        };
        p.from_cache = ok;
        if ok {
            cache::touch(&mut self.cache, &digest);
        } else if cache::remove(&mut self.cache, &digest) {
            self.persist();
            self.push(Action::Evict { digest });
        }
        self.begin_gates();
    }

    // ---- rules 4 to 6: the gates ---------------------------------------------------------

    /// (Re)starts the gates: power, then window, then (for a download) disk.
    fn begin_gates(&mut self) {
        self.set_step(Step::ReadPower);
        self.push(Action::ReadPower);
    }

    pub(super) fn on_gate_timer(&mut self, timer: Timer, _now: Timestamp) {
        let waiting = match timer {
            Timer::PowerRecheck => Step::PowerDeferred,
            Timer::WindowOpen => Step::WindowDeferred,
            _ => Step::DiskDeferred,
        };
        if self.prep_at(None, |s| s == waiting).is_some() {
            self.begin_gates();
        }
    }

    /// Rule 4: the power gate.
    pub(super) fn on_power(&mut self, reading: PowerReading, now: Timestamp) {
        if self
            .prep_at(None, |s| matches!(s, Step::ReadPower | Step::PowerDeferred))
            .is_none()
        {
            return;
        }
        if self.config.power.allows(&reading) {
            self.timers.stop(Timer::PowerRecheck);
            return self.check_window(now);
        }
        self.set_step(Step::PowerDeferred);
        let at = now.saturating_add(self.config.power.recheck_interval);
        self.timers.set(Timer::PowerRecheck, at);
        self.announce_prep(ExecutionState::DeferredPower { reading }, now);
    }

    /// Rule 5: maintenance windows.
    fn check_window(&mut self, now: Timestamp) {
        if self.config.windows.is_open(now) {
            return self.after_gates(now);
        }
        let opens = self.config.windows.next_opening(now);
        self.set_step(Step::WindowDeferred);
        if let Some(at) = opens {
            self.timers.set(Timer::WindowOpen, at);
        }
        let state = ExecutionState::DeferredWindow {
            opens_at: opens.map(|t| t.0),
        };
        self.announce_prep(state, now);
    }

    /// Power and window allow it: install from the cache, or check the disk and download.
    fn after_gates(&mut self, now: Timestamp) {
        let Phase::Preparing(p) = &self.phase else {
            return;
        };
        if p.from_cache {
            return self.install(now);
        }
        let needed = self.disk_needed(&p.job);
        self.set_step(Step::CheckDisk);
        self.push(Action::CheckDisk { needed });
    }

    fn disk_needed(&self, job: &Job) -> u64 {
        job.release
            .size
            .saturating_add(self.config.disk_margin_bytes)
    }

    /// Rule 6: free disk space, answering [`Action::CheckDisk`]. Too little defers the update
    /// and re-checks on a timer (forever: deferral is never a failure).
    pub fn handle_disk(&mut self, free: u64, now: Timestamp) {
        let Some(p) = self.prep_at(None, |s| matches!(s, Step::CheckDisk | Step::DiskDeferred))
        else {
            return;
        };
        let job = p.job.clone();
        let needed = self.disk_needed(&job);
        if free >= needed {
            self.timers.stop(Timer::DiskRecheck);
            return self.begin_download(now);
        }
        self.set_step(Step::DiskDeferred);
        let at = now.saturating_add(self.config.disk_recheck_interval);
        self.timers.set(Timer::DiskRecheck, at);
        self.announce_prep(ExecutionState::DeferredDisk { needed, free }, now);
    }

    // ---- rule 7: the download ------------------------------------------------------------

    /// Asks how much of the artifact is already on disk, before every download attempt.
    fn begin_download(&mut self, now: Timestamp) {
        let Some(p) = self.prep_at(None, |_| true) else {
            return;
        };
        if p.job.urls.is_empty() {
            return self.fail_prep(
                FailurePhase::Download,
                "no artifact URL to download from",
                now,
            );
        }
        let digest = p.job.release.digest;
        p.step = Step::InspectPartial;
        self.push(Action::InspectPartial { digest });
    }

    /// How many bytes of the artifact's partial download are on disk, answering
    /// [`Action::InspectPartial`]. The download resumes from there.
    pub fn handle_partial(&mut self, digest: Digest, len: u64, now: Timestamp) {
        let Some(p) = self.prep_at(Some(&digest), |s| s == Step::InspectPartial) else {
            return;
        };
        let size = p.job.release.size;
        let chunk_index = p.job.release.chunk_index;
        let Some(url) = p.job.urls.get(p.download.mirror).cloned() else {
            return self.fail_prep(
                FailurePhase::Download,
                "no artifact URL to download from",
                now,
            );
        };
        // A partial longer than the signed size is garbage: start over.
        let resume_from = if len <= size { len } else { 0 };
        p.step = Step::Downloading { done: resume_from };
        p.download.last_progress = Some((now, resume_from));
        if len > size {
            self.push(Action::DiscardPartial { digest });
        }
        self.push(Action::Download {
            url,
            digest,
            size,
            resume_from,
            chunk_index,
        });
        let state = ExecutionState::Downloading {
            done: resume_from,
            total: size,
        };
        self.announce_prep(state, now);
    }

    /// Download progress: `done` bytes of the artifact are on disk. Progress events are
    /// rate-limited (one per `progress_interval`, or per `progress_step_percent`).
    pub fn handle_download_progress(&mut self, digest: Digest, done: u64, now: Timestamp) {
        let interval = self.config.progress_interval;
        let percent = u128::from(self.config.progress_step_percent);
        let Some(p) = self.prep_at(Some(&digest), |s| matches!(s, Step::Downloading { .. })) else {
            return;
        };
        let total = p.job.release.size;
        let done = done.min(total);
        p.step = Step::Downloading { done };
        let step_bytes = u64::try_from(u128::from(total) * percent / 100)
            .unwrap_or(u64::MAX)
            .max(1);
        let due = match p.download.last_progress {
            None => true,
            Some((at, last)) => {
                now.saturating_duration_since(at) >= interval
                    || done.saturating_sub(last) >= step_bytes
                    || (done == total && last != total)
            }
        };
        if due {
            p.download.last_progress = Some((now, done));
            self.announce_prep(ExecutionState::Downloading { done, total }, now);
        }
    }

    /// The artifact is in `cache/<digest>`, checked by the shell's streaming verifier against
    /// the signed digest and size, after `fetched` body bytes over the network (reported in
    /// the job's outcomes from now on). It joins the cache index (evicting beyond the
    /// capacity); then power and window are checked again before the install.
    pub fn handle_download_complete(&mut self, digest: Digest, fetched: u64, _now: Timestamp) {
        let Some(p) = self.prep_at(Some(&digest), |s| matches!(s, Step::Downloading { .. })) else {
            return;
        };
        p.from_cache = true;
        p.job.transfer = Some(Transfer {
            fetched,
            size: p.job.release.size,
        });
        let release = p.job.release.clone();
        cache::admit(&mut self.cache, release);
        let evictions = self.evict_over_capacity(Some(digest));
        self.persist();
        self.actions.extend(evictions);
        self.begin_gates();
    }

    /// A download attempt failed. Transient failures retry with exponential backoff and
    /// jitter, rotating over the mirrors, until `max_retries`; a verification failure drops
    /// that mirror for good and moves to the next one at once, failing `verify` when none is
    /// left.
    pub fn handle_download_failed(&mut self, digest: Digest, error: DownloadError, now: Timestamp) {
        let retry = self.config.retry;
        let random = self.jitter.next_u64();
        let Some(p) = self.prep_at(Some(&digest), |s| matches!(s, Step::Downloading { .. })) else {
            return;
        };
        let mirrors = p.job.urls.len();
        match error {
            DownloadError::Verify(e) => {
                p.download.bad_mirrors.push(p.download.mirror);
                let next = p.download.next_mirror(mirrors);
                self.push(Action::DiscardPartial { digest });
                match next {
                    Some(m) => {
                        if let Some(p) = self.prep_at(None, |_| true) {
                            p.download.mirror = m;
                            p.step = Step::InspectPartial;
                        }
                        self.push(Action::InspectPartial { digest });
                    }
                    None => self.fail_prep(FailurePhase::Verify, &reason(&e), now),
                }
            }
            DownloadError::Transient(why) => {
                p.download.retries += 1;
                if p.download.retries > retry.max_retries {
                    self.push(Action::DiscardPartial { digest });
                    let why = format!("{} retries exhausted: {why}", retry.max_retries);
                    return self.fail_prep(FailurePhase::Download, &why, now);
                }
                if let Some(m) = p.download.next_mirror(mirrors) {
                    p.download.mirror = m;
                }
                p.step = Step::RetryWait;
                let at = now.saturating_add(retry.backoff(p.download.retries, random));
                self.timers.set(Timer::DownloadRetry, at);
            }
        }
    }

    pub(super) fn on_retry_timer(&mut self) {
        if let Some(p) = self.prep_at(None, |s| s == Step::RetryWait) {
            let digest = p.job.release.digest;
            p.step = Step::InspectPartial;
            self.push(Action::InspectPartial { digest });
        }
    }
}

/// An error's message, cut to fit a report.
pub(super) fn reason(e: &impl ToString) -> String {
    truncate_text(&e.to_string(), WireLimits::MAX_TEXT_BYTES)
}
