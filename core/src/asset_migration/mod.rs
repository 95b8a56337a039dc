//! Moving maps and notes out of the old campaign service's database.
//!
//! The old service keeps assets in binary columns (`campaign_maps(id,
//! campaign_id, name, content_type, data)` and `campaign_notes` alike). A
//! migration **run** reads them from that database (the [`Source`]), and
//! for each asset checks it as every upload is checked (its kind's types
//! and size limit, the bytes against the declared type), stores it under
//! its session's prefix, reads the object back and compares its SHA-256,
//! records a media row of source `migrated`, and only then writes the
//! references back into the source row (`storage_asset_id`,
//! `storage_version_id`, `storage_metadata`) and clears the blob (unless
//! the run keeps the source).
//!
//! Everything a run did is in Postgres (`asset_migration_runs`,
//! `asset_migration_items`, `asset_migration_campaigns`): the page it got
//! to, and every asset's outcome with the media id chosen for it before
//! its upload started. A run that is started again (its worker was killed)
//! skips what is done, finishes what was half done with the same media id
//! and key, and so migrates nothing twice. A rollback uses the same rows to
//! put every blob back byte for byte.
//!
//! The source is never trusted: table and column names are checked
//! identifiers, quoted; blobs are fetched one at a time (their size is read
//! first, so an oversized one is never fetched).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::media::{self, MediaKind};

mod start;

pub use start::{MigrateAssets, Started, resume, start, start_rollback};

/// Why a migration call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request or the source's shape is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// No such run.
    #[error("no such migration run")]
    NotFound,
    /// The run is not in a state that allows it.
    #[error("{0}")]
    Conflict(String),
    /// Enqueueing its job failed.
    #[error(transparent)]
    Job(#[from] crate::jobs::Error),
    /// Our database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The source could not be used (a stable code; the cause is logged).
    #[error(transparent)]
    Source(#[from] crate::sources::SourceError),
}

impl Error {
    /// A failure on the source database, as operators see it.
    fn source(err: sqlx::Error) -> Self {
        Error::Source(crate::sources::pg_error(&err))
    }
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One source table and its columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceTable {
    /// The table (`name` or `schema.name`).
    #[schema(pattern = "^[A-Za-z_][A-Za-z0-9_]{0,62}(\\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")]
    pub table: String,
    /// What its rows become: `map` or `note`.
    pub kind: MediaKind,
    /// The primary key column (integer, text or uuid).
    #[serde(default = "default_id")]
    #[schema(pattern = "^[A-Za-z_][A-Za-z0-9_]{0,62}$")]
    pub id: String,
    /// The column naming the campaign.
    #[serde(default = "default_campaign")]
    #[schema(pattern = "^[A-Za-z_][A-Za-z0-9_]{0,62}$")]
    pub campaign: String,
    /// The file name column.
    #[serde(default = "default_name")]
    #[schema(pattern = "^[A-Za-z_][A-Za-z0-9_]{0,62}$")]
    pub name: String,
    /// The declared content type column.
    #[serde(default = "default_content_type")]
    #[schema(pattern = "^[A-Za-z_][A-Za-z0-9_]{0,62}$")]
    pub content_type: String,
    /// The bytes column.
    #[serde(default = "default_data")]
    #[schema(pattern = "^[A-Za-z_][A-Za-z0-9_]{0,62}$")]
    pub data: String,
}

fn default_id() -> String {
    "id".into()
}
fn default_campaign() -> String {
    "campaign_id".into()
}
fn default_name() -> String {
    "name".into()
}
fn default_content_type() -> String {
    "content_type".into()
}
fn default_data() -> String {
    "data".into()
}

impl SourceTable {
    /// The table of `kind` with the default column names.
    pub fn named(table: &str, kind: MediaKind) -> Self {
        Self {
            table: table.to_owned(),
            kind,
            id: default_id(),
            campaign: default_campaign(),
            name: default_name(),
            content_type: default_content_type(),
            data: default_data(),
        }
    }
}

/// How a run reads and decides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// The tables, in order.
    pub tables: Vec<SourceTable>,
    /// A column of each source row holding its session's id (instead of a
    /// campaign -> session mapping).
    #[serde(default)]
    pub session_column: Option<String>,
    /// Leave the blobs in the source rows (only write the references).
    #[serde(default)]
    pub keep_source: bool,
    /// Abort when more than this share of the assets so far failed, in
    /// percent (the design documents' rollback trigger: 1).
    #[serde(default = "default_max_failure_percent")]
    pub max_failure_percent: f64,
    /// Assets to see before the failure share can abort the run.
    #[serde(default = "default_min_sample")]
    pub min_sample: u64,
    /// Source rows read per page.
    #[serde(default = "default_batch")]
    pub batch: i64,
}

fn default_max_failure_percent() -> f64 {
    1.0
}
fn default_min_sample() -> u64 {
    100
}
fn default_batch() -> i64 {
    100
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tables: vec![
                SourceTable::named("campaign_maps", MediaKind::Map),
                SourceTable::named("campaign_notes", MediaKind::Note),
            ],
            session_column: None,
            keep_source: false,
            max_failure_percent: default_max_failure_percent(),
            min_sample: default_min_sample(),
            batch: default_batch(),
        }
    }
}

