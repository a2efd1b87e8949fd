//! Webhook delivery: every committed audit event, as JSON, to the configured URLs.
//!
//! Events are queued (at most [`QUEUE`] per webhook) by the database's [`EventSink`] without
//! waiting, for every webhook whose `events` list is empty or names the event's kind; one
//! background task per webhook POSTs them in order. Each delivery is tried up to [`ATTEMPTS`] times (timeout 10 s, pauses of
//! 1, 2, 4, ... s); then it is given up and counted. When the queue is full, events are dropped
//! and counted: a slow or failing webhook never slows a rollout.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::WebhookConfig;
use crate::db::{EventRecord, EventSink};
use crate::event_kinds::EventKind;
use crate::fleet::{Counters, Shared};

/// Events waiting for delivery at most.
pub const QUEUE: usize = 10_000;
/// Tries per event and webhook.
pub const ATTEMPTS: u32 = 5;
/// Timeout of one POST.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Starts one delivery task per webhook (a dead webhook never delays another); returns the
/// sink to install on the database and the tasks.
pub fn start(hooks: Vec<WebhookConfig>, shared: Arc<Shared>) -> (EventSink, Vec<JoinHandle<()>>) {
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| e.to_string());
    let mut queues = Vec::new();
    let mut tasks = Vec::new();
    for hook in hooks {
        let (tx, mut rx) = mpsc::channel::<EventRecord>(QUEUE);
        // The configuration was checked: every name is a kind (`Config::validate`).
        let kinds: Vec<EventKind> = hook
            .events
            .iter()
            .filter_map(|k| EventKind::parse(k))
            .collect();
        queues.push((tx, kinds));
        let shared = shared.clone();
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let client = match client {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("webhooks disabled: cannot build an HTTP client: {e}");
                    return;
                }
            };
            let origin = hook.origin();
            while let Some(event) = rx.recv().await {
                if deliver(&client, &hook.url, &origin, &event).await {
                    Counters::inc(&shared.counters.webhook_delivered);
                } else {
                    Counters::inc(&shared.counters.webhook_failed);
                    tracing::warn!(webhook = %origin, event = event.id, "webhook delivery given up");
                }
            }
        }));
    }
    let sink = EventSink::new(move |event| {
        for (tx, kinds) in &queues {
            if !kinds.is_empty() && !kinds.contains(&event.kind) {
                continue;
            }
            if tx.try_send(event.clone()).is_err() {
                Counters::inc(&shared.counters.webhook_dropped);
            }
        }
    });
    (sink, tasks)
}

/// POSTs `event` to `url` with retries; logs name the webhook by its `origin` only (the URL
/// may hold a secret, and so may reqwest's error text, which is logged without the URL).
async fn deliver(client: &reqwest::Client, url: &str, origin: &str, event: &EventRecord) -> bool {
    let mut pause = Duration::from_secs(1);
    for attempt in 1..=ATTEMPTS {
        match client.post(url).json(event).send().await {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) => {
                tracing::debug!(webhook = origin, attempt, status = %r.status(), "webhook refused");
            }
            Err(e) => {
                let e = e.without_url();
                tracing::debug!(webhook = origin, attempt, "webhook failed: {e}");
            }
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }
    false
}
