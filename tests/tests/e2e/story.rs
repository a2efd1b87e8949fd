//! Issue 5: the demo's story as assertions, on the same lab `ota demo` runs (behind the e2e
//! proxies): four health-gated waves with low-battery devices deferring, an identical
//! redeploy with 0 bytes downloaded, a broken release rolled back by the canary and aborted,
//! and a feature flag turned on for 10 %, widened to 50 % and killed (issue 6).

use ota_demo::story::{self, StoryOptions};

use crate::world::{Backend, World, suite};

suite!(demo_story);

async fn demo_story(backend: Backend) {
    let mut w = World::start(backend, 20, |o| {
        o.battery = story::battery;
        o.image_size = 1024 * 1024;
    })
    .await;
    let opts = StoryOptions {
        quiet: true,
        ..StoryOptions::default()
    };
    let reports = story::run(&mut w.lab, &opts).await.unwrap();
    let names: Vec<&str> = reports.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    for r in &reports {
        assert!(r.ok(), "{}: {:?}", r.name, r.problems);
    }
    let [deploy, redeploy, broken, flag] = [&reports[0], &reports[1], &reports[2], &reports[3]];
    assert_eq!((deploy.deploys, deploy.deferred), (20, 2));
    assert_eq!((redeploy.skipped, redeploy.bytes), (20, 0));
    assert_eq!(broken.status, "aborted");
    assert!(broken.rolled_back >= 1);
    assert_eq!((flag.devices, flag.bytes), (20, 0));
    w.finish().await;
}
