//! The job contract: which kinds of durable job exist, how they are
//! enqueued, and how their state is read and moved along.
//!
//! Jobs are rows of apalis-postgres's `apalis.jobs` table (its migrations
//! create it), written with apalis-postgres's own insert
//! (`apalis_postgres::queries::push_tasks`) so the rows stay readable by
//! apalis tooling. Questboard adds what apalis lacks (see
//! `shared/notes/apalis-1.0.md`): the job id is a ULID chosen *before*
//! enqueue, so it is returned to the client; enqueue happens inside the
//! caller's transaction, so a job exists exactly when the row it processes
//! does; and retries are rescheduled with exponential backoff and jitter by
//! moving `run_at`, which apalis never does.
//!
//! Every kind is declared once, in [`JobKind`]. The queue name of a kind is
//! fixed text (`questboard.turn`), never a Rust type name, so renaming code
//! cannot strand stored jobs.

use std::time::Duration;

use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::metadata::MetadataStore;
use apalis_core::task::task_id::TaskId;
use chrono::{DateTime, Utc};
use rand::RngExt as _;
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor};

use uuid::Uuid;

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
    /// apalis-postgres refused the insert.
    #[error("enqueue: {0}")]
    Enqueue(#[from] apalis_postgres::Error),
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

/// A job to enqueue.
#[derive(Debug)]
pub struct NewJob<'a, P: Serialize> {
    /// Its kind.
    pub kind: JobKind,
    /// Its id, from [`new_job_id`].
    pub id: &'a str,
    /// Its arguments, stored as JSON.
    pub payload: &'a P,
    /// The campaign session it belongs to, if any (for access checks and
    /// per-session ordering).
    pub session_id: Option<Uuid>,
    /// Most runs before it fails for good.
    pub max_attempts: u32,
}

/// Enqueues `job` on `conn`: pass a transaction so the job commits or rolls
/// back with the row it processes.
pub async fn enqueue<P: Serialize>(conn: &mut PgConnection, job: NewJob<'_, P>) -> Result<()> {
    let id = job
        .id
        .parse::<ulid::Ulid>()
        .map_err(|e| Error::Payload(serde::ser::Error::custom(e.to_string())))?;
    let mut metadata = MetadataStore::default();
    if let Some(session) = job.session_id {
        // A fresh store cannot hold the key already.
        let _ = metadata.insert("session_id", session.to_string());
    }
    let task = TaskBuilder::new(serde_json::to_vec(job.payload)?)
        .task_id(TaskId::from_ulid(id))
        .max_attempts(job.max_attempts as usize)
        .with_metadata(metadata)
        .build();
    apalis_postgres::queries::push_tasks(conn, job.kind.queue(), vec![task]).await?;
    Ok(())
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
pub async fn fetch<'e>(db: impl PgExecutor<'e>, id: &str) -> Result<Option<JobRecord>> {
    Ok(sqlx::query_as::<_, JobRecord>(
        r#"
        SELECT id, job_type, status, attempts, max_attempts, run_at, lock_at, done_at,
               CASE WHEN last_result ? 'Err' THEN last_result ->> 'Err' END AS last_error,
               metadata -> 'session_id' AS session_id
        FROM apalis.jobs
        WHERE id = $1
        "#,
    )
    .bind(id)
    .fetch_optional(db)
    .await?)
}

/// State transitions of a job, as SQL for callers that must apply them in
/// the same statement as a fenced write of their own row (see `turns`):
/// one statement is one round trip and one commit. In every statement the
/// job id is parameter `$4`, and `guard` is an SQL condition the caller
/// adds (typically "the fenced write above happened").
pub mod sql {
    /// Start an attempt: Running, attempts + 1. Returns `attempts`.
    pub fn start_attempt(guard: &str) -> String {
        format!(
            "UPDATE apalis.jobs SET status = 'Running', attempts = attempts + 1, lock_at = now()
             WHERE id = $4 AND {guard} RETURNING attempts"
        )
    }

    /// Succeed, with parameter `$7` (jsonb) as the result.
    pub fn succeed(guard: &str) -> String {
        format!(
            "UPDATE apalis.jobs
             SET status = 'Done', done_at = now(), last_result = jsonb_build_object('Ok', $7::jsonb)
             WHERE id = $4 AND {guard} RETURNING 1"
        )
    }

    /// Fail this run and run again after `$7` milliseconds; `$6` is the
    /// error. Returns the new `run_at`.
    pub fn retry(guard: &str) -> String {
        format!(
            "UPDATE apalis.jobs
             SET status = 'Failed', run_at = now() + make_interval(secs => $7 / 1000.0),
                 last_result = jsonb_build_object('Err', $6::text)
             WHERE id = $4 AND {guard} RETURNING run_at"
        )
    }

    /// Fail for good; `$6` is the error.
    pub fn fail(guard: &str) -> String {
        format!(
            "UPDATE apalis.jobs
             SET status = 'Killed', done_at = now(), last_result = jsonb_build_object('Err', $6::text)
             WHERE id = $4 AND {guard} RETURNING 1"
        )
    }

    /// Hand an interrupted run back (shutdown): Pending, the attempt not counted.
    pub fn hand_back(guard: &str) -> String {
        format!(
            "UPDATE apalis.jobs
             SET status = 'Pending', attempts = greatest(attempts - 1, 0), lock_at = NULL,
                 last_result = jsonb_build_object('Err', 'handed back at worker shutdown'::text)
             WHERE id = $4 AND status = 'Running' AND {guard} RETURNING 1"
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
