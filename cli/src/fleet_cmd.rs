//! The fleet commands, clients of a running `ota server`: `ota release publish | list`,
//! `ota devices`, `ota rollout`, `ota events`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use ota_core::delta::ChunkIndex;
use ota_core::digest::Digest;
use ota_core::release::{Limits, SignedRelease};
use reqwest::Method;
use serde_json::{Value, json};

use crate::api::{Api, ServerArgs, json_of};
use crate::error::CliError;
use crate::files;
use crate::progress::Progress;

// ----- output helpers -----

/// Writes `text` to stdout.
pub(crate) fn out(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(CliError::Stdout)
}

/// Prints `v` as pretty JSON.
pub(crate) fn print_json(v: &Value) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into());
    out(&format!("{text}\n"))
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn short(digest: &Value) -> String {
    let d = s(digest);
    if d.len() > 12 { d[..12].to_string() } else { d }
}

fn time(v: &Value) -> String {
    v.as_i64()
        .and_then(|t| u64::try_from(t).ok())
        .map(|t| {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(t))
                .to_string()
        })
        .unwrap_or_else(|| "-".into())
}

/// Renders rows as aligned columns.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let line = |cells: Vec<String>, text: &mut String| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        text.push_str(l.trim_end());
        text.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect(), &mut text);
    for row in rows {
        line(row.clone(), &mut text);
    }
    text
}

// ----- ota release publish | list -----

/// Arguments of `ota release publish`.
#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The signed release file (`ota release sign --out`).
    #[arg(value_name = "RELEASE")]
    release: PathBuf,
    /// The artifact it names; uploaded streaming (constant memory), with a progress bar on a
    /// terminal.
    #[arg(long, value_name = "FILE")]
    artifact: PathBuf,
    /// The chunk index the release names (default: RELEASE.chunks, written by `ota release
    /// sign`). Only read when the release names one.
    #[arg(long, value_name = "FILE")]
    chunk_index: Option<PathBuf>,
    /// Print the server's JSON answer.
    #[arg(long)]
    json: bool,
}

/// Arguments of `ota release list`.
#[derive(Debug, Args)]
pub(crate) struct ListReleasesArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `ota release publish`.
pub(crate) fn publish(args: &PublishArgs) -> Result<(), CliError> {
    let api = Api::new(&args.server)?;
    let release =
        files::read_bounded(&args.release, Limits::MAX_RELEASE_BYTES as u64, "a release")?;
    // Decoding first gives a clear local error for a file that is not a release at all.
    let signed = SignedRelease::decode(&release).map_err(|error| CliError::Rejected {
        error,
        detail: format!(" (file {})", args.release.display()),
    })?;
    let index = chunk_index_of(args, &signed)?;
    let read_err = |source| CliError::Read {
        path: args.artifact.clone(),
        source,
    };
    let len = std::fs::metadata(&args.artifact).map_err(read_err)?.len();
    let artifact_path = args.artifact.clone();
    let answer = api.block_on(async {
        let file = tokio::fs::File::open(&artifact_path)
            .await
            .map_err(read_err)?;
        let progress = std::sync::Arc::new(Progress::new(Some(len), "uploading"));
        let bar = progress.clone();
        let stream = futures_util::stream::unfold(file, move |mut file| {
            let bar = bar.clone();
            async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; files::STREAM_BUFFER];
                match file.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        bar.inc(n as u64);
                        Some((Ok::<_, std::io::Error>(buf), file))
                    }
                    Err(e) => Some((Err(e), file)),
                }
            }
        });
        let mut form = reqwest::multipart::Form::new()
            .part("release", reqwest::multipart::Part::bytes(release));
        if let Some(index) = index {
            form = form.part("chunk_index", reqwest::multipart::Part::bytes(index));
        }
        let form = form.part(
            "artifact",
            reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), len),
        );
        let result = json_of(
            api.request(Method::POST, "/api/v1/releases")
                .multipart(form)
                .send()
                .await,
        )
        .await;
        drop(progress);
        result
    })?;
    if args.json {
        return print_json(&answer);
    }
    let r = &answer["release"];
    out(&format!(
        "{}: {} {} security_version={} sha256={} size={} (published by {})\n",
        s(&answer["status"]),
        s(&r["product"]),
        s(&r["version"]),
        s(&r["security_version"]),
        s(&r["digest"]),
        s(&r["size"]),
        s(&r["published_by"]),
    ))
}

