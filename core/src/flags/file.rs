//! The device's flag file: a small line format that applications (and shell scripts) read.
//!
//! ```text
//! OTA_FLAGS=1
//! DEVICE=gw-0001
//! VERSION=1750000000123
//! dark-mode=on
//! new-ui=off
//! ```
//!
//! The first line names the format version. Metadata keys are uppercase, flag names are
//! lowercase, so no flag can shadow them. Flags come in name order, one `name=on|off` per line;
//! the output is byte-for-byte stable for equal flags. A reader skips empty lines, `#` comments
//! and uppercase keys it does not know (a newer writer may add some); a higher format version
//! is refused.

use alloc::collections::BTreeMap;
use alloc::string::String;
use core::fmt::Write as _;

use super::{DeviceFlags, FlagLimits, FlagName, FlagNameError};
use crate::wire::{DeviceId, DeviceIdError, PROTOCOL_VERSION};

/// The flag file format version this build writes (`OTA_FLAGS=1`) and the highest it reads.
pub const FILE_FORMAT: u32 = 1;

/// The header key of the flag file (its first line).
const HEADER: &str = "OTA_FLAGS";

/// Why a flag file was refused. Line numbers are 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FlagFileError {
    /// The file is larger than [`FlagLimits::MAX_FILE_BYTES`].
    #[error("flag file of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// The file's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The file is not UTF-8.
    #[error("flag file is not UTF-8")]
    NotUtf8,
    /// The first line is not `OTA_FLAGS=<version>`.
    #[error("flag file does not start with OTA_FLAGS=<version>")]
    MissingHeader,
    /// The file's format version is 0 or newer than this build reads.
    #[error("flag file format {found} is not supported (this build reads 1..={supported})")]
    UnsupportedFormat {
        /// The version found.
        found: u64,
        /// The highest version this build reads.
        supported: u32,
    },
    /// A line is not `key=value`.
    #[error("flag file line {line} is not key=value")]
    BadLine {
        /// The line.
        line: usize,
    },
    /// A flag name is not valid.
    #[error("flag file line {line}: {cause}")]
    BadName {
        /// The line.
        line: usize,
        /// Why the name is not valid.
        cause: FlagNameError,
    },
    /// A flag value is not `on` or `off`.
    #[error("flag file line {line}: a flag is `on` or `off`")]
    BadValue {
        /// The line.
        line: usize,
    },
    /// A flag appears twice.
    #[error("flag file line {line}: the flag appears twice")]
    DuplicateFlag {
        /// The line.
        line: usize,
    },
    /// A metadata key (`DEVICE`, `VERSION`) appears twice.
    #[error("flag file line {line}: the key appears twice")]
    DuplicateKey {
        /// The line.
        line: usize,
    },
    /// The `DEVICE` value is not a device id.
    #[error("flag file line {line}: {cause}")]
    BadDevice {
        /// The line.
        line: usize,
        /// Why it is not a device id.
        cause: DeviceIdError,
    },
    /// The `VERSION` value is not a decimal `u64`.
    #[error("flag file line {line}: VERSION is a decimal number")]
    BadVersion {
        /// The line.
        line: usize,
    },
    /// There is no `DEVICE` line.
    #[error("flag file has no DEVICE line")]
    MissingDevice,
    /// There is no `VERSION` line.
    #[error("flag file has no VERSION line")]
    MissingVersion,
    /// The file has more than [`FlagLimits::MAX_FLAGS`] flags.
    #[error("flag file has more than {limit} flags")]
    TooManyFlags {
        /// The limit.
        limit: usize,
    },
    /// The file is for another device ([`FlagStore::from_file`](super::FlagStore::from_file)).
    #[error("flag file is for another device")]
    OtherDevice,
}

