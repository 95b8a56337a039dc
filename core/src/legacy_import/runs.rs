//! Import runs and their problems: recording a run (its source and
//! mapping checked), and what it could not decide.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Error, MAX_FILE_BYTES_CEILING, Mapping, Options, RUNS, Result, validate_mapping};

/// A run.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Run {
    /// Its id.
    pub id: Uuid,
    /// The tree's root.
    pub source_url: String,
    /// Folder -> owners.
    pub mapping: sqlx::types::Json<Mapping>,
    /// Limits.
    pub options: sqlx::types::Json<Options>,
    /// Check only.
    pub dry_run: bool,
    /// `running`, `completed` or `failed`.
    pub status: String,
    /// Its report, once it ended.
    pub report: Option<Value>,
    /// Where the report is stored.
    pub report_key: Option<String>,
    /// Its latest job.
    pub job_id: Option<String>,
    /// Who started it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

/// Checks a tree's root URL: `file:///...`, `s3://...` or `gs://...`.
pub fn check_source(url: &str) -> Result<()> {
    let ok = (url.starts_with("file:///") || url.starts_with("s3://") || url.starts_with("gs://"))
        && url.len() <= 2000
        && !url.chars().any(char::is_control)
        && !url.split('/').any(|p| p == "..");
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(
            "the source is the legacy tree's root: file:///<absolute path>, s3://<bucket>/<prefix> or gs://<bucket>/<prefix>"
                .into(),
        ))
    }
}

/// A run by id.
pub async fn get_run(pool: &PgPool, id: Uuid) -> Result<Run> {
    Ok(RUNS.get(pool, id).await?)
}

/// Records a run (its source and mapping checked).
pub async fn create_run(
    tx: &mut sqlx::PgConnection,
    allowlist: &crate::sources::Allowlist,
    source_url: &str,
    mapping: &Mapping,
    options: Options,
    dry_run: bool,
    created_by: &str,
) -> Result<Run> {
    check_source(source_url)?;
    allowlist.check(source_url)?;
    validate_mapping(mapping)?;
    if !(1..=MAX_FILE_BYTES_CEILING).contains(&options.max_file_bytes) {
        return Err(Error::Invalid(format!(
            "max_file_bytes must be between 1 and {MAX_FILE_BYTES_CEILING}"
        )));
    }
    Ok(sqlx::query_as::<_, Run>(
        "INSERT INTO legacy_import_runs (id, source_url, mapping, options, dry_run, created_by)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
    )
    .bind(Uuid::now_v7())
    .bind(source_url)
    .bind(sqlx::types::Json(mapping))
    .bind(sqlx::types::Json(options))
    .bind(dry_run)
    .bind(created_by)
    .fetch_one(&mut *tx)
    .await?)
}

/// A problem kind (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// The mapping names no owner for the folder.
    Unowned,
    /// Another folder claims the same campaign number.
    Duplicate,
    /// Not named `campaign_<n> - <Name>`, or not in an env folder.
    NotCampaign,
    /// The mapping says to leave it out.
    Skipped,
    /// Cannot be read, or is not what its name says.
    Unreadable,
    /// Over the run's limit.
    Oversized,
    /// Its name, made safe, is another file's.
    Collision,
}

impl Problem {
    /// Every kind, in report order.
    pub const ALL: [Problem; 7] = [
        Problem::Unowned,
        Problem::Duplicate,
        Problem::NotCampaign,
        Problem::Skipped,
        Problem::Unreadable,
        Problem::Oversized,
        Problem::Collision,
    ];

    /// Its name in reports and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Problem::Unowned => "unowned",
            Problem::Duplicate => "duplicate",
            Problem::NotCampaign => "not_campaign",
            Problem::Skipped => "skipped",
            Problem::Unreadable => "unreadable",
            Problem::Oversized => "oversized",
            Problem::Collision => "collision",
        }
    }
}

/// Records (or records again) a problem of a run.
pub async fn record_problem(
    pool: &PgPool,
    run: Uuid,
    problem: Problem,
    path: &str,
    detail: &Value,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO legacy_import_problems (run_id, kind, path, detail) VALUES ($1, $2, $3, $4)
         ON CONFLICT (run_id, kind, path) DO UPDATE SET detail = EXCLUDED.detail",
    )
    .bind(run)
    .bind(problem.as_str())
    .bind(path)
    .bind(detail)
    .execute(pool)
    .await?;
    Ok(())
}

/// A run's problems, by kind (each a list of `{path, ...detail}`, at most
/// `limit` per kind), and how many there are of each.
pub async fn problems(pool: &PgPool, run: Uuid, limit: i64) -> Result<(Value, Value)> {
    let rows: Vec<(String, String, Value)> = sqlx::query_as(
        "SELECT kind, path, detail FROM (
             SELECT kind, path, detail, row_number() OVER (PARTITION BY kind ORDER BY path) AS n
             FROM legacy_import_problems WHERE run_id = $1) p
         WHERE n <= $2 ORDER BY kind, path",
    )
    .bind(run)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kind, count(*) FROM legacy_import_problems WHERE run_id = $1 GROUP BY kind",
    )
    .bind(run)
    .fetch_all(pool)
    .await?;
    let mut lists = serde_json::Map::new();
    let mut totals = serde_json::Map::new();
    for problem in Problem::ALL {
        lists.insert(problem.as_str().into(), json!([]));
        totals.insert(problem.as_str().into(), json!(0));
    }
    for (kind, path, detail) in rows {
        let mut entry = json!({ "path": path });
        if let (Some(entry), Value::Object(detail)) = (entry.as_object_mut(), detail) {
            entry.extend(detail);
        }
        if let Some(Value::Array(list)) = lists.get_mut(&kind) {
            list.push(entry);
        }
    }
    for (kind, count) in counts {
        totals.insert(kind, json!(count));
    }
    Ok((Value::Object(lists), Value::Object(totals)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn sources() {
        for good in ["file:///srv/old", "s3://bucket/old", "gs://b"] {
            assert!(check_source(good).is_ok(), "{good}");
        }
        for bad in [
            "memory://",
            "/srv/old",
            "file://rel",
            "file:///a/../etc",
            "http://x",
        ] {
            assert!(check_source(bad).is_err(), "{bad}");
        }
    }
}
