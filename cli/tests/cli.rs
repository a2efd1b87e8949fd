//! Integration tests of the `ota` binary: keys, sign/verify/show, failure modes and openssl
//! interop. Each test runs the built binary in its own temporary directory.

mod util;

use ota_core::digest::Digest;
use ota_core::release::SignedRelease;
use util::{APPROVER_TOKEN, Dir, TOKEN, fake_server, key_id_line};

// ---------------------------------------------------------------------------------------------
// ota key
// ---------------------------------------------------------------------------------------------

#[cfg(unix)]
#[test]
fn key_gen_writes_a_0600_private_key_and_a_public_key() {
    let dir = Dir::new();
    let id = dir.keygen("signer");
    assert_eq!(id.len(), 32, "key id is 16 bytes of hex: {id}");
    assert_eq!(util::mode(&dir.path("signer.key")), 0o600);
    let private = String::from_utf8(dir.read("signer.key")).unwrap();
    let public = String::from_utf8(dir.read("signer.pub")).unwrap();
    assert!(private.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert!(public.starts_with("-----BEGIN PUBLIC KEY-----\n"));
    // No temporary files are left behind.
    assert_eq!(dir.files(), ["signer.key", "signer.pub"]);
    // `ota key id` agrees, from either file.
    assert_eq!(dir.ota(&["key", "id", "signer.pub"]).ok().trim(), id);
    assert_eq!(dir.ota(&["key", "id", "signer.key"]).ok().trim(), id);
}

#[cfg(unix)]
#[test]
fn key_gen_refuses_to_overwrite_without_force() {
    let dir = Dir::new();
    let first = dir.keygen("k");
    let before = dir.read("k.key");

    let line = dir.ota(&["key", "gen", "--out", "k"]).fails(2).to_owned();
    assert!(
        line.contains("already exists") && line.contains("--force"),
        "{line}"
    );
    assert_eq!(
        dir.read("k.key"),
        before,
        "the existing key must be untouched"
    );

    // Only the .pub exists: still refused, and no .key is created.
    std::fs::remove_file(dir.path("k.key")).unwrap();
    dir.ota(&["key", "gen", "--out", "k"]).fails(2);
    assert!(!dir.path("k.key").exists());

    let second = key_id_line(dir.ota(&["key", "gen", "--out", "k", "--force"]).ok());
    assert_ne!(first, second);
    assert_eq!(util::mode(&dir.path("k.key")), 0o600);
}

/// Issue 7: `--force` over a private key someone made readable writes a fresh 0600 file (the
/// new key is never readable by others, not even briefly: it is created 0600 and renamed).
#[cfg(unix)]
#[test]
fn issue7_key_gen_force_over_a_readable_key_writes_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Dir::new();
    dir.keygen("k");
    let path = dir.path("k.key");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    dir.ota(&["key", "gen", "--out", "k", "--force"]).ok();
    assert_eq!(util::mode(&path), 0o600);
    assert_eq!(util::mode(&dir.path("k.pub")), 0o644);
    assert_eq!(dir.files(), ["k.key", "k.pub"]);
}

// ---------------------------------------------------------------------------------------------
// ota release sign / verify
// ---------------------------------------------------------------------------------------------

#[test]
fn sign_then_verify_round_trip_with_artifact() {
    let dir = Dir::new();
    dir.keygen("a");
    dir.artifact("fw.bin", 3 * 1024 * 1024 + 17);
    dir.sign(&["a.key"], "fw.bin", "fw.release", &["--expires", "30d"])
        .ok();
    // The release is written atomically: no temporary files are left behind.
    assert_eq!(
        dir.files(),
        [
            "a.key",
            "a.pub",
            "fw.bin",
            "fw.release",
            "fw.release.chunks"
        ]
    );

    let out = dir.verify(&["a.pub"], "fw.release", &[]).ok().to_owned();
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.starts_with("ok: gateway-fw 2.4.1 security_version=7 signed by 1 of 1"),
        "{out}"
    );

    let out = dir
        .verify(
            &["a.pub"],
            "fw.release",
            &["--artifact", "fw.bin", "--hw", "gw-b", "--floor", "7"],
        )
        .ok()
        .to_owned();
    let digest = Digest::of(&dir.read("fw.bin"));
    assert!(out.contains(&digest.to_string()), "{out}");
}

#[test]
fn issue18_sign_writes_the_chunk_index_the_manifest_names() {
    let dir = Dir::new();
    dir.keygen("a");
    dir.artifact("fw.bin", 1024 * 1024 + 5);
    let out = dir
        .sign(&["a.key"], "fw.bin", "fw.release", &[])
        .ok()
        .to_owned();
    let index_bytes = dir.read("fw.release.chunks");
    let index_digest = Digest::of(&index_bytes);
    assert!(
        out.contains(&format!("chunk index sha256={index_digest}")),
        "{out}"
    );
    let signed = SignedRelease::decode(&dir.read("fw.release")).unwrap();
    let named = signed
        .manifest
        .chunk_index
        .expect("the manifest names the index");
    assert_eq!(named.digest(), index_digest);
    assert_eq!(named.size, index_bytes.len() as u64);
    let index = ota_core::delta::ChunkIndex::from_signed_cbor(&index_bytes, index_digest).unwrap();
    assert_eq!(index.artifact_size, 1024 * 1024 + 5);
    assert!(index.chunks.len() > 1, "{index:?}");
    let shown = dir
        .ota(&["release", "show", "fw.release", "--json"])
        .ok()
        .to_owned();
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(
        shown["manifest"]["chunk_index"]["sha256"],
        index_digest.to_string()
    );

    // Without an index: none named, no file written.
    dir.sign(&["a.key"], "fw.bin", "plain.release", &["--no-chunk-index"])
        .ok();
    let plain = SignedRelease::decode(&dir.read("plain.release")).unwrap();
    assert_eq!(plain.manifest.chunk_index, None);
    assert!(!dir.path("plain.release.chunks").exists());
    let shown = dir
        .ota(&["release", "show", "plain.release", "--json"])
        .ok()
        .to_owned();
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert!(shown["manifest"]["chunk_index"].is_null());
}

