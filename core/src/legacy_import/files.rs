//! A folder's files (`legacy_files`): each one's key and media id chosen
//! before its copy starts (so a repeated copy overwrites the same object),
//! then recorded as copied; and the old paths resolved to where they went.

use std::collections::BTreeMap;

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::{Error, Placement, Result};
use crate::identity::UserId;
use crate::media::{self, MediaKind};
use crate::sessions;
use crate::storage::Area;

/// A legacy file's record.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LegacyFile {
    /// Its session.
    pub session_id: Uuid,
    /// Its path in the folder.
    pub legacy_path: String,
    /// `pending` or `copied`.
    pub status: String,
    /// Its area (`logs`, `data`, `images`, `audio`).
    pub area: String,
    /// Its name in the area.
    pub name: String,
    /// Its object.
    pub storage_key: String,
    /// Its content type.
    pub content_type: String,
    /// Its media item (images, audio).
    pub media_id: Option<Uuid>,
    /// Its size.
    pub byte_size: Option<i64>,
    /// Its SHA-256.
    pub sha256: Option<Vec<u8>>,
}

/// The file records of a session, by legacy path.
pub async fn files_of(pool: &PgPool, session: Uuid) -> Result<BTreeMap<String, LegacyFile>> {
    let rows = sqlx::query_as::<_, LegacyFile>(
        "SELECT session_id, legacy_path, status, area, name, storage_key, content_type, media_id,
                byte_size, sha256
         FROM legacy_files WHERE session_id = $1",
    )
    .bind(session)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|f| (f.legacy_path.clone(), f))
        .collect())
}

fn area_name(area: Area) -> &'static str {
    match area {
        Area::Logs => "logs",
        Area::Data => "data",
        Area::Images => "images",
        Area::Audio => "audio",
        Area::Maps => "maps",
        Area::Notes => "notes",
    }
}

/// Chooses a file's key (and media id) before its copy starts; a file
/// claimed before keeps what was chosen then.
pub async fn claim_file(
    pool: &PgPool,
    session: Uuid,
    legacy_path: &str,
    placement: &Placement,
    name: &str,
    storage_key: &str,
    media_id: Option<Uuid>,
) -> Result<LegacyFile> {
    Ok(sqlx::query_as::<_, LegacyFile>(
        "INSERT INTO legacy_files
             (session_id, legacy_path, status, area, name, storage_key, content_type, media_id)
         VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7)
         ON CONFLICT (session_id, legacy_path) DO UPDATE SET status = legacy_files.status
         RETURNING session_id, legacy_path, status, area, name, storage_key, content_type,
                   media_id, byte_size, sha256",
    )
    .bind(session)
    .bind(legacy_path)
    .bind(area_name(placement.area()))
    .bind(name)
    .bind(storage_key)
    .bind(placement.content_type())
    .bind(media_id)
    .fetch_one(pool)
    .await?)
}

/// Records a file whose object is stored and verified: its record, and
/// for an image or audio its media row (source `migrated`, created by the
/// session's owner, the legacy name kept for display), in one transaction.
pub async fn record_copied(
    pool: &PgPool,
    file: &LegacyFile,
    kind: Option<MediaKind>,
    byte_size: u64,
    sha256: &[u8; 32],
) -> Result<()> {
    let mut tx = pool.begin().await?;
    if let (Some(kind), Some(media_id)) = (kind, file.media_id) {
        let display = file
            .legacy_path
            .rsplit('/')
            .next()
            .and_then(|n| media::display_name(n).ok());
        media::record_migrated(
            &mut tx,
            media_id,
            file.session_id,
            kind,
            &media::StoredObject {
                storage_key: file.storage_key.clone(),
                content_type: file.content_type.clone(),
                byte_size,
                sha256: *sha256,
            },
            display.as_deref(),
            &json!({ "legacy_path": file.legacy_path }),
        )
        .await
        .map_err(|e| match e {
            media::Error::Database(e) => Error::Database(e),
            other => Error::Invalid(other.to_string()),
        })?;
    }
    sqlx::query(
        "UPDATE legacy_files SET status = 'copied', byte_size = $3, sha256 = $4, copied_at = now()
         WHERE session_id = $1 AND legacy_path = $2",
    )
    .bind(file.session_id)
    .bind(&file.legacy_path)
    .bind(byte_size as i64)
    .bind(sha256.as_slice())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Resolves `<env>/<folder>/<path>` for `user`: None unless the folder was
/// imported, the user is a member of its session and the file was copied.
/// The bool says whether the folder is known (for the shim's counting).
pub async fn resolve(
    pool: &PgPool,
    env: &str,
    folder: &str,
    path: &str,
    user: &UserId,
) -> Result<(bool, Option<LegacyFile>)> {
    let Some((session,)): Option<(Uuid,)> =
        sqlx::query_as("SELECT session_id FROM legacy_campaigns WHERE env = $1 AND folder = $2")
            .bind(env)
            .bind(folder)
            .fetch_optional(pool)
            .await?
    else {
        return Ok((false, None));
    };
    match sessions::require_member(pool, session, user).await {
        Ok(_) => {}
        Err(sessions::Error::NotFound) => return Ok((true, None)),
        Err(sessions::Error::Database(err)) => return Err(err.into()),
        Err(_) => return Ok((true, None)),
    }
    let file = sqlx::query_as::<_, LegacyFile>(
        "SELECT session_id, legacy_path, status, area, name, storage_key, content_type, media_id,
                byte_size, sha256
         FROM legacy_files WHERE session_id = $1 AND legacy_path = $2 AND status = 'copied'",
    )
    .bind(session)
    .bind(path)
    .fetch_optional(pool)
    .await?;
    Ok((true, file))
}