impl Options {
    /// Checks names, kinds and bounds.
    pub fn validate(&self) -> Result<()> {
        if self.tables.is_empty() {
            return Err(Error::Invalid("a run needs at least one table".into()));
        }
        for t in &self.tables {
            if !matches!(t.kind, MediaKind::Map | MediaKind::Note) {
                return Err(Error::Invalid(format!(
                    "{}: only maps and notes are migrated",
                    t.table
                )));
            }
            for name in [
                &t.table,
                &t.id,
                &t.campaign,
                &t.name,
                &t.content_type,
                &t.data,
            ] {
                quoted(name)?;
            }
        }
        if let Some(column) = &self.session_column {
            quoted(column)?;
        }
        if !(0.0..=100.0).contains(&self.max_failure_percent) {
            return Err(Error::Invalid(
                "the failure threshold is a percentage, 0 to 100".into(),
            ));
        }
        if !(1..=10_000).contains(&self.batch) {
            return Err(Error::Invalid("the batch is 1 to 10,000 rows".into()));
        }
        Ok(())
    }

    /// Whether `failed` of `seen` assets is past the threshold.
    pub fn over_threshold(&self, failed: u64, seen: u64) -> bool {
        seen >= self.min_sample.max(1)
            && (failed as f64) * 100.0 > self.max_failure_percent * seen as f64
    }
}

/// `name` (or `schema.name`) as a quoted SQL identifier, if it is a plain
/// one: letters, digits and `_`, not starting with a digit, at most 63
/// bytes a part.
pub fn quoted(name: &str) -> Result<String> {
    let parts: Vec<&str> = name.split('.').collect();
    let plain = |p: &&str| {
        !p.is_empty()
            && p.len() <= 63
            && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !p.as_bytes()[0].is_ascii_digit()
    };
    if parts.len() > 2 || !parts.iter().all(plain) {
        return Err(Error::Invalid(format!(
            "{name:?} is not a plain SQL name (letters, digits, _)"
        )));
    }
    Ok(parts
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join("."))
}

