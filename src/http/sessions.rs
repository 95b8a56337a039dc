//! `/api/sessions`: creating, listing, reading, changing (name, AI
//! authority) and archiving campaign sessions, and removing members.
//!
//! Every route but creation and listing first checks that the caller is a
//! member; for a non-member the answer is 404, the same as for a session
//! that does not exist, so ids cannot be probed.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get};
use chrono::{DateTime, Utc};
use questboard_core::metrics as m;
use questboard_core::quotas::Quota;
use questboard_core::sessions::{
    self, AiAuthority, Cursor, Member, Membership, Role, SessionName, SessionStatus,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::{ErrorBody, Result};
use super::extract::{AuthUser, Json, Path, Query};
use super::{AppState, Error};

/// Default page size of the session list.
pub const DEFAULT_PAGE: u32 = 20;
/// Largest page size of the session list.
pub const MAX_PAGE: u32 = 100;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/sessions", get(list_sessions).post(create_session))
        .route(
            "/sessions/{session_id}",
            get(get_session)
                .patch(update_session)
                .delete(archive_session),
        )
        .route(
            "/sessions/{session_id}/members/{user_id}",
            delete(remove_member),
        )
}

/// Body of `POST /api/sessions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionInput {
    /// Display name: 1 to 100 characters after trimming and NFC
    /// normalisation, at least one visible character, no control
    /// characters, no bidirectional overrides or isolates.
    #[schema(example = "The Sunken Keep", min_length = 1)]
    pub name: String,
}

/// Body of `PATCH /api/sessions/{id}`: at least one of the fields (none
/// may be null).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionChanges {
    /// A new display name (the rules of [`SessionInput::name`]).
    #[schema(example = "The Sunken Keep", min_length = 1, nullable = false)]
    #[serde(default, deserialize_with = "super::extract::present")]
    pub name: Option<String>,
    /// What the AI game master may change on its own: `apply` (its
    /// replies' state changes and images apply), `propose` (the default:
    /// from a player's turn they are held for an owner's or gm's approval)
    /// or `off` (they are refused).
    #[schema(nullable = false)]
    #[serde(default, deserialize_with = "super::extract::present")]
    pub ai_authority: Option<AiAuthority>,
}

/// A campaign session as one of its members sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    /// The session id.
    pub session_id: Uuid,
    /// Display name.
    pub name: String,
    /// The owner's user id.
    pub owner_user_id: String,
    /// The caller's role.
    pub role: Role,
    /// Lifecycle state.
    pub status: SessionStatus,
    /// What the AI game master may change on its own (see `PATCH`).
    pub ai_authority: AiAuthority,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Metadata last changed.
    pub updated_at: DateTime<Utc>,
    /// Anything last happened (the list is ordered by this).
    pub last_active_at: DateTime<Utc>,
}

impl From<Membership> for SessionView {
    fn from(m: Membership) -> Self {
        Self {
            session_id: m.session.id,
            name: m.session.name,
            owner_user_id: m.session.owner_user_id,
            role: m.role,
            status: m.session.status,
            ai_authority: m.session.ai_authority,
            created_at: m.session.created_at,
            updated_at: m.session.updated_at,
            last_active_at: m.session.last_active_at,
        }
    }
}

/// A session with its members.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionDetail {
    /// The session.
    #[serde(flatten)]
    pub session: SessionView,
    /// Its members, in the order they joined.
    pub members: Vec<MemberView>,
}

/// One member.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    /// The member's user id.
    pub user_id: String,
    /// Their role.
    pub role: Role,
    /// When they joined.
    pub joined_at: DateTime<Utc>,
}

impl From<Member> for MemberView {
    fn from(m: Member) -> Self {
        Self {
            user_id: m.user_id,
            role: m.role,
            joined_at: m.joined_at,
        }
    }
}

/// Query of `GET /api/sessions`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `next_cursor` from the previous page.
    #[param(min_length = 1)]
    pub cursor: Option<String>,
}

/// A page of sessions.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionPage {
    /// Sessions the caller is a member of, most recently active first.
    pub sessions: Vec<SessionView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Creates a campaign session owned by the caller.
