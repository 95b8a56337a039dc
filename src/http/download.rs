//! Sending stored bytes to a client allowed to read them: media by its
//! object name (members, or a signed link), the old frontend's image
//! route, and what other modules serve (legacy files, old assets) through
//! [`send_object`] and [`send_bytes`].
//!
//! `ETag` is the object's SHA-256 (`If-None-Match` gives 304); one
//! `Range` gives 206 and reads only that range from storage (416 when it
//! cannot be satisfied); every response carries `nosniff`,
//! `Cache-Control: private` and a `Content-Disposition` built from a safe
//! name.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;
use questboard_core::media::{self, Media, MediaKind, MediaStatus};
use questboard_core::metrics as m;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::AppState;
use super::error::{Error, ErrorBody, Result};
use super::extract::{AuthUser, Path, Query};

/// The byte routes, under `/api`.
pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/media/{session_id}/{kind}/{file}", get(serve_media))
        .route("/images/{file}", get(serve_legacy_image))
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
    let etag = format!("\"{}\"", hex::encode(sha));
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
