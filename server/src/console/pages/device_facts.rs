//! The parts of a device's page that read as facts rather than data dumps: its last outcome,
//! power, inventory, and the history of its executions rollout by rollout.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{field, rollout_link, table};
use crate::console::html::{esc, time};

/// `(name, HTML value)` pairs as a definition list; pairs with an empty value are left out.
fn facts(id: &str, pairs: &[(&str, String)]) -> String {
    let mut out = format!(r#"<dl class="facts" id="{id}">"#);
    for (name, value) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        out.push_str(&format!("<dt>{}</dt><dd>{value}</dd>", esc(name)));
    }
    out.push_str("</dl>");
    out
}

/// A byte count as `1.5 GiB`, `512 KiB`, `17 B`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.1} {unit}")
}

/// The last update outcome the device reported (absent until it reported one).
pub(crate) fn outcome(o: &Value) -> String {
    if !o.is_object() {
        return "<p>No update reported yet.</p>".to_owned();
    }
    let rollout = field(o, "rollout");
    facts(
        "last-outcome",
        &[
            ("State", esc(&field(o, "state")).to_string()),
            ("Cause", esc(&field(o, "cause")).to_string()),
            ("Detail", esc(&field(o, "detail")).to_string()),
            (
                "Release it concerns",
                match field(o, "release") {
                    r if r.is_empty() => String::new(),
                    r => format!("<code>{}</code>", esc(&r)),
                },
            ),
            ("Rollout", rollout_link(&rollout)),
            (
                "Desired-state generation",
                esc(&field(o, "generation")).to_string(),
            ),
            (
                "When (device clock)",
                o.get("at")
                    .and_then(Value::as_i64)
                    .map(time)
                    .unwrap_or_default(),
            ),
        ],
    )
}

/// Battery, charging and mains as one sentence (`null` fields: not reported).
pub(crate) fn power(p: &Value) -> String {
    if !p.is_object() {
        return "<p>Not reported.</p>".to_owned();
    }
    let battery = p
        .get("battery_percent")
        .and_then(Value::as_f64)
        .map_or_else(
            || "no battery reported".to_owned(),
            |b| format!("battery {b}%"),
        );
    let flag = |key: &str, yes: &str, no: &str| match p.get(key).and_then(Value::as_bool) {
        Some(true) => yes.to_owned(),
        Some(false) => no.to_owned(),
        None => format!("{yes}: not reported"),
    };
    format!(
        r#"<p id="power">{} · {} · {}</p>"#,
        esc(&battery),
        esc(&flag("charging", "charging", "not charging")),
        esc(&flag("mains_online", "on mains", "not on mains"))
    )
}

/// The OS facts the agent reported, with its version, security floor and cached releases.
pub(crate) fn inventory(i: &Value) -> String {
    if !i.is_object() {
        return "<p>Not reported.</p>".to_owned();
    }
    let size = |key: &str| {
        i.get(key)
            .and_then(Value::as_u64)
            .map(bytes)
            .unwrap_or_default()
    };
    let text = |key: &str| esc(&field(i, key)).to_string();
    facts(
        "inventory",
        &[
            ("OS", text("os")),
            ("Kernel", text("kernel")),
            ("Architecture", text("arch")),
            ("Hostname", text("hostname")),
            ("Memory", size("memory_total")),
            ("Free disk", size("disk_free")),
            ("Agent version", text("agent_version")),
            ("Security floor", text("security_floor")),
            ("Cached releases", text("cached")),
        ],
    )
}

/// One rollout's execution on the device, assembled from its events.
#[derive(Default)]
struct Execution {
    /// Execution states in the order the device went through them.
    path: Vec<String>,
    /// The failure's phase or cause and reason, from the last change that had one.
    why: String,
    /// Bytes fetched of the full size, from the last change that carried a transfer.
    transfer: String,
    /// Where an abort sent the device and how that went.
    recall: String,
    /// The first and last event time, unix seconds.
    from: i64,
    to: i64,
}

