//! The gateway's disk: one raw image file with a GPT partition table, GRUB for BIOS, two
//! root-filesystem slots, a boot partition and a data partition, assembled without root
//! (no loop devices, no mounts): each partition is a filesystem image made by `mke2fs -d`
//! and copied into place; GRUB's `boot.img` and `core.img` are written and patched the way
//! `grub-bios-setup` would.
//!
//! | partition | size | contents |
//! |---|---|---|
//! | 1 `bios` | 1 MiB | GRUB's `core.img` (a BIOS boot partition) |
//! | 2 `A` | [`SLOT_BYTES`] | slot A: the factory system |
//! | 3 `B` | [`SLOT_BYTES`] | slot B: empty (zeros) |
//! | 4 `boot` | 8 MiB | ext2: `grub.cfg`, `grubenv`, GRUB's modules (`i386-pc/`); GRUB's prefix |
//! | 5 `data` | [`DATA_BYTES`] | ext4: the agent's data directory (journal, cache) |
//!
//! `grub.cfg` is the snippet of docs/agent.md ("GRUB"), as written there, after two lines
//! that put GRUB's terminal on the serial port; the test only adds `console=ttyS0` to its
//! `linux` line so the kernel logs to the serial port too.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use super::host::{Host, run};

const MIB: u64 = 1024 * 1024;
const SECTOR: u64 = 512;
/// The size of each slot.
pub const SLOT_BYTES: u64 = 64 * MIB;
/// The size of the data partition.
pub const DATA_BYTES: u64 = 192 * MIB;
const BOOT_BYTES: u64 = 8 * MIB;
const BIOS_BYTES: u64 = MIB;

/// Partition starts in bytes (1 MiB aligned, after the 1 MiB GPT area).
const BIOS_START: u64 = MIB;
const A_START: u64 = BIOS_START + BIOS_BYTES;
const B_START: u64 = A_START + SLOT_BYTES;
const BOOT_START: u64 = B_START + SLOT_BYTES;
const DATA_START: u64 = BOOT_START + BOOT_BYTES;
/// The whole disk (1 MiB at the end for the backup GPT).
const DISK_BYTES: u64 = DATA_START + DATA_BYTES + MIB;

/// GRUB's BIOS boot partition type.
const BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
/// The Linux filesystem partition type.
const LINUX: &str = "0FC63DAF-8483-4772-8E79-3D69E4C47DE4";

/// Where `boot.img` holds the sector of `core.img`'s first sector (GRUB's
/// `GRUB_BOOT_MACHINE_KERNEL_SECTOR`, 8 bytes little endian).
const BOOT_IMG_KERNEL_SECTOR: usize = 0x5c;
/// Where the first sector of `core.img` (`diskboot.img`) holds the start of its block list:
/// the sector the rest of `core.img` is read from (8 bytes little endian, before the 2-byte
/// length and segment at the end of the sector).
const CORE_IMG_BLOCKLIST_START: usize = 0x200 - 12;
/// The MBR's boot code ends here; the disk signature and partition table follow.
const MBR_CODE: usize = 440;

/// Builds the disk at `out` with `slot_a` (an image of at most [`SLOT_BYTES`]) in slot A,
/// staging in `work` (which must exist).
pub fn build(host: &Host, slot_a: &Path, work: &Path, out: &Path) {
    let file = std::fs::File::create(out).unwrap();
    file.set_len(DISK_BYTES).unwrap();
    drop(file);
    let table = format!(
        "label: gpt\nunit: sectors\n\
         start={}, size={}, type={BIOS_BOOT}, name=bios\n\
         start={}, size={}, type={LINUX}, name=A\n\
         start={}, size={}, type={LINUX}, name=B\n\
         start={}, size={}, type={LINUX}, name=boot\n\
         start={}, size={}, type={LINUX}, name=data\n",
        BIOS_START / SECTOR,
        BIOS_BYTES / SECTOR,
        A_START / SECTOR,
        SLOT_BYTES / SECTOR,
        B_START / SECTOR,
        SLOT_BYTES / SECTOR,
        BOOT_START / SECTOR,
        BOOT_BYTES / SECTOR,
        DATA_START / SECTOR,
        DATA_BYTES / SECTOR,
    );
    let mut sfdisk = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(out)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk (fdisk)");
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(table.as_bytes())
        .unwrap();
    let done = sfdisk.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "sfdisk: {}",
        String::from_utf8_lossy(&done.stderr)
    );

    copy_into(out, A_START, SLOT_BYTES, slot_a);
    let boot = work.join("boot.ext2");
    boot_partition(host, &work.join("boot"), &boot);
    copy_into(out, BOOT_START, BOOT_BYTES, &boot);
    let data = work.join("data.ext4");
    std::fs::File::create(&data)
        .unwrap()
        .set_len(DATA_BYTES)
        .unwrap();
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", "data"])
        .arg(&data));
    copy_into(out, DATA_START, DATA_BYTES, &data);
    install_grub(host, work, out);
}

