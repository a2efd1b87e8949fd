//! `ota demo`: the whole system in one process, no services, no set-up.
//!
//! It starts the fleet server on embedded defaults (in-process MQTT broker on a free port,
//! SQLite and artifacts in a temporary directory) and N real agents with simulated batteries
//! and applications (`ota_demo::lab`), then plays the story of `ota_demo::story`: a rollout of
//! v2 in four health-gated waves with low-battery devices deferring, an identical redeploy
//! that downloads nothing, and a broken v3 that the canary rolls back and the failure
//! threshold aborts, and a feature flag turned on for 10 %, widened and killed. It ends with a summary table and exits 0 only if every step behaved as
//! described.

use std::time::Duration;

use clap::Args;
use ota_demo::lab::{Lab, LabOptions};
use ota_demo::story::{self, StoryOptions};
use tracing_subscriber::filter::Targets;

use crate::error::CliError;

/// Arguments of `ota demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// How many devices (real agents in this process, each in its own directory).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(10..=500))]
    devices: u16,
    /// How long a new release has to prove healthy on a device before it falls back
    /// (shortened from the agents' production default of 10m so the story runs in under a
    /// minute).
    #[arg(long, value_name = "DURATION", default_value = "4s", value_parser = humantime::parse_duration)]
    trial_timeout: Duration,
    /// Bake time of every wave (whole seconds; a real rollout bakes for minutes or hours).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    bake: Duration,
    /// Size of every application image, in KiB.
    #[arg(long, value_name = "KIB", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=65536))]
    image_kib: u32,
    /// Keep the demo's directory (server database, artifacts, every device's config, journal
    /// and cache) and print where it is.
    #[arg(long)]
    keep: bool,
    /// Print the summary as JSON on stdout (no live view).
    #[arg(long)]
    json: bool,
    /// After the story, keep the fleet server and every device running and print the operator
    /// console's URL and the demo operators' tokens; Ctrl-C stops it (then the summary).
    #[arg(long)]
    ui: bool,
}

/// How long the runtime's tasks (agents, server) get to stop before the demo's directory is
/// removed.
const STOP_PATIENCE: Duration = Duration::from_secs(10);

/// `ota demo`. Everything it writes lives in one temporary directory, removed when the demo
/// ends — completed, failed or interrupted by Ctrl-C — after every task of its runtime has
/// stopped (a device still writing while the directory is removed would leave files behind);
/// `--keep` keeps it.
pub(crate) fn run(args: &DemoArgs) -> Result<(), CliError> {
    // rumqttd logs every closed connection as an error: the story closes fifty of them.
    crate::server_cmd::init_logs(
        Targets::new()
            .with_default(tracing::Level::ERROR)
            .with_target("rumqttd", tracing::level_filters::LevelFilter::OFF),
    );
    let root = tempfile::Builder::new()
        .prefix("ota-demo.")
        .tempdir()
        .map_err(|e| CliError::Demo(format!("cannot create a temporary directory: {e}")))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Demo(format!("cannot start the runtime: {e}")))?;
    let result = runtime.block_on(async {
        tokio::select! {
            result = play(args, root.path()) => result,
            // With --ui, play itself waits for Ctrl-C (after the story it means "stop").
            _ = tokio::signal::ctrl_c(), if !args.ui => Err(CliError::Demo("interrupted".to_owned())),
        }
    });
    runtime.shutdown_timeout(STOP_PATIENCE);
    if args.keep {
        let kept = root.keep();
        if result.is_err() {
            eprintln!("kept the demo's directory: {}", kept.display());
        }
        return result;
    }
    let path = root.path().to_path_buf();
    let removed = root.close().map_err(|e| {
        CliError::Demo(format!(
            "cannot remove the demo's directory {}: {e}",
            path.display()
        ))
    });
    result.and(removed)
}

