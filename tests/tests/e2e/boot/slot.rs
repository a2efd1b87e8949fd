//! A slot's system: an ext2 filesystem image holding the kernel, an initramfs, busybox, the
//! `ota-agent` binary and `grub-editenv` with the libraries they link, the agent's
//! configuration and an init script, all taken from the host.
//!
//! ```text
//! /boot/vmlinuz, /boot/initrd.img   what GRUB loads (the documented grub.cfg names them)
//! /boot/grub/                       mount point of the boot partition (grub.cfg, grubenv)
//! /data/                            mount point of the data partition (the agent's data_dir)
//! /sbin/init                        PID 1: mounts, network, then the agent (restarted if it exits)
//! /bin/busybox and its applets      the shell and the tools (mount, ip, reboot, sync...)
//! /usr/bin/ota-agent, grub-editenv  stripped copies; their libraries at the same paths as on the host
//! /etc/ota/agent.toml               the agent's configuration (slots /dev/sda2 and /dev/sda3, GRUB)
//! /etc/ota/release-key.pub          the key the releases are signed with
//! /etc/ota/health                   the health probe: exit 0 (or 1 in an unhealthy system)
//! /etc/ota/version                  the version this image is
//! /etc/ssl/certs/ca-certificates.crt the host's CA bundle
//! ```
//!
//! The initramfs (the same in every slot) loads the modules the disk, the filesystems and the
//! network need (Debian builds them as modules: `modules.dep` orders them), mounts `root=`
//! read-only and switches to its `/sbin/init`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use super::cpio::Cpio;
use super::host::{Host, run};

/// The guest's address of the host: QEMU's user networking maps it to the host's loopback.
pub const HOST_ADDR: &str = "10.0.2.2";

/// Modules the guest needs, with their dependencies from `modules.dep`: the PIIX IDE disk,
/// ext2/ext4 (with crc32c for ext4's metadata), QEMU's default e1000 network card and a
/// virtio RNG (without one the kernel's random pool takes minutes to initialise under
/// emulation, and the agent's first `getrandom` waits for it).
const MODULES: [&str; 7] = [
    "ata_piix",
    "sd_mod",
    "crc32c_generic",
    "ext4",
    "e1000",
    "virtio_pci",
    "virtio-rng",
];

/// The host's CA bundle: the agent's HTTP client loads the system's roots at start even when
/// every URL is plain HTTP, and refuses to start without any.
const CA_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";

/// What a slot's system does when it boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Boots, and its health probe passes.
    Good,
    /// Boots, and its health probe always fails.
    Unhealthy,
    /// Its `/sbin/init` exits at once: the kernel panics (and reboots after `panic=`).
    BrokenInit,
}

/// A slot's system.
#[derive(Debug, Clone)]
pub struct System<'a> {
    /// The release version it is.
    pub version: &'a str,
    /// How it behaves.
    pub variant: Variant,
    /// The agent's `device_id`.
    pub device_id: &'a str,
    /// The agent's broker URL (through [`HOST_ADDR`]).
    pub broker_url: String,
    /// The release signing key (SPKI PEM).
    pub trust_key: &'a Path,
}

/// Builds `system` as an ext2 image of `size` bytes at `out`, staging its files in `work`
/// (which must not exist). `initrd` is [`initramfs`]'s archive.
pub fn build(host: &Host, system: &System<'_>, initrd: &[u8], work: &Path, out: &Path, size: u64) {
    let root = work;
    for dir in [
        "bin",
        "sbin",
        "boot/grub",
        "data",
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "etc/ota",
        "etc/ssl/certs",
        "usr/bin",
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::copy(&host.kernel, root.join("boot/vmlinuz")).unwrap();
    std::fs::write(root.join("boot/initrd.img"), initrd).unwrap();
    install_busybox(host, root);
    install_program(&host.agent, root, "usr/bin/ota-agent");
    install_program(&which("grub-editenv"), root, "usr/bin/grub-editenv");
    std::fs::copy(system.trust_key, root.join("etc/ota/release-key.pub")).unwrap();
    std::fs::copy(Path::new("/").join(CA_BUNDLE), root.join(CA_BUNDLE)).unwrap();
    std::fs::write(
        root.join("etc/ota/version"),
        format!("{}\n", system.version),
    )
    .unwrap();
    std::fs::write(root.join("etc/ota/agent.toml"), agent_toml(system)).unwrap();
    let health = if system.variant == Variant::Unhealthy {
        "#!/bin/sh\necho \"ota-guest: the health check fails\" >&2\nexit 1\n"
    } else {
        "#!/bin/sh\nexit 0\n"
    };
    write_exec(&root.join("etc/ota/health"), health);
    let init = if system.variant == Variant::BrokenInit {
        BROKEN_INIT
    } else {
        INIT
    };
    write_exec(&root.join("sbin/init"), init);

    let file = std::fs::File::create(out).unwrap();
    file.set_len(size).unwrap();
    drop(file);
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext2", "-L", system.version, "-d"])
        .arg(root)
        .arg(out));
}

/// The initramfs: busybox, the modules and an `/init` that mounts `root=` and switches to it.
pub fn initramfs(host: &Host) -> Vec<u8> {
    let mut cpio = Cpio::default();
    for dir in ["bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"] {
        cpio.dir(dir);
    }
    cpio.char_dev("dev/console", 5, 1);
    cpio.file("bin/busybox", 0o755, &std::fs::read(&host.busybox).unwrap());
    cpio.file("init", 0o755, INITRAMFS_INIT.as_bytes());
    let mut order = String::new();
    for path in module_order(&host.modules) {
        let name = Path::new(&path).file_name().unwrap().to_string_lossy();
        let bytes = std::fs::read(host.modules.join(&path)).unwrap();
        cpio.file(&format!("lib/modules/{name}"), 0o644, &bytes);
        order.push_str(&name);
        order.push('\n');
    }
    cpio.file("lib/modules/order", 0o644, order.as_bytes());
    cpio.finish()
}

