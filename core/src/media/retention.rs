//! What retention and reconciliation read of media: versions replaced long
//! enough ago to delete, and which storage keys rows still name.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::Result;

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
