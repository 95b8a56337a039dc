//! Migration runs (`asset_migration_runs`, `asset_migration_campaigns`):
//! recording one with its mapping, rolling one back, its progress
//! (total, per-table checkpoint) and its counts.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Error, MAX_MAPPING, Options, RUNS, Result};

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

/// A run by id.
pub async fn get_run(pool: &PgPool, id: Uuid) -> Result<Run> {
    Ok(RUNS.get(pool, id).await?)
}

/// Records a new run with its mapping in `tx` (the caller enqueues its job
/// in the same transaction, [`operator_run::Kind::enqueue`]).
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

/// Marks `run` as being rolled back (from `completed`, `aborted` or
/// `failed`, or again from `rolling_back`); refuses a dry run, a running
/// one and one already rolled back.
pub async fn begin_rollback(tx: &mut sqlx::PgConnection, id: Uuid) -> Result<Run> {
    let run: Run = RUNS.lock(&mut *tx, id).await?;
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
    Ok(RUNS.set_status(tx, id, "rolling_back").await?)
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
