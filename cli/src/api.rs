//! The REST client behind the fleet commands: `--server` / `OTA_SERVER`, `--token` /
//! `OTA_TOKEN`, JSON in and out, the server's `{ "error", "cause" }` as a [`CliError::Api`].

use std::path::{Path, PathBuf};

use clap::Args;
use reqwest::{Method, RequestBuilder, Response};
use serde::Serialize;
use serde_json::Value;

use crate::error::CliError;

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
    base: String,
    token: String,
    client: reqwest::Client,
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
        Ok(Api {
            base,
            token,
            client: client(args.ca_file.as_deref())?,
            runtime,
        })
    }

    /// A request to `path` (under the base URL) with the token.
    pub(crate) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Runs a future on the client's runtime.
    pub(crate) fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// GET `path`, as JSON.
    pub(crate) fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, CliError> {
        let request = self.request(Method::GET, path).query(query);
        self.block_on(async { json_of(request.send().await).await })
    }

    /// POST `body` as JSON to `path`, answer as JSON.
    pub(crate) fn post<T: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<Value, CliError> {
        let request = self.request(Method::POST, path).json(body);
        self.block_on(async { json_of(request.send().await).await })
    }
}

/// The HTTP client: with a CA file, that bundle is the only trust anchor.
fn client(ca_file: Option<&Path>) -> Result<reqwest::Client, CliError> {
    let mut builder = reqwest::Client::builder();
    if let Some(path) = ca_file {
        let pem = crate::files::read_bounded(path, MAX_CA_FILE, "a CA bundle")?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| CliError::Usage(format!("--ca-file {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(CliError::Usage(format!(
                "--ca-file {}: no PEM certificate found",
                path.display()
            )));
        }
        builder = builder.tls_certs_only(certs);
    }
    builder
        .build()
        .map_err(|e| CliError::Http(format!("cannot set up the HTTP client: {}", describe(&e))))
}

/// Largest CA bundle read.
const MAX_CA_FILE: u64 = 1024 * 1024;

/// The JSON body of a successful response, or the server's error as [`CliError::Api`].
pub(crate) async fn json_of(response: reqwest::Result<Response>) -> Result<Value, CliError> {
    let response = response.map_err(|e| CliError::Http(describe(&e)))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|e| CliError::Http(format!("unreadable answer ({status}): {e}")))?;
    if status.is_success() {
        return Ok(body);
    }
    Err(CliError::Api {
        status: status.as_u16(),
        cause: body["cause"].as_str().unwrap_or("unknown").to_string(),
        message: body["error"]
            .as_str()
            .unwrap_or("the server refused the request")
            .to_string(),
    })
}

/// A transport error in one line (reqwest's Display omits the cause).
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Percent-encodes a path segment (device ids are `[A-Za-z0-9._-]`, but input is input).
pub(crate) fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
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

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