/// Reads a campaign -> session mapping: CSV lines `campaign_id,session_id`
/// (a header line naming them is skipped; blank lines and `#` comments
/// too). A campaign named twice, or a line that is not two fields with a
/// UUID second, is refused with its line number.
pub fn parse_mapping(text: &str) -> Result<Vec<(String, Uuid)>> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut mapping = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if mapping.is_empty()
            && seen.is_empty()
            && fields
                .first()
                .is_some_and(|f| f.eq_ignore_ascii_case("campaign_id"))
        {
            continue;
        }
        let [campaign, session] = fields[..] else {
            return Err(Error::Invalid(format!(
                "mapping line {number}: expected campaign_id,session_id"
            )));
        };
        let session: Uuid = session.parse().map_err(|_| {
            Error::Invalid(format!(
                "mapping line {number}: {session:?} is not a session id"
            ))
        })?;
        if campaign.is_empty() || campaign.len() > 200 {
            return Err(Error::Invalid(format!(
                "mapping line {number}: the campaign id must be 1 to 200 characters"
            )));
        }
        if let Some(first) = seen.insert(campaign.to_owned(), number) {
            return Err(Error::Invalid(format!(
                "mapping line {number}: campaign {campaign:?} is mapped already on line {first}"
            )));
        }
        mapping.push((campaign.to_owned(), session));
    }
    Ok(mapping)
}

/// Most campaigns one run's mapping holds.
pub const MAX_MAPPING: usize = 1_000_000;

/// `url` with its password, if any, replaced by `***` (for showing).
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// A run's row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Run {
    /// Its id.
    pub id: Uuid,
    /// The source database's URL.
    pub source_url: String,
    /// How it reads and decides.
    #[sqlx(json)]
    pub options: Options,
    /// Validate only.
    pub dry_run: bool,
    /// `running`, `completed`, `aborted`, `failed`, `rolling_back`, `rolled_back`.
    pub status: String,
    /// Per table, the last source id of a finished page.
    pub checkpoint: Value,
    /// Assets it found to do when it started.
    pub total: Option<i64>,
    /// Its report, once it ended.
    pub report: Option<Value>,
    /// Where the report is stored.
    pub report_key: Option<String>,
    /// Its job.
    pub job_id: Option<String>,
    /// Who started it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

impl Run {
    /// Where table `table` stopped, if it got anywhere.
    pub fn checkpoint_of(&self, table: &str) -> Option<String> {
        self.checkpoint
            .get(table)
            .and_then(Value::as_str)
            .map(str::to_owned)
    }
}

/// Records a new run with its mapping in `tx` (the caller enqueues its job
/// in the same transaction and notes it with [`set_job`]).
pub async fn create_run(
    tx: &mut sqlx::PgConnection,
    allowlist: &crate::sources::Allowlist,
    source_url: &str,
    options: &Options,
    dry_run: bool,
    mapping: &[(String, Uuid)],
    created_by: &str,
) -> Result<Run> {
    options.validate()?;
    if !(source_url.starts_with("postgres://") || source_url.starts_with("postgresql://"))
        || source_url.len() > 2000
        || source_url.chars().any(char::is_control)
    {
        return Err(Error::Invalid(
            "the source is a postgres:// or postgresql:// URL".into(),
        ));
    }
    allowlist.check(source_url)?;
    if let Some((campaign, _)) = mapping
        .iter()
        .find(|(c, _)| c.is_empty() || c.len() > 200 || c.chars().any(char::is_control))
    {
        return Err(Error::Invalid(format!(
            "campaign id {campaign:?}: 1 to 200 characters, no control characters"
        )));
    }
    if mapping.len() > MAX_MAPPING {
        return Err(Error::Invalid(format!(
            "a mapping has at most {MAX_MAPPING} campaigns"
        )));
    }
    if mapping.is_empty() && options.session_column.is_none() {
        return Err(Error::Invalid(
            "a run needs a campaign -> session mapping or a session column".into(),
        ));
    }
    let run = sqlx::query_as::<_, Run>(
        "INSERT INTO asset_migration_runs (id, source_url, options, dry_run, created_by)
         VALUES ($1, $2, $3, $4, $5) RETURNING *",
    )
    .bind(Uuid::now_v7())
    .bind(source_url)
    .bind(sqlx::types::Json(options))
    .bind(dry_run)
    .bind(created_by)
    .fetch_one(&mut *tx)
    .await?;
    let (campaigns, sessions): (Vec<&str>, Vec<Uuid>) =
        mapping.iter().map(|(c, s)| (c.as_str(), *s)).unzip();
    sqlx::query(
        "INSERT INTO asset_migration_campaigns (run_id, campaign_id, session_id)
         SELECT $1, c, s FROM unnest($2::text[], $3::uuid[]) AS m(c, s)",
    )
    .bind(run.id)
    .bind(&campaigns)
    .bind(&sessions)
    .execute(&mut *tx)
    .await?;
    Ok(run)
}

