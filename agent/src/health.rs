//! Health probes for the trial of a freshly installed release.
//!
//! One probe per device, checked by the shell when the core machine emits `RunProbe`:
//!
//! | probe | healthy when |
//! |---|---|
//! | [`HealthProbe::Command`] | the command exits 0 within its timeout |
//! | [`HealthProbe::Http`] | a GET of the (local) URL answers 2xx (typically 200) within its timeout |
//! | [`HealthProbe::Heartbeat`] | the file the application touches was modified after the activation and at most `freshness` ago |
//!
//! A probe never decides the trial's outcome alone: the core machine combines its results with
//! the trial deadline.

use std::ffi::OsStr;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::process::{self, CommandSpec, Ended};

/// Why a probe reported the release unhealthy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HealthError {
    /// The probe command could not be started.
    #[error("cannot start the probe {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The probe command exited unsuccessfully.
    #[error("probe {program} failed ({status}): {stderr_tail}")]
    CommandFailed {
        /// The program.
        program: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The end of its stderr.
        stderr_tail: String,
    },
    /// The probe (command or HTTP request) did not finish within its timeout.
    #[error("health probe timed out after {0:?}")]
    TimedOut(Duration),
    /// The probe's URL is `https://` but there is no CA certificate on the system to verify
    /// the endpoint with (a local probe can use `http://`).
    #[error(
        "health.url {url} needs CA certificates and the system has none: use http:// or install a CA bundle"
    )]
    NoCaCertificates {
        /// The probe's URL.
        url: String,
    },
    /// The HTTP client for the probe could not be built.
    #[error("cannot build the probe's HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// The HTTP request failed (refused, reset, bad URL).
    #[error("health request failed: {0}")]
    Http(#[source] reqwest::Error),
    /// The HTTP endpoint answered with a non-2xx status.
    #[error("health endpoint answered HTTP {0}")]
    HttpStatus(u16),
    /// The heartbeat file does not exist (or cannot be read).
    #[error("no heartbeat file at {path}: {source}")]
    HeartbeatMissing {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The heartbeat file was not touched since the release was activated.
    #[error("heartbeat {path} not touched since the activation")]
    HeartbeatBeforeActivation {
        /// The file.
        path: PathBuf,
    },
    /// The heartbeat file was last touched longer ago than the freshness window.
    #[error("heartbeat {path} is stale: last touched {age:?} ago")]
    HeartbeatStale {
        /// The file.
        path: PathBuf,
        /// How long ago it was touched.
        age: Duration,
    },
}

/// A configured health probe.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum HealthProbe {
    /// A command that must exit 0.
    Command {
        /// The command.
        command: CommandSpec,
        /// Killed and unhealthy after this long.
        timeout: Duration,
    },
    /// A URL that must answer 2xx to a GET.
    Http {
        /// The URL (usually on localhost).
        url: String,
        /// Unhealthy after this long without an answer.
        timeout: Duration,
        /// The client (built once).
        client: reqwest::Client,
    },
    /// A file the application touches while it is healthy.
    Heartbeat {
        /// The file.
        path: PathBuf,
        /// How recent its last modification must be.
        freshness: Duration,
    },
}

impl HealthProbe {
    /// A command probe.
    pub fn command(command: CommandSpec, timeout: Duration) -> Self {
        HealthProbe::Command { command, timeout }
    }

    /// An HTTP probe of `url`.
    pub fn http(url: impl Into<String>, timeout: Duration) -> Result<Self, HealthError> {
        let client =
            crate::download::platform_client(|| reqwest::Client::builder().timeout(timeout))
                .map_err(HealthError::Client)?;
        let url = url.into();
        if crate::download::is_https(&url) && !client.https() {
            return Err(HealthError::NoCaCertificates { url });
        }
        Ok(HealthProbe::Http {
            url,
            timeout,
            client: client.client,
        })
    }

    /// A heartbeat file probe.
    pub fn heartbeat(path: impl Into<PathBuf>, freshness: Duration) -> Self {
        HealthProbe::Heartbeat {
            path: path.into(),
            freshness,
        }
    }

    /// Checks once. `activated_at` is the wall time the release was switched on and `now` the
    /// wall time of the check (both read by the shell; the heartbeat rule uses them).
    pub async fn check(
        &self,
        activated_at: SystemTime,
        now: SystemTime,
    ) -> Result<(), HealthError> {
        match self {
            HealthProbe::Command { command, timeout } => {
                let env: [(&str, &OsStr); 0] = [];
                match process::run(command, &env, Some(*timeout)).await {
                    Err(source) => Err(HealthError::Spawn {
                        program: command.program.clone(),
                        source,
                    }),
                    Ok(Ended::TimedOut) => Err(HealthError::TimedOut(*timeout)),
                    Ok(Ended::Exited {
                        status,
                        stderr_tail,
                    }) => {
                        if status.success() {
                            Ok(())
                        } else {
                            Err(HealthError::CommandFailed {
                                program: command.program.clone(),
                                status,
                                stderr_tail,
                            })
                        }
                    }
                }
            }
            HealthProbe::Http {
                url,
                timeout,
                client,
            } => {
                let response = client.get(url).send().await.map_err(|e| {
                    if e.is_timeout() {
                        HealthError::TimedOut(*timeout)
                    } else {
                        HealthError::Http(e)
                    }
                })?;
                let status = response.status();
                if status.is_success() {
                    Ok(())
                } else {
                    Err(HealthError::HttpStatus(status.as_u16()))
                }
            }
            HealthProbe::Heartbeat { path, freshness } => {
                let modified = tokio::fs::metadata(path)
                    .await
                    .and_then(|m| m.modified())
                    .map_err(|source| HealthError::HeartbeatMissing {
                        path: path.clone(),
                        source,
                    })?;
                if modified < activated_at {
                    return Err(HealthError::HeartbeatBeforeActivation { path: path.clone() });
                }
                // A modification time in the future (clock steps) counts as fresh.
                let age = now.duration_since(modified).unwrap_or_default();
                if age > *freshness {
                    return Err(HealthError::HeartbeatStale {
                        path: path.clone(),
                        age,
                    });
                }
                Ok(())
            }
        }
    }
}
