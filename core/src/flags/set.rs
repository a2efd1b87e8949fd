//! The fleet's flags, the operator's edits, and the audit record of every change.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use minicbor::decode::{self, Decoder};
use minicbor::encode::{self, Encoder, Write};
use minicbor::{Decode, Encode};

use super::definition::check_definition;
use super::{DeviceFlags, FlagDefinition, FlagError, FlagLimits, FlagName, Rule};
use crate::rollout::Ratio;
use crate::time::Timestamp;
use crate::wire::codec::bound;
use crate::wire::{DeviceId, PROTOCOL_VERSION, WireError, WireMessage};

/// An operator's edit of one flag (what `ota flag ...` asks for).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FlagEdit {
    /// `ota flag set NAME --on|--off [--percent P] [--filter EXPR]`.
    ///
    /// - Without filter and percent: the flag is simply `on` for every device (default `on`,
    ///   every rule removed).
    /// - With either: the rule with the same filter (`None` = every device) is replaced by
    ///   `{filter, on, percent}`, or appended after the others if there is none. A new flag
    ///   starts with default off. Widening `--percent 5` to `--percent 20` replaces the rule,
    ///   and the cohort is sticky.
    ///
    /// The kill switch is left as it is: a killed flag stays off until [`FlagEdit::Revive`].
    Set {
        /// The value for the devices this edit covers.
        on: bool,
        /// The rule's filter; `None` is every device.
        filter: Option<String>,
        /// The rule's share of matching devices; `None` is all of them.
        percent: Option<Ratio>,
    },
    /// Removes the rule with this filter (`None` = the rule without a filter).
    RemoveRule {
        /// The filter of the rule to remove.
        filter: Option<String>,
    },
    /// Replaces the default and the whole rule list (creates the flag if needed; for an API
    /// that edits rules in bulk). The kill switch is left as it is.
    Replace {
        /// The new default.
        default: bool,
        /// The new ordered rules.
        rules: Vec<Rule>,
    },
    /// `ota flag kill NAME`: off on every device, at once. Default and rules are kept.
    Kill,
    /// Clears the kill switch: default and rules apply again.
    Revive,
    /// Removes the flag: devices no longer have it, and applications read it as off.
    Delete,
}

crate::named_enum! {
    /// What a [`FlagChange`] did, derived from its old and new definitions. Exhaustive: the
    /// server maps every kind to an audit event kind of its own. Its name appears in logs and
    /// the CLI.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum FlagChangeKind {
        /// The flag did not exist.
        Created => "created",
        /// The definition changed (default or rules), the kill switch did not.
        Updated => "updated",
        /// The kill switch went on.
        Killed => "killed",
        /// The kill switch went off.
        Revived => "revived",
        /// The flag was removed.
        Deleted => "deleted",
    }
}

/// The audit record of one flag change: who, when, which flag, old → new definition. The
/// server stores every one (and shows them in `ota flag show` and `ota events`). CBOR map with
/// integer keys, key `0` the format version.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct FlagChange {
    /// Format version ([`PROTOCOL_VERSION`]).
    #[n(0)]
    pub v: u16,
    /// The fleet flag-state version this change produced.
    #[n(1)]
    pub version: u64,
    /// When the change was made.
    #[n(2)]
    pub at: Timestamp,
    /// The operator who made it.
    #[n(3)]
    pub by: String,
    /// The flag.
    #[n(4)]
    pub flag: FlagName,
    /// The definition before (`None`: the flag was created).
    #[n(5)]
    pub old: Option<FlagDefinition>,
    /// The definition after (`None`: the flag was deleted).
    #[n(6)]
    pub new: Option<FlagDefinition>,
}

impl FlagChange {
    /// What the change did.
    pub fn kind(&self) -> FlagChangeKind {
        match (&self.old, &self.new) {
            (None, _) => FlagChangeKind::Created,
            (Some(_), None) => FlagChangeKind::Deleted,
            (Some(old), Some(new)) if !old.killed && new.killed => FlagChangeKind::Killed,
            (Some(old), Some(new)) if old.killed && !new.killed => FlagChangeKind::Revived,
            (Some(_), Some(_)) => FlagChangeKind::Updated,
        }
    }
}

impl WireMessage for FlagChange {
    const NAME: &'static str = "flag change";
    const MAX_BYTES: usize = FlagLimits::MAX_CHANGE_BYTES;

