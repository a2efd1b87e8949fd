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
        let current = root.join("current");
        let heartbeat = heartbeat_path(&root);
        let mut tick = tokio::time::interval(TOUCH_EVERY);
        loop {
            tick.tick().await;
            if running_is_healthy(&current).await {
                // A failed touch is a missed heartbeat: exactly what the probe should see.
                let _ = tokio::fs::write(&heartbeat, b"alive\n").await;
            }
        }
    })
}

/// Whether the image behind `current` is a healthy one (a missing or unreadable image is not).
async fn running_is_healthy(current: &Path) -> bool {
    use tokio::io::AsyncReadExt;
    let Ok(mut file) = tokio::fs::File::open(current).await else {
        return false;
    };
    let mut header = [0u8; 128];
    let Ok(n) = file.read(&mut header).await else {
        return false;
    };
    is_healthy(header.get(..n).unwrap_or_default())
}
