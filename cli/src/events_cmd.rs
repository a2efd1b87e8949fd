//! `ota events`: the audit log, once or followed.

use std::time::Duration;

use clap::Args;
use ota_core::fleet::RolloutId;

use crate::api::{Api, ServerArgs, encode};
use crate::error::CliError;
use crate::output::{out, print_json, s, time};

/// Arguments of `ota events`.
#[derive(Debug, Args)]
pub(crate) struct EventsArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Only events of this rollout.
    #[arg(long, value_name = "ID")]
    rollout: Option<RolloutId>,
    /// Only events of this device (an unknown device without events is an error).
    #[arg(long, value_name = "ID")]
    device: Option<String>,
    /// Only events of this kind (e.g. rollout-aborted, device-state-changed); an unknown kind
    /// is a usage error (exit 2).
    #[arg(long, value_name = "KIND")]
    kind: Option<String>,
    /// Only events recorded by this actor (an operator's name, server, mqtt, device:<id>).
    #[arg(long, value_name = "NAME")]
    actor: Option<String>,
    /// Only events older than this event id (page back: pass the first id printed).
    #[arg(long, value_name = "EVENT_ID", conflicts_with = "follow")]
    before: Option<i64>,
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
pub(crate) fn run(args: &EventsArgs) -> Result<(), CliError> {
    if let Some(kind) = args
        .kind
        .as_deref()
        .filter(|k| !ota_server::event_kinds::is_known(k))
    {
        return Err(CliError::Usage(format!(
            "--kind {kind:?} is not an event kind (one of: {})",
            ota_server::event_kinds::EventKind::names()
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
        if let Some(a) = &args.actor {
            query.push(("actor", a.clone()));
        }
        if let Some(b) = args.before.filter(|_| after.is_none()) {
            query.push(("before", b.to_string()));
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
