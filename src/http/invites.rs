//! Invites: owners create, list and revoke them; anyone with a token accepts.
//!
//! The token is in the creation response only; the database keeps its hash
//! (see `questboard_core::invites`).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use chrono::{DateTime, Utc};
use questboard_core::invites::{self, NewInvite};
use questboard_core::metrics as m;
use questboard_core::sessions::Role;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::AppState;
use super::error::{Error, ErrorBody, Result};
use super::extract::{AuthUser, Json, Path, Query};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/sessions/{session_id}/invites",
            get(list_invites).post(create_invite),
        )
        .route(
            "/sessions/{session_id}/invites/{invite_id}",
            delete(revoke_invite),
        )
        .route("/invites/accept", post(accept_invite))
}

/// The roles an invite may grant (the description's view of [`Role`]:
/// `owner` is never granted).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum GrantedRole {
    /// Plays; reads everything, changes no game state.
    Player,
    /// A game master: changes the game state.
    Gm,
}

/// Body of `POST /api/sessions/{id}/invites`; every field is optional.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteInput {
    /// Role granted: `player` (default) or `gm`.
    #[schema(value_type = Option<GrantedRole>)]
    pub role: Option<Role>,
    /// Lifetime in seconds, 1 to 7,776,000 (90 days); default 604,800 (7 days).
    #[serde(default, deserialize_with = "super::extract::whole_number")]
    #[schema(minimum = 1, maximum = 7_776_000)]
    pub ttl_seconds: Option<i64>,
    /// How many users it admits, 1 to 1,000; default 1.
    #[serde(default, deserialize_with = "super::extract::whole_number")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_uses: Option<i32>,
}

/// A created invite. The token is shown only here.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedInviteView {
    /// The invite id (to revoke it).
    pub invite_id: Uuid,
    /// The secret token to hand to the invitee; not retrievable later.
    pub token: String,
    /// Role granted.
    pub role: Role,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
    /// How many users it admits.
    pub max_uses: i32,
}

/// An invite as the owner sees it later (never with the token).
#[derive(Debug, Serialize, ToSchema)]
pub struct InviteView {
    /// The invite id.
    pub invite_id: Uuid,
    /// Role granted.
    pub role: Role,
    /// Who created it.
    pub created_by: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Expires.
    pub expires_at: DateTime<Utc>,
    /// Uses allowed.
    pub max_uses: i32,
    /// Uses taken.
    pub uses: i32,
    /// Revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The invites of a session.
#[derive(Debug, Serialize, ToSchema)]
pub struct InviteList {
    /// Newest first.
    pub invites: Vec<InviteView>,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next_cursor: Option<Uuid>,
}

/// Query of the invite list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InviteParams {
    /// Where the page starts: the previous page's `next_cursor`.
    pub cursor: Option<Uuid>,
    /// Page size, 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
}

/// Body of `POST /api/invites/accept`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptInput {
    /// The invite token.
    pub token: String,
}

/// The session joined.
#[derive(Debug, Serialize, ToSchema)]
pub struct AcceptedView {
    /// The session.
    pub session_id: Uuid,
    /// The caller's role in it.
    pub role: Role,
    /// True if the caller was already a member (nothing changed, no use taken).
    pub already_member: bool,
}

/// Creates an invite; owner only.
#[utoipa::path(post, path = "/api/sessions/{session_id}/invites", tag = "invites",
    params(("session_id" = Uuid, Path, description = "Session id")),
    request_body = InviteInput,
    responses(
        (status = 201, body = CreatedInviteView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The session is archived", body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 429, description = "`limit_reached`: the session's quota of live invites (`Retry-After`: until the first expires)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_invite(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    Path(session_id): Path<Uuid>,
    Json(input): Json<InviteInput>,
) -> Result<(StatusCode, Json<CreatedInviteView>)> {
    let defaults = NewInvite::default();
    let new = NewInvite {
        role: input.role.unwrap_or(defaults.role),
        ttl: match input.ttl_seconds {
            Some(secs) => chrono::Duration::try_seconds(secs)
                .ok_or_else(|| Error::Unprocessable("ttl_seconds is out of range".into()))?,
            None => defaults.ttl,
        },
        max_uses: input.max_uses.unwrap_or(defaults.max_uses),
    };
    let max_live = state
        .quotas
        .limit(questboard_core::quotas::Quota::SessionMaxInvites);
    let created = invites::create(&state.pool, session_id, &user, new, max_live).await?;
    metrics::counter!(m::INVITES_CREATED_TOTAL).increment(1);
    tracing::info!(%session_id, invite_id = %created.id, by = %user, "invite created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedInviteView {
            invite_id: created.id,
            token: created.token,
            role: created.role,
            expires_at: created.expires_at,
            max_uses: created.max_uses,
        }),
    ))
}

/// Lists a session's invites; owner only.
#[utoipa::path(get, path = "/api/sessions/{session_id}/invites", tag = "invites",
    params(("session_id" = Uuid, Path, description = "Session id"), InviteParams),
    responses(
        (status = 200, body = InviteList),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_invites(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    Path(session_id): Path<Uuid>,
    Query(params): Query<InviteParams>,
) -> Result<Json<InviteList>> {
    let limit = super::extract::page_limit(params.limit, 50)?;
    let (invites, next_cursor) =
        invites::list(&state.pool, session_id, &user, limit, params.cursor).await?;
    Ok(Json(InviteList {
        next_cursor,
        invites: invites
            .into_iter()
            .map(|i| InviteView {
                invite_id: i.id,
                role: i.role,
                created_by: i.created_by,
                created_at: i.created_at,
                expires_at: i.expires_at,
                max_uses: i.max_uses,
                uses: i.uses,
                revoked_at: i.revoked_at,
            })
            .collect(),
    }))
}

/// Revokes an invite; owner only. Repeating it is harmless.
#[utoipa::path(delete, path = "/api/sessions/{session_id}/invites/{invite_id}", tag = "invites",
    params(
        ("session_id" = Uuid, Path, description = "Session id"),
        ("invite_id" = Uuid, Path, description = "Invite id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke_invite(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    Path((session_id, invite_id)): Path<(Uuid, Uuid)>,
) -> Result<StatusCode> {
    invites::revoke(&state.pool, session_id, &user, invite_id).await?;
    tracing::info!(%session_id, %invite_id, by = %user, "invite revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// Joins the session an invite token is for.
#[utoipa::path(post, path = "/api/invites/accept", tag = "invites",
    request_body = AcceptInput,
    responses(
        (status = 200, description = "Joined, or already a member", body = AcceptedView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 404, description = "Unknown token", body = ErrorBody),
        (status = 410, description = "Used up, expired or revoked, or the session was archived", body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn accept_invite(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    Json(input): Json<AcceptInput>,
) -> Result<Json<AcceptedView>> {
    let result = invites::accept(&state.pool, input.token.trim(), &user).await;
    let outcome = match &result {
        Ok(a) if a.already_member => "already_member",
        Ok(_) => "joined",
        Err(invites::Error::NotFound) => "not_found",
        Err(invites::Error::Gone(reason)) => reason.as_str(),
        Err(_) => "error",
    };
    metrics::counter!(m::INVITE_ACCEPTS_TOTAL, "outcome" => outcome).increment(1);
    let accepted = result?;
    state.events.events(accepted.event.clone());
    if !accepted.already_member {
        tracing::info!(session_id = %accepted.session_id, user = %user, role = %accepted.role, "member joined");
    }
    Ok(Json(AcceptedView {
        session_id: accepted.session_id,
        role: accepted.role,
        already_member: accepted.already_member,
    }))
}
