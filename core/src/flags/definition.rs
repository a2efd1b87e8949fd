//! A flag's definition (default, ordered rules, kill switch) and its evaluation for one device.

use alloc::string::String;
use alloc::vec::Vec;

use minicbor::{Decode, Encode};

use super::{FlagError, FlagLimits, FlagName};
use crate::rollout::{Ratio, in_share};
use crate::wire::codec::bound;
use crate::wire::{DeviceId, PROTOCOL_VERSION, WireError, WireMessage};

/// One rule of a flag: devices that match `filter` **and** fall in the `percent` cohort get
/// `on`. Rules are tried in order; the first that takes a device decides.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Rule {
    /// The fleet server's device filter expression (its own language, e.g.
    /// `hw=gw-a and label:ring=canary`), evaluated by the server through the predicate given to
    /// [`FlagDefinition::evaluate`]. `None` matches every device without asking the predicate.
    #[n(0)]
    pub filter: Option<String>,
    /// The value a device taken by this rule gets.
    #[n(1)]
    pub on: bool,
    /// The share of matching devices this rule takes, chosen by the sticky cohort hash of
    /// (flag, device) ([`cohort_point`](super::cohort_point)). `None` is every matching device.
    #[n(2)]
    pub percent: Option<Ratio>,
}

impl Rule {
    /// A rule for every device (no filter, no percent).
    pub fn everyone(on: bool) -> Self {
        Rule {
            filter: None,
            on,
            percent: None,
        }
    }

    /// Checks the rule's filter and percent (a filter is 1 to
    /// [`FlagLimits::MAX_FILTER_BYTES`] bytes and not blank; a percent is at most 100 %).
    pub fn validate(&self) -> Result<(), FlagError> {
        if let Some(filter) = &self.filter {
            if filter.trim().is_empty() {
                return Err(FlagError::EmptyFilter);
            }
            if filter.len() > FlagLimits::MAX_FILTER_BYTES {
                return Err(FlagError::FilterTooLong {
                    len: filter.len(),
                    limit: FlagLimits::MAX_FILTER_BYTES,
                });
            }
        }
        if let Some(p) = self.percent
            && !p.is_valid()
        {
            return Err(FlagError::BadPercent(p));
        }
        Ok(())
    }
}

/// One feature flag of the fleet: a default, ordered rules, and a kill switch.
///
/// Evaluation for a device ([`evaluate`](Self::evaluate)):
///
/// 1. `killed` → **off**, whatever the rules say.
/// 2. The first rule whose filter matches the device **and** whose percent cohort holds it gives
///    its `on`. A device that matches the filter but lies outside the cohort falls through.
/// 3. No rule took the device → `default`.
///
/// Persisted by the server (one row per flag, or inside a [`FlagSet`](super::FlagSet)), and
/// carried whole in the [`FlagChange`](super::FlagChange) audit record. CBOR map with integer
/// keys, key `0` the format version.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct FlagDefinition {
    /// Format version ([`PROTOCOL_VERSION`]).
    #[n(0)]
    pub v: u16,
    /// The flag's name; also salts its cohort hash.
    #[n(1)]
    pub name: FlagName,
    /// The value of a device no rule takes.
    #[n(2)]
    pub default: bool,
    /// Ordered rules; the first that takes a device decides. At most
    /// [`FlagLimits::MAX_RULES`].
    #[n(3)]
    #[cbor(default)]
    pub rules: Vec<Rule>,
    /// The fleet flag-state version ([`FlagSet::version`](super::FlagSet::version)) at which this
    /// definition last changed.
    #[n(4)]
    pub version: u64,
    /// The kill switch: off on every device, at once, until revived. Default and rules are kept
    /// so that a revive restores them.
    #[n(5)]
    #[cbor(default)]
    pub killed: bool,
}

/// Why a device got the value it got (see [`FlagDefinition::explain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cause {
    /// The flag is killed: off.
    Killed,
    /// Rule number `n` (0-based) took the device.
    Rule(usize),
    /// No rule took the device: the default.
    Default,
}

