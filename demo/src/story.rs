//! The demo's story, step by step, each with its checks:
//!
//! 1. **deploy**: the firmware team signs and publishes v2; a rollout goes 1% → 5% → 25% →
//!    100% with health gates. Low-battery devices report `deferred-power`, then are plugged
//!    in and update. v2 differs from the factory image in its first chunk: devices fetch it
//!    by delta, and the summary's SAVED column shows the share the server counted as saved.
//! 2. **redeploy**: the same v2 is rolled out again: every device reports
//!    `skipped-identical`, 0 bytes are downloaded.
//! 3. **broken release**: v3's application never becomes healthy. It starts on a 10 % canary
//!    wave: trials time out, the devices fall back to the cached v2 by themselves, the failure
//!    threshold aborts the rollout, and no device outside the canary downloads v3.
//!
//! 4. **feature flag**: the code ships dark; flag `new-ui` is turned on for 10 % of the
//!    devices, widened to 50 % (the first 10 % stay on: sticky cohorts), then killed: off on
//!    every device, no redeploy. Each device's state is read from the flag file its agent
//!    keeps, as an application would.
//!
//! Every step answers a [`StepReport`]; its `problems` list what differed from the story
//! (empty: the step behaved as described).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;

use ota_core::digest::Digest;
use ota_core::fleet::RolloutId;
use ota_core::update::Stage;
use ota_server::clock::monotonic_now;
use ota_server::fleet::RolloutView;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::LabError;
use crate::api::rollout_id;
use crate::firmware::Build;
use crate::lab::{Lab, unix_now};
use crate::watch::{LiveView, follow, is_final};

/// Battery charge of the devices that start low (below the agents' 20 % threshold).
pub const LOW_BATTERY: u8 = 12;

/// How the story runs.
#[derive(Debug, Clone)]
pub struct StoryOptions {
    /// Bake time of every wave.
    pub bake: Duration,
    /// How long after reporting `deferred-power` a low-battery device is plugged in.
    pub plug_in_after: Duration,
    /// Longest time one step may take before it counts as failed.
    pub patience: Duration,
    /// No live view (tests).
    pub quiet: bool,
}

impl Default for StoryOptions {
    fn default() -> Self {
        StoryOptions {
            bake: Duration::from_secs(1),
            plug_in_after: Duration::from_secs(2),
            patience: Duration::from_secs(120),
            quiet: false,
        }
    }
}

/// What one step did, and what differed from the story.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepReport {
    /// The step's name.
    pub name: String,
    /// The rollout's id (`None` before the step created one).
    pub rollout: Option<RolloutId>,
    /// How the rollout ended (`completed`, `aborted`).
    pub status: String,
    /// Target devices.
    pub devices: u64,
    /// Targets that installed the release (new digest).
    pub deploys: u64,
    /// Targets that reported skipped-identical.
    pub skipped: u64,
    /// Devices that reported deferred-power at least once.
    pub deferred: u64,
    /// Failed executions (every phase), rolled-back trials included.
    pub failed: u64,
    /// Devices that rolled back (by their own account: an aborted rollout stops counting).
    pub rolled_back: u64,
    /// Artifact bytes the devices downloaded during the step.
    pub bytes: u64,
    /// The rollout's download totals as the server counts them (`downloads` of its view):
    /// bytes fetched and full bytes, over the downloads the devices reported.
    pub transfer: (u64, u64),
    /// From the rollout's creation until the fleet settled.
    pub elapsed: Duration,
    /// What differed from the story (empty: as described).
    pub problems: Vec<String>,
    /// One line on what the step showed, beyond the table's columns.
    pub detail: Option<String>,
}

impl StepReport {
    /// Whether the step behaved as described.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn expect(&mut self, holds: bool, what: String) {
        if !holds {
            self.problems.push(what);
        }
    }
}

/// The battery of device `i` at the start of the story: every tenth device (from the fourth)
/// starts low and unplugged.
pub fn battery(i: usize) -> (u8, bool) {
    if i % 10 == 3 {
        (LOW_BATTERY, false)
    } else {
        (80, false)
    }
}

/// Plays the four steps on `lab` (whose devices run the factory release) in order.
pub async fn run(lab: &mut Lab, opts: &StoryOptions) -> Result<Vec<StepReport>, LabError> {
    let size = lab.factory().image.len();
    let v2 = lab.team().build("2.0.0", true, size, unix_now());
    let v3 = lab.team().build("3.0.0", false, size, unix_now());
    let mut reports = vec![deploy(lab, opts, &v2).await?];
    reports.push(redeploy(lab, opts, &v2).await?);
    reports.push(broken(lab, opts, &v3, &v2).await?);
    reports.push(flag(lab, opts).await?);
    Ok(reports)
}

