//! Benchmark driver for `scripts/bench-agent.sh`: a tiny fleet server and artifact server that
//! runs a real `ota-agent` process and measures it.
//!
//! ```text
//! cargo run --release -p ota-agent --example bench_fleet -- \
//!     --agent target/release/ota-agent --broker mqtt://127.0.0.1:1883 --dir /tmp/bench
//! ```
//!
//! It writes two deterministic artifacts (1 GiB and 256 MiB by default), signs releases for
//! them with the TEST-ONLY key A, serves them over loopback HTTP (with Range), writes an agent
//! configuration, starts the agent and then, as the fleet server (acking heartbeats):
//!
//! 1. idle: waits until the agent is online and quiet, reads its peak RSS (`VmHWM`);
//! 2. update: desired = the 1 GiB release; waits for `succeeded`; reads the peak RSS again;
//! 3. throughput: desired = the 256 MiB release; times desired → `trial` (download, verify,
//!    install) and, within it, desired → `installing` (download and verify, the artifact
//!    fsynced into the cache: the part comparable with curl|openssl) and `installing` →
//!    `trial` (the install), then `curl -s URL | openssl dgst -sha256` on the same file;
//! 4. identical redeploy: the 256 MiB release again under a new generation; bytes served
//!    during it and the time from publishing the desired state to the `skipped-identical`
//!    event.
//!
//! With `--installer ab` the agent runs the `ab` installer instead (docs/agent.md, "Gateway with
//! A/B slots"): its slots are two image files of the big artifact's size in `--dir`, the kernel
//! command line is a file saying `ota.slot=A`, the bootloader is GRUB on an environment file
//! in `--dir` (`--grub-editenv PATH`) or, without one, the `custom` backend running `true`,
//! and the reboot command is `true` (the host is never rebooted). Only steps 1 and 2 run, and
//! step 2 ends at the `rebooting` event: download, verify, write slot B, fsync, read it back,
//! try it once in the bootloader.
//!
//! Never use the test key outside tests and benchmarks.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a benchmark driver: any failure aborts the run with its message"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "a benchmark measures wall time: it reads the clock itself"
)]

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use firmware_fixtures::TestKey;
use ota_core::digest::{Digest, Hasher};
use ota_core::release::{FORMAT_VERSION, Manifest, sign};
use ota_core::wire::{
    DesiredState, Event, Heartbeat, HeartbeatAck, PROTOCOL_VERSION, Status, TopicKind, WireMessage,
    parse_device_topic,
};
use rumqttc::{AsyncClient, Event as MqttEvent, Incoming, MqttOptions, QoS};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::net::TcpListener;

const MIB: u64 = 1024 * 1024;

struct Args {
    agent: PathBuf,
    broker: String,
    dir: PathBuf,
    big: u64,
    medium: u64,
    /// `files` or `ab`.
    installer: String,
    /// GRUB's `grub-editenv`, for the `ab` installer's bootloader (else `custom` with `true`).
    grub_editenv: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        agent: PathBuf::from("target/release/ota-agent"),
        broker: "mqtt://127.0.0.1:1883".into(),
        dir: std::env::temp_dir().join("ota-bench"),
        big: 1024 * MIB,
        medium: 256 * MIB,
        installer: "files".into(),
        grub_editenv: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--agent" => a.agent = v.into(),
            "--broker" => a.broker = v,
            "--dir" => a.dir = v.into(),
            "--big-mib" => a.big = v.parse::<u64>().unwrap() * MIB,
            "--medium-mib" => a.medium = v.parse::<u64>().unwrap() * MIB,
            "--installer" if v == "files" || v == "ab" => a.installer = v,
            "--grub-editenv" => a.grub_editenv = Some(v.into()),
            _ => panic!("unknown argument {k}"),
        }
    }
    a
}

/// Writes `len` deterministic bytes to `path`; returns their digest.
fn write_artifact(path: &Path, len: u64, seed: u64) -> Digest {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut hasher = Hasher::new();
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        hasher.update(&buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
    hasher.finish()
}

fn signed_release(
    version: &str,
    security_version: u32,
    digest: Digest,
    size: u64,
    installer: &str,
) -> Vec<u8> {
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        product: firmware_fixtures::PRODUCT.to_owned(),
        version: version.to_owned(),
        security_version,
        artifact_sha256: digest.0,
        artifact_size: size,
        hardware: vec![firmware_fixtures::HARDWARE_CLASS.to_owned()],
        created: firmware_fixtures::CREATED,
        expires: None,
        installer: Some(installer.to_owned()),
        metadata: Default::default(),
        chunk_index: None,
    };
    sign(&manifest, &[TestKey::A.signing_key()])
}

