//! Key rotation: `ota key rotate` signs a trust-set update offline with `k` of the current
//! keys; `ota trust publish` hands it to the fleet server (which verifies it, keeps it and
//! relays it to every device on `ota/v1/trust`); `ota trust show` prints the set in force.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use ota_core::release::{
    KeyId, SignedTrustUpdate, TrustSet, TrustState, TrustUpdate, sign_trust_update,
};
use ota_server::clock::Clock;
use serde_json::Value;

use crate::api::{Api, ServerArgs, cli_error};
use crate::error::CliError;
use crate::files::{self, Overwrite};
use crate::keys;
use crate::output::{out, print_json};

/// Largest trust-set update file read (the server's body limit).
const MAX_UPDATE_FILE: u64 = 64 * 1024;

/// Help of `ota key rotate`.
const ROTATE_HELP: &str = "\
Sign with k private keys of the CURRENT trust set (--key, repeated); list every public key of
the NEW set (--new-key, repeated). Current keys left out of the new set are revoked: devices
refuse releases and later rotations signed by them. The sequence must be above the one in force
(`ota trust show`). The file is public: publish it with `ota trust publish FILE`.

Example (2 of 3 keys rotate away from a lost key c, adding d):
  ota key rotate --key a.key --key b.key \\
      --new-key a.pub --new-key b.pub --new-key d.pub --threshold 2 --sequence 1 \\
      --current-key a.pub --current-key b.pub --current-key c.pub --current-threshold 2 \\
      --out rotation-1.trust";

/// Arguments of `ota key rotate`.
#[derive(Debug, Args)]
#[command(after_help = ROTATE_HELP)]
pub(crate) struct RotateArgs {
    /// Private key of the current trust set to sign with (PKCS#8 PEM); repeat: k of the
    /// current keys must sign.
    #[arg(long = "key", value_name = "KEYFILE", required = true)]
    keys: Vec<PathBuf>,
    /// Public key of the new trust set (SPKI PEM); repeat for every key of the new set.
    #[arg(long = "new-key", value_name = "PUBKEY", required = true)]
    new_keys: Vec<PathBuf>,
    /// How many keys of the new set must sign a release (or the next rotation).
    #[arg(long, value_name = "K")]
    threshold: u32,
    /// The update's sequence (1 or more): above the one in force, or devices refuse it as
    /// stale.
    #[arg(long, value_name = "N")]
    sequence: u64,
    /// Public key of the current trust set; repeat. Given, the update is checked against the
    /// current set before it is written.
    #[arg(long = "current-key", value_name = "PUBKEY")]
    current_keys: Vec<PathBuf>,
    /// The current set's threshold, for the check (default: the number of --key).
    #[arg(long, value_name = "K", requires = "current_keys")]
    current_threshold: Option<usize>,
    /// Where to write the signed update (atomically: temporary file, fsync, rename).
    #[arg(long, value_name = "FILE", default_value = "trust-update.cose")]
    out: PathBuf,
    /// Overwrite --out if it exists (refused by default).
    #[arg(long)]
    force: bool,
}

/// `ota trust <command>`.
#[derive(Debug, Subcommand)]
pub(crate) enum TrustCommand {
    /// Hand a signed trust-set update (from `ota key rotate`) to the fleet server: it verifies
    /// it against the set in force, keeps it, verifies every later release against the new set
    /// and relays it to every device.
    Publish(PublishArgs),
    /// Show the trust set in force on the fleet server (sequence, threshold, key ids).
    Show(ShowArgs),
}

