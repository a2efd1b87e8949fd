//! Following a rollout: polls its view and shows it live — one progress bar per wave on a
//! terminal (indicatif), one line per change otherwise.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use ota_core::fleet::RolloutId;
use ota_server::fleet::RolloutView;
use serde_json::{Value, json};

use crate::LabError;
use crate::api::Api;

/// How often a followed rollout is read.
pub const POLL: Duration = Duration::from_millis(200);

/// Whether rollout `r` is over: its status no longer holds its targets (completed or aborted;
/// a dry run never did).
pub fn is_final(r: &RolloutView) -> bool {
    !r.status.is_active()
}

/// The non-zero counts of `counts` (a rollout view's `totals` or a wave's `counts`), as
/// `succeeded 3, trial 2`; failures by phase as `failed:trial 1`.
pub fn summary(counts: &Value) -> String {
    let mut parts: Vec<String> = ota_core::rollout::STATE_NAMES
        .iter()
        .filter_map(|k| {
            let n = counts[*k].as_u64().unwrap_or(0);
            (n > 0).then(|| format!("{k} {n}"))
        })
        .collect();
    if let Some(failed) = counts["failed"].as_object() {
        for (phase, n) in failed {
            let n = n.as_u64().unwrap_or(0);
            if n > 0 {
                parts.push(format!("failed:{phase} {n}"));
            }
        }
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

/// The live view of one rollout.
#[derive(Debug)]
pub struct LiveView {
    title: String,
    bars: Option<(MultiProgress, ProgressBar, Vec<ProgressBar>)>,
    last_line: String,
    quiet: bool,
}

impl LiveView {
    /// A view titled `title`: bars when stderr is a terminal (and not `quiet`), lines on
    /// stdout otherwise (none when `quiet`).
    pub fn new(title: impl Into<String>, quiet: bool) -> Self {
        let bars = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let head = multi.add(ProgressBar::new_spinner());
            head.enable_steady_tick(Duration::from_millis(120));
            (multi, head, Vec::new())
        });
        LiveView {
            title: title.into(),
            bars,
            last_line: String::new(),
            quiet,
        }
    }

    /// Shows the rollout view `r` (`GET /api/v1/rollouts/{id}`'s `rollout`).
    pub fn update(&mut self, r: &RolloutView) {
        let wave = r
            .current_wave
            .map(|w| format!(" wave {}", w + 1))
            .unwrap_or_default();
        let phase = r.phase.map(|p| format!(" ({p})")).unwrap_or_default();
        let head = format!(
            "{}: rollout {} {}{wave}{phase}: {}",
            self.title,
            r.id,
            r.status,
            summary(&r.totals)
        );
        let waves = &r.waves;
        match &mut self.bars {
            Some((multi, spinner, bars)) => {
                spinner.set_message(head);
                let style = ProgressStyle::with_template(
                    "  {prefix:<18} [{bar:30.green/white}] {pos:>4}/{len:<4} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                while bars.len() < waves.len() {
                    let bar = multi.add(ProgressBar::new(0));
                    bar.set_style(style.clone());
                    bars.push(bar);
                }
                for (bar, w) in bars.iter().zip(waves) {
                    let members = u64::from(w.cumulative_members);
                    bar.set_prefix(format!("wave {} ({}%)", w.index + 1, json!(w.share)));
                    bar.set_length(members);
                    let started = w.started_at.is_some();
                    bar.set_position(if started {
                        members.saturating_sub(u64::from(w.unsettled))
                    } else {
                        0
                    });
                    bar.set_message(if started {
                        summary(&w.counts)
                    } else {
                        "not started".into()
                    });
                }
            }
            None if !self.quiet && head != self.last_line => {
                println!("{head}");
                self.last_line = head;
            }
            None => {}
        }
    }

    /// Prints a line of commentary below the view (nothing when quiet).
    pub fn note(&self, line: &str) {
        match &self.bars {
            Some((multi, _, _)) => {
                let _ = multi.println(format!("  {line}"));
            }
            None if !self.quiet => println!("  {line}"),
            None => {}
        }
    }

    /// Ends the view (the bars stay on screen as they last were).
    pub fn finish(&mut self) {
        if let Some((_, spinner, bars)) = &self.bars {
            spinner.finish();
            for bar in bars {
                bar.finish();
            }
        }
    }
}

/// Reads rollout `id` every [`POLL`] and shows it in `view`, until `done` holds for its view
/// or `patience` runs out; answers the last view.
pub async fn follow(
    api: &Api,
    id: RolloutId,
    view: &mut LiveView,
    patience: Duration,
    mut done: impl FnMut(&RolloutView) -> bool,
) -> Result<RolloutView, LabError> {
    let deadline = ota_server::clock::monotonic_now() + patience;
    loop {
        let r = api.view(id).await?;
        view.update(&r);
        if done(&r) {
            return Ok(r);
        }
        if ota_server::clock::monotonic_now() > deadline {
            return Err(LabError::Timeout(format!(
                "rollout {id} is still {} after {patience:?}",
                r.status
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}
