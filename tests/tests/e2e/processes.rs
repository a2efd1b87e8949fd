//! Real processes a fault test kills or restarts: a private PostgreSQL cluster
//! ([`PrivatePostgres`], crashed with `pg_ctl stop -m immediate` and started again) and
//! `ota server` processes ([`ServerProcess`], killed with SIGKILL, frozen with SIGSTOP).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A PostgreSQL cluster of its own (the binaries of `OTA_TEST_PG_BIN`, e.g.
/// `/usr/lib/postgresql/15/bin`) in a temporary directory, on a free loopback port, trust
/// authentication, database `postgres`; stopped when dropped. Run as the `postgres` user when
/// the test runs as root (PostgreSQL refuses to run as root).
#[derive(Debug)]
pub struct PrivatePostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl PrivatePostgres {
    /// Creates the cluster (`initdb`) and starts it.
    pub fn start() -> PrivatePostgres {
        let bin = PathBuf::from(std::env::var("OTA_TEST_PG_BIN").expect(
            "set OTA_TEST_PG_BIN to PostgreSQL's bin directory (e.g. /usr/lib/postgresql/15/bin)",
        ));
        let dir = tempfile::Builder::new()
            .prefix("ota-pg.")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        if is_root() {
            // The directory and its parent must be the postgres user's to use.
            for path in [dir.path(), data.as_path()] {
                run(Command::new("chown").args(["postgres:postgres"]).arg(path));
            }
        }
        let pg = PrivatePostgres {
            bin,
            data,
            port: free_port(),
            _dir: dir,
        };
        let initdb = pg.bin.join("initdb");
        run(pg
            .as_owner(&initdb)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&pg.data));
        pg.ctl(&["start"]);
        pg
    }

    /// Where the cluster listens.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The database URL of this cluster reached at `addr` (its own address, or a proxy's).
    pub fn url_via(&self, addr: SocketAddr) -> String {
        format!("postgres://postgres@{addr}/postgres")
    }

    /// The database URL of this cluster.
    pub fn url(&self) -> String {
        self.url_via(self.addr())
    }

    /// Stops the cluster as a crash would (`pg_ctl stop -m immediate`: no checkpoint, every
    /// connection cut), keeps it down for `down`, then starts it again (it replays its WAL).
    pub async fn crash_for(&self, down: Duration) {
        self.ctl(&["stop", "-m", "immediate"]);
        tokio::time::sleep(down).await;
        self.ctl(&["start"]);
    }

    /// `pg_ctl ARGS` on this cluster's directory, its port and socket directory set, waiting
    /// for the operation to finish.
    fn ctl(&self, args: &[&str]) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.data.display()
        );
        let mut cmd = self.as_owner(&self.bin.join("pg_ctl"));
        cmd.args(args)
            .args(["-w", "-s", "-D"])
            .arg(&self.data)
            .args(["-o", &options])
            .arg("-l")
            .arg(self.data.join("server.log"));
        run(&mut cmd);
    }

    /// A command running `program` as the cluster's owner.
    fn as_owner(&self, program: &Path) -> Command {
        if is_root() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .as_owner(&self.bin.join("pg_ctl"))
            .args(["stop", "-m", "immediate", "-s", "-D"])
            .arg(&self.data)
            .status();
    }
}

/// Runs `cmd`, panicking with its output unless it succeeds.
fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// A loopback port free right now (bound, then released), for servers that cannot be told to
/// pick one themselves (PostgreSQL, nats-server's routes and listeners).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The last `lines` lines of `log` under a `--- label ---` header (for failure messages).
pub fn tail(label: &str, log: &str, lines: usize) -> String {
    let last: Vec<&str> = log.lines().rev().take(lines).collect();
    let mut out = format!("--- {label} ---\n");
    for line in last.iter().rev() {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// An `ota server` process (the binary of `OTA_TEST_OTA_BIN`), its log in a file; killed
/// (SIGKILL) when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    base: String,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts `ota server --config CONFIG` in `dir` and waits until it prints its address.
    pub fn start(dir: &Path, config: &Path, name: &str) -> ServerProcess {
        let bin = std::env::var("OTA_TEST_OTA_BIN")
            .expect("set OTA_TEST_OTA_BIN to the `ota` binary (cargo build --bin ota)");
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .args(["server", "--config"])
            .arg(config)
            .current_dir(dir)
            .env("OTA_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        let deadline = ota_server::clock::monotonic_now() + Duration::from_secs(60);
        let base = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let printed = text.lines().find_map(|l| {
                let rest = l.strip_prefix("ota server: ")?;
                rest.split_whitespace().next().map(str::to_string)
            });
            if let Some(base) = printed {
                break base;
            }
            assert!(
                ota_server::clock::monotonic_now() < deadline,
                "{name} did not print its address:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        ServerProcess { child, base, log }
    }

    /// Its base URL (`http://127.0.0.1:PORT`).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Its HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.base.trim_start_matches("http://").parse().unwrap()
    }

    /// `kill -9`: the process ends at once, nothing is given up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `kill -STOP`: the process stands still (a paused VM, a long GC pause) until
    /// [`thaw`](Self::thaw); its sockets stay open.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// `kill -CONT`: a frozen process runs on from where it stood.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        run(Command::new("kill")
            .arg(signal)
            .arg(self.child.id().to_string()));
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
