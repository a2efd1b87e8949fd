//! What one client may cost the server: file descriptors, connections, log lines.
//!
//! - [`raise_fd_limit`] raises the process's soft `RLIMIT_NOFILE` to its hard limit at start
//!   (the default soft limit of 1024 is reached by a few hundred MQTT devices), and
//!   [`fit_to_fd_limit`] shrinks the configured connection caps when even the hard limit
//!   cannot hold them, so that the process never runs out of descriptors: each listener
//!   refuses at its own cap instead.
//! - [`ConnectionGate`] admits a connection when its listener is below its cap and the peer's
//!   address below its per-address cap; the [`Permit`] it gives back frees both when dropped.
//!   The HTTP listener and the MQTT front door each have their own gate: one saturated never
//!   refuses the other's clients.
//! - [`LogThrottle`] turns a flood of identical warnings (accept failures, refusals) into one
//!   line per interval with the number suppressed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ota_core::budget::BudgetSpec;
use serde::Deserialize;
use tokio::time::Instant;

use crate::config::{ConfigError, invalid};

/// Descriptors kept for everything but client connections: the database pool, the artifact
/// store's open files, webhooks, log files, the broker's internals.
pub const FD_RESERVE: u64 = 512;
/// Descriptors one MQTT device costs with the embedded broker: its socket at the front door,
/// the front door's socket to the broker and the broker's end of it.
pub const FDS_PER_MQTT_CONNECTION: u64 = 3;
/// One log line per this interval for a repeated warning.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (out of descriptors): the listener is not retried sooner.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// `[limits]` in `server.toml`: what one client or device may cost the server (see
/// `docs/server.md`, "Limits").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct LimitsConfig {
    /// Most open HTTP(S) connections; more are refused (503, then closed) until some close.
    pub http_max_connections: usize,
    /// Most open HTTP(S) connections from one IP address (0: no per-address cap).
    pub http_max_connections_per_ip: usize,
    /// Seconds a client has to send a complete request head, on a new connection and between
    /// requests on a kept-alive one; then the connection is closed.
    pub http_header_timeout_secs: u64,
    /// Seconds a connection may go without a byte read or written while a request is being
    /// received or answered (a stalled upload or download); then it is closed.
    pub http_idle_timeout_secs: u64,
    /// Most MQTT connections at the embedded broker's front door; more are closed at once.
    pub mqtt_max_connections: usize,
    /// Sustained MQTT messages per minute one device may send.
    pub device_messages_per_minute: u32,
    /// MQTT messages one device may send at once beyond its sustained rate.
    pub device_message_burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            http_max_connections: 4096,
            http_max_connections_per_ip: 256,
            http_header_timeout_secs: 30,
            http_idle_timeout_secs: 60,
            mqtt_max_connections: 10_000,
            device_messages_per_minute: 600,
            device_message_burst: 100,
        }
    }
}

impl LimitsConfig {
    /// Refuses caps and timeouts of zero.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            (
                "limits.http_max_connections",
                self.http_max_connections as u64,
            ),
            (
                "limits.http_header_timeout_secs",
                self.http_header_timeout_secs,
            ),
            ("limits.http_idle_timeout_secs", self.http_idle_timeout_secs),
            (
                "limits.mqtt_max_connections",
                self.mqtt_max_connections as u64,
            ),
            (
                "limits.device_messages_per_minute",
                u64::from(self.device_messages_per_minute),
            ),
            (
                "limits.device_message_burst",
                u64::from(self.device_message_burst),
            ),
        ];
        match positive.into_iter().find(|(_, v)| *v == 0) {
            Some((key, _)) => Err(invalid(key, "must be at least 1")),
            None => Ok(()),
        }
    }

    /// The per-device MQTT message budget.
    pub fn device_budget(&self) -> BudgetSpec {
        BudgetSpec::new(self.device_messages_per_minute, self.device_message_burst)
    }
}

/// The process's descriptor limit after [`raise_fd_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FdLimit {
    /// The soft limit in force (`None`: unlimited).
    pub soft: Option<u64>,
    /// The hard limit (`None`: unlimited).
    pub hard: Option<u64>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (logged when it fails) and returns the
/// limit in force.
pub fn raise_fd_limit() -> FdLimit {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    if before.current != before.maximum {
        let raised = Rlimit {
            current: before.maximum,
            maximum: before.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(
                soft = ?before.current,
                hard = ?before.maximum,
                "cannot raise the open-file limit to the hard limit: {e}"
            );
        }
    }
    let now = getrlimit(Resource::Nofile);
    FdLimit {
        soft: now.current,
        hard: now.maximum,
    }
}

/// Connection caps that fit a descriptor limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Caps {
    /// Most HTTP connections.
    pub http: usize,
    /// Most MQTT connections at the embedded broker's front door (0 with an external broker).
    pub mqtt: usize,
}

/// The caps `wanted`, shrunk when `limit` descriptors cannot hold them with [`FD_RESERVE`] to
/// spare (each MQTT connection costs [`FDS_PER_MQTT_CONNECTION`]): each listener is sure of
/// half the room, and what one does not need goes to the other; each cap stays at least 1.
pub fn fit_to_fd_limit(wanted: Caps, limit: Option<u64>) -> Caps {
    let Some(limit) = limit else {
        return wanted;
    };
    let as_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let as_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let http = as_u64(wanted.http);
    let mqtt = as_u64(wanted.mqtt).saturating_mul(FDS_PER_MQTT_CONNECTION);
    let room = limit.saturating_sub(FD_RESERVE);
    if http.saturating_add(mqtt) <= room {
        return wanted;
    }
    let http_fds = http.min(room - mqtt.min(room / 2));
    let mqtt_fds = mqtt.min(room - http_fds);
    Caps {
        http: as_usize(http_fds).max(1),
        mqtt: if wanted.mqtt == 0 {
            0
        } else {
            as_usize(mqtt_fds / FDS_PER_MQTT_CONNECTION).max(1)
        },
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refused {
    /// The listener is at its connection cap.
    Full,
    /// The peer's address is at its per-address cap.
    PerAddress,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refused::Full => "too many connections",
            Refused::PerAddress => "too many connections from this address",
        })
    }
}