    fn check_limits(&self) -> Result<(), WireError> {
        operator(&self.by).map_err(|_| WireError::LimitExceeded {
            what: "flag change operator",
            limit: FlagLimits::MAX_OPERATOR_BYTES,
        })?;
        if self.old.is_none() && self.new.is_none() {
            return Err(WireError::Malformed(Self::NAME));
        }
        for def in [&self.old, &self.new].into_iter().flatten() {
            if def.name != self.flag {
                return Err(WireError::Malformed(Self::NAME));
            }
            check_definition(def)?;
        }
        Ok(())
    }
}

/// Checks an operator name: 1 to [`FlagLimits::MAX_OPERATOR_BYTES`] bytes.
fn operator(by: &str) -> Result<(), FlagError> {
    if by.is_empty() || by.len() > FlagLimits::MAX_OPERATOR_BYTES {
        Err(FlagError::BadOperator {
            limit: FlagLimits::MAX_OPERATOR_BYTES,
        })
    } else {
        Ok(())
    }
}

/// The fleet's flags and its flag-state version.
///
/// The version grows with every change and never goes back: it is
/// `max(previous + 1, now in unix milliseconds)`, and a new set starts at `now`. Devices ignore
/// flags whose version is not above the one they applied, so the wall-clock floor lets a
/// server that lost its database (and starts a new set later) still be heard.
///
/// Persisted whole as CBOR ([`WireMessage::to_cbor`]: `{0: v, 1: version, 2: [definitions]}`,
/// definitions sorted by name), or as one [`FlagDefinition`] per row plus the version
/// ([`FlagSet::from_definitions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagSet {
    version: u64,
    flags: BTreeMap<FlagName, FlagDefinition>,
}

impl FlagSet {
    /// An empty set whose version starts at `now` (unix milliseconds).
    pub fn new(now: Timestamp) -> Self {
        FlagSet {
            version: now.as_unix_millis(),
            flags: BTreeMap::new(),
        }
    }

    /// Rebuilds a set from stored definitions and the stored set version. The version is raised
    /// to the newest definition's if that is higher. Every definition is validated.
    pub fn from_definitions(
        version: u64,
        definitions: impl IntoIterator<Item = FlagDefinition>,
    ) -> Result<Self, FlagError> {
        let mut set = FlagSet {
            version,
            flags: BTreeMap::new(),
        };
        for def in definitions {
            def.validate()?;
            if set.flags.len() >= FlagLimits::MAX_FLAGS {
                return Err(FlagError::TooManyFlags {
                    limit: FlagLimits::MAX_FLAGS,
                });
            }
            set.version = set.version.max(def.version);
            if let Some(dup) = set.flags.insert(def.name.clone(), def) {
                return Err(FlagError::DuplicateFlag(dup.name));
            }
        }
        Ok(set)
    }

    /// The fleet flag-state version (of the latest change).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Moves the version forward (to `max(version + 1, now)`) without changing a flag, and
    /// returns it. For a server that restored an older backup: devices ignore the restored
    /// flags until their version is above what they applied, so the server renews the version
    /// and republishes every device's flags.
    pub fn renew_version(&mut self, now: Timestamp) -> Result<u64, FlagError> {
        self.version = self.next_version(now)?;
        Ok(self.version)
    }

    /// The version of the next change: `max(version + 1, now)`.
    fn next_version(&self, now: Timestamp) -> Result<u64, FlagError> {
        Ok(self
            .version
            .checked_add(1)
            .ok_or(FlagError::VersionExhausted)?
            .max(now.as_unix_millis()))
    }

    /// The flag named `name`.
    pub fn get(&self, name: &str) -> Option<&FlagDefinition> {
        self.flags.get(name)
    }

    /// Every flag, by name.
    pub fn iter(&self) -> impl Iterator<Item = &FlagDefinition> {
        self.flags.values()
    }

    /// The number of flags.
    pub fn len(&self) -> usize {
        self.flags.len()
    }

