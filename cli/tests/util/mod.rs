//! Helpers for the `ota` integration tests: run the built binary in a temporary directory,
//! generate keys and artifacts, call the real openssl.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: a failure here is a failing test"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The openssl binary the interop tests use.
pub(crate) const OPENSSL: &str = "/usr/bin/openssl";

/// The outcome of one `ota` (or openssl) run.
#[derive(Debug)]
pub(crate) struct Run {
    /// Exit status (`-1` if killed by a signal).
    pub(crate) code: i32,
    /// Standard output.
    pub(crate) stdout: String,
    /// Standard error.
    pub(crate) stderr: String,
}

impl Run {
    fn from_output(output: Output) -> Self {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Asserts success and returns stdout.
    #[track_caller]
    pub(crate) fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "expected success, got {self:#?}");
        &self.stdout
    }

    /// Asserts exit status `code` with exactly one stderr line `error: ...`, and returns it.
    #[track_caller]
    pub(crate) fn fails(&self, code: i32) -> &str {
        assert_eq!(self.code, code, "unexpected exit status: {self:#?}");
        let line = self.stderr.strip_suffix('\n').unwrap_or(&self.stderr);
        assert!(
            !line.is_empty() && !line.contains('\n'),
            "stderr must be exactly one line: {self:#?}"
        );
        assert!(
            line.starts_with("error: "),
            "stderr must start with `error: `: {self:#?}"
        );
        for bad in [
            "panicked",
            "RUST_BACKTRACE",
            "stack backtrace",
            "internal error",
        ] {
            assert!(!line.contains(bad), "looks like a panic: {self:#?}");
        }
        line
    }
}

/// The operator token of [`Dir::start_server`]'s server.
pub(crate) const TOKEN: &str = "alice-token-0123456789";

/// The token of [`Dir::start_server`]'s second operator, `ada`, who has the approver role.
pub(crate) const APPROVER_TOKEN: &str = "ada-approver-token-0123";

/// An `ota server` child process, killed on drop.
pub(crate) struct ServerProcess {
    child: std::process::Child,
    /// Its base URL (`http://127.0.0.1:PORT`).
    pub(crate) base: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory in which `ota` runs.
pub(crate) struct Dir {
    tmp: tempfile::TempDir,
}

impl Dir {
    /// A fresh empty directory.
    pub(crate) fn new() -> Self {
        Dir {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    /// The directory.
    pub(crate) fn root(&self) -> &Path {
        self.tmp.path()
    }

    /// A path inside the directory.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Writes a file and returns its path.
    pub(crate) fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Reads a file.
    pub(crate) fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    /// Names of the files in the directory, sorted.
    pub(crate) fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.root())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Starts `ota server` in this directory (ports 0, SQLite in `./data`) trusting the public
    /// key files `trust`, with operators `alice` (admin, [`TOKEN`]) and `ada` (approver,
    /// [`APPROVER_TOKEN`]); waits for its address.
    pub(crate) fn start_server(&self, trust: &[&str]) -> ServerProcess {
        let keys: Vec<String> = trust.iter().map(|k| format!("{k:?}")).collect();
        let config = format!(
            "data_dir = \"./data\"\n[http]\nlisten = \"127.0.0.1:0\"\n[mqtt]\nlisten = \"127.0.0.1:0\"\n\
             [trust]\nkeys = [{}]\n\
             [[operators]]\nname = \"alice\"\ntoken = \"{TOKEN}\"\n\
             [[operators]]\nname = \"ada\"\ntoken = \"{APPROVER_TOKEN}\"\nrole = \"approver\"\n",
            keys.join(", ")
        );
        self.write("server.toml", config.as_bytes());
        self.ota_server("server.toml")
    }

    /// Runs `ota ARGS` with this directory as the working directory.
    pub(crate) fn ota(&self, args: &[&str]) -> Run {
        self.ota_env(args, &[])
    }

    /// Runs `ota ARGS` with extra environment variables.
    pub(crate) fn ota_env(&self, args: &[&str], envs: &[(&str, &str)]) -> Run {
        let output = Command::new(env!("CARGO_BIN_EXE_ota"))
            .args(args)
            .current_dir(self.root())
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .envs(envs.iter().copied())
            .output()
            .unwrap();
        Run::from_output(output)
    }

    /// Starts `ota server --config CONFIG` here and waits for the base URL it prints
    /// (`http://...` or `https://...`); the process is killed when dropped.
    pub(crate) fn ota_server(&self, config: &str) -> ServerProcess {
        use std::io::{BufRead, BufReader};
        use std::process::Stdio;
        let mut child = Command::new(env!("CARGO_BIN_EXE_ota"))
            .args(["server", "--config", config])
            .current_dir(self.root())
            .env("OTA_LOG", "error")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut base = None;
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("ota server: ") {
                base = rest.split_whitespace().next().map(str::to_string);
                break;
            }
        }
        let base = base.expect("ota server prints its address");
        ServerProcess { child, base }
    }

    /// Runs the real openssl with this directory as the working directory.
    pub(crate) fn openssl(&self, args: &[&str]) -> Run {
        assert!(
            Path::new(OPENSSL).exists(),
            "{OPENSSL} is needed for the openssl interop tests"
        );
        let output = Command::new(OPENSSL)
            .args(args)
            .current_dir(self.root())
            .output()
            .unwrap();
        Run::from_output(output)
    }

    /// `ota key gen --out NAME`; returns the printed key id.
    pub(crate) fn keygen(&self, name: &str) -> String {
        let run = self.ota(&["key", "gen", "--out", name]);
        key_id_line(run.ok())
    }

    /// A deterministic pseudo-random artifact of `len` bytes.
    pub(crate) fn artifact(&self, name: &str, len: usize) -> PathBuf {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ len as u64;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        self.write(name, &bytes)
    }

    /// `ota release sign` with the usual test fields and `extra` arguments.
    pub(crate) fn sign(&self, keys: &[&str], artifact: &str, out: &str, extra: &[&str]) -> Run {
        let mut args = vec!["release", "sign"];
        for key in keys {
            args.extend(["--key", key]);
        }
        args.extend([
            "--artifact",
            artifact,
            "--version",
            "2.4.1",
            "--security-version",
            "7",
            "--hw",
            "gw-a",
            "--hw",
            "gw-b",
            "--product",
            "gateway-fw",
            "--out",
            out,
        ]);
        args.extend_from_slice(extra);
        self.ota(&args)
    }

    /// `ota release verify --release RELEASE` trusting `trust`, with `extra` arguments.
    pub(crate) fn verify(&self, trust: &[&str], release: &str, extra: &[&str]) -> Run {
        let mut args = vec!["release", "verify", "--release", release];
        for key in trust {
            args.extend(["--trust", key]);
        }
        args.extend_from_slice(extra);
        self.ota(&args)
    }
}

/// The key id from `ota key gen`'s `key id:` line.
pub(crate) fn key_id_line(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("key id:"))
        .map(|id| id.trim().to_owned())
        .unwrap_or_else(|| panic!("no key id line in {stdout:?}"))
}

/// Unix mode bits of a file (permissions only).
#[cfg(unix)]
pub(crate) fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A fake fleet server on port 0 answering every request with `body` (200, JSON), for
/// `requests` requests.
pub(crate) fn fake_server(body: String, requests: usize) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
                line.clear();
            }
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(answer.as_bytes()).unwrap();
        }
    });
    base
}
