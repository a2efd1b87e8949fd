//! Issue 17, the `ab` installer: slots written and read back, the bootloader backends against
//! the real tools (`grub-editenv`, `fw_setenv`/`fw_printenv`) with a simulator of the
//! documented boot scripts, and the whole agent across a reboot.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use ota_agent::Agent;
use ota_agent::bootloader::{Bootloader, Custom, Grub, UBoot};
use ota_agent::config::{BootloaderConfig, InstallerConfig};
use ota_agent::install::{AbInstaller, InstallError, InstallRequest, booted_slot_of};
use ota_agent::process::CommandSpec;
use ota_core::digest::Digest;
use ota_core::update::{Slot, Stage};
use ota_core::wire::{ExecutionState, RollbackReason};

use crate::fleet::{Device, Fleet, PATIENCE, broker, desired, options, release};
use crate::util::{Mode, serve, tempdir};

fn sh(script: &str) -> CommandSpec {
    CommandSpec::new("sh").with_args(["-c", script])
}

/// A custom bootloader keeping its state in two files of `dir`: `try` (a slot to boot once)
/// and `default`.
fn file_bootloader(dir: &Path) -> Bootloader {
    let d = dir.display();
    Bootloader::Custom(Custom::new(
        sh(&format!("echo $OTA_SLOT > {d}/try")),
        sh(&format!("echo $OTA_SLOT > {d}/default; rm -f {d}/try")),
    ))
}