/// [`MODULES`] and their dependencies (paths relative to the modules directory), every module
/// after the ones it depends on.
fn module_order(dir: &Path) -> Vec<String> {
    let dep = std::fs::read_to_string(dir.join("modules.dep")).unwrap();
    let deps: BTreeMap<&str, Vec<&str>> = dep
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(module, deps)| (module, deps.split_whitespace().collect()))
        .collect();
    let by_name = |name: &str| -> &str {
        deps.keys()
            .copied()
            .find(|path| path.rsplit('/').next() == Some(&format!("{name}.ko")))
            .unwrap_or_else(|| panic!("module {name} is not in {}", dir.display()))
    };
    fn visit<'a>(m: &'a str, deps: &BTreeMap<&'a str, Vec<&'a str>>, order: &mut Vec<String>) {
        if order.iter().any(|o| o == m) {
            return;
        }
        for d in deps.get(m).into_iter().flatten() {
            visit(d, deps, order);
        }
        order.push(m.to_owned());
    }
    let mut order = Vec::new();
    for name in MODULES {
        visit(by_name(name), &deps, &mut order);
    }
    order
}

/// busybox as `/bin/busybox` and a symlink per applet in `/bin`.
fn install_busybox(host: &Host, root: &Path) {
    std::fs::copy(&host.busybox, root.join("bin/busybox")).unwrap();
    let applets = run(Command::new(&host.busybox).arg("--list"));
    for applet in applets.lines().filter(|a| !a.is_empty() && *a != "busybox") {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
}

/// A stripped copy of `program` at `root/dest`, and the shared libraries it links (as `ldd`
/// lists them) at their host paths under `root`.
fn install_program(program: &Path, root: &Path, dest: &str) {
    run(Command::new("strip")
        .arg("-o")
        .arg(root.join(dest))
        .arg(program));
    let out = Command::new("ldd").arg(program).output().unwrap();
    // A static program: `ldd` says "not a dynamic executable" and fails.
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let lib = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(lib) = lib.filter(|l| l.starts_with('/')) else {
            continue;
        };
        let target = root.join(lib.trim_start_matches('/'));
        if !target.exists() {
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::copy(lib, &target).unwrap();
        }
    }
}

/// `name`'s path on `PATH`.
fn which(name: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("{name} is not on PATH"))
}

fn write_exec(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The agent's configuration: slots 2 and 3 of the IDE disk, GRUB's environment on the boot
/// partition, the data partition for its data, the image's health probe; short intervals so
/// the test runs in minutes.
fn agent_toml(system: &System<'_>) -> String {
    format!(
        r#"device_id = "{id}"
hardware_class = "{hw}"
data_dir = "/data/ota"
trial_timeout = "5m"
trial_min = "3s"
probe_failures_to_rollback = 3
heartbeat_interval = "1s"

[trust]
keys = [{{ file = "/etc/ota/release-key.pub" }}]

[broker]
url = "{broker}"
reconnect_backoff = "1s"
max_reconnect_backoff = "2s"

[installer]
kind = "ab"
slot_a = "/dev/sda2"
slot_b = "/dev/sda3"
reboot_command = ["/bin/sh", "-c", "sync && reboot -f"]
timeout = "60s"

[installer.bootloader]
kind = "grub"
env_file = "/boot/grub/grubenv"
editenv = "/usr/bin/grub-editenv"

[health]
kind = "command"
program = "/etc/ota/health"
interval = "1s"
timeout = "10s"
"#,
        id = system.device_id,
        hw = ota_demo::firmware::HARDWARE_CLASS,
        broker = system.broker_url,
    )
}

/// The initramfs's `/init`.
const INITRAMFS_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r module; do
  insmod "/lib/modules/$module" || echo "initramfs: insmod $module failed"
done < /lib/modules/order
root=
for word in $(cat /proc/cmdline); do
  case "$word" in root=*) root="${word#root=}" ;; esac
done
tries=0
while [ ! -b "$root" ] && [ "$tries" -lt 300 ]; do sleep 0.1; tries=$((tries + 1)); done
mount -t ext4 -o ro "$root" /newroot || { echo "initramfs: cannot mount $root"; exit 1; }
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot /sbin/init
"#;

/// `/sbin/init` of a system that boots: mounts, the network through QEMU's user networking,
/// a line the test waits for, then the agent (started again whenever it exits).
const INIT: &str = r#"#!/bin/sh
export PATH=/bin:/usr/bin NO_COLOR=1
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t ext2 /dev/sda4 /boot/grub
mount -t ext4 /dev/sda5 /data
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
slot=none
for word in $(cat /proc/cmdline); do
  case "$word" in ota.slot=*) slot="${word#ota.slot=}" ;; esac
done
echo "ota-guest: booted slot=$slot version=$(cat /etc/ota/version)"
while true; do
  ota-agent run --config /etc/ota/agent.toml
  echo "ota-guest: ota-agent exited with $?"
  sleep 1
done
"#;

/// `/sbin/init` of a system that cannot boot: it exits, so the kernel panics.
const BROKEN_INIT: &str = r#"#!/bin/sh
slot=none
for word in $(cat /proc/cmdline); do
  case "$word" in ota.slot=*) slot="${word#ota.slot=}" ;; esac
done
echo "ota-guest: broken init on slot=$slot version=$(cat /etc/ota/version) exits"
exit 1
"#;
