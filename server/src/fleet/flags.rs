//! Feature flags in the coordinator: the fleet's [`FlagSet`] and the flags last evaluated for
//! every device, kept next to the rollouts so that a change is stored and audited in the
//! coordinator's batch transaction and published after its commit (see the module docs of
//! [`crate::fleet`]).
//!
//! The decisions are core's ([`FlagSet::apply`], [`FlagDefinition::evaluate`]); this module
//! only answers core's filter predicate with core's [`Filter`] over the device rows (each distinct
//! filter parsed once) and remembers what each device was sent, so that a change publishes
//! only to the devices whose flags changed. The per-device payloads are not stored: they follow
//! from the stored set and the device rows, and are evaluated again at start.

use std::collections::HashMap;

use ota_core::flags::{
    Cause, DeviceFlags, FlagChange, FlagDefinition, FlagEdit, FlagError, FlagName, FlagSet, Rule,
};
use ota_core::time::Timestamp;
use ota_core::wire::{DeviceId, WireMessage};
use serde::{Deserialize, Serialize};

use super::{FleetError, percent};
use crate::db::{Db, DbError, DeviceRecord};
use ota_core::filter::Filter;

/// An operator's flag edit as the REST API takes it (`POST /api/v1/flags/{name}/set`).
/// Percentages are numbers (`5` is 5 %, two decimals count).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FlagSetRequest {
    /// The value for the devices the edit covers.
    pub on: bool,
    /// The share of matching devices, percent (sticky cohort); absent: all of them.
    #[serde(default)]
    pub percent: Option<f64>,
    /// The device filter of the rule; absent: every device.
    #[serde(default)]
    pub filter: Option<String>,
}

impl FlagSetRequest {
    /// `on` (or off) for every device: no percent, no filter.
    pub fn new(on: bool) -> Self {
        FlagSetRequest {
            on,
            percent: None,
            filter: None,
        }
    }

    /// The core edit, after checking that the filter parses and the percent is in range.
    pub fn edit(&self) -> Result<FlagEdit, FleetError> {
        let filter = match self.filter.as_deref().map(str::trim) {
            None => None,
            Some(text) => {
                Filter::parse(text).map_err(|e| FleetError::BadFilter(e.to_string()))?;
                Some(text.to_string())
            }
        };
        let percent = self
            .percent
            .map(|p| percent(p, "percent"))
            .transpose()
            .map_err(|e| match e {
                FleetError::BadSpec(message) => FleetError::BadFlag(message),
                other => other,
            })?;
        Ok(FlagEdit::Set {
            on: self.on,
            filter,
            percent,
        })
    }
}

/// A flag as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FlagView {
    /// The name.
    pub name: String,
    /// The value of a device no rule takes.
    pub default: bool,
    /// The kill switch: off everywhere.
    pub killed: bool,
    /// The fleet flag-state version of its last change.
    pub version: u64,
    /// The ordered rules.
    pub rules: Vec<RuleView>,
}

/// One rule of a [`FlagView`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RuleView {
    /// The device filter; `None` is every device.
    pub filter: Option<String>,
    /// The value of the devices the rule takes.
    pub on: bool,
    /// The share of matching devices, percent; `None` is all of them.
    pub percent: Option<f64>,
}

impl From<&FlagDefinition> for FlagView {
    fn from(def: &FlagDefinition) -> Self {
        FlagView {
            name: def.name.to_string(),
            default: def.default,
            killed: def.killed,
            version: def.version,
            rules: def.rules.iter().map(RuleView::from).collect(),
        }
    }
}

impl From<&Rule> for RuleView {
    fn from(rule: &Rule) -> Self {
        RuleView {
            filter: rule.filter.clone(),
            on: rule.on,
            percent: rule.percent.map(|p| f64::from(p.as_basis_points()) / 100.0),
        }
    }
}

/// One audit record of a flag as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FlagChangeView {
    /// The flag.
    pub flag: String,
    /// The fleet flag-state version the change produced.
    pub version: u64,
    /// When, unix seconds.
    pub at: u64,
    /// The operator.
    pub by: String,
    /// `created`, `updated`, `killed`, `revived` or `deleted`.
    pub kind: String,
    /// The definition before (absent: created).
    pub old: Option<FlagView>,
    /// The definition after (absent: deleted).
    pub new: Option<FlagView>,
}

impl From<&FlagChange> for FlagChangeView {
    fn from(c: &FlagChange) -> Self {
        FlagChangeView {
            flag: c.flag.as_str().to_string(),
            version: c.version,
            at: c.at.as_unix_secs(),
            by: c.by.clone(),
            kind: c.kind().name().to_string(),
            old: c.old.as_ref().map(FlagView::from),
            new: c.new.as_ref().map(FlagView::from),
        }
    }
}