#[test]
fn verify_refuses_a_tampered_artifact() {
    let dir = Dir::new();
    dir.keygen("a");
    dir.artifact("fw.bin", 100_000);
    dir.sign(&["a.key"], "fw.bin", "fw.release", &[]).ok();
    let mut bytes = dir.read("fw.bin");

    // Same size, one bit flipped.
    bytes[50_000] ^= 1;
    dir.write("flipped.bin", &bytes);
    let line = dir
        .verify(&["a.pub"], "fw.release", &["--artifact", "flipped.bin"])
        .fails(1)
        .to_owned();
    assert!(line.contains("digest"), "{line}");

    // One byte too many.
    bytes[50_000] ^= 1;
    bytes.push(0);
    dir.write("longer.bin", &bytes);
    let line = dir
        .verify(&["a.pub"], "fw.release", &["--artifact", "longer.bin"])
        .fails(1)
        .to_owned();
    assert!(line.contains("artifact longer than signed"), "{line}");

    // One byte too few.
    bytes.truncate(bytes.len() - 2);
    dir.write("shorter.bin", &bytes);
    let line = dir
        .verify(&["a.pub"], "fw.release", &["--artifact", "shorter.bin"])
        .fails(1)
        .to_owned();
    assert!(line.contains("size mismatch"), "{line}");
}

#[test]
fn threshold_two_of_three() {
    let dir = Dir::new();
    for k in ["k1", "k2", "k3"] {
        dir.keygen(k);
    }
    dir.artifact("fw.bin", 1000);
    let trust = ["k1.pub", "k2.pub", "k3.pub"];

    dir.sign(&["k1.key", "k3.key"], "fw.bin", "two.release", &[])
        .ok();
    let out = dir
        .verify(&trust, "two.release", &["--threshold", "2"])
        .ok()
        .to_owned();
    assert!(
        out.contains("signed by 2 of 3 trusted keys (threshold 2)"),
        "{out}"
    );

    let line = dir
        .verify(&trust, "two.release", &["--threshold", "3"])
        .fails(1)
        .to_owned();
    assert!(
        line.contains("signature threshold not met: 2 valid of 3 required"),
        "{line}"
    );

    dir.sign(&["k2.key"], "fw.bin", "one.release", &[]).ok();
    let line = dir
        .verify(&trust, "one.release", &["--threshold", "2"])
        .fails(1)
        .to_owned();
    assert!(
        line.contains("signature threshold not met: 1 valid of 2 required"),
        "{line}"
    );

    // A threshold the trust set cannot meet is a usage error.
    let line = dir
        .verify(&trust, "two.release", &["--threshold", "4"])
        .fails(2)
        .to_owned();
    assert!(line.contains("threshold 4"), "{line}");
}

#[test]
fn verify_refuses_unknown_key_wrong_hardware_floor_and_expiry() {
    let dir = Dir::new();
    dir.keygen("a");
    dir.keygen("stranger");
    dir.artifact("fw.bin", 1000);
    dir.sign(&["a.key"], "fw.bin", "fw.release", &[]).ok();

    let line = dir
        .verify(&["stranger.pub"], "fw.release", &[])
        .fails(1)
        .to_owned();
    assert!(line.contains("unknown key"), "{line}");

    let line = dir
        .verify(&["a.pub"], "fw.release", &["--hw", "gw-c"])
        .fails(1)
        .to_owned();
    assert!(
        line.contains("hardware class") && line.contains("gw-a, gw-b"),
        "{line}"
    );

    let line = dir
        .verify(&["a.pub"], "fw.release", &["--floor", "8"])
        .fails(1)
        .to_owned();
    assert!(line.contains("downgrade refused"), "{line}");

    // Expires the second it is made: no sleeping needed.
    dir.sign(&["a.key"], "fw.bin", "old.release", &["--expires", "0s"])
        .ok();
    let line = dir
        .verify(&["a.pub"], "old.release", &[])
        .fails(1)
        .to_owned();
    assert!(line.contains("expired"), "{line}");
}

#[test]
fn sign_refuses_fields_over_the_limits() {
    let dir = Dir::new();
    dir.keygen("a");
    dir.artifact("fw.bin", 10);
    let long = "v".repeat(65);
    let line = dir
        .ota(&[
            "release",
            "sign",
            "--key",
            "a.key",
            "--artifact",
            "fw.bin",
            "--version",
            &long,
            "--security-version",
            "1",
            "--hw",
            "x",
            "--out",
            "fw.release",
        ])
        .fails(2)
        .to_owned();
    assert!(line.contains("version is too long"), "{line}");
    assert!(!dir.path("fw.release").exists());

    let line = dir
        .sign(&["a.key"], "fw.bin", "fw.release", &["--meta", "novalue"])
        .fails(2)
        .to_owned();
    assert!(line.contains("KEY=VALUE"), "{line}");
}

// ---------------------------------------------------------------------------------------------
// ota release show
// ---------------------------------------------------------------------------------------------