/// A minimal HTTP/1.1 file server with `Range: bytes=N-` (one request per connection).
async fn serve_files(files: HashMap<String, PathBuf>, sent: Arc<AtomicU64>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let files = Arc::new(files);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let files = files.clone();
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let path = text.split(' ').nth(1).unwrap_or("/").to_owned();
                let start: u64 = text
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        if !k.eq_ignore_ascii_case("range") {
                            return None;
                        }
                        v.trim()
                            .strip_prefix("bytes=")?
                            .strip_suffix('-')?
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0);
                let Some(file) = files.get(&path) else {
                    let _ = sock
                        .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await;
                    return;
                };
                let mut f = tokio::fs::File::open(file).await.unwrap();
                let total = f.metadata().await.unwrap().len();
                let status = if start > 0 {
                    "206 Partial Content"
                } else {
                    "200 OK"
                };
                let mut h = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nETag: \"bench\"\r\nConnection: close\r\n",
                    total - start
                );
                if start > 0 {
                    h.push_str(&format!(
                        "Content-Range: bytes {start}-{}/{total}\r\n",
                        total - 1
                    ));
                }
                h.push_str("\r\n");
                if sock.write_all(h.as_bytes()).await.is_err() {
                    return;
                }
                f.seek(std::io::SeekFrom::Start(start)).await.unwrap();
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = match f.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if sock.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    sent.fetch_add(n as u64, Ordering::Relaxed);
                }
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

/// Peak and current RSS of a process, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[derive(Default)]
struct Seen {
    events: Vec<(Instant, Event)>,
    online: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    std::fs::create_dir_all(&a.dir).unwrap();
    let dir = a.dir.canonicalize().unwrap();
    let device = format!("bench-{}", std::process::id());

    let ab = a.installer == "ab";
    // The `ab` run stops at the big update: no medium artifact.
    let medium = if ab { 0 } else { a.medium };
    eprintln!(
        "writing artifacts ({} MiB, {} MiB)...",
        a.big / MIB,
        medium / MIB
    );
    let art = dir.join("artifacts");
    std::fs::create_dir_all(&art).unwrap();
    let big_digest = write_artifact(&art.join("big.bin"), a.big, 1);
    let med_digest = write_artifact(&art.join("medium.bin"), medium, 2);
    let big_release = signed_release("2.0.0", 2, big_digest, a.big, &a.installer);
    let med_release = signed_release("3.0.0", 3, med_digest, medium, &a.installer);

    let sent = Arc::new(AtomicU64::new(0));
    let base = serve_files(
        HashMap::from([
            ("/big.bin".to_owned(), art.join("big.bin")),
            ("/medium.bin".to_owned(), art.join("medium.bin")),
        ]),
        sent.clone(),
    )
    .await;

    // The agent's configuration.
    let data = dir.join("data");
    let app = dir.join("app");
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_dir_all(&app);
    std::fs::create_dir_all(&app).unwrap();
    let key = firmware_fixtures::path(&TestKey::A.public_pem_file());
    let config = dir.join("config.toml");
    let installer = if ab {
        ab_installer(&dir, a.big, a.grub_editenv.as_deref())
    } else {
        format!(
            "[installer]\nkind = \"files\"\nroot = \"{}\"\n",
            app.display()
        )
    };
    std::fs::write(
        &config,
        format!(
            r#"device_id = "{device}"
hardware_class = "{hw}"
data_dir = "{data}"
[trust]
keys = [{{ file = "{key}" }}]
[broker]
url = "{broker}"
[power]
power_supply_path = "{dir}/no-power-supply"
{installer}"#,
            hw = firmware_fixtures::HARDWARE_CLASS,
            data = data.display(),
            key = key.display(),
            broker = a.broker,
            dir = dir.display(),
        ),
    )
    .unwrap();

