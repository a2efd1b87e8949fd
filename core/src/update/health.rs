//! Health after the commit (issue 17): with `watch_health`, an idle machine probes the running
//! release once per heartbeat interval and every heartbeat carries the latest answer, so the
//! fleet server's bake gate watches health, not just presence.
//!
//! | phase | input | effect |
//! |---|---|---|
//! | idle, connected, running known, no check in flight | timer `Heartbeat` | `CheckHealth` |
//! | idle | `handle_health` | the answer becomes the reported health |
//! | trial | `handle_probe` | the trial's answer becomes the reported health |
//! | any other | `handle_health` | ignored (a job started meanwhile) |
//! | installing, rolling back | — | reported health cleared (a new release is coming) |

use super::machine::UpdateMachine;
use super::state::Phase;
use super::{Action, ProbeResult, Timestamp};

impl UpdateMachine {
    /// Starts a health check of the running release when idle and watching health, unless one
    /// is in flight.
    pub(super) fn check_health(&mut self) {
        if !self.config.watch_health || self.health_check_running {
            return;
        }
        let (Phase::Idle, Some(running)) = (&self.phase, &self.running) else {
            return;
        };
        let digest = running.digest;
        self.health_check_running = true;
        self.actions.push_back(Action::CheckHealth { digest });
    }

    /// The probe's answer to [`Action::CheckHealth`]: the health the next heartbeats report
    /// (ignored if a job started since: its trial probes the release afresh).
    pub fn handle_health(&mut self, result: ProbeResult, _now: Timestamp) {
        self.health_check_running = false;
        if self.phase == Phase::Idle {
            self.note_health(&result);
        }
    }

    /// Records a probe answer as the reported health, when watching health.
    pub(super) fn note_health(&mut self, result: &ProbeResult) {
        if self.config.watch_health {
            self.health = Some(matches!(result, ProbeResult::Healthy));
        }
    }
}