/// The boot partition's filesystem image: `grub.cfg`, an empty `grubenv`, GRUB's modules.
fn boot_partition(host: &Host, dir: &Path, out: &Path) {
    let modules = dir.join("i386-pc");
    std::fs::create_dir_all(&modules).unwrap();
    for entry in std::fs::read_dir(&host.grub).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "mod" || e == "lst") {
            std::fs::copy(&path, modules.join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(dir.join("grub.cfg"), grub_cfg()).unwrap();
    let env = dir.join("grubenv");
    run(Command::new("grub-editenv").arg(&env).arg("create"));
    std::fs::File::create(out)
        .unwrap()
        .set_len(BOOT_BYTES)
        .unwrap();
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext2", "-L", "boot", "-d"])
        .arg(dir)
        .arg(out));
}

/// grub.cfg: the serial terminal, then docs/agent.md's snippet with `console=ttyS0` added to
/// its `linux` line.
pub fn grub_cfg() -> String {
    let doc = std::fs::read_to_string(ota_e2e::workspace_root().join("docs/agent.md")).unwrap();
    let (_, after) = doc
        .split_once("<!-- grub-cfg -->\n```sh\n")
        .expect("docs/agent.md marks its grub.cfg snippet with <!-- grub-cfg -->");
    let (snippet, _) = after.split_once("```").unwrap();
    let linux = snippet
        .lines()
        .find(|l| l.starts_with("linux "))
        .expect("the snippet has a linux line");
    let snippet = snippet.replace(linux, &format!("{linux} console=ttyS0"));
    format!(
        "serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\n{snippet}"
    )
}

/// GRUB for BIOS: `boot.img` in the MBR (the partition table kept), `core.img` in the BIOS
/// boot partition, each pointing at the next.
fn install_grub(host: &Host, work: &Path, disk: &Path) {
    let core_path = work.join("core.img");
    run(Command::new("grub-mkimage")
        .args(["-O", "i386-pc", "-p", "(hd0,gpt4)/", "-d"])
        .arg(&host.grub)
        .arg("-o")
        .arg(&core_path)
        .args(["biosdisk", "part_gpt", "ext2"]));
    let mut core = std::fs::read(&core_path).unwrap();
    assert!(core.len() as u64 <= BIOS_BYTES, "core.img is too large");
    let rest = BIOS_START / SECTOR + 1;
    core[CORE_IMG_BLOCKLIST_START..CORE_IMG_BLOCKLIST_START + 8]
        .copy_from_slice(&rest.to_le_bytes());
    let boot_img = std::fs::read(host.grub.join("boot.img")).unwrap();
    let mut mbr = boot_img[..MBR_CODE].to_vec();
    mbr[BOOT_IMG_KERNEL_SECTOR..BOOT_IMG_KERNEL_SECTOR + 8]
        .copy_from_slice(&(BIOS_START / SECTOR).to_le_bytes());
    let mut f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(&mbr).unwrap();
    f.seek(SeekFrom::Start(BIOS_START)).unwrap();
    f.write_all(&core).unwrap();
}

/// Copies the file `image` (at most `size` bytes) into `disk` at `offset`, leaving the
/// disk's holes where `image` is zeros.
fn copy_into(disk: &Path, offset: u64, size: u64, image: &Path) {
    let mut src = std::fs::File::open(image).unwrap();
    let len = src.metadata().unwrap().len();
    assert!(
        len <= size,
        "{} is larger than its partition",
        image.display()
    );
    let mut dst = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut at = offset;
    loop {
        let n = src.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            dst.seek(SeekFrom::Start(at)).unwrap();
            dst.write_all(&buf[..n]).unwrap();
        }
        at += n as u64;
    }
}
