//! A small client of the fleet server's REST API (`docs/api.md`), as an operator or a
//! firmware team uses it: publish releases, create and steer rollouts, read devices and events.

use std::time::Duration;

use reqwest::multipart::{Form, Part};
use reqwest::{Client, Method, RequestBuilder};
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
        /// The error code (`no-targets`, `rollout-conflict`...).
        code: String,
        /// The message.
        message: String,
    },
    /// The server could not be reached or answered something that is not JSON.
    #[error("fleet server: {0}")]
    Transport(String),
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

impl Api {
    /// A client of the server at `base` (`http://host:port`) with `token`.
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Self {
        let client = Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_default();
        Api {
            client,
            base: base.into(),
            token: token.into(),
        }
    }

    /// A client of the HTTPS server at `base` whose certificate must chain to the CA bundle
    /// `ca_pem` (pinned: no system root is trusted).
    pub fn with_pinned_ca(
        base: impl Into<String>,
        token: impl Into<String>,
        ca_pem: &[u8],
    ) -> Result<Self, ApiError> {
        let certs = reqwest::Certificate::from_pem_bundle(ca_pem)
            .map_err(|e| ApiError::Transport(format!("the CA bundle: {e}")))?;
        let client = Client::builder()
            .timeout(Duration::from_secs(60))
            .tls_certs_only(certs)
            .build()
            .map_err(|e| ApiError::Transport(e.to_string()))?;
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

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    async fn call(&self, request: RequestBuilder) -> Result<Value, ApiError> {
        let response = request
            .send()
            .await
            .map_err(|e| ApiError::Transport(e.to_string()))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| ApiError::Transport(format!("{status}: {e}")))?;
        if status.is_success() {
            return Ok(body);
        }
        // `{ "error": MESSAGE, "cause": CODE }` (docs/api.md).
        let text = |k: &str| body[k].as_str().unwrap_or_default().to_string();
        Err(ApiError::Refused {
            status: status.as_u16(),
            code: text("cause"),
            message: text("error"),
        })
    }

    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics(&self) -> Result<String, ApiError> {
        let response = self
            .request(Method::GET, "/metrics")
            .send()
            .await
            .map_err(|e| ApiError::Transport(e.to_string()))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| ApiError::Transport(format!("{status}: {e}")))?;
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
    /// (`POST /api/v1/releases`).
    pub async fn publish(&self, build: &Build) -> Result<Value, ApiError> {
        let mut form = Form::new().part("release", Part::bytes(build.release.clone()));
        if let Some(index) = &build.chunk_index {
            form = form.part("chunk_index", Part::bytes(index.clone()));
        }
        let form = form.part("artifact", Part::bytes(build.image.clone()));
        self.call(
            self.request(Method::POST, "/api/v1/releases")
                .multipart(form),
        )
        .await
    }

    /// Hands a signed trust-set update to the server (`POST /api/v1/trust`); answers the trust
    /// set in force.
    pub async fn publish_trust(&self, update: &[u8]) -> Result<Value, ApiError> {
        self.call(
            self.request(Method::POST, "/api/v1/trust")
                .body(update.to_vec()),
        )
        .await
    }

    /// The trust set in force (`GET /api/v1/trust`).
    pub async fn trust(&self) -> Result<Value, ApiError> {
        self.call(self.request(Method::GET, "/api/v1/trust")).await
    }

    /// Creates a rollout (`POST /api/v1/rollouts`, the JSON spec of `docs/api.md`); answers
    /// the rollout view.
    pub async fn create_rollout(&self, spec: &Value) -> Result<Value, ApiError> {
        let v = self
            .call(self.request(Method::POST, "/api/v1/rollouts").json(spec))
            .await?;
        Ok(v["rollout"].clone())
    }

    /// One rollout's view.
    pub async fn rollout(&self, id: i64) -> Result<Value, ApiError> {
        let v = self
            .call(self.request(Method::GET, &format!("/api/v1/rollouts/{id}")))
            .await?;
        Ok(v["rollout"].clone())
    }

    /// `approve`, `pause`, `resume` or `abort` a rollout.
    pub async fn operate(&self, id: i64, op: &str) -> Result<Value, ApiError> {
        let v = self
            .call(self.request(Method::POST, &format!("/api/v1/rollouts/{id}/{op}")))
            .await?;
        Ok(v["rollout"].clone())
    }

    /// The devices matching `filter` (empty: all).
    pub async fn devices(&self, filter: &str) -> Result<Vec<Value>, ApiError> {
        let v = self
            .call(
                self.request(Method::GET, "/api/v1/devices")
                    .query(&[("filter", filter)]),
            )
            .await?;
        Ok(v["devices"].as_array().cloned().unwrap_or_default())
    }

    /// Sets feature flag `name` on or off for `percent` % of the devices matching `filter`
    /// (`POST /api/v1/flags/{name}/set`); answers the edit.
    pub async fn flag_set(
        &self,
        name: &str,
        on: bool,
        percent: f64,
        filter: &str,
    ) -> Result<Value, ApiError> {
        let body = serde_json::json!({ "on": on, "percent": percent, "filter": filter });
        self.call(
            self.request(Method::POST, &format!("/api/v1/flags/{name}/set"))
                .json(&body),
        )
        .await
    }

    /// Kills feature flag `name`: off on every device at once.
    pub async fn flag_kill(&self, name: &str) -> Result<Value, ApiError> {
        self.call(
            self.request(Method::POST, &format!("/api/v1/flags/{name}/kill"))
                .json(&serde_json::json!({})),
        )
        .await
    }

    /// One feature flag with its counts (`GET /api/v1/flags/{name}`).
    pub async fn flag(&self, name: &str) -> Result<Value, ApiError> {
        self.call(self.request(Method::GET, &format!("/api/v1/flags/{name}")))
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
}
