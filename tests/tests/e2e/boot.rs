//! Issue 17, a real boot: Debian's kernel under QEMU boots a gateway from a disk with two
//! root-filesystem slots and GRUB, all built by the test from files of this machine (busybox,
//! the `ota-agent` binary and the libraries it links, `grub-editenv`; see [`slot`] and
//! [`disk`]). The guest reaches the fleet server (a lab with no simulated devices) only
//! through QEMU's user networking, as `10.0.2.2`, which QEMU forwards to the host's loopback
//! where the server listens; artifacts are served under `http.public_url`
//! `http://10.0.2.2:<port>`.
//!
//! Every scenario starts from a fresh disk: slot A holds system 1.0.0, slot B zeros, GRUB's
//! environment is empty (so GRUB boots A). The release 2.0.0 is the whole slot image of the
//! scenario's system B, signed by the lab's firmware team; a rollout sends it to the gateway.
//!
//! - good B: written to slot B, the VM reboots into it, it commits; the server counts the
//!   update as succeeded only after the gateway reported `rebooting` and B booted. A reset
//!   afterwards boots B again (the commit made it GRUB's default).
//! - B whose health probe never passes: the agent on B rolls back, the VM reboots into A,
//!   the server shows `rolled-back` with cause `probe-failed`.
//! - B whose `/sbin/init` exits: the kernel panics and reboots (`panic=10` of the documented
//!   grub.cfg), GRUB boots A on its own (the try was used up), the agent on A reports
//!   `rolled-back` with cause `boot-failed`.
//!
//! `#[ignore]`d: needs QEMU, a Debian kernel and GRUB's BIOS files (`host` lists the
//! variables; `.ci/run`'s `ensure_qemu` installs and sets them). Each test prints its run time.

mod cpio;
mod disk;
mod host;
mod slot;
mod vm;

use std::time::Duration;

use ota_core::fleet::RolloutId;
use ota_demo::api::rollout_id;
use ota_demo::firmware::{Build, HARDWARE_CLASS};
use ota_demo::lab::{Lab, LabOptions, unix_now};
use ota_server::clock::monotonic_now;
use serde_json::{Value, json};

use host::Host;
use slot::{HOST_ADDR, System, Variant};
use vm::{STEP_PATIENCE, Vm};

/// The gateway's device id.
const DEVICE: &str = "qemu-gw-1";
/// The serial line of a system that booted (followed by the version).
const BOOTED_A: &str = "ota-guest: booted slot=A version=1.0.0";
const BOOTED_B: &str = "ota-guest: booted slot=B version=2.0.0";

/// A lab, the gateway's disk built for it, the release 2.0.0 published and the gateway
/// booted into slot A and online.
struct Gateway {
    lab: Lab,
    vm: Vm,
    release: Build,
}

impl Gateway {
    async fn start(variant_b: Variant) -> Gateway {
        let host = Host::from_env();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let lab = Lab::start(LabOptions {
            devices: 0,
            device_passwords: false,
            id_prefix: "qemu".into(),
            public_url: Some(format!("http://{HOST_ADDR}:{port}")),
            http_listen: ([127, 0, 0, 1], port).into(),
            ..LabOptions::default()
        })
        .await
        .unwrap();
        let mqtt = lab.server().unwrap().mqtt_addr().unwrap().port();
        let dir = lab.dir().join("gateway");
        std::fs::create_dir_all(&dir).unwrap();
        let key = lab.dir().join("release-key.pub");
        let system = |version, variant| System {
            version,
            variant,
            device_id: DEVICE,
            broker_url: format!("mqtt://{HOST_ADDR}:{mqtt}"),
            trust_key: &key,
        };
        let started = monotonic_now();
        let initrd = slot::initramfs(&host);
        let (a, b) = (dir.join("a.ext2"), dir.join("b.ext2"));
        let size = disk::SLOT_BYTES;
        slot::build(
            &host,
            &system("1.0.0", Variant::Good),
            &initrd,
            &dir.join("a"),
            &a,
            size,
        );
        slot::build(
            &host,
            &system("2.0.0", variant_b),
            &initrd,
            &dir.join("b"),
            &b,
            size,
        );
        let disk_img = dir.join("disk.img");
        disk::build(&host, &a, &dir, &disk_img);
        let image = std::fs::read(&b).unwrap();
        let release = lab
            .team()
            .build_image("2.0.0", image, "ab", &[HARDWARE_CLASS], unix_now());
        lab.api().publish(&release).await.unwrap();
        println!(
            "gateway: disk and a {} MiB release built in {:.1} s; booting with -accel {}",
            release.image.len() / (1024 * 1024),
            started.elapsed().as_secs_f64(),
            host.accel
        );
        let mut vm = Vm::start(&host, &disk_img, &dir);
        vm.wait_for(BOOTED_A, 1).await;
        let mut gw = Gateway { lab, vm, release };
        gw.wait_device("online", |d| d["online"] == true).await;
        gw
    }

