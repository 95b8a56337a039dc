//! Campaign media: what a session's images, audio, maps and notes are, who
//! may add, read and remove them, and where their bytes go.
//!
//! The bytes live in storage under the session's prefix, at keys questboard
//! makes (`sessions/<id>/media/maps/<media_id>.png`; a later version gets
//! `-v<n>` before the extension); a client's file name is kept for display
//! only and never reaches a key. The metadata (one `campaign_media` row
//! holding the current version, one `campaign_media_versions` row per
//! version) lives in Postgres and is written only after the object is
//! complete, so a row never points at a half-written object. Every change
//! appends a session event (`media.requested`, `media.ready`,
//! `media.failed`, `media.deleted`) in the same
//! transaction.
//!
//! Uploads are checked against their kind: maps are `image/png` or
//! `image/jpeg` up to 25 MB, notes `text/markdown` or `application/pdf` up
//! to 10 MB (configurable), and the bytes must be what the declared type
//! says ([`Sniffer`]).

pub mod generation;
pub mod ingest;
pub mod links;
pub mod sniff;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::events::{self, Event};
use crate::identity::UserId;
use crate::sessions::{self, Role, SessionStatus};
use crate::storage::Area;

pub use generation::{GenerateMedia, MAX_IMAGES_PER_REPLY, ask_for_turn_images};
pub use ingest::{Ingest, Refusal};
pub use links::LinkSigner;
pub use sniff::Sniffer;

/// What a media item is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum MediaKind {
    /// A generated image.
    Image,
    /// Generated audio (narration).
    Audio,
    /// An uploaded map.
    Map,
    /// Uploaded session notes.
    Note,
}

impl MediaKind {
    /// Every kind.
    pub const ALL: [MediaKind; 4] = [
        MediaKind::Image,
        MediaKind::Audio,
        MediaKind::Map,
        MediaKind::Note,
    ];

    /// The name clients use.
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Audio => "audio",
            MediaKind::Map => "map",
            MediaKind::Note => "note",
        }
    }

    /// Parses a client's name.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// Where its objects go.
    pub fn area(self) -> Area {
        match self {
            MediaKind::Image => Area::Images,
            MediaKind::Audio => Area::Audio,
            MediaKind::Map => Area::Maps,
            MediaKind::Note => Area::Notes,
        }
    }

    /// The `{type}` segment of its URL (`/api/media/{session}/{type}/{file}`).
    pub fn url_segment(self) -> &'static str {
        match self {
            MediaKind::Image => "images",
            MediaKind::Audio => "audio",
            MediaKind::Map => "maps",
            MediaKind::Note => "notes",
        }
    }

    /// The kind a URL segment names.
    pub fn from_url_segment(segment: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.url_segment() == segment)
    }

    /// Whether browsers should show it in place (images, audio, maps) or
    /// download it (notes).
    pub fn inline(self) -> bool {
        !matches!(self, MediaKind::Note)
    }

    /// The content types it may have, with the extension each is stored
    /// under.
    pub fn content_types(self) -> &'static [(&'static str, &'static str)] {
        match self {
            MediaKind::Image => &[
                ("image/png", "png"),
                ("image/jpeg", "jpg"),
                ("image/webp", "webp"),
            ],
            MediaKind::Audio => &[
                ("audio/wav", "wav"),
                ("audio/mpeg", "mp3"),
                ("audio/ogg", "ogg"),
                ("audio/opus", "opus"),
                ("audio/flac", "flac"),
            ],
            MediaKind::Map => &[("image/png", "png"), ("image/jpeg", "jpg")],
            MediaKind::Note => &[("text/markdown", "md"), ("application/pdf", "pdf")],
        }
    }

    /// The content type its objects of extension `ext` are stored and
    /// served as.
    pub fn content_type_of(self, ext: &str) -> Option<&'static str> {
        self.content_types()
            .iter()
            .find(|(_, e)| *e == ext)
            .map(|(ty, _)| *ty)
    }

    /// The extension `content_type` (parameters ignored) is stored under,
    /// if the kind admits it.
    pub fn extension_for(self, content_type: &str) -> Option<&'static str> {
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        self.content_types()
            .iter()
            .find(|(ty, _)| ty.eq_ignore_ascii_case(essence))
            .map(|(_, ext)| *ext)
    }
}

/// Where a media item came from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum MediaSource {
    /// Made by a model.
    Generated,
    /// Uploaded by a member.
    Uploaded,
    /// Moved from an older service.
    Migrated,
}

