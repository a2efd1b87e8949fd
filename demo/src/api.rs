//! The one client of the fleet server's REST API (`docs/api.md`): the CLI's fleet commands
//! (`ota release publish`, `ota rollout`, `ota devices`, `ota flag`, `ota events`, `ota trust`),
//! the demo and the end-to-end tests all speak to the server through [`Api`].
//!
//! Why it lives here: the CLI and the e2e tests already depend on `ota-demo`, and `ota-demo`
//! depends on `ota-server`, whose request types it sends ([`RolloutRequest`],
//! [`FlagSetRequest`]); no dependency is added and no cycle is possible. In `ota-server` it
//! would put an HTTP client (multipart uploads, TLS roots) into the server library, which never
//! calls its own API over HTTP (the console calls the router in process).
//!
//! Answers are the server's JSON as it sent it (`serde_json::Value`): the CLI prints them as
//! they are with `--json`. A rollout view reads typed with [`rollout_view`] (the server's own
//! [`RolloutView`](ota_server::fleet::RolloutView)).
//!
//! [`RolloutRequest`]: ota_server::fleet::RolloutRequest

use std::time::Duration;

use ota_core::fleet::RolloutId;
use ota_server::fleet::{FlagSetRequest, RolloutView};
use reqwest::multipart::{Form, Part};
use reqwest::{Client, Method, RequestBuilder};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::firmware::Build;

/// A refused or failed API call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The server answered with an error (`docs/api.md`, "Errors").
    #[error("{status} {code}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The error code (`no-targets`, `rollout-conflict`...; `unknown` when absent).
        code: String,
        /// The message.
        message: String,
    },
    /// The server could not be reached or answered something that is not JSON.
    #[error("fleet server: {0}")]
    Transport(String),
    /// The CA bundle to pin is not a PEM bundle of certificates.
    #[error("{0}")]
    BadCa(String),
    /// The server answered JSON that lacks what `docs/api.md` says it holds.
    #[error("fleet server: unexpected answer: {0}")]
    Unexpected(String),
}

/// The id of rollout view `view` (a create or command answer's `rollout`).
pub fn rollout_id(view: &Value) -> Result<RolloutId, ApiError> {
    view["id"]
        .as_i64()
        .and_then(RolloutId::new)
        .ok_or_else(|| ApiError::Unexpected(format!("a rollout view without an id: {view}")))
}

/// The rollout view a create, status or command answer holds (`{ "rollout": RolloutView }`),
/// typed.
pub fn rollout_view(answer: &Value) -> Result<RolloutView, ApiError> {
    RolloutView::deserialize(&answer["rollout"])
        .map_err(|e| ApiError::Unexpected(format!("a rollout view that does not read: {e}")))
}

/// The rollout views a list answer holds (`{ "rollouts": [RolloutView] }`), typed.
pub fn rollout_views(answer: &Value) -> Result<Vec<RolloutView>, ApiError> {
    Vec::<RolloutView>::deserialize(&answer["rollouts"])
        .map_err(|e| ApiError::Unexpected(format!("a rollout list that does not read: {e}")))
}

/// An operator's client of one server. Its `Debug` hides the token.
#[derive(Clone)]
pub struct Api {
    client: Client,
    base: String,
    token: String,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// How long a call of the demo's and the tests' clients may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

impl Api {
    /// A client of the server at `base` (`http://host:port`) with `token`; calls time out
    /// after a minute.
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Self {
        let client = Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .unwrap_or_default();
        Api {
            client,
            base: base.into(),
            token: token.into(),
        }
    }

    /// A client of the HTTPS server at `base` whose certificate must chain to the CA bundle
    /// `ca_pem` (pinned: no system root is trusted); calls time out after a minute.
    pub fn with_pinned_ca(
        base: impl Into<String>,
        token: impl Into<String>,
        ca_pem: &[u8],
    ) -> Result<Self, ApiError> {
        Self::connect(base, token, Some(ca_pem), Some(CALL_TIMEOUT))
    }

