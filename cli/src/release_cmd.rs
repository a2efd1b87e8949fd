//! `ota release ...`: sign a release, verify it (and its artifact), show what it contains;
//! `publish` and `list` talk to a fleet server ([`publish`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use ota_core::delta::ChunkParams;
use ota_core::digest::{Digest, Hasher};
use ota_core::release::{
    self, ArtifactVerifier, ChunkIndexRef, FORMAT_VERSION, Limits, Manifest, Policy, ReleaseError,
    SignedRelease, TrustSet,
};
use ota_server::clock::Clock;

use crate::error::CliError;
use crate::files::{self, Overwrite};
use crate::keys;
use crate::view::{self, ReleaseView};

mod publish;

/// The product name `ota release sign` writes when `--product` is not given.
pub(crate) const DEFAULT_PRODUCT: &str = "default";

/// Exit status table shown by `ota release verify --help`.
const VERIFY_EXIT_HELP: &str = "\
Exit status:
  0  the release is valid (and the artifact matches it, with --artifact)
  1  the release or artifact is refused: bad or missing signatures, threshold not met,
     wrong hardware class, expired, below the floor, digest or size mismatch, or the
     file is not a release at all
  2  usage or I/O error, e.g. a missing file or a bad key file: nothing was decided

On failure one line `error: <cause>` is printed on stderr.";

/// Exit status table shown by `ota release sign --help`.
const SIGN_EXIT_HELP: &str = "\
Exit status:
  0  the release was written
  2  usage or I/O error (missing artifact, bad key file, a field over its size limit);
     nothing was written

The artifact is read once, in constant memory (plus its chunk index), with a progress bar
when stderr is a terminal: hashed, and cut into content-defined chunks whose index is written
to OUT.chunks and named (sha256, size) in the signed manifest, unless --no-chunk-index.";

/// Exit status table shown by `ota release show --help`.
const SHOW_EXIT_HELP: &str = "\
Exit status:
  0  shown
  1  the file is not a valid release
  2  usage or I/O error

The JSON form has the keys signatures_verified (always false), manifest (all fields;
artifact_sha256 as hex, created/expires as unix seconds, expires null for never,
chunk_index {sha256 hex, size} or null) and
signatures (key_id hex, algorithm).";

/// `ota release <command>`.
#[derive(Debug, Subcommand)]
pub(crate) enum ReleaseCommand {
    /// Sign a release: hash the artifact and write a COSE_Sign release over its manifest.
    #[command(after_help = SIGN_EXIT_HELP)]
    Sign(SignArgs),
    /// Verify a release against trusted public keys, a device policy and, optionally, the
    /// artifact.
    #[command(after_help = VERIFY_EXIT_HELP)]
    Verify(VerifyArgs),
    /// Show a release's manifest and signers, without verifying the signatures.
    #[command(after_help = SHOW_EXIT_HELP)]
    Show(ShowArgs),
    /// Publish a release and its artifact to a fleet server (streaming upload). The server
    /// verifies it against the fleet trust set and stores the artifact by sha256.
    Publish(publish::PublishArgs),
    /// List the releases published on a fleet server.
    List(publish::ListReleasesArgs),
}

/// Arguments of `ota release sign`.
#[derive(Debug, Args)]
pub(crate) struct SignArgs {
    /// Private key to sign with (PKCS#8 PEM, from `ota key gen` or `openssl genpkey -algorithm
    /// ed25519`). Repeat for a release signed by several keys (threshold signing).
    #[arg(long = "key", value_name = "KEYFILE", required = true)]
    keys: Vec<PathBuf>,
    /// The artifact (firmware image, bundle, ...) the release names by SHA-256 and size.
    #[arg(long, value_name = "FILE")]
    artifact: PathBuf,
    /// Human version string, e.g. 2.4.1 (at most 64 bytes).
    #[arg(long = "version", value_name = "VERSION")]
    release_version: String,
    /// Security version for anti-rollback: devices refuse releases below their floor.
    #[arg(long, value_name = "N")]
    security_version: u32,
    /// Hardware class the release may be installed on; repeat for several.
    #[arg(long = "hw", value_name = "CLASS", required = true)]
    hardware: Vec<String>,
    /// Expire the release this long after now (e.g. 30d, 12h, "1week 2days"); default: never.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    expires: Option<Duration>,
    /// Product name, e.g. gateway-fw (at most 64 bytes).
    #[arg(long, value_name = "PRODUCT", default_value = DEFAULT_PRODUCT)]
    product: String,
    /// Installer hint for the device, e.g. `files` or `command` (at most 32 bytes).
    #[arg(long, value_name = "HINT")]
    installer: Option<String>,
    /// Free-form metadata entry; repeat for several (at most 16).
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    metadata: Vec<(String, String)>,
    /// Where to write the release (atomically: a temporary file, fsync, rename). Its chunk
    /// index is written beside it as `FILE.chunks` (publish it with the release).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Sign without a chunk index: devices then always download the whole artifact.
    #[arg(long)]
    no_chunk_index: bool,
}

