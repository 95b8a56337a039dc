//! Campaign media over HTTP: uploading maps and notes, asking for
//! generated media, listing, reading and deleting a session's media.
//!
//! | route | who |
//! |---|---|
//! | `POST /api/sessions/{id}/media` `{type, prompt, size?, voice?}` | members: generate an image or narration (202) |
//! | `POST /api/sessions/{id}/assets?kind=map\|note&name=` | owner, GMs: the body is the file |
//! | `PUT /api/sessions/{id}/assets/{media_id}?name=` | owner, GMs: a new version |
//! | `GET /api/sessions/{id}/media?kind=&cursor=&limit=` | members |
//! | `GET /api/sessions/{id}/media/{media_id}` | members |
//! | `DELETE /api/sessions/{id}/media/{media_id}` | owner, GMs, whoever added it |
//! | `GET /api/sessions/{id}/media/{media_id}/url` | members: a short-lived link |
//! | `GET /api/media/{session_id}/{type}/{file}` | members, or a signed link: the bytes |
//! | `GET /api/images/{file}` | members: the old frontend's route to images and maps |
//!
//! An upload's body is the file itself, its `Content-Type` the declared
//! type (not `multipart/form-data`: one file per request, streamed to
//! storage as it arrives while its SHA-256 is computed, never held whole in
//! memory). A declared `Content-Length` over the kind's limit is refused
//! before the body is read; a chunked body is cut off with 413 when it
//! passes the limit, and nothing is left behind. The two byte routes
//! (the last two rows) live in [`super::download`], which streams and
//! reads only the asked range from storage.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use chrono::{DateTime, Utc};
use questboard_core::media::{self, Media, MediaKind, MediaSource, MediaStatus, StoredObject};
use questboard_core::metrics as m;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::error::{Error, ErrorBody, Result};
use super::extract::{AuthUser, Json, Path, Query};

/// Routes with a JSON body or none, under `/api`.
pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/sessions/{session_id}/media",
            get(list_media).post(generate_media),
        )
        .route(
            "/sessions/{session_id}/media/{media_id}",
            get(get_media).delete(delete_media),
        )
        .route(
            "/sessions/{session_id}/media/{media_id}/url",
            get(media_link),
        )
}

/// Upload routes, under `/api`: their bodies are files with their own
/// limits, so they are outside the JSON body limit.
pub(super) fn upload_router() -> Router<AppState> {
    Router::new()
        .route("/sessions/{session_id}/assets", post(upload_asset))
        .route(
            "/sessions/{session_id}/assets/{media_id}",
            put(upload_version),
        )
}

/// A media item as members see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MediaView {
    /// Its id.
    pub media_id: Uuid,
    /// Its session.
    pub session_id: Uuid,
    /// `image`, `audio`, `map` or `note`.
    pub kind: MediaKind,
    /// `generated`, `uploaded` or `migrated`.
    pub source: MediaSource,
    /// `pending`, `ready` or `failed`.
    pub status: MediaStatus,
    /// The current version (1 for a new item).
    pub version: i32,
    /// Content type of the current version.
    pub content_type: Option<String>,
    /// Its size in bytes.
    pub byte_size: Option<i64>,
    /// Its SHA-256, hex (also its `ETag`).
    pub sha256: Option<String>,
    /// The uploader's file name, for display (never a storage key).
    pub original_name: Option<String>,
    /// Where members fetch the bytes (with their bearer token), once ready.
    pub url: Option<String>,
    /// Why generation failed.
    pub failure: Option<String>,
    /// Who added it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl From<Media> for MediaView {
    fn from(m: Media) -> Self {
        Self {
            url: m.url(),
            media_id: m.id,
            session_id: m.session_id,
            kind: m.kind,
            source: m.source,
            status: m.status,
            version: m.version,
            content_type: m.content_type,
            byte_size: m.byte_size,
            sha256: m.sha256.as_deref().map(hex::encode),
            original_name: m.original_name,
            failure: m.failure,
            created_by: m.created_by,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

/// Query of an upload.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadParams {
    /// `map` (`image/png` or `image/jpeg`) or `note` (`text/markdown` or `application/pdf`).
    #[param(required = true)]
    pub kind: Option<String>,
    /// The file's name, for display only (its last path component is kept).
    #[param(required = true, min_length = 1, max_length = 255)]
    pub name: Option<String>,
}

/// Query of a new version.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VersionParams {
    /// The new file's name, for display only (default: the previous one's).
    #[param(min_length = 1, max_length = 255)]
    pub name: Option<String>,
}