    /// Sends the release to the gateway (one wave); answers the rollout id.
    async fn rollout(&self) -> RolloutId {
        let spec = json!({
            "release": self.release.digest.to_string(),
            "filter": format!("id={DEVICE}"),
            "waves": [100],
            "bake_secs": 1,
            "min_executed": 1,
            "rate_per_minute": 60_000,
            "max_deferral_secs": 600,
        });
        let r = self.lab.api().create_rollout(&spec).await.unwrap();
        rollout_id(&r).unwrap()
    }

    /// Waits until the server's view of the gateway satisfies `pred`; answers it.
    async fn wait_device(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let filter = format!("id={DEVICE}");
        let api = self.lab.api();
        let found = poll(async || {
            let devices = api.devices(&filter).await.unwrap_or_default();
            devices.into_iter().find(|d| pred(d))
        })
        .await;
        match found {
            Some(d) => d,
            None => panic!(
                "the server never showed the gateway {what}: {:#?}\n{}",
                api.devices(&filter).await,
                self.vm.tail()
            ),
        }
    }

    /// Waits until rollout `id` satisfies `pred`; answers it.
    async fn wait_rollout(
        &self,
        id: RolloutId,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let api = self.lab.api();
        let found = poll(async || api.rollout(id).await.ok().filter(|r| pred(r))).await;
        match found {
            Some(r) => r,
            None => panic!(
                "rollout {id} never {what}: {:#}\n{}",
                api.rollout(id).await.unwrap_or_default(),
                self.vm.tail()
            ),
        }
    }

    /// The gateway's execution states in the rollout, as the server recorded them, in order.
    async fn states(&self) -> Vec<(String, Value)> {
        let events = self
            .lab
            .api()
            .events(&[("device", DEVICE), ("kind", "device-state-changed")])
            .await
            .unwrap();
        events
            .iter()
            .map(|e| {
                let to = e["details"]["to"].as_str().unwrap_or_default().to_owned();
                (to, e["details"].clone())
            })
            .collect()
    }

    async fn finish(mut self, began: tokio::time::Instant, name: &str) {
        self.vm.kill().await;
        self.lab.shutdown().await.unwrap();
        println!("{name}: {:.1} s in all", began.elapsed().as_secs_f64());
    }
}

/// Where `needle` first occurs in `log`, for ordering the guest's lines.
fn at(log: &str, needle: &str) -> usize {
    log.find(needle)
        .unwrap_or_else(|| panic!("{needle:?} is not in the serial log"))
}