/// Arguments of `ota release verify`.
#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// Trusted public key (SPKI PEM, from `ota key gen` or `openssl pkey -pubout`); repeat for
    /// several.
    #[arg(long = "trust", value_name = "PUBKEY", required = true)]
    trust: Vec<PathBuf>,
    /// How many distinct trusted keys must have signed.
    #[arg(long, value_name = "K", default_value_t = 1)]
    threshold: usize,
    /// The release file.
    #[arg(long, value_name = "FILE")]
    release: PathBuf,
    /// Also check this artifact against the signed SHA-256 and size (streamed, constant memory).
    #[arg(long, value_name = "FILE")]
    artifact: Option<PathBuf>,
    /// The device's hardware class: refuse a release that does not list it.
    #[arg(long = "hw", value_name = "CLASS")]
    hardware: Option<String>,
    /// The device's security floor: refuse a release whose security version is below it.
    #[arg(long, value_name = "N", default_value_t = 0)]
    floor: u32,
}

/// Arguments of `ota release show`.
#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// The release file.
    #[arg(value_name = "FILE")]
    release: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `ota release <command>`.
pub(crate) fn run(cmd: ReleaseCommand) -> Result<(), CliError> {
    match cmd {
        ReleaseCommand::Sign(args) => sign(args),
        ReleaseCommand::Verify(args) => verify(&args),
        ReleaseCommand::Show(args) => show(&args),
        ReleaseCommand::Publish(args) => publish::publish(&args),
        ReleaseCommand::List(args) => publish::list_releases(&args),
    }
}

/// `ota release sign`.
fn sign(args: SignArgs) -> Result<(), CliError> {
    if args.keys.len() > Limits::MAX_SIGNATURES {
        return Err(CliError::Usage(format!(
            "at most {} --key may sign one release",
            Limits::MAX_SIGNATURES
        )));
    }
    let mut signing_keys = Vec::with_capacity(args.keys.len());
    for path in &args.keys {
        let key = keys::load_signing_key(path)?;
        if signing_keys
            .iter()
            .any(|k: &ed25519_dalek::SigningKey| k.verifying_key() == key.verifying_key())
        {
            return Err(CliError::Usage(format!(
                "--key {} is the same key as an earlier --key",
                path.display()
            )));
        }
        signing_keys.push(key);
    }

    let mut metadata = BTreeMap::new();
    for (k, v) in args.metadata {
        if metadata.contains_key(&k) {
            return Err(CliError::Usage(format!("--meta {k} is given twice")));
        }
        metadata.insert(k, v);
    }
    let mut hardware: Vec<String> = Vec::with_capacity(args.hardware.len());
    for hw in args.hardware {
        if !hardware.contains(&hw) {
            hardware.push(hw);
        }
    }

    let created = Clock::system().now();
    let expires = match args.expires {
        None => None,
        Some(d) => Some(
            created
                .checked_add(d.as_secs())
                .ok_or_else(|| CliError::Usage("--expires is too far in the future".to_owned()))?,
        ),
    };
    let mut manifest = Manifest {
        format_version: FORMAT_VERSION,
        product: args.product,
        version: args.release_version,
        security_version: args.security_version,
        artifact_sha256: [0; 32],
        artifact_size: 0,
        hardware,
        created,
        expires,
        installer: args.installer,
        metadata,
        chunk_index: None,
    };
    // Check the bounds before the (possibly long) hashing.
    manifest.check_limits().map_err(cannot_sign)?;

    // One pass over the artifact: its digest and size, and its chunk index unless refused.
    let index = if args.no_chunk_index {
        let mut hasher = Hasher::new();
        let size = files::stream_file(&args.artifact, "hashing", |chunk| {
            hasher.update(chunk);
            Ok(())
        })?;
        manifest.artifact_sha256 = hasher.finish().0;
        manifest.artifact_size = size;
        None
    } else {
        let indexed = files::hash_and_index(&args.artifact, "hashing", ChunkParams::DEFAULT)?;
        manifest.artifact_sha256 = indexed.digest.0;
        manifest.artifact_size = indexed.size;
        let bytes = indexed.index.to_cbor();
        manifest.chunk_index = Some(ChunkIndexRef {
            sha256: Digest::of(&bytes).0,
            size: bytes.len() as u64,
        });
        Some((bytes, indexed.index.chunks.len()))
    };

    let bytes = release::sign(&manifest, &signing_keys);
    // Self-check: what we write must decode under the same limits devices apply.
    SignedRelease::decode(&bytes).map_err(cannot_sign)?;
    // The index first: a release that names an index is never on disk without it.
    let index_note = match &index {
        None => String::new(),
        Some((index_bytes, chunks)) => {
            let path = chunks_path(&args.out);
            files::write_atomic(&path, index_bytes, 0o644, Overwrite::Allow)?;
            format!(
                "; chunk index sha256={} size={} chunks={chunks} -> {}",
                Digest::of(index_bytes),
                index_bytes.len(),
                path.display()
            )
        }
    };
    files::write_atomic(&args.out, &bytes, 0o644, Overwrite::Allow)?;

    writeln!(
        std::io::stdout().lock(),
        "signed {} {} security_version={} sha256={} size={} with {} key(s) -> {}{index_note}",
        manifest.product,
        manifest.version,
        manifest.security_version,
        manifest.artifact_digest(),
        manifest.artifact_size,
        signing_keys.len(),
        args.out.display()
    )
    .map_err(CliError::Stdout)
}

