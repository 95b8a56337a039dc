//! `/api/sessions/{id}/state`: reading a session's game state (members) and
//! changing it with operations against its version (the game master: the
//! owner and `gm` members). The rules live in `questboard_core::state`;
//! the session socket offers the same two actions as messages.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use questboard_core::identity::UserId;
use questboard_core::state::{self, Snapshot, Update};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::{ErrorBody, Result};
use super::extract::{AuthUser, Json, Path};
use super::{AppState, Error};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/sessions/{session_id}/state", get(get_state))
        .route("/sessions/{session_id}/state/updates", post(update_state))
}

/// A session's game state at one version.
#[derive(Debug, Serialize, ToSchema)]
pub struct StateView {
    /// The session.
    pub session_id: Uuid,
    /// How many updates were applied (0 for a new session).
    pub version: i64,
    /// When the last one was.
    pub updated_at: DateTime<Utc>,
    /// `{characters, actors, items, currentEncounter, pluginData,
    /// stateVersion, lastUpdated}`.
    #[schema(value_type = Object)]
    pub state: Value,
}

impl From<Snapshot> for StateView {
    fn from(snapshot: Snapshot) -> Self {
        StateView {
            session_id: snapshot.session_id,
            version: snapshot.version,
            updated_at: snapshot.updated_at,
            state: snapshot.document(),
        }
    }
}

/// The strong entity tag of a state version.
pub fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

/// An update of the game state.
#[derive(Debug, Deserialize, ToSchema)]
pub struct StateUpdateInput {
    /// Your id for this update (1 to 128 printable ASCII characters): sent
    /// again, it gets the first answer and applies nothing.
    pub id: Option<String>,
    /// The version the operations were made against (must be the current one).
    #[serde(deserialize_with = "super::extract::required_whole_number")]
    #[schema(minimum = 0)]
    pub version: i64,
    /// 1 to 500 operations, together at most `QB_STATE_MAX_UPDATE_BYTES`
    /// (64 KiB) of compact JSON, applied in order, all or none.
    #[schema(value_type = Vec<questboard_core::state::ops::StateOperation>, min_items = 1, max_items = 500)]
    pub operations: Vec<Value>,
}

/// An applied update.
#[derive(Debug, Serialize, ToSchema)]
pub struct StateUpdated {
    /// The state's version now.
    pub new_version: i64,
    /// The update's id, as in its `state.updated` event.
    pub update_id: Uuid,
}

#[utoipa::path(get, path = "/api/sessions/{session_id}/state", tag = "state",
    params(
        ("session_id" = Uuid, Path, description = "Session id"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier read: 304 while the version is the same")),
    responses(
        (status = 200, body = StateView, headers(("ETag" = String, description = "The version, quoted"))),
        (status = 304, description = "Not modified since the ETag sent"),
        (status = 400, description = "The session id is not a UUID", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No such session, or not a member", body = ErrorBody)),
    security(("bearer" = [])))]
/// `GET /api/sessions/{id}/state`: the state with its version as `ETag`.
pub async fn get_state(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    Path(session_id): Path<Uuid>,
    headers: HeaderMap,
) -> Result<Response> {
    let snapshot = state::read_as_member(&state.pool, session_id, &user).await?;
    let tag = etag(snapshot.version);
    let mut response = if not_modified(&headers, &tag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Json(StateView::from(snapshot)).into_response()
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&tag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    Ok(response)
}

/// Whether `If-None-Match` names `tag` (or is `*`), weak or strong.
fn not_modified(headers: &HeaderMap, tag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == tag)
}

#[utoipa::path(post, path = "/api/sessions/{session_id}/state/updates", tag = "state",
    params(("session_id" = Uuid, Path, description = "Session id")),
    request_body = StateUpdateInput,
    responses(
        (status = 200, description = "Applied (or an earlier update with the same id)", body = StateUpdated),
        (status = 400, description = "The session id is not a UUID, or the body is not JSON", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 403, description = "A member who is not a game master", body = ErrorBody),
        (status = 404, description = "No such session, or not a member", body = ErrorBody),
        (status = 409, description = "`VERSION_CONFLICT` with `current_version`; or the session is archived; or the id was used for another update", body = ErrorBody),
        (status = 413, description = "Body over `QB_MAX_BODY_BYTES`", body = ErrorBody),
        (status = 422, description = "`VALIDATION_ERROR` with the `operation` index refused (or none: too many operations, or over `QB_STATE_MAX_UPDATE_BYTES` together), or `STATE_TOO_LARGE`", body = ErrorBody)),
    security(("bearer" = [])))]
/// `POST /api/sessions/{id}/state/updates`: applies operations against a version.
pub async fn update_state(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    Path(session_id): Path<Uuid>,
    Json(input): Json<StateUpdateInput>,
) -> Result<Json<StateUpdated>> {
    let applied = apply(&state, session_id, &user, &input).await?;
    Ok(Json(applied))
}

/// Validates and applies an update, then publishes its event: the one
/// path of REST and socket updates.
pub async fn apply(
    state: &AppState,
    session_id: Uuid,
    user: &UserId,
    input: &StateUpdateInput,
) -> Result<StateUpdated, Error> {
    let parsed = match &input.id {
        Some(id) => state::check_request_id(id),
        None => Ok(()),
    }
    .and_then(|()| state::parse_operations(&input.operations, state.state_limits.max_update_bytes));
    let operations = match parsed {
        Ok(operations) => operations,
        Err(err) => {
            // Who may act comes before what they asked: a player or a
            // stranger learns nothing from a malformed update.
            state::require_game_master(&state.pool, session_id, user).await?;
            return Err(err.into());
        }
    };
    let applied = state::update_as_gm(
        &state.pool,
        &state.recent_states,
        session_id,
        user,
        Update {
            request_id: input.id.as_deref(),
            version: input.version,
            operations: &operations,
            max_bytes: state.state_limits.max_bytes,
        },
    )
    .await?;
    if let Some(event) = applied.event {
        metrics::counter!(questboard_core::metrics::STATE_UPDATES_TOTAL, "source" => "gm")
            .increment(1);
        state.events.events([event]);
    }
    Ok(StateUpdated {
        new_version: applied.new_version,
        update_id: applied.update_id,
    })
}
