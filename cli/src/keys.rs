//! `ota key ...`: ed25519 key files, and loading them for the `release` commands.
//!
//! Key files are the formats openssl uses, so either tool can make or read them:
//!
//! - private key: PKCS#8 v1 PEM (`-----BEGIN PRIVATE KEY-----`), file mode 0600, exactly what
//!   `openssl genpkey -algorithm ed25519` writes;
//! - public key: SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`), what
//!   `openssl pkey -in KEY -pubout` writes.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::spki::der::zeroize::Zeroizing;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{SigningKey, VerifyingKey};
use ota_core::release::KeyId;

use crate::error::{CliError, KeyProblem};
use crate::files::{self, Overwrite};

/// Largest key file we read (a PEM ed25519 key is about 120 bytes).
const MAX_KEY_FILE: u64 = 16 * 1024;

/// PEM label of a PKCS#8 private key.
const PRIVATE_LABEL: &str = "PRIVATE KEY";
/// PEM label of a SubjectPublicKeyInfo public key.
const PUBLIC_LABEL: &str = "PUBLIC KEY";
/// PEM label of a password-protected PKCS#8 private key.
const ENCRYPTED_LABEL: &str = "ENCRYPTED PRIVATE KEY";

/// `ota key <command>`.
#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Generate an ed25519 key pair: NAME.key (private, PKCS#8 PEM, mode 0600) and NAME.pub
    /// (public, SPKI PEM). Prints the key id.
    #[command(after_help = "\
The files are the formats openssl uses: `openssl pkey -in NAME.key -noout` and
`openssl pkey -pubin -in NAME.pub -noout` read them, and keys made by
`openssl genpkey -algorithm ed25519` work with every ota command as they are.")]
    Gen(GenArgs),
    /// Print the key id of a key file (public or private); the id `ota release show` lists for
    /// each signature.
    Id(IdArgs),
    /// Sign a trust-set update (key rotation): new keys and threshold, signed by k of the
    /// current keys. Devices that verify it trust the new set from then on.
    Rotate(crate::trust_cmd::RotateArgs),
}

/// Arguments of `ota key gen`.
#[derive(Debug, Args)]
pub(crate) struct GenArgs {
    /// Path and base name of the key files: writes NAME.key and NAME.pub.
    #[arg(long, value_name = "NAME")]
    out: PathBuf,
    /// Overwrite NAME.key and NAME.pub if they exist (refused by default).
    #[arg(long)]
    force: bool,
}

/// Arguments of `ota key id`.
#[derive(Debug, Args)]
pub(crate) struct IdArgs {
    /// A public (SPKI PEM) or private (PKCS#8 PEM) ed25519 key file.
    #[arg(value_name = "KEYFILE")]
    file: PathBuf,
}

/// Runs `ota key <command>`.
pub(crate) fn run(cmd: KeyCommand) -> Result<(), CliError> {
    match cmd {
        KeyCommand::Gen(args) => generate(&args),
        KeyCommand::Id(args) => print_id(&args),
        KeyCommand::Rotate(args) => crate::trust_cmd::rotate(&args),
    }
}

/// `ota key gen`.
fn generate(args: &GenArgs) -> Result<(), CliError> {
    let private_path = with_suffix(&args.out, ".key");
    let public_path = with_suffix(&args.out, ".pub");
    if !args.force {
        for path in [&private_path, &public_path] {
            if path.exists() {
                return Err(CliError::Exists(path.clone()));
            }
        }
    }

    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut_slice()).map_err(CliError::Random)?;
    let key = SigningKey::from_bytes(&seed);
    let (private_pem, public_pem) = encode_pair(&key).map_err(|problem| CliError::Key {
        path: private_path.clone(),
        problem,
    })?;

    let overwrite = if args.force {
        Overwrite::Allow
    } else {
        Overwrite::Refuse
    };
    files::write_atomic(&private_path, private_pem.as_bytes(), 0o600, overwrite)?;
    files::write_atomic(&public_path, public_pem.as_bytes(), 0o644, overwrite)?;

    let id = KeyId::of(&key.verifying_key());
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "private key: {} (mode 0600, keep it secret)",
        private_path.display()
    )
    .and_then(|()| writeln!(out, "public key:  {}", public_path.display()))
    .and_then(|()| writeln!(out, "key id:      {id}"))
    .map_err(CliError::Stdout)
}

/// The PEM files of a key pair: PKCS#8 v1 (no embedded public key, as openssl writes it) and SPKI.
fn encode_pair(key: &SigningKey) -> Result<(Zeroizing<String>, String), KeyProblem> {
    let pair = KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    let private_pem = pair
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyProblem::Encode(e.to_string()))?;
    let public_pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| KeyProblem::Encode(e.to_string()))?;
    Ok((private_pem, public_pem))
}

/// `ota key id`.
fn print_id(args: &IdArgs) -> Result<(), CliError> {
    let text = read_key_file(&args.file, PUBLIC_LABEL)?;
    let problem = |problem| CliError::Key {
        path: args.file.clone(),
        problem,
    };
    let key = match pem_label(&text) {
        Some(PRIVATE_LABEL) => parse_private(&text).map_err(problem)?.verifying_key(),
        Some(PUBLIC_LABEL) => parse_public(&text).map_err(problem)?,
        Some(ENCRYPTED_LABEL) => return Err(problem(KeyProblem::Encrypted)),
        Some(other) => return Err(problem(KeyProblem::OtherPem(other.to_owned()))),
        None => {
            return Err(problem(KeyProblem::NotPem {
                expected: PUBLIC_LABEL,
            }));
        }
    };
    writeln!(std::io::stdout().lock(), "{}", KeyId::of(&key)).map_err(CliError::Stdout)
}