#[test]
fn show_prints_text_and_json_without_trust_keys() {
    let dir = Dir::new();
    let id = dir.keygen("a");
    dir.artifact("fw.bin", 4096);
    dir.sign(
        &["a.key"],
        "fw.bin",
        "fw.release",
        &[
            "--installer",
            "files",
            "--meta",
            "build=42",
            "--expires",
            "1h",
        ],
    )
    .ok();
    let digest = Digest::of(&dir.read("fw.bin")).to_string();

    let text = dir.ota(&["release", "show", "fw.release"]).ok().to_owned();
    for needle in [
        "(signatures not verified)",
        "gateway-fw",
        "2.4.1",
        &digest,
        "gw-a, gw-b",
        "build = 42",
        &id,
        "Z, ",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }

    let json = dir
        .ota(&["release", "show", "--json", "fw.release"])
        .ok()
        .to_owned();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["signatures_verified"], false);
    let m = &v["manifest"];
    assert_eq!(m["version"], "2.4.1");
    assert_eq!(m["product"], "gateway-fw");
    assert_eq!(m["security_version"], 7);
    assert_eq!(m["artifact_sha256"], digest.as_str());
    assert_eq!(m["artifact_size"], 4096);
    assert_eq!(m["hardware"], serde_json::json!(["gw-a", "gw-b"]));
    assert_eq!(m["installer"], "files");
    assert_eq!(m["metadata"]["build"], "42");
    assert_eq!(
        m["expires"].as_u64().unwrap() - m["created"].as_u64().unwrap(),
        3600
    );
    assert_eq!(v["signatures"][0]["key_id"], id.as_str());
}

// ---------------------------------------------------------------------------------------------
// Bad input: one line on stderr, exit 1 for a bad release, exit 2 for usage and I/O
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_inputs_give_one_line_and_the_documented_status() {
    let dir = Dir::new();
    dir.keygen("a");
    dir.artifact("fw.bin", 100);
    dir.sign(&["a.key"], "fw.bin", "fw.release", &[]).ok();
    dir.write("garbage", b"\x00\xffthis is not a key nor a release\n");
    dir.write(
        "cert.pem",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );

    // Missing files: exit 2.
    let line = dir
        .verify(&["a.pub"], "missing.release", &[])
        .fails(2)
        .to_owned();
    assert!(line.contains("missing.release"), "{line}");
    dir.verify(&["missing.pub"], "fw.release", &[]).fails(2);
    dir.verify(&["a.pub"], "fw.release", &["--artifact", "missing.bin"])
        .fails(2);
    dir.sign(&["missing.key"], "fw.bin", "x.release", &[])
        .fails(2);
    dir.sign(&["a.key"], "missing.bin", "x.release", &[])
        .fails(2);
    dir.ota(&["release", "show", "missing.release"]).fails(2);

    // Garbage and wrong-kind key files: exit 2, naming the file.
    let line = dir
        .sign(&["garbage"], "fw.bin", "x.release", &[])
        .fails(2)
        .to_owned();
    assert!(line.contains("garbage") && line.contains("PEM"), "{line}");
    let line = dir
        .verify(&["garbage"], "fw.release", &[])
        .fails(2)
        .to_owned();
    assert!(line.contains("garbage"), "{line}");
    let line = dir
        .sign(&["a.pub"], "fw.bin", "x.release", &[])
        .fails(2)
        .to_owned();
    assert!(
        line.contains("public key") && line.contains("private key"),
        "{line}"
    );
    let line = dir
        .verify(&["a.key"], "fw.release", &[])
        .fails(2)
        .to_owned();
    assert!(
        line.contains("private key") && line.contains("public key"),
        "{line}"
    );
    let line = dir
        .sign(&["cert.pem"], "fw.bin", "x.release", &[])
        .fails(2)
        .to_owned();
    assert!(line.contains("CERTIFICATE"), "{line}");
    dir.ota(&["key", "id", "garbage"]).fails(2);
    assert!(!dir.path("x.release").exists());

    // A file that is not a release is a refused release: exit 1.
    let line = dir.verify(&["a.pub"], "garbage", &[]).fails(1).to_owned();
    assert!(line.contains("malformed release"), "{line}");
    dir.ota(&["release", "show", "garbage"]).fails(1);
    let mut truncated = dir.read("fw.release");
    truncated.truncate(truncated.len() / 2);
    dir.write("truncated.release", &truncated);
    dir.verify(&["a.pub"], "truncated.release", &[]).fails(1);
    dir.ota(&["release", "show", "--json", "truncated.release"])
        .fails(1);

    // Usage errors from clap are folded into one line too: exit 2.
    dir.ota(&["release", "verify", "--release", "fw.release"])
        .fails(2);
    dir.ota(&["release", "sign", "--key", "a.key"]).fails(2);
    dir.ota(&[
        "release",
        "verify",
        "--trust",
        "a.pub",
        "--release",
        "fw.release",
        "--floor",
        "-1",
    ])
    .fails(2);
    dir.ota(&["no-such-command"]).fails(2);
}

#[test]
fn every_command_has_help() {
    let dir = Dir::new();
    for cmd in [
        &["--help"][..],
        &["key", "--help"],
        &["key", "gen", "--help"],
        &["key", "id", "--help"],
        &["release", "--help"],
        &["release", "sign", "--help"],
        &["release", "verify", "--help"],
        &["release", "show", "--help"],
        &["key", "rotate", "--help"],
        &["trust", "--help"],
        &["trust", "publish", "--help"],
        &["trust", "show", "--help"],
    ] {
        let out = dir.ota(cmd).ok().to_owned();
        assert!(out.contains("Usage: ota"), "{cmd:?}: {out}");
    }
    let verify = dir.ota(&["release", "verify", "--help"]).ok().to_owned();
    assert!(verify.contains("Exit status"), "{verify}");
    let sign = dir.ota(&["release", "sign", "--help"]).ok().to_owned();
    assert!(sign.contains("[default: default]"), "{sign}");
}

// ---------------------------------------------------------------------------------------------
// openssl interop, with the real /usr/bin/openssl
// ---------------------------------------------------------------------------------------------