/// Notes the job that runs (or rolls back) `run`.
pub async fn set_job(tx: &mut sqlx::PgConnection, run: Uuid, job_id: &str) -> Result<()> {
    sqlx::query("UPDATE asset_migration_runs SET job_id = $2 WHERE id = $1")
        .bind(run)
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// A run by id.
pub async fn get_run(pool: &PgPool, id: Uuid) -> Result<Run> {
    sqlx::query_as::<_, Run>("SELECT * FROM asset_migration_runs WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or(Error::NotFound)
}

/// Marks `run` as being rolled back (from `completed`, `aborted` or
/// `failed`, or again from `rolling_back`); refuses a dry run, a running
/// one and one already rolled back.
pub async fn begin_rollback(tx: &mut sqlx::PgConnection, id: Uuid) -> Result<Run> {
    let run =
        sqlx::query_as::<_, Run>("SELECT * FROM asset_migration_runs WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(Error::NotFound)?;
    if run.dry_run {
        return Err(Error::Conflict(
            "a dry run changed nothing to roll back".into(),
        ));
    }
    if !matches!(
        run.status.as_str(),
        "completed" | "aborted" | "failed" | "rolling_back"
    ) {
        return Err(Error::Conflict(format!(
            "run {id} is {}; only an ended run can be rolled back",
            run.status
        )));
    }
    Ok(sqlx::query_as::<_, Run>(
        "UPDATE asset_migration_runs SET status = 'rolling_back' WHERE id = $1 RETURNING *",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?)
}

/// Notes the count of assets a run found to do (its first start only).
pub async fn set_total(pool: &PgPool, run: Uuid, total: i64) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "UPDATE asset_migration_runs SET total = coalesce(total, $2) WHERE id = $1 RETURNING total",
    )
    .bind(run)
    .bind(total)
    .fetch_one(pool)
    .await?)
}

/// Notes that table `table` of `run` is done up to source id `last`.
pub async fn set_checkpoint(pool: &PgPool, run: Uuid, table: &str, last: &str) -> Result<()> {
    sqlx::query(
        "UPDATE asset_migration_runs SET checkpoint = checkpoint || jsonb_build_object($2::text, $3::text)
         WHERE id = $1",
    )
    .bind(run)
    .bind(table)
    .bind(last)
    .execute(pool)
    .await?;
    Ok(())
}

/// Ends a run with its report.
pub async fn finish_run(
    pool: &PgPool,
    run: Uuid,
    status: &str,
    report: &Value,
    report_key: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "UPDATE asset_migration_runs
         SET status = $2, report = $3, report_key = $4, finished_at = now() WHERE id = $1",
    )
    .bind(run)
    .bind(status)
    .bind(report)
    .bind(report_key)
    .execute(pool)
    .await?;
    Ok(())
}

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

/// A run's counts so far.
#[derive(Debug, Clone, Default, Serialize, sqlx::FromRow)]
pub struct Counts {
    /// Migrated (the source points at storage).
    pub migrated: i64,
    /// Stored and verified, the source not yet updated.
    pub stored: i64,
    /// Found fine by a dry run.
    pub validated: i64,
    /// Failed, with a reason.
    pub failed: i64,
    /// Put back by a rollback.
    pub rolled_back: i64,
    /// Bytes migrated.
    pub bytes: i64,
}