/// Loads an ed25519 private key (PKCS#8 PEM) for signing.
pub(crate) fn load_signing_key(path: &Path) -> Result<SigningKey, CliError> {
    let text = read_key_file(path, PRIVATE_LABEL)?;
    let problem = |problem| CliError::Key {
        path: path.to_path_buf(),
        problem,
    };
    match pem_label(&text) {
        Some(PRIVATE_LABEL) => parse_private(&text).map_err(problem),
        Some(PUBLIC_LABEL) => Err(problem(KeyProblem::PublicNotPrivate)),
        Some(ENCRYPTED_LABEL) => Err(problem(KeyProblem::Encrypted)),
        Some(other) => Err(problem(KeyProblem::OtherPem(other.to_owned()))),
        None => Err(problem(KeyProblem::NotPem {
            expected: PRIVATE_LABEL,
        })),
    }
}

/// Loads an ed25519 public key (SPKI PEM) to trust.
pub(crate) fn load_verifying_key(path: &Path) -> Result<VerifyingKey, CliError> {
    let text = read_key_file(path, PUBLIC_LABEL)?;
    let problem = |problem| CliError::Key {
        path: path.to_path_buf(),
        problem,
    };
    match pem_label(&text) {
        Some(PUBLIC_LABEL) => parse_public(&text).map_err(problem),
        Some(PRIVATE_LABEL | ENCRYPTED_LABEL) => Err(problem(KeyProblem::PrivateNotPublic)),
        Some(other) => Err(problem(KeyProblem::OtherPem(other.to_owned()))),
        None => Err(problem(KeyProblem::NotPem {
            expected: PUBLIC_LABEL,
        })),
    }
}

/// Reads a key file as text; the bytes are wiped from memory when dropped.
fn read_key_file(path: &Path, expected: &'static str) -> Result<Zeroizing<String>, CliError> {
    let bytes = Zeroizing::new(files::read_bounded(path, MAX_KEY_FILE, "a key file")?);
    match std::str::from_utf8(&bytes) {
        Ok(text) => Ok(Zeroizing::new(text.to_owned())),
        Err(_) => Err(CliError::Key {
            path: path.to_path_buf(),
            problem: KeyProblem::NotPem { expected },
        }),
    }
}

fn parse_private(text: &str) -> Result<SigningKey, KeyProblem> {
    let block = pem_block(text, PRIVATE_LABEL).ok_or(KeyProblem::NotPem {
        expected: PRIVATE_LABEL,
    })?;
    SigningKey::from_pkcs8_pem(block).map_err(|e| KeyProblem::Invalid {
        kind: "private key",
        reason: e.to_string(),
    })
}

fn parse_public(text: &str) -> Result<VerifyingKey, KeyProblem> {
    let block = pem_block(text, PUBLIC_LABEL).ok_or(KeyProblem::NotPem {
        expected: PUBLIC_LABEL,
    })?;
    VerifyingKey::from_public_key_pem(block).map_err(|e| KeyProblem::Invalid {
        kind: "public key",
        reason: e.to_string(),
    })
}

/// The label of the first PEM block in `text` (`PRIVATE KEY` for `-----BEGIN PRIVATE KEY-----`).
fn pem_label(text: &str) -> Option<&str> {
    const BEGIN: &str = "-----BEGIN ";
    let start = text.find(BEGIN)? + BEGIN.len();
    let rest = text.get(start..)?;
    let end = rest.find("-----")?;
    rest.get(..end)
}

/// The first PEM block labelled `label`, from its BEGIN line to the end of its END line, without
/// any explanatory text around it (openssl tolerates such text, the strict PEM decoder does not).
fn pem_block<'a>(text: &'a str, label: &str) -> Option<&'a str> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)?;
    let stop = start + text.get(start..)?.find(&end)? + end.len();
    text.get(start..stop)
}

/// `base` with `suffix` appended to its file name (`keys/a` -> `keys/a.key`).
fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(base.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_helpers_find_label_and_block() {
        let text = "comment\n-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\ntrailer";
        assert_eq!(pem_label(text), Some("PUBLIC KEY"));
        assert_eq!(
            pem_block(text, "PUBLIC KEY"),
            Some("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----")
        );
        assert_eq!(pem_label("no pem here"), None);
        assert_eq!(pem_block(text, "PRIVATE KEY"), None);
    }

    #[test]
    fn generated_pair_round_trips() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let (private_pem, public_pem) = encode_pair(&key).unwrap();
        assert!(private_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(public_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert_eq!(
            parse_private(&private_pem).unwrap().to_bytes(),
            key.to_bytes()
        );
        assert_eq!(parse_public(&public_pem).unwrap(), key.verifying_key());
    }

    /// Issue 7: a loaded private key's `Debug` shows the public half only.
    #[test]
    fn issue7_debug_of_a_private_key_shows_no_secret() {
        let seed = [0x5au8; 32];
        let (private_pem, _) = encode_pair(&SigningKey::from_bytes(&seed)).unwrap();
        let key = parse_private(&private_pem).unwrap();
        let debug = format!("{key:?}");
        assert!(debug.contains("verifying_key"), "{debug}");
        for secret in [
            format!("{seed:?}"),
            seed.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "90, 90, 90".to_string(),
        ] {
            assert!(!debug.contains(&secret), "{debug}");
        }
    }
}