/// The rollout spec of a step.
fn spec(lab: &Lab, build: &Build, waves: &[u32], opts: &StoryOptions, min_executed: u32) -> Value {
    json!({
        "release": build.digest.to_string(),
        "filter": lab.filter(),
        "waves": waves,
        "bake_secs": opts.bake.as_secs().max(1),
        "success_min": 95,
        "max_failure": 5,
        "min_executed": min_executed,
        "rate_per_minute": 60_000,
        "max_deferral_secs": 600,
    })
}

/// A report filled from the rollout's final view.
fn report_of(name: &str, r: &RolloutView, bytes: u64, started: Instant) -> StepReport {
    let totals = &r.totals;
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let downloads = r.downloads.as_ref();
    StepReport {
        name: name.into(),
        rollout: Some(r.id),
        status: r.status.to_string(),
        devices: u64::from(r.targets),
        deploys: u64::from(r.deploys),
        skipped: n(&totals["skipped-identical"]),
        deferred: 0,
        failed: n(&totals["failures"]),
        rolled_back: n(&totals["rolled-back"]),
        bytes,
        transfer: (
            downloads.map_or(0, |d| d.fetched_bytes),
            downloads.map_or(0, |d| d.full_bytes),
        ),
        elapsed: started.elapsed(),
        problems: Vec::new(),
        detail: None,
    }
}

/// Step 1: v2 in four waves; low-battery devices defer, are plugged in, update.
async fn deploy(lab: &mut Lab, opts: &StoryOptions, v2: &Build) -> Result<StepReport, LabError> {
    lab.api().publish(v2).await?;
    let bytes_before = lab.bytes_downloaded();
    let started = monotonic_now();
    let r = lab
        .api()
        .create_rollout(&spec(lab, v2, &[1, 5, 25, 100], opts, 10))
        .await?;
    let id = rollout_id(&r)?;
    let mut view = LiveView::new("1 deploy v2", opts.quiet);
    let mut deferred_since: Vec<Option<Instant>> = vec![None; lab.devices().len()];
    let deadline = monotonic_now() + opts.patience;
    let last = loop {
        let r = lab.api().view(id).await?;
        view.update(&r);
        plug_in_deferred(lab, &mut deferred_since, opts.plug_in_after)?;
        if is_final(&r) || monotonic_now() > deadline {
            break r;
        }
        tokio::time::sleep(crate::watch::POLL).await;
    };
    view.finish();
    let low: usize = (0..lab.devices().len())
        .filter(|&i| battery(i).0 < 20)
        .count();
    let mut report = report_of("1 deploy v2 in waves", &last, 0, started);
    report.deferred = deferred_since.iter().filter(|d| d.is_some()).count() as u64;
    view.note(&format!(
        "{} low-battery device(s) reported deferred-power, were plugged in after {:?} and updated",
        report.deferred, opts.plug_in_after
    ));
    converge(lab, &v2.digest, opts.patience).await;
    report.bytes = lab.bytes_downloaded() - bytes_before;
    report.elapsed = started.elapsed();
    let n = lab.devices().len() as u64;
    report.expect(
        report.status == "completed",
        format!("the rollout ended {}, not completed", report.status),
    );
    report.expect(
        report.devices == n && report.deploys == n,
        format!(
            "{} targets, {} deploys; expected {n} of each",
            report.devices, report.deploys
        ),
    );
    let succeeded = last.totals["succeeded"].as_u64().unwrap_or(0);
    report.expect(
        succeeded == n,
        format!("{succeeded} of {n} devices succeeded"),
    );
    report.expect(
        report.deferred == low as u64,
        format!(
            "{} devices reported deferred-power; {low} started with a low battery",
            report.deferred
        ),
    );
    expect_running(lab, &mut report, &v2.digest, "2.0.0");
    expect_single_install(lab, &mut report, &v2.digest);
    let want = n * v2.image.len() as u64;
    report.expect(
        report.bytes == want,
        format!(
            "{} bytes downloaded; expected {want} (each device once)",
            report.bytes
        ),
    );
    // v2 differs from the factory image in its first chunk: the devices fetch it by delta
    // (unless the image is one chunk, nothing to copy), and the server counts each device's
    // download once.
    let (fetched, full) = report.transfer;
    let chunks = v2.chunks();
    report.expect(
        full == want,
        format!("the server counted downloads of {full} full bytes; expected {want}"),
    );
    report.expect(
        fetched < full || chunks < 2,
        format!(
            "the devices fetched {fetched} of {full} bytes: the delta saved nothing ({chunks} chunks)"
        ),
    );
    Ok(report)
}