/// The device's executions, one row per rollout (newest first), from its events (the API's
/// `device-state-changed`, `device-rollback` / `device-cancel` and `device-recalled`).
pub(crate) fn executions(events: &Value) -> String {
    let mut by_rollout: BTreeMap<i64, Execution> = BTreeMap::new();
    let list = events
        .get("events")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    // The API lists events oldest first.
    for e in list {
        let Some(rollout) = e.get("rollout_id").and_then(Value::as_i64) else {
            continue;
        };
        let at = e.get("at").and_then(Value::as_i64).unwrap_or(0);
        let d = e.get("details").unwrap_or(&Value::Null);
        let kind = field(e, "kind");
        if !kind.starts_with("device-") {
            continue;
        }
        let x = by_rollout.entry(rollout).or_default();
        if x.from == 0 {
            x.from = at;
        }
        x.to = at;
        match kind.as_str() {
            "device-state-changed" => {
                let from = field(d, "from");
                if x.path.is_empty() && !from.is_empty() {
                    x.path.push(from);
                }
                x.path.push(field(d, "to"));
                let what = [field(d, "phase"), field(d, "cause")]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(", ");
                let reason = field(d, "reason");
                if !what.is_empty() || !reason.is_empty() {
                    x.why = [what, reason]
                        .into_iter()
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>()
                        .join(": ");
                }
                if let Some(t) = d.get("transfer").filter(|t| t.is_object()) {
                    let n = |k: &str| t.get(k).and_then(Value::as_u64).unwrap_or(0);
                    x.transfer = format!(
                        "{} of {}",
                        bytes(n("fetched_bytes")),
                        bytes(n("full_bytes"))
                    );
                }
            }
            "device-rollback" | "device-cancel" => {
                x.recall = format!("sent back ({})", kind.trim_start_matches("device-"));
            }
            "device-recalled" => {
                x.recall = format!("{} (recall)", field(d, "recall"));
            }
            _ => {}
        }
    }
    let rows: Vec<Vec<String>> = by_rollout
        .iter()
        .rev()
        .map(|(id, x)| {
            vec![
                rollout_link(&id.to_string()),
                time(x.from),
                esc(&x.path.join(" → ")).to_string(),
                esc(&x.why).to_string(),
                esc(&x.transfer).to_string(),
                esc(&x.recall).to_string(),
                time(x.to),
            ]
        })
        .collect();
    table(
        "Executions, one per rollout (from the device's newest events)",
        &[
            "Rollout",
            "Started",
            "States",
            "Phase or cause",
            "Fetched",
            "After the abort",
            "Last change",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bytes_read_in_binary_units() {
        assert_eq!(bytes(17), "17 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(73_798_602_752), "68.7 GiB");
    }

    #[test]
    fn an_execution_is_one_row_with_its_path_cause_transfer_and_recall() {
        let events = json!({ "events": [
            { "kind": "device-state-changed", "rollout_id": 5, "at": 10,
              "details": { "from": "queued", "to": "notified" } },
            { "kind": "device-state-changed", "rollout_id": 5, "at": 11,
              "details": { "from": "notified", "to": "downloading" } },
            { "kind": "device-state-changed", "rollout_id": 5, "at": 12,
              "details": { "from": "installing", "to": "trial",
                           "transfer": { "fetched_bytes": 2048, "full_bytes": 4096 } } },
            { "kind": "device-state-changed", "rollout_id": 5, "at": 20,
              "details": { "from": "trial", "to": "rolled-back", "cause": "probe-timeout",
                           "reason": "no heartbeat" } },
            { "kind": "device-rollback", "rollout_id": 5, "at": 21, "details": { "to": "ab" } },
            { "kind": "device-recalled", "rollout_id": 5, "at": 22,
              "details": { "recall": "back", "to": "ab" } },
            { "kind": "device-registered", "at": 1, "details": {} },
        ]});
        let html = executions(&events);
        assert_eq!(html.matches("<tr><td>").count(), 1, "{html}");
        assert!(
            html.contains("queued → notified → downloading → trial → rolled-back"),
            "{html}"
        );
        assert!(html.contains("probe-timeout: no heartbeat"), "{html}");
        assert!(html.contains("2.0 KiB of 4.0 KiB"), "{html}");
        assert!(html.contains("back (recall)"), "{html}");
    }

    #[test]
    fn outcome_power_and_inventory_read_as_facts() {
        let html = outcome(&json!({ "state": "rolled-back", "cause": "probe-timeout",
            "detail": null, "release": "ab12", "rollout": 7, "generation": 3, "at": 0 }));
        assert!(html.contains("<dd>probe-timeout</dd>"), "{html}");
        assert!(html.contains(r##"<a href="/rollouts/7">#7</a>"##), "{html}");
        assert!(!html.contains("Detail"), "{html}");
        assert_eq!(outcome(&Value::Null), "<p>No update reported yet.</p>");
        let html =
            power(&json!({ "battery_percent": 80, "charging": false, "mains_online": null }));
        assert!(
            html.contains("battery 80% · not charging · on mains: not reported"),
            "{html}"
        );
        let html = inventory(&json!({ "os": "Debian", "memory_total": 1_073_741_824u64 }));
        assert!(
            html.contains("<dd>1.0 GiB</dd>") && html.contains("<dd>Debian</dd>"),
            "{html}"
        );
    }
}
