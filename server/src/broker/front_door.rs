//! The front door of the embedded broker: the only listener devices reach.
//!
//! rumqttd listens on `127.0.0.1` at a private port and accepts only connections that present
//! a per-process random internal secret. The front door accepts TCP or TLS, reads the
//! client's CONNECT, authenticates it, replaces its password by the internal secret and then
//! relays: client-to-broker packets are framed and checked: against the device's [`DeviceAcl`]
//! when authenticated (a refused PUBLISH or SUBSCRIBE closes the connection), and every PUBLISH
//! against the message budget of the device its topic names (excess is dropped and counted in
//! `ota_mqtt_messages_dropped_total`; a device that goes on is disconnected and counted in
//! `ota_mqtt_flood_disconnects_total`). The broker-to-client direction passes bytes untouched.
//!
//! Connections beyond the cap (`limits.mqtt_max_connections`) are closed at once; refusals and
//! failed accepts (out of descriptors) are logged once per interval
//! ([`crate::limits::LogThrottle`]), and failed accepts pause the loop.
//!
//! Framing and parsing use rumqttc's MQTT 3.1.1 codec, bounded by [`MAX_PACKET`]; nothing a
//! client sends can panic the task. Log lines name the peer, the client id and the topic, never
//! a password.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ota_core::budget::{Budgets, Verdict};
use ota_core::wire::{DeviceId, Topics};
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Login, Packet, Publish, Subscribe};
use rumqttc::mqttbytes::{self, FixedHeader, PacketType, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::acl::DeviceAcl;
use super::cert_name::common_name;
use super::credentials::DeviceSecret;
use crate::fleet::{Counters, Shared};
use crate::limits::{self, ConnectionGate, LogThrottle};

/// Largest MQTT packet relayed (the broker's payload limit plus room for the headers).
pub const MAX_PACKET: usize = super::MAX_PAYLOAD + 64 * 1024;
/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to send its CONNECT after the connection (or handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the front door authenticates clients.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum DoorAuth {
    /// Anyone may connect under any client id and use any topic (a trusted network only).
    Open,
    /// Username = client id = a device id, password = its [`DeviceSecret::password`].
    Password(DeviceSecret),
    /// A client certificate (verified by TLS against the client CA) whose CN is the client id.
    Certificate,
}

/// One front door: where to relay and how to check.
pub(crate) struct Door {
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    pub(crate) auth: DoorAuth,
    /// rumqttd's private address.
    pub(crate) upstream: SocketAddr,
    /// The internal secret rumqttd checks.
    pub(crate) internal_password: Arc<str>,
    pub(crate) shared: Arc<Shared>,
    /// The connection cap.
    pub(crate) gate: ConnectionGate,
    /// Per device id (of the topic): its message budget.
    pub(crate) budgets: std::sync::Mutex<DeviceBudgets>,
    /// The fleet's topic namespace (the ACL and the budgets read topics in it).
    pub(crate) topics: Topics,
}

/// The front door's per-device message budgets, with the clock they run on.
pub(crate) struct DeviceBudgets {
    budgets: Budgets<String>,
    epoch: tokio::time::Instant,
}

impl DeviceBudgets {
    /// Every device gets `spec`.
    pub(crate) fn new(spec: ota_core::budget::BudgetSpec) -> Self {
        DeviceBudgets {
            budgets: Budgets::new(spec),
            epoch: crate::clock::monotonic_now(),
        }
    }

    fn take(&mut self, device: &str) -> Verdict {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.budgets.take(device.to_owned(), now)
    }
}

impl std::fmt::Debug for DoorAuthView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            DoorAuth::Open => "open",
            DoorAuth::Password(_) => "device passwords",
            DoorAuth::Certificate => "client certificates",
        })
    }
}

/// A loggable name of the authentication mode.
pub(crate) struct DoorAuthView<'a>(pub(crate) &'a DoorAuth);