/// Counts the items of `run` by outcome.
pub async fn counts(pool: &PgPool, run: Uuid) -> Result<Counts> {
    Ok(sqlx::query_as::<_, Counts>(
        "SELECT count(*) FILTER (WHERE status = 'migrated') AS migrated,
                count(*) FILTER (WHERE status = 'stored') AS stored,
                count(*) FILTER (WHERE status = 'validated') AS validated,
                count(*) FILTER (WHERE status = 'failed') AS failed,
                count(*) FILTER (WHERE status = 'rolled_back') AS rolled_back,
                coalesce(sum(byte_size) FILTER (WHERE status = 'migrated'), 0)::bigint AS bytes
         FROM asset_migration_items WHERE run_id = $1",
    )
    .bind(run)
    .fetch_one(pool)
    .await?)
}

/// The failed items of `run` (table, id, reason), at most `limit`.
pub async fn failures(pool: &PgPool, run: Uuid, limit: i64) -> Result<Vec<Value>> {
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT source_table, source_id, reason FROM asset_migration_items
         WHERE run_id = $1 AND status = 'failed' ORDER BY source_table, source_id LIMIT $2",
    )
    .bind(run)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(table, id, reason)| json!({ "table": table, "asset_id": id, "reason": reason }))
        .collect())
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

/// The newest run that reads `table` (its source, mapping and columns say
/// where the assets not moved are).
pub async fn latest_run_for(pool: &PgPool, table: &str) -> Result<Option<Run>> {
    Ok(sqlx::query_as::<_, Run>(
        "SELECT * FROM asset_migration_runs
         WHERE options -> 'tables' @> jsonb_build_array(jsonb_build_object('table', $1::text))
         ORDER BY created_at DESC LIMIT 1",
    )
    .bind(table)
    .fetch_optional(pool)
    .await?)
}

/// Connections to source databases, opened on first use and kept, and
/// the tables read through them, checked once (the API serves assets not
/// moved yet from there).
#[derive(Debug, Clone, Default)]
pub struct Sources {
    allowlist: crate::sources::Allowlist,
    open: std::sync::Arc<std::sync::Mutex<HashMap<String, Source>>>,
    tables: std::sync::Arc<std::sync::Mutex<HashMap<String, Table>>>,
}

impl Sources {
    /// No source open yet; those opened must be in `allowlist`.
    pub fn new(allowlist: crate::sources::Allowlist) -> Self {
        Self {
            allowlist,
            ..Self::default()
        }
    }

    /// The source at `url` and its table `spec` (columns checked, id type
    /// learnt on first use; nothing added to it).
    pub async fn table(
        &self,
        url: &str,
        spec: &SourceTable,
        session_column: Option<&str>,
    ) -> Result<(Source, Table)> {
        let source = self.source(url)?;
        let key = serde_json::to_string(&(url, spec, session_column))
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let known = lock(&self.tables).get(&key).cloned();
        let table = match known {
            Some(table) => table,
            None => {
                let table = source.table(spec, session_column, true).await?;
                lock(&self.tables).insert(key, table.clone());
                table
            }
        };
        Ok((source, table))
    }

    /// The source at `url`, its pool made once. Lazily connected: an
    /// unreachable source fails the requests that need it (each within the
    /// acquire timeout), nobody else.
    fn source(&self, url: &str) -> Result<Source> {
        let mut open = lock(&self.open);
        if let Some(source) = open.get(url) {
            return Ok(source.clone());
        }
        let pool = crate::sources::pg_pool_lazy(&self.allowlist, url, 4)?;
        let source = Source { pool };
        open.insert(url.to_owned(), source.clone());
        Ok(source)
    }
}

/// A cache's map; a panic elsewhere while it was held leaves it usable.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One asset of the source, without its bytes.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SourceAsset {
    /// Its id, as text.
    pub id: String,
    /// Its campaign (or, with a session column, its session id), as text.
    pub owner: Option<String>,
    /// Its file name.
    pub name: Option<String>,
    /// Its declared content type.
    pub content_type: Option<String>,
    /// Its size in bytes.
    pub size: i64,
}

/// The old service's database.
#[derive(Debug, Clone)]
pub struct Source {
    pool: PgPool,
}

