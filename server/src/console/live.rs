//! Server-sent events for the live parts: the page's live region is rendered again on the
//! server at a fixed period and sent (as an HTML `update` event) when it changed; the script
//! swaps it in. A rollout's stream sends `done` and ends once the rollout finished (an aborted
//! one once no device it sent back is pending); every
//! stream ends at the first period after its session was signed out or expired.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use futures_util::stream;
use ota_core::fleet::RolloutId;

use super::pages::{overview, rollouts};
use super::session::Session;
use super::{Console, SignedIn};

/// How often the overview is rendered again.
const OVERVIEW_PERIOD: Duration = Duration::from_secs(2);

/// How often a rollout is rendered again.
const ROLLOUT_PERIOD: Duration = Duration::from_secs(1);

/// What a live stream renders: the next fragment, and whether it is the last.
#[derive(Debug, Clone, Copy)]
enum Source {
    Overview,
    Rollout(RolloutId),
}

impl Source {
    fn period(self) -> Duration {
        match self {
            Source::Overview => OVERVIEW_PERIOD,
            Source::Rollout(_) => ROLLOUT_PERIOD,
        }
    }

    /// The fragment and whether nothing will change any more; `None` when it cannot be read.
    async fn render(self, console: &Console, session: &Session) -> Option<(String, bool)> {
        match self {
            Source::Overview => overview::fragment(console, session)
                .await
                .ok()
                .map(|html| (html, false)),
            Source::Rollout(id) => {
                let (rollout, devices) = rollouts::load(console, session, id).await.ok()?;
                Some((
                    rollouts::fragment(session, &rollout, &devices),
                    rollouts::finished(&rollout),
                ))
            }
        }
    }
}

/// Where a stream is.
struct Cursor {
    console: Console,
    session: Session,
    source: Source,
    last: Option<String>,
    ended: bool,
    first: bool,
}

fn events(
    console: Console,
    session: Session,
    source: Source,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let start = Cursor {
        console,
        session,
        source,
        last: None,
        ended: false,
        first: true,
    };
    stream::unfold(start, |mut cursor| async move {
        if cursor.ended {
            return None;
        }
        loop {
            if !cursor.first {
                tokio::time::sleep(cursor.source.period()).await;
            }
            cursor.first = false;
            // Sign-out or expiry ends the stream: nothing more is rendered for a closed session.
            if !cursor.console.0.sessions.is_open(&cursor.session.id) {
                return None;
            }
            let Some((html, finished)) =
                cursor.source.render(&cursor.console, &cursor.session).await
            else {
                // A rollout that cannot be read (deleted, or the database is away) ends the
                // stream; the overview tries again next period.
                match cursor.source {
                    Source::Rollout(_) => return None,
                    Source::Overview => continue,
                }
            };
            if finished {
                cursor.ended = true;
                let event = Event::default().event("done").data(html);
                return Some((Ok(event), cursor));
            }
            if cursor.last.as_deref() != Some(html.as_str()) {
                cursor.last = Some(html.clone());
                let event = Event::default().event("update").data(html);
                return Some((Ok(event), cursor));
            }
        }
    })
}

/// `GET /live/overview`.
pub(crate) async fn overview(
    State(console): State<Console>,
    SignedIn(session): SignedIn,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    Sse::new(events(console, session, Source::Overview)).keep_alive(KeepAlive::default())
}

/// `GET /live/rollouts/{id}`.
pub(crate) async fn rollout(
    State(console): State<Console>,
    SignedIn(session): SignedIn,
    Path(id): Path<RolloutId>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    Sse::new(events(console, session, Source::Rollout(id))).keep_alive(KeepAlive::default())
}
