//! The parts of a rollout's page that read as sentences and lists rather than data dumps: why
//! it aborted, the devices left on the release, and the spec it runs by.

use serde_json::Value;

use super::{device_link, field, table};
use crate::console::html::{esc, json_text};

/// `secs` as an operator reads a duration: `0 s`, `45 s`, `10 min`, `1 h 30 min`, `2 d 1 h`.
pub(crate) fn duration(secs: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400, "d"), (3_600, "h"), (60, "min"), (1, "s")];
    if secs == 0 {
        return "0 s".to_owned();
    }
    let mut left = secs;
    let mut parts = Vec::new();
    for (size, name) in UNITS {
        if left >= size {
            parts.push(format!("{} {name}", left / size));
            left %= size;
        }
        // Two units are precise enough for a timeout or a bake.
        if parts.len() == 2 {
            break;
        }
    }
    parts.join(" ")
}

/// Why the rollout aborted, as a sentence: who or what aborted it, and the message.
pub(crate) fn abort_reason(reason: &Value) -> String {
    let who = match reason.get("kind").and_then(Value::as_str) {
        Some("operator") => "Aborted by an operator",
        Some("failure-threshold") => "Aborted by the failure threshold",
        _ => "Aborted",
    };
    let message = field(reason, "message");
    let text = if message.is_empty() {
        format!("{who}.")
    } else {
        format!("{who}: {message}")
    };
    format!(
        r#"<h2>Why it aborted</h2><p id="abort-reason">{}</p>"#,
        esc(&text)
    )
}

/// The devices an abort left on the release (no rollback target they would accept), as a
/// table; empty when there is none.
pub(crate) fn left_on_release(list: &[Value]) -> String {
    if list.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|n| {
            let device = field(n, "device");
            vec![
                device_link(&device),
                esc(&field(n, "cause")).to_string(),
                esc(&field(n, "message")).to_string(),
            ]
        })
        .collect();
    format!(
        "<h2>Left on the release</h2><p>No release these devices would accept to go back to \
         (docs/rollouts.md, Abort): they keep running this one.</p>{}",
        table("No rollback target", &["Device", "Cause", "Detail"], &rows)
    )
}

/// The spec the rollout runs by, as a list of facts with units.
pub(crate) fn spec(spec: &Value) -> String {
    let number = |key: &str| spec.get(key).and_then(Value::as_f64);
    let secs = |key: &str| {
        spec.get(key)
            .and_then(Value::as_u64)
            .map_or_else(|| "-".to_owned(), duration)
    };
    let percent = |key: &str| number(key).map_or_else(|| "-".to_owned(), |p| format!("{p}%"));
    let waves = spec
        .get("waves")
        .and_then(Value::as_array)
        .map(|w| {
            w.iter()
                .map(|share| format!("{}%", json_number(share)))
                .collect::<Vec<_>>()
                .join(" → ")
        })
        .unwrap_or_default();
    let yes_no = |key: &str| match spec.get(key).and_then(Value::as_bool) {
        Some(true) => "yes",
        _ => "no",
    };
    let facts = [
        ("Waves (cumulative)", waves),
        ("Bake after each wave", secs("bake_secs")),
        ("Gate: least success", percent("success_min")),
        (
            "Abort above failures",
            format!(
                "{} (judged from {} executed devices)",
                percent("max_failure"),
                field(spec, "min_executed")
            ),
        ),
        (
            "Pace",
            format!("{} devices a minute", field(spec, "rate_per_minute")),
        ),
        (
            "Silent device times out after",
            secs("inactivity_timeout_secs"),
        ),
        ("Longest deferral", secs("max_deferral_secs")),
        ("Forced reinstall", yes_no("force_reinstall").to_owned()),
        ("Dry run", yes_no("dry_run").to_owned()),
        (
            "Left out (hardware class not in the release)",
            field(
                spec.get("excluded").unwrap_or(&Value::Null),
                "incompatible_hardware",
            ),
        ),
    ];
    let mut out = String::from(r#"<h2>Spec</h2><dl class="facts" id="rollout-spec">"#);
    for (name, value) in facts {
        out.push_str(&format!("<dt>{}</dt><dd>{}</dd>", esc(name), esc(&value)));
    }
    out.push_str("</dl>");
    out
}

/// A JSON number without a needless `.0` (`20.0` → `20`, `12.5` stays).
fn json_number(value: &Value) -> String {
    match value.as_f64() {
        Some(n) if n.fract() == 0.0 && n.abs() < 1e15 => format!("{}", n as i64),
        Some(n) => n.to_string(),
        None => json_text(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_read_as_an_operator_writes_them() {
        assert_eq!(duration(0), "0 s");
        assert_eq!(duration(45), "45 s");
        assert_eq!(duration(600), "10 min");
        assert_eq!(duration(5_400), "1 h 30 min");
        assert_eq!(duration(86_400), "1 d");
        assert_eq!(duration(90_061), "1 d 1 h");
    }

    #[test]
    fn an_abort_reads_as_a_sentence_and_is_escaped() {
        let html = abort_reason(&json!({ "kind": "operator", "message": "broken <canary>" }));
        assert!(
            html.contains("Aborted by an operator: broken &lt;canary&gt;"),
            "{html}"
        );
        let html = abort_reason(&json!({
            "kind": "failure-threshold", "failures": 3, "executed": 4, "max_failure": "5%",
            "message": "3 of 4 executed devices failed, above max-failure 5%" }));
        assert!(
            html.contains("Aborted by the failure threshold: 3 of 4"),
            "{html}"
        );
    }

    #[test]
    fn the_spec_lists_waves_and_durations_with_units() {
        let html = spec(&json!({
            "waves": [20.0, 100.0], "bake_secs": 600, "success_min": 95.0, "max_failure": 5.0,
            "min_executed": 10, "rate_per_minute": 200, "inactivity_timeout_secs": 1800,
            "max_deferral_secs": 86400, "force_reinstall": false, "dry_run": false,
            "excluded": { "incompatible_hardware": 2 } }));
        for part in [
            "20% → 100%",
            "10 min",
            "95%",
            "5% (judged from 10 executed devices)",
            "200 devices a minute",
            "30 min",
            "1 d",
            "<dd>2</dd>",
        ] {
            assert!(html.contains(part), "{part}: {html}");
        }
    }

    #[test]
    fn devices_left_on_the_release_are_a_table_linking_each_device() {
        assert_eq!(left_on_release(&[]), "");
        let html = left_on_release(&[json!(
            { "device": "gw 1", "cause": "untrusted", "message": "signed by a revoked key" }
        )]);
        assert!(
            html.contains(r#"<a href="/devices/gw%201">gw 1</a>"#),
            "{html}"
        );
        assert!(
            html.contains("<td>untrusted</td><td>signed by a revoked key</td>"),
            "{html}"
        );
    }
}