/// How many devices have a flag on and off (by the flags last published to them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FlagCounts {
    /// Devices known.
    pub devices: u64,
    /// Devices with the flag on.
    pub on: u64,
    /// Devices with the flag off.
    pub off: u64,
}

/// The value of a flag for one device, and why (`GET /api/v1/flags/{name}?device=ID`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeviceExplain {
    /// The device.
    pub id: String,
    /// On or off.
    pub on: bool,
    /// `killed`, `rule N` (0-based) or `default`.
    pub cause: String,
}

/// One flag with its device counts (and optionally one device's evaluation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FlagDetail {
    /// The flag.
    pub flag: FlagView,
    /// Devices on and off.
    pub counts: FlagCounts,
    /// The asked device's evaluation.
    pub device: Option<DeviceExplain>,
}

/// Every flag, with the fleet flag-state version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FlagList {
    /// The fleet flag-state version.
    pub version: u64,
    /// Every flag, by name, with its counts.
    pub flags: Vec<FlagDetail>,
}

/// The answer to a flag edit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FlagEditResult {
    /// Whether anything changed (a repeated edit changes nothing and publishes nothing).
    pub changed: bool,
    /// The fleet flag-state version after the edit.
    pub version: u64,
    /// The flag after the edit (absent: deleted).
    pub flag: Option<FlagView>,
    /// Devices whose flags were published.
    pub published: u64,
}

/// A device and its evaluated flags to publish (retained, on the topic of the fleet's namespace)
/// after the batch commits.
pub(super) type Publish = (DeviceId, Vec<u8>);

/// The coordinator's flag state.
#[derive(Debug)]
pub(super) struct Flags {
    set: FlagSet,
    /// The flags last evaluated (and published, or to be published) per device.
    published: HashMap<String, DeviceFlags>,
    /// Parsed rule filters (`None`: it does not parse, so it matches nothing).
    filters: HashMap<String, Option<Filter>>,
}

impl Flags {
    /// No flags and no devices yet (until [`Flags::load`]).
    pub(super) fn new(now: Timestamp) -> Self {
        Flags {
            set: FlagSet::new(now),
            published: HashMap::new(),
            filters: HashMap::new(),
        }
    }

    /// Loads the stored set (a fresh one at `now` if none) and evaluates every device.
    pub(super) async fn load(db: &Db, now: Timestamp) -> Result<Self, DbError> {
        let stored = db.load_flag_set().await?;
        let mut flags = Flags::new(now);
        if let Some(set) = stored {
            flags.set = set;
        }
        for record in db.list_devices().await? {
            if let Some(evaluated) = flags.evaluate(&record) {
                flags.published.insert(record.id, evaluated);
            }
        }
        Ok(flags)
    }

    /// The fleet flag-state version.
    pub(super) fn version(&self) -> u64 {
        self.set.version()
    }

    /// Every device's flags as last evaluated (republished after a broker reconnect).
    pub(super) fn all(&self) -> Vec<Publish> {
        self.published.values().filter_map(publication).collect()
    }

    /// Applies an edit; on a change, patches every device's flags and returns the audit
    /// record with what to publish. `records` are the device rows, needed only when the
    /// changed flag has filtered rules ([`Flags::needs_records`]).
    pub(super) fn apply(
        &mut self,
        name: &FlagName,
        edit: FlagEdit,
        by: &str,
        now: Timestamp,
        records: Option<&[DeviceRecord]>,
    ) -> Result<Option<(FlagChange, Vec<Publish>)>, FleetError> {
        let Some(change) = self.set.apply(name, edit, by, now).map_err(flag_error)? else {
            return Ok(None);
        };
        let by_id: HashMap<&str, &DeviceRecord> = records
            .unwrap_or_default()
            .iter()
            .map(|r| (r.id.as_str(), r))
            .collect();
        let version = self.set.version();
        let def = self.set.get(name.as_str()).cloned();
        let mut out = Vec::new();
        for (id, flags) in &mut self.published {
            let value = match (&def, DeviceId::new(id)) {
                (Some(def), Ok(device)) => {
                    let record = by_id.get(id.as_str()).copied();
                    let filters = &mut self.filters;
                    Some(def.evaluate(&device, |f| record.is_some_and(|r| matches(filters, f, r))))
                }
                _ => None,
            };
            let before = flags.flags.get(name.as_str()).copied();
            if before == value {
                continue;
            }
            match value {
                Some(v) => flags.flags.insert(name.clone(), v),
                None => flags.flags.remove(name.as_str()),
            };
            flags.version = version;
            out.extend(publication(flags));
        }
        Ok(Some((change, out)))
    }

