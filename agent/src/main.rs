//! `ota-agent`: the device daemon of ota.
//!
//! ```text
//! ota-agent run [--config PATH]             run the agent (until SIGTERM / Ctrl-C)
//! ota-agent status [--config PATH] [--json] what the journal says: running, known-good, trial, cache
//! ota-agent check-power [--config PATH] [--json]  what the power gate sees now
//! ota-agent flag NAME [--config PATH]       exit 0 if the feature flag is on, 1 if off, 2 on error
//! ota-agent flags [--config PATH] [--json]  every feature flag of this device
//! ota-agent resync [--config PATH] [--yes]  reset the generation watermark (agent stopped)
//! ```
//!
//! Logs go to stderr; `OTA_LOG` (else `RUST_LOG`) sets the level (`info` by default),
//! optionally per target (`OTA_LOG=info,ota_agent=debug`); colour only on a terminal without
//! `NO_COLOR`. Errors are one line, each cause once, exit status 1.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ota_agent::config::{AgentConfig, DEFAULT_CONFIG_PATH};
use ota_agent::report::{PowerReport, StateReport};
use ota_agent::term::error_line;
use ota_agent::{Agent, AgentOptions, Flags};

/// The ota device agent: verifies, downloads, installs and trials signed releases.
#[derive(Debug, Parser)]
#[command(name = "ota-agent", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent: connect to the broker, act on desired states, report (until SIGTERM).
    Run {
        /// The configuration file.
        #[arg(long, short, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Show what the journal says: running, known-good, trial, cache, last result.
    Status {
        /// The configuration file (for the data directory).
        #[arg(long, short, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 if feature flag NAME is on for this device, 1 if it is off or unknown, 2 on an
    /// error (no flag file yet, bad file). Reads `<data_dir>/flags`.
    Flag {
        /// The flag name.
        name: String,
        /// The configuration file (for the data directory).
        #[arg(long, short, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Print this device's feature flags (`name=on|off` lines, or one line of JSON).
    Flags {
        /// The configuration file (for the data directory).
        #[arg(long, short, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Reset the generation watermark to 0 so the device acts on the next desired state the
    /// server sends (stop the agent first). Asks for confirmation unless `--yes`.
    Resync {
        /// The configuration file (for the data directory).
        #[arg(long, short, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Show what the power gate sees now and whether an update would start.
    CheckPower {
        /// The configuration file (power policy and power-supply path).
        #[arg(long, short, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn init_logs() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    ota_agent::term::init_logs(Targets::new().with_default(LevelFilter::INFO));
}

fn load(path: &std::path::Path) -> anyhow::Result<AgentConfig> {
    AgentConfig::load(path).with_context(|| format!("{}", path.display()))
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let config = load(path)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async move {
        let device = config.device_id.clone();
        let agent = Agent::start(config, AgentOptions::default()).await?;
        tracing::info!(
            device,
            version = ota_agent::agent::AGENT_VERSION,
            "agent started"
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot listen for SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot listen for Ctrl-C")?,
            _ = term.recv() => {}
        }
        tracing::info!("signal received: shutting down");
        agent.shutdown().await?;
        Ok(())
    })
}

/// `ota-agent resync`: confirms on stdin (unless `yes`), then resets the watermark.
fn resync(config: &std::path::Path, yes: bool) -> anyhow::Result<()> {
    use ota_agent::resync;
    use ota_agent::storage::FsStorage;
    let c = load(config)?;
    let current = resync::watermark(FsStorage::shared(), &c.data_dir)?;
    if !yes {
        eprintln!(
            "device {}: generation watermark {current} -> 0. The agent must be stopped. \
             The device will act on the next desired state it is sent (downgrades stay refused). \
             Type 'yes' to go on:",
            c.device_id
        );
        let mut answer = String::new();
        std::io::stdin()
            .read_line(&mut answer)
            .context("cannot read the confirmation")?;
        if answer.trim() != "yes" {
            anyhow::bail!("not confirmed: nothing changed");
        }
    }
    let previous = resync::resync(FsStorage::shared(), &c.data_dir)?;
    println!("generation watermark reset from {previous} to 0");
    Ok(())
}

/// The device's flag file, as the configuration names it.
fn flags_of(config: &std::path::Path) -> anyhow::Result<Flags> {
    let c = load(config)?;
    Ok(Flags::load(c.data_dir.join(ota_agent::flags::FILE_NAME))?)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Flag { name, config } => {
            return match flags_of(&config) {
                Ok(flags) if flags.is_enabled(&name) => ExitCode::SUCCESS,
                Ok(_) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("error: {}", error_line(e.as_ref()));
                    ExitCode::from(2)
                }
            };
        }
        Command::Flags { config, json } => flags_of(&config).map(|flags| {
            if json {
                println!("{}", flags.to_json());
            } else {
                for (name, on) in flags.iter() {
                    println!("{name}={}", if on { "on" } else { "off" });
                }
            }
        }),
        Command::Run { config } => {
            init_logs();
            run(&config)
        }
        Command::Status { config, json } => load(&config).and_then(|c| {
            let report = StateReport::read(&c)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report.to_json())?);
            } else {
                print!("{}", report.to_text());
            }
            Ok(())
        }),
        Command::Resync { config, yes } => resync(&config, yes),
        Command::CheckPower { config, json } => load(&config).map(|c| {
            let report = PowerReport::read(&c);
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_text());
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
