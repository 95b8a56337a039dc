//! `/api/sessions/{id}/state/proposals`: what the AI game master asked to
//! change in reply to a player's turn, held for a game master's review
//! (sessions whose `ai_authority` is `propose`). Members list them; the
//! owner and `gm` members approve (applied against the version they send,
//! the usual 409 if the state moved on) or reject them. The rules live in
//! `questboard_core::state::review`; the session socket offers the same
//! two decisions as messages.

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use questboard_core::identity::UserId;
use questboard_core::metrics as m;
use questboard_core::state::review::{self, Held, Status};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::{ErrorBody, Result};
use super::extract::{AuthUser, Json, Path, Query};
use super::{AppState, Error};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/sessions/{session_id}/state/proposals",
            get(list_proposals),
        )
        .route(
            "/sessions/{session_id}/state/proposals/{proposal_id}/approve",
            post(approve_proposal),
        )
        .route(
            "/sessions/{session_id}/state/proposals/{proposal_id}/reject",
            post(reject_proposal),
        )
}

/// Query of the proposal list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProposalParams {
    /// Only those in this state: `pending`, `approved` or `rejected`.
    pub status: Option<Status>,
    /// Where the page starts: the previous page's `next_cursor`.
    pub cursor: Option<Uuid>,
    /// Page size, 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
}

/// A proposal as members see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProposalView {
    /// Its id.
    pub proposal_id: Uuid,
    /// The session.
    pub session_id: Uuid,
    /// The turn whose reply asked for it.
    pub turn_id: Uuid,
    /// The player who played that turn.
    pub proposed_for: String,
    /// The state operations, as the model gave them (checked for shape;
    /// checked against the state when approved).
    #[schema(value_type = Vec<Object>)]
    pub operations: Value,
    /// The prompts of the images it asks for.
    #[schema(value_type = Vec<String>)]
    pub images: Value,
    /// Where it is.
    pub status: Status,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// Who decided.
    pub decided_by: Option<String>,
    /// When.
    pub decided_at: Option<DateTime<Utc>>,
    /// A rejection's reason.
    pub reason: Option<String>,
    /// The update an approval made (when it had operations).
    pub update_id: Option<Uuid>,
    /// The state's version after that update.
    pub version: Option<i64>,
}

impl From<Held> for ProposalView {
    fn from(held: Held) -> Self {
        Self {
            proposal_id: held.id,
            session_id: held.session_id,
            turn_id: held.turn_id,
            proposed_for: held.proposed_for,
            operations: held.operations,
            images: held.images,
            status: held.status,
            created_at: held.created_at,
            decided_by: held.decided_by,
            decided_at: held.decided_at,
            reason: held.reason,
            update_id: held.update_id,
            version: held.version,
        }
    }
}

/// A page of proposals.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProposalPage {
    /// Newest first.
    pub proposals: Vec<ProposalView>,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next_cursor: Option<Uuid>,
}

/// Body of an approval.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveInput {
    /// The state's version you approve against (needed when the proposal
    /// has operations; a state that moved on answers 409
    /// `VERSION_CONFLICT`).
    #[serde(default, deserialize_with = "super::extract::whole_number")]
    #[schema(minimum = 0)]
    pub version: Option<i64>,
}

/// What an approval did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Approval {
    /// The proposal, now approved.
    pub proposal: ProposalView,
    /// The state's version after its operations (absent: it had none).
    pub new_version: Option<i64>,
    /// Their update's id, as in its `state.updated` event.
    pub update_id: Option<Uuid>,
    /// How many images were asked for.
    pub images: usize,
}

/// Body of a rejection.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectInput {
    /// Why (at most 500 characters, shown to members in the event).
    #[schema(max_length = 500)]
    pub reason: Option<String>,
}

