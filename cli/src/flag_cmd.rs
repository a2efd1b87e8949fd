//! `ota flag set | list | show | kill | revive`: feature flags on the fleet server.

use clap::{Args, Subcommand};
use ota_server::fleet::FlagSetRequest;
use serde_json::{Value, json};

use crate::api::{Api, ServerArgs, encode};
use crate::error::CliError;
use crate::output::{out, print_json, s, table, time};
use crate::values::parse_percent;

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
pub(crate) fn run(cmd: FlagCommand) -> Result<(), CliError> {
    match cmd {
        FlagCommand::Set(args) => {
            // The API's own request type: what the server reads is what is sent.
            let mut body = FlagSetRequest::new(args.on && !args.off);
            body.percent = args
                .percent
                .as_deref()
                .map(|p| parse_percent(p, "--percent"))
                .transpose()?;
            body.filter.clone_from(&args.filter);
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
                text.push_str(&format!(
                    "  {}  {:<8} by {}: {} -> {}\n",
                    time(&ch["at"]),
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
    body: &impl serde::Serialize,
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