/// Asks `probe` every 100 ms until it answers something, for at most [`STEP_PATIENCE`].
async fn poll<T>(mut probe: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    tokio::time::timeout(STEP_PATIENCE, async {
        loop {
            if let Some(found) = probe().await {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .ok()
}

/// Waits until the gateway reported `rebooting` (from slot A); asserts that nothing counted
/// as succeeded then and that slot B had not booted yet.
async fn rebooting(gw: &mut Gateway, id: RolloutId) {
    let r = gw
        .wait_rollout(id, "saw the gateway rebooting", |r| {
            r["totals"]["rebooting"] == 1
        })
        .await;
    assert_eq!(r["totals"]["succeeded"], 0, "{r:#}");
    assert!(
        !gw.vm.log().contains(BOOTED_B) && !gw.vm.log().contains("slot=B"),
        "the server saw `rebooting` only after slot B booted\n{}",
        gw.vm.tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs qemu-system-x86_64, a Debian kernel, GRUB and busybox: set OTA_TEST_QEMU and OTA_TEST_QEMU_KERNEL (.ci/run does)"]
async fn issue17_a_good_slot_b_boots_commits_and_only_then_succeeds() {
    let began = monotonic_now();
    let mut gw = Gateway::start(Variant::Good).await;
    let id = gw.rollout().await;
    rebooting(&mut gw, id).await;
    gw.vm.wait_for(BOOTED_B, 1).await;
    let done = gw
        .wait_rollout(id, "completed", |r| r["status"] == "completed")
        .await;
    assert_eq!(done["totals"]["succeeded"], 1, "{done:#}");
    assert_eq!(done["totals"]["rolled-back"], 0, "{done:#}");

    // The server's record: rebooting from A, then the trial and the success from B.
    let states: Vec<String> = gw.states().await.into_iter().map(|(to, _)| to).collect();
    let pos = |s: &str| states.iter().position(|t| t == s);
    let (reboot, trial, ok) = (pos("rebooting"), pos("trial"), pos("succeeded"));
    assert!(
        reboot.is_some() && reboot < trial && trial < ok,
        "the gateway's states: {states:?}"
    );
    assert_eq!(
        states.iter().filter(|s| *s == "succeeded").count(),
        1,
        "{states:?}"
    );
    let d = gw
        .wait_device("running 2.0.0", |d| d["running_version"] == "2.0.0")
        .await;
    assert_eq!(d["last_result"], "succeeded", "{d:#}");

    // The commit made B GRUB's default: the reset button boots B again, and the agent there
    // finds nothing left to do.
    gw.vm.reset();
    gw.vm.wait_for(BOOTED_B, 2).await;
    let log = gw.vm.log();
    assert!(
        log.rfind(BOOTED_A) < log.rfind(BOOTED_B),
        "slot A booted after the commit\n{}",
        gw.vm.tail()
    );
    gw.finish(began, "good slot B").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs qemu-system-x86_64, a Debian kernel, GRUB and busybox: set OTA_TEST_QEMU and OTA_TEST_QEMU_KERNEL (.ci/run does)"]
async fn issue17_a_slot_b_whose_health_never_passes_is_rolled_back_by_the_agent() {
    let began = monotonic_now();
    let mut gw = Gateway::start(Variant::Unhealthy).await;
    let id = gw.rollout().await;
    rebooting(&mut gw, id).await;
    gw.vm.wait_for(BOOTED_B, 1).await;
    gw.vm.wait_for(BOOTED_A, 2).await;
    let r = gw
        .wait_rollout(id, "counted the rollback", |r| {
            r["totals"]["rolled-back"] == 1
        })
        .await;
    assert_eq!(r["totals"]["succeeded"], 0, "{r:#}");
    let log = gw.vm.log();
    // B ran its probe (and failed it) before A came back.
    let b = at(&log, BOOTED_B);
    let failed = b + at(&log[b..], "ota-guest: the health check fails");
    assert!(failed < log.rfind(BOOTED_A).unwrap(), "{}", gw.vm.tail());
    let d = gw
        .wait_device("rolled back", |d| d["last_result"] == "rolled-back")
        .await;
    assert_eq!(d["last_outcome"]["cause"], "probe-failed", "{d:#}");
    let states = gw.states().await;
    let rolled = states.iter().find(|(to, _)| to == "rolled-back").unwrap();
    assert_eq!(rolled.1["cause"], "probe-failed", "{states:?}");
    assert!(states.iter().all(|(to, _)| to != "succeeded"), "{states:?}");
    gw.finish(began, "unhealthy slot B").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs qemu-system-x86_64, a Debian kernel, GRUB and busybox: set OTA_TEST_QEMU and OTA_TEST_QEMU_KERNEL (.ci/run does)"]
async fn issue17_a_slot_b_that_cannot_boot_is_rolled_back_by_grub_and_reported_boot_failed() {
    let began = monotonic_now();
    let mut gw = Gateway::start(Variant::BrokenInit).await;
    let id = gw.rollout().await;
    rebooting(&mut gw, id).await;
    gw.vm.wait_for("ota-guest: broken init on slot=B", 1).await;
    gw.vm.wait_for("Kernel panic", 1).await;
    gw.vm.wait_for(BOOTED_A, 2).await;
    let r = gw
        .wait_rollout(id, "counted the rollback", |r| {
            r["totals"]["rolled-back"] == 1
        })
        .await;
    assert_eq!(r["totals"]["succeeded"], 0, "{r:#}");
    let d = gw
        .wait_device("rolled back", |d| d["last_result"] == "rolled-back")
        .await;
    assert_eq!(d["last_outcome"]["cause"], "boot-failed", "{d:#}");
    let detail = d["last_outcome"]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains('B') && detail.contains("2.0.0"), "{d:#}");
    let states: Vec<String> = gw.states().await.into_iter().map(|(to, _)| to).collect();
    assert!(!states.contains(&"trial".to_owned()), "{states:?}");
    assert!(!states.contains(&"succeeded".to_owned()), "{states:?}");
    gw.finish(began, "slot B that cannot boot").await;
}
