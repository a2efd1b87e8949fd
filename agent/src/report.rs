//! Read-only views for the command line: `ota-agent status` (the journal) and
//! `ota-agent check-power` (the power gate now).
//!
//! Neither view writes anything: they can run beside a running agent. The status is what the
//! agent last journaled (write-ahead), so it may be one step behind the running agent's memory.

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use ota_core::digest::Digest;
use ota_core::release::TrustState;
use ota_core::update::{InFlight, PersistedState, PowerPolicy, ReleaseInfo};
use ota_core::wire::{ExecutionState, PowerReading, UpdateOutcome, WireMessage};
use serde_json::{Value, json};

use crate::agent::AgentError;
use crate::config::AgentConfig;
use crate::journal::{BootCounter, Journal, JournalError};
use crate::power::{PowerError, PowerSupplies};
use crate::storage::{FsStorage, Storage};

/// What the journal says (see the [module documentation](self)).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StateReport {
    /// The data directory read.
    pub data_dir: PathBuf,
    /// The persisted state (`None`: the agent never ran here).
    pub state: Option<PersistedState>,
    /// The boot count.
    pub boot_count: u64,
    /// Complete artifacts on disk: (digest, size).
    pub cache_files: Vec<(Digest, u64)>,
    /// Partial downloads on disk: (digest, bytes).
    pub partials: Vec<(Digest, u64)>,
    /// The trust record (`<data_dir>/trust`, key rotation): `None` when absent (the configured
    /// keys are in force), else the rotated state or why it does not decode.
    pub trust: Option<Result<TrustState, String>>,
}

/// The trust line of the report.
fn trust_json(trust: Option<&Result<TrustState, String>>) -> Value {
    match trust {
        None => json!({ "source": "configured" }),
        Some(Ok(t)) => json!({
            "source": "rotated",
            "sequence": t.sequence(),
            "threshold": t.set().threshold(),
            "keys": t.set().keys().map(|(id, _)| id.to_string()).collect::<Vec<_>>(),
        }),
        Some(Err(e)) => json!({ "source": "damaged", "error": e }),
    }
}

fn trust_text(trust: Option<&Result<TrustState, String>>) -> String {
    match trust {
        None => "the configured keys".to_owned(),
        Some(Ok(t)) => format!(
            "rotated, sequence {}: {} of {} keys",
            t.sequence(),
            t.set().threshold(),
            t.set().keys().count()
        ),
        Some(Err(e)) => format!("DAMAGED record ({e}): the agent will not start"),
    }
}

fn ms_to_rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn release_json(r: &ReleaseInfo) -> Value {
    json!({
        "version": r.version,
        "digest": r.digest.to_string(),
        "security_version": r.security_version,
        "size": r.size,
    })
}

fn outcome_json(o: &UpdateOutcome) -> Value {
    json!({
        "generation": o.generation,
        "rollout_id": o.rollout_id,
        "digest": o.digest.map(|d| d.to_string()),
        "state": o.state.name(),
        "detail": state_detail(&o.state),
        "at": ms_to_rfc3339(o.at),
    })
}

/// A power reading in words: "battery 12%, charging, mains online" or "mains".
fn power_text(reading: &PowerReading) -> String {
    let mut parts = Vec::new();
    match reading.battery_percent {
        Some(p) => parts.push(format!("battery {p}%")),
        None => parts.push("no battery".to_owned()),
    }
    if reading.charging {
        parts.push("charging".to_owned());
    }
    parts.push(
        if reading.mains_online {
            "mains online"
        } else {
            "mains offline"
        }
        .to_owned(),
    );
    parts.join(", ")
}

/// The human part of a state (reason, cause...), empty when there is none.
pub fn state_detail(state: &ExecutionState) -> String {
    match state {
        ExecutionState::Rejected { cause, detail } => format!("{}: {detail}", cause.name()),
        ExecutionState::Failed { phase, reason } => format!("{}: {reason}", phase.name()),
        ExecutionState::RolledBack { reason, detail } => format!("{}: {detail}", reason.name()),
        ExecutionState::DeferredPower { reading } => power_text(reading),
        ExecutionState::DeferredWindow { opens_at } => match opens_at {
            Some(at) => format!("opens at {}", ms_to_rfc3339(*at)),
            None => "no window ever opens".to_owned(),
        },
        ExecutionState::DeferredDisk { needed, free } => {
            format!("needs {needed} bytes, {free} free")
        }
        ExecutionState::Downloading { done, total } => format!("{done}/{total} bytes"),
        _ => String::new(),
    }
}

fn short(d: &Digest) -> String {
    let s = d.to_string();
    s.get(..12).unwrap_or(&s).to_owned()
}

fn release_text(r: Option<&ReleaseInfo>) -> String {
    match r {
        Some(r) => format!(
            "{} (sha256 {}…, security version {}, {} bytes)",
            r.version,
            short(&r.digest),
            r.security_version,
            r.size
        ),
        None => "none".to_owned(),
    }
}

