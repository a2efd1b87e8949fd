//! Desired-state generations: which ones a device may acknowledge, and the next one to issue.
//!
//! The server issues each device's generations one by one (1, 2, 3, ...; the `desired` table
//! keeps the last one). A device's report can only acknowledge a generation the server issued
//! to it: anything above the last one issued is a forged or corrupt value and the report is
//! refused at the edge (`mqtt-rejected`), so no network value ever reaches the arithmetic or
//! the database. Generations stop at [`MAX_GENERATION`] (the database stores them as a signed
//! 64-bit integer): past it, no desired state can be issued and the caller is told so.
//!
//! A refused report still tells one thing: how far the device's watermark moved. A device
//! ignores every desired state at or below the last generation it acted on, so when it acted
//! on one the server did not issue (injected around the server by anyone with its MQTT rights,
//! or issued before the server's database was restored from an older backup), the next
//! generation issued to it must be above that. [`ahead`] accepts such a value only within
//! [`MAX_GENERATION_STEP`] of the last one issued, the most an agent accepts in one step, so a
//! forged value can raise a device's own generations by at most that much per report (its
//! message budget bounds the reports) and never reaches [`MAX_GENERATION`] in practice.

use ota_core::update::MAX_GENERATION_STEP;

/// The highest generation the server issues: the database column is a signed 64-bit integer.
pub(super) const MAX_GENERATION: u64 = i64::MAX as u64;

/// Why a generation is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(super) enum GenerationError {
    /// A device acknowledges a generation the server never issued to it.
    #[error(
        "generation {reported} was never issued to this device (the last one issued is {issued})"
    )]
    NotIssued {
        /// The generation the device reported.
        reported: u64,
        /// The last generation the server issued to it.
        issued: u64,
    },
    /// Every generation up to [`MAX_GENERATION`] was issued to this device.
    #[error("the device's desired-state generations are exhausted ({0} issued)")]
    Exhausted(u64),
}

/// Accepts `reported` if the server issued it: at most `issued`, the last generation issued
/// to the device (0: none yet).
pub(super) fn check_acknowledged(reported: u64, issued: u64) -> Result<(), GenerationError> {
    if reported > issued {
        return Err(GenerationError::NotIssued { reported, issued });
    }
    Ok(())
}

/// The device's watermark, when `reported` (refused by [`check_acknowledged`]) is above
/// `issued` by at most [`MAX_GENERATION_STEP`] and leaves room to issue above it: the next
/// desired state for the device is issued above this value. `None` otherwise (the report is
/// only refused).
pub(super) fn ahead(reported: u64, issued: u64) -> Option<u64> {
    (reported > issued && reported - issued <= MAX_GENERATION_STEP && reported < MAX_GENERATION)
        .then_some(reported)
}

/// The generation after `issued`, or [`GenerationError::Exhausted`] past [`MAX_GENERATION`].
pub(super) fn next(issued: u64) -> Result<u64, GenerationError> {
    issued
        .checked_add(1)
        .filter(|g| *g <= MAX_GENERATION)
        .ok_or(GenerationError::Exhausted(issued))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue19_only_issued_generations_are_acknowledged() {
        assert_eq!(check_acknowledged(0, 0), Ok(()));
        assert_eq!(check_acknowledged(7, 7), Ok(()));
        assert_eq!(check_acknowledged(3, 7), Ok(()));
        for reported in [8, 1 << 63, i64::MAX as u64, u64::MAX] {
            assert_eq!(
                check_acknowledged(reported, 7),
                Err(GenerationError::NotIssued {
                    reported,
                    issued: 7
                })
            );
        }
    }

    #[test]
    fn issue19_a_watermark_within_one_agent_step_is_followed() {
        assert_eq!(ahead(107, 7), Some(107));
        assert_eq!(
            ahead(7 + MAX_GENERATION_STEP, 7),
            Some(7 + MAX_GENERATION_STEP)
        );
        for reported in [0, 7, 8 + MAX_GENERATION_STEP, 1 << 63, u64::MAX] {
            assert_eq!(ahead(reported, 7), None, "{reported}");
        }
        assert_eq!(
            ahead(MAX_GENERATION, MAX_GENERATION - 1),
            None,
            "no room above it"
        );
    }

    #[test]
    fn issue19_generation_arithmetic_cannot_overflow() {
        assert_eq!(next(0), Ok(1));
        assert_eq!(next(MAX_GENERATION - 1), Ok(MAX_GENERATION));
        assert_eq!(
            next(MAX_GENERATION),
            Err(GenerationError::Exhausted(MAX_GENERATION))
        );
        assert_eq!(next(u64::MAX), Err(GenerationError::Exhausted(u64::MAX)));
    }
}
