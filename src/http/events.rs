//! `GET /api/sessions/{id}/events`: the session's durable event log, for
//! clients that poll instead of holding a WebSocket. Same events, same
//! `seq`s as the socket delivers.
//!
//! Events older than `QB_EVENT_RETENTION_DAYS` are pruned. A client that
//! asks for events after a seq that was pruned gets no events and a
//! `reset` `{seq, reason, pruned_through}` instead of a silent gap: it
//! refetches the state it shows (turns, members, ...), then resumes with
//! `after_seq` = the `seq` given.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use questboard_core::events::{self, Event};
use questboard_core::metrics as m;
use questboard_core::sessions;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::error::{Error, ErrorBody, Result};
use super::extract::{AuthUser, Json, Path, Query};

/// Largest page.
pub const MAX_PAGE: i64 = 1000;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/sessions/{session_id}/events", get(list_events))
}

/// Query of the event log.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// Only events with a larger `seq` (default 0).
    #[param(minimum = 0)]
    pub after_seq: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// A page of events.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    /// In `seq` order, without gaps.
    pub events: Vec<Event>,
    /// Present when events after `after_seq` were pruned: refetch state,
    /// then resume from `reset.seq`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset: Option<Reset>,
}

/// Tells a client that the events it asked for no longer exist.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Reset {
    /// Resume after this seq once state is refetched.
    pub seq: i64,
    /// Why: `events_pruned`.
    pub reason: &'static str,
    /// Every event up to this seq was pruned.
    pub pruned_through: i64,
}

impl Reset {
    /// The reset for a reader of a session whose log is at `horizon`.
    pub fn pruned(horizon: events::Horizon) -> Self {
        Self {
            seq: horizon.last,
            reason: "events_pruned",
            pruned_through: horizon.pruned_through,
        }
    }
}

/// The session's events after `after_seq`; members only.
#[utoipa::path(get, path = "/api/sessions/{session_id}/events", tag = "events",
    params(("session_id" = Uuid, Path, description = "Session id"), EventParams),
    responses(
        (status = 200, body = EventPage),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_events(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    Path(session_id): Path<Uuid>,
    Query(params): Query<EventParams>,
) -> Result<Json<EventPage>> {
    sessions::require_member(&state.pool, session_id, &user).await?;
    let page = page_of(&state, session_id, &params).await?;
    metrics::counter!(m::EVENTS_REPLAYED_TOTAL, "reason" => "rest")
        .increment(page.events.len() as u64);
    Ok(Json(page))
}

/// Session `session_id`'s events as `params` ask (its callers check who may
/// read them): a page, or the reset when they were pruned.
pub(super) async fn page_of(
    state: &AppState,
    session_id: Uuid,
    params: &EventParams,
) -> Result<EventPage> {
    let after = params.after_seq.unwrap_or(0);
    let limit = params.limit.unwrap_or(100);
    if after < 0 || !(1..=MAX_PAGE).contains(&limit) {
        return Err(Error::bad_request(
            "invalid_query",
            format!("after_seq must be >= 0 and limit between 1 and {MAX_PAGE}"),
        ));
    }
    let Some((horizon, events)) =
        events::replay_page(&state.pool, session_id, after, limit).await?
    else {
        return Err(Error::NotFound("session"));
    };
    if horizon.must_reset(after) {
        return Ok(EventPage {
            events: Vec::new(),
            reset: Some(Reset::pruned(horizon)),
        });
    }
    Ok(EventPage {
        events,
        reset: None,
    })
}