fn read_trim(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Two slot images of `size` bytes (zeros), slot A holding `a`.
fn slots(dir: &Path, size: usize, a: &[u8]) -> (PathBuf, PathBuf) {
    let (pa, pb) = (dir.join("a.img"), dir.join("b.img"));
    let mut img = vec![0u8; size];
    img[..a.len()].copy_from_slice(a);
    std::fs::write(&pa, &img).unwrap();
    std::fs::write(&pb, vec![0u8; size]).unwrap();
    (pa, pb)
}

fn artifact(dir: &Path, len: usize) -> (PathBuf, Digest, Vec<u8>) {
    let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let path = dir.join("artifact");
    std::fs::write(&path, &bytes).unwrap();
    (path, Digest::of(&bytes), bytes)
}

/// An `ab` installer over two 200 kB image slots in `dir` with `bootloader`, and a 100 kB
/// artifact (its path and digest).
fn installer(dir: &Path, bootloader: Bootloader) -> (AbInstaller, PathBuf, Digest) {
    let (art, digest, _) = artifact(dir, 100_000);
    let (pa, pb) = slots(dir, 200_000, b"old");
    (
        AbInstaller::new(&pa, &pb, bootloader, sh("true")),
        art,
        digest,
    )
}

#[test]
fn the_booted_slot_comes_from_the_kernel_command_line() {
    assert_eq!(
        booted_slot_of("quiet root=/dev/sda3 ota.slot=B"),
        Some(Slot::B)
    );
    assert_eq!(booted_slot_of("rauc.slot=A ro"), Some(Slot::A));
    assert_eq!(booted_slot_of("ota.slot=b"), Some(Slot::B));
    assert_eq!(booted_slot_of("ota.slot=C root=x"), None);
    assert_eq!(booted_slot_of("root=/dev/sda2 noota.slot=A"), None);
}

#[tokio::test]
async fn issue17_the_inactive_slot_is_written_read_back_and_only_then_tried() {
    let dir = tempdir();
    let (art, digest, bytes) = artifact(dir.path(), 3 * 1024 * 1024 + 17);
    let (pa, pb) = slots(dir.path(), 4 * 1024 * 1024, b"old system");
    let ab = AbInstaller::new(&pa, &pb, file_bootloader(dir.path()), sh("true"));
    let req = InstallRequest {
        artifact: &art,
        digest,
        version: "2.0.0",
    };
    ab.install(&req, Slot::B).await.unwrap();
    let b = std::fs::read(&pb).unwrap();
    assert_eq!(b.len(), 4 * 1024 * 1024, "the slot is never truncated");
    assert_eq!(&b[..bytes.len()], &bytes[..]);
    assert!(std::fs::read(&pa).unwrap().starts_with(b"old system"));
    assert_eq!(read_trim(&dir.path().join("try")).as_deref(), Some("B"));
}

#[tokio::test]
async fn issue17_a_wrong_digest_or_a_small_slot_never_touches_the_bootloader() {
    let dir = tempdir();
    let (art, digest, _) = artifact(dir.path(), 200_000);
    let (pa, pb) = slots(dir.path(), 100_000, b"old");
    let ab = AbInstaller::new(&pa, &pb, file_bootloader(dir.path()), sh("true"));
    let small = ab
        .install(
            &InstallRequest {
                artifact: &art,
                digest,
                version: "2",
            },
            Slot::B,
        )
        .await;
    assert!(
        matches!(
            small,
            Err(InstallError::SlotTooSmall {
                capacity: 100_000,
                size: 200_000,
                ..
            })
        ),
        "{small:?}"
    );
    let (pa, pb) = slots(dir.path(), 300_000, b"old");
    let ab = AbInstaller::new(&pa, &pb, file_bootloader(dir.path()), sh("true"));
    let wrong = ab
        .install(
            &InstallRequest {
                artifact: &art,
                digest: Digest::of(b"something else"),
                version: "2",
            },
            Slot::B,
        )
        .await;
    assert!(
        matches!(wrong, Err(InstallError::ArtifactMismatch { .. })),
        "{wrong:?}"
    );
    assert!(
        !dir.path().join("try").exists(),
        "no try after a failed write"
    );
}

/// Issue 17: the read-back checks what the slot holds, not what was written: a slot damaged
/// after the fsync (here by the test hook, on a device by a bad block or a write the
/// controller lost) fails the install, and the bootloader is never told to try it.
#[tokio::test]
async fn issue17_a_slot_damaged_after_the_write_fails_the_read_back() {
    let dir = tempdir();
    let (art, digest, _) = artifact(dir.path(), 3 * 1024 * 1024 + 17);
    let (pa, pb) = slots(dir.path(), 4 * 1024 * 1024, b"old system");
    let damage: ota_agent::install::ReadBackHook = std::sync::Arc::new(|slot: &Path| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(slot).unwrap();
        f.write_all_at(b"bit rot", 2 * 1024 * 1024).unwrap();
        f.sync_all().unwrap();
    });
    let ab = AbInstaller::new(&pa, &pb, file_bootloader(dir.path()), sh("true"))
        .with_read_back_hook(damage);
    let req = InstallRequest {
        artifact: &art,
        digest,
        version: "2.0.0",
    };
    let result = ab.install(&req, Slot::B).await;
    assert!(
        matches!(&result, Err(InstallError::SlotMismatch { expected, .. }) if *expected == digest),
        "{result:?}"
    );
    assert!(
        !dir.path().join("try").exists(),
        "the bootloader was told to try a damaged slot"
    );
}

// ---- GRUB, with the real grub-editenv ----------------------------------------------------

