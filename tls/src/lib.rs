//! The rustls configurations of ota, one copy for the agent (MQTT link `mqtts://`, artifact
//! downloads `https://`) and the fleet server (the embedded broker's front door, its HTTPS
//! listener and its client to an external broker). Everything uses the explicit *ring*
//! provider ([`provider`]); [`install_default_provider`] makes it the process default for
//! clients that build their own configuration (reqwest's platform verifier in the agent).
//!
//! [`client_config`]:
//!
//! - with a CA file, **only** the certificates in that PEM bundle are trust anchors (the CA
//!   is pinned: no system or built-in root is consulted);
//! - without one, the system's root certificates (`rustls-native-certs`);
//! - with a client certificate and key (PEM), the client authenticates itself (mutual TLS).
//!
//! [`server_config`]: a certificate chain and key, and optionally a client CA whose
//! certificates every client must present.
//!
//! Private keys are read and handed to rustls; they never appear in an error message or in
//! `Debug` output.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Largest PEM file read (a CA bundle of a few hundred certificates fits).
const MAX_PEM_FILE: u64 = 1024 * 1024;

/// The TLS files of one client connection kind (the agent's `[broker]` or `[download]`, the
/// server's external `[mqtt]` broker).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlsFiles<'a> {
    /// The pinned CA bundle (PEM); `None` trusts the system's roots.
    pub ca_file: Option<&'a Path>,
    /// The client certificate chain (PEM), for mutual TLS; goes with `client_key`.
    pub client_cert: Option<&'a Path>,
    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub client_key: Option<&'a Path>,
}

impl TlsFiles<'_> {
    /// Whether any file is set (else a caller may keep its library's default TLS setup).
    pub fn any(&self) -> bool {
        self.ca_file.is_some() || self.client_cert.is_some() || self.client_key.is_some()
    }
}

/// Why a TLS configuration cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A TLS file (CA bundle, client certificate or key) cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A TLS file is larger than any PEM file of its kind can be.
    #[error("{path} is larger than {MAX_PEM_FILE} bytes: not a PEM certificate or key file")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A PEM file holds no certificate.
    #[error("{path}: no PEM certificate found")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A PEM certificate cannot be parsed or used as a trust anchor.
    #[error("{path}: bad certificate: {reason}")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key file holds no usable private key (nothing of the file's content is shown: it
    /// may be a key).
    #[error("{path}: {reason}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A client certificate without its key, or a key without its certificate.
    #[error("a client certificate and its key go together")]
    IncompleteIdentity,
    /// No CA file is configured and the system has no root certificates.
    #[error("no system root certificates found: set a ca_file")]
    NoSystemRoots,
    /// The client CA bundle cannot verify client certificates (no usable anchor).
    #[error("client CA: {0}")]
    ClientVerifier(String),
    /// rustls refused the configuration (a key that does not match the certificate...).
    #[error("TLS configuration refused: {0}")]
    Config(#[source] rustls::Error),
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_err = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > MAX_PEM_FILE {
        return Err(TlsError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    std::fs::read(path).map_err(read_err)
}

/// Every certificate of the PEM file at `path` (at least one).
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The private key of the PEM file at `path` (PKCS#8, PKCS#1 or SEC1).
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_pem(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::BadKey {
        path: path.to_path_buf(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no PEM private key found",
            _ => "malformed PEM private key",
        },
    })
}

/// A root store of exactly the certificates of the PEM bundle at `path`.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certificates(path)? {
        roots.add(cert).map_err(|e| TlsError::BadCertificate {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// The crypto provider of every configuration: rustls's *ring* provider with its defaults
/// (TLS 1.3 and 1.2 AES-GCM and ChaCha20-Poly1305 suites; X25519, P-256, P-384 key exchange).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes [`provider`] the process's default rustls provider, unless one is already installed
/// (by an earlier call or by the program embedding ota-tls: that one stays).
pub fn install_default_provider() {
    // Err only means a default is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The trust anchors: only the pinned CA bundle, else the system's roots.
fn roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, TlsError> {
    match ca_file {
        Some(path) => load_roots(path),
        None => system_roots(),
    }
}

/// The system's root certificates (`rustls-native-certs`: the platform's store, or
/// `SSL_CERT_FILE` / `SSL_CERT_DIR` when set); [`TlsError::NoSystemRoots`] when there are none
/// (a minimal device image without a CA bundle).
pub fn system_roots() -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if roots.is_empty() {
        return Err(TlsError::NoSystemRoots);
    }
    Ok(roots)
}

/// A client configuration with no trust anchor: every TLS handshake fails
/// (`UnknownIssuer`). For a client that needs only plain HTTP on a system without CA
/// certificates.
pub fn client_config_trusting_nothing() -> Result<rustls::ClientConfig, TlsError> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth())
}

/// The rustls client configuration for `files` (see the [module documentation](self)).
pub fn client_config(files: TlsFiles<'_>) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots(files.ca_file)?);
    match (files.client_cert, files.client_key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(load_certificates(cert)?, load_private_key(key)?)
            .map_err(TlsError::Config),
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(TlsError::IncompleteIdentity),
    }
}

/// A server configuration: the certificate chain `cert` and its `key` (PEM); with
/// `client_ca`, every client must present a certificate issued by that CA bundle.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<rustls::ServerConfig, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(load_roots(ca)?),
                provider(),
            )
            .build()
            .map_err(|e| TlsError::ClientVerifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(load_certificates(cert)?, load_private_key(key)?)
        .map_err(TlsError::Config)
}
