//! A `newc` cpio archive, the format of a Linux initramfs (the kernel's
//! `Documentation/driver-api/early-userspace/buffer-format.rst`), written without `cpio` or
//! root: entries are described, not copied from a tree, so a device node needs no `mknod`.

/// An archive being written.
#[derive(Debug, Default)]
pub struct Cpio {
    bytes: Vec<u8>,
    next_ino: u32,
}

const DIR: u32 = 0o040_000;
const FILE: u32 = 0o100_000;
const CHAR: u32 = 0o020_000;

impl Cpio {
    /// A directory `name` (no leading `/`).
    pub fn dir(&mut self, name: &str) {
        self.entry(name, DIR | 0o755, 0, &[]);
    }

    /// A regular file with `mode`'s permission bits.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, FILE | mode, 0, data);
    }

    /// A character device `major:minor`.
    pub fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, CHAR | 0o600, (major << 8) | minor, &[]);
    }

    /// The archive with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 0, &[]);
        self.bytes
    }

    /// `rdev` is `major << 8 | minor`.
    fn entry(&mut self, name: &str, mode: u32, rdev: u32, data: &[u8]) {
        self.next_ino += 1;
        let fields = [
            self.next_ino,
            mode,
            0, // uid
            0, // gid
            if mode & DIR == DIR { 2 } else { 1 },
            0, // mtime
            u32::try_from(data.len()).unwrap(),
            0, // dev major
            0, // dev minor
            rdev >> 8,
            rdev & 0xff,
            u32::try_from(name.len() + 1).unwrap(),
            0, // check
        ];
        self.bytes.extend_from_slice(b"070701");
        for f in fields {
            self.bytes.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }
}