#[test]
fn openssl_reads_our_key_files() {
    let dir = Dir::new();
    let id = dir.keygen("ours");
    dir.openssl(&["pkey", "-in", "ours.key", "-noout"]).ok();
    dir.openssl(&["pkey", "-pubin", "-in", "ours.pub", "-noout"])
        .ok();
    // openssl derives the same public key file from our private key.
    let derived = dir
        .openssl(&["pkey", "-in", "ours.key", "-pubout"])
        .ok()
        .to_owned();
    assert_eq!(derived.as_bytes(), dir.read("ours.pub"));
    dir.write("derived.pub", derived.as_bytes());
    assert_eq!(dir.ota(&["key", "id", "derived.pub"]).ok().trim(), id);
}

#[test]
fn openssl_made_keys_sign_and_verify() {
    let dir = Dir::new();
    dir.openssl(&["genpkey", "-algorithm", "ed25519", "-out", "k.pem"])
        .ok();
    dir.openssl(&["pkey", "-in", "k.pem", "-pubout", "-out", "k.pub"])
        .ok();
    let id = dir.ota(&["key", "id", "k.pem"]).ok().trim().to_owned();
    assert_eq!(dir.ota(&["key", "id", "k.pub"]).ok().trim(), id);

    dir.artifact("fw.bin", 5000);
    dir.sign(&["k.pem"], "fw.bin", "fw.release", &[]).ok();
    dir.verify(&["k.pub"], "fw.release", &["--artifact", "fw.bin"])
        .ok();

    // And openssl itself accepts the signature over the COSE Sig_structure.
    let release = SignedRelease::decode(&dir.read("fw.release")).unwrap();
    let entry = &release.signatures[0];
    assert_eq!(hex::encode(&entry.kid), id);
    dir.write("tbs.bin", &release.to_be_signed(&entry.protected));
    dir.write("sig.bin", &entry.signature);
    let run = dir.openssl(&[
        "pkeyutl", "-verify", "-pubin", "-inkey", "k.pub", "-rawin", "-in", "tbs.bin", "-sigfile",
        "sig.bin",
    ]);
    assert!(
        run.ok().contains("Signature Verified Successfully"),
        "{run:#?}"
    );
}

#[test]
fn openssl_key_mixed_with_ota_key_in_a_two_of_two_release() {
    let dir = Dir::new();
    dir.openssl(&["genpkey", "-algorithm", "ed25519", "-out", "ossl.pem"])
        .ok();
    dir.openssl(&["pkey", "-in", "ossl.pem", "-pubout", "-out", "ossl.pub"])
        .ok();
    dir.keygen("ours");
    dir.artifact("fw.bin", 100);
    dir.sign(&["ossl.pem", "ours.key"], "fw.bin", "fw.release", &[])
        .ok();
    let out = dir
        .verify(
            &["ours.pub", "ossl.pub"],
            "fw.release",
            &["--threshold", "2"],
        )
        .ok()
        .to_owned();
    assert!(out.contains("signed by 2 of 2"), "{out}");
}

