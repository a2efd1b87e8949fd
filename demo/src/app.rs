//! The simulated application of a device: what runs from the installed release.
//!
//! The files installer points `<root>/current` at the running release's image. The
//! application reads the image's header line ([`crate::firmware::is_healthy`]) and, while the
//! image is a healthy one, touches `<root>/heartbeat` every [`TOUCH_EVERY`]: the agent's
//! `heartbeat` health probe checks that file. A broken image "crashes on start": it never
//! touches the file, so its trial times out and the agent falls back by itself.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::firmware::is_healthy;

/// How often a healthy application touches its heartbeat file.
pub const TOUCH_EVERY: Duration = Duration::from_millis(250);

/// The heartbeat file of the application installed under `root`.
pub fn heartbeat_path(root: &Path) -> PathBuf {
    root.join("heartbeat")
}

/// Starts the application of the device whose install root is `root`; it runs until the
/// handle is aborted.
pub fn spawn(root: PathBuf) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TOUCH_EVERY);
        loop {
            tick.tick().await;
            let root = root.clone();
            // Small synchronous file operations: off the runtime's worker threads.
            let _ = tokio::task::spawn_blocking(move || beat(&root)).await;
        }
    })
}

/// One heartbeat of the application running the image `current` points at, if it is a
/// healthy one. The file is written under a temporary name and renamed over the heartbeat
/// only if `current` still points at the same image afterwards, so the heartbeat's time is
/// always earlier than a switch of `current` that happened after it was written: the image
/// that was replaced (the old "process") can never vouch for the new one, however late the
/// rename comes (issue 19: under load, a healthy image's late heartbeat made the probe pass
/// for a broken release installed meanwhile). A failed touch is a missed heartbeat: exactly
/// what the probe should see.
fn beat(root: &Path) {
    let current = root.join("current");
    let Ok(target) = std::fs::read_link(&current) else {
        return;
    };
    if !is_healthy_image(&root.join(&target)) {
        return;
    }
    let heartbeat = heartbeat_path(root);
    let tmp = root.join("heartbeat.tmp");
    if std::fs::write(&tmp, b"alive\n").is_err() {
        return;
    }
    if std::fs::read_link(&current).is_ok_and(|now| now == target) {
        let _ = std::fs::rename(&tmp, &heartbeat);
    } else {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Whether `image` is a healthy one (a missing or unreadable image is not).
fn is_healthy_image(image: &Path) -> bool {
    use std::io::Read;
    let Ok(mut file) = std::fs::File::open(image) else {
        return false;
    };
    let mut header = [0u8; 128];
    let Ok(n) = file.read(&mut header) else {
        return false;
    };
    is_healthy(header.get(..n).unwrap_or_default())
}
