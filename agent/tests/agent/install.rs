use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ota_agent::install::{
    CommandInstaller, FilesInstaller, InstallError, InstallRequest, Installer,
};
use ota_agent::process::{CommandSpec, STDERR_TAIL};
use ota_agent::storage::{Fault, FaultyStorage, FsStorage, SharedStorage};
use ota_core::digest::Digest;

use crate::util::{artifact, tempdir};

/// A "cached" artifact file and its digest.
fn cached(dir: &Path, seed: u64) -> (PathBuf, Digest, Vec<u8>) {
    let bytes = artifact(50_000, seed);
    let d = Digest::of(&bytes);
    let cache = dir.join("cache");
    fs::create_dir_all(&cache).unwrap();
    let path = cache.join(d.to_string());
    fs::write(&path, &bytes).unwrap();
    (path, d, bytes)
}

fn sh(script: &str) -> CommandSpec {
    CommandSpec::new("sh").with_args(["-c", script])
}

#[tokio::test]
async fn files_installer_switches_current_and_rolls_back() {
    let dir = tempdir();
    let root = dir.path().join("app");
    let (a_path, a, a_bytes) = cached(dir.path(), 1);
    let (b_path, b, b_bytes) = cached(dir.path(), 2);
    let marker = dir.path().join("restarted");
    let installer = FilesInstaller::new(FsStorage::shared(), &root).with_restart_command(Some(sh(
        &format!("echo \"$OTA_VERSION $OTA_DIGEST\" >> {}", marker.display()),
    )));

    let first = installer
        .install(&InstallRequest {
            artifact: &a_path,
            digest: a,
            version: "1.0.0",
        })
        .await
        .unwrap();
    assert_eq!(first.previous, None);
    assert_eq!(first.path, root.join("releases").join(a.to_string()));
    assert_eq!(fs::read(root.join("current")).unwrap(), a_bytes);
    assert_eq!(
        fs::read_link(root.join("current")).unwrap(),
        Path::new("releases").join(a.to_string())
    );

    let second = Installer::Files(installer.clone())
        .install(
            &InstallRequest {
                artifact: &b_path,
                digest: b,
                version: "1.1.0",
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        second.previous,
        Some(Path::new("releases").join(a.to_string()))
    );
    assert_eq!(fs::read(root.join("current")).unwrap(), b_bytes);

    // Rollback: the known-good release is still there, even if its cache entry is gone.
    fs::remove_file(&a_path).unwrap();
    installer
        .install(&InstallRequest {
            artifact: &a_path,
            digest: a,
            version: "1.0.0",
        })
        .await
        .unwrap();
    assert_eq!(fs::read(root.join("current")).unwrap(), a_bytes);
    assert!(!root.join("current.tmp").exists());

    let log = fs::read_to_string(&marker).unwrap();
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        vec![
            format!("1.0.0 {a}"),
            format!("1.1.0 {b}"),
            format!("1.0.0 {a}")
        ]
    );
}