    // The fleet server.
    let (host, port) = a
        .broker
        .trim_start_matches("mqtt://")
        .rsplit_once(':')
        .map(|(h, p)| (h.to_owned(), p.parse::<u16>().unwrap()))
        .unwrap();
    let mut options = MqttOptions::new(format!("bench-fleet-{}", std::process::id()), host, port);
    options.set_max_packet_size(256 * 1024, 256 * 1024);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    for kind in [TopicKind::Events, TopicKind::Status, TopicKind::Heartbeat] {
        client
            .subscribe(
                format!("ota/v1/devices/{device}/{}", kind.suffix()),
                QoS::AtLeastOnce,
            )
            .await
            .unwrap();
    }
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let s = seen.clone();
    let acker = client.clone();
    tokio::spawn(async move {
        loop {
            let Ok(ev) = eventloop.poll().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let MqttEvent::Incoming(Incoming::Publish(p)) = ev else {
                continue;
            };
            let Ok((dev, kind)) = parse_device_topic(&p.topic) else {
                continue;
            };
            match kind {
                TopicKind::Events => {
                    if let Ok(e) = Event::from_cbor(&p.payload) {
                        s.lock().unwrap().events.push((Instant::now(), e));
                    }
                }
                TopicKind::Status => {
                    if let Ok(st) = Status::from_cbor(&p.payload) {
                        s.lock().unwrap().online = st.online;
                    }
                }
                TopicKind::Heartbeat => {
                    if let Ok(hb) = Heartbeat::from_cbor(&p.payload) {
                        let ack = HeartbeatAck {
                            v: PROTOCOL_VERSION,
                            seq: hb.seq,
                        };
                        let acker = acker.clone();
                        let topic = format!("ota/v1/devices/{dev}/heartbeat/ack");
                        tokio::spawn(async move {
                            let _ = acker
                                .publish(topic, QoS::AtLeastOnce, false, ack.to_cbor())
                                .await;
                        });
                    }
                }
                _ => {}
            }
        }
    });

    let wait_for = |what: &'static str, pred: Box<dyn Fn(&Seen) -> bool + Send>| {
        let seen = seen.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(600);
            loop {
                if pred(&seen.lock().unwrap()) {
                    return;
                }
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    let event_at = |generation: u64, state: &'static str| {
        let seen = seen.lock().unwrap();
        seen.events
            .iter()
            .find(|(_, e)| e.generation == generation && e.kind.name() == state)
            .map(|(t, _)| *t)
    };
    let desire = |generation: u64, release: &[u8], url: String| DesiredState {
        v: PROTOCOL_VERSION,
        generation,
        rollout_id: Some("bench".into()),
        release: release.to_vec(),
        artifact_urls: vec![url],
        force_reinstall: false,
    };
    let desired_topic = format!("ota/v1/devices/{device}/desired");

    // Start the agent.
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let child = Command::new(&a.agent)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_for("online", Box::new(|s| s.online)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (idle_peak, idle_now) = rss_kib(pid);
    println!(
        "idle: peak RSS {idle_peak} KiB ({:.1} MB), current {idle_now} KiB",
        idle_peak as f64 / 1024.0
    );

    // 1 GiB update.
    let t = Instant::now();
    client
        .publish(
            &desired_topic,
            QoS::AtLeastOnce,
            true,
            desire(1, &big_release, format!("{base}/big.bin")).to_cbor(),
        )
        .await
        .unwrap();
    // The `ab` installer's update ends, on this host, at the reboot.
    let done = if ab { "rebooting" } else { "succeeded" };
    let mut peak_during = 0;
    loop {
        peak_during = peak_during.max(rss_kib(pid).0);
        if event_at(1, done).is_some() {
            break;
        }
        if let Some((_, e)) = seen
            .lock()
            .unwrap()
            .events
            .iter()
            .find(|(_, e)| e.generation == 1 && e.kind.is_final())
        {
            panic!("the big update ended with {:?}", e.kind);
        }
        assert!(
            t.elapsed() < Duration::from_secs(900),
            "the big update timed out"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // VmHWM is read from per-CPU cached counters: take the highest value seen.
    let update_peak = rss_kib(pid).0.max(peak_during);
    let since = |state| {
        event_at(1, state)
            .map(|at| at.duration_since(t).as_secs_f64())
            .unwrap_or(f64::NAN)
    };
    println!(
        "{} update to a {} MiB artifact (desired -> {done}): peak RSS {update_peak} KiB ({:.1} MB), total {:.2} s (desired -> installing {:.2} s, installing -> {done} {:.2} s)",
        a.installer,
        a.big / MIB,
        update_peak as f64 / 1024.0,
        since(done),
        since("installing"),
        since(done) - since("installing"),
    );
    if ab {
        stop(pid, child, &client, &device).await;
        // The written slot holds the artifact.
        assert_eq!(hash_file(&dir.join("slot-b.img")), big_digest, "slot B");
        return;
    }

    // 256 MiB: desired -> trial (download + verify + install) vs curl | openssl.
    let sent_before = sent.load(Ordering::Relaxed);
    let t = Instant::now();
    client
        .publish(
            &desired_topic,
            QoS::AtLeastOnce,
            true,
            desire(2, &med_release, format!("{base}/medium.bin")).to_cbor(),
        )
        .await
        .unwrap();
    wait_for(
        "trial",
        Box::new(|s| {
            s.events
                .iter()
                .any(|(_, e)| e.generation == 2 && (e.kind.name() == "trial" || e.kind.is_final()))
        }),
    )
    .await;
    let agent_s = event_at(2, "trial")
        .expect("the medium update failed")
        .duration_since(t)
        .as_secs_f64();
    // The `installing` event: downloaded, verified and in the cache (fsynced).
    let fetched_s = event_at(2, "installing")
        .expect("no installing event")
        .duration_since(t)
        .as_secs_f64();
    wait_for(
        "succeeded",
        Box::new(|s| {
            s.events
                .iter()
                .any(|(_, e)| e.generation == 2 && e.kind.is_final())
        }),
    )
    .await;
    let served = sent.load(Ordering::Relaxed) - sent_before;
    let t = Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("curl -s {base}/medium.bin | openssl dgst -sha256"))
        .output()
        .unwrap();
    let curl_s = t.elapsed().as_secs_f64();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains(&med_digest.to_string()),
        "curl|openssl printed {printed}"
    );
    println!(
        "{} MiB: agent desired->installed (download+verify+install) {agent_s:.3} s ({:.0} MiB/s, {served} bytes served), curl|openssl {curl_s:.3} s; ratio {:.2}x",
        a.medium / MIB,
        a.medium as f64 / MIB as f64 / agent_s,
        agent_s / curl_s
    );
    println!(
        "{} MiB: of which desired->installing (download+verify, cached and fsynced) {fetched_s:.3} s, ratio {:.2}x; installing->trial (copy+verify, fsync, switch) {:.3} s",
        a.medium / MIB,
        fetched_s / curl_s,
        agent_s - fetched_s
    );

    // Identical redeploy.
    let sent_before = sent.load(Ordering::Relaxed);
    let t = Instant::now();
    client
        .publish(
            &desired_topic,
            QoS::AtLeastOnce,
            true,
            desire(3, &med_release, format!("{base}/medium.bin")).to_cbor(),
        )
        .await
        .unwrap();
    wait_for(
        "skipped-identical",
        Box::new(|s| {
            s.events
                .iter()
                .any(|(_, e)| e.generation == 3 && e.kind.is_final())
        }),
    )
    .await;
    let latency = event_at(3, "skipped-identical")
        .expect("the identical redeploy was not skipped")
        .duration_since(t);
    println!(
        "identical redeploy: {} bytes downloaded, desired published -> skipped-identical received {:.2} ms",
        sent.load(Ordering::Relaxed) - sent_before,
        latency.as_secs_f64() * 1000.0
    );

    stop(pid, child, &client, &device).await;
}

/// The SHA-256 of the file at `path`.
fn hash_file(path: &Path) -> Digest {
    let mut f = std::fs::File::open(path).unwrap();
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut f, &mut buf).unwrap();
        if n == 0 {
            return hasher.finish();
        }
        hasher.update(&buf[..n]);
    }
}

