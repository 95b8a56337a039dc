//! What operators see and do with jobs: per-kind statistics, listing and
//! reading jobs, cancelling, retrying, pausing kinds, and pruning finished
//! rows. The HTTP admin routes and `questboard admin` both call these.
//!
//! Cancelling a queued job cancels it outright; a running job gets a
//! request (in `job_runs`) that its worker passes to the handler, which
//! stops at its next safe point and ends `cancelled` without a result.
//! Retrying puts a failed or cancelled job back in line with its attempts
//! reset. A paused kind keeps its jobs but no worker claims them. Turn
//! jobs are neither cancelled nor retried here: a turn's place in its
//! session's strict order is what makes it a turn (see
//! `docs/architecture.md`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::{JobRecord, JobSpec, JobStatus, RECORD_SELECT, Result};

/// One kind's queue, as operators see it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct QueueStats {
    /// The kind.
    pub kind: String,
    /// Waiting for their first run.
    pub queued: i64,
    /// Running now (for turns: sessions being worked on).
    pub running: i64,
    /// Waiting to run again after a failed run.
    pub retrying: i64,
    /// Failed for good (kept until pruned).
    pub failed: i64,
    /// Cancelled (kept until pruned).
    pub cancelled: i64,
    /// How long the oldest job that may run now has waited, in seconds.
    pub oldest_wait_seconds: Option<f64>,
    /// Paused: no worker claims its jobs.
    pub paused: bool,
}

/// Statistics of every kind in `specs`.
pub async fn queue_stats(pool: &PgPool, specs: &[JobSpec]) -> Result<Vec<QueueStats>> {
    // Waiting jobs, from apalis's fetch index (its predicate is the filter).
    let waiting: Vec<(String, i64, i64, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT job_type,
                count(*) FILTER (WHERE status = 'Pending' AND attempts = 0),
                count(*) FILTER (WHERE (status = 'Pending' AND attempts > 0)
                                    OR (status = 'Failed' AND attempts < max_attempts)),
                min(run_at) FILTER (WHERE run_at <= now())
         FROM apalis.jobs
         WHERE status = 'Pending' OR (status = 'Failed' AND attempts < max_attempts)
         GROUP BY job_type",
    )
    .fetch_all(pool)
    .await?;
    let running: Vec<(String, i64)> = sqlx::query_as(
        "SELECT job_type, count(*) FROM apalis.jobs WHERE status = 'Running' GROUP BY job_type",
    )
    .fetch_all(pool)
    .await?;
    let dead: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT job_type,
                count(*) FILTER (WHERE NOT coalesce(metadata ? 'cancelled_at', false)),
                count(*) FILTER (WHERE coalesce(metadata ? 'cancelled_at', false))
         FROM apalis.jobs WHERE status = 'Killed' GROUP BY job_type",
    )
    .fetch_all(pool)
    .await?;
    let paused: Vec<String> = paused_kinds(pool).await?;
    // Session-serial kinds (turns): a running job's row stays Pending; the sessions being
    // worked on are the held session leases, and the oldest wait is the
    // longest a runnable session has been in line.
    let (sessions_held, oldest_session): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM leases
                 WHERE scope = 'session' AND holder IS NOT NULL
                   AND expires_at > clock_timestamp()),
                (SELECT min(ready_at) FROM session_queue WHERE ready_at <= now())",
    )
    .fetch_one(pool)
    .await?;
    let now = Utc::now();
    let age = |at: Option<DateTime<Utc>>| {
        at.map(|at| ((now - at).num_milliseconds().max(0) as f64) / 1000.0)
    };
    Ok(specs
        .iter()
        .map(|spec| {
            let (queued, retrying, oldest) = waiting
                .iter()
                .find(|w| w.0 == spec.queue)
                .map(|w| (w.1, w.2, w.3))
                .unwrap_or((0, 0, None));
            let (failed, cancelled) = dead
                .iter()
                .find(|d| d.0 == spec.queue)
                .map(|d| (d.1, d.2))
                .unwrap_or((0, 0));
            let (queued, running, oldest) = if spec.session_serial {
                (
                    (queued - sessions_held).max(0),
                    sessions_held,
                    age(oldest_session),
                )
            } else {
                let running = running
                    .iter()
                    .find(|r| r.0 == spec.queue)
                    .map_or(0, |r| r.1);
                (queued, running, age(oldest))
            };
            QueueStats {
                kind: spec.kind.to_owned(),
                queued,
                running,
                retrying,
                failed,
                cancelled,
                oldest_wait_seconds: oldest,
                paused: paused.iter().any(|p| p == spec.kind),
            }
        })
        .collect())
}

/// The kinds paused now.
pub async fn paused_kinds(pool: &PgPool) -> Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT kind FROM job_kinds WHERE paused ORDER BY kind")
            .fetch_all(pool)
            .await?,
    )
}