impl DeviceFlags {
    /// The flag file for these flags (the format of the module docs). Stable: equal flags give
    /// equal bytes. Meant for flags that passed decoding (valid device id and names).
    pub fn to_file(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = write!(
            out,
            "{HEADER}={FILE_FORMAT}\nDEVICE={}\nVERSION={}\n",
            self.device_id, self.version
        );
        for (name, on) in &self.flags {
            let _ = writeln!(out, "{name}={}", if *on { "on" } else { "off" });
        }
        out
    }

    /// Reads a flag file (bounded, strict about what it understands; see the module docs).
    pub fn from_file(bytes: &[u8]) -> Result<DeviceFlags, FlagFileError> {
        if bytes.len() > FlagLimits::MAX_FILE_BYTES {
            return Err(FlagFileError::TooLarge {
                size: bytes.len(),
                limit: FlagLimits::MAX_FILE_BYTES,
            });
        }
        let text = core::str::from_utf8(bytes).map_err(|_| FlagFileError::NotUtf8)?;
        let mut lines = text
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .enumerate()
            .map(|(i, l)| (i.saturating_add(1), l));
        let header = lines.next().map(|(_, l)| l).unwrap_or_default();
        let format = header
            .strip_prefix(HEADER)
            .and_then(|rest| rest.strip_prefix('='))
            .and_then(decimal)
            .ok_or(FlagFileError::MissingHeader)?;
        if format == 0 || format > u64::from(FILE_FORMAT) {
            return Err(FlagFileError::UnsupportedFormat {
                found: format,
                supported: FILE_FORMAT,
            });
        }
        let mut device: Option<String> = None;
        let mut version: Option<u64> = None;
        let mut flags = BTreeMap::new();
        for (line, text) in lines {
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            let (key, value) = text
                .split_once('=')
                .ok_or(FlagFileError::BadLine { line })?;
            if key.starts_with(|c: char| c.is_ascii_uppercase()) {
                match key {
                    "DEVICE" => {
                        DeviceId::check(value)
                            .map_err(|cause| FlagFileError::BadDevice { line, cause })?;
                        if device.replace(String::from(value)).is_some() {
                            return Err(FlagFileError::DuplicateKey { line });
                        }
                    }
                    "VERSION" => {
                        let v = decimal(value).ok_or(FlagFileError::BadVersion { line })?;
                        if version.replace(v).is_some() {
                            return Err(FlagFileError::DuplicateKey { line });
                        }
                    }
                    // A newer writer's metadata.
                    _ => {}
                }
                continue;
            }
            let name =
                FlagName::new(key).map_err(|cause| FlagFileError::BadName { line, cause })?;
            let on = match value {
                "on" => true,
                "off" => false,
                _ => return Err(FlagFileError::BadValue { line }),
            };
            if flags.len() >= FlagLimits::MAX_FLAGS {
                return Err(FlagFileError::TooManyFlags {
                    limit: FlagLimits::MAX_FLAGS,
                });
            }
            if flags.insert(name, on).is_some() {
                return Err(FlagFileError::DuplicateFlag { line });
            }
        }
        Ok(DeviceFlags {
            v: PROTOCOL_VERSION,
            device_id: device.ok_or(FlagFileError::MissingDevice)?,
            version: version.ok_or(FlagFileError::MissingVersion)?,
            flags,
        })
    }

    /// The flags as one line of JSON, for `ota-agent flags --json`:
    /// `{"device":"gw-0001","version":42,"flags":{"dark-mode":true,"new-ui":false}}`.
    pub fn to_json(&self) -> String {
        let mut out = String::from("{\"device\":");
        json_string(&mut out, &self.device_id);
        let _ = write!(out, ",\"version\":{},\"flags\":{{", self.version);
        for (i, (name, on)) in self.flags.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            json_string(&mut out, name.as_str());
            let _ = write!(out, ":{on}");
        }
        out.push_str("}}");
        out
    }
}

/// A non-empty string of ASCII digits as a `u64` (no sign, no spaces).
fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Appends `s` as a JSON string (valid ids and names need no escaping; anything else is
/// escaped anyway).
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
