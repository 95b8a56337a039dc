//! Each asset's record in a run (`asset_migration_items`): claimed with
//! its media id before its upload starts, stored and verified, then
//! migrated (or failed, or rolled back); and where an old asset is now.

use std::collections::HashMap;

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::{Error, Result, Run};
use crate::media::{self, MediaKind};

/// What became of one asset in a run.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Item {
    /// The source table.
    pub source_table: String,
    /// The source row's id, as text.
    pub source_id: String,
    /// See the table's comment.
    pub status: String,
    /// The media id chosen for it.
    pub media_id: Uuid,
    /// Its session.
    pub session_id: Option<Uuid>,
    /// Its object.
    pub storage_key: Option<String>,
    /// Its size.
    pub byte_size: Option<i64>,
    /// Its SHA-256.
    pub sha256: Option<Vec<u8>>,
    /// Why it failed.
    pub reason: Option<String>,
}

/// The items of `run` for the source ids `ids` of `table`.
pub async fn items(
    pool: &PgPool,
    run: Uuid,
    table: &str,
    ids: &[String],
) -> Result<HashMap<String, Item>> {
    let rows = sqlx::query_as::<_, Item>(
        "SELECT * FROM asset_migration_items WHERE run_id = $1 AND source_table = $2 AND source_id = ANY($3)",
    )
    .bind(run)
    .bind(table)
    .bind(ids)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|i| (i.source_id.clone(), i)).collect())
}

/// Records an asset's outcome of `status` (`validated` or `failed`, with
/// `reason`), replacing an unfinished one.
pub async fn record_outcome(
    pool: &PgPool,
    run: Uuid,
    table: &str,
    source_id: &str,
    status: &str,
    reason: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO asset_migration_items (run_id, source_table, source_id, status, media_id, reason)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (run_id, source_table, source_id)
         DO UPDATE SET status = excluded.status, reason = excluded.reason, at = now()",
    )
    .bind(run)
    .bind(table)
    .bind(source_id)
    .bind(status)
    .bind(Uuid::now_v7())
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
}

/// Notes the media id `media_id` and object key `storage_key` of an asset
/// about to be uploaded, or (on a run started again) finds the ones noted
/// the first time, so every attempt writes the same key.
pub async fn claim(
    pool: &PgPool,
    run: Uuid,
    table: &str,
    source_id: &str,
    session_id: Uuid,
    media_id: Uuid,
    storage_key: &str,
) -> Result<Item> {
    Ok(sqlx::query_as::<_, Item>(
        "INSERT INTO asset_migration_items
             (run_id, source_table, source_id, status, media_id, session_id, storage_key)
         VALUES ($1, $2, $3, 'pending', $4, $5, $6)
         ON CONFLICT (run_id, source_table, source_id)
         DO UPDATE SET at = now()
         RETURNING *",
    )
    .bind(run)
    .bind(table)
    .bind(source_id)
    .bind(media_id)
    .bind(session_id)
    .bind(storage_key)
    .fetch_one(pool)
    .await?)
}

/// What a verified object becomes.
#[derive(Debug, Clone)]
pub struct Verified<'a> {
    /// The session.
    pub session_id: Uuid,
    /// The kind.
    pub kind: MediaKind,
    /// The declared (and checked) content type.
    pub content_type: &'a str,
    /// The object's key.
    pub storage_key: &'a str,
    /// Its size.
    pub byte_size: u64,
    /// Its SHA-256, as read back.
    pub sha256: [u8; 32],
    /// The source's file name, for display (None if it is not usable).
    pub original_name: Option<&'a str>,
}