/// Arguments of `ota trust publish`.
#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The signed trust-set update.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `ota trust show`.
#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `ota key rotate`.
pub(crate) fn rotate(args: &RotateArgs) -> Result<(), CliError> {
    if args.sequence == 0 {
        return Err(CliError::Usage(
            "--sequence must be at least 1 (0 is the configured trust set)".into(),
        ));
    }
    let signers = args
        .keys
        .iter()
        .map(|p| keys::load_signing_key(p))
        .collect::<Result<Vec<_>, _>>()?;
    let new_keys = load_public(&args.new_keys)?;
    let threshold = usize::try_from(args.threshold).unwrap_or(usize::MAX);
    // The new set must be usable, or every device would refuse the update.
    let new_set = TrustSet::new(new_keys.clone(), threshold).map_err(CliError::Trust)?;
    let update = TrustUpdate::new(
        args.sequence,
        &new_keys,
        args.threshold,
        Clock::system().now(),
    );
    let bytes = sign_trust_update(&update, &signers);
    if !args.current_keys.is_empty() {
        let current = TrustSet::new(
            load_public(&args.current_keys)?,
            args.current_threshold.unwrap_or(signers.len()),
        )
        .map_err(CliError::Trust)?;
        // Signatures and the new set are checked; the sequence in force is the server's.
        TrustState::initial(current)
            .check(&bytes)
            .map_err(CliError::TrustRefused)?;
    }
    let overwrite = if args.force {
        Overwrite::Allow
    } else {
        Overwrite::Refuse
    };
    files::write_atomic(&args.out, &bytes, 0o644, overwrite)?;
    let ids = |keys: &mut dyn Iterator<Item = KeyId>| {
        keys.map(|k| k.to_string()).collect::<Vec<_>>().join(" ")
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "trust update: {}", args.out.display())
        .and_then(|()| writeln!(stdout, "sequence:     {}", args.sequence))
        .and_then(|()| {
            writeln!(
                stdout,
                "new keys:     {} (threshold {})",
                ids(&mut new_set.keys().map(|(id, _)| *id)),
                new_set.threshold()
            )
        })
        .and_then(|()| {
            writeln!(
                stdout,
                "signed by:    {}",
                ids(&mut signers.iter().map(|k| KeyId::of(&k.verifying_key())))
            )
        })
        .map_err(CliError::Stdout)
}

fn load_public(paths: &[PathBuf]) -> Result<Vec<ota_core::release::VerifyingKey>, CliError> {
    paths.iter().map(|p| keys::load_verifying_key(p)).collect()
}

/// Runs `ota trust <command>`.
pub(crate) fn run(cmd: TrustCommand) -> Result<(), CliError> {
    match cmd {
        TrustCommand::Publish(args) => publish(&args),
        TrustCommand::Show(args) => {
            let api = Api::new(&args.server)?;
            let answer = api.get("/api/v1/trust", &[])?;
            print_view(&answer, args.json)
        }
    }
}

/// `ota trust publish`.
fn publish(args: &PublishArgs) -> Result<(), CliError> {
    let bytes = read_update(&args.file)?;
    let api = Api::new(&args.server)?;
    let answer = api
        .block_on(api.client().publish_trust(&bytes))
        .map_err(cli_error)?;
    print_view(&answer, args.json)
}

/// Reads a trust-set update file, refusing what does not even decode before it is sent.
fn read_update(path: &Path) -> Result<Vec<u8>, CliError> {
    let bytes = files::read_bounded(path, MAX_UPDATE_FILE, "a trust-set update")?;
    SignedTrustUpdate::decode(&bytes).map_err(CliError::TrustRefused)?;
    Ok(bytes)
}

fn print_view(view: &Value, json: bool) -> Result<(), CliError> {
    if json {
        return print_json(view);
    }
    let source = if view["rotated"].as_bool() == Some(true) {
        "rotated"
    } else {
        "configured"
    };
    let mut text = format!(
        "sequence:  {} ({source})\nthreshold: {}\nkeys:\n",
        view["sequence"], view["threshold"]
    );
    for key in view["keys"].as_array().into_iter().flatten() {
        text.push_str(&format!("  {}\n", key.as_str().unwrap_or("-")));
    }
    text.push_str(&devices_text(&view["devices"]));
    out(&text)
}

/// Which devices use the set (`GET` answers only): `devices: 4 of 5 on this set; behind: gw-2`.
fn devices_text(d: &Value) -> String {
    if !d.is_object() {
        return String::new();
    }
    let behind: Vec<&str> = d["behind"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut text = format!(
        "devices:   {} of {} on this set",
        d["on_this_set"], d["total"]
    );
    if !behind.is_empty() {
        text.push_str(&format!("; behind: {}", behind.join(", ")));
    }
    text.push('\n');
    text
}
