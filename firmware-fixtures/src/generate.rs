//! The generator: every fixture file, rendered in memory from fixed seeds and labels, then
//! written to a directory or compared with one.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ed25519_dalek::Signer as _;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, KeypairBytes};
use ota_core::digest::Digest;
use ota_core::release::{FORMAT_VERSION, Limits, Manifest, SignatureEntry, SignedRelease, sign};

use crate::catalog::FIXTURES;
use crate::images::{self, Image};
use crate::{
    CREATED, EXPIRED_AT, FOREIGN_HARDWARE_CLASS, HARDWARE_CLASS, NOW, OTHER_HARDWARE_CLASS,
    PRODUCT, SECURITY_FLOOR, TestKey,
};

/// One day, in seconds.
const DAY: u64 = 86_400;

/// The bytes appended to `v2.release` to make `trailing-junk.release`.
const TRAILING_JUNK: &[u8] = b"TEST-ONLY trailing junk";

/// A signature protected header naming ES256 (`{1: -7}`), for `wrong-algorithm.release`.
const ES256_PROTECTED: [u8; 3] = [0xa1, 0x01, 0x26];

/// Every fixture file, as (path relative to the data dir with `/` separators, bytes), sorted by
/// path. Pure and deterministic: the same bytes on every machine and every run.
pub fn render() -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for key in TestKey::ALL {
        // PKCS#8 v1 (no embedded public key): `SigningKey::to_pkcs8_pem` writes v2
        // (OneAsymmetricKey), which OpenSSL 3.0 refuses to read.
        let keypair = KeypairBytes {
            secret_key: key.seed(),
            public_key: None,
        };
        let private = keypair
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| anyhow::anyhow!("encoding {} as PKCS#8: {e}", key.name()))?;
        let public = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| anyhow::anyhow!("encoding {} as SPKI: {e}", key.name()))?;
        files.insert(
            key.private_pem_file(),
            with_final_newline(private.as_bytes()),
        );
        files.insert(key.public_pem_file(), with_final_newline(public.as_bytes()));
        files.insert(
            key.public_raw_file(),
            key.verifying_key().as_bytes().to_vec(),
        );
    }
    for image in images::GOOD {
        files.insert(image.file.into(), image.bytes());
    }
    files.insert(images::V2_TAMPERED_FILE.into(), images::v2_tampered());
    files.insert(images::V2_LONGER_FILE.into(), images::v2_longer());
    files.insert(images::V2_SHORT_FILE.into(), images::v2_short());
    for (name, bytes) in releases()? {
        files.insert(name.into(), bytes);
    }
    for fixture in FIXTURES {
        for file in [fixture.release, fixture.artifact] {
            anyhow::ensure!(
                files.contains_key(file),
                "fixture {} names {file}, which the generator does not make",
                fixture.name
            );
        }
    }
    let readme = readme(&files);
    files.insert("README.md".into(), readme.into_bytes());
    Ok(files.into_iter().collect())
}

/// `text` ending in exactly one newline (PEM encoders differ on the last one).
fn with_final_newline(text: &[u8]) -> Vec<u8> {
    let mut out = text.to_vec();
    while out.last() == Some(&b'\n') {
        out.pop();
    }
    out.push(b'\n');
    out
}