fn in_flight_name(f: &InFlight) -> &'static str {
    match f {
        InFlight::Pending { .. } => "preparing (gates or download)",
        InFlight::Installing { .. } => "installing",
        InFlight::Trial { .. } => "trial",
        InFlight::RollingBack { .. } => "rolling back",
        InFlight::Rebooting { outcome: None, .. } => "rebooting into the new slot",
        InFlight::Rebooting { .. } => "rebooting back to the old slot",
    }
}

fn digests_in(storage: &FsStorage, dir: &Path, suffix: &str) -> Vec<(Digest, u64)> {
    let names = storage.list(dir).unwrap_or_default();
    let mut out = Vec::new();
    for name in names {
        let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(suffix)) else {
            continue;
        };
        let Ok(digest) = hex.parse::<Digest>() else {
            continue;
        };
        if let Ok(Some(len)) = storage.len(&dir.join(&name)) {
            out.push((digest, len));
        }
    }
    out
}

impl StateReport {
    /// Reads the journal, the boot counter and the cache directory of `config.data_dir`.
    pub fn read(config: &AgentConfig) -> Result<Self, AgentError> {
        Self::read_dir(&config.data_dir)
    }

    /// Reads the data directory `data_dir` (nothing is created or changed).
    pub fn read_dir(data_dir: &Path) -> Result<Self, AgentError> {
        let fs = FsStorage;
        let mut report = StateReport {
            data_dir: data_dir.to_path_buf(),
            state: None,
            boot_count: 0,
            cache_files: Vec::new(),
            partials: Vec::new(),
            trust: None,
        };
        if !data_dir.is_dir() {
            return Ok(report);
        }
        let storage = FsStorage::shared();
        let journal = Journal::open(storage.clone(), data_dir)?;
        let bytes = match journal.load() {
            Ok(b) => b,
            Err(JournalError::Corrupt { .. }) => journal.load_previous()?,
            Err(e) => return Err(e.into()),
        };
        report.state = bytes
            .map(|b| PersistedState::from_cbor(&b).map_err(AgentError::State))
            .transpose()?;
        report.boot_count = BootCounter::open(storage, data_dir)?.current()?;
        let cache = data_dir.join("cache");
        report.cache_files = digests_in(&fs, &cache, "");
        report.partials = digests_in(&fs, &cache.join("partial"), ".part");
        report.trust = fs
            .read(&data_dir.join(crate::trust::FILE_NAME))
            .ok()
            .map(|bytes| TrustState::from_record(&bytes).map_err(|e| e.to_string()));
        Ok(report)
    }

    /// The release on trial, with its deadline (unix ms), if any.
    pub fn trial(&self) -> Option<(&ReleaseInfo, u64)> {
        match self.state.as_ref()?.in_flight.as_ref()? {
            InFlight::Trial {
                job, deadline_ms, ..
            } => Some((&job.release, *deadline_ms)),
            _ => None,
        }
    }

    /// The report as JSON (`ota-agent status --json`).
    pub fn to_json(&self) -> Value {
        let Some(s) = &self.state else {
            return json!({
                "data_dir": self.data_dir,
                "initialized": false,
                "boot_count": self.boot_count,
            });
        };
        let in_flight = s.in_flight.as_ref().map(|f| {
            let job = f.job();
            json!({
                "stage": in_flight_name(f),
                "generation": job.generation,
                "rollout_id": job.rollout_id,
                "release": release_json(&job.release),
            })
        });
        let cache: Vec<Value> = s
            .cache
            .iter()
            .map(|r| {
                let mut v = release_json(r);
                let present = self
                    .cache_files
                    .iter()
                    .any(|(d, len)| *d == r.digest && *len == r.size);
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("present".into(), json!(present));
                }
                v
            })
            .collect();
        json!({
            "data_dir": self.data_dir,
            "initialized": true,
            "running": s.running.as_ref().map(release_json),
            "known_good": s.known_good.as_ref().map(release_json),
            "trial": self.trial().map(|(r, deadline)| json!({
                "release": release_json(r),
                "deadline": ms_to_rfc3339(deadline),
            })),
            "in_flight": in_flight,
            "cache": cache,
            "partial_downloads": self.partials.iter().map(|(d, n)| json!({"digest": d.to_string(), "bytes": n})).collect::<Vec<_>>(),
            "last_result": s.last_result.as_ref().map(outcome_json),
            "last_generation": s.last_generation,
            "security_floor": s.security_floor,
            "boot_count": self.boot_count,
            "trust": trust_json(self.trust.as_ref()),
        })
    }

    /// The report for people (`ota-agent status`).
    pub fn to_text(&self) -> String {
        let Some(s) = &self.state else {
            return format!(
                "no agent state in {} (the agent has not run here yet)\n",
                self.data_dir.display()
            );
        };
        let mut out = String::new();
        let mut line = |k: &str, v: String| out.push_str(&format!("{k:<13}{v}\n"));
        line("running:", release_text(s.running.as_ref()));
        line("known-good:", release_text(s.known_good.as_ref()));
        line("trust:", trust_text(self.trust.as_ref()));
        line(
            "trial:",
            match self.trial() {
                Some((r, deadline)) => format!(
                    "{} until {}",
                    release_text(Some(r)),
                    ms_to_rfc3339(deadline)
                ),
                None => "none".to_owned(),
            },
        );
        line(
            "in flight:",
            match &s.in_flight {
                Some(f) => format!(
                    "{}: {} (generation {})",
                    in_flight_name(f),
                    f.job().release.version,
                    f.job().generation
                ),
                None => "nothing".to_owned(),
            },
        );
        let cache: Vec<String> = s
            .cache
            .iter()
            .map(|r| {
                let present = self
                    .cache_files
                    .iter()
                    .any(|(d, len)| *d == r.digest && *len == r.size);
                format!(
                    "{} ({}…){}",
                    r.version,
                    short(&r.digest),
                    if present { "" } else { " MISSING" }
                )
            })
            .collect();
        line(
            "cache:",
            if cache.is_empty() {
                "empty".to_owned()
            } else {
                cache.join(", ")
            },
        );
        for (d, n) in &self.partials {
            line("partial:", format!("{}… {n} bytes", short(d)));
        }
        line(
            "last result:",
            match &s.last_result {
                Some(o) => {
                    let detail = state_detail(&o.state);
                    format!(
                        "generation {} {}{}{} at {}",
                        o.generation,
                        o.state.name(),
                        if detail.is_empty() { "" } else { ": " },
                        detail,
                        ms_to_rfc3339(o.at)
                    )
                }
                None => "none".to_owned(),
            },
        );
        line(
            "counters:",
            format!(
                "last generation {}, security floor {}, boot {}",
                s.last_generation, s.security_floor, self.boot_count
            ),
        );
        out
    }
}