#[tokio::test]
async fn a_failing_restart_command_is_an_install_error_with_stderr() {
    let dir = tempdir();
    let (path, d, _) = cached(dir.path(), 3);
    let installer = FilesInstaller::new(FsStorage::shared(), dir.path().join("app"))
        .with_restart_command(Some(sh("echo cannot restart >&2; exit 3")));
    let err = installer
        .install(&InstallRequest {
            artifact: &path,
            digest: d,
            version: "2",
        })
        .await
        .unwrap_err();
    match err {
        InstallError::CommandFailed {
            status,
            stderr_tail,
            ..
        } => {
            assert_eq!(status.code(), Some(3));
            assert_eq!(stderr_tail.trim(), "cannot restart");
        }
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn command_installer_gets_the_environment() {
    let dir = tempdir();
    let (path, d, _) = cached(dir.path(), 4);
    let out = dir.path().join("env");
    let installer = CommandInstaller::new(sh(&format!(
        "printf '%s\\n%s\\n%s\\n' \"$OTA_ARTIFACT\" \"$OTA_VERSION\" \"$OTA_DIGEST\" > {}",
        out.display()
    )));
    let done = installer
        .install(&InstallRequest {
            artifact: &path,
            digest: d,
            version: "3.2.1",
        })
        .await
        .unwrap();
    assert_eq!(done.path, path);
    let env = fs::read_to_string(&out).unwrap();
    assert_eq!(
        env.lines().collect::<Vec<_>>(),
        vec![path.display().to_string(), "3.2.1".into(), d.to_string()]
    );
}

#[tokio::test]
async fn command_installer_failure_keeps_the_stderr_tail() {
    let dir = tempdir();
    let (path, d, _) = cached(dir.path(), 5);
    let req = InstallRequest {
        artifact: &path,
        digest: d,
        version: "1",
    };
    // 10 000 lines of stderr: only the tail is kept, ending with the last line.
    let installer = CommandInstaller::new(sh(
        "i=0; while [ $i -lt 10000 ]; do echo \"noise line $i\" >&2; i=$((i+1)); done; echo 'flash write failed' >&2; exit 1",
    ));
    match installer.install(&req).await.unwrap_err() {
        InstallError::CommandFailed { stderr_tail, .. } => {
            assert!(stderr_tail.len() <= STDERR_TAIL);
            assert!(stderr_tail.ends_with("flash write failed\n"));
        }
        other => panic!("{other}"),
    }

    let missing = CommandInstaller::new(CommandSpec::new("/nonexistent/ota-installer"));
    assert!(matches!(
        missing.install(&req).await,
        Err(InstallError::Spawn { .. })
    ));

    let slow = CommandInstaller::new(sh("sleep 30")).with_timeout(Some(Duration::from_millis(100)));
    assert!(matches!(
        slow.install(&req).await,
        Err(InstallError::CommandTimedOut { .. })
    ));
}

/// A power loss at any write of an install: after the reboot `current` is the old release or
/// the new one, complete, never missing or dangling.
#[tokio::test]
async fn a_power_loss_at_any_write_leaves_current_old_or_new() {
    let dir = tempdir();
    let (a_path, a, a_bytes) = cached(dir.path(), 6);
    let (b_path, b, b_bytes) = cached(dir.path(), 7);
    let install = |storage: SharedStorage, root: PathBuf| {
        let a_path = a_path.clone();
        let b_path = b_path.clone();
        async move {
            FilesInstaller::new(FsStorage::shared(), &root)
                .install(&InstallRequest {
                    artifact: &a_path,
                    digest: a,
                    version: "a",
                })
                .await
                .unwrap();
            FilesInstaller::new(storage, &root)
                .install(&InstallRequest {
                    artifact: &b_path,
                    digest: b,
                    version: "b",
                })
                .await
        }
    };
    let total = {
        let faulty = Arc::new(FaultyStorage::new());
        install(faulty.clone(), dir.path().join("probe"))
            .await
            .unwrap();
        faulty.mutations()
    };
    for n in 1..=total {
        let root = dir.path().join(format!("root{n}"));
        let faulty = Arc::new(FaultyStorage::with_fault(
            n,
            Fault::PowerLoss {
                drop_unsynced: true,
            },
        ));
        assert!(install(faulty, root.clone()).await.is_err(), "op {n}");
        let now = fs::read(root.join("current")).unwrap();
        assert!(now == a_bytes || now == b_bytes, "op {n}/{total}");
        // The agent can install again after the reboot.
        FilesInstaller::new(FsStorage::shared(), &root)
            .install(&InstallRequest {
                artifact: &b_path,
                digest: b,
                version: "b",
            })
            .await
            .unwrap();
        assert_eq!(fs::read(root.join("current")).unwrap(), b_bytes);
    }
}

/// Issue 19.8: the installed release is a copy, not a hard link of the cache entry. Damage to
/// one is no damage to the other, and an installed copy the application damaged is replaced
/// from the cache when the release is installed again (a rollback).
#[tokio::test]
async fn issue19_the_installed_release_shares_no_inode_with_the_cache() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempdir();
    let root = dir.path().join("app");
    let (a_path, a, a_bytes) = cached(dir.path(), 11);
    let (b_path, b, _) = cached(dir.path(), 12);
    let installer = FilesInstaller::new(FsStorage::shared(), &root);
    let install = |artifact: &Path, digest: Digest| {
        let installer = installer.clone();
        let artifact = artifact.to_path_buf();
        async move {
            installer
                .install(&InstallRequest {
                    artifact: &artifact,
                    digest,
                    version: "v",
                })
                .await
                .unwrap()
        }
    };
    let installed = install(&a_path, a).await.path;
    let ino = |p: &Path| fs::metadata(p).unwrap().ino();
    assert_ne!(
        ino(&installed),
        ino(&a_path),
        "a hard link shares the inode"
    );

    // The application scribbles over its release: the cache copy is unaffected.
    fs::write(&installed, b"damaged by the application").unwrap();
    assert_eq!(fs::read(&a_path).unwrap(), a_bytes);

    // Another release, then back to the first (a rollback): the damaged copy is replaced.
    install(&b_path, b).await;
    install(&a_path, a).await;
    assert_eq!(fs::read(root.join("current")).unwrap(), a_bytes);

    // Damage to the cache entry does not reach the installed release either.
    fs::write(&a_path, b"bit rot").unwrap();
    assert_eq!(fs::read(&installed).unwrap(), a_bytes);
}

/// Issue 12.7: the files installer says which release `current` really points to: the name of
/// a release file, the SHA-256 of a file pointed to by hand (hashed again when it changes),
/// nothing without a link; a dangling link is an error.
#[tokio::test]
async fn issue12_the_files_installer_tells_what_current_points_to() {
    let dir = tempdir();
    let root = dir.path().join("app");
    let installer = FilesInstaller::new(FsStorage::shared(), &root);
    assert_eq!(installer.running_digest().await.unwrap(), None);
    let (a_path, a, _) = cached(dir.path(), 1);
    installer
        .install(&InstallRequest {
            artifact: &a_path,
            digest: a,
            version: "1.0.0",
        })
        .await
        .unwrap();
    assert_eq!(installer.running_digest().await.unwrap(), Some(a));

    let by_hand = root.join("hand-made.img");
    fs::write(&by_hand, b"made by hand").unwrap();
    let link = root.join("current");
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&by_hand, &link).unwrap();
    let hashed = installer.running_digest().await.unwrap();
    assert_eq!(hashed, Some(Digest::of(b"made by hand")));
    fs::write(&by_hand, b"made by hand, again").unwrap();
    assert_eq!(
        installer.running_digest().await.unwrap(),
        Some(Digest::of(b"made by hand, again")),
        "a changed file is hashed again"
    );
    fs::remove_file(&by_hand).unwrap();
    let err = installer.running_digest().await.unwrap_err();
    assert!(err.to_string().contains("hand-made.img"), "{err}");
    assert_eq!(
        Installer::Command(CommandInstaller::new(sh("true")))
            .running_digest()
            .await
            .unwrap(),
        None,
        "a command installer cannot tell"
    );
}

