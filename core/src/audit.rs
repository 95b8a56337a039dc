//! The operators' audit log: every action taken through `/api/admin` (who,
//! what, on what, when, how it ended), for the people who must answer
//! "who paused the turns last night?".
//!
//! An action is recorded in two writes around it: [`begin`] before (the
//! row says `pending`; if it cannot be written the action is not taken),
//! [`finish`] after, with the outcome. So the log never misses an action;
//! at worst a row stays `pending` when the process stopped in between.
//! Listed newest first ([`list`]); kept `QB_AUDIT_RETENTION_DAYS`
//! ([`prune`], the `audit` category of the `prune` job).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

/// Errors here are the database's.
pub type Result<T> = std::result::Result<T, sqlx::Error>;

/// Longest error text kept on a row, in characters.
pub const MAX_ERROR_CHARS: usize = 1000;

/// How an action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Begun, not finished (or the process stopped in between).
    Pending,
    /// Done.
    Ok,
    /// Refused (a 4xx answer): nothing changed.
    Refused,
    /// Failed on the server's side (a 5xx).
    Failed,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Pending => "pending",
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "ok" => Outcome::Ok,
            "refused" => Outcome::Refused,
            "failed" => Outcome::Failed,
            _ => Outcome::Pending,
        }
    }
}

/// One recorded action.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Entry {
    /// The entry (time-ordered).
    pub id: Uuid,
    /// When the action began.
    pub at: DateTime<Utc>,
    /// The operator (their user id).
    pub actor: String,
    /// What they did: `queue.pause`, `queue.resume`, `job.retry`,
    /// `job.cancel`, `job.start`, `schedule.run`, `migration.start`,
    /// `migration.rollback`, `import.start`.
    pub action: String,
    /// What it was done to: a kind, a job id, a run id.
    pub target: String,
    /// What else they sent (a started job's kind and unique key, ...), and
    /// under `result` what the action made (a job id, a run id).
    #[schema(value_type = Object)]
    pub detail: Value,
    /// How it ended.
    pub outcome: Outcome,
    /// Why it was refused or failed.
    pub error: Option<String>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

type Row = (
    Uuid,
    DateTime<Utc>,
    String,
    String,
    String,
    Value,
    String,
    Option<String>,
    Option<DateTime<Utc>>,
);

fn entry(row: Row) -> Entry {
    let (id, at, actor, action, target, detail, outcome, error, finished_at) = row;
    Entry {
        id,
        at,
        actor,
        action,
        target,
        detail,
        outcome: Outcome::parse(&outcome),
        error,
        finished_at,
    }
}

/// Records that `actor` is about to do `action` to `target`; returns the
/// entry to [`finish`].
pub async fn begin(
    pool: &PgPool,
    actor: &str,
    action: &str,
    target: &str,
    detail: &Value,
) -> Result<Uuid> {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO operator_audit (id, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(storable_text(actor))
    .bind(action)
    .bind(storable_text(target))
    .bind(storable(detail))
    .execute(pool)
    .await?;
    Ok(id)
}

/// Records how the action of entry `id` ended; `result` (what it made: a
/// job id, a run id) goes into its detail as `result`.
pub async fn finish(
    pool: &PgPool,
    id: Uuid,
    outcome: Outcome,
    error: Option<&str>,
    result: Option<&Value>,
) -> Result<()> {
    let error = error.map(|e| storable_text(&e.chars().take(MAX_ERROR_CHARS).collect::<String>()));
    let result = result.map(storable);
    sqlx::query(
        "UPDATE operator_audit
         SET outcome = $2, error = $3, finished_at = now(),
             detail = CASE WHEN $4::jsonb IS NULL THEN detail
                           ELSE detail || jsonb_build_object('result', $4::jsonb) END
         WHERE id = $1",
    )
    .bind(id)
    .bind(outcome.as_str())
    .bind(error)
    .bind(result)
    .execute(pool)
    .await?;
    Ok(())
}

/// `text` as Postgres can store it: a NUL (which neither `text` nor `jsonb`
/// holds, and which a hostile body may carry in an id or a filter) becomes
/// U+FFFD, so recording what was asked never fails on what was asked.
fn storable_text(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// `value` with every string (keys too) made [`storable_text`].
fn storable(value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(storable_text(s)),
        Value::Array(items) => Value::Array(items.iter().map(storable).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (storable_text(k), storable(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this operator's actions.
    pub actor: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Only actions on this target.
    pub target: Option<String>,
}

/// Entries matching `filter`, newest first, older than `before` (the last
/// id of the previous page), at most `limit`.
pub async fn list(
    pool: &PgPool,
    filter: &Filter,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Entry>> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, at, actor, action, target, detail, outcome, error, finished_at
         FROM operator_audit
         WHERE ($1::text IS NULL OR actor = $1)
           AND ($2::text IS NULL OR action = $2)
           AND ($3::text IS NULL OR target = $3)
           AND ($4::uuid IS NULL OR id < $4)
         ORDER BY id DESC
         LIMIT $5",
    )
    .bind(&filter.actor)
    .bind(&filter.action)
    .bind(&filter.target)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(entry).collect())
}

/// Deletes (with `dry_run`: counts) entries older than `older_than` and
/// after `after` (in id order, which is time order), at most `limit`:
/// returns how many went and where the next batch starts (None once a
/// batch came back short).
pub async fn prune(
    pool: &PgPool,
    after: Uuid,
    older_than: std::time::Duration,
    limit: i64,
    dry_run: bool,
) -> Result<(u64, Option<Uuid>)> {
    let (count, last): (i64, Option<Uuid>) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH doomed AS (
             SELECT id FROM operator_audit
             WHERE id > $1 AND at < now() - make_interval(secs => $2)
             ORDER BY id LIMIT $3
         ),
         gone AS ({delete})
         SELECT (SELECT count(*) FROM gone), (SELECT id FROM doomed ORDER BY id DESC LIMIT 1)",
        delete = if dry_run {
            "SELECT id FROM doomed"
        } else {
            "DELETE FROM operator_audit a USING doomed d WHERE a.id = d.id RETURNING a.id"
        }
    )))
    .bind(after)
    .bind(older_than.as_secs_f64())
    .bind(limit)
    .fetch_one(pool)
    .await?;
    Ok((count as u64, if count < limit { None } else { last }))
}
