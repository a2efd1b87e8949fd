//! `ota rollout create | status | list | devices | approve | pause | resume | abort`: rollouts
//! in health-gated waves, and watching them (`devices` lives in `rollout_devices_cmd`).

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use clap::{Args, Subcommand};
use ota_core::fleet::RolloutId;
use ota_core::release::{Limits, SignedRelease};
use ota_core::rollout::{RolloutStatus, WavePhaseKind};
use ota_demo::api::{rollout_view, rollout_views};
use ota_server::db::TransferTotals;
use ota_server::fleet::view::WaveView;
use ota_server::fleet::{RolloutRequest, RolloutView};
use serde_json::{Value, json};

use crate::api::{Api, ServerArgs, cli_error};
use crate::error::CliError;
use crate::files;
use crate::output::{out, percent_of, print_json, s, short_text, table, time};
use crate::values::{parse_duration, parse_percent, parse_rate};

/// `ota rollout <command>`.
#[derive(Debug, Subcommand)]
pub(crate) enum RolloutCommand {
    /// Create a rollout of a release over the devices a filter selects, in health-gated
    /// waves (see docs/rollouts.md). Prints deploys vs redeploys.
    Create(CreateArgs),
    /// Show a rollout: state, progress per wave, counts per state, failures by phase.
    Status(StatusArgs),
    /// List rollouts, newest first.
    List(ListArgs),
    /// List a rollout's targets as the rollout sees them: state in this rollout, wave, failure
    /// phase or cause, and after an abort whether each device got back (paged; --all for every
    /// one).
    Devices(crate::rollout_devices_cmd::DevicesArgs),
    /// Approve a forced reinstall (a second operator: the creator cannot approve).
    Approve(IdArgs),
    /// Pause: nobody new is notified, no gate passes.
    Pause(IdArgs),
    /// Resume a paused rollout.
    Resume(IdArgs),
    /// Abort: every device that took the release is sent back to its known-good release.
    Abort(AbortArgs),
}

