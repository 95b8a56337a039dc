//! Campaign media over HTTP: uploading maps and notes, listing, reading
//! and deleting a session's media, and serving the bytes to members.
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
//! passes the limit, and nothing is left behind. Serving streams too, and
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
        .route("/media/{session_id}/{kind}/{file}", get(serve_media))
        .route("/images/{file}", get(serve_legacy_image))
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
            sha256: m.sha256.as_deref().map(hex),
            original_name: m.original_name,
            failure: m.failure,
            created_by: m.created_by,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
        (status = 422, description = "Type, prompt, size or voice not acceptable", body = ErrorBody)),
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

/// The query of a signed link.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LinkParams {
    /// A signed link's expiry (Unix seconds, plain decimal: no sign, no
    /// leading zero).
    #[param(pattern = "^(0|[1-9][0-9]{0,17})$")]
    pub expires: Option<String>,
    /// A signed link's signature (64 hex digits).
    #[param(pattern = "^[0-9a-f]{64}$")]
    pub signature: Option<String>,
}

/// The bytes of a media item; members only (404 otherwise, as for a file
/// that does not exist).
///
/// `ETag` is the SHA-256 (`If-None-Match` gives 304); one `Range` of
/// bytes gives 206 and reads only that range from storage (416 when it
/// cannot be satisfied). Served with `X-Content-Type-Options: nosniff`,
/// `Cache-Control: private`, and `Content-Disposition` inline for images,
/// audio and maps, attachment for notes.
#[utoipa::path(get, path = "/api/media/{session_id}/{kind}/{file}", tag = "media",
    params(("session_id" = Uuid, Path, description = "Session id"),
           ("kind" = String, Path, description = "`images`, `audio`, `maps` or `notes`"),
           ("file" = String, Path, description = "`<media_id>.<ext>` (a later version: `<media_id>-v<n>.<ext>`)"),
           LinkParams,
           ("Range" = Option<String>, Header, description = "One range of bytes, `bytes=a-b`, `bytes=a-` or `bytes=-n`"),
           ("If-None-Match" = Option<String>, Header, description = "An `ETag` seen before")),
    responses(
        (status = 200, description = "The bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "The range asked for", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 304, description = "Not modified"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "A signed link that is expired, tampered with or for another object", body = ErrorBody),
        (status = 404, description = "No such file, or not a member", body = ErrorBody),
        (status = 416, description = "The range is past the end", body = ErrorBody)),
    security(("bearer" = []), ()))]
pub async fn serve_media(
    auth: Result<AuthUser>,
    State(state): State<AppState>,
    Path((session_id, segment, file)): Path<(Uuid, String, String)>,
    Query(link): Query<LinkParams>,
    headers: HeaderMap,
) -> Result<Response> {
    let not_found = || Error::NotFound("file");
    let path = format!("/api/media/{session_id}/{segment}/{file}");
    // A signed link stands for a member; without one, the bearer token does.
    // (Half a link is no link: the bearer token must do.)
    let user = match (&link.expires, &link.signature) {
        (Some(expires), Some(signature)) => {
            let now = Utc::now().timestamp();
            if !state.links.signer.verify(&path, expires, signature, now) {
                return Err(Error::Forbidden(
                    "the link is expired or not valid for this file".into(),
                ));
            }
            None
        }
        _ => Some(auth?.0),
    };
    let kind = MediaKind::from_url_segment(&segment).ok_or_else(not_found)?;
    let (media_id, version) = media::parse_file_name(&file).ok_or_else(not_found)?;
    let item = match &user {
        Some(user) => {
            media::find(
                &state.pool,
                media_id,
                Some(session_id),
                media::Viewer::Member(user),
            )
            .await
        }
        None => {
            media::find(
                &state.pool,
                media_id,
                Some(session_id),
                media::Viewer::Authorised,
            )
            .await
        }
    }
    .map_err(|_| not_found())?;
    if item.kind != kind {
        return Err(not_found());
    }
    send(&state, &item, version, &file, &headers).await
}