/// The value of a flag for one device, and why ([`FlagDefinition::explain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evaluation {
    /// On or off.
    pub on: bool,
    /// Why.
    pub cause: Cause,
}

impl FlagDefinition {
    /// A new flag with no rules, not killed, at fleet version `0` (the [`FlagSet`](super::FlagSet)
    /// stamps the version when it stores the flag).
    pub fn new(name: FlagName, default: bool) -> Self {
        FlagDefinition {
            v: PROTOCOL_VERSION,
            name,
            default,
            rules: Vec::new(),
            version: 0,
            killed: false,
        }
    }

    /// Checks the rule count and every rule (see [`Rule::validate`]).
    pub fn validate(&self) -> Result<(), FlagError> {
        if self.rules.len() > FlagLimits::MAX_RULES {
            return Err(FlagError::TooManyRules {
                limit: FlagLimits::MAX_RULES,
            });
        }
        self.rules.iter().try_for_each(Rule::validate)
    }

    /// The flag's value for `device`. `matches(filter)` answers whether the device matches a
    /// rule's filter expression; it is called only for rules that have a filter, in order, and
    /// not at all once a rule took the device or when the flag is killed.
    pub fn evaluate(&self, device: &DeviceId, matches: impl FnMut(&str) -> bool) -> bool {
        self.explain(device, matches).on
    }

    /// Like [`evaluate`](Self::evaluate), with the reason (for `ota flag show NAME --device ID`).
    pub fn explain(&self, device: &DeviceId, mut matches: impl FnMut(&str) -> bool) -> Evaluation {
        if self.killed {
            return Evaluation {
                on: false,
                cause: Cause::Killed,
            };
        }
        // The cohort point is the same for every rule of the flag, so nested percents of
        // different rules pick nested device sets. It is hashed at most once, and only if needed.
        let mut point = None;
        for (i, rule) in self.rules.iter().enumerate() {
            if let Some(filter) = &rule.filter
                && !matches(filter)
            {
                continue;
            }
            let in_cohort = match rule.percent {
                None => true,
                Some(share) => {
                    let p = *point.get_or_insert_with(|| super::cohort_point(&self.name, device));
                    in_share(p, share)
                }
            };
            if in_cohort {
                return Evaluation {
                    on: rule.on,
                    cause: Cause::Rule(i),
                };
            }
        }
        Evaluation {
            on: self.default,
            cause: Cause::Default,
        }
    }

    /// Whether `device` lies in this flag's cohort of size `share` (independent of filters).
    pub fn in_cohort(&self, device: &DeviceId, share: Ratio) -> bool {
        in_share(super::cohort_point(&self.name, device), share)
    }
}

/// The definition's bounds, as [`WireError`]s (a bad name already fails the decode).
pub(super) fn check_definition(def: &FlagDefinition) -> Result<(), WireError> {
    if def.v == 0 || def.v > PROTOCOL_VERSION {
        return Err(WireError::UnsupportedVersion {
            what: FlagDefinition::NAME,
            found: def.v,
            supported: PROTOCOL_VERSION,
        });
    }
    bound("flag rules", def.rules.len(), FlagLimits::MAX_RULES)?;
    for rule in &def.rules {
        if let Some(filter) = &rule.filter {
            bound(
                "flag rule filter",
                filter.len(),
                FlagLimits::MAX_FILTER_BYTES,
            )?;
        }
        if let Some(p) = rule.percent {
            bound(
                "flag rule percent (basis points)",
                usize::from(p.as_basis_points()),
                usize::from(Ratio::SCALE),
            )?;
        }
    }
    Ok(())
}

impl WireMessage for FlagDefinition {
    const NAME: &'static str = "flag definition";
    const MAX_BYTES: usize = FlagLimits::MAX_DEFINITION_BYTES;

    fn check_limits(&self) -> Result<(), WireError> {
        check_definition(self)
    }
}
