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
use sqlx::{PgPool, Postgres, QueryBuilder};
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

/// Waiting jobs per queue, from apalis's fetch index (its predicate is
/// the filter). (The statements of [`queue_stats`] are public so the
/// benchmark can show their plans.)
pub const STATS_WAITING_SQL: &str = "SELECT job_type,
        count(*) FILTER (WHERE status = 'Pending' AND attempts = 0),
        count(*) FILTER (WHERE (status = 'Pending' AND attempts > 0)
                            OR (status = 'Failed' AND attempts < max_attempts)),
        min(run_at) FILTER (WHERE run_at <= now())
 FROM apalis.jobs
 WHERE status = 'Pending' OR (status = 'Failed' AND attempts < max_attempts)
 GROUP BY job_type";

/// Running plain jobs per queue (a partial index of running jobs).
pub const STATS_RUNNING_SQL: &str =
    "SELECT job_type, count(*) FROM apalis.jobs WHERE status = 'Running' GROUP BY job_type";

/// Failed and cancelled jobs per queue (the partial index of dead jobs).
pub const STATS_DEAD_SQL: &str = "SELECT job_type,
        count(*) FILTER (WHERE NOT coalesce(metadata ? 'cancelled_at', false)),
        count(*) FILTER (WHERE coalesce(metadata ? 'cancelled_at', false))
 FROM apalis.jobs WHERE status = 'Killed' GROUP BY job_type";

/// Statistics of every kind in `specs`.
pub async fn queue_stats(pool: &PgPool, specs: &[JobSpec]) -> Result<Vec<QueueStats>> {
    // Waiting jobs, from apalis's fetch index (its predicate is the filter).
    let waiting: Vec<(String, i64, i64, Option<DateTime<Utc>>)> =
        sqlx::query_as(STATS_WAITING_SQL).fetch_all(pool).await?;
    let running: Vec<(String, i64)> = sqlx::query_as(STATS_RUNNING_SQL).fetch_all(pool).await?;
    let dead: Vec<(String, i64, i64)> = sqlx::query_as(STATS_DEAD_SQL).fetch_all(pool).await?;
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
    /// Only jobs holding (or, once failed or cancelled, having held) this
    /// unique key.
    pub unique_key: Option<String>,
    /// Only jobs created at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Only jobs created before this time.
    pub to: Option<DateTime<Utc>>,
    /// Only jobs whose stored payload contains this text (as bytes), or
    /// whose last error or earlier errors contain it (any case).
    pub text: Option<String>,
    /// Only jobs older than this id (the previous page's last).
    pub before: Option<String>,
    /// Page size.
    pub limit: i64,
}

impl ListFilter {
    /// Appends the filter's conditions on `apalis.jobs j` (joined with
    /// `job_runs r`) to `query`, binding its values. Only the conditions
    /// asked for are written, each in a form an index can serve (a
    /// condition such as `($1 IS NULL OR j.id < $1)` cannot use one, and a
    /// prepared statement's generic plan would then walk the whole table).
    fn push_conditions(&self, query: &mut QueryBuilder<Postgres>) {
        query.push(" WHERE true");
        if let Some(queue) = &self.queue {
            // Queue names are fixed text from the registry; written as a
            // literal, the planner matches them to the partial indexes.
            if queue
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_')
            {
                query.push(format!(" AND j.job_type = '{queue}'"));
            } else {
                query.push(" AND j.job_type = ").push_bind(queue.clone());
            }
        }
        if let Some(status) = self.status {
            query.push(" AND ").push(status.condition());
        }
        if let Some(session) = self.session {
            query
                .push(" AND j.id IN (SELECT s.job_id FROM serial_job_state s WHERE s.session_id = ")
                .push_bind(session)
                .push(
                    " UNION ALL SELECT m.id FROM apalis.jobs m \
                     WHERE m.metadata ? 'session_id' AND (m.metadata -> 'session_id') = ",
                )
                .push_bind(session.to_string())
                .push(")");
        }
        if let Some(before) = &self.before {
            query.push(" AND j.id < ").push_bind(before.clone());
        }
        if let Some(key) = &self.unique_key {
            // Two index lookups: apalis's partial index of held keys, and
            // the one of keys given up (migration 17).
            query
                .push(" AND j.id IN (SELECT k.id FROM apalis.jobs k WHERE k.idempotency_key = ")
                .push_bind(key.clone())
                .push(
                    " UNION ALL SELECT g.id FROM apalis.jobs g \
                     WHERE g.metadata ? 'unique_key' AND (g.metadata -> 'unique_key') = ",
                )
                .push_bind(key.clone())
                .push(")");
        }
        // Job ids are ULIDs: their first characters are the creation time,
        // so a time range is a range of the primary key.
        let bound = |at: DateTime<Utc>| {
            ulid::Ulid::from_parts(at.timestamp_millis().max(0) as u64, 0).to_string()
        };
        if let Some(from) = self.from {
            query.push(" AND j.id >= ").push_bind(bound(from));
        }
        if let Some(to) = self.to {
            query.push(" AND j.id < ").push_bind(bound(to));
        }
        if let Some(text) = &self.text {
            query
                .push(" AND (position(convert_to(")
                .push_bind(text.clone())
                .push(", 'UTF8') IN j.job) > 0 OR strpos(lower(j.last_result ->> 'Err'), lower(")
                .push_bind(text.clone())
                .push(")) > 0 OR strpos(lower(r.errors::text), lower(")
                .push_bind(text.clone())
                .push(")) > 0)");
        }
    }