/// `GET /api/images/{file}`: the route the old frontend fetches images
/// from. Resolved through the metadata (`<media_id>.<ext>` of an image or a
/// map), with the same rules: members only (404 otherwise), the same
/// headers, ranges and 304.
#[utoipa::path(get, path = "/api/images/{file}", tag = "media",
    params(("file" = String, Path, description = "`<media_id>.<ext>` of an image or a map"),
           ("Range" = Option<String>, Header, description = "One range of bytes"),
           ("If-None-Match" = Option<String>, Header, description = "An `ETag` seen before")),
    responses(
        (status = 200, description = "The bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "The range asked for", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 304, description = "Not modified"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, description = "No such image, or not a member of its session", body = ErrorBody),
        (status = 416, description = "The range is past the end", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn serve_legacy_image(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let not_found = || Error::NotFound("file");
    let (media_id, version) = media::parse_file_name(&file).ok_or_else(not_found)?;
    let item = media::find(&state.pool, media_id, None, media::Viewer::Member(&user))
        .await
        .map_err(|_| not_found())?;
    if !matches!(item.kind, MediaKind::Image | MediaKind::Map) {
        return Err(not_found());
    }
    send(&state, &item, version, &file, &headers).await
}

/// Sends version `version` of `item` (whose caller is authorised) as
/// `file`, honouring `If-None-Match` and `Range`.
pub(super) async fn send(
    state: &AppState,
    item: &Media,
    version: i32,
    file: &str,
    headers: &HeaderMap,
) -> Result<Response> {
    let not_found = || Error::NotFound("file");
    if item.status != MediaStatus::Ready || item.version != version {
        return Err(not_found());
    }
    let Some(name) = item.file_name() else {
        return Err(not_found());
    };
    if name != file {
        return Err(not_found());
    }
    let (Some(key), Some(sha), Some(size), Some(content_type)) = (
        &item.storage_key,
        &item.sha256,
        item.byte_size,
        &item.content_type,
    ) else {
        return Err(not_found());
    };
    let object = Object {
        key,
        sha256: sha,
        size: size as u64,
        content_type,
        inline: item.kind.inline(),
        file_name: file,
        kind: Some(item.kind),
    };
    send_object(state, &object, headers).await
}

/// A stored object to send to a client allowed to read it.
pub(super) struct Object<'a> {
    /// Its key.
    pub key: &'a str,
    /// Its SHA-256 (the `ETag`).
    pub sha256: &'a [u8],
    /// Its size.
    pub size: u64,
    /// Its content type.
    pub content_type: &'a str,
    /// Shown in place (else downloaded).
    pub inline: bool,
    /// The file name in `Content-Disposition` (a safe name).
    pub file_name: &'a str,
    /// The media kind, for the bytes-served count (None: not media).
    pub kind: Option<MediaKind>,
}

/// Sends `object`, honouring `If-None-Match` and `Range`.
pub(super) async fn send_object(
    state: &AppState,
    object: &Object<'_>,
    headers: &HeaderMap,
) -> Result<Response> {
    let not_found = || Error::NotFound("file");
    let (key, sha, size, content_type, file) = (
        object.key,
        object.sha256,
        object.size,
        object.content_type,
        object.file_name,
    );
    let etag = format!("\"{}\"", hex(sha));
    let mut common = private_headers();
    insert(&mut common, header::ETAG, &etag);
    insert(&mut common, header::ACCEPT_RANGES, "bytes");
    if matches_etag(headers, &etag) {
        return Ok((StatusCode::NOT_MODIFIED, common).into_response());
    }
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(spec) => match parse_range(spec, size) {
            RangeAsk::Whole => None,
            RangeAsk::Part(range) => Some(range),
            RangeAsk::Unsatisfiable => {
                insert(
                    &mut common,
                    header::CONTENT_RANGE,
                    &format!("bytes */{size}"),
                );
                let mut response = Error::RangeNotSatisfiable(size).into_response();
                response.headers_mut().extend(common);
                return Ok(response);
            }
        },
    };
    let reading = state
        .storage
        .read(key, range.clone())
        .await
        .map_err(|err| match err {
            questboard_core::storage::Error::NotFound => not_found(),
            other => Error::from(other),
        })?;
    describe_body(&mut common, content_type, object.inline, file);
    let (status, length) = match &range {
        Some(r) => {
            insert(
                &mut common,
                header::CONTENT_RANGE,
                &format!("bytes {}-{}/{size}", r.start, r.end - 1),
            );
            (StatusCode::PARTIAL_CONTENT, r.end - r.start)
        }
        None => (StatusCode::OK, reading.size),
    };
    insert(&mut common, header::CONTENT_LENGTH, &length.to_string());
    if let Some(kind) = object.kind {
        metrics::counter!(m::MEDIA_SERVED_BYTES_TOTAL, "kind" => kind.as_str()).increment(length);
    }
    let body = Body::from_stream(reading.stream);
    Ok((status, common, body).into_response())
}

/// Sends `bytes` read from elsewhere than storage (whose caller is
/// authorised and has checked them) with the headers of a stored object,
/// without `ETag` or ranges.
pub(super) fn send_bytes(
    content_type: &str,
    inline: bool,
    file_name: &str,
    bytes: Vec<u8>,
) -> Response {
    let mut headers = private_headers();
    describe_body(&mut headers, content_type, inline, file_name);
    (headers, bytes).into_response()
}

/// What every served file carries: not cached without asking, never
/// sniffed.
fn private_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    insert(&mut headers, header::CACHE_CONTROL, "private, no-cache");
    insert(&mut headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    headers
}

/// Its type, and whether it is shown in place or downloaded, as `file`.
fn describe_body(headers: &mut HeaderMap, content_type: &str, inline: bool, file: &str) {
    let how = if inline { "inline" } else { "attachment" };
    insert(headers, header::CONTENT_TYPE, content_type);
    insert(
        headers,
        header::CONTENT_DISPOSITION,
        &format!("{how}; filename=\"{file}\""),
    );
}

fn insert(headers: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// Whether `If-None-Match` names `etag` (or is `*`).
fn matches_etag(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

/// What a `Range` header asks of an object of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
enum RangeAsk {
    /// No usable range (malformed, several ranges, not bytes): the whole
    /// object, as RFC 9110 allows.
    Whole,
    /// These bytes.
    Part(std::ops::Range<u64>),
    /// Past the end.
    Unsatisfiable,
}

fn parse_range(spec: &str, size: u64) -> RangeAsk {
    let Some(ranges) = spec.trim().strip_prefix("bytes=") else {
        return RangeAsk::Whole;
    };
    if ranges.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((first, last)) = ranges.trim().split_once('-') else {
        return RangeAsk::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (number(first), number(last)) {
        // bytes=-n: the last n bytes.
        (None, Some(n)) if first.is_empty() => {
            if n == 0 || size == 0 {
                RangeAsk::Unsatisfiable
            } else {
                RangeAsk::Part(size.saturating_sub(n)..size)
            }
        }
        (Some(a), None) if last.is_empty() => {
            if a >= size {
                RangeAsk::Unsatisfiable
            } else {
                RangeAsk::Part(a..size)
            }
        }
        (Some(a), Some(b)) if a <= b => {
            if a >= size {
                RangeAsk::Unsatisfiable
            } else {
                RangeAsk::Part(a..(b + 1).min(size))
            }
        }
        _ => RangeAsk::Whole,
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), RangeAsk::Part(0..10));
        assert_eq!(parse_range("bytes=90-", 100), RangeAsk::Part(90..100));
        assert_eq!(parse_range("bytes=-10", 100), RangeAsk::Part(90..100));
        assert_eq!(parse_range("bytes=-1000", 100), RangeAsk::Part(0..100));
        assert_eq!(parse_range("bytes=50-1000", 100), RangeAsk::Part(50..100));
        assert_eq!(parse_range("bytes=100-", 100), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), RangeAsk::Unsatisfiable);
        assert_eq!(parse_range("bytes=5-1", 100), RangeAsk::Whole);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), RangeAsk::Whole);
        assert_eq!(parse_range("items=0-1", 100), RangeAsk::Whole);
        assert_eq!(parse_range("bytes=+1-2", 100), RangeAsk::Whole);
    }
}