/// Uploads a map or a note; the owner and game masters only.
#[utoipa::path(post, path = "/api/sessions/{session_id}/assets", tag = "media",
    params(("session_id" = Uuid, Path, description = "Session id"), UploadParams),
    request_body(content = Vec<u8>, description = "The file itself; `Content-Type` is its type",
        content_type = "application/octet-stream"),
    responses(
        (status = 201, description = "Stored; `Location` is its metadata", body = MediaView),
        (status = 400, description = "The session id is not a UUID, or `kind` or `name` is missing or unknown", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "A member who is not a game master", body = ErrorBody),
        (status = 404, description = "No such session, or not a member", body = ErrorBody),
        (status = 408, description = "The body stopped arriving", body = ErrorBody),
        (status = 409, description = "The session is archived", body = ErrorBody),
        (status = 413, description = "Over the kind's limit (declared or as it arrived)", body = ErrorBody),
        (status = 415, description = "A type the kind does not take", body = ErrorBody),
        (status = 422, description = "The bytes are not what the type says, or the name is not acceptable", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn upload_asset(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    Path(session_id): Path<Uuid>,
    Query(params): Query<UploadParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let membership = media::require_uploader(&state.pool, session_id, &user).await?;
    let kind = match params.kind.as_deref().map(MediaKind::parse) {
        Some(Some(kind @ (MediaKind::Map | MediaKind::Note))) => kind,
        Some(_) => {
            return Err(Error::bad_request(
                "invalid_query",
                "kind must be map or note",
            ));
        }
        None => {
            return Err(Error::bad_request(
                "invalid_query",
                "kind is required (map or note)",
            ));
        }
    };
    let name = params
        .name
        .as_deref()
        .ok_or_else(|| Error::bad_request("invalid_query", "name is required"))?;
    let name = media::display_name(name)?;
    let id = Uuid::now_v7();
    let object = receive(
        &state,
        &membership.session.storage_prefix,
        kind,
        id,
        1,
        &headers,
        body,
    )
    .await?;
    let recorded =
        media::record_upload(&state.pool, id, session_id, kind, &user, &name, &object).await;
    let (item, event) = forget_on_failure(&state, &object, recorded).await?;
    state.events.events([event]);
    created(item)
}

/// Uploads a new version of a map or a note; the owner and game masters
/// only. The previous version stays stored until prune removes it.
#[utoipa::path(put, path = "/api/sessions/{session_id}/assets/{media_id}", tag = "media",
    params(("session_id" = Uuid, Path, description = "Session id"),
           ("media_id" = Uuid, Path, description = "The asset"), VersionParams),
    request_body(content = Vec<u8>, description = "The file itself; `Content-Type` is its type",
        content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "Stored as the next version", body = MediaView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, description = "No such session or asset, or not a member", body = ErrorBody),
        (status = 408, body = ErrorBody),
        (status = 409, description = "The session is archived, the item is not an upload, or another version arrived first", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn upload_version(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    Path((session_id, media_id)): Path<(Uuid, Uuid)>,
    Query(params): Query<VersionParams>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let (membership, previous, version) =
        media::next_version(&state.pool, session_id, media_id, &user).await?;
    let name = match params.name.as_deref() {
        Some(name) => media::display_name(name)?,
        None => previous.original_name.clone().unwrap_or_default(),
    };
    let object = receive(
        &state,
        &membership.session.storage_prefix,
        previous.kind,
        media_id,
        version,
        &headers,
        body,
    )
    .await?;
    let recorded = media::record_version(
        &state.pool,
        session_id,
        media_id,
        &user,
        &name,
        version,
        &object,
    )
    .await;
    let (item, event) = forget_on_failure(&state, &object, recorded).await?;
    state.events.events([event]);
    Ok(Json(MediaView::from(item)).into_response())
}

/// Streams an upload's body to storage through the one ingest path
/// ([`media::Ingest`]): its declared length and type first, then every
/// chunk counted, hashed and sniffed on its way; past the limit, or when
/// the bytes turn out to be something else, the upload is aborted and
/// nothing is stored.
async fn receive(
    state: &AppState,
    storage_prefix: &str,
    kind: MediaKind,
    id: Uuid,
    version: i32,
    headers: &HeaderMap,
    body: Body,
) -> Result<StoredObject> {
    let declared_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let declared_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let files = state.storage.session(storage_prefix)?;
    let ingest = media::Ingest {
        files: &files,
        kind,
        id,
        version,
        content_type: declared_type,
        limit: state.media.of(kind).unwrap_or_default(),
    };
    let object = ingest
        .store_stream(declared_length, body.into_data_stream())
        .await
        .map_err(|err| match err {
            media::ingest::Error::Refused(refusal) => refusal.into(),
            media::ingest::Error::Body(err) => body_error(err),
            media::ingest::Error::Storage(err) => err.into(),
        })?;
    metrics::counter!(m::MEDIA_UPLOADED_BYTES_TOTAL, "kind" => kind.as_str())
        .increment(object.byte_size);
    Ok(object)
}

/// What a body that failed to arrive becomes: 408 when it stopped
/// arriving in time, 400 otherwise.
fn body_error(err: axum::Error) -> Error {
    if super::extract::timed_out(&err) {
        Error::RequestTimeout
    } else {
        Error::bad_request("body_unreadable", "the request body could not be read")
    }
}

/// When recording a stored object fails, the object is deleted again
/// (reconcile finds it if that fails too).
async fn forget_on_failure<T>(
    state: &AppState,
    object: &StoredObject,
    recorded: media::Result<T>,
) -> Result<T> {
    match recorded {
        Ok(done) => Ok(done),
        Err(err) => {
            let _ = state
                .storage
                .delete_objects(vec![object.storage_key.clone()])
                .await;
            Err(err.into())
        }
    }
}

fn created(item: Media) -> Result<Response> {
    let location = format!("/api/sessions/{}/media/{}", item.session_id, item.id);
    let mut response = (StatusCode::CREATED, Json(MediaView::from(item))).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// Body of a generation request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateInput {
    /// `image` or `audio` (narration).
    #[serde(rename = "type")]
    #[schema(rename = "type", value_type = String, pattern = "^(image|audio)$")]
    pub kind: String,
    /// What to draw, or the text to speak.
    #[schema(min_length = 1, max_length = 4000)]
    pub prompt: String,
    /// Images: `WIDTHxHEIGHT` (default `1024x1024`).
    #[schema(pattern = "^[0-9]{2,4}x[0-9]{2,4}$")]
    pub size: Option<String>,
    /// Narration: the voice (default `alloy`).
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub voice: Option<String>,
}

/// A generation accepted.
#[derive(Debug, Serialize, ToSchema)]
pub struct GenerationAccepted {
    /// The item, `pending` until its job finishes (`media.ready` or `media.failed`).
    pub media_id: Uuid,
    /// The job making it (see `GET /api/jobs/{job_id}`).
    pub job_id: Option<String>,
    /// `pending`, `ready` or `failed` (a replayed request gets the item as it is now).
    pub status: MediaStatus,
}

/// Asks for a generated image or narration; members. Answered at once
/// (202): the `media` job makes it, and `media.ready` (or `media.failed`)
/// tells the session.
#[utoipa::path(post, path = "/api/sessions/{session_id}/media", tag = "media",
    params(("session_id" = Uuid, Path, description = "Session id"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$",
         description = "Sent again with the same body, gets the first answer and asks nothing new")),
    request_body = GenerateInput,
    responses(
        (status = 202, description = "Accepted (or replayed: `Idempotent-Replayed: true`)", body = GenerationAccepted),
        (status = 400, description = "Bad id, JSON or Idempotency-Key", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No such session, or not a member", body = ErrorBody),
        (status = 409, description = "The session is archived, or the key was used for another request", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, description = "Type, prompt, size or voice not acceptable", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the caller's media-per-hour quota (`Retry-After`)", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn generate_media(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    Path(session_id): Path<Uuid>,
    headers: HeaderMap,
    Json(input): Json<GenerateInput>,
) -> Result<Response> {
    let checked = || -> Result<(MediaKind, Option<&str>, serde_json::Value)> {
        let key = super::extract::idempotency_key(&headers)?;
        let kind = match input.kind.as_str() {
            "image" => MediaKind::Image,
            "audio" => MediaKind::Audio,
            _ => return Err(Error::Unprocessable("type must be image or audio".into())),
        };
        let mut options = serde_json::Map::new();
        if let Some(size) = &input.size {
            let valid = size.split_once('x').is_some_and(|(w, h)| {
                [w, h]
                    .iter()
                    .all(|n| (2..=4).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit()))
            });
            if !valid {
                return Err(Error::Unprocessable(
                    "size must be WIDTHxHEIGHT, e.g. 1024x1024".into(),
                ));
            }
            options.insert("size".into(), size.clone().into());
        }
        if let Some(voice) = &input.voice {
            if voice.is_empty()
                || voice.len() > 64
                || !voice
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(Error::Unprocessable(
                    "voice must be 1 to 64 letters, digits, '_' or '-'".into(),
                ));
            }
            options.insert("voice".into(), voice.clone().into());
        }
        Ok((kind, key, serde_json::Value::Object(options)))
    };
    let (kind, key, options) = match checked() {
        Ok(ok) => ok,
        Err(invalid) => {
            // A stranger learns nothing, not even about their input.
            questboard_core::sessions::require_member(&state.pool, session_id, &user).await?;
            return Err(invalid);
        }
    };
    let mut tx = state.pool.begin().await?;
    let asked = media::ask_generation(
        &mut tx,
        session_id,
        &user,
        &media::NewGeneration {
            kind,
            prompt: &input.prompt,
            options,
            idempotency_key: key,
        },
    )
    .await?;
    let mut requested = None;
    let (item, replayed) = match asked {
        media::Asked::Earlier(item) => (item, true),
        media::Asked::New(item) => {
            // Charged in the transaction that records the item: a refusal
            // writes nothing, a replay above costs nothing.
            if let Some(limit) = state
                .quotas
                .limit(questboard_core::quotas::Quota::UserMediaPerHour)
            {
                questboard_core::quotas::take(
                    &mut tx,
                    questboard_core::quotas::Quota::UserMediaPerHour,
                    limit,
                    user.as_str(),
                )
                .await??;
            }
            let job = media::GenerateMedia {
                media_id: item.id,
                session_id,
            };
            let enqueued =
                questboard_core::jobs::enqueue(&mut tx, &job, &Default::default()).await?;
            media::set_job(&mut tx, item.id, &enqueued.id).await?;
            let mut item = item;
            item.job_id = Some(enqueued.id);
            requested = Some(media::requested_event(&mut tx, &item).await?);
            (item, false)
        }
    };
    tx.commit().await?;
    if let Some(event) = requested {
        state.events.events([event]);
    }
    if !replayed {
        metrics::counter!(m::JOBS_ENQUEUED_TOTAL, "kind" => "media").increment(1);
        state.wake.announce("media");
    }
    let body = GenerationAccepted {
        media_id: item.id,
        job_id: item.job_id,
        status: item.status,
    };
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Query of a media list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MediaParams {
    /// Only this kind: `image`, `audio`, `map` or `note`.
    pub kind: Option<String>,
    /// Where the page starts: the previous page's `next_cursor`.
    pub cursor: Option<Uuid>,
    /// Page size, 1 to 100 (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
}

/// A page of media.
#[derive(Debug, Serialize, ToSchema)]
pub struct MediaPage {
    /// Newest first.
    pub media: Vec<MediaView>,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next_cursor: Option<Uuid>,
}

/// Lists a session's media, newest first; members only.
#[utoipa::path(get, path = "/api/sessions/{session_id}/media", tag = "media",
    params(("session_id" = Uuid, Path, description = "Session id"), MediaParams),
    responses((status = 200, body = MediaPage),
        (status = 400, description = "Bad id, kind, cursor or limit", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No such session, or not a member", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_media(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    Path(session_id): Path<Uuid>,
    Query(params): Query<MediaParams>,
) -> Result<Json<MediaPage>> {
    let kind = match params.kind.as_deref() {
        None => None,
        Some(k) => Some(MediaKind::parse(k).ok_or_else(|| {
            Error::bad_request("invalid_query", "kind must be image, audio, map or note")
        })?),
    };
    let limit = super::extract::page_limit(params.limit, 50)? as u32;
    let page =
        media::list_for_member(&state.pool, session_id, &user, kind, params.cursor, limit).await?;
    Ok(Json(MediaPage {
        media: page.items.into_iter().map(MediaView::from).collect(),
        next_cursor: page.next,
    }))
}

/// One media item's metadata; members only.
#[utoipa::path(get, path = "/api/sessions/{session_id}/media/{media_id}", tag = "media",
    params(("session_id" = Uuid, Path, description = "Session id"),
           ("media_id" = Uuid, Path, description = "The item")),
    responses((status = 200, body = MediaView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, description = "No such item in the session, or not a member", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_media(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    Path((session_id, media_id)): Path<(Uuid, Uuid)>,
) -> Result<Json<MediaView>> {
    let item = media::find(
        &state.pool,
        media_id,
        Some(session_id),
        media::Viewer::Member(&user),
    )
    .await?;
    Ok(Json(item.into()))
}

/// Deletes a media item with every version's bytes; the owner, game
/// masters, or whoever added it.
#[utoipa::path(delete, path = "/api/sessions/{session_id}/media/{media_id}", tag = "media",
    params(("session_id" = Uuid, Path, description = "Session id"),
           ("media_id" = Uuid, Path, description = "The item")),
    responses((status = 204, description = "Deleted"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "A player who did not add it", body = ErrorBody),
        (status = 404, description = "No such item in the session, or not a member", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete_media(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    Path((session_id, media_id)): Path<(Uuid, Uuid)>,
) -> Result<StatusCode> {
    let (keys, event) = media::delete(&state.pool, session_id, media_id, &user).await?;
    state.events.events([event]);
    if let Err(err) = state.storage.delete_objects(keys).await {
        // The rows are gone; reconcile reports and removes the orphans.
        tracing::warn!(%media_id, error = %err, "deleting media objects failed");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A short-lived link to a media item's bytes.
#[derive(Debug, Serialize, ToSchema)]
pub struct MediaLink {
    /// The link: a presigned URL of the store (S3, GCS), or questboard's
    /// own URL with `expires` and `signature` (relative to the API origin).
    pub url: String,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
}

/// A link to a media item's current bytes that needs no bearer token (for
/// `<img src>` and `<audio src>`), valid for `QB_MEDIA_LINK_TTL_SECONDS`;
/// members only.
#[utoipa::path(get, path = "/api/sessions/{session_id}/media/{media_id}/url", tag = "media",
    params(("session_id" = Uuid, Path, description = "Session id"),
           ("media_id" = Uuid, Path, description = "The item")),
    responses((status = 200, body = MediaLink),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, description = "No such item in the session (or not ready), or not a member", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn media_link(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    Path((session_id, media_id)): Path<(Uuid, Uuid)>,
) -> Result<Json<MediaLink>> {
    let item = media::find(
        &state.pool,
        media_id,
        Some(session_id),
        media::Viewer::Member(&user),
    )
    .await?;
    let (Some(url), Some(key), MediaStatus::Ready) = (item.url(), &item.storage_key, item.status)
    else {
        return Err(Error::NotFound("media"));
    };
    let ttl = state.links.ttl;
    let expires_at = Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default();
    let link = match state.storage.presigned_get(key, ttl).await? {
        Some(presigned) => presigned,
        None => {
            let expires = expires_at.timestamp();
            let signature = state.links.signer.sign(&url, expires);
            format!("{url}?expires={expires}&signature={signature}")
        }
    };
    Ok(Json(MediaLink {
        url: link,
        expires_at,
    }))
}

impl From<media::Refusal> for Error {
    fn from(refusal: media::Refusal) -> Self {
        match refusal {
            media::Refusal::UnsupportedType { .. } => Error::MediaTypeRefused(refusal.to_string()),
            media::Refusal::TooLarge { limit } => Error::PayloadTooLarge(limit as usize),
            media::Refusal::Disguised(_) => Error::Unprocessable(refusal.to_string()),
        }
    }
}

impl From<media::Error> for Error {
    fn from(err: media::Error) -> Self {
        match err {
            media::Error::Session(err) => err.into(),
            media::Error::NotFound => Error::NotFound("media"),
            media::Error::Invalid(why) | media::Error::Disguised(why) => Error::Unprocessable(why),
            media::Error::UnsupportedType(why) => Error::MediaTypeRefused(why),
            media::Error::TooLarge { limit } => Error::PayloadTooLarge(limit as usize),
            media::Error::Database(err) => Error::database(err),
        }
    }
}