/// Why a connection is closed by the front door (logged, never sent to the client).
#[derive(Debug)]
enum Refusal {
    /// Not MQTT 3.1.1.
    Protocol,
    /// Bad credentials, certificate or client id.
    Auth(&'static str),
    /// A topic outside the device's ACL.
    Acl { what: &'static str, topic: String },
    /// A malformed or unexpected packet.
    Malformed(String),
    /// A device went on publishing beyond its budget.
    Flood { device: String },
}

/// One framed packet: its header and raw bytes (header included).
struct Frame {
    header: FixedHeader,
    raw: Bytes,
}

/// Reads the next whole packet into `buf`; `None` at the end of the stream.
async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<Option<Frame>> {
    loop {
        match mqttbytes::check(buf.iter(), MAX_PACKET) {
            Ok(header) => {
                let raw = buf.split_to(header.frame_length()).freeze();
                return Ok(Some(Frame { header, raw }));
            }
            Err(mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }
        buf.reserve(8 * 1024);
        if reader.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Accepts connections on `listener` forever (until the runtime stops).
pub(crate) async fn serve(listener: TcpListener, door: Arc<Door>) {
    let mut accept_log = LogThrottle::default();
    let mut refuse_log = LogThrottle::default();
    loop {
        let (tcp, peer) = limits::accept(&listener, "MQTT", &mut accept_log).await;
        let permit = match door.gate.admit(peer.ip()) {
            Ok(permit) => permit,
            Err(why) => {
                limits::log_refused("MQTT", peer, why, &mut refuse_log);
                continue;
            }
        };
        let door = door.clone();
        tokio::spawn(async move {
            door.handle(tcp, peer).await;
            drop(permit);
        });
    }
}

impl Door {
    async fn handle(&self, tcp: TcpStream, peer: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let Some(acceptor) = &self.tls else {
            return self.session(tcp, None, peer).await;
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => {
                let cn = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|cert| common_name(cert));
                self.session(stream, cn, peer).await;
            }
            Ok(Err(e)) => {
                Counters::inc(&self.shared.counters.mqtt_auth_refused);
                tracing::info!(%peer, "MQTT TLS handshake failed: {e}");
            }
            Err(_) => tracing::info!(%peer, "MQTT TLS handshake timed out"),
        }
    }

    /// One client connection, after TLS.
    async fn session<S>(&self, stream: S, cert_cn: Option<String>, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut buf = BytesMut::with_capacity(4096);
        let first =
            match tokio::time::timeout(CONNECT_TIMEOUT, read_frame(&mut reader, &mut buf)).await {
                Ok(Ok(Some(frame))) => frame,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => return tracing::debug!(%peer, "MQTT: no CONNECT: {e}"),
                Err(_) => return tracing::debug!(%peer, "MQTT: no CONNECT in time"),
            };
        let (connect, acl) = match self.admit(first, cert_cn.as_deref()) {
            Ok(admitted) => admitted,
            Err((refusal, code, client_id)) => {
                self.refused(peer, &client_id, &refusal);
                let mut out = BytesMut::new();
                let ack = Packet::ConnAck(ConnAck {
                    session_present: false,
                    code,
                });
                if ack.write(&mut out, MAX_PACKET).is_ok() {
                    let _ = writer.write_all(&out).await;
                    let _ = writer.flush().await;
                }
                let _ = writer.shutdown().await;
                return;
            }
        };
        let client_id = connect.client_id.clone();
        let mut upstream = match TcpStream::connect(self.upstream).await {
            Ok(s) => s,
            Err(e) => return tracing::warn!("MQTT front door: the broker is unreachable: {e}"),
        };
        let _ = upstream.set_nodelay(true);
        let mut out = BytesMut::new();
        if Packet::Connect(connect)
            .write(&mut out, MAX_PACKET)
            .is_err()
        {
            return;
        }
        if upstream.write_all(&out).await.is_err() {
            return;
        }
        let (mut up_reader, mut up_writer) = upstream.split();
        let down = tokio::io::copy(&mut up_reader, &mut writer);
        let up = async {
            // Whatever followed the CONNECT is in `buf` already.
            loop {
                let frame = match read_frame(&mut reader, &mut buf).await {
                    Ok(Some(frame)) => frame,
                    Ok(None) => return None,
                    Err(e) => return Some(Refusal::Malformed(e.to_string())),
                };
                match self.check(acl.as_ref(), &frame, &client_id) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(refusal) => return Some(refusal),
                }
                if up_writer.write_all(&frame.raw).await.is_err() {
                    return None;
                }
            }
        };
        tokio::select! {
            _ = down => {}
            refusal = up => if let Some(refusal) = refusal {
                self.refused(peer, &client_id, &refusal);
            },
        }
    }

    fn refused(&self, peer: SocketAddr, client_id: &str, refusal: &Refusal) {
        let counters = &self.shared.counters;
        match refusal {
            Refusal::Acl { what, topic } => {
                Counters::inc(&counters.mqtt_acl_denied);
                tracing::warn!(%peer, client_id, topic, "MQTT ACL: {what} refused; connection closed");
            }
            Refusal::Auth(reason) => {
                Counters::inc(&counters.mqtt_auth_refused);
                tracing::warn!(%peer, client_id, "MQTT connection refused: {reason}");
            }
            Refusal::Protocol => {
                tracing::info!(%peer, client_id, "MQTT connection refused: not MQTT 3.1.1");
            }
            Refusal::Malformed(e) => {
                tracing::info!(%peer, client_id, "MQTT connection closed: {e}");
            }
            Refusal::Flood { device } => {
                Counters::inc(&counters.mqtt_flood_disconnects);
                tracing::warn!(
                    %peer,
                    client_id,
                    device,
                    "MQTT connection closed: the device keeps publishing beyond its budget"
                );
            }
        }
    }

    /// Checks one client-to-broker packet: the ACL (when authenticated), then a PUBLISH
    /// against the budget of the device its topic names (else of the client id). `Ok(false)`:
    /// drop it (over budget).
    fn check(
        &self,
        acl: Option<&DeviceAcl>,
        frame: &Frame,
        client_id: &str,
    ) -> Result<bool, Refusal> {
        let Some(topic) = check(acl, frame)? else {
            return Ok(true);
        };
        let device = match self.topics.parse_device_topic(&topic) {
            Ok((id, _)) => id.as_str().to_owned(),
            Err(_) => client_id.to_owned(),
        };
        let verdict = self
            .budgets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(&device);
        match verdict {
            Verdict::Pass => Ok(true),
            Verdict::Disconnect => {
                Counters::inc(&self.shared.counters.mqtt_dropped);
                Err(Refusal::Flood { device })
            }
            _ => {
                Counters::inc(&self.shared.counters.mqtt_dropped);
                Ok(false)
            }
        }
    }

    /// Checks the first packet: a CONNECT, authenticated, with an allowed last will. Answers
    /// it with the internal password, and the ACL to enforce (none when open).
    #[allow(clippy::type_complexity, reason = "a private helper's error triple")]
    fn admit(
        &self,
        first: Frame,
        cert_cn: Option<&str>,
    ) -> Result<
        (rumqttc::mqttbytes::v4::Connect, Option<DeviceAcl>),
        (Refusal, ConnectReturnCode, String),
    > {
        let malformed = |e: String| {
            (
                Refusal::Malformed(e),
                ConnectReturnCode::NotAuthorized,
                String::new(),
            )
        };
        if !matches!(first.header.packet_type(), Ok(PacketType::Connect)) {
            return Err(malformed("the first packet is not CONNECT".into()));
        }
        let mut connect = match rumqttc::mqttbytes::v4::Connect::read(first.header, first.raw) {
            Ok(connect) => connect,
            // MQTT 3.1 ("MQIsdp", level 3) or another level: CONNACK 1, as MQTT 3.1.1 says.
            Err(mqttbytes::Error::InvalidProtocol | mqttbytes::Error::InvalidProtocolLevel(_)) => {
                return Err((
                    Refusal::Protocol,
                    ConnectReturnCode::RefusedProtocolVersion,
                    String::new(),
                ));
            }
            Err(e) => return Err(malformed(e.to_string())),
        };
        let id = connect.client_id.clone();
        let refuse = |refusal, code| Err((refusal, code, id.clone()));
        if connect.protocol != Protocol::V4 {
            return refuse(Refusal::Protocol, ConnectReturnCode::RefusedProtocolVersion);
        }
        let acl = match &self.auth {
            DoorAuth::Open => None,
            DoorAuth::Password(secret) => {
                let Ok(device) = DeviceId::new(&id) else {
                    return refuse(
                        Refusal::Auth("the client id is not a device id"),
                        ConnectReturnCode::BadClientId,
                    );
                };
                let ok = connect.login.as_ref().is_some_and(|login| {
                    login.username == id && secret.verify(&id, login.password.as_bytes())
                });
                if !ok {
                    return refuse(
                        Refusal::Auth("bad username or password"),
                        ConnectReturnCode::BadUserNamePassword,
                    );
                }
                Some(DeviceAcl::new(device, &self.topics))
            }
            DoorAuth::Certificate => {
                let Ok(device) = DeviceId::new(&id) else {
                    return refuse(
                        Refusal::Auth("the client id is not a device id"),
                        ConnectReturnCode::BadClientId,
                    );
                };
                if cert_cn != Some(id.as_str()) {
                    return refuse(
                        Refusal::Auth("the client id is not the certificate's CN"),
                        ConnectReturnCode::NotAuthorized,
                    );
                }
                Some(DeviceAcl::new(device, &self.topics))
            }
        };
        if let (Some(acl), Some(will)) = (&acl, &connect.last_will)
            && !acl.may_publish(&will.topic)
        {
            return refuse(
                Refusal::Acl {
                    what: "last will",
                    topic: will.topic.clone(),
                },
                ConnectReturnCode::NotAuthorized,
            );
        }
        connect.login = Some(Login {
            username: id.clone(),
            password: self.internal_password.to_string(),
        });
        Ok((connect, acl))
    }
}

/// Checks one client-to-broker packet against `acl` (none: an open door); the topic of a
/// PUBLISH.
fn check(acl: Option<&DeviceAcl>, frame: &Frame) -> Result<Option<String>, Refusal> {
    let malformed = |e: mqttbytes::Error| Refusal::Malformed(e.to_string());
    match frame.header.packet_type().map_err(malformed)? {
        PacketType::Publish => {
            let publish = Publish::read(frame.header, frame.raw.clone()).map_err(malformed)?;
            if acl.is_some_and(|acl| !acl.may_publish(&publish.topic)) {
                return Err(Refusal::Acl {
                    what: "publish",
                    topic: publish.topic,
                });
            }
            return Ok(Some(publish.topic));
        }
        PacketType::Subscribe => {
            let Some(acl) = acl else {
                return Ok(None);
            };
            let subscribe = Subscribe::read(frame.header, frame.raw.clone()).map_err(malformed)?;
            if let Some(f) = subscribe
                .filters
                .into_iter()
                .find(|f| !acl.may_subscribe(&f.path))
            {
                return Err(Refusal::Acl {
                    what: "subscribe",
                    topic: f.path,
                });
            }
        }
        PacketType::PubAck
        | PacketType::PubRec
        | PacketType::PubRel
        | PacketType::PubComp
        | PacketType::Unsubscribe
        | PacketType::PingReq
        | PacketType::Disconnect => {}
        other => {
            return Err(Refusal::Malformed(format!(
                "unexpected {other:?} from a client"
            )));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(bytes: &[u8]) -> Option<Frame> {
        let mut buf = BytesMut::from(bytes);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(read_frame(&mut &[][..], &mut buf))
            .ok()
            .flatten()
    }

    #[test]
    fn hostile_packets_are_refused_without_panicking() {
        let acl = DeviceAcl::new(DeviceId::new("a").unwrap(), &Topics::default());
        // Every short byte string, framed or not, is either refused or allowed: no panic.
        for first in 0u8..=255 {
            for len in 0u8..8 {
                let mut bytes = vec![first, len];
                bytes.extend((0..len).map(|i| i.wrapping_mul(37)));
                if let Some(f) = frame(&bytes) {
                    let _ = check(Some(&acl), &f);
                }
            }
        }
        // An oversized remaining length is an error, not an allocation.
        assert!(frame(&[0x30, 0xff, 0xff, 0xff, 0x7f]).is_none());
    }

    #[test]
    fn a_publish_outside_the_acl_is_refused() {
        let acl = DeviceAcl::new(DeviceId::new("a").unwrap(), &Topics::default());
        let publish = |topic: &str| {
            let mut out = BytesMut::new();
            let mut publish = Publish::new(topic, rumqttc::QoS::AtLeastOnce, vec![1u8]);
            publish.pkid = 1;
            Packet::Publish(publish)
                .write(&mut out, MAX_PACKET)
                .unwrap();
            frame(&out).unwrap()
        };
        assert!(check(Some(&acl), &publish("ota/v1/devices/a/reported")).is_ok());
        assert!(matches!(
            check(Some(&acl), &publish("ota/v1/devices/b/reported")),
            Err(Refusal::Acl { .. })
        ));
    }
}