/// `grub-editenv <env> list` as a map.
fn grub_env(tool: &str, env: &Path) -> BTreeMap<String, String> {
    let out = Command::new(tool).arg(env).arg("list").output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// What the grub.cfg snippet of docs/agent.md does at power-on: `load_env`; default slot A;
/// a non-empty `ota_try` is booted and cleared with `save_env` first, else `ota_default`.
fn grub_power_on(tool: &str, env: &Path) -> Slot {
    let vars = grub_env(tool, env);
    let default = vars
        .get("ota_default")
        .filter(|v| !v.is_empty())
        .map_or("A", String::as_str);
    let slot = match vars.get("ota_try").filter(|v| !v.is_empty()) {
        Some(t) => {
            let t = t.clone();
            let ok = Command::new(tool)
                .arg(env)
                .args(["set", "ota_try="])
                .status()
                .unwrap();
            assert!(ok.success());
            t
        }
        None => default.to_owned(),
    };
    slot.parse().unwrap()
}

#[tokio::test]
#[ignore = "needs grub-editenv (grub-common): OTA_TEST_GRUB_EDITENV"]
async fn issue17_grub_tries_the_new_slot_once_and_falls_back_unless_marked_good() {
    let tool = std::env::var("OTA_TEST_GRUB_EDITENV").unwrap_or_else(|_| "grub-editenv".into());
    let dir = tempdir();
    let env = dir.path().join("grubenv");
    assert!(
        Command::new(&tool)
            .arg(&env)
            .arg("create")
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(grub_power_on(&tool, &env), Slot::A, "a fresh env boots A");
    let grub = Bootloader::Grub(Grub::new(tool.clone(), &env));
    let (ab, art, digest) = installer(dir.path(), grub.clone());
    let req = InstallRequest {
        artifact: &art,
        digest,
        version: "2",
    };

    // Tried once: B boots, and a crash before the commit brings A back.
    ab.install(&req, Slot::B).await.unwrap();
    assert_eq!(
        grub_env(&tool, &env).get("ota_try").map(String::as_str),
        Some("B")
    );
    assert_eq!(grub_power_on(&tool, &env), Slot::B);
    assert_eq!(grub_power_on(&tool, &env), Slot::A, "the try is used up");

    // Tried and committed: B from now on.
    ab.install(&req, Slot::B).await.unwrap();
    assert_eq!(grub_power_on(&tool, &env), Slot::B);
    grub.boot_slot(Slot::B).await.unwrap();
    assert_eq!(grub_power_on(&tool, &env), Slot::B);
    assert_eq!(grub_power_on(&tool, &env), Slot::B);

    // A failed trial on A (written from B): back to B; a try cancelled before any boot.
    ab.install(&req, Slot::A).await.unwrap();
    grub.boot_slot(Slot::B).await.unwrap();
    assert_eq!(grub_power_on(&tool, &env), Slot::B);
    let vars = grub_env(&tool, &env);
    assert_eq!(vars.get("ota_default").map(String::as_str), Some("B"));
    assert_eq!(vars.get("ota_try").map(String::as_str), Some(""));
}

// ---- U-Boot, with the real fw_setenv / fw_printenv ---------------------------------------

struct UBootEnv {
    setenv: String,
    printenv: String,
    config: PathBuf,
}

impl UBootEnv {
    /// A 16 KiB environment in a file, initialised the way a board's default environment
    /// would be (`bootlimit=1`, slot A).
    fn new(dir: &Path) -> UBootEnv {
        let setenv = std::env::var("OTA_TEST_FW_SETENV").unwrap_or_else(|_| "fw_setenv".into());
        let printenv =
            std::env::var("OTA_TEST_FW_PRINTENV").unwrap_or_else(|_| "fw_printenv".into());
        let file = dir.join("uboot.env");
        std::fs::write(&file, vec![0u8; 0x4000]).unwrap();
        let config = dir.join("fw_env.config");
        std::fs::write(&config, format!("{} 0x0 0x4000\n", file.display())).unwrap();
        let defaults = dir.join("default.env");
        std::fs::write(&defaults, "bootlimit=1\nota_slot=A\nota_fallback=A\n").unwrap();
        let env = UBootEnv {
            setenv,
            printenv,
            config,
        };
        assert!(
            Command::new(&env.setenv)
                .arg("-c")
                .arg(&env.config)
                .arg("-f")
                .arg(&defaults)
                .args(["upgrade_available", "0"])
                .status()
                .unwrap()
                .success()
        );
        env
    }

    fn vars(&self) -> BTreeMap<String, String> {
        let out = Command::new(&self.printenv)
            .arg("-c")
            .arg(&self.config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn set(&self, name: &str, value: &str) {
        let ok = Command::new(&self.setenv)
            .arg("-c")
            .arg(&self.config)
            .args([name, value])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// What U-Boot does at power-on with `CONFIG_BOOTCOUNT_LIMIT` + `CONFIG_BOOTCOUNT_ENV` and
    /// the `bootcmd` / `altbootcmd` of docs/agent.md: with `upgrade_available=1` the count
    /// rises (and is saved); past `bootlimit`, `altbootcmd` switches `ota_slot` to
    /// `ota_fallback`, clears `upgrade_available` and `bootcount` and saves; then `ota_slot`
    /// boots.
    fn power_on(&self) -> Slot {
        let v = self.vars();
        let num = |k: &str| v.get(k).and_then(|x| x.parse::<u32>().ok()).unwrap_or(0);
        if num("upgrade_available") == 1 {
            let count = num("bootcount") + 1;
            self.set("bootcount", &count.to_string());
            if count > num("bootlimit") {
                let fallback = v.get("ota_fallback").cloned().unwrap_or_else(|| "A".into());
                self.set("ota_slot", &fallback);
                self.set("upgrade_available", "0");
                self.set("bootcount", "0");
            }
        }
        let v = self.vars();
        v.get("ota_slot")
            .map_or("A", String::as_str)
            .parse()
            .unwrap()
    }
}

#[tokio::test]
#[ignore = "needs fw_setenv/fw_printenv (libubootenv-tool): OTA_TEST_FW_SETENV, OTA_TEST_FW_PRINTENV"]
async fn issue17_uboot_bootcount_tries_the_new_slot_once_and_altbootcmd_falls_back() {
    let dir = tempdir();
    let env = UBootEnv::new(dir.path());
    assert_eq!(env.power_on(), Slot::A);
    let uboot = Bootloader::UBoot(UBoot::new(
        env.setenv.clone(),
        &env.config,
        dir.path().join("script"),
    ));
    let (ab, art, digest) = installer(dir.path(), uboot.clone());
    let req = InstallRequest {
        artifact: &art,
        digest,
        version: "2",
    };

    // Tried once: B boots (bootcount 1), a crash before the commit: altbootcmd brings A back.
    ab.install(&req, Slot::B).await.unwrap();
    let v = env.vars();
    assert_eq!(v.get("ota_slot").map(String::as_str), Some("B"));
    assert_eq!(v.get("upgrade_available").map(String::as_str), Some("1"));
    assert_eq!(env.power_on(), Slot::B);
    assert_eq!(env.vars().get("bootcount").map(String::as_str), Some("1"));
    assert_eq!(
        env.power_on(),
        Slot::A,
        "bootcount 2 > bootlimit 1: altbootcmd"
    );
    assert_eq!(env.power_on(), Slot::A);
    assert!(
        !dir.path().join("script").exists(),
        "the scratch script is removed"
    );

    // Tried and committed: B from now on, the count no longer runs.
    ab.install(&req, Slot::B).await.unwrap();
    assert_eq!(env.power_on(), Slot::B);
    uboot.boot_slot(Slot::B).await.unwrap();
    for _ in 0..3 {
        assert_eq!(env.power_on(), Slot::B);
    }
    let v = env.vars();
    assert_eq!(v.get("upgrade_available").map(String::as_str), Some("0"));
    assert_eq!(v.get("bootcount").map(String::as_str), Some("0"));

    // A failed trial on A: the agent makes B the default again before it reboots.
    ab.install(&req, Slot::A).await.unwrap();
    assert_eq!(env.power_on(), Slot::A);
    uboot.boot_slot(Slot::B).await.unwrap();
    assert_eq!(env.power_on(), Slot::B);
}

// ---- the whole agent across a reboot -------------------------------------------------------

/// A device with A/B image slots (slot A holds the factory release), a file-backed custom
/// bootloader and a kernel command line file; `power_on` plays the bootloader.
struct AbDevice {
    dev: Device,
}

impl AbDevice {
    async fn new(prefix: &str, url: &str, factory: &crate::fleet::Rel, health: &str) -> AbDevice {
        let mut dev = Device::new(prefix, url, factory, health).await;
        let root = dev.root().to_path_buf();
        let (pa, pb) = slots(&root, 1 << 20, &factory.artifact);
        std::fs::write(root.join("cmdline"), "root=/dev/vda2 ota.slot=A\n").unwrap();
        let d = root.display();
        dev.config.installer = InstallerConfig::Ab {
            slot_a: pa,
            slot_b: pb,
            bootloader: BootloaderConfig::Custom {
                try_command: vec![
                    "sh".into(),
                    "-c".into(),
                    format!("echo $OTA_SLOT > {d}/try"),
                ],
                boot_command: vec![
                    "sh".into(),
                    "-c".into(),
                    format!("echo $OTA_SLOT > {d}/default; rm -f {d}/try"),
                ],
            },
            reboot_command: vec!["sh".into(), "-c".into(), format!("touch {d}/rebooted")],
            cmdline: root.join("cmdline"),
            timeout: None,
        };
        AbDevice { dev }
    }

    fn root(&self) -> &Path {
        self.dev.root()
    }

    /// The bootloader at power-on: a pending try is used up and booted unless `boots` says
    /// the new system does not come up; else the default (A unless set).
    fn power_on(&self, new_system_boots: bool) -> Slot {
        let r = self.root();
        let default = read_trim(&r.join("default")).unwrap_or_else(|| "A".into());
        let tried = read_trim(&r.join("try"));
        let _ = std::fs::remove_file(r.join("try"));
        let _ = std::fs::remove_file(r.join("rebooted"));
        let slot = match tried {
            Some(t) if new_system_boots => t,
            _ => default,
        };
        std::fs::write(r.join("cmdline"), format!("ota.slot={slot}\n")).unwrap();
        slot.parse().unwrap()
    }
}

async fn wait_file(path: &Path) {
    let appeared = tokio::time::timeout(PATIENCE, async {
        while !path.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(appeared.is_ok(), "{} never appeared", path.display());
}

/// Install, reboot, commit from the new slot — and the server is told `succeeded` only then;
/// then a release whose slot never comes up: `rolled-back{boot-failed}` from the old slot.
#[tokio::test]
async fn issue17_the_agent_commits_only_after_the_reboot_into_the_new_slot() {
    let url = format!("mqtt://{}", broker());
    let fleet = Fleet::start(&url).await;
    let v1 = release("1.0.0", 1, 100_000);
    let v2 = release("2.0.0", 2, 300_000);
    let v3 = release("3.0.0", 3, 200_000);
    let server = serve(v2.artifact.clone(), Mode::Normal).await;
    let server3 = serve(v3.artifact.clone(), Mode::Normal).await;
    let dev = AbDevice::new("ab", &url, &v1, "").await;
    let id = dev.dev.id.clone();
    let agent = Agent::start(dev.dev.config.clone(), options())
        .await
        .unwrap();
    fleet
        .desire(&id, &desired(1, &v2, vec![server.url()]))
        .await;
    fleet.wait_event(&id, 1, "rebooting").await;
    wait_file(&dev.root().join("rebooted")).await;
    let b = std::fs::read(dev.root().join("b.img")).unwrap();
    assert_eq!(&b[..v2.artifact.len()], &v2.artifact[..]);
    assert_eq!(read_trim(&dev.root().join("try")).as_deref(), Some("B"));
    assert!(
        !fleet.states(&id, 1).contains(&"succeeded"),
        "nothing is final before the reboot"
    );
    let s = agent
        .wait_for(|s| s.machine.stage == Stage::Rebooting)
        .await;
    assert_eq!(s.machine.running.map(|r| r.digest), Some(v1.digest()));
    agent.kill();

    // The reboot: the bootloader tries B, the agent starts in the new system.
    assert_eq!(dev.power_on(true), Slot::B);
    let agent = Agent::start(dev.dev.config.clone(), options().with_boot_id("boot-2"))
        .await
        .unwrap();
    fleet.wait_event(&id, 1, "succeeded").await;
    let mut states = fleet.states(&id, 1);
    states.dedup();
    assert_eq!(states.last(), Some(&"succeeded"));
    assert!(states.contains(&"rebooting") && states.contains(&"trial"));
    assert_eq!(read_trim(&dev.root().join("default")).as_deref(), Some("B"));
    let s = agent
        .wait_for(|s| s.machine.stage == Stage::Idle && s.machine.known_good.is_some())
        .await;
    assert_eq!(s.machine.known_good.map(|r| r.digest), Some(v2.digest()));
    agent.kill();

    // v3 goes to slot A and never comes up: the bootloader boots B again.
    let _ = std::fs::remove_file(dev.root().join("rebooted"));
    let agent = Agent::start(dev.dev.config.clone(), options().with_boot_id("boot-2"))
        .await
        .unwrap();
    fleet
        .desire(&id, &desired(2, &v3, vec![server3.url()]))
        .await;
    fleet.wait_event(&id, 2, "rebooting").await;
    wait_file(&dev.root().join("rebooted")).await;
    assert_eq!(read_trim(&dev.root().join("try")).as_deref(), Some("A"));
    agent.kill();
    assert_eq!(dev.power_on(false), Slot::B);
    let agent = Agent::start(dev.dev.config.clone(), options().with_boot_id("boot-3"))
        .await
        .unwrap();
    let e = fleet.wait_event(&id, 2, "rolled-back").await;
    let ExecutionState::RolledBack { reason, detail } = e.kind else {
        panic!("{e:?}");
    };
    assert_eq!(reason, RollbackReason::BootFailed);
    assert!(
        detail.contains("slot A") && detail.contains("3.0.0"),
        "{detail}"
    );
    assert_eq!(read_trim(&dev.root().join("default")).as_deref(), Some("B"));
    let s = agent.wait_for(|s| s.machine.stage == Stage::Idle).await;
    assert_eq!(s.machine.running.map(|r| r.digest), Some(v2.digest()));
    assert_eq!(s.machine.known_good.map(|r| r.digest), Some(v2.digest()));
    agent.kill();
}

/// What slot `slot` of `dev` holds: the digest of its first `len` bytes.
fn slot_digest(dev: &AbDevice, slot: Slot, len: usize) -> Digest {
    let name = match slot {
        Slot::A => "a.img",
        Slot::B => "b.img",
    };
    let bytes = std::fs::read(dev.root().join(name)).unwrap();
    Digest::of(&bytes[..len.min(bytes.len())])
}

/// Issue 17, crash safety: a power loss at every disk write of the agent (journal, floor
/// record, cache, partial download) during an A/B update, unsynced data dropped; then the
/// bootloader's power-on and a fresh agent, rebooting as often as it asks. The device always
/// ends on a slot holding the release its journal names as running and known-good, and the
/// bootloader's default is that slot.
#[tokio::test]
async fn issue17_ab_a_power_loss_at_every_write_boots_a_good_slot_the_journal_agrees_with() {
    use ota_agent::storage::{Fault, FaultyStorage};
    use std::sync::Arc;

    let url = format!("mqtt://{}", broker());
    let fleet = Fleet::start(&url).await;
    let v1 = release("1.0.0", 1, 40_000);
    let v2 = release("2.0.0", 2, 3 * crate::fleet::CHUNK + 999);
    let server = serve(v2.artifact.clone(), Mode::Normal).await;
    let mut total = None;
    let mut n = 0u64;
    loop {
        let fault = (n > 0).then_some((
            n,
            Fault::PowerLoss {
                drop_unsynced: true,
            },
        ));
        let dev = AbDevice::new(&format!("abcut-{n}"), &url, &v1, "").await;
        let id = dev.dev.id.clone();
        fleet
            .desire(&id, &desired(1, &v2, vec![server.url()]))
            .await;
        let storage = Arc::new(match fault {
            Some((n, f)) => FaultyStorage::with_fault(n, f),
            None => FaultyStorage::new(),
        });
        let started = Agent::start(
            dev.dev.config.clone(),
            options().with_storage(storage.clone()),
        )
        .await;
        if let Ok(agent) = started {
            let stopped = tokio::time::timeout(PATIENCE, async {
                while !(dev.root().join("rebooted").exists() || storage.is_powered_off()) {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            })
            .await;
            assert!(stopped.is_ok(), "cut {n}: stuck");
            agent.kill();
        }
        if total.is_none() {
            total = Some(storage.mutations());
        }
        // Power-on (the new system boots if tried), then agents until the update settles.
        let mut boot = 1;
        let s = loop {
            boot += 1;
            assert!(boot < 6, "cut {n}: reboots forever");
            dev.power_on(true);
            let agent = Agent::start(
                dev.dev.config.clone(),
                options().with_boot_id(format!("boot-{boot}")),
            )
            .await
            .unwrap_or_else(|e| panic!("cut {n}: recovery failed to start: {e}"));
            let s = tokio::time::timeout(PATIENCE, async {
                loop {
                    let s = agent.status();
                    let rebooting = dev.root().join("rebooted").exists();
                    if rebooting || crate::fleet::settled(&s, 1) {
                        break s;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("cut {n}: recovery stuck"));
            agent.kill();
            if !dev.root().join("rebooted").exists() {
                break s;
            }
        };
        let booted: Slot =
            booted_slot_of(&read_trim(&dev.root().join("cmdline")).unwrap()).unwrap();
        let m = &s.machine;
        let run = m.running.as_ref().map(|r| r.digest).unwrap();
        let len = if run == v2.digest() {
            v2.artifact.len()
        } else {
            v1.artifact.len()
        };
        assert!(run == v1.digest() || run == v2.digest(), "cut {n}");
        assert_eq!(
            slot_digest(&dev, booted, len),
            run,
            "cut {n}: the booted slot runs it"
        );
        assert_eq!(
            m.known_good.as_ref().map(|r| r.digest),
            Some(run),
            "cut {n}"
        );
        let default = read_trim(&dev.root().join("default")).unwrap_or_else(|| "A".into());
        assert_eq!(
            default,
            booted.name(),
            "cut {n}: the default is the slot that runs"
        );
        assert!(
            m.last_result.as_ref().is_some_and(|r| r.state.is_final()),
            "cut {n}"
        );
        fleet.clear(&id).await;
        n += 1;
        if n > total.unwrap_or(0) {
            break;
        }
    }
    assert!(total.unwrap_or(0) > 10, "{total:?} writes");
}

/// Issue 18 with the `ab` installer: the running slot is a chunk source. The cache has lost the
/// running release, slot A still holds it (followed by the rest of the partition): the update
/// to v2 fetches only the changed chunks and the index (the reported transfer), and slot B
/// ends holding v2.
#[tokio::test]
async fn issue18_ab_a_delta_copies_the_chunks_of_the_running_slot() {
    use crate::delta::{Fault18, mirror};
    use crate::fleet::release_of;
    use crate::util::artifact;
    use firmware_fixtures::TestKey;
    use ota_core::delta::ChunkParams;

    let url = format!("mqtt://{}", broker());
    let fleet = Fleet::start(&url).await;
    let old = artifact(600_000, 1801);
    let mut new = old.clone();
    new[300_000..310_000].copy_from_slice(&artifact(10_000, 1802));
    let params = ChunkParams {
        min: 2048,
        avg: 8192,
        max: 32_768,
    };
    let m = mirror(new.clone(), params, Fault18::None).await;
    let v1 = release_of("1.0.0", 1, old, None, &[TestKey::A]);
    let v2 = release_of("2.0.0", 2, new, Some(m.index_ref), &[TestKey::A]);
    let dev = AbDevice::new("abdelta", &url, &v1, "").await;
    let id = dev.dev.id.clone();
    let agent = Agent::start(dev.dev.config.clone(), options())
        .await
        .unwrap();
    agent.wait_for(|s| s.machine.stage == Stage::Idle).await;
    let cache = dev.dev.data().join("cache");
    std::fs::remove_file(cache.join(v1.digest().to_string())).unwrap();
    assert!(!cache.join("index").exists(), "no index of v1 kept");

    fleet
        .desire(&id, &desired(1, &v2, vec![m.url.clone()]))
        .await;
    let e = fleet.wait_event(&id, 1, "rebooting").await;
    let t = e.transfer.expect("the transfer is reported");
    assert_eq!(t.size, v2.artifact.len() as u64);
    assert!(
        t.fetched < t.size / 4,
        "slot A held all but 10 kB, yet {} of {} bytes were fetched",
        t.fetched,
        t.size
    );
    assert_eq!(
        t.saved(),
        t.size - t.fetched,
        "the slot's chunks count as saved"
    );
    wait_file(&dev.root().join("rebooted")).await;
    assert_eq!(
        slot_digest(&dev, Slot::B, v2.artifact.len()),
        v2.digest(),
        "slot B holds v2"
    );
    agent.kill();
}