    /// `head`, the filter's conditions, newest first, at most `limit` rows.
    fn query(&self, head: &str, limit: i64) -> QueryBuilder<Postgres> {
        let mut query = QueryBuilder::new(head.to_owned());
        self.push_conditions(&mut query);
        query.push(" ORDER BY j.id DESC LIMIT ").push_bind(limit);
        query
    }
}

/// A page of jobs, newest first, and the cursor of the next page.
pub async fn list(pool: &PgPool, filter: &ListFilter) -> Result<(Vec<JobRecord>, Option<String>)> {
    let mut query = filter.query(RECORD_SELECT, filter.limit + 1);
    let mut rows: Vec<JobRecord> = query.build_query_as().fetch_all(pool).await?;
    let next = if rows.len() as i64 > filter.limit {
        rows.truncate(filter.limit.max(0) as usize);
        rows.last().map(|r| r.id.clone())
    } else {
        None
    };
    Ok((rows, next))
}

/// The plan of [`list`] for `filter`, as `EXPLAIN (ANALYZE, BUFFERS)`
/// prints it: what BENCHMARKS.md shows for the console's job list.
pub async fn explain_list(pool: &PgPool, filter: &ListFilter) -> Result<String> {
    let head = format!("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, SUMMARY ON) {RECORD_SELECT}");
    let mut query = filter.query(&head, filter.limit + 1);
    let lines: Vec<(String,)> = query.build_query_as().fetch_all(pool).await?;
    Ok(lines
        .into_iter()
        .map(|l| l.0)
        .collect::<Vec<_>>()
        .join("\n"))
}

/// The ids and queues of up to `cap` jobs matching `filter` (its page
/// size and cursor included), newest first: what a bulk action acts on.
pub async fn matching(
    pool: &PgPool,
    filter: &ListFilter,
    cap: i64,
) -> Result<Vec<(String, String)>> {
    let mut query = filter.query(
        "SELECT j.id, j.job_type FROM apalis.jobs j LEFT JOIN job_runs r ON r.job_id = j.id",
        cap,
    );
    Ok(query.build_query_as().fetch_all(pool).await?)
}

/// Jobs that ended, per kind, over the last hour (twelve five-minute
/// buckets) and the last day (twenty-four hours), oldest bucket first.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Throughput {
    /// When the last bucket ends (now).
    pub until: DateTime<Utc>,
    /// Per kind, five-minute buckets of the last hour.
    pub hour: Vec<KindSeries>,
    /// Per kind, hourly buckets of the last day.
    pub day: Vec<KindSeries>,
}

/// One kind's ended jobs per bucket.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KindSeries {
    /// The kind.
    pub kind: String,
    /// Succeeded per bucket.
    pub succeeded: Vec<i64>,
    /// Failed for good per bucket (cancelled ones are not failures).
    pub failed: Vec<i64>,
}

/// Ended jobs per queue and bucket: `$1` the lowest job id read, `$2`
/// the window's start, `$3` the bucket in seconds, `$4` the buckets.
pub const THROUGHPUT_SQL: &str = "SELECT j.job_type,
        least(floor(extract(epoch FROM (j.done_at - $2)) / $3)::int, $4 - 1),
        count(*) FILTER (WHERE j.status = 'Done'),
        count(*) FILTER (WHERE j.status = 'Killed'
                           AND NOT coalesce(j.metadata ? 'cancelled_at', false))
 FROM apalis.jobs j
 WHERE j.id >= $1 AND j.status IN ('Done', 'Killed') AND j.done_at >= $2
 GROUP BY 1, 2";

/// Ended jobs of every kind in `specs` over the last hour and day, from
/// `apalis.jobs` (so the console needs no Prometheus). Reads the jobs
/// created since a day before the window (a range of the ULID primary
/// key), so its cost follows a day or two of jobs, not the whole table; a
/// job that ran for more than a day before ending is not counted.
pub async fn throughput(pool: &PgPool, specs: &[JobSpec]) -> Result<Throughput> {
    const FIVE_MINUTES: i64 = 300;
    const BUCKETS: usize = 288;
    let until = Utc::now();
    let start = until - chrono::Duration::seconds(FIVE_MINUTES * BUCKETS as i64);
    let lower = ulid::Ulid::from_parts(
        (start - chrono::Duration::days(1))
            .timestamp_millis()
            .max(0) as u64,
        0,
    )
    .to_string();
    let rows: Vec<(String, i32, i64, i64)> = sqlx::query_as(THROUGHPUT_SQL)
        .bind(&lower)
        .bind(start)
        .bind(FIVE_MINUTES as f64)
        .bind(BUCKETS as i32)
        .fetch_all(pool)
        .await?;
    let mut hour = Vec::with_capacity(specs.len());
    let mut day = Vec::with_capacity(specs.len());
    for spec in specs {
        let mut ok = vec![0i64; BUCKETS];
        let mut bad = vec![0i64; BUCKETS];
        for (_, bucket, succeeded, failed) in rows.iter().filter(|r| r.0 == spec.queue) {
            let b = (*bucket).clamp(0, BUCKETS as i32 - 1) as usize;
            ok[b] += succeeded;
            bad[b] += failed;
        }
        let hourly = |v: &[i64]| v.chunks(12).map(|c| c.iter().sum()).collect::<Vec<i64>>();
        day.push(KindSeries {
            kind: spec.kind.to_owned(),
            succeeded: hourly(&ok),
            failed: hourly(&bad),
        });
        hour.push(KindSeries {
            kind: spec.kind.to_owned(),
            succeeded: ok[BUCKETS - 12..].to_vec(),
            failed: bad[BUCKETS - 12..].to_vec(),
        });
    }
    Ok(Throughput { until, hour, day })
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
