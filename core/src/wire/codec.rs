//! The bounded, versioned CBOR codec shared by every payload (and by the agent's persisted
//! state): size limit first, then the version key, then the typed decode, then string and list
//! limits.

use alloc::string::String;
use alloc::vec::Vec;

use minicbor::data::Type;
use minicbor::decode::{self, Decoder};
use minicbor::encode::{self, Encoder, Write};
use minicbor::{Decode, Encode};

use super::DeviceIdError;
use crate::digest::Digest;
use crate::release::Limits;

/// The protocol version this build writes (key `0` of every payload) and the highest it reads.
pub const PROTOCOL_VERSION: u16 = 1;

/// Bounds on what a payload may contain, so hostile bytes cannot make anyone allocate without
/// end. Decoding checks them and answers [`WireError::LimitExceeded`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct WireLimits;

impl WireLimits {
    /// Largest payload of any message, in bytes.
    pub const MAX_PAYLOAD_BYTES: usize = 128 * 1024;
    /// Largest signed release embedded in a desired state (the release format's own limit).
    pub const MAX_RELEASE_BYTES: usize = Limits::MAX_RELEASE_BYTES;
    /// Most artifact mirror URLs in a desired state.
    pub const MAX_URLS: usize = 16;
    /// Longest artifact URL, in bytes.
    pub const MAX_URL_BYTES: usize = 2048;
    /// Longest rollout id, in bytes.
    pub const MAX_ID_BYTES: usize = 128;
    /// Longest short name (version, hardware class, agent version, os, kernel, arch, hostname).
    pub const MAX_NAME_BYTES: usize = 128;
    /// Longest free-text reason or detail, in bytes (longer texts are cut by
    /// [`truncate_text`] before they are sent).
    pub const MAX_TEXT_BYTES: usize = 512;
    /// Most labels in a reported state.
    pub const MAX_LABELS: usize = 32;
    /// Longest label value (keys are bounded by `MAX_NAME_BYTES`).
    pub const MAX_LABEL_VALUE_BYTES: usize = 256;
    /// Most cached digests in a reported state.
    pub const MAX_CACHED: usize = 64;
}

