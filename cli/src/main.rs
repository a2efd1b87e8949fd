//! `ota`: the single control binary of ota (over-the-air updates for device fleets).
//!
//! # Layout
//!
//! - `main.rs`: the clap command tree, and the one place errors become a line on stderr and
//!   an exit status (`anyhow` lives here only).
//! - [`keys`]: `ota key ...` and loading key files (PKCS#8 / SPKI PEM, openssl-compatible).
//! - [`release_cmd`]: `ota release sign | verify | show`.
//! - [`view`]: the serde view `ota release show` prints.
//! - [`files`], [`progress`]: atomic writes, bounded reads, streaming with a progress bar.
//! - [`error`]: the typed error of the commands and its exit statuses.
//!
//! To add a command group (`ota server`, `ota rollout`, ...): a module with a clap
//! `Subcommand` enum (or `Args` struct) and a `run` function, one variant in [`Command`] and
//! one arm in [`run`].

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod error;
mod files;
mod keys;
mod progress;
mod release_cmd;
mod view;

use error::{CliError, EXIT_USAGE};

/// Exit statuses, shown by `ota --help`.
const EXIT_HELP: &str = "\
Exit status:
  0  success
  1  a release or artifact was refused (verification failed, or not a release)
  2  usage, I/O or key-file error

Errors are printed as one line `error: <cause>` on stderr.";

/// The `ota` command line.
#[derive(Debug, Parser)]
#[command(
    name = "ota",
    version,
    about = "Over-the-air updates for device fleets: keys, signed releases, and (soon) the fleet.",
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
    /// Sign, verify and show releases.
    #[command(subcommand)]
    Release(release_cmd::ReleaseCommand),
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
    eprint_line(&format!("error: {err:#}"));
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