/// Admits connections up to a cap, and up to a cap per peer address (see the
/// [module documentation](self)). Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnectionGate(Arc<GateInner>);

#[derive(Debug)]
struct GateInner {
    max: usize,
    /// 0: no per-address cap.
    per_address: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl ConnectionGate {
    /// At most `max` connections, at most `per_address` of them from one address (0: no
    /// per-address cap).
    pub fn new(max: usize, per_address: usize) -> Self {
        ConnectionGate(Arc::new(GateInner {
            max,
            per_address,
            open: Mutex::new((0, HashMap::new())),
        }))
    }

    /// A permit for one connection from `peer`, or why not.
    pub fn admit(&self, peer: IpAddr) -> Result<Permit, Refused> {
        let mut open = self.0.open.lock().unwrap_or_else(PoisonError::into_inner);
        let (total, by_address) = &mut *open;
        if *total >= self.0.max {
            return Err(Refused::Full);
        }
        let mine = by_address.entry(peer).or_insert(0);
        if self.0.per_address > 0 && *mine >= self.0.per_address {
            return Err(Refused::PerAddress);
        }
        *mine += 1;
        *total += 1;
        Ok(Permit {
            gate: self.clone(),
            peer,
        })
    }

    /// Connections admitted and not yet closed.
    pub fn open(&self) -> usize {
        self.0.open.lock().unwrap_or_else(PoisonError::into_inner).0
    }
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Permit {
    gate: ConnectionGate,
    peer: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self
            .gate
            .0
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (total, by_address) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(mine) = by_address.get_mut(&self.peer) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                by_address.remove(&self.peer);
            }
        }
    }
}

/// One log line per [`LOG_INTERVAL`] for a repeated event (see the
/// [module documentation](self)).
#[derive(Debug, Default)]
pub struct LogThrottle {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogThrottle {
    /// Records one occurrence; `Some(n)` when it should be logged now, `n` being how many were
    /// not logged since the last line.
    pub fn hit(&mut self) -> Option<u64> {
        let now = crate::clock::monotonic_now();
        match self.last {
            Some(last) if now.duration_since(last) < LOG_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Accepts the next connection of `listener`; a failed `accept` (out of descriptors) is logged
/// through `throttle` and retried after [`ACCEPT_PAUSE`], so a process at its limit neither
/// spins nor floods the log.
pub async fn accept(
    listener: &tokio::net::TcpListener,
    what: &str,
    throttle: &mut LogThrottle,
) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                if let Some(suppressed) = throttle.hit() {
                    tracing::warn!(suppressed, "{what} accept failed: {e}; pausing");
                }
                tokio::time::sleep(ACCEPT_PAUSE).await;
            }
        }
    }
}

/// Logs a refused connection through `throttle` (one line per interval).
pub fn log_refused(
    what: &str,
    peer: std::net::SocketAddr,
    why: Refused,
    throttle: &mut LogThrottle,
) {
    if let Some(suppressed) = throttle.hit() {
        tracing::warn!(%peer, suppressed, "{what} connection refused: {why}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_caps_in_total_and_per_address() {
        let gate = ConnectionGate::new(3, 2);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let a1 = gate.admit(a).unwrap();
        let _a2 = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).unwrap_err(), Refused::PerAddress);
        let _b1 = gate.admit(b).unwrap();
        assert_eq!(gate.admit(b).unwrap_err(), Refused::Full);
        drop(a1);
        assert_eq!(gate.open(), 2);
        assert!(gate.admit(b).is_ok());
    }

    #[tokio::test]
    async fn issue19_a_flood_of_warnings_is_one_line_per_interval() {
        let mut throttle = LogThrottle::default();
        let logged = (0..100_000).filter(|_| throttle.hit().is_some()).count();
        assert_eq!(logged, 1);
    }

    #[test]
    fn caps_shrink_to_fit_the_descriptor_limit() {
        let wanted = Caps {
            http: 4096,
            mqtt: 10_000,
        };
        assert_eq!(fit_to_fd_limit(wanted, None), wanted);
        assert_eq!(fit_to_fd_limit(wanted, Some(1 << 20)), wanted);
        let fitted = fit_to_fd_limit(wanted, Some(1024));
        let used = fitted.http as u64 + fitted.mqtt as u64 * FDS_PER_MQTT_CONNECTION;
        assert!(used <= 1024 - FD_RESERVE, "{fitted:?}");
        assert!(fitted.http >= 1 && fitted.mqtt >= 1);
        // A small cap keeps what it asked for; the other gets the rest.
        let small_http = fit_to_fd_limit(
            Caps {
                http: 6,
                mqtt: 10_000,
            },
            Some(1024),
        );
        assert_eq!(small_http.http, 6);
        assert_eq!(small_http.mqtt, (1024 - FD_RESERVE as usize - 6) / 3);
        let tiny = fit_to_fd_limit(wanted, Some(10));
        assert_eq!((tiny.http, tiny.mqtt), (1, 1));
    }
}