/// Records a verified object: its media row (source `migrated`, created by
/// the session's owner) and version, and the item as `stored`, in one
/// transaction. A row already there (a run started again) is kept.
pub async fn record_stored(
    pool: &PgPool,
    run: Uuid,
    item: &Item,
    object: &Verified<'_>,
) -> Result<()> {
    let mut tx = pool.begin().await?;
    media::record_migrated(
        &mut tx,
        item.media_id,
        object.session_id,
        object.kind,
        &media::StoredObject {
            storage_key: object.storage_key.to_owned(),
            content_type: object.content_type.to_owned(),
            byte_size: object.byte_size,
            sha256: object.sha256,
        },
        object.original_name,
        &json!({ "migration_run": run, "source_table": item.source_table,
                 "source_id": item.source_id }),
    )
    .await
    .map_err(|e| match e {
        media::Error::Database(e) => Error::Database(e),
        other => Error::Invalid(other.to_string()),
    })?;
    sqlx::query(
        "UPDATE asset_migration_items
         SET status = 'stored', storage_key = $4, byte_size = $5, sha256 = $6, reason = NULL, at = now()
         WHERE run_id = $1 AND source_table = $2 AND source_id = $3",
    )
    .bind(run)
    .bind(&item.source_table)
    .bind(&item.source_id)
    .bind(object.storage_key)
    .bind(object.byte_size as i64)
    .bind(object.sha256.as_slice())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Marks a stored item `migrated` (the source points at it) or
/// `rolled_back`.
pub async fn set_status(pool: &PgPool, run: Uuid, item: &Item, status: &str) -> Result<()> {
    sqlx::query(
        "UPDATE asset_migration_items SET status = $4, at = now()
         WHERE run_id = $1 AND source_table = $2 AND source_id = $3",
    )
    .bind(run)
    .bind(&item.source_table)
    .bind(&item.source_id)
    .bind(status)
    .execute(pool)
    .await?;
    Ok(())
}

/// The items of `run` stored and verified whose source row may not point
/// at them yet (a worker died between the two writes).
pub async fn stored(pool: &PgPool, run: Uuid) -> Result<Vec<Item>> {
    Ok(sqlx::query_as::<_, Item>(
        "SELECT * FROM asset_migration_items WHERE run_id = $1 AND status = 'stored'",
    )
    .bind(run)
    .fetch_all(pool)
    .await?)
}

/// Up to `limit` items of `run` a rollback must put back (`stored` or
/// `migrated`), in key order after `after`.
pub async fn to_roll_back(
    pool: &PgPool,
    run: Uuid,
    after: (&str, &str),
    limit: i64,
) -> Result<Vec<Item>> {
    Ok(sqlx::query_as::<_, Item>(
        "SELECT * FROM asset_migration_items
         WHERE run_id = $1 AND status IN ('stored', 'migrated', 'pending')
           AND (source_table, source_id) > ($2, $3)
         ORDER BY source_table, source_id LIMIT $4",
    )
    .bind(run)
    .bind(after.0)
    .bind(after.1)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Forgets a rolled-back item's media row (its versions go with it) and
/// marks it `rolled_back`, in one transaction.
pub async fn forget(pool: &PgPool, run: Uuid, item: &Item) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM campaign_media WHERE id = $1 AND source = 'migrated'")
        .bind(item.media_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE asset_migration_items SET status = 'rolled_back', at = now()
         WHERE run_id = $1 AND source_table = $2 AND source_id = $3",
    )
    .bind(run)
    .bind(&item.source_table)
    .bind(&item.source_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A session an asset goes to.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Target {
    /// The session.
    pub id: Uuid,
    /// Its storage prefix.
    pub storage_prefix: String,
}

/// The sessions of `campaigns` in `run`'s mapping (or, with a session
/// column, the sessions named), by campaign (or session id) text.
pub async fn targets(pool: &PgPool, run: &Run, keys: &[String]) -> Result<HashMap<String, Target>> {
    let rows: Vec<(String, Uuid, String)> = if run.options.session_column.is_some() {
        let ids: Vec<Uuid> = keys.iter().filter_map(|k| k.parse().ok()).collect();
        sqlx::query_as(
            "SELECT id::text, id, storage_prefix FROM campaign_sessions WHERE id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(pool)
        .await?
    } else {
        sqlx::query_as(
            "SELECT c.campaign_id, s.id, s.storage_prefix
             FROM asset_migration_campaigns c JOIN campaign_sessions s ON s.id = c.session_id
             WHERE c.run_id = $1 AND c.campaign_id = ANY($2)",
        )
        .bind(run.id)
        .bind(keys)
        .fetch_all(pool)
        .await?
    };
    Ok(rows
        .into_iter()
        .map(|(key, id, storage_prefix)| (key, Target { id, storage_prefix }))
        .collect())
}

/// The media item an old asset became, if it reached storage (its object
/// verified, its media row written) in a run not rolled back since.
pub async fn moved(pool: &PgPool, table: &str, id: &str) -> Result<Option<Uuid>> {
    Ok(sqlx::query_scalar(
        "SELECT media_id FROM asset_migration_items
         WHERE source_table = $1 AND source_id = $2 AND status IN ('stored', 'migrated')
         ORDER BY at DESC LIMIT 1",
    )
    .bind(table)
    .bind(id)
    .fetch_optional(pool)
    .await?)
}
