//! Truthful states after an abort, with real agents: the aborted rollout follows every device
//! it sent back until the device reports that it runs its known-good release again, an agent
//! that is down during the abort included (docs/rollouts.md, "After the abort").

use serde_json::json;

use crate::world::{Backend, World, suite};

suite!(an_abort_follows_real_agents_back_to_their_known_good_release);

/// Three agents commit 2.0.0; one of them is stopped; an operator aborts. The two running
/// agents install the factory release again and the rollout counts them `back`; the stopped
/// one stays `pending` until its agent starts and answers, then it is `back` too. The totals
/// keep saying what the devices did with 2.0.0 (three succeeded).
async fn an_abort_follows_real_agents_back_to_their_known_good_release(backend: Backend) {
    let mut w = World::start(backend, 3, |_| {}).await;
    let api = w.lab.api().clone();
    let factory = w.lab.factory().digest;
    let v2 = w.release("2.0.0", true).await;
    let id = w.rollout(&v2, &[100], json!({ "bake_secs": 3600 })).await;
    w.converged(&v2.digest).await;
    w.wait_rollout(id, |r| r["totals"]["succeeded"] == 3).await;
    w.lab.devices_mut()[2].stop().await.unwrap();

    let view = api.operate(id, "abort").await.unwrap();
    assert_eq!(view["recall"]["sent"], 3, "{view:#}");
    let view = w
        .wait_rollout(id, |r| {
            r["recall"]["back"] == 2 && r["recall"]["pending"] == 1
        })
        .await;
    assert_eq!(view["status"], "aborted");
    assert_eq!(view["totals"]["succeeded"], 3, "{view:#}");
    for d in &w.lab.devices()[..2] {
        assert_eq!(d.running(), Some(factory), "{}", d.id());
    }

    w.lab.devices_mut()[2].start().await.unwrap();
    let view = w.wait_rollout(id, |r| r["recall"]["back"] == 3).await;
    assert_eq!(
        view["recall"],
        json!({ "sent": 3, "pending": 0, "back": 3, "failed": 0, "superseded": 0 }),
        "{view:#}"
    );
    w.converged(&factory).await;
    let events = api
        .events(&[("kind", "device-recalled"), ("rollout", &id.to_string())])
        .await
        .unwrap();
    assert_eq!(events.len(), 3, "{events:#?}");
    w.finish().await;
}