#[utoipa::path(post, path = "/api/sessions", tag = "sessions",
    request_body = SessionInput,
    responses(
        (status = 201, description = "Created; the caller is its owner", body = SessionView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 429, description = "`rate_limited`: the caller's sessions-per-day quota (`Retry-After`)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_session(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    Json(input): Json<SessionInput>,
) -> Result<(StatusCode, Json<SessionView>)> {
    let name = SessionName::parse(&input.name)?;
    let per_day = state.quotas.limit(Quota::UserSessionsPerDay);
    let created = sessions::create_within(&state.pool, &user, &name, per_day).await?;
    metrics::counter!(m::SESSIONS_CREATED_TOTAL).increment(1);
    tracing::info!(session_id = %created.session.id, owner = %user, "session created");
    // The manifest makes the session's storage prefix exist. Storage being
    // down must not stop play: `reconcile --repair` writes missing ones.
    let manifest =
        questboard_core::storage::manifest(created.session.id, created.session.created_at);
    let written = match state.storage.session(&created.session.storage_prefix) {
        Ok(files) => files.put_manifest(&manifest).await,
        Err(err) => Err(err),
    };
    if let Err(err) = written {
        tracing::warn!(session_id = %created.session.id, error = %err,
            "writing the session's manifest failed; reconcile will report and repair it");
    }
    Ok((StatusCode::CREATED, Json(created.into())))
}

/// Lists the sessions the caller is a member of, most recently active first.
#[utoipa::path(get, path = "/api/sessions", tag = "sessions",
    params(ListParams),
    responses(
        (status = 200, body = SessionPage),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_sessions(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> Result<Json<SessionPage>> {
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Error::bad_request(
            "invalid_query",
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    let cursor = params
        .cursor
        .as_deref()
        .map(Cursor::decode)
        .transpose()
        .map_err(|e| Error::bad_request("invalid_query", e.to_string()))?;
    let page = sessions::list_for_member(&state.pool, &user, limit, cursor).await?;
    Ok(Json(SessionPage {
        sessions: page.items.into_iter().map(SessionView::from).collect(),
        next_cursor: page.next.map(|c| c.encode()),
    }))
}

/// A session with its members; 404 unless the caller is a member.
#[utoipa::path(get, path = "/api/sessions/{session_id}", tag = "sessions",
    params(("session_id" = Uuid, Path, description = "Session id")),
    responses(
        (status = 200, body = SessionDetail),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_session(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    Path(session_id): Path<Uuid>,
) -> Result<Json<SessionDetail>> {
    let membership = sessions::require_member(&state.pool, session_id, &user).await?;
    let members = sessions::members(&state.pool, session_id).await?;
    Ok(Json(SessionDetail {
        session: membership.into(),
        members: members.into_iter().map(MemberView::from).collect(),
    }))
}

/// Renames a session or changes what its AI game master may do on its
/// own; owner only. Appends `session.updated`.
#[utoipa::path(patch, path = "/api/sessions/{session_id}", tag = "sessions",
    params(("session_id" = Uuid, Path, description = "Session id")),
    request_body = SessionChanges,
    responses(
        (status = 200, body = SessionView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The session is archived", body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn update_session(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    Path(session_id): Path<Uuid>,
    Json(input): Json<SessionChanges>,
) -> Result<Json<SessionView>> {
    let changes = sessions::Changes {
        name: input.name.as_deref(),
        ai_authority: input.ai_authority,
    };
    let (updated, event) = sessions::update(&state.pool, session_id, &user, changes).await?;
    state.events.events([event]);
    Ok(Json(updated.into()))
}

/// Archives a session; owner only. Repeating it is harmless.
///
/// Archiving is not deleting: the session stays readable by its members
/// (`GET` answers 200 with `status: "archived"`) but takes no more turns,
/// renames, invites or state changes (409). `prune` deletes archived
/// sessions after `QB_RETENTION_DAYS`.
#[utoipa::path(delete, path = "/api/sessions/{session_id}", tag = "sessions",
    params(("session_id" = Uuid, Path, description = "Session id")),
    responses(
        (status = 200, description = "Archived (still readable, now read-only)", body = SessionView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn archive_session(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    Path(session_id): Path<Uuid>,
) -> Result<Json<SessionView>> {
    let (archived, event) = sessions::archive(&state.pool, session_id, &user).await?;
    state.events.events(event);
    tracing::info!(%session_id, by = %user, "session archived");
    Ok(Json(archived.into()))
}

/// Removes a member: the owner removes anyone else, a member removes themself.
#[utoipa::path(delete, path = "/api/sessions/{session_id}/members/{user_id}", tag = "sessions",
    params(
        ("session_id" = Uuid, Path, description = "Session id"),
        ("user_id" = String, Path, description = "The member's user id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "Not the owner, and not removing yourself", body = ErrorBody),
        (status = 404, description = "No such session (for the caller) or member", body = ErrorBody),
        (status = 409, description = "The owner cannot be removed", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn remove_member(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    Path((session_id, member)): Path<(Uuid, String)>,
) -> Result<StatusCode> {
    let event = sessions::remove_member(&state.pool, session_id, &user, &member).await?;
    state.events.events([event]);
    tracing::info!(%session_id, by = %user, removed = %member, "member removed");
    Ok(StatusCode::NO_CONTENT)
}
