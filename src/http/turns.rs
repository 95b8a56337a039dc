//! `/api/sessions/{id}/turns`: submitting a player's turn and reading the
//! session's turns back.
//!
//! Submitting never does the slow work: it records the turn and enqueues
//! its job in one transaction, shared with whatever other requests of this
//! process are submitting at the same moment (`turns::Intake`), and answers
//! 202 with both ids. A retried request with the same `Idempotency-Key`
//! (same user, same session) gets the original turn back and enqueues
//! nothing.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use questboard_core::metrics as m;
use questboard_core::sessions;
use questboard_core::state::StateChange;
use questboard_core::turns::{self, NewTurn, Turn, TurnStatus};
use questboard_core::usage::TokenUsage;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::error::{Error, ErrorBody, Result};
use super::extract::{AuthUser, Json, Path, Query};

/// Default page size of the turn list.
pub const DEFAULT_PAGE: i64 = 50;
/// Largest page size of the turn list.
pub const MAX_PAGE: i64 = 500;

pub(super) fn router() -> Router<AppState> {
    Router::new().route(
        "/sessions/{session_id}/turns",
        get(list_turns).post(submit_turn),
    )
}

/// Body of `POST /api/sessions/{id}/turns`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TurnInput {
    /// What the player does or says; 1 to `QB_MAX_TURN_CHARS` (default
    /// 8,000) characters, not blank, no NUL.
    #[schema(example = "I light a torch and step into the crypt.", min_length = 1)]
    pub text: String,
}

/// The answer to a submission.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubmittedTurn {
    /// The turn.
    pub turn_id: Uuid,
    /// Its number in the session.
    pub seq: i64,
    /// The job processing it (see `GET /api/jobs/{job_id}`).
    pub job_id: String,
    /// `queued` for a new turn; the current status for a replayed one.
    pub status: TurnStatus,
}

/// A turn.
#[derive(Debug, Serialize, ToSchema)]
pub struct TurnView {
    /// The turn.
    pub turn_id: Uuid,
    /// Its number in the session.
    pub seq: i64,
    /// Who played it.
    pub author_user_id: String,
    /// Where it is.
    pub status: TurnStatus,
    /// What the player typed.
    pub input: String,
    /// The game master's reply, once completed.
    pub output: Option<String>,
    /// Why the last attempt failed, if it did (sanitised).
    pub error: Option<String>,
    /// What the reply did to the game state, when it asked for a change:
    /// applied (the version it made) or refused (why; the reply stands).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_change: Option<StateChange>,
    /// The tokens its reply cost, as the provider that answered counted
    /// them (absent until completed, or when the provider reported none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<TokenUsage>,
    /// Its job.
    pub job_id: String,
    /// Submitted.
    pub created_at: DateTime<Utc>,
    /// Last attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// Finished.
    pub completed_at: Option<DateTime<Utc>>,
}

impl From<Turn> for TurnView {
    fn from(t: Turn) -> Self {
        Self {
            turn_id: t.id,
            seq: t.seq,
            author_user_id: t.author_user_id,
            status: t.status,
            input: t.input,
            output: t.output,
            error: t.error,
            state_change: t.state_change.map(|c| c.0),
            usage: t.usage.map(|u| u.0),
            job_id: t.job_id,
            created_at: t.created_at,
            started_at: t.started_at,
            completed_at: t.completed_at,
        }
    }
}

/// Query of `GET /api/sessions/{id}/turns`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TurnParams {
    /// Only turns with a larger `seq` (default 0: from the start).
    #[param(minimum = 0)]
    pub after_seq: Option<i64>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

/// A page of turns.
#[derive(Debug, Serialize, ToSchema)]
pub struct TurnPage {
    /// In `seq` order.
    pub turns: Vec<TurnView>,
}

/// Submits a turn; members only.
#[utoipa::path(post, path = "/api/sessions/{session_id}/turns", tag = "turns",
    params(
        ("session_id" = Uuid, Path, description = "Session id"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$",
         description = "Repeat-safe key: 1 to 255 visible ASCII characters (no spaces). The same key with the same text returns the original turn (`Idempotent-Replayed: true`); with another text, 409")),
    request_body = TurnInput,
    responses(
        (status = 202, description = "Accepted and queued (or the original, replayed)", body = SubmittedTurn),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Archived session, or the key was used for a different text", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 429, description = "A member's quota, with `Retry-After`: `rate_limited` (the caller's turns per minute), `queue_full` (the session's turns waiting or running), `budget_exhausted` (the session's or the caller's tokens today; renews at midnight UTC). `error.quota` names it. A replay of an accepted turn is never refused", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn submit_turn(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    Path(session_id): Path<Uuid>,
    headers: HeaderMap,
    Json(input): Json<TurnInput>,
) -> Result<Response> {
    let checked = || -> Result<Option<&str>> {
        let key = super::extract::idempotency_key(&headers)?;
        turns::validate_input(&input.text, state.turns.max_chars)?;
        Ok(key)
    };
    let key = match checked() {
        Ok(key) => key,
        Err(invalid) => {
            // A non-member learns nothing, not even about their input.
            sessions::require_member(&state.pool, session_id, &user).await?;
            return Err(invalid);
        }
    };
    // Membership (and the session's state) is checked where the turn is
    // written, under the session's lock: one round trip for a valid request.
    let submitted = state
        .intake
        .submit(NewTurn {
            session_id,
            author: &user,
            input: &input.text,
            idempotency_key: key,
            max_attempts: state.turns.max_attempts,
        })
        .await?;
    let outcome = if submitted.created {
        "created"
    } else {
        "replayed"
    };
    metrics::counter!(m::TURNS_SUBMITTED_TOTAL, "outcome" => outcome).increment(1);
    if submitted.created {
        metrics::counter!(m::JOBS_ENQUEUED_TOTAL, "kind" => "turn").increment(1);
    }
    let turn = submitted.turn;
    let body = SubmittedTurn {
        turn_id: turn.id,
        seq: turn.seq,
        job_id: turn.job_id,
        status: turn.status,
    };
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if !submitted.created {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Lists a session's turns in `seq` order; members only.
#[utoipa::path(get, path = "/api/sessions/{session_id}/turns", tag = "turns",
    params(("session_id" = Uuid, Path, description = "Session id"), TurnParams),
    responses(
        (status = 200, body = TurnPage),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_turns(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    Path(session_id): Path<Uuid>,
    Query(params): Query<TurnParams>,
) -> Result<Json<TurnPage>> {
    sessions::require_member(&state.pool, session_id, &user).await?;
    let after = params.after_seq.unwrap_or(0);
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if after < 0 || !(1..=MAX_PAGE).contains(&limit) {
        return Err(Error::bad_request(
            "invalid_query",
            format!("after_seq must be >= 0 and limit between 1 and {MAX_PAGE}"),
        ));
    }
    let turns = turns::list(&state.pool, session_id, after, limit).await?;
    Ok(Json(TurnPage {
        turns: turns.into_iter().map(TurnView::from).collect(),
    }))
}
