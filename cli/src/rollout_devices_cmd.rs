//! `ota rollout devices`: a rollout's targets as the rollout sees them (state in this rollout,
//! wave, failure phase or cause, recall after an abort), from
//! `GET /api/v1/rollouts/{id}/devices`.

use clap::Args;
use ota_core::fleet::RolloutId;
use serde_json::Value;

use crate::api::{Api, ServerArgs};
use crate::error::CliError;
use crate::output::{out, print_json, s, short, table};

/// The most targets the server lists in one answer (docs/api.md).
const MAX_PAGE: u32 = 1000;

/// Arguments of `ota rollout devices`.
#[derive(Debug, Args)]
pub(crate) struct DevicesArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The rollout id.
    id: RolloutId,
    /// Which targets: `all`, `troubled` (failed, rejected, rolled back, timed out or
    /// deferred), `failed`, or one execution state (`queued`, `notified`, `deferred-power`,
    /// `succeeded`, `timed-out`, ...).
    #[arg(long, value_name = "STATE", default_value = "all")]
    state: String,
    /// Targets skipped first (they are ordered by device id).
    #[arg(long, value_name = "N", default_value_t = 0)]
    offset: u64,
    /// Most targets listed (1 to 1000); with --all, how many are asked for at a time.
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PAGE)))]
    limit: u32,
    /// Every matching target from --offset on, asked for page by page.
    #[arg(long)]
    all: bool,
    /// Print JSON (`{"total", "offset", "devices"}` as the API answers; with --all, every
    /// page's devices in one list).
    #[arg(long)]
    json: bool,
}

/// Runs `ota rollout devices`.
pub(crate) fn run(args: &DevicesArgs) -> Result<(), CliError> {
    let api = Api::new(&args.server)?;
    let path = format!("/api/v1/rollouts/{}/devices", args.id);
    let page = |offset: u64| {
        api.get(
            &path,
            &[
                ("state", args.state.clone()),
                ("offset", offset.to_string()),
                ("limit", args.limit.to_string()),
            ],
        )
    };
    let mut answer = page(args.offset)?;
    if args.all {
        let total = answer["total"].as_u64().unwrap_or(0);
        let mut devices = take_devices(&mut answer);
        // Stops on a short page too: targets can leave a state while it is being paged.
        while args.offset + (devices.len() as u64) < total {
            let mut next = page(args.offset + devices.len() as u64)?;
            let more = take_devices(&mut next);
            if more.is_empty() {
                break;
            }
            devices.extend(more);
        }
        answer["devices"] = Value::Array(devices);
    }
    if args.json {
        return print_json(&answer);
    }
    out(&render(&answer, &args.state))
}

/// The devices of an answer, taken out of it (none when it has no list).
fn take_devices(answer: &mut Value) -> Vec<Value> {
    match answer["devices"].take() {
        Value::Array(devices) => devices,
        _ => Vec::new(),
    }
}

/// What went wrong with a target, in one cell: the phase (failed) or cause (rejected, rolled
/// back), then the reason.
fn detail(d: &Value) -> String {
    let what = d["phase"].as_str().or_else(|| d["cause"].as_str());
    match (what, d["reason"].as_str()) {
        (Some(what), Some(reason)) => format!("{what}: {reason}"),
        (Some(what), None) => what.to_owned(),
        (None, Some(reason)) => reason.to_owned(),
        (None, None) => "-".to_owned(),
    }
}

/// Where an abort sent the target, and whether it got there (`back to 9f86d081884c`).
fn recall(d: &Value) -> String {
    let r = &d["recall"];
    if r.is_null() {
        return "-".to_owned();
    }
    format!("{} to {}", s(&r["state"]), short(&r["to"]))
}

/// The answer as a table (waves numbered from 1, as everywhere in the CLI), then how many of
/// how many are shown and how to ask for the rest.
fn render(answer: &Value, state: &str) -> String {
    let devices = answer["devices"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = devices
        .iter()
        .map(|d| {
            vec![
                s(&d["device"]),
                d["wave"]
                    .as_u64()
                    .map_or_else(|| "-".to_owned(), |w| (w + 1).to_string()),
                s(&d["state"]),
                detail(d),
                recall(d),
            ]
        })
        .collect();
    let mut text = table(&["DEVICE", "WAVE", "STATE", "DETAIL", "RECALL"], &rows);
    let total = answer["total"].as_u64().unwrap_or(0);
    let offset = answer["offset"].as_u64().unwrap_or(0);
    let shown = devices.len() as u64;
    let which = if state == "all" {
        String::new()
    } else {
        format!(" ({state})")
    };
    if shown == 0 {
        text.push_str(&format!("0 of {total} target(s){which}\n"));
    } else {
        text.push_str(&format!(
            "{}-{} of {total} target(s){which}\n",
            offset + 1,
            offset + shown
        ));
    }
    if offset + shown < total && shown > 0 {
        text.push_str(&format!("more: --offset {} (or --all)\n", offset + shown));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An answer of the API.
    fn answer(total: u64, offset: u64, devices: Vec<Value>) -> Value {
        json!({ "total": total, "offset": offset, "devices": devices })
    }

    #[test]
    fn the_table_names_phase_cause_and_recall_and_numbers_waves_from_1() {
        let a = answer(
            5,
            0,
            vec![
                json!({ "device": "gw-1", "wave": 0, "state": "failed", "phase": "install",
                        "reason": "installer exit 1",
                        "recall": { "to": "9f86d081884c7d659a2feaa0c55ad015", "state": "back" } }),
                json!({ "device": "gw-2", "wave": 1, "state": "rolled-back",
                        "cause": "probe-timeout" }),
                json!({ "device": "gw-3", "wave": 2, "state": "queued" }),
            ],
        );
        let text = render(&a, "all");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("DEVICE"), "{text}");
        assert!(
            lines[1].contains("gw-1") && lines[1].contains("install: installer exit 1"),
            "{text}"
        );
        assert!(lines[1].ends_with("back to 9f86d081884c"), "{text}");
        assert_eq!(lines[1].split_whitespace().nth(1), Some("1"), "{text}");
        assert!(
            lines[2].contains("probe-timeout") && lines[2].ends_with('-'),
            "{text}"
        );
        assert_eq!(lines[3].split_whitespace().nth(1), Some("3"), "{text}");
        assert_eq!(lines[4], "1-3 of 5 target(s)");
        assert_eq!(lines[5], "more: --offset 3 (or --all)");
    }

    #[test]
    fn an_empty_page_says_how_many_there_are() {
        let text = render(&answer(2, 2, vec![]), "troubled");
        assert!(text.ends_with("0 of 2 target(s) (troubled)\n"), "{text}");
        assert!(!text.contains("more:"), "{text}");
    }
}