/// Whether its bytes are there.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum MediaStatus {
    /// Being generated.
    Pending,
    /// Stored and servable.
    Ready,
    /// Generation failed for good.
    Failed,
}

/// A media item's row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Media {
    /// Its id.
    pub id: Uuid,
    /// Its session.
    pub session_id: Uuid,
    /// What it is.
    pub kind: MediaKind,
    /// Where it came from.
    pub source: MediaSource,
    /// Whether its bytes are there.
    pub status: MediaStatus,
    /// The current version (1 for a new item).
    pub version: i32,
    /// Content type of the current version.
    pub content_type: Option<String>,
    /// Size of the current version, in bytes.
    pub byte_size: Option<i64>,
    /// SHA-256 of the current version.
    pub sha256: Option<Vec<u8>>,
    /// Storage key of the current version.
    pub storage_key: Option<String>,
    /// The uploader's file name, for display.
    pub original_name: Option<String>,
    /// What a generated item was asked for.
    pub prompt: Option<String>,
    /// Who generated it.
    pub provider: Option<String>,
    /// What else a generation asked for (`size`, `voice`).
    pub options: serde_json::Value,
    /// Why generation failed.
    pub failure: Option<String>,
    /// The job that generates it.
    pub job_id: Option<String>,
    /// What a generation asked, hashed (an Idempotency-Key reused for
    /// another request is refused by it).
    pub request_hash: Option<Vec<u8>>,
    /// Who added it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl Media {
    /// The file name of its current version in its URL and key
    /// (`<id>.png`, `<id>-v2.png`), if it has bytes.
    pub fn file_name(&self) -> Option<String> {
        let ext = self.kind.extension_for(self.content_type.as_deref()?)?;
        Some(object_name(self.id, self.version, ext))
    }

    /// Its URL: `/api/media/{session_id}/{type}/{file}`, if it has bytes.
    pub fn url(&self) -> Option<String> {
        Some(format!(
            "/api/media/{}/{}/{}",
            self.session_id,
            self.kind.url_segment(),
            self.file_name()?
        ))
    }
}

/// The name of a version's object within its area.
pub fn object_name(id: Uuid, version: i32, ext: &str) -> String {
    if version <= 1 {
        format!("{id}.{ext}")
    } else {
        format!("{id}-v{version}.{ext}")
    }
}

/// The media id and version a URL's file name names, if it is one of ours.
pub fn parse_file_name(name: &str) -> Option<(Uuid, i32)> {
    let (stem, _ext) = name.rsplit_once('.')?;
    match stem.split_once("-v") {
        Some((id, version)) => Some((
            Uuid::try_parse(id).ok()?,
            version.parse().ok().filter(|v| *v >= 2)?,
        )),
        None => Some((Uuid::try_parse(stem).ok()?, 1)),
    }
}

/// Longest display name kept, in characters.
pub const MAX_ORIGINAL_NAME_CHARS: usize = 255;

/// The display name of an upload: the last component of what the client
/// sent (so `../../etc/passwd` is shown as `passwd`), trimmed, at most
/// [`MAX_ORIGINAL_NAME_CHARS`], with no control or bidirectional
/// characters.
pub fn display_name(raw: &str) -> Result<String> {
    // The limit holds for what was sent (as the API description says), not
    // only for what is left once trimmed.
    if raw.chars().count() > MAX_ORIGINAL_NAME_CHARS {
        return Err(Error::Invalid(format!(
            "name must be at most {MAX_ORIGINAL_NAME_CHARS} characters"
        )));
    }
    let base = raw.rsplit(['/', '\\']).next().unwrap_or_default().trim();
    if base.is_empty() || base.chars().all(|c| c == '.') {
        return Err(Error::Invalid("name must name a file".into()));
    }
    if base.chars().count() > MAX_ORIGINAL_NAME_CHARS {
        return Err(Error::Invalid(format!(
            "name must be at most {MAX_ORIGINAL_NAME_CHARS} characters"
        )));
    }
    if let Some(reason) = crate::text::name_refusal(base) {
        return Err(Error::Invalid(format!("name {reason}")));
    }
    Ok(base.to_owned())
}

/// Size limits of uploads, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimits {
    /// Largest map, in bytes.
    pub map_max_bytes: u64,
    /// Largest note, in bytes.
    pub note_max_bytes: u64,
}

