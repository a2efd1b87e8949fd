//! `ota devices list | show | label`: the fleet's devices as the server sees them.

use serde_json::{Value, json};

use clap::{Args, Subcommand};

use crate::api::{Api, ServerArgs, encode};
use crate::error::CliError;
use crate::output::{out, percent_of, print_json, s, short, table, time};

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

/// Runs `ota devices <command>`.
pub(crate) fn run(cmd: DevicesCommand) -> Result<(), CliError> {
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
            let d = api.put(&format!("{path}/labels"), &json!({ "labels": labels }))?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