/// What the power gate sees now (see the [module documentation](self)).
#[derive(Debug)]
#[non_exhaustive]
pub struct PowerReport {
    /// The power-supply tree read.
    pub path: PathBuf,
    /// The reading, or why the tree cannot be read (the agent then assumes mains power).
    pub reading: Result<PowerReading, PowerError>,
    /// The configured policy.
    pub policy: PowerPolicy,
}

impl PowerReport {
    /// Reads the power supply configured in `config`.
    pub fn read(config: &AgentConfig) -> Self {
        let supplies = PowerSupplies::new(config.power.power_supply_path.clone());
        let reading = supplies.read().map(|r| PowerReading {
            battery_percent: r.battery_percent,
            charging: r.charging,
            mains_online: r.mains_online,
        });
        PowerReport {
            path: supplies.root().to_path_buf(),
            reading,
            policy: PowerPolicy {
                min_battery_percent: config.power.min_battery_percent,
                require_charging_below_percent: config.power.require_charging_below_percent,
                recheck_interval: config.power.recheck_interval,
            },
        }
    }

    /// The reading the agent uses (an unreadable tree counts as mains power).
    pub fn effective(&self) -> PowerReading {
        self.reading.as_ref().map_or(PowerReading::MAINS, |r| *r)
    }

    /// Whether an update would start now.
    pub fn would_proceed(&self) -> bool {
        self.policy.allows(&self.effective())
    }

    /// The report as JSON (`ota-agent check-power --json`).
    pub fn to_json(&self) -> Value {
        let r = self.effective();
        json!({
            "path": self.path,
            "readable": self.reading.is_ok(),
            "error": self.reading.as_ref().err().map(|e| e.to_string()),
            "battery_percent": r.battery_percent,
            "charging": r.charging,
            "mains_online": r.mains_online,
            "min_battery_percent": self.policy.min_battery_percent,
            "require_charging_below_percent": self.policy.require_charging_below_percent,
            "would_proceed": self.would_proceed(),
        })
    }

    /// The report for people (`ota-agent check-power`).
    pub fn to_text(&self) -> String {
        let r = self.effective();
        let mut out = String::new();
        if let Err(e) = &self.reading {
            out.push_str(&format!("power supply: {e} (assuming mains power)\n"));
        }
        out.push_str(&format!(
            "battery:      {}\n",
            match r.battery_percent {
                Some(p) => format!("{p}%"),
                None => "none (mains powered)".to_owned(),
            }
        ));
        out.push_str(&format!("charging:     {}\n", yes(r.charging)));
        out.push_str(&format!("mains online: {}\n", yes(r.mains_online)));
        out.push_str(&format!(
            "policy:       start only while charging below {}%, only with a charger below {}%\n",
            self.policy.min_battery_percent, self.policy.require_charging_below_percent
        ));
        out.push_str(&format!(
            "would proceed: {}\n",
            if self.would_proceed() {
                "yes"
            } else {
                "no (deferred-power)"
            }
        ));
        out
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}