/// Why a payload was refused. One variant per cause; every decoder returns it instead of
/// panicking.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The payload is larger than the message's limit.
    #[error("{what} payload of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// The message type.
        what: &'static str,
        /// The payload size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The payload is not the expected CBOR map (bad CBOR, wrong types, truncated, a required
    /// key missing).
    #[error("malformed {0} payload")]
    Malformed(&'static str),
    /// The payload's map has no version key `0`.
    #[error("{0} payload has no version (key 0)")]
    MissingVersion(&'static str),
    /// The payload's version is not one this build speaks (a newer peer, or version 0).
    #[error("{what} payload has version {found}, this build speaks 1..={supported}")]
    UnsupportedVersion {
        /// The message type.
        what: &'static str,
        /// The version found.
        found: u16,
        /// The highest version this build reads.
        supported: u16,
    },
    /// Bytes follow the end of the payload's map.
    #[error("{what} payload has {extra} unexpected bytes after its end")]
    TrailingData {
        /// The message type.
        what: &'static str,
        /// How many bytes follow.
        extra: usize,
    },
    /// A string or list is longer than its [`WireLimits`] bound.
    #[error("{what} exceeds the limit of {limit}")]
    LimitExceeded {
        /// The field.
        what: &'static str,
        /// Its limit.
        limit: usize,
    },
    /// A device id in the payload is not a valid device id.
    #[error("bad device id: {0}")]
    BadDeviceId(#[from] DeviceIdError),
}

/// A versioned CBOR message: a map with integer keys whose key `0` is its version.
///
/// [`from_cbor`](Self::from_cbor) is bounded and total: the payload size is checked first, then
/// the version (before the typed decode, so a newer message with a different shape still gives
/// [`WireError::UnsupportedVersion`]), then the structure, trailing bytes and
/// [`check_limits`](Self::check_limits). Unknown keys are ignored.
pub trait WireMessage: Sized + Encode<()> + for<'b> Decode<'b, ()> {
    /// The message's name, in errors and logs.
    const NAME: &'static str;
    /// The largest payload accepted, in bytes.
    const MAX_BYTES: usize = WireLimits::MAX_PAYLOAD_BYTES;
    /// The highest version this build reads (and the one it writes).
    const VERSION: u16 = PROTOCOL_VERSION;

    /// Checks every string and list against its limit (called by [`from_cbor`](Self::from_cbor)).
    fn check_limits(&self) -> Result<(), WireError>;

    /// Encodes the message.
    fn to_cbor(&self) -> Vec<u8> {
        // Encoding into a Vec cannot fail: the writer is infallible.
        minicbor::to_vec(self).unwrap_or_default()
    }

    /// Decodes and checks a message; hostile bytes give a [`WireError`], never a panic.
    fn from_cbor(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() > Self::MAX_BYTES {
            return Err(WireError::TooLarge {
                what: Self::NAME,
                size: bytes.len(),
                limit: Self::MAX_BYTES,
            });
        }
        let found = peek_version(bytes, Self::NAME)?;
        if found == 0 || found > Self::VERSION {
            return Err(WireError::UnsupportedVersion {
                what: Self::NAME,
                found,
                supported: Self::VERSION,
            });
        }
        let mut d = Decoder::new(bytes);
        let msg: Self = d.decode().map_err(|_| WireError::Malformed(Self::NAME))?;
        let extra = bytes.len().saturating_sub(d.position());
        if extra != 0 {
            return Err(WireError::TrailingData {
                what: Self::NAME,
                extra,
            });
        }
        msg.check_limits()?;
        Ok(msg)
    }
}

/// Finds the version (key `0`) of a top-level CBOR map without decoding the rest.
///
/// The whole map is walked (skipping values) so that a repeated key `0` is refused as
/// malformed: the typed decode keeps the *last* value of a repeated key, so a payload
/// `{0: 1, …, 0: 0}` would otherwise pass this check as version 1 and decode as version 0
/// (found by the `wire_decode` fuzz target, issue 7).
fn peek_version(bytes: &[u8], what: &'static str) -> Result<u16, WireError> {
    let malformed = |_| WireError::Malformed(what);
    let mut d = Decoder::new(bytes);
    let len = d.map().map_err(malformed)?;
    let mut version = None;
    let mut seen = 0u64;
    loop {
        match len {
            Some(n) if seen >= n => break,
            None if d.datatype().map_err(malformed)? == Type::Break => break,
            _ => {}
        }
        seen += 1;
        let is_version_key = match d.datatype().map_err(malformed)? {
            Type::U8 | Type::U16 | Type::U32 | Type::U64 => d.u64().map_err(malformed)? == 0,
            _ => {
                d.skip().map_err(malformed)?;
                false
            }
        };
        if is_version_key {
            let found = d.u16().map_err(malformed)?;
            if version.replace(found).is_some() {
                return Err(WireError::Malformed(what));
            }
        } else {
            d.skip().map_err(malformed)?;
        }
    }
    version.ok_or(WireError::MissingVersion(what))
}

/// Checks a length against a limit.
pub(crate) fn bound(what: &'static str, len: usize, limit: usize) -> Result<(), WireError> {
    if len > limit {
        Err(WireError::LimitExceeded { what, limit })
    } else {
        Ok(())
    }
}

/// Checks a short name against [`WireLimits::MAX_NAME_BYTES`].
pub(crate) fn name(what: &'static str, s: &str) -> Result<(), WireError> {
    bound(what, s.len(), WireLimits::MAX_NAME_BYTES)
}

/// Checks a free text against [`WireLimits::MAX_TEXT_BYTES`].
pub(crate) fn text(what: &'static str, s: &str) -> Result<(), WireError> {
    bound(what, s.len(), WireLimits::MAX_TEXT_BYTES)
}

/// Checks an optional rollout id against [`WireLimits::MAX_ID_BYTES`].
pub(crate) fn rollout_id(id: Option<&String>) -> Result<(), WireError> {
    id.map_or(Ok(()), |id| {
        bound("rollout id", id.len(), WireLimits::MAX_ID_BYTES)
    })
}

/// Cuts `s` to at most `max` bytes on a character boundary (for reasons built from local error
/// messages, which must fit [`WireLimits::MAX_TEXT_BYTES`]).
pub fn truncate_text(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    String::from(s.get(..end).unwrap_or_default())
}

/// A digest travels as a CBOR byte string of exactly 32 bytes.
impl<C> Encode<C> for Digest {
    fn encode<W: Write>(
        &self,
        e: &mut Encoder<W>,
        _ctx: &mut C,
    ) -> Result<(), encode::Error<W::Error>> {
        e.bytes(&self.0)?;
        Ok(())
    }
}

impl<'b, C> Decode<'b, C> for Digest {
    fn decode(d: &mut Decoder<'b>, _ctx: &mut C) -> Result<Self, decode::Error> {
        let bytes = d.bytes()?;
        let digest: [u8; 32] = bytes
            .try_into()
            .map_err(|_| decode::Error::message("a sha256 digest is 32 bytes"))?;
        Ok(Digest(digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_text("héllo", 2), "h");
        assert_eq!(truncate_text("héllo", 3), "hé");
        assert_eq!(truncate_text("abc", 10), "abc");
    }

    #[test]
    fn digests_are_32_byte_strings() {
        let d = Digest::of(b"x");
        let bytes = minicbor::to_vec(d).unwrap();
        assert_eq!(bytes.len(), 34);
        assert_eq!(minicbor::decode::<Digest>(&bytes).unwrap(), d);
        let short = minicbor::to_vec(minicbor::bytes::ByteArray::from([1u8; 31])).unwrap();
        assert!(minicbor::decode::<Digest>(&short).is_err());
    }
}