/// Writes every fixture file under `dir` (creating directories as needed) and returns the paths
/// written. Files already in `dir` that the generator does not make are left alone (see
/// [`diff`]).
pub fn generate(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (relative, bytes) in render()? {
        let path = dir.join(&relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Compares `dir` with what the generator makes: one line per missing, extra or differing file;
/// empty when `dir` holds exactly the generated files, byte for byte.
pub fn diff(dir: &Path) -> anyhow::Result<Vec<String>> {
    let expected: BTreeMap<String, Vec<u8>> = render()?.into_iter().collect();
    let present = list_files(dir)?;
    let mut problems = Vec::new();
    for (relative, bytes) in &expected {
        if !present.contains(relative) {
            problems.push(format!("missing: {relative}"));
            continue;
        }
        let path = dir.join(relative);
        let actual = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        if &actual != bytes {
            problems.push(format!("differs: {relative}"));
        }
    }
    for relative in &present {
        if !expected.contains_key(relative) {
            problems.push(format!("extra (not generated): {relative}"));
        }
    }
    Ok(problems)
}

/// Every regular file under `dir`, as paths relative to it with `/` separators, sorted.
pub fn list_files(dir: &Path) -> anyhow::Result<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                walk(root, &path, out)?;
            } else {
                let relative = path.strip_prefix(root)?;
                let parts: Vec<String> = relative
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(parts.join("/"));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// The manifest of a fixture release.
struct Spec<'a> {
    fixture: &'a str,
    version: &'a str,
    security_version: u32,
    image: Image,
    hardware: &'a [&'a str],
    created: u64,
}

impl Spec<'_> {
    fn manifest(&self) -> Manifest {
        let artifact = self.image.bytes();
        Manifest {
            format_version: FORMAT_VERSION,
            product: PRODUCT.into(),
            version: self.version.into(),
            security_version: self.security_version,
            artifact_sha256: Digest::of(&artifact).0,
            artifact_size: artifact.len() as u64,
            hardware: self.hardware.iter().map(|h| (*h).into()).collect(),
            created: self.created,
            expires: None,
            installer: Some("files".into()),
            metadata: BTreeMap::from([
                ("fixture".into(), self.fixture.into()),
                (
                    "warning".into(),
                    "TEST-ONLY release signed with public test keys".into(),
                ),
            ]),
            chunk_index: None,
        }
    }
}

const BOTH_HW: &[&str] = &[HARDWARE_CLASS, OTHER_HARDWARE_CLASS];

/// The v2 manifest, tagged with `fixture`: the base of v2 and every hostile release.
fn v2(fixture: &str) -> Manifest {
    Spec {
        fixture,
        version: "2.0.0",
        security_version: 2,
        image: images::V2,
        hardware: BOTH_HW,
        created: CREATED + 30 * DAY,
    }
    .manifest()
}

/// Every release file, by name.
fn releases() -> anyhow::Result<Vec<(&'static str, Vec<u8>)>> {
    let a = TestKey::A.signing_key();
    let b = TestKey::B.signing_key();
    let c = TestKey::C.signing_key();
    let unknown = TestKey::Unknown.signing_key();

    let v1 = Spec {
        fixture: "v1",
        version: "1.0.0",
        security_version: 1,
        image: images::V1,
        hardware: &[HARDWARE_CLASS],
        created: CREATED,
    }
    .manifest();
    let v3 = Spec {
        fixture: "v3",
        version: "3.0.0",
        security_version: 3,
        image: images::V3,
        hardware: BOTH_HW,
        created: CREATED + 60 * DAY,
    }
    .manifest();
    let v2_release = sign(&v2("v2"), std::slice::from_ref(&a));

    let mut again = v2("v2-again");
    again.version = "2.0.0-redeploy.1".into();
    again.created += DAY;

    let mut bad_signature =
        SignedRelease::decode(&sign(&v2("bad-signature"), std::slice::from_ref(&a)))?;
    for entry in &mut bad_signature.signatures {
        if let Some(byte) = entry.signature.get_mut(10) {
            *byte ^= 0x01;
        }
    }

    let mut expired = v2("expired");
    expired.expires = Some(EXPIRED_AT);
    let mut downgrade = v2("downgrade");
    downgrade.security_version = SECURITY_FLOOR - 1;
    let mut wrong_hardware = v2("wrong-hardware");
    wrong_hardware.hardware = vec![FOREIGN_HARDWARE_CLASS.into()];
    let mut oversized = v2("oversized-product");
    oversized.product = format!(
        "{PRODUCT}-{}",
        "x".repeat(Limits::MAX_NAME_BYTES - PRODUCT.len())
    );
    let mut wrong_format = v2("wrong-format-version");
    wrong_format.format_version = FORMAT_VERSION + 1;

    let truncated = v2_release
        .get(..v2_release.len() / 2)
        .unwrap_or_default()
        .to_vec();
    let mut trailing = v2_release.clone();
    trailing.extend_from_slice(TRAILING_JUNK);

    let releases = vec![
        ("v1.release", sign(&v1, std::slice::from_ref(&a))),
        ("v2.release", v2_release),
        ("v2-again.release", sign(&again, std::slice::from_ref(&b))),
        (
            "v2-threshold-2of3.release",
            sign(&v2("v2-threshold-2of3"), &[a.clone(), c]),
        ),
        ("v3.release", sign(&v3, std::slice::from_ref(&a))),
        ("bad-signature.release", bad_signature.encode()),
        ("unknown-key.release", sign(&v2("unknown-key"), &[unknown])),
        (
            "threshold-not-met.release",
            sign(&v2("threshold-not-met"), &[a.clone(), a.clone()]),
        ),
        ("expired.release", sign(&expired, std::slice::from_ref(&a))),
        (
            "downgrade.release",
            sign(&downgrade, std::slice::from_ref(&a)),
        ),
        (
            "wrong-hardware.release",
            sign(&wrong_hardware, std::slice::from_ref(&a)),
        ),
        ("truncated.release", truncated),
        (
            "oversized-product.release",
            sign(&oversized, std::slice::from_ref(&a)),
        ),
        ("trailing-junk.release", trailing),
        (
            "wrong-format-version.release",
            sign(&wrong_format, std::slice::from_ref(&a)),
        ),
        ("wrong-algorithm.release", wrong_algorithm(&a)),
    ];
    Ok(releases)
}

