//! The SQL of the runtime's plain lane: kinds whose runs are independent
//! of each other (maintenance, media, migrations), claimed straight from
//! `apalis.jobs`.
//!
//! A run is bracketed by two batched statements, as River's producer and
//! completer do: [`claim`] takes due jobs of several kinds at once
//! (`FOR UPDATE SKIP LOCKED`, by priority then age, never more per kind
//! than the worker has free slots, never a paused kind), takes a **job
//! lease** for each (scope `job` in [`crate::leases`]) and marks them
//! Running with the attempt counted; [`settle`] records how each run ended,
//! fenced by its lease token, and drops the lease. While a job runs its
//! worker renews the lease with all its others
//! ([`crate::leases::renew_all`]); a worker that dies stops renewing, and
//! [`rescue`] (run by every worker at each poll) moves Running jobs whose
//! lease lapsed back to due, the dead run counted, or to failed when that
//! was the last attempt. A holder that lost its lease (paused, partitioned)
//! writes nothing: [`settle`] and [`report_progress`] check the token.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::Result;
use crate::events::{self, Event};
use crate::leases::{self, JOB_SCOPE, Lease};

/// What one claim asks for, per kind.
#[derive(Debug, Clone)]
pub struct Want {
    /// The kind (for pausing).
    pub kind: &'static str,
    /// Its queue.
    pub queue: &'static str,
    /// At most this many.
    pub limit: usize,
}

/// A job just claimed: its lease is held and its attempt counted.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The job.
    pub id: String,
    /// Its queue.
    pub queue: String,
    /// Its stored payload.
    pub payload: Vec<u8>,
    /// This run's attempt number, from 1.
    pub attempt: i32,
    /// Most runs allowed.
    pub max_attempts: i32,
    /// Its session, if it has one.
    pub session: Option<Uuid>,
    /// How long it waited since it became due (`run_at`: its scheduled
    /// time, or its retry's), on the database's clock.
    pub waited: Duration,
    /// The job lease.
    pub lease: Lease,
    /// An operator asked it to stop before this run started.
    pub cancel_requested: bool,
}

/// `$1` kinds, `$2` queues, `$3` limits (parallel arrays), `$4` holder,
/// `$5` TTL in ms. One LATERAL probe of apalis's fetch index per kind; the
/// jobs are updated through the row versions `due` locked (a TID scan),
/// because a join by id let the planner walk the primary key from its
/// start, past every finished job, on each claim (17 ms a claim late in a
/// run of 20,000). Rows: one `job` row per started job and one `lease` row
/// per lease taken, joined by id in Rust (joining two CTEs in SQL is a
/// nested loop the planner cannot size).
static CLAIM_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH wanted AS (
             SELECT w.kind, w.queue, w.n FROM unnest($1::text[], $2::text[], $3::int[])
                 AS w(kind, queue, n)
             WHERE NOT EXISTS (SELECT 1 FROM job_kinds k WHERE k.kind = w.kind AND k.paused)
         ),
         due AS (
             SELECT c.id, c.ctid FROM wanted w
             CROSS JOIN LATERAL (
                 SELECT j.id, j.ctid FROM apalis.jobs j
                 WHERE j.job_type = w.queue
                   AND (j.status = 'Pending' OR (j.status = 'Failed' AND j.attempts < j.max_attempts))
                   AND j.run_at <= now()
                 ORDER BY j.priority DESC, j.run_at
                 LIMIT w.n
                 FOR UPDATE OF j SKIP LOCKED
             ) c
         ),
         acquired AS ({acquire}),
         started AS (
             UPDATE apalis.jobs j
             SET status = 'Running', attempts = j.attempts + 1, lock_at = now()
             WHERE j.ctid = ANY (ARRAY(
                 SELECT d.ctid FROM due d WHERE d.id IN (SELECT key FROM acquired)))
             RETURNING j.id, j.job_type, j.job, j.attempts, j.max_attempts,
                       j.metadata -> 'session_id' AS session_id,
                       greatest(extract(epoch FROM now() - j.run_at), 0)::float8 AS waited
         )
         SELECT 'job' AS row, s.id, s.job_type, s.job, s.attempts, s.max_attempts, s.session_id,
                s.waited, NULL::bigint AS token, NULL::timestamptz AS expires_at,
                EXISTS (SELECT 1 FROM job_runs r
                        WHERE r.job_id = s.id AND r.cancel_requested_at IS NOT NULL)
                    AS cancel_requested
         FROM started s
         UNION ALL
         SELECT 'lease', a.key, NULL, NULL, NULL, NULL, NULL, NULL, a.token, a.expires_at, NULL
         FROM acquired a",
        acquire = leases::acquire_each("'job'", "(SELECT id AS key FROM due)", "$4", "$5"),
    )
});