/// The SQL of one table, with its names checked and quoted.
#[derive(Debug, Clone)]
pub struct Table {
    spec: SourceTable,
    table: String,
    id: String,
    owner: String,
    name: String,
    content_type: String,
    data: String,
    /// The id column's type, for casting a text id back.
    id_type: &'static str,
    /// The condition of a row still to migrate (with the reference
    /// columns, which a dry run may not find: then every row with bytes).
    pending: String,
}

impl Table {
    /// Its declaration.
    pub fn spec(&self) -> &SourceTable {
        &self.spec
    }

    /// `template` with `{table}`, `{id}`, `{id_type}`, `{data}`, `{owner}`,
    /// `{name}` and `{ct}` filled in with the checked, quoted names.
    fn sql(&self, template: &str) -> String {
        template
            .replace("{table}", &self.table)
            .replace("{id_type}", self.id_type)
            .replace("{id}", &self.id)
            .replace("{data}", &self.data)
            .replace("{owner}", &self.owner)
            .replace("{name}", &self.name)
            .replace("{ct}", &self.content_type)
    }
}

/// The columns of a [`SourceAsset`], from a source table aliased `t`.
const ASSET_COLUMNS: &str = "t.{id}::text AS id, t.{owner}::text AS owner, t.{name}::text AS name,
     t.{ct}::text AS content_type, coalesce(octet_length(t.{data}), 0)::bigint AS size";

impl Source {
    /// Connects to the source database (two connections), if `allowlist`
    /// allows it.
    pub async fn connect(allowlist: &crate::sources::Allowlist, url: &str) -> Result<Self> {
        let pool = crate::sources::pg_connect(allowlist, url, 2).await?;
        Ok(Self { pool })
    }