    /// A client of the server at `base` with `token`: with `ca_pem`, that CA bundle is the only
    /// trust anchor (pinned); `timeout` bounds each call (`None`: no bound, for uploads of
    /// large artifacts).
    pub fn connect(
        base: impl Into<String>,
        token: impl Into<String>,
        ca_pem: Option<&[u8]>,
        timeout: Option<Duration>,
    ) -> Result<Self, ApiError> {
        let mut builder = Client::builder();
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| ApiError::BadCa(e.to_string()))?;
            if certs.is_empty() {
                return Err(ApiError::BadCa("no PEM certificate found".into()));
            }
            builder = builder.tls_certs_only(certs);
        }
        if let Some(timeout) = timeout {
            builder = builder.timeout(timeout);
        }
        let client = builder.build().map_err(|e| {
            ApiError::Transport(format!("cannot set up the HTTP client: {}", describe(&e)))
        })?;
        Ok(Api {
            client,
            base: base.into(),
            token: token.into(),
        })
    }

    /// The same server with another operator's token.
    pub fn as_operator(&self, token: impl Into<String>) -> Self {
        Api {
            token: token.into(),
            ..self.clone()
        }
    }

    /// A request to `path` (under the base URL) with the token.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Sends `request`: the JSON body of a successful answer, or the server's error
    /// (`{ "error": MESSAGE, "cause": CODE }`) as [`ApiError::Refused`].
    pub async fn call(&self, request: RequestBuilder) -> Result<Value, ApiError> {
        let response = request
            .send()
            .await
            .map_err(|e| ApiError::Transport(describe(&e)))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| ApiError::Transport(format!("unreadable answer ({status}): {e}")))?;
        if status.is_success() {
            return Ok(body);
        }
        Err(ApiError::Refused {
            status: status.as_u16(),
            code: body["cause"].as_str().unwrap_or("unknown").to_string(),
            message: body["error"]
                .as_str()
                .unwrap_or("the server refused the request")
                .to_string(),
        })
    }

    /// `GET path?query`, the whole answer.
    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, ApiError> {
        self.call(self.request(Method::GET, path).query(query))
            .await
    }

    /// `POST path` with `body` as JSON, the whole answer.
    pub async fn post<T: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<Value, ApiError> {
        self.call(self.request(Method::POST, path).json(body)).await
    }

    /// `PUT path` with `body` as JSON, the whole answer.
    pub async fn put<T: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<Value, ApiError> {
        self.call(self.request(Method::PUT, path).json(body)).await
    }

    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics(&self) -> Result<String, ApiError> {
        let response = self
            .request(Method::GET, "/metrics")
            .send()
            .await
            .map_err(|e| ApiError::Transport(describe(&e)))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| ApiError::Transport(format!("unreadable answer ({status}): {e}")))?;
        if status.is_success() {
            Ok(text)
        } else {
            Err(ApiError::Refused {
                status: status.as_u16(),
                code: String::new(),
                message: text,
            })
        }
    }

    /// Publishes a release, its chunk index (when it names one) and its artifact
    /// (`POST /api/v1/releases`); `artifact` is the form part of the artifact's bytes (a
    /// stream for large files). Answers the whole answer.
    pub async fn publish_parts(
        &self,
        release: Vec<u8>,
        chunk_index: Option<Vec<u8>>,
        artifact: Part,
    ) -> Result<Value, ApiError> {
        let mut form = Form::new().part("release", Part::bytes(release));
        if let Some(index) = chunk_index {
            form = form.part("chunk_index", Part::bytes(index));
        }
        let form = form.part("artifact", artifact);
        self.call(
            self.request(Method::POST, "/api/v1/releases")
                .multipart(form),
        )
        .await
    }

    /// Publishes a built release with its chunk index and image (`POST /api/v1/releases`).
    pub async fn publish(&self, build: &Build) -> Result<Value, ApiError> {
        self.publish_parts(
            build.release.clone(),
            build.chunk_index.clone(),
            Part::bytes(build.image.clone()),
        )
        .await
    }

    /// Hands a signed trust-set update to the server (`POST /api/v1/trust`); answers the trust
    /// set in force.
    pub async fn publish_trust(&self, update: &[u8]) -> Result<Value, ApiError> {
        self.call(
            self.request(Method::POST, "/api/v1/trust")
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(update.to_vec()),
        )
        .await
    }

    /// The trust set in force (`GET /api/v1/trust`).
    pub async fn trust(&self) -> Result<Value, ApiError> {
        self.get("/api/v1/trust", &[]).await
    }

    /// Creates a rollout (`POST /api/v1/rollouts`; `spec` is a
    /// [`RolloutRequest`](ota_server::fleet::RolloutRequest) or its JSON); answers the rollout
    /// view.
    pub async fn create_rollout<T: Serialize + ?Sized>(&self, spec: &T) -> Result<Value, ApiError> {
        let v = self.post("/api/v1/rollouts", spec).await?;
        Ok(v["rollout"].clone())
    }

    /// One rollout's view.
    pub async fn rollout(&self, id: RolloutId) -> Result<Value, ApiError> {
        let v = self.get(&format!("/api/v1/rollouts/{id}"), &[]).await?;
        Ok(v["rollout"].clone())
    }

    /// One rollout's view, typed.
    pub async fn view(&self, id: RolloutId) -> Result<RolloutView, ApiError> {
        rollout_view(&self.get(&format!("/api/v1/rollouts/{id}"), &[]).await?)
    }

    /// `approve`, `pause`, `resume` or `abort` a rollout.
    pub async fn operate(&self, id: RolloutId, op: &str) -> Result<Value, ApiError> {
        let v = self
            .call(self.request(Method::POST, &format!("/api/v1/rollouts/{id}/{op}")))
            .await?;
        Ok(v["rollout"].clone())
    }

    /// The devices matching `filter` (empty: all).
    pub async fn devices(&self, filter: &str) -> Result<Vec<Value>, ApiError> {
        let v = self
            .get("/api/v1/devices", &[("filter", filter.to_owned())])
            .await?;
        Ok(v["devices"].as_array().cloned().unwrap_or_default())
    }

    /// Sets feature flag `name` on or off for `percent` % of the devices matching `filter`
    /// (`POST /api/v1/flags/{name}/set` with the API's [`FlagSetRequest`]); answers the edit.
    pub async fn flag_set(
        &self,
        name: &str,
        on: bool,
        percent: f64,
        filter: &str,
    ) -> Result<Value, ApiError> {
        let mut edit = FlagSetRequest::new(on);
        edit.percent = Some(percent);
        edit.filter = Some(filter.to_owned());
        self.post(&format!("/api/v1/flags/{}/set", encode(name)), &edit)
            .await
    }

    /// Kills feature flag `name`: off on every device at once.
    pub async fn flag_kill(&self, name: &str) -> Result<Value, ApiError> {
        self.post(
            &format!("/api/v1/flags/{}/kill", encode(name)),
            &serde_json::json!({}),
        )
        .await
    }

    /// One feature flag with its counts (`GET /api/v1/flags/{name}`).
    pub async fn flag(&self, name: &str) -> Result<Value, ApiError> {
        self.get(&format!("/api/v1/flags/{}", encode(name)), &[])
            .await
    }

    /// Audit events matching `query` (`rollout=7&kind=...`).
    pub async fn events(&self, query: &[(&str, &str)]) -> Result<Vec<Value>, ApiError> {
        let v = self
            .call(self.request(Method::GET, "/api/v1/events").query(query))
            .await?;
        Ok(v["events"].as_array().cloned().unwrap_or_default())
    }
}

/// Percent-encodes a path segment (device ids and flag names are `[A-Za-z0-9._-]`, but input
/// is input).
pub fn encode(segment: &str) -> String {
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

/// A transport error in one line (reqwest's Display omits the cause).
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue7_debug_hides_the_token() {
        let api = Api::new("http://127.0.0.1:1", "demo-token-SECRET-0123");
        let debug = format!("{api:?}");
        assert!(!debug.contains("SECRET"), "{debug}");
        assert!(debug.contains("127.0.0.1"), "{debug}");
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