/// Stops the agent and clears its retained messages.
async fn stop(pid: u32, mut child: std::process::Child, client: &AsyncClient, device: &str) {
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = child.wait();
    for kind in ["desired", "reported", "status"] {
        let _ = client
            .publish(
                format!("ota/v1/devices/{device}/{kind}"),
                QoS::AtLeastOnce,
                true,
                Vec::new(),
            )
            .await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// The `[installer]` section of the `ab` run: two `size`-byte slot image files (sparse), the
/// command line `ota.slot=A` (so slot B is written), GRUB on an environment file when
/// `grub_editenv` is given (else the `custom` backend running `true`), `true` as the reboot.
fn ab_installer(dir: &Path, size: u64, grub_editenv: Option<&Path>) -> String {
    for slot in ["slot-a.img", "slot-b.img"] {
        let path = dir.join(slot);
        let _ = std::fs::remove_file(&path);
        std::fs::File::create(&path).unwrap().set_len(size).unwrap();
    }
    std::fs::write(dir.join("cmdline"), "root=/dev/sda2 ro ota.slot=A\n").unwrap();
    let bootloader = match grub_editenv {
        Some(editenv) => {
            let env = dir.join("grubenv");
            let _ = std::fs::remove_file(&env);
            let status = Command::new(editenv)
                .arg(&env)
                .arg("create")
                .status()
                .unwrap();
            assert!(status.success(), "grub-editenv create failed");
            format!(
                "kind = \"grub\"\nenv_file = \"{}\"\neditenv = \"{}\"\n",
                env.display(),
                editenv.display()
            )
        }
        None => {
            "kind = \"custom\"\ntry_command = [\"true\"]\nboot_command = [\"true\"]\n".to_owned()
        }
    };
    format!(
        "[installer]\nkind = \"ab\"\nslot_a = \"{a}\"\nslot_b = \"{b}\"\ncmdline = \"{c}\"\nreboot_command = [\"true\"]\n[installer.bootloader]\n{bootloader}",
        a = dir.join("slot-a.img").display(),
        b = dir.join("slot-b.img").display(),
        c = dir.join("cmdline").display(),
    )
}
