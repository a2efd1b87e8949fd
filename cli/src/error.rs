//! The CLI's error type, and the exit status each cause maps to.
//!
//! | status | meaning |
//! |---|---|
//! | 0 | success (for `verify`: the release, and the artifact if given, are valid) |
//! | 1 | `ota demo`: a step did not behave as described; otherwise the release or its artifact was refused (bad signature, wrong hardware, expired, digest mismatch, not a release at all, ...) |
//! | 2 | usage, input/output or key-file problem: nothing could be decided |
//! | 3 | the fleet server is unreachable or failed (5xx); `ota demo` could not run its fleet |
//! | 4 | `ota rollout status --watch`: the watched rollout ended aborted (a completed one is 0) |
//! | 5 | `ota server status`: no replica holds a live coordinator lease (printed all the same) |
//!
//! A fleet server's refusal of a request (4xx: unknown release, bad filter, conflict, no
//! token, a role that does not grant the request, ...) is status 1, like a refused release,
//! shown in one line as the server's message, `cause` and status (`... (forbidden-role, HTTP
//! 403)`).

use std::io;
use std::path::PathBuf;

use ota_core::fleet::RolloutId;
use ota_core::release::{ReleaseError, TrustSetError, TrustUpdateError};

/// Exit status when the release or its artifact is refused.
pub(crate) const EXIT_REJECTED: u8 = 1;
/// Exit status for usage, input/output and key-file errors.
pub(crate) const EXIT_USAGE: u8 = 2;
/// Exit status when the fleet server cannot be reached or fails.
pub(crate) const EXIT_SERVER: u8 = 3;
/// Exit status when a watched rollout ended without completing.
pub(crate) const EXIT_ROLLOUT_ABORTED: u8 = 4;
/// Exit status of `ota server status` when no replica holds a live coordinator lease.
pub(crate) const EXIT_NO_LEADER: u8 = 5;

/// Everything the `key` and `release` commands can fail with. Each variant displays as one line;
/// the underlying cause, if any, is its [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// The release or its artifact was refused; `detail` adds CLI context (may be empty).
    #[error("{error}{detail}")]
    Rejected {
        /// Why core refused it.
        error: ReleaseError,
        /// Extra context for a human, starting with a space or empty.
        detail: String,
    },
    /// A file could not be read.
    #[error("cannot read {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The release names a chunk index, but its file cannot be read.
    #[error(
        "the release names a chunk index, but {} cannot be read (`ota release sign` writes it \
         beside the release as RELEASE.chunks; give another file with --chunk-index)",
        .path.display()
    )]
    MissingChunkIndex {
        /// The file looked for.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file is larger than anything of its kind can be.
    #[error("{} is too large to be {what} (more than {limit} bytes)", .path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// What it should have been ("a key file", "a release").
        what: &'static str,
        /// The size bound.
        limit: u64,
    },
    /// A file would be overwritten without `--force`.
    #[error("{} already exists (pass --force to overwrite it)", .0.display())]
    Exists(PathBuf),
    /// A key file is not the kind of key expected here.
    #[error("{}: {problem}", .path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        problem: KeyProblem,
    },
    /// The `--trust` keys and `--threshold` do not form a trust set.
    #[error("invalid trust set: {0}")]
    Trust(TrustSetError),
    /// A trust-set update does not verify against the current trust set given to check it.
    #[error("{0}")]
    TrustRefused(TrustUpdateError),
    /// The operating system's random source failed.
    #[error("cannot get random bytes for a new key: {0}")]
    Random(getrandom::Error),
    /// A bad combination or value of arguments that clap cannot check.
    #[error("{0}")]
    Usage(String),
    /// Writing to standard output failed.
    #[error("cannot write to standard output")]
    Stdout(#[source] io::Error),
    /// The fleet server answered with an error.
    #[error("{message} ({cause}, HTTP {status})")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The stable cause.
        cause: String,
        /// The server's message.
        message: String,
    },
    /// The fleet server could not be reached (or answered something unreadable).
    #[error("fleet server: {0}")]
    Http(String),
    /// The fleet server failed to start or stopped with an error.
    #[error("{0}")]
    Server(String),
    /// `ota demo` could not set up or run its fleet.
    #[error("demo: {0}")]
    Demo(String),
    /// `ota rollout status --watch` saw the rollout end aborted.
    #[error("rollout {id} aborted: {reason}")]
    RolloutAborted {
        /// The rollout.
        id: RolloutId,
        /// The abort reason's message.
        reason: String,
    },
    /// `ota demo` ran, but a step did not behave as described.
    #[error("demo: {0}")]
    DemoDiffered(String),
    /// `ota server status`: no replica holds a live coordinator lease.
    #[error("no replica coordinates: the coordinator lease (epoch {epoch}) has no live holder")]
    NoLeader {
        /// The lease's epoch.
        epoch: i64,
    },
}

impl CliError {
    /// The process exit status for this error.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            CliError::Rejected { .. } | CliError::TrustRefused(_) | CliError::DemoDiffered(_) => {
                EXIT_REJECTED
            }
            CliError::Api { status, .. } if *status < 500 => EXIT_REJECTED,
            CliError::Api { .. } | CliError::Http(_) | CliError::Server(_) | CliError::Demo(_) => {
                EXIT_SERVER
            }
            CliError::RolloutAborted { .. } => EXIT_ROLLOUT_ABORTED,
            CliError::NoLeader { .. } => EXIT_NO_LEADER,
            _ => EXIT_USAGE,
        }
    }

    /// A refusal by core without extra context.
    pub(crate) fn rejected(error: ReleaseError) -> Self {
        CliError::Rejected {
            error,
            detail: String::new(),
        }
    }

    /// Whether this is a write to a closed standard output (`ota release show R | head -1`).
    pub(crate) fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Stdout(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// What is wrong with a key file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyProblem {
    /// No PEM block in the file.
    #[error("not a PEM key file (expected a line -----BEGIN {expected}-----)")]
    NotPem {
        /// The PEM label expected.
        expected: &'static str,
    },
    /// A public key where a private key is needed.
    #[error(
        "this is a public key, but a private key is needed here \
         (PKCS#8 PEM, -----BEGIN PRIVATE KEY-----)"
    )]
    PublicNotPrivate,
    /// A private key where a public key is needed.
    #[error(
        "this is a private key, but a public key is needed here \
         (SPKI PEM, -----BEGIN PUBLIC KEY-----; derive it with `openssl pkey -in KEY -pubout`)"
    )]
    PrivateNotPublic,
    /// A password-protected PKCS#8 key.
    #[error(
        "encrypted private keys are not supported; \
         decrypt it with `openssl pkey -in KEY -out PLAIN.key`"
    )]
    Encrypted,
    /// A PEM block of some other kind (certificate, RSA key, OpenSSH key, ...).
    #[error("holds a `{0}` PEM block, not an ed25519 PKCS#8 or SPKI key")]
    OtherPem(String),
    /// The PEM block does not decode to an ed25519 key.
    #[error("not a valid ed25519 {kind}: {reason}")]
    Invalid {
        /// "private key" or "public key".
        kind: &'static str,
        /// The decoder's reason.
        reason: String,
    },
    /// The key could not be encoded (should not happen).
    #[error("cannot encode the key: {0}")]
    Encode(String),
}
