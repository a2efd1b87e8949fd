//! Issue 16: the operator console in a real browser. A lab (real server, real agents) gets a
//! good and a broken release, a flag and a forced reinstall awaiting approval; then
//! `tests/browser/console.test.mjs` drives headless Chromium through the console (sign-in,
//! create form and plan, live rollout to completed, broken canary aborted and rolled back,
//! kill switch, role and CSRF refusals, axe-core on every page, screenshots).
//!
//! Needs Chromium and the node project's packages: `.ci/run` installs Debian's `chromium` and
//! runs `npm ci` in `tests/browser`, then sets `OTA_TEST_CHROMIUM`. Screenshots go to
//! `target/console-browser/` (`OTA_BROWSER_OUT` overrides it).

use std::path::PathBuf;
use std::time::Duration;

use ota_demo::lab::{OPERATOR, STEERER};
use serde_json::json;

use crate::world::{Backend, World};

/// Devices in the lab.
const DEVICES: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium and tests/browser/node_modules: set OTA_TEST_CHROMIUM (.ci/run does)"]
async fn issue16_the_console_in_a_real_browser() {
    let chromium = std::env::var("OTA_TEST_CHROMIUM")
        .expect("OTA_TEST_CHROMIUM: the Chromium binary (e.g. /usr/bin/chromium)");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let browser_dir = root.join("tests").join("browser");
    assert!(
        browser_dir
            .join("node_modules")
            .join("playwright-core")
            .is_dir(),
        "run `npm ci` in {} first",
        browser_dir.display()
    );
    let out = std::env::var_os("OTA_BROWSER_OUT").map_or_else(
        || root.join("target").join("console-browser"),
        PathBuf::from,
    );

    let w = World::start(Backend::Embedded, DEVICES, |o| {
        o.trial_timeout = Duration::from_secs(3);
    })
    .await;
    let v2 = w.release("2.0.0", true).await;
    let v3 = w.release("3.0.0", false).await;
    // Forced reinstall of the factory release: it waits for an approver.
    let approval = w
        .lab
        .api()
        .create_rollout(&json!({
            "release": w.lab.factory().digest.to_string(),
            "filter": w.lab.filter(),
            "force_reinstall": true,
        }))
        .await
        .unwrap();
    assert_eq!(approval["status"], "awaiting-approval");
    let approval_id = approval["id"].as_i64().unwrap();
    w.lab
        .api()
        .flag_set("new-ui", true, 50.0, "all")
        .await
        .unwrap();

    let base = w.lab.server().unwrap().base_url();
    let status = tokio::process::Command::new("node")
        .arg("console.test.mjs")
        .current_dir(&browser_dir)
        .env("OTA_CONSOLE_URL", &base)
        .env("OTA_CONSOLE_ADMIN_TOKEN", OPERATOR.1)
        .env("OTA_CONSOLE_OPERATOR_TOKEN", STEERER.1)
        .env("OTA_CONSOLE_GOOD_VERSION", &v2.version)
        .env("OTA_CONSOLE_BROKEN_VERSION", &v3.version)
        .env("OTA_CONSOLE_APPROVAL_ROLLOUT", approval_id.to_string())
        .env("OTA_CONSOLE_FLAG", "new-ui")
        .env("OTA_CONSOLE_DEVICES", DEVICES.to_string())
        .env("OTA_BROWSER_OUT", &out)
        .env("OTA_TEST_CHROMIUM", &chromium)
        .kill_on_drop(true)
        .status()
        .await
        .expect("node");
    assert!(status.success(), "the browser checks failed: {status}");
}