/// Issue 4: the fleet commands against a real `ota server` (embedded broker and HTTP on port 0,
/// SQLite under the temp dir): publish, list, devices, rollouts, events, and their errors.
#[test]
fn fleet_commands_against_a_running_server() {
    let dir = Dir::new();
    dir.keygen("fleet");
    dir.artifact("fw.bin", 5000);
    dir.sign(&["fleet.key"], "fw.bin", "fw.release", &[]).ok();
    let server = dir.start_server(&["fleet.pub"]);
    let base = server.base.clone();
    let env = [("OTA_SERVER", base.as_str()), ("OTA_TOKEN", TOKEN)];
    let run = |args: &[&str]| dir.ota_env(args, &env);

    // Issue 18: the release names a chunk index; without its file, publish names the path.
    std::fs::rename(dir.path("fw.release.chunks"), dir.path("moved.chunks")).unwrap();
    let line = run(&["release", "publish", "fw.release", "--artifact", "fw.bin"])
        .fails(2)
        .to_string();
    assert!(line.contains("fw.release.chunks"), "{line}");
    let out = run(&[
        "release",
        "publish",
        "fw.release",
        "--artifact",
        "fw.bin",
        "--chunk-index",
        "moved.chunks",
    ]);
    assert!(out.ok().starts_with("published: "), "{out:?}");
    std::fs::rename(dir.path("moved.chunks"), dir.path("fw.release.chunks")).unwrap();
    let again = run(&["release", "publish", "fw.release", "--artifact", "fw.bin"]);
    assert!(again.ok().starts_with("already-present: "));
    let list = run(&["release", "list"]);
    assert!(list.ok().contains("2.4.1"), "{list:?}");
    let json = run(&["release", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(json.ok()).unwrap();
    assert_eq!(v["releases"][0]["version"], "2.4.1");
    assert_eq!(
        v["releases"][0]["chunk_index"],
        Digest::of(&dir.read("fw.release.chunks")).to_string()
    );

    assert!(run(&["devices", "list"]).ok().contains("0 device(s)"));
    let line = run(&["devices", "list", "--filter", "hw=("])
        .fails(1)
        .to_string();
    assert!(line.contains("bad-filter"), "{line}");
    run(&["devices", "show", "nope"]).fails(1);

    // No device yet: a rollout has no targets (refused by the server: exit 1).
    let line = run(&["rollout", "create", "--release", "fw.release", "--dry-run"])
        .fails(1)
        .to_string();
    assert!(line.contains("no-targets"), "{line}");
    run(&[
        "rollout",
        "create",
        "--release",
        "2.4.1",
        "--waves",
        "5%,1%",
    ])
    .fails(1);
    run(&["rollout", "create", "--release", "2.4.1", "--bake", "soon"]).fails(2);
    run(&["rollout", "status", "42"]).fails(1);
    let line = run(&["rollout", "devices", "42"]).fails(1).to_string();
    assert!(line.contains("HTTP 404"), "{line}");
    run(&["rollout", "devices", "42", "--limit", "0"]).fails(2);
    assert!(run(&["rollout", "list"]).ok().starts_with("ID"));

    let events = run(&["events", "--kind", "release-published"]);
    assert!(events.ok().contains("release-published"), "{events:?}");
    let json = run(&["events", "--json"]);
    let v: serde_json::Value = serde_json::from_str(json.ok()).unwrap();
    let kinds: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    // Publishing the same release again is a no-op: one event.
    assert_eq!(kinds, ["release-published"], "{v:#}");
    // By actor, and paging back from it: nothing is older than the first event.
    let first = v["events"][0]["id"].as_i64().unwrap();
    let actor = v["events"][0]["actor"].as_str().unwrap();
    let mine = run(&["events", "--actor", actor, "--json"]);
    let mine: serde_json::Value = serde_json::from_str(mine.ok()).unwrap();
    assert_eq!(mine["events"].as_array().unwrap().len(), 1, "{mine:#}");
    let count = |args: &[&str]| {
        let text = run(args);
        let v: serde_json::Value = serde_json::from_str(text.ok()).unwrap();
        v["events"].as_array().unwrap().len()
    };
    assert_eq!(count(&["events", "--actor", "nobody", "--json"]), 0);
    assert_eq!(
        count(&["events", "--before", &first.to_string(), "--json"]),
        0
    );
    assert_eq!(
        count(&["events", "--before", &(first + 1).to_string(), "--json"]),
        1
    );
    run(&["events", "--before", "5", "--follow"]).fails(2);

    // Issue 6: feature flags from the command line (no device yet: counts are zero).
    run(&[
        "flag",
        "set",
        "new-ui",
        "--on",
        "--percent",
        "10",
        "--filter",
        "hw=gw-a",
    ])
    .ok();
    let v: serde_json::Value =
        serde_json::from_str(run(&["flag", "show", "new-ui", "--json"]).ok()).unwrap();
    assert_eq!(v["flag"]["rules"][0]["percent"], 10.0, "{v:#}");
    assert_eq!(v["flag"]["killed"], false);
    assert!(run(&["flag", "list"]).ok().contains("new-ui"));
    run(&["flag", "kill", "new-ui"]).ok();
    let v: serde_json::Value = serde_json::from_str(run(&["flag", "list", "--json"]).ok()).unwrap();
    assert_eq!(v["flags"][0]["flag"]["killed"], true, "{v:#}");
    run(&["flag", "show", "no-such-flag"]).fails(1);
    run(&["flag", "set", "new-ui", "--on", "--filter", "hw=("]).fails(1);
    run(&["flag", "set", "new-ui", "--on", "--percent", "150"]).fails(2);

    // Issue 7: a role that does not grant the command: one line naming the role needed, 1.
    let as_approver = [("OTA_SERVER", base.as_str()), ("OTA_TOKEN", APPROVER_TOKEN)];
    let line = dir
        .ota_env(&["flag", "kill", "new-ui"], &as_approver)
        .fails(1)
        .to_string();
    assert!(
        line.contains("needs the operator role") && line.contains("(forbidden-role, HTTP 403)"),
        "{line}"
    );
    assert!(!line.contains(APPROVER_TOKEN), "{line}");
    let line = dir
        .ota_env(
            &["release", "publish", "fw.release", "--artifact", "fw.bin"],
            &as_approver,
        )
        .fails(1)
        .to_string();
    assert!(line.contains("needs the publisher role"), "{line}");
    // Reading is every role's.
    assert!(
        dir.ota_env(&["flag", "list"], &as_approver)
            .ok()
            .contains("new-ui")
    );

    // A wrong token is refused (1); no token is a usage error (2); no server is 3.
    let line = dir
        .ota_env(
            &["rollout", "list"],
            &[
                ("OTA_SERVER", &base),
                ("OTA_TOKEN", "wrong-token-0123456789"),
            ],
        )
        .fails(1)
        .to_string();
    assert!(line.contains("unauthorized"), "{line}");
    dir.ota_env(
        &["rollout", "list"],
        &[("OTA_SERVER", &base), ("OTA_TOKEN", "")],
    )
    .fails(2);
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    dir.ota_env(
        &["devices", "list"],
        &[("OTA_SERVER", &dead_url), ("OTA_TOKEN", TOKEN)],
    )
    .fails(3);
    drop(server);
}

/// Issue 7: `ota key rotate` writes a signed trust-set update that verifies against the current
/// set (checked locally with `--current-key`, refused when too few current keys sign), and the
/// fleet server takes it with `ota trust publish`: `ota trust show` then lists the new set, a
/// release signed only by the revoked key is refused, and the same update again is stale.
#[test]
fn issue7_key_rotate_writes_an_update_that_verifies_and_the_server_takes_it() {
    use ed25519_dalek::pkcs8::DecodePublicKey;
    use ota_core::release::{TrustSet, TrustState};

    let dir = Dir::new();
    for k in ["a", "b", "c", "d"] {
        dir.keygen(k);
    }
    let current = ["--current-key", "a.pub", "--current-key", "b.pub"];
    let rotate = |signers: &[&str], out: &str, extra: &[&str]| {
        let mut args = vec!["key", "rotate"];
        for k in signers {
            args.extend(["--key", k]);
        }
        args.extend([
            "--new-key",
            "b.pub",
            "--new-key",
            "c.pub",
            "--new-key",
            "d.pub",
            "--threshold",
            "2",
            "--sequence",
            "1",
            "--out",
            out,
        ]);
        args.extend(extra);
        dir.ota(&args)
    };
    // {a, b} k=2 -> {b, c, d} k=2: a is revoked.
    let printed = rotate(&["a.key", "b.key"], "rot.trust", &current)
        .ok()
        .to_owned();
    assert!(printed.contains("sequence:     1"), "{printed}");
    let load = |name: &str| {
        let pem = std::fs::read_to_string(dir.path(name)).unwrap();
        ota_core::release::VerifyingKey::from_public_key_pem(pem.trim()).unwrap()
    };
    let old = TrustSet::new(vec![load("a.pub"), load("b.pub")], 2).unwrap();
    let rotation = TrustState::initial(old)
        .check(&dir.read("rot.trust"))
        .unwrap();
    assert_eq!(rotation.next.sequence(), 1);
    assert_eq!(
        rotation.next.set(),
        &TrustSet::new(vec![load("b.pub"), load("c.pub"), load("d.pub")], 2).unwrap()
    );
    // One current key of two: refused locally (exit 1), nothing written.
    let line = rotate(
        &["b.key"],
        "weak.trust",
        &[&current[..], &["--current-threshold", "2"]].concat(),
    )
    .fails(1)
    .to_owned();
    assert!(line.contains("threshold not met"), "{line}");
    assert!(!dir.path("weak.trust").exists());
    // An impossible new threshold is a usage error.
    let mut bad = vec!["key", "rotate", "--key", "a.key", "--new-key", "b.pub"];
    bad.extend(["--threshold", "2", "--sequence", "1", "--out", "bad.trust"]);
    dir.ota(&bad).fails(2);

    let server = dir.start_server(&["a.pub", "b.pub"]);
    // The server trusts {a, b} with threshold 1 (the default).
    let env = [("OTA_SERVER", server.base.as_str()), ("OTA_TOKEN", TOKEN)];
    let shown: serde_json::Value =
        serde_json::from_str(dir.ota_env(&["trust", "show", "--json"], &env).ok()).unwrap();
    assert_eq!(shown["sequence"], 0);
    assert_eq!(shown["rotated"], false);
    let published = dir
        .ota_env(&["trust", "publish", "rot.trust"], &env)
        .ok()
        .to_owned();
    assert!(published.contains("sequence:  1 (rotated)"), "{published}");
    let shown: serde_json::Value =
        serde_json::from_str(dir.ota_env(&["trust", "show", "--json"], &env).ok()).unwrap();
    assert_eq!(shown["keys"].as_array().map(Vec::len), Some(3));
    assert_eq!(shown["threshold"], 2);
    // No device yet: nobody uses it, nobody is behind.
    assert_eq!(shown["devices"]["total"], 0, "{shown:#}");
    let text = dir.ota_env(&["trust", "show"], &env).ok().to_owned();
    assert!(text.contains("devices:   0 of 0 on this set"), "{text}");
    // The same update again no longer verifies (a is revoked); sequence 1 signed by current
    // keys is stale.
    let line = dir
        .ota_env(&["trust", "publish", "rot.trust"], &env)
        .fails(1)
        .to_owned();
    assert!(line.contains("too-few-signatures"), "{line}");
    rotate(&["b.key", "c.key"], "replay.trust", &[]).ok();
    let line = dir
        .ota_env(&["trust", "publish", "replay.trust"], &env)
        .fails(1)
        .to_owned();
    assert!(line.contains("stale"), "{line}");
    // A release signed by the revoked key a is refused by the server from now on.
    dir.artifact("fw.bin", 1000);
    dir.sign(&["a.key"], "fw.bin", "fw.release", &[]).ok();
    let line = dir
        .ota_env(
            &["release", "publish", "fw.release", "--artifact", "fw.bin"],
            &env,
        )
        .fails(1)
        .to_owned();
    assert!(line.contains("unknown-key"), "{line}");
    drop(server);
}

/// Issue 7: `ota server` over HTTPS (`[http] tls_cert`, `tls_key`), and the fleet commands
/// pinning its CA with `OTA_CA_FILE` (a client without it, or with another CA, cannot talk).
#[test]
fn issue7_fleet_commands_over_https_pin_the_ca() {
    use firmware_fixtures::pki::TestCa;

    let dir = Dir::new();
    dir.keygen("fleet");
    let ca = TestCa::new(dir.root(), "fleet").unwrap();
    let cert = ca.server_cert().unwrap();
    let other = TestCa::new(dir.root(), "other").unwrap();
    dir.write(
        "server.toml",
        format!(
            "data_dir = \"./data\"\n[http]\nlisten = \"127.0.0.1:0\"\ntls_cert = {:?}\ntls_key = {:?}\n\
             [mqtt]\nlisten = \"127.0.0.1:0\"\n[trust]\nkeys = [\"fleet.pub\"]\n\
             [[operators]]\nname = \"alice\"\ntoken = \"{TOKEN}\"\n",
            cert.cert.display(),
            cert.key.display()
        )
        .as_bytes(),
    );
    let server = dir.ota_server("server.toml");
    let base = server.base.clone();
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    let token = ("OTA_TOKEN", TOKEN);
    let pinned = ca.ca_file().display().to_string();
    let out = dir.ota_env(
        &["devices", "list"],
        &[("OTA_SERVER", &base), token, ("OTA_CA_FILE", &pinned)],
    );
    assert!(out.ok().contains("0 device(s)"), "{out:?}");

    let foreign = other.ca_file().display().to_string();
    let refused = dir.ota_env(
        &["devices", "list"],
        &[("OTA_SERVER", &base), token, ("OTA_CA_FILE", &foreign)],
    );
    let line = refused.fails(3).to_string();
    assert!(line.to_lowercase().contains("certificate"), "{line}");
    // Without a CA file only the system's roots count: the test CA is not one of them.
    dir.ota_env(&["devices", "list"], &[("OTA_SERVER", &base), token])
        .fails(3);
    let missing = dir.ota_env(
        &["devices", "list", "--ca-file", "missing.pem"],
        &[("OTA_SERVER", &base), token],
    );
    missing.fails(2);
    drop(server);
}

/// Issue 5: `ota demo` plays the whole story with real agents and exits 0; `--json` reports
/// every step.
#[test]
fn demo_plays_the_story_and_exits_0() {
    let dir = Dir::new();
    let run = dir.ota(&["demo", "--devices", "10", "--json"]);
    let v: serde_json::Value = serde_json::from_str(run.ok()).unwrap();
    assert_eq!(v["ok"], true, "{v:#}");
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 4);
    assert_eq!(steps[1]["skipped_identical"], 10);
    assert_eq!(steps[1]["bytes_downloaded"], 0);
    assert_eq!(steps[2]["status"], "aborted");
    assert!(steps[3]["detail"].as_str().unwrap().contains("killed"));
    // Bad flags are usage errors.
    dir.ota(&["demo", "--devices", "3"]).fails(2);
    dir.ota(&["demo", "--trial-timeout", "soon"]).fails(2);
}

// ---------------------------------------------------------------------------------------------
// ota server device-credential
// ---------------------------------------------------------------------------------------------

#[cfg(unix)]
#[test]
fn issue7_device_credential_prints_a_per_device_password_from_a_0600_secret() {
    let dir = Dir::new();
    dir.keygen("release");
    dir.write(
        "server.toml",
        b"[mqtt]\nlisten = \"127.0.0.1:0\"\ndevice_secret_file = \"mqtt.secret\"\n[trust]\nkeys = [\"release.pub\"]\n",
    );
    let args = ["server", "device-credential", "--config", "server.toml"];
    let run = |id: &str| {
        let mut all = args.to_vec();
        all.push(id);
        dir.ota(&all)
    };
    let a = run("gw-1").ok().trim().to_owned();
    assert_eq!(a.len(), 64, "{a}");
    assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(util::mode(&dir.path("mqtt.secret")), 0o600);
    // The same device gets the same password; another device another one.
    assert_eq!(run("gw-1").ok().trim(), a);
    assert_ne!(run("gw-2").ok().trim(), a);
    // The secret itself is never printed.
    let secret = String::from_utf8(dir.read("mqtt.secret")).unwrap();
    assert!(!a.contains(secret.trim()));
    // A topic wildcard is not a device id; a config without the secret file is a usage error.
    run("gw+1").fails(2);
    dir.write("plain.toml", b"[trust]\nkeys = [\"release.pub\"]\n");
    dir.ota(&[
        "server",
        "device-credential",
        "--config",
        "plain.toml",
        "gw-1",
    ])
    .fails(2);
}

/// Issue 12.17: the Mosquitto recipe of docs/mosquitto/mosquitto.conf runs
/// `ota server device-credential --config server.toml ID` against a server.toml whose `[mqtt]`
/// names an external broker: it prints the same password as with the embedded broker.
#[cfg(unix)]
#[test]
fn issue12_device_credential_works_with_an_external_broker_config() {
    let dir = Dir::new();
    dir.keygen("release");
    dir.write(
        "embedded.toml",
        b"[mqtt]\nlisten = \"127.0.0.1:0\"\ndevice_secret_file = \"mqtt.secret\"\n[trust]\nkeys = [\"release.pub\"]\n",
    );
    dir.write(
        "server.toml",
        b"[mqtt]\nurl = \"mqtts://broker.example:8883\"\nusername = \"ota-server\"\n\
          password_file = \"mqtt.password\"\ndevice_secret_file = \"mqtt.secret\"\n\
          [trust]\nkeys = [\"release.pub\"]\n",
    );
    let credential = |config: &str| {
        dir.ota(&["server", "device-credential", "--config", config, "gw-17"])
            .ok()
            .trim()
            .to_owned()
    };
    let external = credential("server.toml");
    assert_eq!(external.len(), 64, "{external}");
    assert_eq!(util::mode(&dir.path("mqtt.secret")), 0o600);
    assert_eq!(credential("embedded.toml"), external);
}

// ---------------------------------------------------------------------------------------------
// issue 12: the tools tell the truth
// ---------------------------------------------------------------------------------------------

fn rollout_view(status: &str) -> String {
    serde_json::json!({ "rollout": {
        "id": 7, "release": "9f86d0", "version": "2.0.0", "filter": "all",
        "status": status, "current_wave": 1, "phase": null,
        "abort_reason": if status == "aborted" {
            serde_json::json!({ "kind": "failure-threshold", "message": "3 of 4 executed devices failed" })
        } else { serde_json::Value::Null },
        "created_by": "alice", "created_at": 1, "updated_at": 2, "spec": {},
        "targets": 4, "deploys": 4, "redeploys": 0, "offline": 0,
        "totals": { "succeeded": 1, "failures": 3, "executed": 4, "failed": {} },
        "waves": [wave(0, 50.0, 1, 1), wave(1, 100.0, 0, 2)]
    }})
    .to_string()
}

/// A wave of two members of a [`rollout_view`], as the server writes it.
fn wave(index: u32, share: f64, succeeded: u32, started_at: u64) -> serde_json::Value {
    serde_json::json!({
        "index": index, "share": share, "members": 2, "cumulative_members": 2 * (index + 1),
        "deploys": 2, "redeploys": 0, "unsettled": 0, "succeeded_offline": 0,
        "succeeded_unhealthy": 0, "started_at": started_at,
        "counts": { "succeeded": succeeded, "failures": 2 - succeeded }
    })
}

/// Issues 12.9 and 12.13: `rollout status --watch` exits 4 when the rollout aborted and 0 when
/// it completed; its waves are numbered from 1, in the headline and in the per-wave lines.
#[test]
fn issue12_watch_exit_status_says_how_the_rollout_ended_and_waves_count_from_1() {
    let dir = Dir::new();
    let base = fake_server(rollout_view("aborted"), 1);
    let env = [("OTA_SERVER", base.as_str()), ("OTA_TOKEN", TOKEN)];
    let run = dir.ota_env(&["rollout", "status", "7", "--watch"], &env);
    let line = run.fails(4);
    assert!(
        line.contains("rollout 7 aborted: 3 of 4 executed devices failed"),
        "{line}"
    );
    assert!(run.stdout.contains("wave 2 of 2"), "{}", run.stdout);
    let waves: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("wave "))
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>()[1])
        .collect();
    assert_eq!(waves, ["1", "2"], "{}", run.stdout);

    let base = fake_server(rollout_view("completed"), 1);
    let env = [("OTA_SERVER", base.as_str()), ("OTA_TOKEN", TOKEN)];
    dir.ota_env(&["rollout", "status", "7", "--watch"], &env)
        .ok();
}