    /// Checks that `spec`'s table and columns exist, learns its id type,
    /// and (unless `dry_run`) adds the reference columns the migration
    /// writes if they are not there: `storage_asset_id uuid`,
    /// `storage_version_id integer`, `storage_metadata jsonb`.
    pub async fn table(
        &self,
        spec: &SourceTable,
        session_column: Option<&str>,
        dry_run: bool,
    ) -> Result<Table> {
        let table = quoted(&spec.table)?;
        let columns: Vec<(String, String)> = sqlx::query_as(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
             FROM pg_attribute a
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
        )
        .bind(&table)
        .fetch_all(&self.pool)
        .await
        .map_err(Error::source)?;
        if columns.is_empty() {
            return Err(Error::Invalid(format!(
                "the source has no table {:?}",
                spec.table
            )));
        }
        let type_of = |name: &str| {
            columns
                .iter()
                .find(|(c, _)| c == name)
                .map(|(_, t)| t.as_str())
        };
        let owner_column = session_column.unwrap_or(&spec.campaign);
        for column in [
            &spec.id,
            owner_column,
            &spec.name,
            &spec.content_type,
            &spec.data,
        ] {
            if type_of(column).is_none() {
                return Err(Error::Invalid(format!(
                    "the source table {:?} has no column {column:?}",
                    spec.table
                )));
            }
        }
        let id_type = match type_of(&spec.id) {
            Some("bigint") => "bigint",
            Some("integer") => "integer",
            Some("smallint") => "smallint",
            Some("uuid") => "uuid",
            Some(t) if t == "text" || t.starts_with("character varying") => "text",
            Some(t) => {
                return Err(Error::Invalid(format!(
                    "the id column {:?} is {t}; integer, text or uuid ids are supported",
                    spec.id
                )));
            }
            None => {
                return Err(Error::Invalid(format!(
                    "the source table {:?} has no column {:?}",
                    spec.table, spec.id
                )));
            }
        };
        if !dry_run {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER TABLE {table}
                     ADD COLUMN IF NOT EXISTS storage_asset_id uuid,
                     ADD COLUMN IF NOT EXISTS storage_version_id integer,
                     ADD COLUMN IF NOT EXISTS storage_metadata jsonb"
            )))
            .execute(&self.pool)
            .await
            .map_err(Error::source)?;
        }
        let data = quoted(&spec.data)?;
        let pending = if dry_run && type_of("storage_asset_id").is_none() {
            format!("t.{data} IS NOT NULL")
        } else {
            format!("t.{data} IS NOT NULL AND t.storage_asset_id IS NULL")
        };
        Ok(Table {
            spec: spec.clone(),
            table,
            id: quoted(&spec.id)?,
            owner: quoted(owner_column)?,
            name: quoted(&spec.name)?,
            content_type: quoted(&spec.content_type)?,
            data,
            id_type,
            pending,
        })
    }

    /// How many assets of `table` are not migrated yet.
    pub async fn count_pending(&self, table: &Table) -> Result<i64> {
        let filter = &table.pending;
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {} AS t WHERE {filter}",
            table.table
        )))
        .fetch_one(&self.pool)
        .await
        .map_err(Error::source)
    }

    /// Up to `limit` assets of `table` not migrated yet, in id order after
    /// `after`, without their bytes.
    pub async fn page(
        &self,
        table: &Table,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<SourceAsset>> {
        let filter = &table.pending;
        // Qualified: a bare `ORDER BY id` would sort by the text alias.
        let sql = table.sql(&format!(
            "SELECT {ASSET_COLUMNS} FROM {{table}} AS t
             WHERE {filter} AND ($1::text IS NULL OR t.{{id}} > $1::text::{{id_type}})
             ORDER BY t.{{id}} LIMIT $2"
        ));
        sqlx::query_as::<_, SourceAsset>(sqlx::AssertSqlSafe(sql))
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(Error::source)
    }

    /// Asset `id` of `table`, without its bytes (None: no such row, or an
    /// id that cannot be one of the table's).
    pub async fn asset(&self, table: &Table, id: &str) -> Result<Option<SourceAsset>> {
        let fits = match table.id_type {
            "bigint" => id.parse::<i64>().is_ok(),
            "integer" => id.parse::<i32>().is_ok(),
            "smallint" => id.parse::<i16>().is_ok(),
            "uuid" => Uuid::try_parse(id).is_ok(),
            _ => !id.contains('\0'),
        };
        if !fits {
            return Ok(None);
        }
        let sql = table.sql(&format!(
            "SELECT {ASSET_COLUMNS} FROM {{table}} AS t WHERE t.{{id}} = $1::text::{{id_type}}"
        ));
        sqlx::query_as::<_, SourceAsset>(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::source)
    }

    /// The bytes of asset `id` (None: gone, or no bytes).
    pub async fn blob(&self, table: &Table, id: &str) -> Result<Option<Vec<u8>>> {
        let sql = table.sql("SELECT {data} FROM {table} WHERE {id} = $1::text::{id_type}");
        let row: Option<Option<Vec<u8>>> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::source)?;
        Ok(row.flatten())
    }

    /// Points asset `id` at its media item and, unless `keep`, clears its
    /// bytes.
    pub async fn write_back(
        &self,
        table: &Table,
        id: &str,
        media_id: Uuid,
        metadata: &Value,
        keep: bool,
    ) -> Result<()> {
        let sql = table.sql(
            "UPDATE {table} SET storage_asset_id = $2, storage_version_id = 1,
                 storage_metadata = $3, {data} = CASE WHEN $4 THEN {data} ELSE NULL END
             WHERE {id} = $1::text::{id_type}",
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(media_id)
            .bind(metadata)
            .bind(keep)
            .execute(&self.pool)
            .await
            .map_err(Error::source)?;
        Ok(())
    }

    /// Whether asset `id` still holds its bytes (a run that kept the
    /// source, or a row never cleared).
    pub async fn holds_bytes(&self, table: &Table, id: &str) -> Result<bool> {
        let sql =
            table.sql("SELECT {data} IS NOT NULL FROM {table} WHERE {id} = $1::text::{id_type}");
        let held: Option<bool> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::source)?;
        Ok(held.unwrap_or(false))
    }

    /// Puts `bytes` back into asset `id` (if its bytes were cleared) and
    /// clears the references.
    pub async fn restore(&self, table: &Table, id: &str, bytes: Option<&[u8]>) -> Result<()> {
        let sql = table.sql(
            "UPDATE {table} SET {data} = coalesce({data}, $2), storage_asset_id = NULL,
                 storage_version_id = NULL, storage_metadata = NULL
             WHERE {id} = $1::text::{id_type}",
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(bytes)
            .execute(&self.pool)
            .await
            .map_err(Error::source)?;
        Ok(())
    }
}

