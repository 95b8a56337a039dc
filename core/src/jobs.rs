//! The job contract: which kinds of durable job exist, how they are
//! enqueued, and how their state is read and moved along.
//!
//! Jobs are rows of apalis-postgres's `apalis.jobs` table (its migrations
//! create it), written with the same columns and values as apalis-postgres's
//! own insert (`queries/task/sink.sql`) so the rows stay readable by apalis
//! tooling. Questboard adds what apalis lacks (see
//! `shared/notes/apalis-1.0.md`): the job id is a ULID chosen *before*
//! enqueue, so it is returned to the client; enqueue happens inside the
//! statement that writes the row the job processes ([`sql`]), so a job
//! exists exactly when that row does; and retries are rescheduled with
//! exponential backoff and jitter by moving `run_at`, which apalis never
//! does.
//!
//! Every kind is declared once, in [`JobKind`]. The queue name of a kind is
//! fixed text (`questboard.turn`), never a Rust type name, so renaming code
//! cannot strand stored jobs.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::RngExt as _;
use serde::Serialize;
use sqlx::PgExecutor;

/// Every kind of durable job questboard runs. Later capabilities (media
/// generation, asset migration, pruning, reconciliation) join this list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Processes one player turn: asks the model, records the reply.
    Turn,
}

impl JobKind {
    /// Every kind.
    pub const ALL: [JobKind; 1] = [JobKind::Turn];

    /// The apalis queue (`job_type` column) of this kind.
    pub fn queue(self) -> &'static str {
        match self {
            JobKind::Turn => "questboard.turn",
        }
    }

    /// Short name for metrics labels and the API.
    pub fn name(self) -> &'static str {
        match self {
            JobKind::Turn => "turn",
        }
    }

    /// The kind stored under `queue`, if any.
    pub fn from_queue(queue: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.queue() == queue)
    }
}

/// A job's state as clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for its first run.
    Queued,
    /// A worker is running it.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Failed for good.
    Failed,
    /// Failed, and will run again at `run_at`.
    Retrying,
}

/// What can go wrong with jobs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Serialising the payload failed.
    #[error("job payload: {0}")]
    Payload(#[from] serde_json::Error),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A new job id: a ULID, so ids sort by creation time.
pub fn new_job_id() -> String {
    ulid::Ulid::generate().to_string()
}

/// A job as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRecord {
    /// Its id.
    pub id: String,
    /// Its queue (`job_type`).
    pub job_type: String,
    /// apalis status: Pending, Queued, Running, Done, Failed, Killed.
    pub status: String,
    /// Runs started so far.
    pub attempts: i32,
    /// Most runs allowed.
    pub max_attempts: i32,
    /// When it may run (next).
    pub run_at: DateTime<Utc>,
    /// When it last started.
    pub lock_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub done_at: Option<DateTime<Utc>>,
    /// The last error, if its last run failed.
    pub last_error: Option<String>,
    /// Its session, if it has one.
    pub session_id: Option<String>,
}

impl JobRecord {
    /// The status clients see.
    pub fn client_status(&self) -> JobStatus {
        match self.status.as_str() {
            "Done" => JobStatus::Succeeded,
            "Running" | "Queued" => JobStatus::Running,
            "Killed" => JobStatus::Failed,
            "Failed" if self.attempts >= self.max_attempts => JobStatus::Failed,
            "Failed" => JobStatus::Retrying,
            _ if self.attempts > 0 => JobStatus::Retrying,
            _ => JobStatus::Queued,
        }
    }

    /// The kind, if it is one questboard knows.
    pub fn kind(&self) -> Option<JobKind> {
        JobKind::from_queue(&self.job_type)
    }
}

/// Reads a job by id.
///
/// While a job runs, its live state is kept on the row it processes, which
/// a worker updates anyway (for turn jobs: the turn's `status`, `attempts`,
/// `run_at` and `started_at`), so starting a run costs one write instead of
/// two; the `apalis.jobs` row is written when the job is enqueued and when a
/// run settles. This read combines both.
pub async fn fetch<'e>(db: impl PgExecutor<'e>, id: &str) -> Result<Option<JobRecord>> {
    Ok(sqlx::query_as::<_, JobRecord>(
        r#"
        SELECT j.id, j.job_type,
               CASE WHEN t.status = 'running' THEN 'Running' ELSE j.status END AS status,
               coalesce(t.attempts, j.attempts) AS attempts,
               coalesce(t.max_attempts, j.max_attempts) AS max_attempts,
               coalesce(t.run_at, j.run_at) AS run_at,
               coalesce(t.started_at, j.lock_at) AS lock_at,
               j.done_at,
               CASE WHEN j.last_result ? 'Err' THEN j.last_result ->> 'Err' END AS last_error,
               j.metadata -> 'session_id' AS session_id
        FROM apalis.jobs j
        LEFT JOIN turns t ON t.job_id = j.id
        WHERE j.id = $1
        "#,
    )
    .bind(id)
    .fetch_optional(db)
    .await?)
}