/// Issue 16: `ota rollout devices --all` asks for pages until it holds every target and prints
/// them as one answer (`--json`) or one table.
#[test]
fn issue16_rollout_devices_all_pages_through_every_target() {
    let dir = Dir::new();
    let page = serde_json::json!({ "total": 2, "offset": 0, "devices": [
        { "device": "gw-1", "wave": 0, "state": "failed", "phase": "install", "reason": "exit 1" },
    ]})
    .to_string();
    let base = fake_server(page.clone(), 2);
    let env = [("OTA_SERVER", base.as_str()), ("OTA_TOKEN", TOKEN)];
    let json = dir.ota_env(&["rollout", "devices", "7", "--all", "--json"], &env);
    let v: serde_json::Value = serde_json::from_str(json.ok()).unwrap();
    assert_eq!(v["devices"].as_array().unwrap().len(), 2, "{v:#}");
    assert_eq!(v["total"], 2);

    let base = fake_server(page, 1);
    let env = [("OTA_SERVER", base.as_str()), ("OTA_TOKEN", TOKEN)];
    let text = dir.ota_env(&["rollout", "devices", "7", "--limit", "1"], &env);
    let text = text.ok();
    assert!(text.contains("install: exit 1"), "{text}");
    assert!(
        text.contains("1-1 of 2 target(s)\nmore: --offset 1 (or --all)"),
        "{text}"
    );
}