/// Pauses (or resumes) `kind`, durably: no worker claims a paused kind's
/// jobs; runs already going on finish.
pub async fn set_paused(pool: &PgPool, kind: &str, paused: bool, by: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO job_kinds (kind, paused, changed_at, changed_by) VALUES ($1, $2, now(), $3)
         ON CONFLICT (kind) DO UPDATE
         SET paused = EXCLUDED.paused, changed_at = now(), changed_by = EXCLUDED.changed_by",
    )
    .bind(kind)
    .bind(paused)
    .bind(by)
    .execute(pool)
    .await?;
    Ok(())
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this queue.
    pub queue: Option<String>,
    /// Only jobs in this status.
    pub status: Option<JobStatus>,
    /// Only this session's jobs.
    pub session: Option<Uuid>,
    /// Only jobs older than this id (the previous page's last).
    pub before: Option<String>,
    /// Page size.
    pub limit: i64,
}

/// A page of jobs, newest first, and the cursor of the next page.
pub async fn list(pool: &PgPool, filter: &ListFilter) -> Result<(Vec<JobRecord>, Option<String>)> {
    let status = filter.status.map_or("true", JobStatus::condition);
    let mut rows: Vec<JobRecord> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{RECORD_SELECT}
         WHERE ($1::text IS NULL OR j.job_type = $1)
           AND {status}
           AND ($2::uuid IS NULL
                OR j.id IN (SELECT s.job_id FROM serial_job_state s WHERE s.session_id = $2)
                OR (j.metadata ? 'session_id' AND (j.metadata -> 'session_id') = $2::text))
           AND ($3::text IS NULL OR j.id < $3)
         ORDER BY j.id DESC
         LIMIT $4"
    )))
    .bind(filter.queue.as_deref())
    .bind(filter.session)
    .bind(filter.before.as_deref())
    .bind(filter.limit + 1)
    .fetch_all(pool)
    .await?;
    let next = if rows.len() as i64 > filter.limit {
        rows.truncate(filter.limit.max(0) as usize);
        rows.last().map(|r| r.id.clone())
    } else {
        None
    };
    Ok((rows, next))
}

/// What a cancellation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancellation {
    /// It was waiting: cancelled now.
    Cancelled,
    /// It is running: its worker was asked to stop it.
    Requested,
    /// It had already ended this way.
    AlreadyFinished(JobStatus),
}

/// Cancels job `id` (None: no such job). Publish the request to workers
/// ([`crate::wakeups::Publisher::cancel`]) when it is `Requested`.
pub async fn cancel(pool: &PgPool, id: &str, by: &str) -> Result<Option<Cancellation>> {
    let mut tx = pool.begin().await?;
    let row: Option<(String, i32, i32, bool)> = sqlx::query_as(
        "SELECT status, attempts, max_attempts, coalesce(metadata ? 'cancelled_at', false)
         FROM apalis.jobs WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((status, attempts, max_attempts, cancelled)) = row else {
        return Ok(None);
    };
    let outcome = match status.as_str() {
        "Pending" => Cancellation::Cancelled,
        "Failed" if attempts < max_attempts => Cancellation::Cancelled,
        "Running" | "Queued" => Cancellation::Requested,
        "Done" => Cancellation::AlreadyFinished(JobStatus::Succeeded),
        _ if cancelled => Cancellation::AlreadyFinished(JobStatus::Cancelled),
        _ => Cancellation::AlreadyFinished(JobStatus::Failed),
    };
    match outcome {
        Cancellation::Cancelled => {
            sqlx::query(
                "UPDATE apalis.jobs j SET status = 'Killed', done_at = now(),
                     last_result = jsonb_build_object('Err', 'cancelled by ' || $2::text),
                     idempotency_key = NULL,
                     metadata = coalesce(j.metadata, ''::hstore)
                         || CASE WHEN j.idempotency_key IS NOT NULL
                                 THEN hstore('unique_key', j.idempotency_key)
                                 ELSE ''::hstore END
                         || hstore('cancelled_at', now()::text)
                 WHERE id = $1",
            )
            .bind(id)
            .bind(by)
            .execute(&mut *tx)
            .await?;
        }
        Cancellation::Requested => {
            sqlx::query(
                "INSERT INTO job_runs (job_id, cancel_requested_at, cancel_requested_by)
                 VALUES ($1, now(), $2)
                 ON CONFLICT (job_id) DO UPDATE
                 SET cancel_requested_at = coalesce(job_runs.cancel_requested_at, now()),
                     cancel_requested_by = coalesce(job_runs.cancel_requested_by, $2)",
            )
            .bind(id)
            .bind(by)
            .execute(&mut *tx)
            .await?;
        }
        Cancellation::AlreadyFinished(_) => {}
    }
    tx.commit().await?;
    Ok(Some(outcome))
}

/// What a retry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retry {
    /// Back in line, attempts reset.
    Queued,
    /// Only failed and cancelled jobs can be retried; it is this.
    NotRetryable(JobStatus),
    /// Its unique key is held by this newer job: retrying would duplicate it.
    KeyTaken(String),
}