impl Default for UploadLimits {
    fn default() -> Self {
        Self {
            map_max_bytes: 25 * 1000 * 1000,
            note_max_bytes: 10 * 1000 * 1000,
        }
    }
}

impl UploadLimits {
    /// The limit of an upload of `kind`; None if the kind is not uploaded.
    pub fn of(&self, kind: MediaKind) -> Option<u64> {
        match kind {
            MediaKind::Map => Some(self.map_max_bytes),
            MediaKind::Note => Some(self.note_max_bytes),
            MediaKind::Image | MediaKind::Audio => None,
        }
    }
}

/// What can go wrong with media.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Membership, role or session state (not found, forbidden, archived).
    #[error(transparent)]
    Session(#[from] sessions::Error),
    /// No such media item in the session.
    #[error("no such media")]
    NotFound,
    /// The request is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The body is not of a type the kind admits.
    #[error("{0}")]
    UnsupportedType(String),
    /// The bytes are not what the declared type says.
    #[error("{0}")]
    Disguised(String),
    /// The body is over the kind's limit.
    #[error("the body is over the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether `role` may upload and replace maps and notes.
pub fn may_upload(role: Role) -> bool {
    matches!(role, Role::Owner | Role::Gm)
}

/// Checks that `user` may upload to the session now: a member (else 404),
/// owner or game master (else 403), the session active (else 409).
pub async fn require_uploader(
    pool: &PgPool,
    session_id: Uuid,
    user: &UserId,
) -> Result<sessions::Membership> {
    let membership = sessions::require_member(pool, session_id, user).await?;
    if !may_upload(membership.role) {
        return Err(
            sessions::Error::Forbidden("only the owner and game masters can upload").into(),
        );
    }
    if membership.session.status == SessionStatus::Archived {
        return Err(sessions::Error::Conflict("the session is archived").into());
    }
    Ok(membership)
}

/// A stored object, ready to be recorded as a version.
#[derive(Debug, Clone)]
pub struct StoredObject {
    /// Its key.
    pub storage_key: String,
    /// Its content type.
    pub content_type: String,
    /// Its size.
    pub byte_size: u64,
    /// Its SHA-256.
    pub sha256: [u8; 32],
}

/// Records an uploaded item whose object is stored, as version 1, and
/// appends `media.ready`. Checks the uploader again in the transaction
/// (their role may have changed while the body arrived).
pub async fn record_upload(
    pool: &PgPool,
    id: Uuid,
    session_id: Uuid,
    kind: MediaKind,
    user: &UserId,
    original_name: &str,
    object: &StoredObject,
) -> Result<(Media, Event)> {
    let mut tx = pool.begin().await?;
    lock_uploader(&mut tx, session_id, user).await?;
    let media = sqlx::query_as::<_, Media>(
        r#"
        INSERT INTO campaign_media
            (id, session_id, kind, source, status, version, content_type, byte_size,
             sha256, storage_key, original_name, created_by)
        VALUES ($1, $2, $3, 'uploaded', 'ready', 1, $4, $5, $6, $7, $8, $9)
        RETURNING *
        "#,
    )
    .bind(id)
    .bind(session_id)
    .bind(kind)
    .bind(&object.content_type)
    .bind(object.byte_size as i64)
    .bind(object.sha256.as_slice())
    .bind(&object.storage_key)
    .bind(original_name)
    .bind(user.as_str())
    .fetch_one(&mut *tx)
    .await?;
    insert_version(&mut tx, &media, user).await?;
    let event = ready_event(&mut tx, &media).await?;
    tx.commit().await?;
    Ok((media, event))
}

/// Records an item moved from an older service (an asset migration, the
/// legacy layout import) whose object is stored and verified, as version
/// 1, created by the session's owner, in the caller's transaction. A
/// second call with the same id changes nothing (a repeated run).
pub async fn record_migrated(
    tx: &mut sqlx::PgConnection,
    id: Uuid,
    session_id: Uuid,
    kind: MediaKind,
    object: &StoredObject,
    original_name: Option<&str>,
    options: &serde_json::Value,
) -> Result<()> {
    sqlx::query(
        r#"
        WITH owner AS (SELECT owner_user_id FROM campaign_sessions WHERE id = $2),
        m AS (
            INSERT INTO campaign_media
                (id, session_id, kind, source, status, version, content_type, byte_size, sha256,
                 storage_key, original_name, options, created_by)
            SELECT $1, $2, $3, 'migrated', 'ready', 1, $4, $5, $6, $7, $8, $9, owner.owner_user_id
            FROM owner
            ON CONFLICT (id) DO NOTHING
            RETURNING id, created_by
        )
        INSERT INTO campaign_media_versions
            (media_id, version, content_type, byte_size, sha256, storage_key, original_name, created_by)
        SELECT m.id, 1, $4, $5, $6, $7, $8, m.created_by FROM m
        "#,
    )
    .bind(id)
    .bind(session_id)
    .bind(kind)
    .bind(&object.content_type)
    .bind(object.byte_size as i64)
    .bind(object.sha256.as_slice())
    .bind(&object.storage_key)
    .bind(original_name)
    .bind(options)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Records a new version of an uploaded item whose object is stored; the
/// previous version stays until prune removes it. Appends `media.ready`.
pub async fn record_version(
    pool: &PgPool,
    session_id: Uuid,
    id: Uuid,
    user: &UserId,
    original_name: &str,
    version: i32,
    object: &StoredObject,
) -> Result<(Media, Event)> {
    let mut tx = pool.begin().await?;
    lock_uploader(&mut tx, session_id, user).await?;
    let media = sqlx::query_as::<_, Media>(
        r#"
        UPDATE campaign_media
        SET version = $3, content_type = $4, byte_size = $5, sha256 = $6,
            storage_key = $7, original_name = $8, updated_at = now()
        WHERE id = $1 AND session_id = $2 AND version = $3 - 1 AND source = 'uploaded'
        RETURNING *
        "#,
    )
    .bind(id)
    .bind(session_id)
    .bind(version)
    .bind(&object.content_type)
    .bind(object.byte_size as i64)
    .bind(object.sha256.as_slice())
    .bind(&object.storage_key)
    .bind(original_name)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(sessions::Error::Conflict(
        "the asset changed while the new version arrived; upload it again",
    ))?;
    sqlx::query(
        "UPDATE campaign_media_versions SET replaced_at = now()
         WHERE media_id = $1 AND replaced_at IS NULL",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    insert_version(&mut tx, &media, user).await?;
    let event = ready_event(&mut tx, &media).await?;
    tx.commit().await?;
    Ok((media, event))
}

/// The uploader's membership, the uploaded item a new version would
/// replace, and that version's number; checks the uploader first.
pub async fn next_version(
    pool: &PgPool,
    session_id: Uuid,
    id: Uuid,
    user: &UserId,
) -> Result<(sessions::Membership, Media, i32)> {
    let membership = require_uploader(pool, session_id, user).await?;
    let media = sqlx::query_as::<_, Media>(
        "SELECT * FROM campaign_media WHERE id = $1 AND session_id = $2",
    )
    .bind(id)
    .bind(session_id)
    .fetch_optional(pool)
    .await?
    .ok_or(Error::NotFound)?;
    if media.source != MediaSource::Uploaded {
        return Err(sessions::Error::Conflict("only uploaded assets get new versions").into());
    }
    let version = media.version + 1;
    Ok((membership, media, version))
}

async fn lock_uploader(tx: &mut sqlx::PgConnection, session_id: Uuid, user: &UserId) -> Result<()> {
    let row: Option<(Role, SessionStatus)> = sqlx::query_as(
        "SELECT m.role, s.status
         FROM campaign_session_members m JOIN campaign_sessions s ON s.id = m.session_id
         WHERE m.session_id = $1 AND m.user_id = $2
         FOR SHARE OF s",
    )
    .bind(session_id)
    .bind(user.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    match row {
        None => Err(sessions::Error::NotFound.into()),
        Some((role, _)) if !may_upload(role) => {
            Err(sessions::Error::Forbidden("only the owner and game masters can upload").into())
        }
        Some((_, SessionStatus::Archived)) => {
            Err(sessions::Error::Conflict("the session is archived").into())
        }
        Some(_) => Ok(()),
    }
}

async fn insert_version(tx: &mut sqlx::PgConnection, media: &Media, user: &UserId) -> Result<()> {
    sqlx::query(
        r#"
        INSERT INTO campaign_media_versions
            (media_id, version, content_type, byte_size, sha256, storage_key, original_name, created_by)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        "#,
    )
    .bind(media.id)
    .bind(media.version)
    .bind(&media.content_type)
    .bind(media.byte_size)
    .bind(&media.sha256)
    .bind(&media.storage_key)
    .bind(&media.original_name)
    .bind(user.as_str())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn ready_event(tx: &mut sqlx::PgConnection, media: &Media) -> Result<Event> {
    Ok(events::append(
        tx,
        media.session_id,
        "media.ready",
        with_turn(
            media,
            serde_json::json!({
                "media_id": media.id,
                "kind": media.kind,
                "version": media.version,
                "url": media.url(),
            }),
        ),
    )
    .await?)
}

/// `data` with the `turn_id` of the turn whose reply asked for `media`, if
/// one did.
fn with_turn(media: &Media, mut data: serde_json::Value) -> serde_json::Value {
    if let Some(turn) = media.options.get("turn_id") {
        data["turn_id"] = turn.clone();
    }
    data
}

/// The prompt a game master's reply asked an image for, made fit to ask:
/// control characters become spaces, it is cut to [`MAX_PROMPT_CHARS`];
/// None if nothing is left.
pub fn turn_prompt(raw: &str) -> Option<String> {
    let cleaned: String = raw
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_PROMPT_CHARS)
        .collect();
    let cleaned = cleaned.trim();
    crate::text::is_text(cleaned).then(|| cleaned.to_owned())
}

/// Records, in `tx`, a pending image asked for by the reply to `turn_id`
/// (generated by job `job_id`, already enqueued in `tx`), created by the
/// turn's author, and appends `media.requested`. `prompt` comes from
/// [`turn_prompt`].
pub async fn ask_for_turn(
    tx: &mut sqlx::PgConnection,
    media_id: Uuid,
    session_id: Uuid,
    turn_id: Uuid,
    prompt: &str,
    job_id: &str,
) -> Result<(Media, Event)> {
    let media = sqlx::query_as::<_, Media>(
        r#"
        INSERT INTO campaign_media
            (id, session_id, kind, source, status, prompt, options, job_id, created_by)
        SELECT $1, t.session_id, 'image', 'generated', 'pending', $4,
               jsonb_build_object('turn_id', t.id), $5, t.author_user_id
        FROM turns t WHERE t.id = $3 AND t.session_id = $2
        RETURNING *
        "#,
    )
    .bind(media_id)
    .bind(session_id)
    .bind(turn_id)
    .bind(prompt)
    .bind(job_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(Error::NotFound)?;
    let event = requested_event(tx, &media).await?;
    Ok((media, event))
}

/// Appends `media.requested` for a pending generated item, in `tx` (the
/// one that recorded it): members see it coming before it is ready.
pub async fn requested_event(tx: &mut sqlx::PgConnection, media: &Media) -> Result<Event> {
    Ok(events::append(
        tx,
        media.session_id,
        "media.requested",
        with_turn(
            media,
            serde_json::json!({
                "media_id": media.id,
                "kind": media.kind,
                "prompt": media.prompt,
                "by": media.created_by,
            }),
        ),
    )
    .await?)
}

/// Longest prompt of a generation, in characters.
pub const MAX_PROMPT_CHARS: usize = 4000;

/// A generation asked for by a member.
#[derive(Debug, Clone)]
pub struct NewGeneration<'a> {
    /// `image` or `audio`.
    pub kind: MediaKind,
    /// What to draw or say.
    pub prompt: &'a str,
    /// `size` or `voice`.
    pub options: serde_json::Value,
    /// The client's Idempotency-Key, if it sent one.
    pub idempotency_key: Option<&'a str>,
}

/// What asking for a generation did.
#[derive(Debug)]
pub enum Asked {
    /// A new pending item: enqueue its job in the same transaction.
    New(Media),
    /// The same key asked the same before: that item (and its job).
    Earlier(Media),
}

/// Records a pending generated item in `tx` (members may ask; the session
/// must be active). A repeated Idempotency-Key with the same request gets
/// the earlier item; with another request, [`sessions::Error::Conflict`].
pub async fn ask_generation(
    tx: &mut sqlx::PgConnection,
    session_id: Uuid,
    user: &UserId,
    ask: &NewGeneration<'_>,
) -> Result<Asked> {
    let membership = sessions::require_member(&mut *tx, session_id, user).await?;
    if !matches!(ask.kind, MediaKind::Image | MediaKind::Audio) {
        return Err(Error::Invalid("type must be image or audio".into()));
    }
    if !crate::text::is_text(ask.prompt) || ask.prompt.chars().count() > MAX_PROMPT_CHARS {
        return Err(Error::Invalid(format!(
            "prompt must be 1 to {MAX_PROMPT_CHARS} characters, not blank, without control characters"
        )));
    }
    if membership.session.status == SessionStatus::Archived {
        return Err(sessions::Error::Conflict("the session is archived").into());
    }
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(
        serde_json::to_vec(&(ask.kind, ask.prompt, &ask.options)).unwrap_or_default(),
    )
    .to_vec();
    if let Some(key) = ask.idempotency_key {
        let earlier = sqlx::query_as::<_, Media>(
            "SELECT * FROM campaign_media
             WHERE session_id = $1 AND created_by = $2 AND idempotency_key = $3",
        )
        .bind(session_id)
        .bind(user.as_str())
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(earlier) = earlier {
            if earlier.request_hash.as_deref() != Some(hash.as_slice()) {
                return Err(sessions::Error::Conflict(
                    "this Idempotency-Key was used for another request",
                )
                .into());
            }
            return Ok(Asked::Earlier(earlier));
        }
    }
    let media = sqlx::query_as::<_, Media>(
        r#"
        INSERT INTO campaign_media
            (id, session_id, kind, source, status, prompt, options, idempotency_key,
             request_hash, created_by)
        VALUES ($1, $2, $3, 'generated', 'pending', $4, $5, $6, $7, $8)
        RETURNING *
        "#,
    )
    .bind(Uuid::now_v7())
    .bind(session_id)
    .bind(ask.kind)
    .bind(ask.prompt)
    .bind(&ask.options)
    .bind(ask.idempotency_key)
    .bind(hash)
    .bind(user.as_str())
    .fetch_one(&mut *tx)
    .await?;
    Ok(Asked::New(media))
}

/// Notes the job that generates `id`.
pub async fn set_job(tx: &mut sqlx::PgConnection, id: Uuid, job_id: &str) -> Result<()> {
    sqlx::query("UPDATE campaign_media SET job_id = $2 WHERE id = $1")
        .bind(id)
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Records the stored object of a pending generated item and appends
/// `media.ready`; None if the item is gone or no longer pending (a run
/// that finished first, a deletion).
pub async fn record_generated(
    pool: &PgPool,
    id: Uuid,
    provider: &str,
    object: &StoredObject,
) -> Result<Option<(Media, Event)>> {
    let mut tx = pool.begin().await?;
    let media = sqlx::query_as::<_, Media>(
        r#"
        UPDATE campaign_media
        SET status = 'ready', content_type = $2, byte_size = $3, sha256 = $4,
            storage_key = $5, provider = $6, updated_at = now()
        WHERE id = $1 AND status = 'pending'
        RETURNING *
        "#,
    )
    .bind(id)
    .bind(&object.content_type)
    .bind(object.byte_size as i64)
    .bind(object.sha256.as_slice())
    .bind(&object.storage_key)
    .bind(provider)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(media) = media else {
        return Ok(None);
    };
    let user = UserId::parse(&media.created_by).map_err(|e| Error::Invalid(e.to_string()))?;
    insert_version(&mut tx, &media, &user).await?;
    let event = ready_event(&mut tx, &media).await?;
    tx.commit().await?;
    Ok(Some((media, event)))
}

/// Marks a pending generated item failed for good, with a reason safe to
/// show, and appends `media.failed`; None if it was not pending.
pub async fn record_failure(pool: &PgPool, id: Uuid, reason: &str) -> Result<Option<Event>> {
    let mut tx = pool.begin().await?;
    let media = sqlx::query_as::<_, Media>(
        "UPDATE campaign_media SET status = 'failed', failure = $2, updated_at = now()
         WHERE id = $1 AND status = 'pending' RETURNING *",
    )
    .bind(id)
    .bind(reason)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(media) = media else {
        return Ok(None);
    };
    let event = events::append(
        &mut tx,
        media.session_id,
        "media.failed",
        with_turn(
            &media,
            serde_json::json!({ "media_id": media.id, "kind": media.kind, "reason": reason }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Some(event))
}

/// Who is looking a media item up, for [`find`].
#[derive(Debug, Clone, Copy)]
pub enum Viewer<'a> {
    /// A user: only the items of their sessions exist for them.
    Member(&'a UserId),
    /// A caller already authorised otherwise (a signed link, a job).
    Authorised,
}

/// A media item by id, within `session_id` if given (the old
/// `/api/images/` route names no session), as `viewer` may see it:
/// [`Error::NotFound`] alike for a stranger, an unknown id and another
/// session's id.
pub async fn find(
    pool: &PgPool,
    id: Uuid,
    session_id: Option<Uuid>,
    viewer: Viewer<'_>,
) -> Result<Media> {
    let member = match viewer {
        Viewer::Member(user) => Some(user.as_str()),
        Viewer::Authorised => None,
    };
    sqlx::query_as::<_, Media>(
        r#"
        SELECT c.* FROM campaign_media c
        WHERE c.id = $1
          AND ($2::uuid IS NULL OR c.session_id = $2)
          AND ($3::text IS NULL OR EXISTS (
                SELECT 1 FROM campaign_session_members m
                WHERE m.session_id = c.session_id AND m.user_id = $3))
        "#,
    )
    .bind(id)
    .bind(session_id)
    .bind(member)
    .fetch_optional(pool)
    .await?
    .ok_or(Error::NotFound)
}

/// A page of a session's media, newest first.
#[derive(Debug)]
pub struct Page {
    /// The items.
    pub items: Vec<Media>,
    /// The id to pass as `after` for the next page.
    pub next: Option<Uuid>,
}

/// A session's media, newest first, for a member.
pub async fn list_for_member(
    pool: &PgPool,
    session_id: Uuid,
    user: &UserId,
    kind: Option<MediaKind>,
    after: Option<Uuid>,
    limit: u32,
) -> Result<Page> {
    sessions::require_member(pool, session_id, user).await?;
    let limit = i64::from(limit.clamp(1, 100));
    let mut items = sqlx::query_as::<_, Media>(
        r#"
        SELECT * FROM campaign_media
        WHERE session_id = $1
          AND ($2::text IS NULL OR kind = $2)
          AND ($3::uuid IS NULL OR id < $3)
        ORDER BY id DESC
        LIMIT $4
        "#,
    )
    .bind(session_id)
    .bind(kind.map(MediaKind::as_str))
    .bind(after)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    let next = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|m| m.id)
    } else {
        None
    };
    Ok(Page { items, next })
}

/// Removes a media item (owner, game masters, or whoever added it): its
/// rows go now, with `media.deleted`; the returned keys (every version's
/// object) are for the caller to delete from storage (what it fails to
/// delete, reconcile finds as orphans).
pub async fn delete(
    pool: &PgPool,
    session_id: Uuid,
    id: Uuid,
    user: &UserId,
) -> Result<(Vec<String>, Event)> {
    let mut tx = pool.begin().await?;
    let membership = sessions::require_member(&mut *tx, session_id, user).await?;
    let media = sqlx::query_as::<_, Media>(
        "SELECT * FROM campaign_media WHERE id = $1 AND session_id = $2 FOR UPDATE",
    )
    .bind(id)
    .bind(session_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(Error::NotFound)?;
    if !may_upload(membership.role) && media.created_by != user.as_str() {
        return Err(sessions::Error::Forbidden(
            "only the owner, game masters or whoever added it can delete media",
        )
        .into());
    }
    let mut keys: Vec<String> =
        sqlx::query_scalar("SELECT storage_key FROM campaign_media_versions WHERE media_id = $1")
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
    if let Some(key) = &media.storage_key
        && !keys.contains(key)
    {
        keys.push(key.clone());
    }
    sqlx::query("DELETE FROM campaign_media WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let event = events::append(
        &mut tx,
        session_id,
        "media.deleted",
        serde_json::json!({ "media_id": id, "kind": media.kind, "by": user.as_str() }),
    )
    .await?;
    tx.commit().await?;
    Ok((keys, event))
}

/// A replaced version prune may remove.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OldVersion {
    /// Its item.
    pub media_id: Uuid,
    /// Its number.
    pub version: i32,
    /// Its object.
    pub storage_key: String,
    /// Its size.
    pub byte_size: i64,
}

/// Up to `limit` versions replaced before `before`, oldest first, after
/// `after` (the last one of the previous page, in that order).
pub async fn replaced_before(
    pool: &PgPool,
    before: DateTime<Utc>,
    after: Option<(DateTime<Utc>, Uuid, i32)>,
    limit: i64,
) -> Result<Vec<(DateTime<Utc>, OldVersion)>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        replaced_at: DateTime<Utc>,
        #[sqlx(flatten)]
        version: OldVersion,
    }
    let (at, id, number) = match after {
        Some((at, id, number)) => (Some(at), Some(id), Some(number)),
        None => (None, None, None),
    };
    let rows = sqlx::query_as::<_, Row>(
        r#"
        SELECT replaced_at, media_id, version, storage_key, byte_size
        FROM campaign_media_versions
        WHERE replaced_at IS NOT NULL AND replaced_at < $1
          AND ($2::timestamptz IS NULL
               OR (replaced_at, media_id, version) > ($2::timestamptz, $3::uuid, $4::int))
        ORDER BY replaced_at, media_id, version
        LIMIT $5
        "#,
    )
    .bind(before)
    .bind(at)
    .bind(id)
    .bind(number)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.replaced_at, r.version))
        .collect())
}