#[derive(sqlx::FromRow)]
struct ClaimRow {
    row: String,
    id: String,
    job_type: Option<String>,
    job: Option<Vec<u8>>,
    attempts: Option<i32>,
    max_attempts: Option<i32>,
    session_id: Option<String>,
    waited: Option<f64>,
    token: Option<i64>,
    expires_at: Option<DateTime<Utc>>,
    cancel_requested: Option<bool>,
}

/// Claims up to each [`Want::limit`] due jobs of each kind for `holder`,
/// taking their job leases for `ttl`. Paused kinds get nothing. Jobs other
/// workers are claiming at the same moment are skipped, not waited for.
pub async fn claim(
    pool: &PgPool,
    holder: &str,
    ttl: Duration,
    wants: &[Want],
) -> Result<Vec<Claimed>> {
    let wants: Vec<&Want> = wants.iter().filter(|w| w.limit > 0).collect();
    if wants.is_empty() {
        return Ok(Vec::new());
    }
    let kinds: Vec<&str> = wants.iter().map(|w| w.kind).collect();
    let queues: Vec<&str> = wants.iter().map(|w| w.queue).collect();
    let limits: Vec<i32> = wants
        .iter()
        .map(|w| i32::try_from(w.limit).unwrap_or(i32::MAX))
        .collect();
    let rows: Vec<ClaimRow> = sqlx::query_as(sqlx::AssertSqlSafe(CLAIM_SQL.as_str()))
        .bind(&kinds)
        .bind(&queues)
        .bind(&limits)
        .bind(holder)
        .bind(ttl.as_secs_f64() * 1000.0)
        .fetch_all(pool)
        .await?;
    let mut leases: std::collections::HashMap<String, (i64, DateTime<Utc>)> = rows
        .iter()
        .filter(|r| r.row == "lease")
        .filter_map(|r| Some((r.id.clone(), (r.token?, r.expires_at?))))
        .collect();
    Ok(rows
        .into_iter()
        .filter(|r| r.row == "job")
        .filter_map(|r| {
            let (token, expires_at) = leases.remove(&r.id)?;
            Some(Claimed {
                lease: Lease {
                    scope: JOB_SCOPE.to_owned(),
                    key: r.id.clone(),
                    holder: holder.to_owned(),
                    token,
                    expires_at,
                },
                id: r.id,
                queue: r.job_type?,
                payload: r.job?,
                attempt: r.attempts?,
                max_attempts: r.max_attempts?,
                session: r.session_id.and_then(|s| s.parse().ok()),
                waited: Duration::from_secs_f64(r.waited.unwrap_or(0.0).max(0.0)),
                cancel_requested: r.cancel_requested.unwrap_or(false),
            })
        })
        .collect())
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Settle {
    /// Done; the handler's report is the job's result.
    Succeeded(Value),
    /// Failed; runs again after `delay` (the caller checked attempts are left).
    Retrying {
        /// Why (sanitised).
        error: String,
        /// How long to wait.
        delay: Duration,
    },
    /// Failed for good.
    Failed(String),
    /// Stopped at an operator's request; no result recorded.
    Cancelled(String),
    /// Interrupted by worker shutdown: due again at once, the attempt not counted.
    HandedBack,
}

impl Settle {
    fn kind(&self) -> &'static str {
        match self {
            Settle::Succeeded(_) => "succeeded",
            Settle::Retrying { .. } => "retrying",
            Settle::Failed(_) => "failed",
            Settle::Cancelled(_) => "cancelled",
            Settle::HandedBack => "requeued",
        }
    }

    /// A label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Settle::Succeeded(_) => "succeeded",
            Settle::Retrying { .. } => "retried",
            Settle::Failed(_) => "failed",
            Settle::Cancelled(_) => "cancelled",
            Settle::HandedBack => "handed_back",
        }
    }
}

/// One run's outcome, under the lease it ran with.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The job.
    pub job_id: String,
    /// The job lease token of the run.
    pub token: i64,
    /// How it ended.
    pub settle: Settle,
}