/// `--ui`: prints where the console is and who may sign in, then waits for Ctrl-C.
async fn keep_serving(server: &str) {
    use ota_demo::lab::{APPROVER, OPERATOR, STEERER};
    // On stderr, so `--json` keeps stdout to the summary.
    eprintln!(
        "\nthe fleet server and every device keep running: the operator console is at {server}/"
    );
    for (role, (name, token)) in [
        ("admin", OPERATOR),
        ("approver", APPROVER),
        ("operator", STEERER),
    ] {
        eprintln!("  sign in as {name} ({role}) with the token {token}");
    }
    eprintln!("press Ctrl-C to stop the demo");
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("cannot wait for Ctrl-C ({e}); stopping the demo");
    }
}

async fn play(args: &DemoArgs, parent: &std::path::Path) -> Result<(), CliError> {
    let say = |line: &str| {
        if !args.json {
            println!("{line}");
        }
    };
    let started = ota_server::clock::monotonic_now();
    let opts = LabOptions {
        devices: usize::from(args.devices),
        trial_timeout: args.trial_timeout,
        image_size: args.image_kib as usize * 1024,
        battery: story::battery,
        parent_dir: Some(parent.to_path_buf()),
        ..LabOptions::default()
    };
    say(&format!(
        "ota demo: starting the fleet server (embedded broker, SQLite, local files) and {} real agents...",
        opts.devices
    ));
    let mut lab = Lab::start(opts)
        .await
        .map_err(|e| CliError::Demo(e.to_string()))?;
    let server = lab.server().map(|s| s.base_url()).unwrap_or_default();
    say(&format!(
        "  fleet server {server}, {} devices online after {:.1} s; data in {}",
        lab.devices().len(),
        started.elapsed().as_secs_f64(),
        lab.dir().display()
    ));
    say(
        "  every device runs 1.0.0; every tenth device starts with a low battery (12 %, unplugged)\n",
    );
    let story_opts = StoryOptions {
        bake: args.bake,
        quiet: args.json,
        ..StoryOptions::default()
    };
    let result = if args.ui {
        tokio::select! {
            result = story::run(&mut lab, &story_opts) => result,
            _ = tokio::signal::ctrl_c() => return Err(CliError::Demo("interrupted".to_owned())),
        }
    } else {
        story::run(&mut lab, &story_opts).await
    };
    if args.ui {
        keep_serving(&server).await;
    }
    let stopped = lab.shutdown().await;
    let dir = args.keep.then(|| lab.keep_dir());
    let reports = result.map_err(|e| CliError::Demo(e.to_string()))?;
    stopped.map_err(|e| CliError::Demo(e.to_string()))?;
    let problems: Vec<String> = reports
        .iter()
        .flat_map(|r| r.problems.iter().map(move |p| format!("{}: {p}", r.name)))
        .collect();
    if args.json {
        let steps: Vec<serde_json::Value> = reports
            .iter()
            .map(|r| {
                serde_json::json!({
                    "step": r.name, "rollout": r.rollout, "status": r.status,
                    "devices": r.devices, "deploys": r.deploys, "skipped_identical": r.skipped,
                    "deferred": r.deferred, "failed": r.failed, "rolled_back": r.rolled_back,
                    "bytes_downloaded": r.bytes, "fetched_bytes": r.transfer.0,
                    "full_bytes": r.transfer.1,
                    "saved_bytes": r.transfer.1.saturating_sub(r.transfer.0),
                    "seconds": r.elapsed.as_secs_f64(),
                    "ok": r.ok(), "problems": r.problems, "detail": r.detail,
                })
            })
            .collect();
        let out = serde_json::json!({ "ok": problems.is_empty(), "steps": steps,
            "seconds": started.elapsed().as_secs_f64() });
        println!("{out}");
    } else {
        println!("\n{}", story::table(&reports));
        println!("total {:.1} s", started.elapsed().as_secs_f64());
        if let Some(dir) = &dir {
            println!("kept the demo's directory: {}", dir.display());
        }
    }
    if problems.is_empty() {
        say("demo: every step behaved as described");
        Ok(())
    } else {
        Err(CliError::DemoDiffered(problems.join("; ")))
    }
}
