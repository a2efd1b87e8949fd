//! Per-device MQTT passwords of the embedded broker, derived from one server-held secret.
//!
//! A device's password is `hex(HMAC-SHA256(secret, "ota/v1/mqtt-device:" || device id))`
//! (64 hex characters): the server stores no password list, a device's password works for that
//! device id only, and `ota server device-credential` prints it for provisioning. Rotating the
//! secret file changes every device's password at once.
//!
//! The secret file holds 32 random bytes as hex; it is created (mode 0600) the first time the
//! server or the CLI needs it, and never logged.

use std::io::Write;
use std::path::{Path, PathBuf};

use hmac::{KeyInit, Mac};
use ota_core::wire::DeviceId;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Bytes of a new secret.
const SECRET_BYTES: usize = 32;
/// Shortest secret accepted from a file (bytes).
const MIN_SECRET_BYTES: usize = 16;
/// Largest secret file read.
const MAX_SECRET_FILE: u64 = 4096;
/// Domain separation of device passwords.
const CONTEXT: &[u8] = b"ota/v1/mqtt-device:";

/// Why the broker secret cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The file cannot be read or created.
    #[error("broker secret {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not hold at least 16 bytes as hex.
    #[error("broker secret {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the content).
        reason: &'static str,
    },
    /// The system random generator failed.
    #[error("cannot generate a random secret: {0}")]
    Random(String),
}

/// Random bytes as lowercase hex.
pub(crate) fn random_hex(bytes: usize) -> Result<String, SecretError> {
    let mut buf = vec![0u8; bytes];
    fill_random(&mut buf)?;
    Ok(hex::encode(buf))
}

/// Fills `buf` from the operating system's random source.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), SecretError> {
    getrandom::fill(buf).map_err(|e| SecretError::Random(e.to_string()))
}

/// The server-held secret the device passwords derive from (its `Debug` shows no bytes).
#[derive(Clone)]
pub struct DeviceSecret(Vec<u8>);

impl std::fmt::Debug for DeviceSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceSecret(<redacted>)")
    }
}

impl DeviceSecret {
    /// A secret of these bytes (tests, tools).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        DeviceSecret(bytes.to_vec())
    }

    /// Reads `path`, creating it (0600, 32 random bytes as hex) if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, SecretError> {
        let io = |source| SecretError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let text = random_hex(SECRET_BYTES)?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                match options.open(path) {
                    Ok(mut file) => {
                        file.write_all(format!("{text}\n").as_bytes())
                            .and_then(|()| file.sync_all())
                            .map_err(io)?;
                        tracing::info!(path = %path.display(), "created the MQTT broker secret");
                    }
                    // Another process created it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io(e)),
                }
            }
            Err(e) => return Err(io(e)),
        }
        Self::load(path)
    }

    /// Reads an existing secret file.
    pub fn load(path: &Path) -> Result<Self, SecretError> {
        let invalid = |reason| SecretError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let io = |source| SecretError::Io {
            path: path.to_path_buf(),
            source,
        };
        if std::fs::metadata(path).map_err(io)?.len() > MAX_SECRET_FILE {
            return Err(invalid("the file is too large"));
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let bytes = hex::decode(text.trim()).map_err(|_| invalid("not hex"))?;
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(invalid("shorter than 16 bytes"));
        }
        Ok(DeviceSecret(bytes))
    }

    fn mac(&self, device: &str) -> HmacSha256 {
        // HMAC takes keys of any length: this never fails.
        let mut mac =
            <HmacSha256 as KeyInit>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable_hmac());
        mac.update(CONTEXT);
        mac.update(device.as_bytes());
        mac
    }

    /// The MQTT password of `device` (64 hex characters).
    pub fn password(&self, device: &DeviceId) -> String {
        hex::encode(self.mac(device.as_str()).finalize().into_bytes())
    }

    /// Whether `password` is `device`'s (constant-time comparison).
    pub fn verify(&self, device: &str, password: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(password) else {
            return false;
        };
        let Ok(tag) = hex::decode(text) else {
            return false;
        };
        self.mac(device).verify_slice(&tag).is_ok()
    }
}

/// HMAC-SHA256 accepts every key length, so `new_from_slice` cannot fail.
#[cold]
fn unreachable_hmac() -> HmacSha256 {
    <HmacSha256 as KeyInit>::new(&Default::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_per_device_and_verified() {
        let secret = DeviceSecret::from_bytes(&[7; 32]);
        let a = DeviceId::new("dev-a").unwrap();
        let pa = secret.password(&a);
        assert_eq!(pa.len(), 64);
        assert!(secret.verify("dev-a", pa.as_bytes()));
        assert!(!secret.verify("dev-b", pa.as_bytes()));
        assert!(!secret.verify("dev-a", b"not hex"));
        assert!(!DeviceSecret::from_bytes(&[8; 32]).verify("dev-a", pa.as_bytes()));
        assert!(!format!("{secret:?}").contains("07"));
    }

    #[test]
    fn the_secret_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/broker.secret");
        let first = DeviceSecret::load_or_create(&path).unwrap();
        let again = DeviceSecret::load_or_create(&path).unwrap();
        let id = DeviceId::new("x").unwrap();
        assert_eq!(first.password(&id), again.password(&id));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "abcd\n").unwrap();
        assert!(matches!(
            DeviceSecret::load(&path),
            Err(SecretError::Invalid { .. })
        ));
    }
}
