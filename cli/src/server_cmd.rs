//! `ota server`: run the fleet server in the foreground until Ctrl-C / SIGTERM;
//! `ota server device-credential`: print a device's MQTT password (embedded broker, or an
//! external broker's password file); `ota server status` (`status_cmd.rs`): the replicas.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use ota_server::broker::credentials::DeviceSecret;
use ota_server::config::{Config, MqttBroker, TrustConfig};
use tracing_subscriber::filter::Targets;

use crate::error::CliError;

/// Arguments of `ota server`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct ServerArgs {
    /// A tool instead of running the server.
    #[command(subcommand)]
    command: Option<ServerCommand>,
    /// The configuration file (see docs/server.md). Default: ./server.toml if it exists.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Use this external MQTT broker (mqtt[s]://host:port) instead of the configured one;
    /// repeat it to give the broker cluster's failover nodes too. One --mqtt keeps
    /// mqtt.failover_urls of server.toml; several replace them (docs/server.md).
    #[arg(long, value_name = "URL")]
    mqtt: Vec<String>,
    /// Run the embedded MQTT broker on this address (default 127.0.0.1:1883; port 0 picks one).
    #[arg(long, value_name = "ADDR", conflicts_with = "mqtt")]
    mqtt_listen: Option<SocketAddr>,
    /// The database: sqlite://PATH?mode=rwc or postgres://user@host/db
    /// (default: SQLite under the data directory).
    #[arg(long, value_name = "URL")]
    database: Option<String>,
    /// The artifact store: s3://bucket/prefix or file:///dir (default: files under the data
    /// directory).
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// The HTTP listen address (REST API, artifacts, /metrics).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// The base URL devices download artifacts from (default: http:// or, with TLS, https://
    /// + the listen address).
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// Serve HTTPS with this certificate chain (PEM; with --tls-key).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Where the default database and artifacts live.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// A trusted release public key (without --config; repeatable).
    #[arg(long = "trust", value_name = "PUBKEY")]
    trust: Vec<PathBuf>,
    /// Distinct trusted signatures a release needs (without --config).
    #[arg(long, value_name = "K", default_value_t = 1)]
    threshold: usize,
}

/// Tools of `ota server`.
#[derive(Debug, Subcommand)]
enum ServerCommand {
    /// Print DEVICE's MQTT password (derived from mqtt.device_secret_file of server.toml, which
    /// is created if missing), for the embedded broker or an external broker's password file
    /// (mosquitto_passwd). The device logs in with username = its device id and this password.
    DeviceCredential(CredentialArgs),
    /// List the replicas sharing the server's database (role, epoch, last heartbeat) and who
    /// holds the coordinator lease (docs/ha.md).
    Status(crate::status_cmd::StatusArgs),
}

/// Arguments of `ota server device-credential`.
#[derive(Debug, Args)]
struct CredentialArgs {
    /// The server's configuration file.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// The device id.
    #[arg(value_name = "DEVICE_ID")]
    device: String,
}

/// `ota server device-credential`: the password on stdout, nothing else.
fn device_credential(args: &CredentialArgs) -> Result<(), CliError> {
    let config = Config::load(&args.config).map_err(|e| CliError::Usage(e.to_string()))?;
    let device = ota_core::wire::DeviceId::new(&args.device)
        .map_err(|e| CliError::Usage(format!("{:?}: {e}", args.device)))?;
    let path = config.mqtt.device_secret_file().ok_or_else(|| {
        CliError::Usage(format!(
            "{}: mqtt.device_secret_file is not set (device passwords derive from it)",
            args.config.display()
        ))
    })?;
    let secret = DeviceSecret::load_or_create(path).map_err(|e| CliError::Usage(e.to_string()))?;
    println!("{}", secret.password(&device));
    Ok(())
}

/// `ota server`.
pub(crate) fn run(args: ServerArgs) -> Result<(), CliError> {
    match &args.command {
        Some(ServerCommand::DeviceCredential(cred)) => return device_credential(cred),
        Some(ServerCommand::Status(status)) => return crate::status_cmd::run(status),
        None => {}
    }
    let config = configure(&args)?;
    init_logs(
        Targets::new()
            .with_default(tracing::Level::WARN)
            .with_target("ota_server", tracing::Level::INFO),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Server(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        let running = ota_server::Server::start(config)
            .await
            .map_err(|e| CliError::Server(error_chain(&e)))?;
        eprintln!(
            "ota server: {} (artifacts for devices: {}/artifacts/), MQTT {}",
            running.base_url(),
            running.public_url(),
            running.mqtt_addr().map_or_else(
                || "external broker".to_string(),
                |a| format!(
                    "{}://{a}",
                    if running.mqtt_tls() { "mqtts" } else { "mqtt" }
                )
            ),
        );
        let stop = running.shutdown_handle();
        tokio::spawn(async move {
            wait_for_signal().await;
            stop.shutdown();
        });
        running
            .wait()
            .await
            .map_err(|e| CliError::Server(error_chain(&e)))
    })
}