    /// Whether evaluating the flag after `edit` needs the device rows (it has filtered rules
    /// and is not killed). Asked before [`Flags::apply`], so the rows are read only then.
    pub(super) fn needs_records(&self, name: &str, edit: &FlagEdit) -> bool {
        let def = self.set.get(name);
        match edit {
            FlagEdit::Kill | FlagEdit::Delete => false,
            FlagEdit::Set { filter, .. } => {
                filter.is_some() || def.is_some_and(|d| d.rules.iter().any(|r| r.filter.is_some()))
            }
            _ => true,
        }
    }

    /// Evaluates one device again (it registered, or its labels, hardware or release changed).
    /// Returns its flags if they differ from what it was last sent, stamped with the current
    /// version; the caller renews the version first when [`Flags::needs_renewal`] says so.
    pub(super) fn reevaluate(&mut self, record: &DeviceRecord) -> Option<Publish> {
        let evaluated = self.evaluate(record)?;
        if self
            .published
            .get(&record.id)
            .is_some_and(|old| old.flags == evaluated.flags)
        {
            return None;
        }
        let out = publication(&evaluated);
        self.published.insert(record.id.clone(), evaluated);
        out
    }

    /// Whether `record`'s flags changed while it was already sent the current version: then
    /// the version must move forward first, or the device would ignore the new flags as a
    /// duplicate.
    pub(super) fn needs_renewal(&mut self, record: &DeviceRecord) -> bool {
        let Some(old) = self.published.get(&record.id) else {
            return false;
        };
        if old.version < self.set.version() {
            return false;
        }
        let old = old.flags.clone();
        self.evaluate(record).is_some_and(|e| e.flags != old)
    }

    /// Moves the fleet version forward without changing a flag; returns it.
    pub(super) fn renew(&mut self, now: Timestamp) -> Result<u64, DbError> {
        self.set
            .renew_version(now)
            .map_err(|e| DbError::Corrupt(format!("flag version: {e}")))
    }

    /// Flag `name` as the API shows it.
    pub(super) fn view(&self, name: &str) -> Option<FlagView> {
        self.set.get(name).map(FlagView::from)
    }

    /// Every flag with its counts.
    pub(super) fn list(&self) -> FlagList {
        FlagList {
            version: self.set.version(),
            flags: self.set.iter().map(|d| self.detail(d)).collect(),
        }
    }

    /// One flag with its counts, and `device`'s evaluation if given.
    pub(super) fn show(
        &mut self,
        name: &str,
        device: Option<&DeviceRecord>,
    ) -> Result<FlagDetail, FleetError> {
        let def = self
            .set
            .get(name)
            .cloned()
            .ok_or_else(|| FleetError::FlagNotFound(name.to_string()))?;
        let mut detail = self.detail(&def);
        if let Some(record) = device {
            let id = DeviceId::new(&record.id)
                .map_err(|e| FleetError::BadFlag(format!("device id: {e}")))?;
            let filters = &mut self.filters;
            let e = def.explain(&id, |f| matches(filters, f, record));
            let cause = match e.cause {
                Cause::Killed => "killed".to_string(),
                Cause::Rule(n) => format!("rule {n}"),
                _ => "default".to_string(),
            };
            detail.device = Some(DeviceExplain {
                id: record.id.clone(),
                on: e.on,
                cause,
            });
        }
        Ok(detail)
    }

    fn detail(&self, def: &FlagDefinition) -> FlagDetail {
        let devices = self.published.len() as u64;
        let on = self
            .published
            .values()
            .filter(|f| f.is_enabled(def.name.as_str()))
            .count() as u64;
        FlagDetail {
            flag: FlagView::from(def),
            counts: FlagCounts {
                devices,
                on,
                off: devices - on,
            },
            device: None,
        }
    }

    /// The whole set evaluated for `record` (`None`: its id is not a valid device id).
    fn evaluate(&mut self, record: &DeviceRecord) -> Option<DeviceFlags> {
        let id = DeviceId::new(&record.id).ok()?;
        let filters = &mut self.filters;
        Some(self.set.evaluate(&id, |f| matches(filters, f, record)))
    }
}

/// Whether `record` matches filter `text`, parsing it once.
fn matches(
    filters: &mut HashMap<String, Option<Filter>>,
    text: &str,
    record: &DeviceRecord,
) -> bool {
    filters
        .entry(text.to_string())
        .or_insert_with(|| Filter::parse(text).ok())
        .as_ref()
        .is_some_and(|f| f.matches(record))
}

/// The retained publication of `flags` (`None` for a device id that is not valid).
fn publication(flags: &DeviceFlags) -> Option<Publish> {
    let id = DeviceId::new(&flags.device_id).ok()?;
    Some((id, flags.to_cbor()))
}

/// A core flag error as a fleet error.
fn flag_error(e: FlagError) -> FleetError {
    match e {
        FlagError::UnknownFlag(name) => FleetError::FlagNotFound(name.to_string()),
        other => FleetError::BadFlag(other.to_string()),
    }
}