/// `$1` ids, `$2` tokens, `$3` outcome kinds, `$4` results, `$5` errors,
/// `$6` retry delays in ms. A row is written only while its lease is live
/// with the run's token and the job is still Running; the lease row is
/// then deleted (tokens come from a sequence that only grows, so a later
/// run's lease never reuses a token). Failed and cancelled jobs give their
/// unique key up (kept in `metadata` for display).
///
/// Every row is reached by one probe of its key in `fenced` (the job's
/// `LIMIT 1` keeps the planner from pushing `status = 'Running'` in and
/// scanning the partial index of running jobs for each one), then by the
/// row version locked there (TID scans): joins between the CTE and the
/// tables made settling quadratic in the batch.
static SETTLE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "
    WITH input AS (
        SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::jsonb[], $5::text[],
                             $6::float8[])
            AS i(id, token, outcome, result, error, delay_ms)
    ),
    fenced AS (
        SELECT i.*, j.attempts, j.lock_at, j.job_ctid, fence.lease_ctid, fence.holder
        FROM input i
        CROSS JOIN LATERAL (
            SELECT l.ctid AS lease_ctid, l.holder FROM leases l
            WHERE l.scope = 'job' AND l.key = i.id AND l.token = i.token
              AND l.holder IS NOT NULL AND l.expires_at > clock_timestamp()
            FOR UPDATE
        ) fence
        CROSS JOIN LATERAL (
            SELECT j.attempts, j.status, j.lock_at, j.ctid AS job_ctid FROM apalis.jobs j
            WHERE j.id = i.id LIMIT 1 FOR UPDATE
        ) j
        WHERE j.status = 'Running'
    ),
    settled AS (
        UPDATE apalis.jobs j SET
            status = CASE f.outcome WHEN 'succeeded' THEN 'Done' WHEN 'retrying' THEN 'Failed'
                                    WHEN 'requeued' THEN 'Pending' ELSE 'Killed' END,
            done_at = CASE WHEN f.outcome IN ('succeeded', 'failed', 'cancelled') THEN now() END,
            run_at = CASE f.outcome
                         WHEN 'retrying' THEN now() + make_interval(secs => f.delay_ms / 1000.0)
                         WHEN 'requeued' THEN now() ELSE j.run_at END,
            attempts = CASE f.outcome WHEN 'requeued' THEN greatest(j.attempts - 1, 0)
                                      ELSE j.attempts END,
            lock_at = CASE f.outcome WHEN 'requeued' THEN NULL ELSE j.lock_at END,
            last_result = CASE f.outcome
                              WHEN 'succeeded' THEN jsonb_build_object('Ok', f.result)
                              WHEN 'requeued' THEN j.last_result
                              ELSE jsonb_build_object('Err', f.error) END,
            idempotency_key = CASE WHEN f.outcome IN ('failed', 'cancelled') THEN NULL
                                   ELSE j.idempotency_key END,
            metadata = coalesce(j.metadata, ''::hstore)
                || CASE WHEN f.outcome IN ('failed', 'cancelled') AND j.idempotency_key IS NOT NULL
                        THEN hstore('unique_key', j.idempotency_key) ELSE ''::hstore END
                || CASE WHEN f.outcome = 'cancelled' THEN hstore('cancelled_at', now()::text)
                        ELSE ''::hstore END
        FROM fenced f WHERE j.ctid = f.job_ctid
        RETURNING j.id
    ),
    runs AS (
        INSERT INTO job_runs AS r (job_id, errors)
        SELECT f.id, jsonb_build_array(jsonb_build_object('attempt', f.attempts, 'at', now(),
                                                          'error', f.error, 'worker', f.holder,
                                                          'started_at', f.lock_at))
        FROM fenced f WHERE f.outcome IN ('retrying', 'failed')
        {keep_last_errors}
    ),
    released AS (
        DELETE FROM leases l WHERE l.ctid = ANY (ARRAY(SELECT lease_ctid FROM fenced))
    )
    SELECT id FROM settled",
        keep_last_errors = KEEP_LAST_ERRORS
    )
});

/// The upsert tail that appends a run's error to `job_runs` (aliased `r`)
/// and keeps the last ten.
const KEEP_LAST_ERRORS: &str = "ON CONFLICT (job_id) DO UPDATE SET errors = (
             SELECT coalesce(jsonb_agg(x.e ORDER BY x.n), '[]'::jsonb) FROM (
                 SELECT e, n FROM jsonb_array_elements(r.errors || EXCLUDED.errors)
                     WITH ORDINALITY AS a(e, n)
                 ORDER BY n DESC LIMIT 10
             ) x)";