/// Checks an asset as an upload is checked: a kind's type, within its
/// limit, its bytes what the type says. Returns the type's extension.
pub fn check(
    kind: MediaKind,
    content_type: Option<&str>,
    size: i64,
    limits: &media::UploadLimits,
) -> Result<&'static str, String> {
    let Some(content_type) = content_type else {
        return Err("no content type".into());
    };
    let Some(ext) = kind.extension_for(content_type) else {
        return Err(format!("a {} cannot be {content_type:?}", kind.as_str()));
    };
    let limit = limits.of(kind).unwrap_or(0);
    if size < 0 || size as u64 > limit {
        return Err(format!(
            "{size} bytes is over the {} limit of {limit} bytes",
            kind.as_str()
        ));
    }
    Ok(ext)
}

/// Checks an asset's bytes against its declared type.
pub fn sniff(content_type: &str, bytes: &[u8]) -> Result<(), String> {
    let Some(mut sniffer) = media::Sniffer::new(content_type) else {
        return Err(format!("{content_type:?} is not a type questboard keeps"));
    };
    sniffer
        .feed(bytes)
        .and_then(|()| sniffer.finish())
        .map_err(|_| format!("the bytes are not {content_type}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn names_are_plain_identifiers_or_refused() {
        assert_eq!(quoted("campaign_maps").unwrap(), "\"campaign_maps\"");
        assert_eq!(quoted("old.maps").unwrap(), "\"old\".\"maps\"");
        for bad in ["", "a;drop table x", "a\"b", "1x", "a.b.c", "a b", "x--"] {
            assert!(quoted(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mappings_are_read_and_refused_with_their_line() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        let text = format!("campaign_id,session_id\n# comment\n\n12,{a}\n c-7 , {b} \n");
        assert_eq!(
            parse_mapping(&text).unwrap(),
            vec![("12".to_owned(), a), ("c-7".to_owned(), b)]
        );
        let twice = format!("1,{a}\n1,{b}\n");
        assert!(
            parse_mapping(&twice)
                .unwrap_err()
                .to_string()
                .contains("line 2")
        );
        assert!(
            parse_mapping("1,not-a-uuid")
                .unwrap_err()
                .to_string()
                .contains("line 1")
        );
        assert!(parse_mapping("1").is_err());
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redacted("postgres://app:s3cret@db:5432/old"),
            "postgres://app:***@db:5432/old"
        );
        assert_eq!(redacted("postgres://db/old"), "postgres://db/old");
        assert_eq!(redacted("postgres://app@db/old"), "postgres://app@db/old");
    }

    #[test]
    fn the_threshold_waits_for_its_sample() {
        let options = Options::default();
        assert!(!options.over_threshold(5, 50), "too few seen");
        assert!(!options.over_threshold(1, 100));
        assert!(options.over_threshold(2, 100));
        assert!(options.over_threshold(20, 1000));
        assert!(!options.over_threshold(8, 1000));
    }

    #[test]
    fn assets_are_checked_like_uploads() {
        let limits = media::UploadLimits::default();
        assert_eq!(
            check(MediaKind::Map, Some("image/png"), 10, &limits),
            Ok("png")
        );
        assert!(check(MediaKind::Map, Some("image/gif"), 10, &limits).is_err());
        assert!(check(MediaKind::Map, Some("image/png"), 26_000_000, &limits).is_err());
        assert!(check(MediaKind::Note, None, 10, &limits).is_err());
        assert!(sniff("text/markdown", b"# Notes").is_ok());
        assert!(sniff("image/png", b"# Notes").is_err());
    }
}