/// Issues 12.10 and 12.13 against a real server: an unknown event kind is a usage error, an
/// unknown device is not an empty log, and the waves error numbers waves from 1.
#[test]
fn issue12_fleet_commands_refuse_what_they_cannot_answer() {
    let dir = Dir::new();
    dir.keygen("fleet");
    let server = dir.start_server(&["fleet.pub"]);
    let env = [("OTA_SERVER", server.base.as_str()), ("OTA_TOKEN", TOKEN)];
    let run = |args: &[&str]| dir.ota_env(args, &env);

    let line = run(&["events", "--kind", "nonsense"]).fails(2).to_string();
    assert!(line.contains("\"nonsense\" is not an event kind"), "{line}");
    assert!(line.contains("rollout-aborted"), "{line}");
    run(&["events", "--kind", "rollout-aborted"]).ok();
    let line = run(&["events", "--device", "no-such-device"])
        .fails(1)
        .to_string();
    assert!(line.contains("not found"), "{line}");
    let line = run(&["events", "--device", "no-such-device", "--json"])
        .fails(1)
        .to_string();
    assert!(line.contains("not found"), "{line}");

    dir.artifact("fw.bin", 1000);
    dir.sign(&["fleet.key"], "fw.bin", "fw.release", &[]).ok();
    run(&["release", "publish", "fw.release", "--artifact", "fw.bin"]).ok();
    let line = run(&[
        "rollout",
        "create",
        "--release",
        "fw.release",
        "--waves",
        "0%,100%",
        "--dry-run",
    ])
    .fails(1)
    .to_string();
    assert!(line.contains("wave 1 is not larger"), "{line}");

    drop(server);
}