/// Arguments of `ota rollout create`.
#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The release: its sha256, its version, or the signed release file.
    #[arg(long, value_name = "R")]
    release: String,
    /// Which devices (see `ota devices list --help`); default: every device.
    #[arg(long, value_name = "EXPR", default_value = "")]
    filter: String,
    /// Cumulative wave sizes, the last one 100%.
    #[arg(long, value_name = "LIST", default_value = "1%,5%,25%,100%")]
    waves: String,
    /// How long a wave is watched after its last device settled, before its gate
    /// (e.g. 10m, 1h, 0).
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    bake: String,
    /// Least share of succeeded devices among those that installed, for a wave's gate.
    #[arg(long, value_name = "PERCENT", default_value = "95%")]
    success_min: String,
    /// Largest share of failures among executed devices before the rollout aborts.
    #[arg(long, value_name = "PERCENT", default_value = "5%")]
    max_failure: String,
    /// Executed devices needed before --max-failure is judged.
    #[arg(long, value_name = "N", default_value_t = 10)]
    min_executed: u32,
    /// Most devices notified per minute (e.g. 200/min, 5/s, 1000).
    #[arg(long, value_name = "RATE", default_value = "200/min")]
    rate: String,
    /// A notified device silent this long becomes timed-out.
    #[arg(long, value_name = "DURATION", default_value = "30m")]
    inactivity_timeout: String,
    /// A deferred or unreachable device stops blocking its wave after this long.
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    max_deferral: String,
    /// Reinstall on devices already running the release; waits for a second operator's
    /// `ota rollout approve`.
    #[arg(long)]
    force_reinstall: bool,
    /// Plan only: show targets, waves, deploys and redeploys; notify nobody.
    #[arg(long)]
    dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `ota rollout status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The rollout id.
    id: RolloutId,
    /// Keep watching (refreshed every second) until the rollout completes or aborts: progress
    /// bars on a terminal, otherwise one block (or JSON line) per change. Exits 0 when it
    /// completed, 4 when it aborted.
    #[arg(long)]
    watch: bool,
    /// Print JSON (one object per line with --watch).
    #[arg(long)]
    json: bool,
}

/// Arguments of `ota rollout list`.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// A rollout id.
#[derive(Debug, Args)]
pub(crate) struct IdArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The rollout id.
    id: RolloutId,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `ota rollout abort`.
#[derive(Debug, Args)]
pub(crate) struct AbortArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The rollout id.
    id: RolloutId,
    /// Why (recorded in the audit log).
    #[arg(long, value_name = "TEXT", default_value = "")]
    reason: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// The release argument: a file holding a signed release names its artifact digest.
fn release_ref(text: &str) -> Result<String, CliError> {
    let path = Path::new(text);
    if path.is_file() {
        let bytes = files::read_bounded(path, Limits::MAX_RELEASE_BYTES as u64, "a release")?;
        let manifest = SignedRelease::decode(&bytes)
            .map_err(|error| CliError::Rejected {
                error,
                detail: format!(" (file {text})"),
            })?
            .manifest;
        return Ok(manifest.artifact_digest().to_string());
    }
    Ok(text.to_string())
}

/// Runs `ota rollout <command>`.
pub(crate) fn run(cmd: RolloutCommand) -> Result<(), CliError> {
    match cmd {
        RolloutCommand::Create(args) => create(&args),
        RolloutCommand::Status(args) => status(&args),
        RolloutCommand::Devices(args) => crate::rollout_devices_cmd::run(&args),
        RolloutCommand::List(args) => {
            let api = Api::new(&args.server)?;
            let answer = api.get("/api/v1/rollouts", &[])?;
            if args.json {
                return print_json(&answer);
            }
            let rows: Vec<Vec<String>> = rollout_views(&answer)
                .map_err(cli_error)?
                .iter()
                .map(|r| {
                    vec![
                        r.id.to_string(),
                        r.status.to_string(),
                        version(r),
                        short_text(&r.release),
                        r.current_wave
                            .map(|w| format!("{}/{}", w + 1, r.waves.len()))
                            .unwrap_or_else(|| "-".into()),
                        format!("{}/{}", done_count(&r.totals), r.targets),
                        r.created_by.clone(),
                        time(&json!(r.created_at)),
                        r.filter.clone(),
                    ]
                })
                .collect();
            out(&table(
                &[
                    "ID", "STATUS", "VERSION", "SHA256", "WAVE", "DONE", "BY", "CREATED", "FILTER",
                ],
                &rows,
            ))
        }
        RolloutCommand::Approve(args) => operate(&args.server, args.id, "approve", None, args.json),
        RolloutCommand::Pause(args) => operate(&args.server, args.id, "pause", None, args.json),
        RolloutCommand::Resume(args) => operate(&args.server, args.id, "resume", None, args.json),
        RolloutCommand::Abort(args) => operate(
            &args.server,
            args.id,
            "abort",
            Some(json!({ "reason": args.reason })),
            args.json,
        ),
    }
}

fn create(args: &CreateArgs) -> Result<(), CliError> {
    let waves = args
        .waves
        .split(',')
        .filter(|w| !w.trim().is_empty())
        .map(|w| parse_percent(w, "--waves"))
        .collect::<Result<Vec<_>, _>>()?;
    // The API's own request type: what the server reads is what is sent.
    let mut body = RolloutRequest::new(release_ref(&args.release)?, args.filter.clone());
    body.waves = waves;
    body.bake_secs = parse_duration(&args.bake, "--bake")?;
    body.success_min = parse_percent(&args.success_min, "--success-min")?;
    body.max_failure = parse_percent(&args.max_failure, "--max-failure")?;
    body.min_executed = args.min_executed;
    body.rate_per_minute = parse_rate(&args.rate)?;
    body.inactivity_timeout_secs =
        parse_duration(&args.inactivity_timeout, "--inactivity-timeout")?;
    body.max_deferral_secs = parse_duration(&args.max_deferral, "--max-deferral")?;
    body.force_reinstall = args.force_reinstall;
    body.dry_run = args.dry_run;
    let api = Api::new(&args.server)?;
    let answer = api.post("/api/v1/rollouts", &body)?;
    if args.json {
        return print_json(&answer);
    }
    let r = rollout_view(&answer).map_err(cli_error)?;
    let mut text = String::new();
    let headline = match r.status {
        RolloutStatus::DryRun => format!("dry run (rollout {} recorded, nobody notified)", r.id),
        RolloutStatus::AwaitingApproval => format!(
            "rollout {} created: forced reinstall, waiting for a second operator: ota rollout approve {}",
            r.id, r.id
        ),
        _ => format!("rollout {} created and started", r.id),
    };
    text.push_str(&headline);
    text.push('\n');
    for warning in r
        .warnings
        .as_ref()
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        text.push_str(&format!("warning: {}\n", s(warning)));
    }
    text.push_str(&format!(
        "release {} ({})\ntargets {}: {} deploy(s) (new digest), {} redeploy(s) (already running it: {})\n",
        version(&r),
        r.release,
        r.targets,
        r.deploys,
        r.redeploys,
        if args.force_reinstall {
            "reinstalled, forced"
        } else {
            "they report skipped-identical"
        },
    ));
    if let Some(n) = r
        .excluded
        .as_ref()
        .and_then(|e| e["incompatible_hardware"].as_u64())
        && n > 0
    {
        text.push_str(&format!(
            "left out: {n} matching device(s) of a hardware class the release does not list\n"
        ));
    }
    if let Some(conflicts) = r.conflicts.as_ref().and_then(Value::as_array)
        && !conflicts.is_empty()
    {
        text.push_str(&format!(
            "{} target(s) already in an active rollout (a real create is refused until it ends):\n",
            conflicts.len()
        ));
        for c in conflicts {
            text.push_str(&format!(
                "  {} (rollout {})\n",
                s(&c["device"]),
                s(&c["rollout"])
            ));
        }
    }
    let rows: Vec<Vec<String>> = r
        .waves
        .iter()
        .map(|w| {
            vec![
                wave_number(w),
                format!("{}%", share(w)),
                w.members.to_string(),
                w.cumulative_members.to_string(),
                w.deploys.to_string(),
                w.redeploys.to_string(),
            ]
        })
        .collect();
    text.push_str(&table(
        &["WAVE", "SHARE", "NEW", "CUMULATIVE", "DEPLOYS", "REDEPLOYS"],
        &rows,
    ));
    out(&text)
}

fn operate(
    server: &ServerArgs,
    id: RolloutId,
    op: &str,
    body: Option<Value>,
    json: bool,
) -> Result<(), CliError> {
    let api = Api::new(server)?;
    let answer = api.post(
        &format!("/api/v1/rollouts/{id}/{op}"),
        &body.unwrap_or_else(|| json!({})),
    )?;
    if json {
        return print_json(&answer);
    }
    let r = rollout_view(&answer).map_err(cli_error)?;
    let mut line = format!("rollout {id}: {}", r.status);
    if let Some(by) = &r.approved_by {
        line.push_str(&format!(" (approved by {by})"));
    }
    if let Some(reason) = abort_message(&r) {
        line.push_str(&format!(" ({reason})"));
    }
    out(&format!(
        "{line}\n{}{}",
        recall_text(&r),
        no_rollback_text(&r)
    ))
}

/// A wave's number in human output: 1-based (the API's `index` is 0-based).
fn wave_number(w: &WaveView) -> String {
    (w.index + 1).to_string()
}

/// A wave's cumulative share as the API writes it (`1.0`, `12.5`, `0.25`).
fn share(w: &WaveView) -> String {
    share_text(w.share)
}

/// A percentage as JSON writes it (whole numbers with one decimal), by serde_json itself as
/// the demo and the console do.
fn share_text(share: f64) -> String {
    json!(share).to_string()
}

/// The release's version, `-` when the server does not know it.
fn version(r: &RolloutView) -> String {
    r.version.clone().unwrap_or_else(|| "-".into())
}

/// Why the rollout aborted, in the server's words.
fn abort_message(r: &RolloutView) -> Option<&str> {
    r.abort_reason.as_ref().and_then(|a| a["message"].as_str())
}

/// Devices that reached a final state.
fn done_count(c: &Value) -> u64 {
    let n = |k: &str| c[k].as_u64().unwrap_or(0);
    n("succeeded") + n("skipped-identical") + n("failures")
}

fn bar(done: u64, total: u64, width: usize) -> String {
    let filled = done
        .saturating_mul(width as u64)
        .checked_div(total)
        .map_or(width, |f| usize::try_from(f).unwrap_or(width).min(width));
    format!(
        "[{}{}]",
        "#".repeat(filled),
        ".".repeat(width.saturating_sub(filled))
    )
}

/// The rollout as text: headline, a bar per wave, counts per state, failures by phase.
fn render(r: &RolloutView, bars: bool) -> String {
    let mut text = format!(
        "rollout {} — {} {} ({})\nstatus: {}",
        r.id,
        version(r),
        short_text(&r.release),
        r.filter,
        r.status
    );
    if let Some(w) = r.current_wave {
        text.push_str(&format!(
            ", wave {} of {}, {}",
            w + 1,
            r.waves.len(),
            r.phase.map_or("-", WavePhaseKind::name)
        ));
    }
    if let Some(reason) = abort_message(r) {
        text.push_str(&format!(" — {reason}"));
    }
    text.push_str(&format!(
        "\ntargets {}: {} deploys, {} redeploys, {} offline; created by {}{}\n",
        r.targets,
        r.deploys,
        r.redeploys,
        r.offline,
        r.created_by,
        r.approved_by
            .as_ref()
            .map(|a| format!(", approved by {a}"))
            .unwrap_or_default()
    ));
    if bars {
        for w in &r.waves {
            let members = u64::from(w.members);
            let done = done_count(&w.counts);
            text.push_str(&format!(
                "wave {} {:>6}% {} {done}/{members} done, {} succeeded, {} failed{}\n",
                wave_number(w),
                share(w),
                bar(done, members, 30),
                s(&w.counts["succeeded"]),
                s(&w.counts["failures"]),
                not_started(w)
            ));
        }
    }
    let totals = &r.totals;
    let counts: Vec<String> = ota_core::rollout::STATE_NAMES
        .iter()
        .filter_map(|k| {
            let n = totals[*k].as_u64().unwrap_or(0);
            (n > 0).then(|| format!("{k}={n}"))
        })
        .collect();
    text.push_str(&format!(
        "states: {}\n",
        if counts.is_empty() {
            "-".into()
        } else {
            counts.join(" ")
        }
    ));
    let failed = &totals["failed"];
    let phases: Vec<String> = ota_core::rollout::FAILURE_PHASES
        .iter()
        .map(|p| format!("{}={}", p.name(), failed[p.name()].as_u64().unwrap_or(0)))
        .collect();
    text.push_str(&format!(
        "failed by phase: {}; rejected={} rolled-back={} timed-out={} (failures {} of {} executed)\n",
        phases.join(" "),
        s(&totals["rejected"]),
        s(&totals["rolled-back"]),
        s(&totals["timed-out"]),
        s(&totals["failures"]),
        s(&totals["executed"])
    ));
    text.push_str(&downloads_text(r.downloads.as_ref()));
    text.push_str(&recall_text(r));
    text.push_str(&no_rollback_text(r));
    text
}

/// ` (not started)` after a wave that has not started.
fn not_started(w: &WaveView) -> &'static str {
    if w.started_at.is_none() {
        " (not started)"
    } else {
        ""
    }
}

/// The rollout's download totals in one line (`downloads: ...`), empty when the view has none.
fn downloads_text(d: Option<&TransferTotals>) -> String {
    let Some(d) = d else {
        return String::new();
    };
    if d.downloads == 0 {
        return "downloads: none reported yet\n".to_string();
    }
    let (fetched, full, saved) = (d.fetched_bytes, d.full_bytes, d.saved_bytes);
    format!(
        "downloads: {} device(s) fetched {} of {} ({fetched} of {full} bytes), saved {} ({})\n",
        d.devices,
        indicatif::HumanBytes(fetched),
        indicatif::HumanBytes(full),
        indicatif::HumanBytes(saved),
        percent_of(saved, full)
    )
}

/// After an abort: where the devices it sent back are, in one line (`recall: ...`); empty when
/// it sent none back.
fn recall_text(r: &RolloutView) -> String {
    let Some(c) = r.recall.as_ref().filter(|c| c.is_object()) else {
        return String::new();
    };
    format!(
        "recall: {} device(s) sent back: {} back, {} pending, {} failed, {} superseded\n",
        s(&c["sent"]),
        s(&c["back"]),
        s(&c["pending"]),
        s(&c["failed"]),
        s(&c["superseded"])
    )
}

/// The devices an abort left on the release (no rollback target they would accept), one
/// line each; empty when there is none.
fn no_rollback_text(r: &RolloutView) -> String {
    let list = &r.no_rollback_target;
    if list.is_empty() {
        return String::new();
    }
    let mut text = format!(
        "no-rollback-target: {} device(s) stay on this release (see docs/security.md, recovery):\n",
        list.len()
    );
    for n in list {
        text.push_str(&format!(
            "  {} {}: {}\n",
            s(&n["device"]),
            s(&n["cause"]),
            s(&n["message"])
        ));
    }
    text
}

/// How often `status --watch` asks the server.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// One `status --watch` block off a terminal: the answer as one JSON line, or the full text
/// status with its per-wave lines.
fn watch_block(answer: &Value, r: &RolloutView, json: bool) -> String {
    if json {
        format!("{answer}\n")
    } else {
        render(r, true)
    }
}

/// How a watch ends for the rollout view `r` in a final state: completed (or a dry run) is
/// success, aborted is [`CliError::RolloutAborted`] (exit status 4).
fn watch_outcome(id: RolloutId, r: &RolloutView) -> Result<(), CliError> {
    if r.status != RolloutStatus::Aborted {
        return Ok(());
    }
    Err(CliError::RolloutAborted {
        id,
        reason: abort_message(r).unwrap_or("no reason given").to_owned(),
    })
}

fn status(args: &StatusArgs) -> Result<(), CliError> {
    let api = Api::new(&args.server)?;
    let path = format!("/api/v1/rollouts/{}", args.id);
    if !args.watch {
        let answer = api.get(&path, &[])?;
        if args.json {
            return print_json(&answer);
        }
        return out(&render(&rollout_view(&answer).map_err(cli_error)?, true));
    }
    // The bars are drawn on stdout (see `watch_bars`), so that is the stream to check.
    if args.json || !std::io::stdout().is_terminal() {
        // Scripts and logs: one block per change.
        let mut last = String::new();
        loop {
            let answer = api.get(&path, &[])?;
            let r = rollout_view(&answer).map_err(cli_error)?;
            let block = watch_block(&answer, &r, args.json);
            if block != last {
                out(&block)?;
                last = block;
            }
            // Over once it no longer holds its targets (completed, aborted, a dry run).
            if !r.status.is_active() {
                return watch_outcome(args.id, &r);
            }
            std::thread::sleep(WATCH_EVERY);
        }
    }
    watch_bars(&api, args.id, &path)
}

/// `--watch` on a terminal: one indicatif bar per wave, the counts below, drawn on stdout
/// (the status is the command's output; indicatif would draw on stderr by default).
fn watch_bars(api: &Api, id: RolloutId, path: &str) -> Result<(), CliError> {
    use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
    let style = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("#>.");
    let header = multi.add(ProgressBar::new_spinner());
    let mut bars: Vec<ProgressBar> = Vec::new();
    let footer = multi.add(ProgressBar::new_spinner());
    loop {
        let r = rollout_view(&api.get(path, &[])?).map_err(cli_error)?;
        let waves = &r.waves;
        while bars.len() < waves.len() {
            let b = multi.insert_before(&footer, ProgressBar::new(0).with_style(style.clone()));
            bars.push(b);
        }
        let text = render(&r, false);
        let mut lines = text.lines();
        header.set_message(
            [lines.next(), lines.next(), lines.next()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" | "),
        );
        for (b, w) in bars.iter().zip(waves) {
            b.set_prefix(format!("wave {} {}%", wave_number(w), share(w)));
            b.set_length(u64::from(w.members));
            b.set_position(done_count(&w.counts));
            b.set_message(format!(
                "succeeded {} failed {}{}",
                s(&w.counts["succeeded"]),
                s(&w.counts["failures"]),
                not_started(w)
            ));
        }
        footer.set_message(lines.collect::<Vec<_>>().join(" | "));
        if !r.status.is_active() {
            header.finish();
            for b in &bars {
                b.finish();
            }
            footer.finish();
            return watch_outcome(id, &r);
        }
        std::thread::sleep(WATCH_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_fill_by_share() {
        assert_eq!(bar(5, 10, 10), "[#####.....]");
    }

    #[test]
    fn shares_read_as_the_api_writes_them() {
        for share in [1.0, 5.0, 12.5, 0.25, 100.0] {
            assert_eq!(share_text(share), json!(share).to_string());
        }
    }

    /// Issue 4: `status --watch` off a terminal keeps the per-wave lines.
    #[test]
    fn watch_blocks_off_a_terminal_keep_the_waves() {
        let counts = json!({ "succeeded": 3, "failures": 1, "queued": 6 });
        let wave = |index: usize, members: u32, counts: Value, started_at: Value| {
            json!({ "index": index, "share": 50.0 * (index as f64 + 1.0), "members": members,
                    "cumulative_members": members, "deploys": members, "redeploys": 0,
                    "unsettled": 0, "succeeded_offline": 0, "succeeded_unhealthy": 0,
                    "counts": counts, "started_at": started_at })
        };
        let answer = json!({ "rollout": {
            "id": 7, "version": "2.0.0", "release": "ab", "filter": "all",
            "status": "running", "current_wave": 0, "phase": "baking",
            "targets": 10, "deploys": 10, "redeploys": 0, "offline": 0, "created_by": "alice",
            "created_at": 1, "updated_at": 1, "spec": {},
            "totals": counts,
            "waves": [wave(0, 4, counts.clone(), json!(1)),
                      wave(1, 6, json!({ "queued": 6 }), Value::Null)],
        }});
        let r = rollout_view(&answer).unwrap();
        let text = watch_block(&answer, &r, false);
        let waves: Vec<&str> = text.lines().filter(|l| l.starts_with("wave ")).collect();
        assert_eq!(waves.len(), 2, "{text}");
        assert!(waves[1].ends_with("(not started)"), "{text}");
        assert!(
            waves[0].contains(" 4/4 done, 3 succeeded, 1 failed"),
            "{text}"
        );
        let line = watch_block(&answer, &r, true);
        assert_eq!(line.lines().count(), 1);
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), answer);
    }

    /// Issues 12.1 and 19.9: `ota rollout status` lists the devices an abort could not send
    /// back, with the cause.
    #[test]
    fn issue12_status_lists_devices_without_a_rollback_target() {
        let answer = json!({ "rollout": {
            "id": 7, "version": "2.0.0", "release": "ab", "filter": "all",
            "status": "aborted", "targets": 1, "deploys": 1, "redeploys": 0, "offline": 0,
            "created_by": "alice", "created_at": 1, "updated_at": 1, "spec": {},
            "totals": { "succeeded": 1 }, "waves": [],
            "no_rollback_target": [
                { "device": "gw-1", "cause": "security-floor", "message": "below the floor" },
            ],
            "recall": { "sent": 3, "pending": 1, "back": 2, "failed": 0, "superseded": 0 },
        }});
        let text = render(&rollout_view(&answer).unwrap(), true);
        assert!(
            text.contains("no-rollback-target: 1 device(s)")
                && text.contains("gw-1 security-floor: below the floor"),
            "{text}"
        );
        assert!(
            text.contains(
                "recall: 3 device(s) sent back: 2 back, 1 pending, 0 failed, 0 superseded"
            ),
            "{text}"
        );
    }

    /// A view the CLI cannot read (a status it does not know) is a typed error, not a panic
    /// or a guess.
    #[test]
    fn a_view_that_does_not_read_is_refused_clearly() {
        let answer = json!({ "rollout": { "id": 7, "status": "sideways" } });
        let err = rollout_view(&answer).unwrap_err();
        assert!(
            matches!(&err, ota_demo::api::ApiError::Unexpected(why) if why.contains("rollout view")),
            "{err}"
        );
    }
}