/// Issue 17 (install speed): the files installer hashes the artifact as it copies it, instead
/// of a separate re-hash before the copy. A cache entry damaged since its download is never
/// installed: the copy is dropped, `current` stays, and the error says it is the artifact
/// (the shell reports it as `CorruptArtifact`).
#[tokio::test]
async fn issue17_a_damaged_artifact_is_found_by_the_copy_and_never_installed() {
    let dir = tempdir();
    let root = dir.path().join("app");
    let (a_path, a, a_bytes) = cached(dir.path(), 21);
    let (b_path, b, mut b_bytes) = cached(dir.path(), 22);
    let installer = FilesInstaller::new(FsStorage::shared(), &root);
    installer
        .install(&InstallRequest {
            artifact: &a_path,
            digest: a,
            version: "a",
        })
        .await
        .unwrap();
    b_bytes[40_000] ^= 0x01;
    fs::write(&b_path, &b_bytes).unwrap();
    let result = installer
        .install(&InstallRequest {
            artifact: &b_path,
            digest: b,
            version: "b",
        })
        .await;
    assert!(
        matches!(&result, Err(InstallError::ArtifactMismatch { path, expected, .. })
            if *path == b_path && *expected == b),
        "{result:?}"
    );
    assert_eq!(fs::read(root.join("current")).unwrap(), a_bytes);
    let releases: Vec<_> = fs::read_dir(root.join("releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(releases, [std::ffi::OsString::from(a.to_string())]);
}