/// Inserting jobs and moving them along, as SQL fragments for callers that
/// apply them in the same statement as a write of their own rows (see
/// `turns`): one statement is one round trip and one commit, for one job
/// or a batch of them.
pub mod sql {
    use super::JobKind;

    /// Inserts a Pending job of `kind` for each row of the CTE `source`, as
    /// apalis-postgres's own `push_tasks` would (same columns, the session
    /// in the `metadata` hstore), but in the caller's statement and with
    /// `run_at` on the database clock. The other arguments are SQL
    /// expressions: the ULID id, the JSON payload (bytea), the attempt
    /// budget and the session id.
    pub fn insert_pending(
        kind: JobKind,
        source: &str,
        id: &str,
        payload: &str,
        max_attempts: &str,
        session: &str,
    ) -> String {
        format!(
            "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at,
                                      priority, metadata)
             SELECT {id}, '{queue}', {payload}, 'Pending', 0, {max_attempts}, now(), 0,
                    hstore('session_id', ({session})::text)
             FROM {source}",
            queue = kind.queue(),
        )
    }

    /// Settles the current run of each job named by `source`, a subquery
    /// with columns `job_id`, `kind` (`completed`, `failed`, `retrying`,
    /// `requeued`), `text` (the reply, or the error), `retry_at` (for
    /// `retrying`) and `attempts` (runs started so far, counted by the row
    /// the job processes while it runs, see [`fetch`](super::fetch)):
    /// - `completed`: Done, with `{"Ok": {"chars": n}}`;
    /// - `failed`: Killed (failed for good), with `{"Err": text}`;
    /// - `retrying`: Failed with attempts left, to run again at `retry_at`
    ///   (apalis itself would refetch it at once);
    /// - `requeued`: handed back at worker shutdown: Pending, the attempt
    ///   not counted (`attempts` already says so).
    pub fn settle(source: &str) -> String {
        format!(
            "UPDATE apalis.jobs j
             SET status = CASE s.kind WHEN 'completed' THEN 'Done' WHEN 'failed' THEN 'Killed'
                                      WHEN 'retrying' THEN 'Failed' ELSE 'Pending' END,
                 done_at = CASE WHEN s.kind IN ('completed', 'failed') THEN now() END,
                 run_at = CASE s.kind WHEN 'retrying' THEN s.retry_at ELSE j.run_at END,
                 attempts = s.attempts,
                 lock_at = CASE s.kind WHEN 'requeued' THEN NULL ELSE j.lock_at END,
                 last_result = CASE s.kind
                     WHEN 'completed' THEN jsonb_build_object('Ok',
                         jsonb_build_object('chars', char_length(s.text)))
                     WHEN 'requeued' THEN jsonb_build_object('Err',
                         'handed back at worker shutdown'::text)
                     ELSE jsonb_build_object('Err', s.text) END
             FROM {source} s WHERE j.id = s.job_id"
        )
    }
}

/// Exponential backoff with full jitter: a random delay in
/// `[base * 2^(attempt-1) / 2, base * 2^(attempt-1)]`, capped at an hour.
/// Half the window is kept so retries never bunch up at zero.
pub fn backoff(attempt: u32, base: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let cap = exp.min(Duration::from_secs(3600));
    let half = cap / 2;
    let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
    half + Duration::from_millis(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_within_jitter_bounds() {
        let base = Duration::from_millis(1000);
        for attempt in 1..=6u32 {
            let full = base * (1 << (attempt - 1));
            for _ in 0..50 {
                let d = backoff(attempt, base);
                assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
            }
        }
        assert!(backoff(100, base) <= Duration::from_secs(3600));
    }

    #[test]
    fn queues_round_trip() {
        for kind in JobKind::ALL {
            assert_eq!(JobKind::from_queue(kind.queue()), Some(kind));
        }
        assert_eq!(JobKind::from_queue("other"), None);
    }
}
