//! Why an operator's flag change was refused.

use super::FlagName;
use crate::rollout::Ratio;

/// Why [`FlagSet::apply`](super::FlagSet::apply) (or building a [`FlagSet`](super::FlagSet) from
/// stored definitions) refused a change. One variant per cause. Decoding errors are
/// [`WireError`](crate::wire::WireError)s, flag-file errors
/// [`FlagFileError`](super::FlagFileError)s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FlagError {
    /// No flag of that name exists (kill, revive, delete or remove-rule of an unknown flag).
    #[error("no flag named {0}")]
    UnknownFlag(FlagName),
    /// The flag has no rule with the given filter (remove-rule).
    #[error("flag {0} has no rule with that filter")]
    NoSuchRule(FlagName),
    /// The fleet already has [`FlagLimits::MAX_FLAGS`](super::FlagLimits::MAX_FLAGS) flags.
    #[error("a fleet has at most {limit} flags")]
    TooManyFlags {
        /// The limit.
        limit: usize,
    },
    /// The same flag name appears twice among stored definitions.
    #[error("flag {0} is defined twice")]
    DuplicateFlag(FlagName),
    /// A flag would have more than [`FlagLimits::MAX_RULES`](super::FlagLimits::MAX_RULES) rules.
    #[error("a flag has at most {limit} rules")]
    TooManyRules {
        /// The limit.
        limit: usize,
    },
    /// A rule's filter is empty or blank (leave the filter out to mean every device).
    #[error("a rule's filter may not be empty (leave it out to mean every device)")]
    EmptyFilter,
    /// A rule's filter is longer than
    /// [`FlagLimits::MAX_FILTER_BYTES`](super::FlagLimits::MAX_FILTER_BYTES).
    #[error("a rule's filter is at most {limit} bytes, got {len}")]
    FilterTooLong {
        /// The filter's length in bytes.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A rule's percent is over 100 %.
    #[error("a rule's percent is at most 100%, got {0}")]
    BadPercent(Ratio),
    /// The operator name is empty or longer than
    /// [`FlagLimits::MAX_OPERATOR_BYTES`](super::FlagLimits::MAX_OPERATOR_BYTES).
    #[error("the operator name must be 1 to {limit} bytes")]
    BadOperator {
        /// The limit.
        limit: usize,
    },
    /// The fleet flag-state version cannot grow any more (`u64::MAX`; only a corrupt store
    /// gets there).
    #[error("the flag-state version is exhausted")]
    VersionExhausted,
}
