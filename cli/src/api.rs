//! The fleet commands' side of the REST client: `--server` / `OTA_SERVER`, `--token` /
//! `OTA_TOKEN`, `--ca-file` / `OTA_CA_FILE`, and a blocking front of the one REST client,
//! [`ota_demo::api::Api`], whose errors become [`CliError`]s (the server's
//! `{ "error", "cause" }` as [`CliError::Api`]).

use std::path::PathBuf;

use clap::Args;
use ota_demo::api::{self, ApiError};
use serde::Serialize;
use serde_json::Value;

use crate::error::CliError;

pub(crate) use ota_demo::api::encode;

/// Where the fleet server is and who is asking. Its `Debug` hides the token.
#[derive(Clone, Args)]
pub(crate) struct ServerArgs {
    /// The fleet server's base URL.
    #[arg(
        long,
        env = "OTA_SERVER",
        value_name = "URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub(crate) server: String,
    /// The operator's bearer token (from `[[operators]]` in server.toml). Prefer the
    /// environment variable: a flag is visible to other users in the process list.
    #[arg(long, env = "OTA_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// The CA bundle (PEM) an https:// server's certificate must chain to: when given, only
    /// these certificates are trusted (pinned); without it, the system's roots.
    #[arg(long, env = "OTA_CA_FILE", value_name = "PEM")]
    pub(crate) ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for ServerArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerArgs")
            .field("server", &self.server)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A client of one fleet server, with its own single-threaded runtime.
pub(crate) struct Api {
    client: api::Api,
    runtime: tokio::runtime::Runtime,
}

impl Api {
    /// A client for `args`; fails without a token.
    pub(crate) fn new(args: &ServerArgs) -> Result<Self, CliError> {
        let token = args
            .token
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                CliError::Usage(
                "no operator token: set OTA_TOKEN (or pass --token) to a token from server.toml"
                    .into(),
            )
            })?;
        let base = args.server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CliError::Usage(format!(
                "--server {base:?} must be an http:// or https:// URL"
            )));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CliError::Http(format!("cannot start the runtime: {e}")))?;
        let ca = match &args.ca_file {
            Some(path) => Some(crate::files::read_bounded(
                path,
                MAX_CA_FILE,
                "a CA bundle",
            )?),
            None => None,
        };
        // No call timeout: an upload of a large artifact takes as long as it takes.
        let client = api::Api::connect(base, token, ca.as_deref(), None).map_err(|e| match e {
            ApiError::BadCa(why) => match &args.ca_file {
                Some(path) => CliError::Usage(format!("--ca-file {}: {why}", path.display())),
                None => CliError::Usage(why),
            },
            other => cli_error(other),
        })?;
        Ok(Api { client, runtime })
    }

    /// The REST client itself, for calls made inside [`Api::block_on`].
    pub(crate) fn client(&self) -> &api::Api {
        &self.client
    }

    /// Runs a future on the client's runtime.
    pub(crate) fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// GET `path`, as JSON.
    pub(crate) fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, CliError> {
        self.block_on(self.client.get(path, query))
            .map_err(cli_error)
    }

    /// POST `body` as JSON to `path`, answer as JSON.
    pub(crate) fn post<T: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<Value, CliError> {
        self.block_on(self.client.post(path, body))
            .map_err(cli_error)
    }

    /// PUT `body` as JSON to `path`, answer as JSON.
    pub(crate) fn put<T: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<Value, CliError> {
        self.block_on(self.client.put(path, body))
            .map_err(cli_error)
    }
}

/// Largest CA bundle read.
const MAX_CA_FILE: u64 = 1024 * 1024;

/// A failed call as the command's error: the server's refusal as [`CliError::Api`] (exit 1
/// below 500, else 3), anything else as [`CliError::Http`] (exit 3).
pub(crate) fn cli_error(e: ApiError) -> CliError {
    match e {
        ApiError::Refused {
            status,
            code,
            message,
        } => CliError::Api {
            status,
            cause: code,
            message,
        },
        ApiError::Transport(why) => CliError::Http(why),
        other => CliError::Http(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue7_debug_of_the_server_arguments_hides_the_token() {
        let args = ServerArgs {
            server: "http://127.0.0.1:8080".into(),
            token: Some("cli-token-SECRET-0123".into()),
            ca_file: None,
        };
        let debug = format!("{args:?}");
        assert!(!debug.contains("SECRET"), "{debug}");
        assert!(
            debug.contains("<redacted>") && debug.contains("127.0.0.1"),
            "{debug}"
        );
    }
}
