//! The host's programs and files a gateway is built and booted from, read from the
//! environment (`.ci/run`'s `ensure_qemu` sets them).
//!
//! | variable | default | what |
//! |---|---|---|
//! | `OTA_TEST_QEMU` | (required) | `qemu-system-x86_64` (Debian's `qemu-system-x86`) |
//! | `OTA_TEST_QEMU_KERNEL` | (required) | a kernel, e.g. `/boot/vmlinuz-6.1.0-28-amd64` (`linux-image-amd64`) |
//! | `OTA_TEST_QEMU_MODULES` | `/lib/modules/<release>` (from the kernel's file name) | its modules |
//! | `OTA_TEST_QEMU_ACCEL` | `kvm` when `/dev/kvm` opens read-write, else `tcg` | QEMU's `-accel` |
//! | `OTA_TEST_QEMU_GRUB` | `/usr/lib/grub/i386-pc` | GRUB's BIOS images and modules (`grub-pc-bin`) |
//! | `OTA_TEST_QEMU_BUSYBOX` | `/bin/busybox` | a static busybox (`busybox-static`) |
//! | `OTA_TEST_QEMU_AGENT` | `ota-agent` next to this test binary's `deps/` | the agent binary |
//!
//! `grub-mkimage` and `grub-editenv` (`grub-common`), `mke2fs` (`e2fsprogs`), `sfdisk`
//! (`fdisk`), `strip` (`binutils`) and `ldd` come from `PATH`.

use std::path::{Path, PathBuf};

/// What the host provides (see the [module documentation](self)).
#[derive(Debug, Clone)]
pub struct Host {
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// QEMU's accelerator, `kvm` or `tcg`.
    pub accel: String,
    /// The kernel image.
    pub kernel: PathBuf,
    /// The kernel's modules directory (holds `modules.dep`).
    pub modules: PathBuf,
    /// GRUB's `i386-pc` directory (`boot.img`, `*.mod`).
    pub grub: PathBuf,
    /// A static busybox.
    pub busybox: PathBuf,
    /// The `ota-agent` binary.
    pub agent: PathBuf,
}

impl Host {
    /// Reads the environment; panics with what is missing.
    pub fn from_env() -> Host {
        let var = |name: &str| std::env::var_os(name).map(PathBuf::from);
        let qemu = var("OTA_TEST_QEMU").expect("OTA_TEST_QEMU: qemu-system-x86_64");
        let kernel = var("OTA_TEST_QEMU_KERNEL")
            .expect("OTA_TEST_QEMU_KERNEL: a kernel such as /boot/vmlinuz-<release>");
        let modules = var("OTA_TEST_QEMU_MODULES").unwrap_or_else(|| {
            let name = kernel.file_name().unwrap().to_string_lossy();
            let release = name.strip_prefix("vmlinuz-").unwrap_or(&name);
            Path::new("/lib/modules").join(release)
        });
        let accel = std::env::var("OTA_TEST_QEMU_ACCEL").unwrap_or_else(|_| {
            let kvm = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_ok();
            if kvm { "kvm" } else { "tcg" }.to_owned()
        });
        let agent = var("OTA_TEST_QEMU_AGENT").unwrap_or_else(|| {
            let exe = std::env::current_exe().unwrap();
            exe.parent().unwrap().parent().unwrap().join("ota-agent")
        });
        let host = Host {
            qemu,
            accel,
            modules,
            kernel,
            grub: var("OTA_TEST_QEMU_GRUB")
                .unwrap_or_else(|| PathBuf::from("/usr/lib/grub/i386-pc")),
            busybox: var("OTA_TEST_QEMU_BUSYBOX").unwrap_or_else(|| PathBuf::from("/bin/busybox")),
            agent,
        };
        for (what, path) in [
            ("the kernel", &host.kernel),
            (
                "the kernel's modules.dep",
                &host.modules.join("modules.dep"),
            ),
            ("GRUB's boot.img", &host.grub.join("boot.img")),
            ("busybox", &host.busybox),
            ("the agent (cargo build -p ota-agent)", &host.agent),
        ] {
            assert!(path.exists(), "{what}: {} does not exist", path.display());
        }
        host
    }
}

/// Runs `cmd`; panics with its output when it fails. Answers its stdout.
pub fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
