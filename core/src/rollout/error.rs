//! The one error type of the rollout planner.

use crate::wire::DeviceId;

/// Why the planner refused a spec, an input or persisted bytes. One variant per cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RolloutError {
    /// The rollout id is empty or longer than the wire's id limit.
    #[error("a rollout id is 1 to 128 bytes")]
    BadRolloutId,
    /// An operator name is empty or longer than the wire's id limit.
    #[error("an operator name is 1 to 128 bytes")]
    BadOperator,
    /// The spec has no wave.
    #[error("a rollout needs at least one wave")]
    NoWaves,
    /// The spec has more waves than [`crate::rollout::MAX_WAVES`].
    #[error("{count} waves exceed the limit of {max}")]
    TooManyWaves {
        /// Waves in the spec.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A wave is 0 %, over 100 %, or not larger than the wave before it.
    #[error(
        "wave {} is not larger than the wave before it (or is over 100%)",
        index + 1
    )]
    WavesNotIncreasing {
        /// The offending wave's 0-based index (the message numbers waves from 1, like every
        /// human output).
        index: usize,
    },
    /// The last wave is not 100 %, so some targets would never be updated.
    #[error("the last wave must be 100%")]
    LastWaveNotFull,
    /// A success or failure ratio is over 100 %.
    #[error("{0} is over 100%")]
    RatioOutOfRange(&'static str),
    /// The notification rate is zero devices per minute.
    #[error("the notification rate must be at least one device per minute")]
    ZeroRate,
    /// The inactivity timeout is zero.
    #[error("the inactivity timeout must not be zero")]
    ZeroInactivityTimeout,
    /// The same device appears twice among the targets.
    #[error("device {0} is targeted twice")]
    DuplicateDevice(DeviceId),
    /// More targets than the planner can index (`u32::MAX`).
    #[error("too many target devices")]
    TooManyDevices,
    /// The device is not a target of this rollout.
    #[error("device {0} is not a target of this rollout")]
    UnknownDevice(DeviceId),
    /// A device reported a state only the planner may set (`queued`, `timed-out`).
    #[error("a device may not report the state {0}")]
    NotReportable(&'static str),
    /// The creator of a forced-reinstall rollout tried to approve it: a second operator must.
    #[error("a forced reinstall must be approved by an operator other than its creator")]
    SelfApproval,
    /// The operation is not possible in the rollout's current state.
    #[error("cannot {operation} a rollout that is {state}")]
    InvalidOperation {
        /// What was asked (`approve`, `pause`, ...).
        operation: &'static str,
        /// The rollout's state name.
        state: &'static str,
    },
    /// Persisted planner bytes are not a planner state this build understands.
    #[error("corrupt rollout state: {0}")]
    Corrupt(&'static str),
    /// Persisted planner bytes are of a newer (or unknown) format version.
    #[error("unsupported rollout state version {0}")]
    UnsupportedVersion(u16),
}