/// Records `outcomes` in one statement. Returns, in the same order, whether
/// each was written: false when its lease was no longer live with its
/// token (another worker has the job now) or the job no longer runs.
pub async fn settle(pool: &PgPool, outcomes: &[Outcome]) -> Result<Vec<bool>> {
    if outcomes.is_empty() {
        return Ok(Vec::new());
    }
    // Job-id order is the lock order, as for every batch that locks rows.
    let mut sorted: Vec<&Outcome> = outcomes.iter().collect();
    sorted.sort_by(|a, b| a.job_id.cmp(&b.job_id));
    let ids: Vec<&str> = sorted.iter().map(|o| o.job_id.as_str()).collect();
    let tokens: Vec<i64> = sorted.iter().map(|o| o.token).collect();
    let kinds: Vec<&str> = sorted.iter().map(|o| o.settle.kind()).collect();
    let results: Vec<Option<&Value>> = sorted
        .iter()
        .map(|o| match &o.settle {
            Settle::Succeeded(v) => Some(v),
            _ => None,
        })
        .collect();
    let errors: Vec<Option<&str>> = sorted
        .iter()
        .map(|o| match &o.settle {
            Settle::Retrying { error, .. } | Settle::Failed(error) | Settle::Cancelled(error) => {
                Some(error.as_str())
            }
            _ => None,
        })
        .collect();
    let delays: Vec<Option<f64>> = sorted
        .iter()
        .map(|o| match &o.settle {
            Settle::Retrying { delay, .. } => Some(delay.as_secs_f64() * 1000.0),
            _ => None,
        })
        .collect();
    let written: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(SETTLE_SQL.as_str()))
        .bind(&ids)
        .bind(&tokens)
        .bind(&kinds)
        .bind(&results)
        .bind(&errors)
        .bind(&delays)
        .fetch_all(pool)
        .await?;
    let written: std::collections::HashSet<String> = written.into_iter().collect();
    Ok(outcomes
        .iter()
        .map(|o| written.contains(&o.job_id))
        .collect())
}

/// A job moved on because its worker stopped renewing its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rescued {
    /// The job.
    pub id: String,
    /// Its queue.
    pub queue: String,
    /// True: that was its last attempt; it failed for good.
    pub failed: bool,
}

/// Moves Running jobs of `queues` whose job lease lapsed (their worker
/// died, hung or lost Postgres) back to due, their dead run counted as an
/// attempt, or to failed for good when it was the last one. At most 1,000
/// per call; jobs another worker is rescuing are skipped.
pub async fn rescue(pool: &PgPool, queues: &[&str]) -> Result<Vec<Rescued>> {
    if queues.is_empty() {
        return Ok(Vec::new());
    }
    static RESCUE_SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH lost AS (
             SELECT j.id, j.attempts, j.attempts >= j.max_attempts AS dead, j.lock_at,
                    (SELECT w.holder FROM leases w WHERE w.scope = 'job' AND w.key = j.id)
                        AS holder
             FROM apalis.jobs j
             WHERE j.status = 'Running' AND j.job_type = ANY($1)
               AND NOT EXISTS (
                   SELECT 1 FROM leases l
                   WHERE l.scope = 'job' AND l.key = j.id AND l.holder IS NOT NULL
                     AND l.expires_at > clock_timestamp())
             ORDER BY j.lock_at
             LIMIT 1000
             FOR UPDATE OF j SKIP LOCKED
         ),
         moved AS (
             UPDATE apalis.jobs j SET
                 status = CASE WHEN l.dead THEN 'Killed' ELSE 'Failed' END,
                 run_at = now(),
                 done_at = CASE WHEN l.dead THEN now() END,
                 last_result = jsonb_build_object('Err', CASE WHEN l.dead
                     THEN format('the worker running it stopped responding (gave up after %s attempts)',
                                 l.attempts)
                     ELSE 'the worker running it stopped responding' END),
                 idempotency_key = CASE WHEN l.dead THEN NULL ELSE j.idempotency_key END,
                 metadata = coalesce(j.metadata, ''::hstore)
                     || CASE WHEN l.dead AND j.idempotency_key IS NOT NULL
                             THEN hstore('unique_key', j.idempotency_key) ELSE ''::hstore END
             FROM lost l WHERE j.id = l.id
             RETURNING j.id, j.job_type, j.status
         ),
         runs AS (
             INSERT INTO job_runs AS r (job_id, errors)
             SELECT l.id, jsonb_build_array(jsonb_build_object(
                 'attempt', l.attempts, 'at', now(),
                 'error', 'the worker running it stopped responding',
                 'worker', l.holder, 'started_at', l.lock_at))
             FROM lost l
             {keep_last_errors}
         )
         SELECT id, job_type, status FROM moved",
            keep_last_errors = KEEP_LAST_ERRORS
        )
    });
    let rows: Vec<(String, String, String)> =
        sqlx::query_as(sqlx::AssertSqlSafe(RESCUE_SQL.as_str()))
            .bind(queues)
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(id, queue, status)| Rescued {
            id,
            queue,
            failed: status == "Killed",
        })
        .collect())
}

