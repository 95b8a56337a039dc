//! Live feeds for operators, as server-sent events (`text/event-stream`),
//! read by the console with `fetch` so the bearer token travels in the
//! `Authorization` header as on every other route:
//!
//! | route | streams |
//! |---|---|
//! | `GET /api/admin/live` | `queues` (the per-kind statistics of `GET /api/admin/queues`) whenever they change, checked every two seconds; the console refreshes the list it shows on each |
//! | `GET /api/admin/jobs/{job_id}/reply` | for a turn's job: `turn` (its row now), then `delta` (each chunk of the reply as the model streams it, with its attempt) and a final `turn` when it completes or fails |
//!
//! Viewers and operators. A feed ends after [`FEED_LIFETIME`] (the client
//! opens it again), so no connection lives forever behind a proxy. The
//! console closes its feeds while its tab is hidden.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::get;
use futures::Stream;
use questboard_core::events::Message;
use questboard_core::jobs::control;
use questboard_core::turns;
use uuid::Uuid;

use super::AppState;
use super::error::{Error, ErrorBody, Result};
use super::extract::{Path, Viewer};
use crate::bridge::Live;

/// How long one feed stays open.
pub const FEED_LIFETIME: Duration = Duration::from_secs(300);
/// How often `GET /api/admin/live` looks at the queues.
pub const QUEUE_POLL: Duration = Duration::from_secs(2);

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/live", get(live))
        .route("/admin/jobs/{job_id}/reply", get(reply))
}

fn sse(
    stream: impl Stream<Item = std::result::Result<SseEvent, Infallible>> + Send + 'static,
) -> Sse<impl Stream<Item = std::result::Result<SseEvent, Infallible>> + Send + 'static> {
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn json_event(name: &str, value: &impl serde::Serialize) -> SseEvent {
    SseEvent::default()
        .event(name)
        .json_data(value)
        .unwrap_or_else(|_| SseEvent::default().event(name).data("null"))
}

/// The queues' statistics whenever they change; viewers and operators.
#[utoipa::path(get, path = "/api/admin/live", tag = "admin",
    responses((status = 200, description = "`text/event-stream`: `queues` events carrying a QueuesPage", content_type = "text/event-stream"),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = ["questboard:viewer"]), ("bearer" = ["questboard:operator"])))]
pub async fn live(
    Viewer(_viewer): Viewer,
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = std::result::Result<SseEvent, Infallible>> + Send + 'static> {
    let until = tokio::time::Instant::now() + FEED_LIFETIME;
    let stream = futures::stream::unfold(
        (state, None::<String>, true),
        move |(state, last, first)| async move {
            loop {
                if !first {
                    tokio::time::sleep(QUEUE_POLL).await;
                }
                if tokio::time::Instant::now() >= until {
                    return None;
                }
                let specs = state.registry.specs();
                let Ok(stats) = control::queue_stats(&state.pool, &specs).await else {
                    // The database is away: try again at the next poll.
                    tokio::time::sleep(QUEUE_POLL).await;
                    continue;
                };
                let page = super::admin::queues_page(&state.registry, stats);
                let text = serde_json::to_string(&page).unwrap_or_default();
                if last.as_deref() == Some(text.as_str()) {
                    return Some((None, (state, last, false)));
                }
                let event = SseEvent::default().event("queues").data(text.clone());
                return Some((Some(event), (state, Some(text), false)));
            }
        },
    );
    use futures::StreamExt as _;
    sse(stream.filter_map(|e| async move { e.map(Ok) }))
}

/// What `GET /api/admin/jobs/{id}/reply` says about the turn.
#[derive(Debug, serde::Serialize)]
struct TurnNow {
    turn_id: Uuid,
    session_id: Uuid,
    seq: i64,
    status: String,
    output: Option<String>,
    error: Option<String>,
}

impl TurnNow {
    fn of(turn: &turns::Turn) -> Self {
        Self {
            turn_id: turn.id,
            session_id: turn.session_id,
            seq: turn.seq,
            status: turn.status.as_str().to_owned(),
            output: turn.output.clone(),
            error: turn.error.clone(),
        }
    }

    fn finished(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "failed")
    }
}

/// A turn job's reply as it streams; viewers and operators. 404 for a job
/// that is not a turn's. Chunks streamed before the feed opened are not
/// repeated (the first `turn` event has what is recorded).
#[utoipa::path(get, path = "/api/admin/jobs/{job_id}/reply", tag = "admin",
    params(("job_id" = String, Path, description = "A turn's job id")),
    responses((status = 200, description = "`text/event-stream`: `turn` (the turn now, and when it ends) and `delta` (`{attempt, index, text}`) events", content_type = "text/event-stream"),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, description = "No such job, or not a turn's", body = ErrorBody)),
    security(("bearer" = ["questboard:viewer"]), ("bearer" = ["questboard:operator"])))]
pub async fn reply(
    Viewer(_viewer): Viewer,
    State(state): State<AppState>,
    Path(job_id): Path<String>,
) -> Result<Sse<impl Stream<Item = std::result::Result<SseEvent, Infallible>> + Send + 'static>> {
    if !questboard_core::jobs::is_job_id(&job_id) {
        return Err(Error::NotFound("turn job"));
    }
    let turn = turns::by_job(&state.pool, &job_id)
        .await?
        .ok_or(Error::NotFound("turn job"))?;
    // Subscribe before reading the row again: nothing falls in between.
    let subscription = state.bridge.subscribe(turn.session_id);
    let now = turns::by_job(&state.pool, &job_id)
        .await?
        .map(|t| TurnNow::of(&t))
        .ok_or(Error::NotFound("turn job"))?;
    let until = tokio::time::Instant::now() + FEED_LIFETIME;
    let first = json_event("turn", &now);
    let done = now.finished();
    let turn_id = turn.id;
    struct Feed {
        subscription: crate::bridge::Subscription,
        state: AppState,
        job_id: String,
        first: Option<SseEvent>,
        done: bool,
    }
    let feed = Feed {
        subscription,
        state,
        job_id,
        first: Some(first),
        done,
    };
    let stream = futures::stream::unfold(feed, move |mut feed| async move {
        if let Some(first) = feed.first.take() {
            return Some((Ok(first), feed));
        }
        if feed.done {
            return None;
        }
        loop {
            let next = tokio::time::timeout_at(until, feed.subscription.recv()).await;
            let Ok(next) = next else { return None };
            let reread = match next {
                Ok(Live::Message(message)) => match &*message {
                    Message::Delta(delta) if delta.turn_id == turn_id => {
                        let chunk = serde_json::json!({
                            "attempt": delta.attempt, "index": delta.index, "text": delta.text,
                        });
                        return Some((Ok(json_event("delta", &chunk)), feed));
                    }
                    Message::Event(event)
                        if event.kind.starts_with("turn.")
                            && event.data["turn_id"].as_str()
                                == Some(turn_id.to_string().as_str()) =>
                    {
                        true
                    }
                    _ => false,
                },
                // A gap (Redis came back, or this feed fell behind): what is
                // recorded is read again.
                Ok(Live::Resync { .. })
                | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            };
            if reread {
                let Ok(Some(turn)) = turns::by_job(&feed.state.pool, &feed.job_id).await else {
                    return None;
                };
                let now = TurnNow::of(&turn);
                feed.done = now.finished();
                return Some((Ok(json_event("turn", &now)), feed));
            }
        }
    });
    Ok(sse(stream))
}
