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
//!
//! By concern: [`kind`] (what an item is, object and display names,
//! upload limits), [`ingest`] (the one way bytes become a stored object),
//! [`record`] (who may add media; the rows and events of a new version),
//! [`generation`] (asking for generated images and their `media` job),
//! [`retention`] (what prune and reconcile read), [`links`] (signed
//! links), [`sniff`] (is the body what its type says). This module keeps
//! the item row, reading and deleting.

pub mod generation;
pub mod ingest;
pub mod kind;
pub mod links;
pub mod record;
pub mod retention;
pub mod sniff;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::events::{self, Event};
use crate::identity::UserId;
use crate::sessions;

pub use generation::{
    Asked, GenerateMedia, MAX_IMAGES_PER_REPLY, MAX_PROMPT_CHARS, NewGeneration, ask_for_turn,
    ask_for_turn_images, ask_generation, record_failure, requested_event, set_job, stalled,
    turn_prompt,
};
pub use ingest::{Ingest, Refusal};
pub use kind::{
    MAX_ORIGINAL_NAME_CHARS, MediaKind, UploadLimits, display_name, object_name, parse_file_name,
};
pub use links::LinkSigner;
pub use record::{
    StoredObject, may_upload, next_version, record_generated, record_migrated, record_upload,
    record_version, require_uploader,
};
pub use retention::{OldVersion, forget_versions, known_keys, page_keys, replaced_before};
pub use sniff::Sniffer;

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

/// `data` with the `turn_id` of the turn whose reply asked for `media`, if
/// one did.
fn with_turn(media: &Media, mut data: serde_json::Value) -> serde_json::Value {
    if let Some(turn) = media.options.get("turn_id") {
        data["turn_id"] = turn.clone();
    }
    data
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