/// Where `ota release sign --out RELEASE` writes the release's chunk index (and where
/// `ota release publish RELEASE` reads it): `RELEASE.chunks`.
pub(crate) fn chunks_path(release: &Path) -> PathBuf {
    let mut name = release.as_os_str().to_owned();
    name.push(".chunks");
    PathBuf::from(name)
}

/// A manifest that cannot be signed, as a usage error naming the bound.
fn cannot_sign(e: ReleaseError) -> CliError {
    match e {
        ReleaseError::LimitExceeded { what, limit } => CliError::Usage(format!(
            "cannot sign: {what} is too long (the limit is {limit}, in bytes or entries)"
        )),
        other => CliError::Usage(format!("cannot sign: {other}")),
    }
}

/// `ota release verify`.
fn verify(args: &VerifyArgs) -> Result<(), CliError> {
    let mut trusted = Vec::with_capacity(args.trust.len());
    for path in &args.trust {
        trusted.push(keys::load_verifying_key(path)?);
    }
    let key_count = trusted.len();
    let trust = TrustSet::new(trusted, args.threshold).map_err(CliError::Trust)?;

    let signed = read_release(&args.release)?;
    let policy = Policy {
        hardware_class: args.hardware.clone(),
        security_floor: args.floor,
        now: Clock::system().now(),
    };
    let verified = signed
        .verify(&trust, &policy)
        .map_err(|e| explain(e, &signed.manifest, &policy))?;
    let m = &verified.manifest;

    let artifact_note = match &args.artifact {
        None => String::new(),
        Some(path) => {
            let mut verifier = ArtifactVerifier::for_manifest(m);
            files::stream_file(path, "verifying", |chunk| {
                verifier.update(chunk).map_err(CliError::rejected)
            })?;
            let digest = verifier.finish().map_err(CliError::rejected)?;
            format!(
                "; artifact sha256={digest} size={} matches",
                m.artifact_size
            )
        }
    };
    writeln!(
        std::io::stdout().lock(),
        "ok: {} {} security_version={} signed by {} of {} trusted keys (threshold {}){}",
        m.product,
        m.version,
        m.security_version,
        verified.signers.len(),
        key_count,
        trust.threshold(),
        artifact_note
    )
    .map_err(CliError::Stdout)
}

/// A refusal with the context a human needs to act on it.
fn explain(error: ReleaseError, m: &Manifest, policy: &Policy) -> CliError {
    let detail = match &error {
        ReleaseError::IncompatibleHardware => format!(
            " (--hw {}; the release lists: {})",
            policy.hardware_class.as_deref().unwrap_or_default(),
            m.hardware.join(", ")
        ),
        ReleaseError::Expired { expires, .. } => match view::rfc3339(*expires) {
            Some(t) => format!(", i.e. {t}"),
            None => String::new(),
        },
        _ => String::new(),
    };
    CliError::Rejected { error, detail }
}

/// `ota release show`.
fn show(args: &ShowArgs) -> Result<(), CliError> {
    let signed = read_release(&args.release)?;
    let view = ReleaseView::new(&signed);
    let text = if args.json {
        view.to_json()
    } else {
        view.to_text(Clock::system().now())
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(CliError::Stdout)
}

/// Reads and decodes a release file (bounded by [`Limits::MAX_RELEASE_BYTES`]). A file that is
/// not a release is a refusal (exit 1); a file that cannot be read is an I/O error (exit 2).
fn read_release(path: &Path) -> Result<SignedRelease, CliError> {
    let bytes =
        files::read_bounded(path, Limits::MAX_RELEASE_BYTES as u64, "a release").map_err(|e| {
            match e {
                CliError::TooLarge { limit, .. } => CliError::Rejected {
                    error: ReleaseError::LimitExceeded {
                        what: "release",
                        limit: limit as usize,
                    },
                    detail: format!(" (file {})", path.display()),
                },
                other => other,
            }
        })?;
    SignedRelease::decode(&bytes).map_err(|error| CliError::Rejected {
        error,
        detail: format!(" (file {})", path.display()),
    })
}

/// Parses `KEY=VALUE` for `--meta`.
fn parse_meta(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!(
            "expected KEY=VALUE with a non-empty KEY, got `{s}`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_parses_key_value() {
        assert_eq!(parse_meta("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_meta("a="), Ok(("a".into(), String::new())));
        assert!(parse_meta("=b").is_err());
        assert!(parse_meta("ab").is_err());
    }
}