/// The configuration of `ota server`: server.toml (or the defaults) with the command line's
/// overrides, validated.
fn configure(args: &ServerArgs) -> Result<Config, CliError> {
    let mut config = load(args)?;
    config
        .mqtt
        .override_external(&args.mqtt)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    if let Some(listen) = args.mqtt_listen {
        // Keep the front door's TLS and authentication of server.toml.
        let security = match &config.mqtt.broker {
            MqttBroker::Embedded { security, .. } => security.clone(),
            _ => Default::default(),
        };
        config.mqtt.broker = MqttBroker::Embedded { listen, security };
    }
    if let Some(url) = &args.database {
        config.database.url = Some(url.clone());
    }
    if let Some(url) = &args.store {
        config.store.url = Some(url.clone());
    }
    if let Some(listen) = args.listen {
        config.http.listen = listen;
    }
    if let Some(url) = &args.public_url {
        config.http.public_url = Some(url.clone());
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.http.tls_cert = Some(cert.clone());
        config.http.tls_key = Some(key.clone());
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    config
        .validate()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    Ok(config)
}

fn load(args: &ServerArgs) -> Result<Config, CliError> {
    let path = args.config.clone().or_else(|| {
        let default = PathBuf::from("server.toml");
        default.is_file().then_some(default)
    });
    if let Some(path) = path {
        if !args.trust.is_empty() {
            return Err(CliError::Usage(
                "--trust is for running without --config; put keys in [trust] of server.toml"
                    .into(),
            ));
        }
        return Config::load(&path).map_err(|e| CliError::Usage(e.to_string()));
    }
    if args.trust.is_empty() {
        return Err(CliError::Usage(
            "no server.toml here: pass --config FILE, or at least one --trust PUBKEY (then no \
             operator may use the API: operators and their tokens live in server.toml)"
                .into(),
        ));
    }
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(ota_server::config::DEFAULT_DATA_DIR));
    Ok(Config::new(
        data_dir,
        TrustConfig::new(args.trust.clone(), args.threshold),
    ))
}

/// Logs to stderr, filtered by `OTA_LOG` (else `RUST_LOG`; e.g. `info`,
/// `ota_server=debug,info`), else by `default`; coloured only on a terminal without
/// `NO_COLOR` (see [`ota_agent::term`]).
pub(crate) fn init_logs(default: Targets) {
    ota_agent::term::init_logs(default);
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// `ota server ...` as the real command line nests it.
    #[derive(Debug, Parser)]
    struct Cmd {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(Debug, Subcommand)]
    enum Sub {
        Server(ServerArgs),
    }

    fn configure_with(toml: &str, extra: &[&str]) -> Result<Config, CliError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        std::fs::write(&path, toml).unwrap();
        let mut argv = vec!["ota", "server", "--config", path.to_str().unwrap()];
        argv.extend_from_slice(extra);
        let Sub::Server(args) = Cmd::try_parse_from(argv).unwrap().command;
        configure(&args)
    }

    fn nodes(config: &Config) -> (String, Vec<(String, u16)>) {
        match &config.mqtt.broker {
            MqttBroker::External {
                host,
                port,
                failover,
                ..
            } => (format!("{host}:{port}"), failover.clone()),
            other => panic!("{other:?}"),
        }
    }

    /// Issue 15: `--mqtt` used to drop mqtt.failover_urls of server.toml.
    #[test]
    fn issue15_mqtt_override_keeps_or_replaces_the_failover_nodes() {
        let toml = "[mqtt]\nurl = \"mqtt://n1:1883\"\nfailover_urls = [\"mqtt://n2:1883\"]\n\
                    [trust]\nkeys = [\"a.pem\"]\n";
        let kept = configure_with(toml, &["--mqtt", "mqtt://local:1884"]).unwrap();
        assert_eq!(
            nodes(&kept),
            ("local:1884".to_string(), vec![("n2".to_string(), 1883)])
        );
        let replaced = configure_with(
            toml,
            &[
                "--mqtt",
                "mqtt://a:1",
                "--mqtt",
                "mqtt://b:2",
                "--mqtt",
                "mqtt://c:3",
            ],
        )
        .unwrap();
        assert_eq!(
            nodes(&replaced),
            (
                "a:1".to_string(),
                vec![("b".to_string(), 2), ("c".to_string(), 3)]
            )
        );
        assert!(matches!(
            configure_with(toml, &["--mqtt", "mqtts://tls:8883"]),
            Err(CliError::Usage(_))
        ));
        let unchanged = configure_with(toml, &[]).unwrap();
        assert_eq!(nodes(&unchanged).1, vec![("n2".to_string(), 1883)]);
    }
}
