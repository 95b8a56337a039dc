//! Session lanes for operators: which sessions have turns waiting, the
//! longest-waiting first, who holds each session's lease (and its fencing
//! token) and why the head turn is not running; a session's queued turns;
//! and its event log, so an operator can follow what players saw.
//! Viewers and operators.
//!
//! | route | does |
//! |---|---|
//! | `GET /api/admin/lanes?limit=` | the lanes, head turn's wait first, and how many sessions have unfinished turns |
//! | `GET /api/admin/lanes/{session_id}` | one lane and its unfinished turns in order |
//! | `GET /api/admin/sessions/{session_id}/events?after_seq=&limit=` | the session's event log, as its members read it |

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use questboard_core::turns::lanes::{self, Lane, LaneTurn};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::error::{Error, ErrorBody, Result};
use super::events::{EventPage, EventParams};
use super::extract::{Json, Path, Query, Viewer};

/// Largest page of lanes (and of a lane's turns).
pub const MAX_LANES: i64 = 500;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/lanes", get(list_lanes))
        .route("/admin/lanes/{session_id}", get(get_lane))
        .route("/admin/sessions/{session_id}/events", get(session_events))
}

/// Query of the lane list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LaneParams {
    /// Lanes to return, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

/// The lanes.
#[derive(Debug, Serialize, ToSchema)]
pub struct LanesPage {
    /// The head turn that waited longest first.
    pub lanes: Vec<Lane>,
    /// Sessions with unfinished turns in all.
    pub total: i64,
}

fn limit_of(limit: Option<i64>, default: i64) -> Result<i64> {
    let limit = limit.unwrap_or(default);
    if !(1..=MAX_LANES).contains(&limit) {
        return Err(Error::bad_request(
            "invalid_query",
            format!("limit must be between 1 and {MAX_LANES}"),
        ));
    }
    Ok(limit)
}

/// Sessions with unfinished turns, the longest-waiting head turn first;
/// viewers and operators.
#[utoipa::path(get, path = "/api/admin/lanes", tag = "admin",
    params(LaneParams),
    responses((status = 200, body = LanesPage), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = ["questboard:viewer"]), ("bearer" = ["questboard:operator"])))]
pub async fn list_lanes(
    Viewer(_viewer): Viewer,
    State(state): State<AppState>,
    Query(params): Query<LaneParams>,
) -> Result<Json<LanesPage>> {
    let limit = limit_of(params.limit, 100)?;
    let (lanes, total) = lanes::lanes(&state.pool, limit).await?;
    Ok(Json(LanesPage { lanes, total }))
}

/// One session's lane.
#[derive(Debug, Serialize, ToSchema)]
pub struct LaneDetail {
    /// The lane.
    pub lane: Lane,
    /// Its unfinished turns in order (the first 500).
    pub turns: Vec<LaneTurn>,
}

/// A session's lane and its unfinished turns; viewers and operators. 404
/// when the session has no unfinished turn.
#[utoipa::path(get, path = "/api/admin/lanes/{session_id}", tag = "admin",
    params(("session_id" = Uuid, Path, description = "Session id")),
    responses((status = 200, body = LaneDetail),
              (status = 400, description = "The session id is not a UUID", body = ErrorBody),
              (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody),
              (status = 404, description = "No unfinished turn in that session", body = ErrorBody)),
    security(("bearer" = ["questboard:viewer"]), ("bearer" = ["questboard:operator"])))]
pub async fn get_lane(
    Viewer(_viewer): Viewer,
    State(state): State<AppState>,
    Path(session_id): Path<Uuid>,
) -> Result<Json<LaneDetail>> {
    let (lane, turns) = lanes::lane_of(&state.pool, session_id, MAX_LANES)
        .await?
        .ok_or(Error::NotFound("lane"))?;
    Ok(Json(LaneDetail { lane, turns }))
}

/// A session's events after `after_seq`, as its members read them;
/// viewers and operators.
#[utoipa::path(get, path = "/api/admin/sessions/{session_id}/events", tag = "admin",
    operation_id = "admin_session_events",
    params(("session_id" = Uuid, Path, description = "Session id"), EventParams),
    responses((status = 200, body = EventPage), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)),
    security(("bearer" = ["questboard:viewer"]), ("bearer" = ["questboard:operator"])))]
pub async fn session_events(
    Viewer(_viewer): Viewer,
    State(state): State<AppState>,
    Path(session_id): Path<Uuid>,
    Query(params): Query<EventParams>,
) -> Result<Json<EventPage>> {
    Ok(Json(
        super::events::page_of(&state, session_id, &params).await?,
    ))
}