/// Lists a session's proposals, newest first; members only.
#[utoipa::path(get, path = "/api/sessions/{session_id}/state/proposals", tag = "state",
    params(("session_id" = Uuid, Path, description = "Session id"), ProposalParams),
    responses((status = 200, body = ProposalPage),
        (status = 400, description = "Bad id, status, cursor or limit", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No such session, or not a member", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_proposals(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    Path(session_id): Path<Uuid>,
    Query(params): Query<ProposalParams>,
) -> Result<Json<ProposalPage>> {
    let limit = super::extract::page_limit(params.limit, 50)?;
    let (proposals, next_cursor) = review::list(
        &state.pool,
        session_id,
        &user,
        params.status,
        limit,
        params.cursor,
    )
    .await?;
    Ok(Json(ProposalPage {
        proposals: proposals.into_iter().map(ProposalView::from).collect(),
        next_cursor,
    }))
}

/// Approves a proposal: its operations apply against `version` as your
/// update, its images are asked for. Owner and `gm` only.
#[utoipa::path(post, path = "/api/sessions/{session_id}/state/proposals/{proposal_id}/approve", tag = "state",
    params(("session_id" = Uuid, Path, description = "Session id"),
           ("proposal_id" = Uuid, Path, description = "Proposal id")),
    request_body = ApproveInput,
    responses((status = 200, body = Approval),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "A member who is not a game master", body = ErrorBody),
        (status = 404, description = "No such session (for the caller) or proposal", body = ErrorBody),
        (status = 409, description = "`VERSION_CONFLICT` with `current_version`; or already decided; or the session is archived", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, description = "`version` missing, or the operations do not apply (`VALIDATION_ERROR` with the `operation` index, `STATE_TOO_LARGE`)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn approve_proposal(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    Path((session_id, proposal_id)): Path<(Uuid, Uuid)>,
    Json(input): Json<ApproveInput>,
) -> Result<Json<Approval>> {
    Ok(Json(
        approve(&state, session_id, &user, proposal_id, input.version).await?,
    ))
}

/// Rejects a proposal. Owner and `gm` only.
#[utoipa::path(post, path = "/api/sessions/{session_id}/state/proposals/{proposal_id}/reject", tag = "state",
    params(("session_id" = Uuid, Path, description = "Session id"),
           ("proposal_id" = Uuid, Path, description = "Proposal id")),
    request_body = RejectInput,
    responses((status = 200, body = ProposalView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "A member who is not a game master", body = ErrorBody),
        (status = 404, description = "No such session (for the caller) or proposal", body = ErrorBody),
        (status = 409, description = "Already decided, or the session is archived", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, description = "The reason is too long or not text", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn reject_proposal(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    Path((session_id, proposal_id)): Path<(Uuid, Uuid)>,
    Json(input): Json<RejectInput>,
) -> Result<Json<ProposalView>> {
    Ok(Json(
        reject(
            &state,
            session_id,
            &user,
            proposal_id,
            input.reason.as_deref(),
        )
        .await?,
    ))
}

/// Approves and publishes what it did: the one path of REST and sockets.
pub async fn approve(
    state: &AppState,
    session_id: Uuid,
    user: &UserId,
    proposal_id: Uuid,
    version: Option<i64>,
) -> Result<Approval, Error> {
    let approved = review::approve(
        &state.pool,
        &state.recent_states,
        session_id,
        user,
        proposal_id,
        version,
        review::Allowance {
            state: state.state_limits,
            media_per_hour: state
                .quotas
                .limit(questboard_core::quotas::Quota::UserMediaPerHour),
        },
    )
    .await?;
    if let Some(event) = approved.applied.as_ref().and_then(|a| a.event.clone()) {
        metrics::counter!(m::STATE_UPDATES_TOTAL, "source" => "gm").increment(1);
        state.events.events([event]);
    }
    state.events.events(approved.events);
    if approved.images > 0 {
        metrics::counter!(m::JOBS_ENQUEUED_TOTAL, "kind" => "media")
            .increment(approved.images as u64);
        state.wake.announce("media");
    }
    metrics::counter!(m::STATE_PROPOSALS_TOTAL, "outcome" => "approved").increment(1);
    Ok(Approval {
        new_version: approved.applied.as_ref().map(|a| a.new_version),
        update_id: approved.applied.as_ref().map(|a| a.update_id),
        images: approved.images,
        proposal: approved.held.into(),
    })
}

/// Rejects and publishes the event: the one path of REST and sockets.
pub async fn reject(
    state: &AppState,
    session_id: Uuid,
    user: &UserId,
    proposal_id: Uuid,
    reason: Option<&str>,
) -> Result<ProposalView, Error> {
    let (held, event) = review::reject(&state.pool, session_id, user, proposal_id, reason).await?;
    state.events.events([event]);
    metrics::counter!(m::STATE_PROPOSALS_TOTAL, "outcome" => "rejected").increment(1);
    Ok(held.into())
}
