//! Flag names: 1 to 64 bytes of `[a-z0-9._-]`.

use alloc::string::String;
use core::borrow::Borrow;
use core::fmt;

use minicbor::decode::{self, Decoder};
use minicbor::encode::{self, Encoder, Write};
use minicbor::{Decode, Encode};

/// A validated flag name: 1 to [`FlagName::MAX_BYTES`] bytes of `[a-z0-9._-]`, not `.` or `..`.
///
/// Names are lowercase on purpose: the device's flag file keeps its metadata under uppercase
/// keys (`VERSION=`), which no flag can shadow. A name never contains an MQTT wildcard or
/// separator, a space, `=` or a newline, so it is safe in topics, file lines and shell scripts.
///
/// In CBOR a name is a text string; decoding a string that is not a valid name fails (the
/// payload is malformed).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlagName(String);

/// Why a string is not a flag name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FlagNameError {
    /// The name is empty.
    #[error("a flag name may not be empty")]
    Empty,
    /// The name is longer than [`FlagName::MAX_BYTES`].
    #[error("a flag name is at most {max} bytes, got {len}")]
    TooLong {
        /// The name's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name contains a character outside `[a-z0-9._-]` (uppercase letters included).
    #[error("a flag name may only contain [a-z0-9._-], found {0:?}")]
    BadCharacter(char),
    /// The name is `.` or `..`.
    #[error("a flag name may not be `.` or `..`")]
    DotName,
}

impl FlagName {
    /// The longest flag name, in bytes.
    pub const MAX_BYTES: usize = 64;

    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, FlagNameError> {
        Self::check(name)?;
        Ok(FlagName(String::from(name)))
    }

    /// Checks that `name` is a valid flag name without allocating.
    pub fn check(name: &str) -> Result<(), FlagNameError> {
        if name.is_empty() {
            return Err(FlagNameError::Empty);
        }
        if name.len() > Self::MAX_BYTES {
            return Err(FlagNameError::TooLong {
                len: name.len(),
                max: Self::MAX_BYTES,
            });
        }
        if let Some(c) = name.chars().find(|c| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
        }) {
            return Err(FlagNameError::BadCharacter(c));
        }
        if name == "." || name == ".." {
            return Err(FlagNameError::DotName);
        }
        Ok(())
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FlagName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for FlagName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FlagName({:?})", self.0)
    }
}

impl core::str::FromStr for FlagName {
    type Err = FlagNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for FlagName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Lets maps keyed by [`FlagName`] be queried with a `&str` (`flags.get("dark-mode")`).
impl Borrow<str> for FlagName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl<C> Encode<C> for FlagName {
    fn encode<W: Write>(
        &self,
        e: &mut Encoder<W>,
        _ctx: &mut C,
    ) -> Result<(), encode::Error<W::Error>> {
        e.str(&self.0)?;
        Ok(())
    }
}

impl<'b, C> Decode<'b, C> for FlagName {
    fn decode(d: &mut Decoder<'b>, _ctx: &mut C) -> Result<Self, decode::Error> {
        let p = d.position();
        let s = d.str()?;
        FlagName::new(s).map_err(|_| decode::Error::message("not a valid flag name").at(p))
    }
}
