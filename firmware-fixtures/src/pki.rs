//! TEST-ONLY TLS certificates, generated at run time: a certificate authority per test, server
//! certificates for `localhost`/`127.0.0.1` and client certificates whose common name (CN) is a
//! device id. Keys are fresh ECDSA P-256 keys every time; nothing is checked in.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A PEM certificate (chain) file and its private key file.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate, PEM.
    pub cert: PathBuf,
    /// The private key, PEM (PKCS#8), written 0600.
    pub key: PathBuf,
}

/// A TEST-ONLY certificate authority whose files live in one directory.
pub struct TestCa {
    dir: PathBuf,
    name: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("dir", &self.dir)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("write {}", path.display()))
}

impl TestCa {
    /// A new CA named `name` (its certificate is `DIR/NAME.ca.pem`).
    pub fn new(dir: &Path, name: &str) -> anyhow::Result<TestCa> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("TEST-ONLY {name} CA"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let ca = TestCa {
            dir: dir.to_path_buf(),
            name: name.to_owned(),
            issuer: Issuer::new(params, key),
        };
        std::fs::write(ca.ca_file(), cert.pem())
            .with_context(|| format!("write {}", ca.ca_file().display()))?;
        Ok(ca)
    }

    /// The CA certificate file (PEM): what clients pin, or a broker's client CA.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join(format!("{}.ca.pem", self.name))
    }

    fn issue(
        &self,
        file: &str,
        cn: &str,
        names: Vec<String>,
        usage: ExtendedKeyUsagePurpose,
    ) -> anyhow::Result<CertFiles> {
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let files = CertFiles {
            cert: self.dir.join(format!("{}.{file}.crt", self.name)),
            key: self.dir.join(format!("{}.{file}.key", self.name)),
        };
        std::fs::write(&files.cert, cert.pem())
            .with_context(|| format!("write {}", files.cert.display()))?;
        write_private(&files.key, &key.serialize_pem())?;
        Ok(files)
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    pub fn server_cert(&self) -> anyhow::Result<CertFiles> {
        self.issue(
            "server",
            "localhost",
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate whose CN is `cn` (a device id).
    pub fn client_cert(&self, cn: &str) -> anyhow::Result<CertFiles> {
        self.issue(
            &format!("client-{cn}"),
            cn,
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }
}