/// The chunk index bytes to publish with `signed`: `None` when the release names no index;
/// else the `--chunk-index` file or `RELEASE.chunks`, which must be the index it names.
fn chunk_index_of(args: &PublishArgs, signed: &SignedRelease) -> Result<Option<Vec<u8>>, CliError> {
    let Some(named) = signed.manifest.chunk_index else {
        return match &args.chunk_index {
            Some(path) => Err(CliError::Usage(format!(
                "--chunk-index {}: the release names no chunk index",
                path.display()
            ))),
            None => Ok(None),
        };
    };
    let path = args
        .chunk_index
        .clone()
        .unwrap_or_else(|| crate::release_cmd::chunks_path(&args.release));
    let bytes = match files::read_bounded(&path, ChunkIndex::MAX_BYTES as u64, "a chunk index") {
        Ok(bytes) => bytes,
        Err(CliError::Read { path, source }) => {
            return Err(CliError::MissingChunkIndex { path, source });
        }
        Err(other) => return Err(other),
    };
    if bytes.len() as u64 != named.size || Digest::of(&bytes) != named.digest() {
        return Err(CliError::Usage(format!(
            "{} is not the chunk index the release names (sha256 {}, {} bytes)",
            path.display(),
            named.digest(),
            named.size
        )));
    }
    Ok(Some(bytes))
}

/// `ota release list`.
pub(crate) fn list_releases(args: &ListReleasesArgs) -> Result<(), CliError> {
    let api = Api::new(&args.server)?;
    let answer = api.get("/api/v1/releases", &[])?;
    if args.json {
        return print_json(&answer);
    }
    let rows: Vec<Vec<String>> = answer["releases"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r| {
            vec![
                short(&r["digest"]),
                s(&r["product"]),
                s(&r["version"]),
                s(&r["security_version"]),
                s(&r["size"]),
                r["hardware"]
                    .as_array()
                    .map(|h| h.iter().map(s).collect::<Vec<_>>().join(","))
                    .unwrap_or_default(),
                time(&r["created_at"]),
                s(&r["published_by"]),
                match r["trusted"].as_bool() {
                    Some(true) => "yes".into(),
                    Some(false) => "NO (countersign)".into(),
                    None => "-".into(),
                },
            ]
        })
        .collect();
    out(&table(
        &[
            "SHA256",
            "PRODUCT",
            "VERSION",
            "SECVER",
            "SIZE",
            "HARDWARE",
            "PUBLISHED",
            "BY",
            "TRUSTED",
        ],
        &rows,
    ))
}

// ----- ota devices -----

/// `ota devices <command>`.
#[derive(Debug, Subcommand)]
pub(crate) enum DevicesCommand {
    /// List devices, optionally filtered (e.g. `hw=gw-a and label:region=eu`, `drifted`,
    /// `not online`, `version!=2.0.0`).
    List(DevicesListArgs),
    /// Show one device.
    Show(DeviceShowArgs),
    /// Set or remove server-side labels of a device (`KEY=VALUE` sets, `KEY=` removes); they
    /// win over the labels the device reports, in filters (`label:KEY=VALUE`).
    Label(DeviceLabelArgs),
}

/// Arguments of `ota devices label`.
#[derive(Debug, Args)]
pub(crate) struct DeviceLabelArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The device id.
    id: String,
    /// Labels: `KEY=VALUE` to set, `KEY=` to remove.
    #[arg(value_name = "KEY=VALUE", required = true)]
    labels: Vec<String>,
}

/// Arguments of `ota devices list`.
#[derive(Debug, Args)]
pub(crate) struct DevicesListArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The device filter (see docs/server.md): fields id, hw, version, digest, result,
    /// label:KEY with = / != and * wildcards; flags online, drifted, all; not, and, or, ().
    #[arg(long, value_name = "EXPR")]
    filter: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `ota devices show`.
#[derive(Debug, Args)]
pub(crate) struct DeviceShowArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The device id.
    id: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `ota devices <command>`.
/// A device's last result for the table: the state, with the cause and the release it
/// concerns when the device reported them (`rolled-back (probe-timeout, from 2f1c9a0b)`).
fn last_result(d: &Value) -> String {
    let o = &d["last_outcome"];
    let mut extra = Vec::new();
    if let Some(cause) = o["cause"].as_str() {
        extra.push(cause.to_string());
    }
    if o["state"] == "rolled-back" && o["release"].is_string() {
        extra.push(format!("from {}", short(&o["release"])));
    }
    if extra.is_empty() {
        s(&d["last_result"])
    } else {
        format!("{} ({})", s(&d["last_result"]), extra.join(", "))
    }
}