    /// Whether there is no flag.
    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    /// Applies an operator's edit of flag `name`, made by `by` at `now`.
    ///
    /// Returns the audit record, or `None` if the edit changes nothing (setting what is already
    /// set, killing a killed flag): then the version does not move and nothing needs to be
    /// published, so retried requests are harmless. On error the set is unchanged.
    pub fn apply(
        &mut self,
        name: &FlagName,
        edit: FlagEdit,
        by: &str,
        now: Timestamp,
    ) -> Result<Option<FlagChange>, FlagError> {
        operator(by)?;
        let old = self.flags.get(name).cloned();
        let existing = || {
            old.clone()
                .ok_or_else(|| FlagError::UnknownFlag(name.clone()))
        };
        let fresh = || FlagDefinition::new(name.clone(), false);
        let new = match edit {
            FlagEdit::Set {
                on,
                filter,
                percent,
            } => {
                let mut def = old.clone().unwrap_or_else(fresh);
                if filter.is_none() && percent.is_none() {
                    def.default = on;
                    def.rules.clear();
                } else {
                    let rule = Rule {
                        filter,
                        on,
                        percent,
                    };
                    match def.rules.iter_mut().find(|r| r.filter == rule.filter) {
                        Some(r) => *r = rule,
                        None => def.rules.push(rule),
                    }
                }
                Some(def)
            }
            FlagEdit::RemoveRule { filter } => {
                let mut def = existing()?;
                let before = def.rules.len();
                def.rules.retain(|r| r.filter != filter);
                if def.rules.len() == before {
                    return Err(FlagError::NoSuchRule(name.clone()));
                }
                Some(def)
            }
            FlagEdit::Replace { default, rules } => {
                let mut def = old.clone().unwrap_or_else(fresh);
                def.default = default;
                def.rules = rules;
                Some(def)
            }
            FlagEdit::Kill => {
                let mut def = existing()?;
                def.killed = true;
                Some(def)
            }
            FlagEdit::Revive => {
                let mut def = existing()?;
                def.killed = false;
                Some(def)
            }
            FlagEdit::Delete => {
                existing()?;
                None
            }
        };
        if let Some(def) = &new {
            def.validate()?;
        }
        let unchanged = match (&old, &new) {
            (Some(old), Some(new)) => {
                old.default == new.default && old.rules == new.rules && old.killed == new.killed
            }
            _ => false,
        };
        if unchanged {
            return Ok(None);
        }
        if old.is_none() && self.flags.len() >= FlagLimits::MAX_FLAGS {
            return Err(FlagError::TooManyFlags {
                limit: FlagLimits::MAX_FLAGS,
            });
        }
        let version = self.next_version(now)?;
        let new = new.map(|mut def| {
            def.v = PROTOCOL_VERSION;
            def.version = version;
            def
        });
        match &new {
            Some(def) => {
                self.flags.insert(name.clone(), def.clone());
            }
            None => {
                self.flags.remove(name);
            }
        }
        self.version = version;
        Ok(Some(FlagChange {
            v: PROTOCOL_VERSION,
            version,
            at: now,
            by: String::from(by),
            flag: name.clone(),
            old,
            new,
        }))
    }

    /// The evaluated flags of `device` at the set's version. `matches(filter)` answers whether
    /// the device matches a rule's filter expression (the server's filter language; see
    /// [`FlagDefinition::evaluate`]).
    pub fn evaluate(
        &self,
        device: &DeviceId,
        mut matches: impl FnMut(&str) -> bool,
    ) -> DeviceFlags {
        let flags = self
            .flags
            .iter()
            .map(|(name, def)| (name.clone(), def.evaluate(device, &mut matches)))
            .collect();
        DeviceFlags {
            v: PROTOCOL_VERSION,
            device_id: String::from(device.as_str()),
            version: self.version,
            flags,
        }
    }
}

/// The persisted shape of a [`FlagSet`].
#[derive(Decode)]
#[cbor(map)]
struct SetRecord {
    #[n(0)]
    _v: u16,
    #[n(1)]
    version: u64,
    #[n(2)]
    #[cbor(default)]
    flags: Vec<FlagDefinition>,
}

impl<C> Encode<C> for FlagSet {
    fn encode<W: Write>(
        &self,
        e: &mut Encoder<W>,
        ctx: &mut C,
    ) -> Result<(), encode::Error<W::Error>> {
        e.map(3)?;
        e.u8(0)?.u16(PROTOCOL_VERSION)?;
        e.u8(1)?.u64(self.version)?;
        e.u8(2)?.array(self.flags.len() as u64)?;
        for def in self.flags.values() {
            def.encode(e, ctx)?;
        }
        Ok(())
    }
}

impl<'b, C> Decode<'b, C> for FlagSet {
    fn decode(d: &mut Decoder<'b>, ctx: &mut C) -> Result<Self, decode::Error> {
        let p = d.position();
        let record = SetRecord::decode(d, ctx)?;
        let mut flags = BTreeMap::new();
        let mut version = record.version;
        for def in record.flags {
            version = version.max(def.version);
            if flags.insert(def.name.clone(), def).is_some() {
                return Err(decode::Error::message("a flag is defined twice").at(p));
            }
        }
        Ok(FlagSet { version, flags })
    }
}

impl WireMessage for FlagSet {
    const NAME: &'static str = "flag set";
    const MAX_BYTES: usize = FlagLimits::MAX_SET_BYTES;

    fn check_limits(&self) -> Result<(), WireError> {
        bound("flags", self.flags.len(), FlagLimits::MAX_FLAGS)?;
        self.flags.values().try_for_each(check_definition)
    }
}
