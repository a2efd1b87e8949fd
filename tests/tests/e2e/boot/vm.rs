//! The gateway under QEMU: a PC (i440FX, SeaBIOS) with the disk on its IDE controller, an
//! e1000 network card on QEMU's user networking (the guest reaches the host's loopback as
//! `10.0.2.2`), the serial port logged to a file and the monitor on a Unix socket. Without
//! `-no-reboot`, a reboot in the guest resets the machine, which boots through GRUB again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::host::Host;

/// How long one boot step may take (a boot, an install, a trial) under software emulation
/// on a busy 2-core machine.
pub const STEP_PATIENCE: Duration = Duration::from_secs(300);

/// The guest's init says this when the agent exits.
pub const AGENT_EXITED: &str = "ota-guest: ota-agent exited";

/// A running virtual machine (killed when dropped).
#[derive(Debug)]
pub struct Vm {
    child: tokio::process::Child,
    serial: PathBuf,
    monitor: PathBuf,
}

impl Vm {
    /// Boots `disk` with its files (serial log, monitor socket) in `dir`.
    pub fn start(host: &Host, disk: &Path, dir: &Path) -> Vm {
        let serial = dir.join("serial.log");
        let monitor = dir.join("monitor.sock");
        let mut cmd = tokio::process::Command::new(&host.qemu);
        cmd.args([
            "-machine",
            "pc",
            "-m",
            "512",
            "-smp",
            "1",
            "-accel",
            &host.accel,
        ]);
        if host.accel == "kvm" {
            cmd.args(["-cpu", "host"]);
        }
        cmd.arg("-drive")
            .arg(format!("file={},format=raw,if=ide", disk.display()))
            .args(["-nic", "user,model=e1000", "-device", "virtio-rng-pci"])
            .args(["-display", "none"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", monitor.display()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", host.qemu.display()));
        Vm {
            child,
            serial,
            monitor,
        }
    }

    /// The serial log so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.serial)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until the serial log holds `needle` `times` times, for at most
    /// [`STEP_PATIENCE`]; answers the log. Panics with the log when it does not, when QEMU
    /// exits, or when the guest's agent exited (it never should: a reboot stops it with the
    /// whole system).
    pub async fn wait_for(&mut self, needle: &str, times: usize) -> String {
        let waited = tokio::time::timeout(STEP_PATIENCE, async {
            loop {
                let log = self.log();
                if log.matches(needle).count() >= times {
                    return Ok(log);
                }
                if log.contains(AGENT_EXITED) {
                    return Err("the agent exited".to_owned());
                }
                if let Ok(Some(status)) = self.child.try_wait() {
                    return Err(format!("QEMU exited ({status})"));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        match waited {
            Ok(Ok(log)) => log,
            Ok(Err(why)) => panic!("{why} waiting for {needle:?} x{times}\n{}", self.tail()),
            Err(_) => panic!("no {needle:?} x{times} on the serial port\n{}", self.tail()),
        }
    }

    /// The last lines of the serial log, for failure messages; the whole log is kept in
    /// `target/qemu-boot/failed-serial.log`.
    pub fn tail(&self) -> String {
        let log = self.log();
        let keep = ota_e2e::workspace_root().join("target/qemu-boot");
        let _ = std::fs::create_dir_all(&keep);
        let _ = std::fs::write(keep.join("failed-serial.log"), &log);
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(200);
        format!(
            "--- serial log (last {} lines) ---\n{}",
            lines.len() - from,
            lines[from..].join("\n")
        )
    }

    /// Presses the reset button (the monitor's `system_reset`), once the monitor answered.
    pub fn reset(&self) {
        use std::io::{Read, Write};
        let mut sock = std::os::unix::net::UnixStream::connect(&self.monitor).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let mut prompt = |sock: &mut std::os::unix::net::UnixStream, times: usize| {
            while String::from_utf8_lossy(&seen).matches("(qemu)").count() < times {
                let n = sock.read(&mut buf).expect("QEMU's monitor answers");
                assert!(n > 0, "QEMU's monitor closed");
                seen.extend_from_slice(&buf[..n]);
            }
        };
        prompt(&mut sock, 1);
        sock.write_all(b"system_reset\n").unwrap();
        prompt(&mut sock, 2);
    }

    /// Stops the machine (the power goes).
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}