pub(crate) fn devices(cmd: DevicesCommand) -> Result<(), CliError> {
    match cmd {
        DevicesCommand::List(args) => {
            let api = Api::new(&args.server)?;
            let query: Vec<(&str, String)> =
                args.filter.iter().map(|f| ("filter", f.clone())).collect();
            let answer = api.get("/api/v1/devices", &query)?;
            if args.json {
                return print_json(&answer);
            }
            let list = answer["devices"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|d| {
                    vec![
                        s(&d["id"]),
                        s(&d["hardware_class"]),
                        s(&d["running_version"]),
                        short(&d["running_digest"]),
                        if d["online"] == true {
                            "online"
                        } else {
                            "offline"
                        }
                        .into(),
                        if d["drifted"] == true { "DRIFTED" } else { "-" }.into(),
                        last_result(d),
                        time(&d["last_seen"]),
                    ]
                })
                .collect();
            out(&table(
                &[
                    "ID",
                    "HW",
                    "VERSION",
                    "SHA256",
                    "STATUS",
                    "DRIFT",
                    "LAST RESULT",
                    "LAST SEEN",
                ],
                &rows,
            ))?;
            let drifted = list.iter().filter(|d| d["drifted"] == true).count();
            let online = list.iter().filter(|d| d["online"] == true).count();
            out(&format!(
                "{} device(s), {online} online, {drifted} drifted\n",
                list.len()
            ))
        }
        DevicesCommand::Label(args) => {
            let api = Api::new(&args.server)?;
            let path = format!("/api/v1/devices/{}", encode(&args.id));
            let device = api.get(&path, &[])?;
            let mut labels: serde_json::Map<String, Value> = device["server_labels"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            for l in &args.labels {
                let (k, v) = l.split_once('=').ok_or_else(|| {
                    CliError::Usage(format!("label {l:?}: expected KEY=VALUE or KEY="))
                })?;
                if v.is_empty() {
                    labels.remove(k);
                } else {
                    labels.insert(k.to_string(), json!(v));
                }
            }
            let request = api
                .request(Method::PUT, &format!("{path}/labels"))
                .json(&json!({ "labels": labels }));
            let d = api.block_on(async { json_of(request.send().await).await })?;
            out(&format!(
                "{}: server labels {}\n",
                s(&d["id"]),
                d["server_labels"]
            ))
        }
        DevicesCommand::Show(args) => {
            let api = Api::new(&args.server)?;
            let d = api.get(&format!("/api/v1/devices/{}", encode(&args.id)), &[])?;
            if args.json {
                return print_json(&d);
            }
            let mut text = String::new();
            for (k, label) in [
                ("id", "id"),
                ("hardware_class", "hardware class"),
                ("running_version", "running version"),
                ("running_digest", "running sha256"),
                ("known_good_digest", "known-good sha256"),
                ("last_committed_digest", "last committed"),
                ("last_result", "last result"),
                ("online", "online"),
                ("drifted", "drifted"),
                ("reported_generation", "generation"),
            ] {
                text.push_str(&format!("{label:<18} {}\n", s(&d[k])));
            }
            let t = &d["last_transfer"];
            if let (Some(fetched), Some(full)) =
                (t["fetched_bytes"].as_u64(), t["full_bytes"].as_u64())
            {
                text.push_str(&format!(
                    "{:<18} fetched {fetched} of {full} bytes, saved {} ({}), generation {}\n",
                    "last download",
                    s(&t["saved_bytes"]),
                    percent_of(full.saturating_sub(fetched), full),
                    s(&t["generation"])
                ));
            }
            text.push_str(&format!(
                "{:<18} {}\n",
                "first seen",
                time(&d["first_seen"])
            ));
            text.push_str(&format!("{:<18} {}\n", "last seen", time(&d["last_seen"])));
            for (k, label) in [
                ("labels", "labels"),
                ("server_labels", "server labels"),
                ("power", "power"),
                ("inventory", "inventory"),
            ] {
                text.push_str(&format!("{label:<18} {}\n", d[k]));
            }
            out(&text)
        }
    }
}

/// Percent-encodes a path segment (device ids are `[A-Za-z0-9._-]`, but input is input).
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

// ----- ota events -----

/// Arguments of `ota events`.
#[derive(Debug, Args)]
pub(crate) struct EventsArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Only events of this rollout.
    #[arg(long, value_name = "ID")]
    rollout: Option<i64>,
    /// Only events of this device (an unknown device without events is an error).
    #[arg(long, value_name = "ID")]
    device: Option<String>,
    /// Only events of this kind (e.g. rollout-aborted, device-state-changed); an unknown kind
    /// is a usage error (exit 2).
    #[arg(long, value_name = "KIND")]
    kind: Option<String>,
    /// How many of the newest events (at most 1000).
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Keep following the log (poll every 2 s) until interrupted.
    #[arg(long)]
    follow: bool,
    /// Print JSON (one object per line with --follow).
    #[arg(long)]
    json: bool,
}