/// What an idle plain lane would find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outlook {
    /// Some job of the kinds may run now.
    pub due: bool,
    /// Some running job of the kinds lost its lease (its worker died).
    pub lost: bool,
}

/// Whether there is anything to claim or rescue for `queues`: two index
/// probes in one statement, so an idle lane's poll costs almost nothing
/// (a claim or rescue statement that finds nothing still pays for starting
/// its data-modifying plan: an idle lane polling with them took a tenth of
/// Postgres's time next to a busy session lane).
pub async fn outlook(pool: &PgPool, queues: &[&str]) -> Result<Outlook> {
    if queues.is_empty() {
        return Ok(Outlook {
            due: false,
            lost: false,
        });
    }
    let (due, lost): (bool, bool) = sqlx::query_as(
        "SELECT
             EXISTS (SELECT 1 FROM apalis.jobs j
                     WHERE j.job_type = ANY($1)
                       AND (j.status = 'Pending' OR (j.status = 'Failed' AND j.attempts < j.max_attempts))
                       AND j.run_at <= now()),
             EXISTS (SELECT 1 FROM apalis.jobs j
                     WHERE j.status = 'Running' AND j.job_type = ANY($1)
                       AND NOT EXISTS (
                           SELECT 1 FROM leases l
                           WHERE l.scope = 'job' AND l.key = j.id AND l.holder IS NOT NULL
                             AND l.expires_at > clock_timestamp()))",
    )
    .bind(queues)
    .fetch_one(pool)
    .await?;
    Ok(Outlook { due, lost })
}

/// Which of the held jobs `ids` an operator asked to stop.
pub async fn cancel_requested(pool: &PgPool, ids: &[String]) -> Result<Vec<String>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_scalar(
        "SELECT job_id FROM job_runs WHERE job_id = ANY($1) AND cancel_requested_at IS NOT NULL",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?)
}

/// A progress report.
#[derive(Debug, Clone)]
pub struct ProgressReport<'a> {
    /// The kind (named in the session event).
    pub kind: &'a str,
    /// Items done.
    pub done: i64,
    /// Items in all, if known.
    pub total: Option<i64>,
    /// What it is doing.
    pub message: Option<&'a str>,
}

/// Records a running job's progress under its lease, and for a job of a
/// session appends `job.progress` to the session's log in the same
/// transaction. Returns None if the lease is no longer live (nothing was
/// written), else the event to publish (if any).
pub async fn report_progress(
    pool: &PgPool,
    lease: &Lease,
    session: Option<Uuid>,
    report: &ProgressReport<'_>,
) -> Result<Option<Option<Event>>> {
    let mut tx = pool.begin().await?;
    match leases::check_fence(&mut tx, JOB_SCOPE, &lease.key, lease.token).await {
        Ok(()) => {}
        Err(leases::Error::Fenced { .. }) => return Ok(None),
        Err(leases::Error::Database(err)) => return Err(err.into()),
    }
    let message: Option<String> = report.message.map(|m| m.chars().take(500).collect());
    sqlx::query(
        "INSERT INTO job_runs (job_id, progress_done, progress_total, progress_message, progress_at)
         VALUES ($1, $2, $3, $4, now())
         ON CONFLICT (job_id) DO UPDATE
         SET progress_done = EXCLUDED.progress_done, progress_total = EXCLUDED.progress_total,
             progress_message = EXCLUDED.progress_message, progress_at = EXCLUDED.progress_at",
    )
    .bind(&lease.key)
    .bind(report.done)
    .bind(report.total)
    .bind(message.as_deref())
    .execute(&mut *tx)
    .await?;
    let event = match session {
        Some(session) => Some(
            events::append(
                &mut tx,
                session,
                "job.progress",
                serde_json::json!({
                    "job_id": lease.key,
                    "kind": report.kind,
                    "done": report.done,
                    "total": report.total,
                    "message": message,
                }),
            )
            .await?,
        ),
        None => None,
    };
    tx.commit().await?;
    Ok(Some(event))
}
