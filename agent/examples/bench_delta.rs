//! Benchmark driver for `scripts/bench-delta.sh` (issue 18): what one delta update costs a
//! device, against a full download of the same artifact.
//!
//! ```text
//! cargo run --release -p ota-agent --example bench_delta -- \
//!     --old OLD_FILE --new NEW_FILE [--min 16384 --avg 65536 --max 262144] [--runs 1] [--dir D] \
//!     [--modes full,delta[,delta-kept,slot,slot-kept]]
//! ```
//!
//! It hashes both files, cuts the new one into its chunk index with the agent's own chunker
//! ([`ota_agent::delta::index_file`], the given FastCDC bounds), serves the new artifact and its
//! encoded index over loopback HTTP/1.1 (keep-alive, single-range `Range` → 206 with
//! `Content-Range`) at `/artifacts/{sha256}` as the fleet server does, and then runs the
//! agent's real [`Downloader`] in a child process of this binary (`--child`), once per mode and
//! run, each time in a fresh data directory:
//!
//! - full: delta off, cold cache;
//! - delta: the old file placed in the cache as `<data>/cache/<old sha256>` (as the agent keeps
//!   a downloaded artifact; no kept index, so the device cuts the old file during the update,
//!   which is counted in the delta's time), and the request carries the [`ChunkIndexRef`] of
//!   the index;
//! - delta-kept: the same with the old release's index kept in `<data>/cache/index/`, the
//!   device's steady state: the agent keeps the signed index of every release it downloads
//!   (whether by delta or in full after fetching the index), so only a release that came
//!   without one (a factory image) is cut during an update;
//! - slot: an empty cache, the old file passed as the `ab` installer's running slot (no kept
//!   index: the slot is cut, and hashed whole, during the update);
//! - slot-kept: the same with the old release's index kept in `<data>/cache/index/` (as after
//!   an earlier delta), so the slot is not cut.
//!
//! It prints one JSON line: sizes, chunk count, index bytes, each mode's (keyed by its name,
//! `-` as `_`) bytes received (the delta's index included), Range requests, wall times (best of `--runs`)
//! and each child's peak RSS (`VmHWM` read from `/proc/self/status` by the child after its
//! download: the whole download process, runtime and HTTP client included, not the server).
//!
//! Simplifications against a real device: the server runs in the parent process on the same
//! two cores, over loopback (no latency, no bandwidth limit: the time ratio is a CPU and I/O
//! bound, not a network one); the files are in the page cache; the child does only the download
//! (no manifest verification, no install, no MQTT); the index is cut here rather than by
//! `ota release sign` (the same function).
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
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ota_agent::cache::Cache;
use ota_agent::delta::{SeedImage, index_file};
use ota_agent::download::{DownloadConfig, DownloadRequest, Downloader};
use ota_agent::storage::FsStorage;
use ota_core::delta::ChunkParams;
use ota_core::digest::{Digest, Hasher};
use ota_core::release::ChunkIndexRef;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Args {
    old: PathBuf,
    new: PathBuf,
    params: ChunkParams,
    runs: u32,
    dir: PathBuf,
    modes: Vec<String>,
}

fn args(argv: &[String]) -> Args {
    let mut a = Args {
        old: PathBuf::new(),
        new: PathBuf::new(),
        params: ChunkParams::DEFAULT,
        runs: 1,
        dir: std::env::temp_dir().join("ota-bench-delta-run"),
        modes: vec!["full".into(), "delta".into()],
    };
    let mut it = argv.iter();
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--old" => a.old = v.into(),
            "--new" => a.new = v.into(),
            "--min" => a.params.min = v.parse().unwrap(),
            "--avg" => a.params.avg = v.parse().unwrap(),
            "--max" => a.params.max = v.parse().unwrap(),
            "--runs" => a.runs = v.parse::<u32>().unwrap().max(1),
            "--dir" => a.dir = v.into(),
            "--modes" => a.modes = v.split(',').map(str::to_owned).collect(),
            _ => panic!("unknown argument {k}"),
        }
    }
    assert!(
        !a.old.as_os_str().is_empty() && !a.new.as_os_str().is_empty(),
        "--old and --new are required"
    );
    a.params.check().unwrap();
    for m in &a.modes {
        assert!(
            ["full", "delta", "delta-kept", "slot", "slot-kept"].contains(&m.as_str()),
            "unknown mode {m}"
        );
    }
    a
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("--child") {
        child(&argv[1..]);
    } else {
        parent(args(&argv));
    }
}

