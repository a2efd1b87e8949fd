//! [`AgentStatus`]: what a running agent is doing.
//!
//! The shell builds one after every step of its loop and publishes it on a `watch` channel;
//! [`AgentHandle::status`](crate::AgentHandle::status), [`watch`](crate::AgentHandle::watch)
//! and [`wait_for`](crate::AgentHandle::wait_for) read it (the demo's live view and the tests
//! follow agents through it). It is a snapshot for observers: nothing is decided from it.
//! Its own module so that the shell, which writes it, and the agent start-up, which hands out
//! the receiver, do not depend on each other.

use ota_core::digest::Digest;
use ota_core::update::Status;

/// What an agent is doing, published after every step of its loop.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AgentStatus {
    /// The update machine's snapshot.
    pub machine: Status,
    /// Whether the MQTT connection is up and the subscriptions stand.
    pub connected: bool,
    /// Artifact bytes written by downloads since the agent started (0 for cache installs and
    /// identical redeploys).
    pub bytes_downloaded: u64,
    /// Installs performed since the agent started: (digest, rollback).
    pub installs: Vec<(Digest, bool)>,
    /// Desired-state payloads received.
    pub desired_received: u64,
    /// Payloads from the server that did not decode (desired states and heartbeat acks).
    pub malformed_payloads: u64,
    /// Messages waiting in the MQTT outbox.
    pub outbox: usize,
    /// The last local error (a journal write, a cache operation...), if any.
    pub last_error: Option<String>,
    /// Why the last broker connection attempt failed or the connection was lost (a refused
    /// TLS certificate, bad credentials, an unreachable broker); cleared on connect.
    pub broker_error: Option<String>,
    /// The boot count this agent runs in.
    pub boot_count: u32,
    /// The sequence of the trust-set update in force (0: the configured keys).
    pub trust_sequence: u64,
    /// What the agent did with the last trust-set update it handled since it started.
    pub last_trust: Option<ota_core::wire::TrustOutcome>,
}

impl AgentStatus {
    /// The status before the loop's first step: the machine as restored from the journal,
    /// not connected, nothing downloaded, installed or received yet.
    pub(crate) fn starting(machine: Status, boot_count: u32, trust_sequence: u64) -> Self {
        AgentStatus {
            machine,
            connected: false,
            bytes_downloaded: 0,
            installs: Vec::new(),
            desired_received: 0,
            malformed_payloads: 0,
            outbox: 0,
            last_error: None,
            broker_error: None,
            boot_count,
            trust_sequence,
            last_trust: None,
        }
    }
}