/// The v2 manifest signed by `key` under a signature protected header naming ES256: a correct
/// ed25519 signature over the COSE `Sig_structure`, but the header lies about the algorithm.
fn wrong_algorithm(key: &ed25519_dalek::SigningKey) -> Vec<u8> {
    let manifest = v2("wrong-algorithm");
    let mut release = SignedRelease {
        body_protected: Vec::new(),
        payload: manifest.to_cbor(),
        manifest,
        signatures: Vec::new(),
    };
    // Take the body protected header from a normally signed release, so only the algorithm
    // differs.
    if let Ok(normal) = SignedRelease::decode(&sign(&release.manifest, std::slice::from_ref(key))) {
        release.body_protected = normal.body_protected;
    }
    let message = release.to_be_signed(&ES256_PROTECTED);
    release.signatures.push(SignatureEntry {
        protected: ES256_PROTECTED.to_vec(),
        kid: TestKey::A.key_id().0.to_vec(),
        signature: key.sign(&message).to_bytes(),
    });
    release.encode()
}

/// `data/README.md`, rendered from the catalog and the generated files.
fn readme(files: &BTreeMap<String, Vec<u8>>) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"# firmware-fixtures data — TEST-ONLY

**Everything here is TEST-ONLY.** The keys under `keys/` are derived from public seeds: anyone
can recompute them. Never put a `test-only-*` key in a real trust set.

This directory is generated; do not edit it by hand (this README is generated too, from
`firmware-fixtures/src/`). Regenerate it with

```sh
cargo run -p firmware-fixtures                 # rewrites firmware-fixtures/data/
cargo run -p firmware-fixtures -- --out DIR    # writes somewhere else
cargo run -p firmware-fixtures -- --check      # fails if data/ differs from the generator
```

`cargo test -p firmware-fixtures` (tests/golden.rs) proves the generator reproduces every file
here byte for byte, and `cargo test -p ota-core --test fixtures` (core/tests/fixtures.rs) checks
every release below against its expected outcome, reading only these files and the raw keys.
Everything is deterministic: fixed seeds, fixed labels, fixed timestamps, and ed25519 signatures
(deterministic by construction).

## The world every fixture is checked in

| what | value |
|---|---|
| trust set | `test-only-a`, `test-only-b`, `test-only-c`; threshold k as listed per fixture (1 unless said) |
| never trusted | `test-only-unknown` |
| device hardware class | `{HARDWARE_CLASS}` |
| device security floor | {SECURITY_FLOOR} |
| now, for expiry (unix seconds) | {NOW} |
| product | `{PRODUCT}` |
| created (v1; v2 is +30 days, v3 +60 days, v2-again +31 days) | {CREATED} |