/// The SHA-256 of a file, streamed.
fn digest_file(path: &Path) -> (Digest, u64) {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    (h.finish(), len)
}

fn parent(a: Args) {
    let (old_digest, old_size) = digest_file(&a.old);
    let (new_digest, new_size) = digest_file(&a.new);
    let t = Instant::now();
    let index = index_file(&a.new, a.params).unwrap();
    let index_secs = t.elapsed().as_secs_f64();
    let cbor = index.to_cbor();
    let index_ref = ChunkIndexRef {
        sha256: Digest::of(&cbor).0,
        size: cbor.len() as u64,
    };
    std::fs::create_dir_all(&a.dir).unwrap();
    let index_path = a.dir.join("index.chunks");
    std::fs::write(&index_path, &cbor).unwrap();

    let files = HashMap::from([
        (format!("/artifacts/{new_digest}"), a.new.clone()),
        (format!("/artifacts/{}", index_ref.digest()), index_path),
    ]);
    let sent = Arc::new(AtomicU64::new(0));
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let base = server.block_on(serve_files(files, sent.clone()));
    let url = format!("{base}/artifacts/{new_digest}");

    // The kept index of the old release (`*-kept`: as if the device had it in `cache/index/`).
    let old_index = a
        .modes
        .iter()
        .any(|m| m.ends_with("-kept"))
        .then(|| index_file(&a.old, a.params).unwrap().to_cbor());
    let mut best: HashMap<&str, Value> = HashMap::new();
    let mut served: HashMap<&str, u64> = HashMap::new();
    for _ in 0..a.runs {
        for mode in &a.modes {
            let mode = mode.as_str();
            let data = a.dir.join(format!("data-{mode}"));
            let _ = std::fs::remove_dir_all(&data);
            std::fs::create_dir_all(data.join("cache")).unwrap();
            if mode.starts_with("delta") {
                std::fs::copy(&a.old, data.join("cache").join(old_digest.to_string())).unwrap();
            }
            if mode.ends_with("-kept") {
                let cache = Cache::open(FsStorage::shared(), &data).unwrap();
                cache
                    .keep_index(&old_digest, old_index.as_deref().unwrap())
                    .unwrap();
            }
            sent.store(0, Ordering::Relaxed);
            let out = Command::new(std::env::current_exe().unwrap())
                .arg("--child")
                .args([mode, &url, &new_digest.to_string(), &new_size.to_string()])
                .args([&index_ref.digest().to_string(), &index_ref.size.to_string()])
                .arg(&data)
                .arg(&a.old)
                .args([old_digest.to_string(), old_size.to_string()])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{mode} child failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            served.insert(mode, sent.load(Ordering::Relaxed));
            if best
                .get(mode)
                .is_none_or(|b| b["secs"].as_f64() > v["secs"].as_f64())
            {
                best.insert(mode, v);
            }
            let _ = std::fs::remove_dir_all(&data);
        }
    }
    for (mode, v) in &best {
        assert!(
            *mode == "full" || v["delta"].is_object(),
            "the {mode} run fell back to a full download"
        );
    }
    let mut line = json!({
        "old": a.old, "new": a.new,
        "old_size": old_size, "new_size": new_size,
        "params": {"min": a.params.min, "avg": a.params.avg, "max": a.params.max},
        "chunks": index.chunks.len(),
        "index_bytes": cbor.len(),
        "index_secs": index_secs,
        "runs": a.runs,
    });
    for (mode, v) in best {
        let key = mode.replace('-', "_");
        line[&key] = v;
        line[format!("served_{key}")] = json!(served[mode]);
    }
    println!("{line}");
}

