//! The optional HTTPS of the listener: `[http] tls_cert` and `tls_key` (PEM) make the server
//! speak HTTPS on `http.listen` (API and artifacts alike), with rustls and the aws-lc-rs
//! provider.
//!
//! Each connection's TLS handshake runs in the connection's own task, bounded by
//! [`HANDSHAKE_TIMEOUT`], so a slow or silent client never holds up the others (see
//! [`crate::http`]'s listener). A failed handshake (a client that does not trust the CA,
//! plain HTTP on the TLS port) is logged at debug level and the connection dropped.

use std::path::Path;
use std::time::Duration;

use crate::tls::TlsError;

/// Longest a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The rustls server configuration of `http.tls_cert` and `http.tls_key` (PEM files, loaded
/// by [`crate::tls`]); HTTP/1.1 is offered by ALPN.
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = crate::tls::server_config(cert, key, None)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
