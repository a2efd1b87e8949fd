//! A rollout's id, typed: the fleet server's row id of the rollout, written in decimal on the
//! wire (the `rollout_id` of a desired state and of the reports that answer it), in URLs and
//! on the command line.

use core::fmt;
use core::str::FromStr;

/// A rollout's id: a positive integer (the fleet server's row id).
///
/// ```
/// use ota_core::fleet::RolloutId;
///
/// let id: RolloutId = "42".parse().unwrap();
/// assert_eq!(id.get(), 42);
/// assert_eq!(id.to_string(), "42");
/// assert!("0".parse::<RolloutId>().is_err());
/// assert!("r-1".parse::<RolloutId>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RolloutId(i64);

impl RolloutId {
    /// The id of row `id`; `None` unless it is positive (a database hands out 1, 2, …).
    pub const fn new(id: i64) -> Option<Self> {
        if id > 0 { Some(Self(id)) } else { None }
    }

    /// The row id.
    pub const fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for RolloutId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A text that is not a rollout id: not a decimal integer, or not positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a rollout id is a positive decimal integer")]
pub struct BadRolloutId;

impl FromStr for RolloutId {
    type Err = BadRolloutId;

    /// Decimal digits only (no sign, no spaces), positive, within `i64`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BadRolloutId);
        }
        text.parse::<i64>()
            .ok()
            .and_then(Self::new)
            .ok_or(BadRolloutId)
    }
}

/// As a JSON number.
#[cfg(feature = "serde")]
impl serde::Serialize for RolloutId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.0)
    }
}

/// From a positive integer (a JSON number), or from text as [`FromStr`] reads it (a URL path
/// segment or query value: decimal digits only, so `+7` is refused there as everywhere).
#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for RolloutId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IdVisitor)
    }
}

#[cfg(feature = "serde")]
struct IdVisitor;

#[cfg(feature = "serde")]
impl serde::de::Visitor<'_> for IdVisitor {
    type Value = RolloutId;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a rollout id (a positive integer)")
    }

    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<RolloutId, E> {
        RolloutId::new(n).ok_or_else(|| E::custom(BadRolloutId))
    }

    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<RolloutId, E> {
        i64::try_from(n)
            .ok()
            .and_then(RolloutId::new)
            .ok_or_else(|| E::custom(BadRolloutId))
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<RolloutId, E> {
        text.parse().map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_positive_decimal_integers_are_ids() {
        assert_eq!("7".parse(), Ok(RolloutId(7)));
        assert_eq!("007".parse(), Ok(RolloutId(7)));
        assert_eq!(
            "9223372036854775807"
                .parse::<RolloutId>()
                .map(RolloutId::get),
            Ok(i64::MAX)
        );
        for bad in [
            "",
            "0",
            "-1",
            "+1",
            " 1",
            "1 ",
            "1.0",
            "9223372036854775808",
            "r-1",
        ] {
            assert_eq!(bad.parse::<RolloutId>(), Err(BadRolloutId), "{bad:?}");
        }
        assert_eq!(RolloutId::new(0), None);
        assert_eq!(RolloutId::new(-3), None);
    }
}

#[cfg(all(test, feature = "serde"))]
mod serde_tests {
    use super::*;
    use serde::Deserialize;
    use serde::de::IntoDeserializer;
    use serde::de::value::Error;

    #[test]
    fn deserializing_refuses_what_is_not_an_id() {
        let int = |n: i64| RolloutId::deserialize(IntoDeserializer::<Error>::into_deserializer(n));
        let text =
            |t: &str| RolloutId::deserialize(IntoDeserializer::<Error>::into_deserializer(t));
        assert_eq!(int(7).map(RolloutId::get), Ok(7));
        assert_eq!(text("7").map(RolloutId::get), Ok(7));
        assert!(int(0).is_err() && int(-1).is_err());
        for bad in ["0", "+7", "-1", "7a", ""] {
            assert!(text(bad).is_err(), "{bad:?}");
        }
        let big = RolloutId::deserialize(IntoDeserializer::<Error>::into_deserializer(u64::MAX));
        assert!(big.is_err());
    }
}