/// `--child MODE URL DIGEST SIZE INDEX_SHA256 INDEX_SIZE DATA OLD OLD_SHA256 OLD_SIZE`: one
/// download with the agent's downloader on the agent's runtime (current thread); prints its
/// cost as JSON. The `slot` modes pass the old file as the running slot.
fn child(argv: &[String]) {
    let [
        mode,
        url,
        digest,
        size,
        index_sha,
        index_size,
        data,
        old,
        old_digest,
        old_size,
    ] = argv
    else {
        panic!("--child MODE URL DIGEST SIZE INDEX_SHA256 INDEX_SIZE DATA OLD OLD_SHA256 OLD_SIZE");
    };
    let slot = mode.starts_with("slot").then(|| SeedImage {
        path: old.into(),
        digest: old_digest.parse().unwrap(),
        size: old_size.parse().unwrap(),
    });
    let digest: Digest = digest.parse().unwrap();
    let size: u64 = size.parse().unwrap();
    let index_ref = ChunkIndexRef {
        sha256: index_sha.parse::<Digest>().unwrap().0,
        size: index_size.parse().unwrap(),
    };
    let delta = mode != "full";
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (done, secs) = runtime.block_on(async move {
        let cache = Cache::open(FsStorage::shared(), Path::new(data)).unwrap();
        let mut config = DownloadConfig::new();
        config.delta = delta;
        let downloader = Downloader::new(cache, &config).unwrap();
        let req = DownloadRequest::new(url.clone(), digest, size)
            .with_chunk_index(delta.then_some(index_ref))
            .with_running_slot(slot);
        let t = Instant::now();
        let done = downloader.download(&req, |_| {}).await.unwrap();
        (done, t.elapsed().as_secs_f64())
    });
    assert_eq!(std::fs::metadata(&done.path).unwrap().len(), size);
    let stats = done.delta.map(|d| {
        json!({
            "index_bytes": d.index_bytes,
            "fetched_bytes": d.fetched_bytes,
            "copied_bytes": d.copied_bytes,
            "requests": d.requests,
        })
    });
    let line = json!({
        "mode": mode,
        "received": done.received,
        "secs": secs,
        "vmhwm_kib": vm_hwm_kib(),
        "delta": stats,
    });
    println!("{line}");
}

/// This process's peak resident set size in KiB (`VmHWM`).
fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A minimal HTTP/1.1 file server (keep-alive; GET with no Range → 200, with one
/// `bytes=A-B` / `bytes=A-` range → 206); counts the body bytes it sends in `sent`.
async fn serve_files(files: HashMap<String, PathBuf>, sent: Arc<AtomicU64>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let files = Arc::new(files);
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let _ = sock.set_nodelay(true);
            tokio::spawn(connection(sock, files.clone(), sent.clone()));
        }
    });
    format!("http://{addr}")
}

/// Serves the requests of one connection until it closes.
async fn connection(
    mut sock: TcpStream,
    files: Arc<HashMap<String, PathBuf>>,
    sent: Arc<AtomicU64>,
) {
    let mut pending: Vec<u8> = Vec::new();
    let mut b = vec![0u8; 4096];
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let end = loop {
            if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match sock.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&b[..n]),
            }
        };
        let head = String::from_utf8_lossy(&pending[..end]).into_owned();
        pending.drain(..end);
        let path = head.split(' ').nth(1).unwrap_or("/");
        let range = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            if !k.eq_ignore_ascii_case("range") {
                return None;
            }
            let spec = v.trim().strip_prefix("bytes=")?;
            let (a, b) = spec.split_once('-')?;
            Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()))
        });
        let Some(file) = files.get(path) else {
            let reply = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
            if sock.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
            continue;
        };
        let mut f = tokio::fs::File::open(file).await.unwrap();
        let total = f.metadata().await.unwrap().len();
        let (start, last) = match range {
            Some((a, b)) => (a, b.unwrap_or(total - 1).min(total - 1)),
            None => (0, total.saturating_sub(1)),
        };
        if range.is_some() && start >= total {
            let reply = format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nContent-Length: 0\r\n\r\n"
            );
            if sock.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        let len = if total == 0 { 0 } else { last + 1 - start };
        let mut h = format!(
            "HTTP/1.1 {}\r\nContent-Length: {len}\r\nAccept-Ranges: bytes\r\nETag: \"bench\"\r\n",
            if range.is_some() {
                "206 Partial Content"
            } else {
                "200 OK"
            }
        );
        if range.is_some() {
            h.push_str(&format!("Content-Range: bytes {start}-{last}/{total}\r\n"));
        }
        h.push_str("\r\n");
        if sock.write_all(h.as_bytes()).await.is_err() {
            return;
        }
        f.seek(std::io::SeekFrom::Start(start)).await.unwrap();
        let mut left = len;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match f.read(&mut buf[..want]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if sock.write_all(&buf[..n]).await.is_err() {
                return;
            }
            sent.fetch_add(n as u64, Ordering::Relaxed);
            left -= n as u64;
        }
    }
}