/// Queues failed or cancelled job `id` again with its attempts reset
/// (None: no such job). Announce its kind to workers afterwards.
pub async fn retry(pool: &PgPool, id: &str) -> Result<Option<Retry>> {
    let mut tx = pool.begin().await?;
    let Some(record) = super::fetch(&mut *tx, id).await? else {
        return Ok(None);
    };
    let status = record.client_status();
    if !matches!(status, JobStatus::Failed | JobStatus::Cancelled) {
        return Ok(Some(Retry::NotRetryable(status)));
    }
    let key: Option<String> =
        sqlx::query_scalar("SELECT metadata -> 'unique_key' FROM apalis.jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    if let Some(key) = &key {
        let holder: Option<String> = sqlx::query_scalar(
            "SELECT id FROM apalis.jobs WHERE job_type = $1 AND idempotency_key = $2",
        )
        .bind(&record.job_type)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(holder) = holder {
            return Ok(Some(Retry::KeyTaken(holder)));
        }
    }
    sqlx::query(
        "UPDATE apalis.jobs j SET status = 'Pending', attempts = 0, run_at = now(),
             done_at = NULL, lock_at = NULL, last_result = NULL,
             idempotency_key = j.metadata -> 'unique_key',
             metadata = j.metadata - 'cancelled_at'::text - 'unique_key'::text
         WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE job_runs SET cancel_requested_at = NULL, cancel_requested_by = NULL,
             progress_done = NULL, progress_total = NULL, progress_message = NULL,
             progress_at = NULL
         WHERE job_id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(Retry::Queued))
}

/// One bounded step of pruning finished job rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneStep {
    /// Rows looked at.
    pub scanned: u64,
    /// Rows deleted (or, in a dry run, that would be).
    pub deleted: u64,
    /// Where the next step starts; None when this one came back short.
    pub next: Option<String>,
}

/// Deletes (or with `dry_run` counts) up to `limit` job rows after id
/// `after`: succeeded before `succeeded_before`, failed or cancelled
/// before `dead_before`. Walks the primary key (ids are ULIDs, ordered by
/// creation, and a job ends after it is created, so nothing past the later
/// cutoff's id can qualify), so each row is looked at once per pass and no
/// index beyond the key is needed. Deleting a job deletes its `job_runs`.
pub async fn prune_finished(
    pool: &PgPool,
    after: &str,
    succeeded_before: DateTime<Utc>,
    dead_before: DateTime<Utc>,
    limit: i64,
    dry_run: bool,
) -> Result<PruneStep> {
    let upper = ulid::Ulid::from_parts(
        succeeded_before.max(dead_before).timestamp_millis().max(0) as u64,
        0,
    )
    .to_string();
    let (scanned, last, deleted): (i64, Option<String>, i64) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH batch AS (
                 SELECT id, status, done_at FROM apalis.jobs
                 WHERE id > $1 AND id < $2 ORDER BY id LIMIT $3
             ),
             doomed AS (
                 SELECT id FROM batch
                 WHERE (status = 'Done' AND done_at < $4) OR (status = 'Killed' AND done_at < $5)
             ),
             gone AS (
                 {delete}
             )
             SELECT (SELECT count(*) FROM batch), (SELECT max(id) FROM batch),
                    (SELECT count(*) FROM gone)",
            delete = if dry_run {
                "SELECT id FROM doomed"
            } else {
                "DELETE FROM apalis.jobs j USING doomed d WHERE j.id = d.id RETURNING j.id"
            }
        )))
        .bind(after)
        .bind(&upper)
        .bind(limit)
        .bind(succeeded_before)
        .bind(dead_before)
        .fetch_one(pool)
        .await?;
    Ok(PruneStep {
        scanned: scanned as u64,
        deleted: deleted as u64,
        next: if scanned < limit { None } else { last },
    })
}

/// Deletes up to `limit` jobs of a session being deleted, other than its
/// session-serial ones (their own rows go with them, see
/// `turns::delete_session_chunk`). Returns how many went.
pub async fn delete_session_jobs_chunk(pool: &PgPool, session: Uuid, limit: i64) -> Result<u64> {
    let (count,): (i64,) = sqlx::query_as(
        "WITH doomed AS (
             SELECT id FROM apalis.jobs
             WHERE metadata ? 'session_id' AND (metadata -> 'session_id') = $1::text
             LIMIT $2
         ),
         gone AS (
             DELETE FROM apalis.jobs j USING doomed d WHERE j.id = d.id RETURNING j.id
         )
         SELECT count(*) FROM gone",
    )
    .bind(session)
    .bind(limit)
    .fetch_one(pool)
    .await?;
    Ok(count as u64)
}