/// Forgets replaced versions whose objects are deleted; the current
/// version of an item is never among them. Returns how many went.
pub async fn forget_versions(pool: &PgPool, versions: &[OldVersion]) -> Result<u64> {
    let ids: Vec<Uuid> = versions.iter().map(|v| v.media_id).collect();
    let numbers: Vec<i32> = versions.iter().map(|v| v.version).collect();
    let done = sqlx::query(
        r#"
        DELETE FROM campaign_media_versions v
        USING unnest($1::uuid[], $2::int[]) AS gone(media_id, version)
        WHERE v.media_id = gone.media_id AND v.version = gone.version
          AND v.replaced_at IS NOT NULL
        "#,
    )
    .bind(&ids)
    .bind(&numbers)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Which of `keys` some media version records (the others, under a
/// session's media areas, are objects nothing points to).
pub async fn known_keys(pool: &PgPool, keys: &[String]) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT storage_key FROM campaign_media_versions WHERE storage_key = ANY($1)",
    )
    .bind(keys)
    .fetch_all(pool)
    .await?)
}

/// A page of every recorded version's key, in key order after `after`,
/// with whether it is its item's current version.
pub async fn page_keys(pool: &PgPool, after: &str, limit: i64) -> Result<Vec<(String, bool)>> {
    Ok(sqlx::query_as(
        "SELECT storage_key, replaced_at IS NULL FROM campaign_media_versions
         WHERE storage_key > $1 ORDER BY storage_key LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Generated items still `pending` whose job will never record them: it
/// is gone, or finished (succeeded, cancelled, failed for good) without
/// doing so, say because its last attempt died with its worker. Up to
/// `limit`, oldest first.
pub async fn stalled(pool: &PgPool, limit: i64) -> Result<Vec<Media>> {
    Ok(sqlx::query_as::<_, Media>(
        r#"
        SELECT c.* FROM campaign_media c
        LEFT JOIN apalis.jobs j ON j.id = c.job_id
        WHERE c.status = 'pending' AND c.updated_at < now() - interval '1 minute'
          AND (j.id IS NULL OR j.status IN ('Done', 'Killed')
               OR (j.status = 'Failed' AND j.attempts >= j.max_attempts))
        ORDER BY c.id
        LIMIT $1
        "#,
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn file_names_round_trip_and_refuse_strangers() {
        let id = Uuid::now_v7();
        assert_eq!(parse_file_name(&object_name(id, 1, "png")), Some((id, 1)));
        assert_eq!(parse_file_name(&object_name(id, 7, "md")), Some((id, 7)));
        for bad in [
            "x.png",
            "passwd",
            &format!("{id}-v1.png"),
            &format!("{id}-v0.png"),
            &format!("{id}-vx.png"),
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn display_names_lose_their_directories_and_refuse_tricks() {
        assert_eq!(display_name("../../etc/passwd").unwrap(), "passwd");
        assert_eq!(display_name("C:\\maps\\keep.png").unwrap(), "keep.png");
        assert_eq!(
            display_name(" Dungeon level 1.png ").unwrap(),
            "Dungeon level 1.png"
        );
        for bad in [
            "",
            "..",
            "dir/",
            "a\u{0}b.png",
            "\u{202e}gnp.exe",
            &"x".repeat(256),
            // What the contract run sent: within the limit once trimmed,
            // not as sent.
            &format!("N{}", "\u{85}".repeat(300)),
        ] {
            assert!(display_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn kinds_admit_their_types() {
        assert_eq!(MediaKind::Map.extension_for("image/PNG"), Some("png"));
        assert_eq!(MediaKind::Map.extension_for("image/jpeg; q=1"), Some("jpg"));
        assert_eq!(MediaKind::Map.extension_for("application/pdf"), None);
        assert_eq!(
            MediaKind::Note.extension_for("text/markdown; charset=utf-8"),
            Some("md")
        );
        assert_eq!(MediaKind::Note.extension_for("text/html"), None);
    }
}