/// `ota events`.
pub(crate) fn events(args: &EventsArgs) -> Result<(), CliError> {
    if let Some(kind) = args
        .kind
        .as_deref()
        .filter(|k| !ota_server::event_kinds::is_known(k))
    {
        return Err(CliError::Usage(format!(
            "--kind {kind:?} is not an event kind (one of: {})",
            ota_server::event_kinds::ALL.join(", ")
        )));
    }
    let api = Api::new(&args.server)?;
    let mut after: Option<i64> = None;
    loop {
        let mut query = vec![("limit", args.limit.to_string())];
        if let Some(r) = args.rollout {
            query.push(("rollout", r.to_string()));
        }
        if let Some(d) = &args.device {
            query.push(("device", d.clone()));
        }
        if let Some(k) = &args.kind {
            query.push(("kind", k.clone()));
        }
        if let Some(a) = after {
            query.push(("after", a.to_string()));
        }
        let answer = api.get("/api/v1/events", &query)?;
        let list = answer["events"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if after.is_none()
            && list.is_empty()
            && let Some(device) = &args.device
        {
            // No event at all: an unknown device is an error (404), not an empty log.
            api.get(&format!("/api/v1/devices/{}", encode(device)), &[])?;
        }
        if args.json && !args.follow {
            return print_json(&answer);
        }
        let mut text = String::new();
        for e in list {
            if args.json {
                text.push_str(&format!("{e}\n"));
                continue;
            }
            let mut scope = String::new();
            if !e["rollout_id"].is_null() {
                scope.push_str(&format!(" rollout={}", s(&e["rollout_id"])));
            }
            if !e["device_id"].is_null() {
                scope.push_str(&format!(" device={}", s(&e["device_id"])));
            }
            text.push_str(&format!(
                "#{} {} {} {}{} {}\n",
                s(&e["id"]),
                time(&e["at"]),
                s(&e["actor"]),
                s(&e["kind"]),
                scope,
                e["details"]
            ));
        }
        out(&text)?;
        if !args.follow {
            return Ok(());
        }
        after = answer["next_after"].as_i64().or(after);
        std::thread::sleep(Duration::from_secs(2));
    }
}

// ----- ota rollout -----

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
    id: i64,
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
    id: i64,
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
    id: i64,
    /// Why (recorded in the audit log).
    #[arg(long, value_name = "TEXT", default_value = "")]
    reason: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `5%`, `5`, `0.5%` → 5.0, 5.0, 0.5.
pub(crate) fn parse_percent(text: &str, what: &str) -> Result<f64, CliError> {
    let t = text.trim();
    let n = t.strip_suffix('%').unwrap_or(t).trim();
    n.parse::<f64>()
        .ok()
        .filter(|p| p.is_finite() && (0.0..=100.0).contains(p))
        .ok_or_else(|| CliError::Usage(format!("{what} {text:?} is not a percentage (0-100%)")))
}

/// `10m`, `1h 30m`, `0` → seconds.
pub(crate) fn parse_duration(text: &str, what: &str) -> Result<u64, CliError> {
    let t = text.trim();
    if t == "0" {
        return Ok(0);
    }
    humantime::parse_duration(t)
        .map(|d| d.as_secs())
        .map_err(|e| CliError::Usage(format!("{what} {text:?}: {e} (e.g. 10m, 1h, 0)")))
}

/// `200/min`, `5/s`, `1000/h`, `200` (per minute) → per minute.
pub(crate) fn parse_rate(text: &str) -> Result<u32, CliError> {
    let t = text.trim();
    let (n, unit) = t.split_once('/').unwrap_or((t, "min"));
    let n: u64 = n
        .trim()
        .parse()
        .map_err(|_| CliError::Usage(format!("--rate {text:?}: expected N/min, N/s or N/h")))?;
    let per_minute = match unit.trim() {
        "min" | "m" | "minute" => n,
        "s" | "sec" | "second" => n.saturating_mul(60),
        "h" | "hour" => n.div_ceil(60),
        other => {
            return Err(CliError::Usage(format!(
                "--rate {text:?}: unknown unit {other:?} (min, s or h)"
            )));
        }
    };
    u32::try_from(per_minute)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| CliError::Usage(format!("--rate {text:?} must be at least 1/min")))
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
pub(crate) fn rollout(cmd: RolloutCommand) -> Result<(), CliError> {
    match cmd {
        RolloutCommand::Create(args) => create(&args),
        RolloutCommand::Status(args) => status(&args),
        RolloutCommand::List(args) => {
            let api = Api::new(&args.server)?;
            let answer = api.get("/api/v1/rollouts", &[])?;
            if args.json {
                return print_json(&answer);
            }
            let rows: Vec<Vec<String>> = answer["rollouts"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|r| {
                    let targets = r["targets"].as_u64().unwrap_or(0);
                    let done = done_count(&r["totals"]);
                    vec![
                        s(&r["id"]),
                        s(&r["status"]),
                        s(&r["version"]),
                        short(&r["release"]),
                        r["current_wave"]
                            .as_u64()
                            .map(|w| {
                                format!("{}/{}", w + 1, r["waves"].as_array().map_or(0, Vec::len))
                            })
                            .unwrap_or_else(|| "-".into()),
                        format!("{done}/{targets}"),
                        s(&r["created_by"]),
                        time(&r["created_at"]),
                        s(&r["filter"]),
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
    let body = json!({
        "release": release_ref(&args.release)?,
        "filter": args.filter,
        "waves": waves,
        "bake_secs": parse_duration(&args.bake, "--bake")?,
        "success_min": parse_percent(&args.success_min, "--success-min")?,
        "max_failure": parse_percent(&args.max_failure, "--max-failure")?,
        "min_executed": args.min_executed,
        "rate_per_minute": parse_rate(&args.rate)?,
        "inactivity_timeout_secs": parse_duration(&args.inactivity_timeout, "--inactivity-timeout")?,
        "max_deferral_secs": parse_duration(&args.max_deferral, "--max-deferral")?,
        "force_reinstall": args.force_reinstall,
        "dry_run": args.dry_run,
    });
    let api = Api::new(&args.server)?;
    let answer = api.post("/api/v1/rollouts", &body)?;
    if args.json {
        return print_json(&answer);
    }
    let r = &answer["rollout"];
    let mut text = String::new();
    let headline = match r["status"].as_str() {
        Some("dry-run") => format!(
            "dry run (rollout {} recorded, nobody notified)",
            s(&r["id"])
        ),
        Some("awaiting-approval") => format!(
            "rollout {} created: forced reinstall, waiting for a second operator: ota rollout approve {}",
            s(&r["id"]),
            s(&r["id"])
        ),
        _ => format!("rollout {} created and started", s(&r["id"])),
    };
    text.push_str(&headline);
    text.push('\n');
    for warning in r["warnings"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        text.push_str(&format!("warning: {}\n", s(warning)));
    }
    text.push_str(&format!(
        "release {} ({})\ntargets {}: {} deploy(s) (new digest), {} redeploy(s) (already running it: {})\n",
        s(&r["version"]),
        s(&r["release"]),
        s(&r["targets"]),
        s(&r["deploys"]),
        s(&r["redeploys"]),
        if args.force_reinstall {
            "reinstalled, forced"
        } else {
            "they report skipped-identical"
        },
    ));
    if let Some(n) = r["excluded"]["incompatible_hardware"].as_u64()
        && n > 0
    {
        text.push_str(&format!(
            "left out: {n} matching device(s) of a hardware class the release does not list\n"
        ));
    }
    if let Some(conflicts) = r["conflicts"].as_array()
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
    let waves = r["waves"].as_array().map(Vec::as_slice).unwrap_or_default();
    let rows: Vec<Vec<String>> = waves
        .iter()
        .map(|w| {
            vec![
                wave_number(w),
                format!("{}%", s(&w["share"])),
                s(&w["members"]),
                s(&w["cumulative_members"]),
                s(&w["deploys"]),
                s(&w["redeploys"]),
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
    id: i64,
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
    let r = &answer["rollout"];
    let mut line = format!("rollout {id}: {}", s(&r["status"]));
    if let Some(by) = r["approved_by"].as_str() {
        line.push_str(&format!(" (approved by {by})"));
    }
    if let Some(reason) = r["abort_reason"]["message"].as_str() {
        line.push_str(&format!(" ({reason})"));
    }
    out(&format!("{line}\n{}", no_rollback_text(r)))
}

/// A wave's number in human output: 1-based (the API's `index` is 0-based).
fn wave_number(w: &Value) -> String {
    w["index"]
        .as_u64()
        .map_or_else(|| "?".to_owned(), |i| (i + 1).to_string())
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
fn render(r: &Value, bars: bool) -> String {
    let mut text = format!(
        "rollout {} — {} {} ({})\nstatus: {}",
        s(&r["id"]),
        s(&r["version"]),
        short(&r["release"]),
        s(&r["filter"]),
        s(&r["status"])
    );
    if let Some(w) = r["current_wave"].as_u64() {
        text.push_str(&format!(
            ", wave {} of {}, {}",
            w + 1,
            r["waves"].as_array().map_or(0, Vec::len),
            s(&r["phase"])
        ));
    }
    if let Some(reason) = r["abort_reason"]["message"].as_str() {
        text.push_str(&format!(" — {reason}"));
    }
    text.push_str(&format!(
        "\ntargets {}: {} deploys, {} redeploys, {} offline; created by {}{}\n",
        s(&r["targets"]),
        s(&r["deploys"]),
        s(&r["redeploys"]),
        s(&r["offline"]),
        s(&r["created_by"]),
        r["approved_by"]
            .as_str()
            .map(|a| format!(", approved by {a}"))
            .unwrap_or_default()
    ));
    if bars {
        for w in r["waves"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let members = w["members"].as_u64().unwrap_or(0);
            let done = done_count(&w["counts"]);
            text.push_str(&format!(
                "wave {} {:>6}% {} {done}/{members} done, {} succeeded, {} failed{}\n",
                wave_number(w),
                s(&w["share"]),
                bar(done, members, 30),
                s(&w["counts"]["succeeded"]),
                s(&w["counts"]["failures"]),
                if w["started_at"].is_null() {
                    " (not started)"
                } else {
                    ""
                }
            ));
        }
    }
    let totals = &r["totals"];
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
    let phases: Vec<String> = ["download", "verify", "install", "trial"]
        .iter()
        .map(|p| format!("{p}={}", failed[*p].as_u64().unwrap_or(0)))
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
    text.push_str(&downloads_text(&r["downloads"]));
    text.push_str(&no_rollback_text(r));
    text
}

/// The rollout's download totals in one line (`downloads: ...`), empty when the view has none.
fn downloads_text(d: &Value) -> String {
    if !d.is_object() {
        return String::new();
    }
    let n = d["downloads"].as_u64().unwrap_or(0);
    if n == 0 {
        return "downloads: none reported yet\n".to_string();
    }
    let fetched = d["fetched_bytes"].as_u64().unwrap_or(0);
    let full = d["full_bytes"].as_u64().unwrap_or(0);
    let saved = d["saved_bytes"].as_u64().unwrap_or(0);
    format!(
        "downloads: {} device(s) fetched {} of {} ({fetched} of {full} bytes), saved {} ({})\n",
        s(&d["devices"]),
        indicatif::HumanBytes(fetched),
        indicatif::HumanBytes(full),
        indicatif::HumanBytes(saved),
        percent_of(saved, full)
    )
}

/// `part` as a percentage of `whole`, one decimal (`-` for an empty whole).
pub(crate) fn percent_of(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".to_string();
    }
    format!("{:.1}%", part as f64 * 100.0 / whole as f64)
}

/// The devices an abort left on the release (no rollback target they would accept), one
/// line each; empty when there is none.
fn no_rollback_text(r: &Value) -> String {
    let list = r["no_rollback_target"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
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
fn watch_block(answer: &Value, json: bool) -> String {
    if json {
        format!("{answer}\n")
    } else {
        render(&answer["rollout"], true)
    }
}

fn is_final(status: &Value) -> bool {
    matches!(status.as_str(), Some("completed" | "aborted" | "dry-run"))
}

/// How a watch ends for the rollout view `r` in a final state: completed (or a dry run) is
/// success, aborted is [`CliError::RolloutAborted`] (exit status 4).
fn watch_outcome(r: &Value) -> Result<(), CliError> {
    if r["status"] != "aborted" {
        return Ok(());
    }
    Err(CliError::RolloutAborted {
        id: r["id"].as_i64().unwrap_or(0),
        reason: r["abort_reason"]["message"]
            .as_str()
            .unwrap_or("no reason given")
            .to_owned(),
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
        return out(&render(&answer["rollout"], true));
    }
    // The bars are drawn on stdout (see `watch_bars`), so that is the stream to check.
    if args.json || !std::io::stdout().is_terminal() {
        // Scripts and logs: one block per change.
        let mut last = String::new();
        loop {
            let answer = api.get(&path, &[])?;
            let block = watch_block(&answer, args.json);
            if block != last {
                out(&block)?;
                last = block;
            }
            if is_final(&answer["rollout"]["status"]) {
                return watch_outcome(&answer["rollout"]);
            }
            std::thread::sleep(WATCH_EVERY);
        }
    }
    watch_bars(&api, &path)
}

/// `--watch` on a terminal: one indicatif bar per wave, the counts below, drawn on stdout
/// (the status is the command's output; indicatif would draw on stderr by default).
fn watch_bars(api: &Api, path: &str) -> Result<(), CliError> {
    use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
    let style = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("#>.");
    let header = multi.add(ProgressBar::new_spinner());
    let mut bars: Vec<ProgressBar> = Vec::new();
    let footer = multi.add(ProgressBar::new_spinner());
    loop {
        let answer = api.get(path, &[])?;
        let r = &answer["rollout"];
        let waves = r["waves"].as_array().map(Vec::as_slice).unwrap_or_default();
        while bars.len() < waves.len() {
            let b = multi.insert_before(&footer, ProgressBar::new(0).with_style(style.clone()));
            bars.push(b);
        }
        let text = render(r, false);
        let mut lines = text.lines();
        header.set_message(
            [lines.next(), lines.next(), lines.next()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" | "),
        );
        for (b, w) in bars.iter().zip(waves) {
            b.set_prefix(format!("wave {} {}%", wave_number(w), s(&w["share"])));
            b.set_length(w["members"].as_u64().unwrap_or(0));
            b.set_position(done_count(&w["counts"]));
            b.set_message(format!(
                "succeeded {} failed {}{}",
                s(&w["counts"]["succeeded"]),
                s(&w["counts"]["failures"]),
                if w["started_at"].is_null() {
                    " (not started)"
                } else {
                    ""
                }
            ));
        }
        footer.set_message(lines.collect::<Vec<_>>().join(" | "));
        if is_final(&r["status"]) {
            header.finish();
            for b in &bars {
                b.finish();
            }
            footer.finish();
            return watch_outcome(r);
        }
        std::thread::sleep(WATCH_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_values_parse() {
        assert_eq!(parse_percent("5%", "x").unwrap(), 5.0);
        assert_eq!(parse_percent("0.5", "x").unwrap(), 0.5);
        assert!(parse_percent("101%", "x").is_err());
        assert!(parse_percent("five", "x").is_err());
        assert_eq!(parse_duration("10m", "x").unwrap(), 600);
        assert_eq!(parse_duration("0", "x").unwrap(), 0);
        assert!(parse_duration("soon", "x").is_err());
        assert_eq!(parse_rate("200/min").unwrap(), 200);
        assert_eq!(parse_rate("5/s").unwrap(), 300);
        assert_eq!(parse_rate("90/h").unwrap(), 2);
        assert_eq!(parse_rate("1000").unwrap(), 1000);
        assert!(parse_rate("0/min").is_err());
        assert!(parse_rate("3/fortnight").is_err());
        assert_eq!(bar(5, 10, 10), "[#####.....]");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }

    /// Issue 4: `status --watch` off a terminal keeps the per-wave lines.
    #[test]
    fn watch_blocks_off_a_terminal_keep_the_waves() {
        let counts = json!({ "succeeded": 3, "failures": 1, "queued": 6 });
        let answer = json!({ "rollout": {
            "id": 7, "version": "2.0.0", "release": "ab", "filter": "all",
            "status": "running", "current_wave": 0, "phase": "baking",
            "targets": 10, "deploys": 10, "redeploys": 0, "offline": 0, "created_by": "alice",
            "totals": counts,
            "waves": [
                { "index": 0, "share": 50.0, "members": 4, "counts": counts,
                  "started_at": 1 },
                { "index": 1, "share": 100.0, "members": 6, "counts": { "queued": 6 },
                  "started_at": null },
            ],
        }});
        let text = watch_block(&answer, false);
        let waves: Vec<&str> = text.lines().filter(|l| l.starts_with("wave ")).collect();
        assert_eq!(waves.len(), 2, "{text}");
        assert!(waves[1].ends_with("(not started)"), "{text}");
        let line = watch_block(&answer, true);
        assert_eq!(line.lines().count(), 1);
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap(), answer);
    }

    /// Issue 12.3: `ota devices list` shows a device's own rollback with its cause and the
    /// release it fell back from.
    #[test]
    fn issue12_last_result_shows_cause_and_release() {
        let d = json!({ "last_result": "rolled-back", "last_outcome": {
            "state": "rolled-back", "cause": "probe-timeout",
            "release": "2f1c9a0b5e6d7f80112233445566778899aabbccddeeff00112233445566778899",
        }});
        let text = last_result(&d);
        assert!(
            text.starts_with("rolled-back (probe-timeout, from 2f1c"),
            "{text}"
        );
        assert_eq!(
            last_result(&json!({ "last_result": "succeeded" })),
            "succeeded"
        );
    }

    /// Issues 12.1 and 19.9: `ota rollout status` lists the devices an abort could not send
    /// back, with the cause.
    #[test]
    fn issue12_status_lists_devices_without_a_rollback_target() {
        let answer = json!({ "rollout": {
            "id": 7, "version": "2.0.0", "release": "ab", "filter": "all",
            "status": "aborted", "targets": 1, "deploys": 1, "redeploys": 0, "offline": 0,
            "created_by": "alice", "totals": { "succeeded": 1 }, "waves": [],
            "no_rollback_target": [
                { "device": "gw-1", "cause": "security-floor", "message": "below the floor" },
            ],
        }});
        let text = watch_block(&answer, false);
        assert!(
            text.contains("no-rollback-target: 1 device(s)")
                && text.contains("gw-1 security-floor: below the floor"),
            "{text}"
        );
    }
}

// ----- ota flag -----

/// `ota flag <command>`.
#[derive(Debug, Subcommand)]
pub(crate) enum FlagCommand {
    /// Turn a flag on or off: for everyone (no --percent, no --filter), or as a rule for a
    /// sticky percent of the devices matching a filter. Creates the flag if needed; a killed
    /// flag stays off until `ota flag revive`.
    Set(FlagSetArgs),
    /// List every flag with its rules and device counts.
    List(FlagListArgs),
    /// Show one flag: rules, device counts, audit trail (and one device's value with --device).
    Show(FlagShowArgs),
    /// Kill switch: off on every device, at once (rules are kept for a revive).
    Kill(FlagNameArgs),
    /// Clear the kill switch: the flag's rules apply again.
    Revive(FlagNameArgs),
}

/// Arguments of `ota flag set`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("value").required(true).args(["on", "off"]))]
pub(crate) struct FlagSetArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The flag name (1-64 of a-z 0-9 . _ -).
    name: String,
    /// Turn it on for the devices this covers.
    #[arg(long)]
    on: bool,
    /// Turn it off for the devices this covers.
    #[arg(long)]
    off: bool,
    /// Only this share of the matching devices (e.g. 5, 5%, 0.5%): a sticky cohort, so
    /// widening keeps the devices that were on.
    #[arg(long, value_name = "P")]
    percent: Option<String>,
    /// Only devices matching this filter (see `ota devices list --help`).
    #[arg(long, value_name = "EXPR")]
    filter: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `ota flag list`.
#[derive(Debug, Args)]
pub(crate) struct FlagListArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `ota flag show`.
#[derive(Debug, Args)]
pub(crate) struct FlagShowArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The flag name.
    name: String,
    /// Also show this device's value and why (killed, rule N, default).
    #[arg(long, value_name = "ID")]
    device: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// A flag name (kill, revive).
#[derive(Debug, Args)]
pub(crate) struct FlagNameArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The flag name.
    name: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `ota flag <command>`.
pub(crate) fn flag(cmd: FlagCommand) -> Result<(), CliError> {
    match cmd {
        FlagCommand::Set(args) => {
            let mut body = json!({ "on": args.on && !args.off });
            if let Some(p) = &args.percent {
                body["percent"] = json!(parse_percent(p, "--percent")?);
            }
            if let Some(f) = &args.filter {
                body["filter"] = json!(f);
            }
            flag_edit(&args.server, &args.name, "set", &body, args.json)
        }
        FlagCommand::Kill(args) => {
            flag_edit(&args.server, &args.name, "kill", &json!({}), args.json)
        }
        FlagCommand::Revive(args) => {
            flag_edit(&args.server, &args.name, "revive", &json!({}), args.json)
        }
        FlagCommand::List(args) => {
            let api = Api::new(&args.server)?;
            let answer = api.get("/api/v1/flags", &[])?;
            if args.json {
                return print_json(&answer);
            }
            let list = answer["flags"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|d| {
                    let f = &d["flag"];
                    vec![
                        s(&f["name"]),
                        flag_state(f),
                        rules_text(f),
                        format!("{}/{}", s(&d["counts"]["on"]), s(&d["counts"]["devices"])),
                        s(&f["version"]),
                    ]
                })
                .collect();
            out(&table(&["NAME", "STATE", "RULES", "ON", "VERSION"], &rows))?;
            out(&format!(
                "{} flag(s), fleet flag version {}\n",
                list.len(),
                s(&answer["version"])
            ))
        }
        FlagCommand::Show(args) => {
            let api = Api::new(&args.server)?;
            let query: Vec<(&str, String)> =
                args.device.iter().map(|d| ("device", d.clone())).collect();
            let d = api.get(&format!("/api/v1/flags/{}", encode(&args.name)), &query)?;
            if args.json {
                return print_json(&d);
            }
            let f = &d["flag"];
            let c = &d["counts"];
            let mut text = format!(
                "flag      {}\nstate     {}\nrules     {}\nversion   {}\ndevices   {} on, {} off (of {})\n",
                s(&f["name"]),
                flag_state(f),
                rules_text(f),
                s(&f["version"]),
                s(&c["on"]),
                s(&c["off"]),
                s(&c["devices"]),
            );
            if d["device"].is_object() {
                let dev = &d["device"];
                text.push_str(&format!(
                    "device    {}: {} ({})\n",
                    s(&dev["id"]),
                    on_off(dev["on"] == true),
                    s(&dev["cause"])
                ));
            }
            text.push_str("changes:\n");
            for ch in d["changes"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                let at = ch["at"]
                    .as_u64()
                    .map(|ms| json!(ms / 1000))
                    .unwrap_or(Value::Null);
                text.push_str(&format!(
                    "  {}  {:<8} by {}: {} -> {}\n",
                    time(&at),
                    s(&ch["kind"]),
                    s(&ch["by"]),
                    change_side(&ch["old"]),
                    change_side(&ch["new"]),
                ));
            }
            out(&text)
        }
    }
}

fn flag_edit(
    server: &ServerArgs,
    name: &str,
    op: &str,
    body: &Value,
    json: bool,
) -> Result<(), CliError> {
    let api = Api::new(server)?;
    let r = api.post(&format!("/api/v1/flags/{}/{op}", encode(name)), body)?;
    if json {
        return print_json(&r);
    }
    let f = &r["flag"];
    let what = if r["changed"] == true {
        format!(
            "version {}, published to {} device(s)",
            s(&r["version"]),
            s(&r["published"])
        )
    } else {
        "unchanged".to_string()
    };
    out(&format!(
        "{name}: {} — {}; {what}\n",
        flag_state(f),
        rules_text(f)
    ))
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

/// `KILLED`, or the default as `default on|off`.
fn flag_state(f: &Value) -> String {
    if f["killed"] == true {
        "KILLED".into()
    } else {
        format!("default {}", on_off(f["default"] == true))
    }
}

/// The rules as `on 10% of (hw=gw-a); off (label:x=y)`, `-` without any.
fn rules_text(f: &Value) -> String {
    let rules: Vec<String> = f["rules"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let share = r["percent"]
                .as_f64()
                .map_or_else(String::new, |p| format!(" {p}% of"));
            let filter = r["filter"].as_str().unwrap_or("every device");
            format!("{}{share} ({filter})", on_off(r["on"] == true))
        })
        .collect();
    if rules.is_empty() {
        "-".into()
    } else {
        rules.join("; ")
    }
}

fn change_side(def: &Value) -> String {
    if def.is_object() {
        format!("{} [{}]", flag_state(def), rules_text(def))
    } else {
        "(none)".into()
    }
}