/// Issue 12.12: `ota demo` interrupted by Ctrl-C (SIGINT) once its fleet runs removes its
/// whole temporary directory, and says it was interrupted in one line.
#[cfg(unix)]
#[test]
fn issue12_demo_interrupted_by_ctrl_c_leaves_no_directory() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = Dir::new();
    let tmp = dir.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ota"))
        .args(["demo", "--devices", "10"])
        .current_dir(dir.root())
        .env("TMPDIR", &tmp)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let running = lines
        .by_ref()
        .map(Result::unwrap)
        .find(|l| l.contains("devices online"));
    assert!(running.is_some(), "the demo never started its fleet");
    // Its data is there while it runs.
    assert!(std::fs::read_dir(&tmp).unwrap().next().is_some());
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("demo: interrupted"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Issue 15: `ota server status` lists the replicas and the lease; the one-replica server
/// leads with epoch 1. A server that is gone is exit 3.
#[test]
fn issue15_server_status_lists_the_replica_and_the_lease() {
    let dir = Dir::new();
    dir.keygen("fleet");
    let server = dir.start_server(&["fleet.pub"]);
    let base = server.base.clone();
    let env = [("OTA_SERVER", base.as_str()), ("OTA_TOKEN", TOKEN)];
    let out = dir.ota_env(&["server", "status"], &env);
    let text = out.ok().to_owned();
    assert!(text.starts_with("REPLICA "), "{text}");
    assert!(text.contains("leader"), "{text}");
    assert!(text.contains("lease: epoch 1, held by "), "{text}");
    let json = dir.ota_env(&["server", "status", "--json"], &env);
    let v: serde_json::Value = serde_json::from_str(json.ok()).unwrap();
    assert_eq!(v["lease"]["epoch"], 1);
    assert_eq!(v["replicas"][0]["role"], "leader");
    let help = dir.ota(&["server", "status", "--help"]).ok().to_owned();
    assert!(
        help.contains("Exit status: 0 a replica holds a live lease; 5"),
        "{help}"
    );
    drop(server);
    dir.ota_env(&["server", "status"], &env).fails(3);
}