/// Creates the rollout `spec` and shows it in `view` until it completes or aborts (at most
/// `patience`); answers its last view.
async fn roll_to_end(
    lab: &Lab,
    spec: &Value,
    view: &mut LiveView,
    patience: Duration,
) -> Result<RolloutView, LabError> {
    let r = lab.api().create_rollout(spec).await?;
    let id = rollout_id(&r)?;
    let last = follow(lab.api(), id, view, patience, is_final).await;
    view.finish();
    last
}

/// Plugs in every device that has been deferred for power for `after`.
fn plug_in_deferred(
    lab: &Lab,
    since: &mut [Option<Instant>],
    after: Duration,
) -> Result<(), LabError> {
    for (device, since) in lab.devices().iter().zip(since.iter_mut()) {
        let deferred = device
            .status()
            .is_some_and(|s| s.machine.stage == Stage::DeferredPower);
        if deferred && since.is_none() {
            *since = Some(monotonic_now());
        }
        if let Some(t) = since
            && t.elapsed() >= after
        {
            device.battery().set(LOW_BATTERY, true)?;
        }
    }
    Ok(())
}

/// Step 2: the same v2 again: every device skips it, nothing is downloaded.
async fn redeploy(lab: &mut Lab, opts: &StoryOptions, v2: &Build) -> Result<StepReport, LabError> {
    let bytes_before = lab.bytes_downloaded();
    let installs_before = installs(lab);
    let started = monotonic_now();
    let mut view = LiveView::new("2 redeploy v2", opts.quiet);
    let spec = spec(lab, v2, &[1, 5, 25, 100], opts, 10);
    let last = roll_to_end(lab, &spec, &mut view, opts.patience).await?;
    let mut report = report_of("2 redeploy v2 (identical)", &last, 0, started);
    report.bytes = lab.bytes_downloaded() - bytes_before;
    let n = lab.devices().len() as u64;
    report.expect(
        report.status == "completed",
        format!("the rollout ended {}, not completed", report.status),
    );
    let redeploys = u64::from(last.redeploys);
    report.expect(
        redeploys == n && report.deploys == 0,
        format!(
            "{redeploys} redeploys and {} deploys; expected {n} and 0",
            report.deploys
        ),
    );
    report.expect(
        report.skipped == n,
        format!(
            "{} of {n} devices reported skipped-identical",
            report.skipped
        ),
    );
    report.expect(
        report.bytes == 0,
        format!(
            "{} bytes downloaded for an identical redeploy",
            report.bytes
        ),
    );
    report.expect(
        installs(lab) == installs_before,
        "a device installed during an identical redeploy".into(),
    );
    Ok(report)
}