In Rust: `firmware_fixtures::{{trust_set, policy, FIXTURES, NOW}}`.

## Keys (`keys/`) — TEST-ONLY

Seed = SHA-256 of the label (UTF-8). `.key` is PKCS#8 v1 PEM (no embedded public key, so
OpenSSL 3.0 reads it: `openssl pkey -in keys/test-only-a.key -pubout`), `.pub` is SPKI PEM, `.pub.raw` is the 32 raw public key bytes (for no_std tests that parse no PEM). The key id
is the first 16 bytes of SHA-256 of the raw public key.

| key | files | key id | seed label |
|---|---|---|---|
"#
    );
    for key in TestKey::ALL {
        let _ = writeln!(
            s,
            "| `{}` | `{}`, `{}`, `{}` | `{}` | `{}` |",
            key.name(),
            key.private_pem_file(),
            key.public_pem_file(),
            key.public_raw_file(),
            key.key_id(),
            key.seed_label()
        );
    }
    let _ = write!(
        s,
        r#"
## Images (`images/`)

Good images are SHA-256 in counter mode: block i = SHA-256(label || i as u64 big-endian), cut to
length.

| file | bytes | sha256 | how |
|---|---|---|---|
"#
    );
    let mut image_rows: Vec<(&str, String)> = images::GOOD
        .iter()
        .map(|i| (i.file, format!("counter mode over `{}`", i.label)))
        .collect();
    let (tamper_at, tamper_mask) = images::TAMPER_AT;
    image_rows.push((
        images::V2_TAMPERED_FILE,
        format!("`images/v2.bin` with byte {tamper_at} XOR {tamper_mask:#04x} (same size)"),
    ));
    image_rows.push((
        images::V2_LONGER_FILE,
        format!(
            "`images/v2.bin` followed by the {} bytes `{}`",
            images::LONGER_SUFFIX.len(),
            String::from_utf8_lossy(images::LONGER_SUFFIX)
        ),
    ));
    image_rows.push((
        images::V2_SHORT_FILE,
        format!("the first {} bytes of `images/v2.bin`", images::SHORT_LEN),
    ));
    for (file, how) in image_rows {
        let bytes = files.get(file).map(Vec::as_slice).unwrap_or_default();
        let _ = writeln!(
            s,
            "| `{file}` | {} | `{}` | {how} |",
            bytes.len(),
            Digest::of(bytes)
        );
    }
    let _ = write!(
        s,
        r#"
## Releases and the outcome each must produce

Each row is one check: decode the release, verify it against the trust set with threshold k and
the device policy above, then stream the artifact through `ArtifactVerifier`
(`firmware_fixtures::catalog::check`). Every hostile release is the v2 manifest (same image,
version, hardware, times) changed in exactly one respect, so it fails for one reason only; no
two hostile fixtures share a `ReleaseError` variant. The last three rows pair the valid
`v2.release` with a hostile artifact. Every manifest also carries the metadata
`fixture = <fixture name>` and `warning = TEST-ONLY release signed with public test keys`, so
no two releases have the same payload.

| fixture | release | artifact | k | expected | how it was made |
|---|---|---|---|---|---|
"#
    );
    for f in FIXTURES {
        let _ = writeln!(
            s,
            "| {} | `{}` | `{}` | {} | {} | {} |",
            f.name, f.release, f.artifact, f.threshold, f.expected, f.how
        );
    }
    let _ = write!(
        s,
        r#"
### `v2-again.release`: an identical redeploy

An operator redeploying the running firmware makes a new release of the same image. So
`v2-again.release` is NOT a byte copy of `v2.release`: it is a re-signing (by b, a day later,
version string `2.0.0-redeploy.1`) that names the same artifact sha256 and size. An agent
running v2 must recognise it by the artifact digest alone and report skipped-identical, whatever
the version string or release bytes.

## Every file

"#
    );
    for (name, bytes) in files {
        let _ = writeln!(s, "- `{name}` ({} bytes)", bytes.len());
    }
    let _ = writeln!(s, "- `README.md` (this file)");
    s
}
