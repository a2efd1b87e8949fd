//! `ota`: the single control binary of ota (over-the-air updates for device fleets).
//!
//! # Layout
//!
//! - `main.rs`: the clap command tree, and the one place errors become a line on stderr and
//!   an exit status (`anyhow` lives here only).
//! - [`keys`]: `ota key ...` and loading key files (PKCS#8 / SPKI PEM, openssl-compatible).
//! - [`release_cmd`]: `ota release sign | verify | show`.
//! - [`view`]: the serde view `ota release show` prints.
//! - [`server_cmd`]: `ota server` (the fleet server in the foreground); [`status_cmd`]:
//!   `ota server status` (the replicas and the coordinator lease).
//! - The fleet server's clients, one module per command group: [`devices_cmd`] (`ota devices`),
//!   [`rollout_cmd`] (`ota rollout`), [`flag_cmd`] (`ota flag`), [`events_cmd`] (`ota events`)
//!   and `release_cmd::publish` (`ota release publish | list`); [`api`] is their REST client
//!   (`OTA_SERVER`, `OTA_TOKEN`), [`output`] their shared output helpers (stdout, JSON,
//!   tables) and [`values`] the parsers of percentages, durations and rates they share.
//! - [`trust_cmd`]: key rotation: `ota key rotate`, `ota trust publish | show`.
//! - [`demo_cmd`]: `ota demo` (a fleet server and real agents in this process, the
//!   `ota_demo` story).
//! - [`files`], [`progress`]: atomic writes, bounded reads, streaming with a progress bar.
//! - [`error`]: the typed error of the commands and its exit statuses.
//!
//! To add a command group (`ota server`, `ota rollout`, ...): a module with a clap
//! `Subcommand` enum (or `Args` struct) and a `run` function, one variant in [`Command`] and
//! one arm in [`run`].

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod api;
mod demo_cmd;
mod devices_cmd;
mod error;
mod events_cmd;
mod files;
mod flag_cmd;
mod keys;
mod output;
mod progress;
mod release_cmd;
mod rollout_cmd;
mod rollout_devices_cmd;
mod server_cmd;
mod status_cmd;
mod trust_cmd;
mod values;
mod view;

use error::{CliError, EXIT_USAGE};

/// Exit statuses, shown by `ota --help`.
const EXIT_HELP: &str = "\
Exit status:
  0  success
  1  refused: a release or artifact failed verification, or the fleet server refused the
     request (unknown release, bad filter, conflict, bad token, ...)
  2  usage, I/O or key-file error
  3  the fleet server is unreachable or failed

Fleet commands read the server URL and operator token from --server / OTA_SERVER
(default http://127.0.0.1:8080) and --token / OTA_TOKEN; for an https:// server,
--ca-file / OTA_CA_FILE pins the CA its certificate must chain to.

Errors are printed as one line `error: <cause>` on stderr.";

/// The `ota` command line.
#[derive(Debug, Parser)]
#[command(
    name = "ota",
    version,
    about = "Over-the-air updates for device fleets: keys, signed releases, the fleet server, devices, rollouts.",
    after_help = EXIT_HELP,
    propagate_version = false
)]
struct Cli {
    /// The command group.
    #[command(subcommand)]
    command: Command,
}

/// The command groups of `ota`.
#[derive(Debug, Subcommand)]
enum Command {
    /// Generate and inspect ed25519 signing keys.
    #[command(subcommand)]
    Key(keys::KeyCommand),
    /// Sign, verify, show, publish and list releases.
    #[command(subcommand)]
    Release(release_cmd::ReleaseCommand),
    /// Run the fleet server (embedded MQTT broker, SQLite and local files by default).
    Server(server_cmd::ServerArgs),
    /// List and show the devices of the fleet.
    #[command(subcommand)]
    Devices(devices_cmd::DevicesCommand),
    /// Create, watch and steer rollouts in health-gated waves.
    #[command(subcommand)]
    Rollout(rollout_cmd::RolloutCommand),
    /// The audit log: who changed what, when.
    Events(events_cmd::EventsArgs),
    /// Key rotation on the fleet server: publish a signed trust-set update, show the set in
    /// force.
    #[command(subcommand)]
    Trust(trust_cmd::TrustCommand),
    /// Feature flags: deploy dark, turn on for a sticky percent, widen, kill in seconds.
    #[command(subcommand)]
    Flag(flag_cmd::FlagCommand),
    /// The whole system in one process: a fleet server and real agents play a rollout story.
    Demo(demo_cmd::DemoArgs),
}

fn main() -> ExitCode {
    install_panic_hook();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(&err),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(&err),
    }
}

/// Runs one command.
fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Key(cmd) => keys::run(cmd)?,
        Command::Release(cmd) => release_cmd::run(cmd)?,
        Command::Server(args) => server_cmd::run(args)?,
        Command::Devices(cmd) => devices_cmd::run(cmd)?,
        Command::Rollout(cmd) => rollout_cmd::run(cmd)?,
        Command::Events(args) => events_cmd::run(&args)?,
        Command::Flag(cmd) => flag_cmd::run(cmd)?,
        Command::Trust(cmd) => trust_cmd::run(cmd)?,
        Command::Demo(args) => demo_cmd::run(&args)?,
    }
    Ok(())
}

/// Prints `error: <cause: source: ...>` as one line and picks the exit status: the command's
/// own for a [`CliError`], 2 otherwise.
fn report(err: &anyhow::Error) -> ExitCode {
    let cli_error = err.downcast_ref::<CliError>();
    if cli_error.is_some_and(CliError::is_broken_pipe) {
        // The reader went away (`ota release show R | head -1`): not an error of ours.
        return ExitCode::SUCCESS;
    }
    let line = ota_agent::term::error_line(err.as_ref());
    eprint_line(&format!("error: {line}"));
    ExitCode::from(cli_error.map_or(EXIT_USAGE, CliError::exit_code))
}

/// Help and version go to stdout with status 0; usage errors become one line on stderr
/// with status 2 (clap's own multi-line report is folded into that line).
fn usage_error(err: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = err.print();
        return ExitCode::from(if err.use_stderr() { EXIT_USAGE } else { 0 });
    }
    let rendered = err.render().to_string();
    // The first paragraph is the error; the rest (tips, usage) is folded into a --help hint.
    let first: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let message = first.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    eprint_line(&format!("error: {message} (see --help)"));
    ExitCode::from(EXIT_USAGE)
}

/// Writes one line to stderr, whatever the message contains, ignoring a closed stderr.
fn eprint_line(line: &str) {
    let line = line.replace(['\r', '\n'], " ");
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// A bug must still end as one line on stderr, not a backtrace.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_owned());
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprint_line(&format!(
            "error: internal error: {what}{place} (this is a bug in ota, please report it)"
        ));
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }
}
