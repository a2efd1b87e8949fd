//! `ota server status`: the replicas of a fleet server and who coordinates (issue 15,
//! `docs/ha.md`), from `GET /api/v1/replicas` of any replica.

use clap::Args;
use serde_json::Value;

use crate::api::{Api, ServerArgs};
use crate::error::CliError;
use crate::output::{out, print_json};

/// Help of `ota server status`.
const STATUS_HELP: &str = "\
Lists every replica that shares the fleet server's database: its id, role (leader, standby),
the lease epoch it leads with or last saw, its URL and how long ago its last heartbeat was
(database clock), then the coordinator lease itself. A replica that stopped cleanly is not
listed; one that died is listed until the leader forgets it ([ha] forget_replica_after_secs).

Exit status: 0 a replica holds a live lease; 5 no replica does (the list is printed all the
same); 1 the server refused the request (token); 3 the server is unreachable or failed.";

/// Arguments of `ota server status`.
#[derive(Debug, Args)]
#[command(after_help = STATUS_HELP)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Print the server's JSON answer.
    #[arg(long)]
    json: bool,
}

/// `ota server status`.
pub(crate) fn run(args: &StatusArgs) -> Result<(), CliError> {
    let api = Api::new(&args.server)?;
    let answer = api.get("/api/v1/replicas", &[])?;
    if args.json {
        print_json(&answer)?;
    } else {
        out(&render(&answer))?;
    }
    let lease = &answer["lease"];
    let live = lease["holder"].is_string() && lease["expires_in_ms"].as_i64().unwrap_or(0) > 0;
    if live {
        Ok(())
    } else {
        Err(CliError::NoLeader {
            epoch: lease["epoch"].as_i64().unwrap_or(0),
        })
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The table of replicas and the lease line.
fn render(answer: &Value) -> String {
    let mut rows = vec![[
        "REPLICA".to_string(),
        "ROLE".to_string(),
        "EPOCH".to_string(),
        "HEARTBEAT".to_string(),
        "URL".to_string(),
    ]];
    for r in answer["replicas"].as_array().into_iter().flatten() {
        let age = r["heartbeat_age_ms"].as_i64().unwrap_or(0).max(0);
        rows.push([
            text(&r["replica_id"]),
            text(&r["role"]),
            text(&r["epoch"]),
            format!("{}.{}s ago", age / 1000, (age % 1000) / 100),
            text(&r["advertise_url"]),
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut s = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        s.push_str(cells.join("  ").trim_end());
        s.push('\n');
    }
    let lease = &answer["lease"];
    let left = lease["expires_in_ms"].as_i64().unwrap_or(0);
    let state = if lease["holder"].is_string() && left > 0 {
        format!("held by {}, expires in {} ms", text(&lease["holder"]), left)
    } else {
        "no live holder".to_string()
    };
    s.push_str(&format!(
        "lease: epoch {}, {state} (answered by {})\n",
        text(&lease["epoch"]),
        text(&answer["answered_by"])
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue15_status_renders_replicas_and_the_lease() {
        let answer = serde_json::json!({
            "answered_by": "b",
            "lease": { "holder": "a", "epoch": 3, "advertise_url": "http://a:8080", "expires_in_ms": 7000 },
            "replicas": [
                { "replica_id": "a", "role": "leader", "epoch": 3, "advertise_url": "http://a:8080",
                  "heartbeat_at": 1, "heartbeat_age_ms": 1200 },
                { "replica_id": "b", "role": "standby", "epoch": 3, "advertise_url": null,
                  "heartbeat_at": 1, "heartbeat_age_ms": 300 }
            ]
        });
        assert_eq!(
            render(&answer),
            "REPLICA  ROLE     EPOCH  HEARTBEAT  URL\n\
             a        leader   3      1.2s ago   http://a:8080\n\
             b        standby  3      0.3s ago   -\n\
             lease: epoch 3, held by a, expires in 7000 ms (answered by b)\n"
        );
    }
}