/// Step 3: broken v3 on a 10 % canary: trials time out, devices fall back to v2 by
/// themselves, the rollout aborts, nobody else downloads v3.
async fn broken(
    lab: &mut Lab,
    opts: &StoryOptions,
    v3: &Build,
    v2: &Build,
) -> Result<StepReport, LabError> {
    lab.api().publish(v3).await?;
    let bytes_before = lab.bytes_downloaded();
    let started = monotonic_now();
    let mut view = LiveView::new("3 broken v3", opts.quiet);
    let spec = spec(lab, v3, &[10, 50, 100], opts, 1);
    let last = roll_to_end(lab, &spec, &mut view, opts.patience).await?;
    // Devices still on trial fall back (by timeout or the abort's rollback) shortly after.
    converge(lab, &v2.digest, opts.patience).await;
    let mut report = report_of("3 broken v3 on canary", &last, 0, started);
    report.bytes = lab.bytes_downloaded() - bytes_before;
    report.expect(
        report.status == "aborted",
        format!("the rollout ended {}, not aborted", report.status),
    );
    let reason = last
        .abort_reason
        .as_ref()
        .and_then(|a| a["kind"].as_str())
        .unwrap_or_default();
    report.expect(
        reason == "failure-threshold",
        format!("abort reason {reason:?}, not failure-threshold"),
    );
    let canary = last
        .waves
        .first()
        .map_or(0, |w| u64::from(w.cumulative_members));
    let later_started = last
        .waves
        .iter()
        .skip(1)
        .filter(|w| w.started_at.is_some())
        .count();
    report.expect(
        later_started == 0,
        format!("{later_started} waves after the canary started"),
    );
    let took: BTreeSet<String> = lab
        .devices()
        .iter()
        .filter(|d| d.has_cached(&v3.digest) || installed(d, &v3.digest))
        .map(|d| d.id().to_string())
        .collect();
    report.expect(
        !took.is_empty() && took.len() as u64 <= canary,
        format!("{} devices fetched v3; the canary has {canary}", took.len()),
    );
    let rolled_back = lab
        .devices()
        .iter()
        .filter(|d| took.contains(d.id()))
        .filter(|d| {
            d.status().is_some_and(|s| {
                s.installs
                    .iter()
                    .any(|(dg, rollback)| *rollback && *dg == v2.digest)
            })
        })
        .count();
    report.expect(
        rolled_back == took.len(),
        format!(
            "{rolled_back} of the {} devices that took v3 rolled back to v2",
            took.len()
        ),
    );
    // The planner stops counting at the abort; the devices' own word says how many failed
    // their trial and fell back.
    report.rolled_back = rolled_back as u64;
    report.failed = report.failed.max(rolled_back as u64);
    view.note(&format!(
        "canary: {} device(s) took v3, {rolled_back} fell back to the cached v2 by themselves; no other device fetched v3",
        took.len()
    ));
    expect_running(lab, &mut report, &v2.digest, "2.0.0");
    let want = took.len() as u64 * v3.image.len() as u64;
    report.expect(report.bytes == want, format!("{} bytes downloaded; expected {want} (v3 once per canary device, rollbacks from the cache)", report.bytes));
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The feature flag of step 4.
pub const FLAG: &str = "new-ui";

/// Step 4: flag `new-ui` on for 10 %, widened to 50 %, killed; counts from the devices' own
/// flag files.
async fn flag(lab: &mut Lab, opts: &StoryOptions) -> Result<StepReport, LabError> {
    let started = monotonic_now();
    let bytes_before = lab.bytes_downloaded();
    let installs_before = installs(lab);
    let view = LiveView::new("4 feature flag", opts.quiet);
    let n = lab.devices().len();
    let filter = lab.filter();
    let mut report = StepReport {
        name: "4 flag on 10%, 50%, kill".into(),
        status: "killed".into(),
        devices: n as u64,
        ..StepReport::default()
    };
    let mut on_counts = Vec::new();
    let mut first_on: Vec<bool> = Vec::new();
    for percent in [10.0, 50.0] {
        lab.api().flag_set(FLAG, true, percent, &filter).await?;
        let want = lab.api().flag(FLAG).await?["counts"]["on"]
            .as_u64()
            .unwrap_or(0) as usize;
        let on = wait_flags(lab, opts.patience, |on| {
            on.iter().filter(|b| **b).count() == want
        })
        .await;
        let count = on.iter().filter(|b| **b).count();
        view.note(&format!(
            "flag {FLAG} on for {percent}%: {count} of {n} devices read it on"
        ));
        report.expect(
            count == want,
            format!("{count} devices have {FLAG} on; the server counts {want}"),
        );
        if first_on.is_empty() {
            first_on = on;
        } else {
            let dropped = first_on
                .iter()
                .zip(&on)
                .filter(|(was, is)| **was && !**is)
                .count();
            report.expect(
                dropped == 0,
                format!("{dropped} devices on at 10% went off when widened to 50%"),
            );
        }
        on_counts.push(count);
    }
    let kill = monotonic_now();
    lab.api().flag_kill(FLAG).await?;
    let on = wait_flags(lab, opts.patience, |on| on.iter().all(|b| !*b)).await;
    let kill_time = kill.elapsed();
    let still = on.iter().filter(|b| **b).count();
    view.note(&format!(
        "flag {FLAG} killed: off on every device after {:.0} ms",
        kill_time.as_secs_f64() * 1000.0
    ));
    report.expect(
        still == 0,
        format!("{still} devices still have {FLAG} on after the kill"),
    );
    let (ten, fifty) = (
        on_counts.first().copied().unwrap_or(0),
        on_counts.get(1).copied().unwrap_or(0),
    );
    // Cohorts are hash-based: a small fleet may have nobody in 10 %; widening never removes.
    report.expect(
        ten <= fifty && fifty <= n,
        format!("{ten} devices on at 10% and {fifty} at 50% of {n}"),
    );
    report.bytes = lab.bytes_downloaded() - bytes_before;
    report.expect(
        report.bytes == 0 && installs(lab) == installs_before,
        "a flag change downloaded or installed something".into(),
    );
    report.detail = Some(format!(
        "flag {FLAG}: on at 10% -> {ten} devices, at 50% -> {fifty} (the first {ten} still on), killed -> 0 on every device in {:.0} ms; no download, no install",
        kill_time.as_secs_f64() * 1000.0
    ));
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Reads every device's flag file until `done` holds for the list of "on" (or `patience`
/// runs out); answers the last reading.
async fn wait_flags(lab: &Lab, patience: Duration, done: impl Fn(&[bool]) -> bool) -> Vec<bool> {
    let deadline = monotonic_now() + patience;
    loop {
        let on: Vec<bool> = lab.devices().iter().map(|d| d.flag_on(FLAG)).collect();
        if done(&on) || monotonic_now() > deadline {
            return on;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (at most `patience`) until every device runs `digest` and is idle.
async fn converge(lab: &Lab, digest: &Digest, patience: Duration) {
    let deadline = monotonic_now() + patience;
    while monotonic_now() < deadline {
        let settled = lab.devices().iter().all(|d| {
            d.status().is_some_and(|s| {
                s.machine.stage == Stage::Idle
                    && s.machine.running.as_ref().map(|r| r.digest) == Some(*digest)
            })
        });
        if settled {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn installed(device: &crate::device::Device, digest: &Digest) -> bool {
    device
        .status()
        .is_some_and(|s| s.installs.iter().any(|(d, _)| d == digest))
}

/// Every device's install count.
fn installs(lab: &Lab) -> Vec<usize> {
    lab.devices()
        .iter()
        .map(|d| d.status().map_or(0, |s| s.installs.len()))
        .collect()
}

fn expect_running(lab: &Lab, report: &mut StepReport, digest: &Digest, version: &str) {
    let off: Vec<&str> = lab
        .devices()
        .iter()
        .filter(|d| d.running() != Some(*digest))
        .map(crate::device::Device::id)
        .collect();
    report.expect(
        off.is_empty(),
        format!(
            "{} devices do not run {version}: {}",
            off.len(),
            off.join(", ")
        ),
    );
}

fn expect_single_install(lab: &Lab, report: &mut StepReport, digest: &Digest) {
    let twice: Vec<&str> = lab
        .devices()
        .iter()
        .filter(|d| {
            d.status()
                .is_some_and(|s| s.installs.iter().filter(|(dg, _)| dg == digest).count() > 1)
        })
        .map(crate::device::Device::id)
        .collect();
    report.expect(
        twice.is_empty(),
        format!("installed more than once on {}", twice.join(", ")),
    );
}

/// The summary table of `reports`.
pub fn table(reports: &[StepReport]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<28} {:>8} {:>7} {:>8} {:>8} {:>6} {:>11} {:>12} {:>6} {:>7}  RESULT",
        "STEP",
        "DEVICES",
        "DEPLOYS",
        "SKIPPED",
        "DEFERRED",
        "FAILED",
        "ROLLED-BACK",
        "DOWNLOADED",
        "SAVED",
        "TIME",
    );
    for r in reports {
        let _ = writeln!(
            out,
            "{:<28} {:>8} {:>7} {:>8} {:>8} {:>6} {:>11} {:>12} {:>6} {:>6.1}s  {}",
            r.name,
            r.devices,
            r.deploys,
            r.skipped,
            r.deferred,
            r.failed,
            r.rolled_back,
            human_bytes(r.bytes),
            saved_percent(r.transfer),
            r.elapsed.as_secs_f64(),
            if r.ok() {
                format!("ok ({})", r.status)
            } else {
                format!("DIFFERED ({})", r.status)
            }
        );
    }
    for detail in reports.iter().filter_map(|r| r.detail.as_ref()) {
        let _ = writeln!(out, "{detail}");
    }
    out
}

/// The share of the full bytes a step's downloads did not fetch, e.g. `87%` (`-` without
/// downloads).
pub fn saved_percent((fetched, full): (u64, u64)) -> String {
    if full == 0 {
        return "-".to_string();
    }
    format!(
        "{:.0}%",
        full.saturating_sub(fetched) as f64 * 100.0 / full as f64
    )
}

/// `1.5 MiB`, `12.0 KiB`, `0 B`.
pub fn human_bytes(n: u64) -> String {
    const KIB: f64 = 1024.0;
    let f = n as f64;
    if f >= KIB * KIB {
        format!("{:.1} MiB", f / KIB / KIB)
    } else if f >= KIB {
        format!("{:.1} KiB", f / KIB)
    } else {
        format!("{n} B")
    }
}
