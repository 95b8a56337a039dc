//! Recording stored objects: who may add media, and the rows and events
//! that make a stored object a version of an item (an upload's first
//! version, a later one, a migrated asset), each written in one
//! transaction after the object is complete.

use sqlx::PgPool;
use uuid::Uuid;

use crate::events::{self, Event};
use crate::identity::UserId;
use crate::sessions::{self, Role, SessionStatus};

use super::{Error, Media, MediaKind, MediaSource, Result, with_turn};

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

/// Records the stored object of a pending generated item and appends
/// `media.ready`; None if the item is gone or no longer pending (a run
/// that finished first, a deletion). What it cost (one image, or the
/// characters of a narration) is added to the usage of whoever asked for
/// it, under `provider` and `model`, in the same transaction.
pub async fn record_generated(
    pool: &PgPool,
    id: Uuid,
    provider: &str,
    model: &str,
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
    let units = crate::usage::MediaUnits {
        images: i64::from(media.kind == MediaKind::Image),
        speech_characters: if media.kind == MediaKind::Audio {
            media
                .prompt
                .as_deref()
                .map_or(0, |p| p.chars().count() as i64)
        } else {
            0
        },
    };
    crate::usage::add_media(
        &mut tx,
        media.session_id,
        &media.created_by,
        provider,
        model,
        units,
    )
    .await?;
    let event = ready_event(&mut tx, &media).await?;
    tx.commit().await?;
    Ok(Some((media, event)))
}
