//! The job contract: how a kind of durable job is declared, how jobs are
//! enqueued, and how their state is read.
//!
//! **Declaring a kind.** A kind is a Rust type that is its own payload and
//! implements [`Job`], whose one constant, [`Job::SPEC`], says everything
//! the platform needs: kind name, queue, payload version, attempts,
//! backoff, run timeout, default concurrency, whether runs are serialised
//! per campaign session, and whether operators may start it. The handler
//! that runs a kind lives next to its declaration in `questboard-workers`
//! (`workers/src/jobs/<kind>.rs`), and one list there registers them all,
//! as crates.io's `BackgroundJob` and `register_job_type` do.
//!
//! **Rows.** Jobs are rows of apalis-postgres's `apalis.jobs` table,
//! written with apalis's own columns and statuses so apalis tooling can
//! read them. Questboard adds what apalis lacks (see
//! `shared/notes/apalis-1.0.md`): the id is a ULID chosen before the
//! insert and returned to the caller; enqueueing happens inside the
//! caller's transaction ([`enqueue`] takes a connection, and [`sql`] has
//! fragments for statements that write their own rows too), so a job
//! exists exactly when the row that asked for it does; unique keys return
//! the existing job instead of failing; retries move `run_at` by the kind's
//! backoff. The queue name of a kind is fixed text (`questboard.prune`),
//! never a Rust type name, so renaming code cannot strand stored jobs.
//!
//! **Payloads** are stored as `{"version": N, "payload": {...}}`: a kind
//! that changes its payload bumps [`JobSpec::version`] and reads older rows
//! in [`Job::upgrade`]. (Turn jobs predate the envelope; nothing reads
//! their payload, the turn row carries everything.)
//!
//! Submodules: [`plain`] holds the SQL of the runtime's plain lane (claim,
//! settle, rescue, progress, job leases); [`control`] what operators do
//! (statistics, listing, cancel, retry, pause, pruning finished rows).

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::RngExt as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

pub mod control;
pub mod plain;

/// Everything the platform needs to know about a kind of job, declared once
/// per kind as [`Job::SPEC`]. Start from [`JobSpec::DEFAULTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobSpec {
    /// Short name: metrics labels, the API, `QB_WORKER_KINDS`.
    pub kind: &'static str,
    /// The apalis queue (`job_type` column); fixed text, never a type name.
    pub queue: &'static str,
    /// The payload's current version (see [`Job::upgrade`]).
    pub version: u32,
    /// Runs before the job fails for good.
    pub max_attempts: u32,
    /// Delay before each retry.
    pub backoff: Backoff,
    /// Longest a run may take; a run past it is stopped and retried.
    pub timeout: Duration,
    /// Runs of this kind one worker process runs at once, unless
    /// `QB_JOBS_CONCURRENCY` says otherwise.
    pub concurrency: usize,
    /// Runs of one campaign session must be serialised, in order (only
    /// turns: they run on the session lane).
    pub session_serial: bool,
    /// Operators may start it (`POST /api/admin/jobs`, the CLI).
    pub operator_may_start: bool,
    /// Higher runs first among due jobs of the kind.
    pub priority: i32,
}

impl JobSpec {
    /// Defaults for a plain kind: five attempts, exponential backoff from a
    /// second, ten-minute timeout, one at a time per worker.
    pub const DEFAULTS: JobSpec = JobSpec {
        kind: "",
        queue: "",
        version: 1,
        max_attempts: 5,
        backoff: Backoff::exponential(Duration::from_secs(1)),
        timeout: Duration::from_secs(600),
        concurrency: 1,
        session_serial: false,
        operator_may_start: false,
        priority: 0,
    };
}

/// Exponential backoff with jitter, capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first retry's delay (before jitter).
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Backoff {
    /// Doubling from `base`, at most an hour.
    pub const fn exponential(base: Duration) -> Self {
        Self {
            base,
            max: Duration::from_secs(3600),
        }
    }

    /// The delay before the retry that follows run `attempt` (from 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        jittered(attempt, self.base, self.max)
    }
}

/// Exponential backoff with full jitter: a random delay in
/// `[base * 2^(attempt-1) / 2, base * 2^(attempt-1)]`, capped at an hour.
/// Half the window is kept so retries never bunch up at zero.
pub fn backoff(attempt: u32, base: Duration) -> Duration {
    jittered(attempt, base, Duration::from_secs(3600))
}

fn jittered(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let cap = exp.min(max);
    let half = cap / 2;
    let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
    half + Duration::from_millis(jitter)
}

/// A kind of durable job. The type is its own payload.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// What the platform needs to know about the kind.
    const SPEC: JobSpec;

    /// The campaign session the job belongs to, if any: its members may
    /// read the job, its progress becomes session events, and deleting the
    /// session deletes the job.
    fn session(&self) -> Option<Uuid> {
        None
    }

    /// Reads a payload stored by an older version of the kind. The default
    /// refuses: a kind that changes its payload overrides this.
    fn upgrade(version: u32, payload: Value) -> Result<Self, PayloadError> {
        let _ = payload;
        Err(PayloadError::Version {
            kind: Self::SPEC.kind,
            found: version,
            current: Self::SPEC.version,
        })
    }
}

/// How payloads are stored: the version they were written with, and the
/// payload itself.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope<T> {
    version: u32,
    payload: T,
}

/// A stored payload that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Not the envelope `{"version", "payload"}`, or not this kind's shape.
    #[error("payload of {kind} is not readable: {reason}")]
    Shape {
        /// The kind.
        kind: &'static str,
        /// Why.
        reason: String,
    },
    /// Written by a version this code cannot read.
    #[error("payload of {kind} has version {found}; this build reads version {current}")]
    Version {
        /// The kind.
        kind: &'static str,
        /// The stored version.
        found: u32,
        /// The version this code writes.
        current: u32,
    },
}

/// The stored form of a payload.
pub fn encode<J: Job>(job: &J) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(&Envelope {
        version: J::SPEC.version,
        payload: job,
    })?)
}

/// Reads a stored payload, upgrading older versions.
pub fn decode<J: Job>(stored: &[u8]) -> Result<J, PayloadError> {
    let shape = |reason: String| PayloadError::Shape {
        kind: J::SPEC.kind,
        reason,
    };
    let envelope: Envelope<Value> =
        serde_json::from_slice(stored).map_err(|e| shape(e.to_string()))?;
    if envelope.version == J::SPEC.version {
        serde_json::from_value(envelope.payload).map_err(|e| shape(e.to_string()))
    } else {
        J::upgrade(envelope.version, envelope.payload)
    }
}

/// Checks an untrusted JSON payload (an operator's) against kind `J` and
/// returns it in stored form, with the session it names.
pub fn validate<J: Job>(payload: Value) -> Result<(Vec<u8>, Option<Uuid>), PayloadError> {
    // serde reads a struct from an array too (its fields in order): a
    // payload is an object, as the description says.
    if !payload.is_object() {
        return Err(PayloadError::Shape {
            kind: J::SPEC.kind,
            reason: "the payload must be a JSON object".into(),
        });
    }
    let job: J = serde_json::from_value(payload).map_err(|e| PayloadError::Shape {
        kind: J::SPEC.kind,
        reason: e.to_string(),
    })?;
    let stored = encode(&job).map_err(|e| PayloadError::Shape {
        kind: J::SPEC.kind,
        reason: e.to_string(),
    })?;
    Ok((stored, job.session()))
}

/// A job's state as clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// Cancelled by an operator.
    Cancelled,
}

impl JobStatus {
    /// Every status.
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Retrying,
        JobStatus::Cancelled,
    ];

    /// The name clients use.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Retrying => "retrying",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Parses a client-facing name.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// A SQL condition on `apalis.jobs` aliased `j` selecting jobs in this
    /// status (for plain jobs; a running turn's row reads as queued).
    pub(crate) fn condition(self) -> &'static str {
        match self {
            JobStatus::Queued => "(j.status = 'Pending' AND j.attempts = 0)",
            JobStatus::Running => "(j.status IN ('Running', 'Queued'))",
            JobStatus::Succeeded => "(j.status = 'Done')",
            JobStatus::Failed => {
                "((j.status = 'Killed' AND NOT coalesce(j.metadata ? 'cancelled_at', false))
                  OR (j.status = 'Failed' AND j.attempts >= j.max_attempts))"
            }
            JobStatus::Retrying => {
                "((j.status = 'Pending' AND j.attempts > 0)
                  OR (j.status = 'Failed' AND j.attempts < j.max_attempts))"
            }
            JobStatus::Cancelled => {
                "(j.status = 'Killed' AND coalesce(j.metadata ? 'cancelled_at', false))"
            }
        }
    }
}

/// What can go wrong with jobs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Serialising the payload failed.
    #[error("job payload: {0}")]
    Payload(#[from] serde_json::Error),
    /// A unique key or option is not acceptable.
    #[error("{0}")]
    Invalid(String),
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

/// Whether `id` has the shape of a job id (26 ULID characters), checked
/// before any lookup.
pub fn is_job_id(id: &str) -> bool {
    // Keep in step with JOB_ID_PATTERN.
    id.len() == 26 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// What [`is_job_id`] accepts, as a regular expression.
pub const JOB_ID_PATTERN: &str = "^[0-9A-Za-z]{26}$";

/// Longest unique key, in bytes.
pub const MAX_UNIQUE_KEY_BYTES: usize = 255;

/// How to enqueue a job.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Not before this time (default: now).
    pub run_at: Option<DateTime<Utc>>,
    /// While a job of the same kind holds this key (queued, running,
    /// retrying or succeeded), enqueueing again returns that job and
    /// creates nothing. Failed and cancelled jobs give their key up, so the
    /// work can be asked for again.
    pub unique_key: Option<String>,
    /// Overrides the kind's priority.
    pub priority: Option<i32>,
    /// Extra metadata shown to operators (who or what asked for the job).
    pub metadata: Vec<(String, String)>,
}

/// An enqueue's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// The job's id.
    pub id: String,
    /// False: a job with the same unique key existed and is returned.
    pub created: bool,
}

/// Enqueues `job` on `conn`: pass the caller's transaction, and the job
/// exists exactly when the caller's own writes commit. Announce the kind
/// to workers ([`crate::wakeups`]) after the commit.
pub async fn enqueue<J: Job>(
    conn: &mut PgConnection,
    job: &J,
    options: &Options,
) -> Result<Enqueued> {
    let stored = encode(job)?;
    enqueue_stored(conn, &J::SPEC, stored, job.session(), options).await
}

/// Enqueues an already encoded payload of the kind `spec` (see
/// [`validate`]), for callers that know the kind only by name.
pub async fn enqueue_stored(
    conn: &mut PgConnection,
    spec: &JobSpec,
    stored: Vec<u8>,
    session: Option<Uuid>,
    options: &Options,
) -> Result<Enqueued> {
    if let Some(key) = &options.unique_key
        && (key.is_empty()
            || key.len() > MAX_UNIQUE_KEY_BYTES
            || !key.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
    {
        return Err(Error::Invalid(format!(
            "unique_key must be 1 to {MAX_UNIQUE_KEY_BYTES} printable ASCII characters"
        )));
    }
    let mut keys = Vec::with_capacity(options.metadata.len() + 1);
    let mut values = Vec::with_capacity(options.metadata.len() + 1);
    if let Some(session) = session {
        keys.push("session_id".to_owned());
        values.push(session.to_string());
    }
    for (k, v) in &options.metadata {
        keys.push(k.clone());
        values.push(v.clone());
    }
    // A concurrent enqueue with the same key may win, or the holder may
    // give the key up (fail, be cancelled) between the insert and the
    // lookup: try again once.
    for _ in 0..3 {
        let id = new_job_id();
        let inserted: Option<String> = sqlx::query_scalar(
            "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at,
                                      priority, metadata, idempotency_key)
             VALUES ($1, $2, $3, 'Pending', 0, $4, greatest(coalesce($5, now()), now()), $6,
                     hstore($7::text[], $8::text[]), $9)
             ON CONFLICT (job_type, idempotency_key) WHERE idempotency_key IS NOT NULL
             DO NOTHING
             RETURNING id",
        )
        .bind(&id)
        .bind(spec.queue)
        .bind(&stored)
        .bind(i32::try_from(spec.max_attempts).unwrap_or(i32::MAX))
        .bind(options.run_at)
        .bind(options.priority.unwrap_or(spec.priority))
        .bind(&keys)
        .bind(&values)
        .bind(options.unique_key.as_deref())
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(id) = inserted {
            return Ok(Enqueued { id, created: true });
        }
        let existing: Option<String> = sqlx::query_scalar(
            "SELECT id FROM apalis.jobs WHERE job_type = $1 AND idempotency_key = $2",
        )
        .bind(spec.queue)
        .bind(options.unique_key.as_deref())
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(id) = existing {
            return Ok(Enqueued { id, created: false });
        }
    }
    Err(Error::Invalid(
        "the unique key kept changing hands; try again".into(),
    ))
}

/// Enqueues many jobs of kind `spec` in one statement on `conn` (no
/// unique keys): for callers that fan work out. Returns their ids, in
/// order.
pub async fn enqueue_batch(
    conn: &mut PgConnection,
    spec: &JobSpec,
    items: &[(Vec<u8>, Option<Uuid>)],
) -> Result<Vec<String>> {
    let ids: Vec<String> = items.iter().map(|_| new_job_id()).collect();
    let payloads: Vec<&[u8]> = items.iter().map(|(p, _)| p.as_slice()).collect();
    let sessions: Vec<Option<String>> = items
        .iter()
        .map(|(_, s)| s.map(|s| s.to_string()))
        .collect();
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at,
                                  priority, metadata)
         SELECT i.id, $4, i.payload, 'Pending', 0, $5, now(), $6,
                CASE WHEN i.session IS NULL THEN ''::hstore ELSE hstore('session_id', i.session) END
         FROM unnest($1::text[], $2::bytea[], $3::text[]) AS i(id, payload, session)",
    )
    .bind(&ids)
    .bind(&payloads)
    .bind(&sessions)
    .bind(spec.queue)
    .bind(i32::try_from(spec.max_attempts).unwrap_or(i32::MAX))
    .bind(spec.priority)
    .execute(&mut *conn)
    .await?;
    Ok(ids)
}

/// Reported progress of a running job.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Progress {
    /// Items done so far.
    pub done: i64,
    /// Items in all, if known.
    pub total: Option<i64>,
    /// What it is doing.
    pub message: Option<String>,
    /// When it was reported.
    pub updated_at: DateTime<Utc>,
}

/// A job as stored, with what questboard records beside it.
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
    /// What its handler reported on success.
    pub result: Option<Value>,
    /// Its session, if it has one.
    pub session_id: Option<String>,
    /// Cancelled by an operator.
    pub cancelled: bool,
    /// Its priority.
    pub priority: Option<i32>,
    /// Its unique key (kept for display after the job gave it up).
    pub unique_key: Option<String>,
    /// Progress: items done.
    pub progress_done: Option<i64>,
    /// Progress: items in all.
    pub progress_total: Option<i64>,
    /// Progress: message.
    pub progress_message: Option<String>,
    /// Progress: when.
    pub progress_at: Option<DateTime<Utc>>,
    /// The errors of its last failed runs, oldest first.
    pub errors: Option<Value>,
    /// When an operator asked a running job to stop.
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// Who holds its job lease while it runs.
    pub lease_holder: Option<String>,
    /// When that lease lapses unless renewed.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Extra metadata (who asked for it, a schedule tick).
    pub metadata: Option<Value>,
}

impl JobRecord {
    /// The status clients see.
    pub fn client_status(&self) -> JobStatus {
        match self.status.as_str() {
            "Done" => JobStatus::Succeeded,
            "Running" | "Queued" => JobStatus::Running,
            "Killed" if self.cancelled => JobStatus::Cancelled,
            "Killed" => JobStatus::Failed,
            "Failed" if self.attempts >= self.max_attempts => JobStatus::Failed,
            "Failed" => JobStatus::Retrying,
            _ if self.attempts > 0 => JobStatus::Retrying,
            _ => JobStatus::Queued,
        }
    }

    /// The session, parsed.
    pub fn session(&self) -> Option<Uuid> {
        self.session_id.as_deref().and_then(|s| s.parse().ok())
    }

    /// The last reported progress, if any.
    pub fn progress(&self) -> Option<Progress> {
        Some(Progress {
            done: self.progress_done?,
            total: self.progress_total,
            message: self.progress_message.clone(),
            updated_at: self.progress_at?,
        })
    }
}

/// The columns of [`JobRecord`], from `apalis.jobs j` joined with the live
/// state of a session-serial job (`t`, the `serial_job_state` view: a
/// running turn's status, attempts and times are on its turn row, which a
/// worker updates anyway, so starting a run costs one write instead of
/// two; the job row is written at enqueue and settle), its `job_runs` row
/// (`r`) and its live job lease (`l`).
pub(crate) const RECORD_SELECT: &str = "
    SELECT j.id, j.job_type,
           CASE WHEN t.running THEN 'Running' ELSE j.status END AS status,
           coalesce(t.attempts, j.attempts) AS attempts,
           coalesce(t.max_attempts, j.max_attempts) AS max_attempts,
           coalesce(t.run_at, j.run_at) AS run_at,
           coalesce(t.started_at, j.lock_at) AS lock_at,
           j.done_at,
           CASE WHEN j.last_result ? 'Err' THEN j.last_result ->> 'Err' END AS last_error,
           j.last_result -> 'Ok' AS result,
           coalesce(j.metadata -> 'session_id', t.session_id::text) AS session_id,
           coalesce(j.metadata ? 'cancelled_at', false) AS cancelled,
           j.priority,
           coalesce(j.idempotency_key, j.metadata -> 'unique_key') AS unique_key,
           r.progress_done, r.progress_total, r.progress_message, r.progress_at, r.errors,
           r.cancel_requested_at,
           l.holder AS lease_holder, l.expires_at AS lease_expires_at,
           hstore_to_json(j.metadata - 'session_id'::text)::jsonb AS metadata
    FROM apalis.jobs j
    LEFT JOIN serial_job_state t ON t.job_id = j.id
    LEFT JOIN job_runs r ON r.job_id = j.id
    LEFT JOIN leases l ON l.scope = 'job' AND l.key = j.id AND l.holder IS NOT NULL
                      AND l.expires_at > clock_timestamp()";

/// Reads a job by id.
pub async fn fetch<'e>(db: impl PgExecutor<'e>, id: &str) -> Result<Option<JobRecord>> {
    Ok(sqlx::query_as::<_, JobRecord>(sqlx::AssertSqlSafe(format!(
        "{RECORD_SELECT} WHERE j.id = $1"
    )))
    .bind(id)
    .fetch_optional(db)
    .await?)
}

/// A job's stored payload (operators see it), as JSON if it is JSON.
pub async fn payload<'e>(db: impl PgExecutor<'e>, id: &str) -> Result<Option<Value>> {
    let bytes: Option<Vec<u8>> = sqlx::query_scalar("SELECT job FROM apalis.jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await?;
    Ok(bytes.map(|b| {
        serde_json::from_slice(&b)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&b).into_owned()))
    }))
}

/// Inserting jobs and moving them along, as SQL fragments for callers that
/// apply them in the same statement as a write of their own rows (see
/// `turns`): one statement is one round trip and one commit, for one job
/// or a batch of them.
pub mod sql {
    use super::JobSpec;

    /// Inserts a Pending job of kind `spec` for each row of the CTE
    /// `source`, as apalis-postgres's own `push_tasks` would (same
    /// columns), but in the caller's statement and with `run_at` on the
    /// database clock. For session-serial kinds, whose rows carry the
    /// session (see `serial_job_state`), so the metadata stays empty. The
    /// other arguments are SQL expressions: the ULID id, the JSON payload
    /// (bytea) and the attempt budget.
    pub fn insert_pending(
        spec: &JobSpec,
        source: &str,
        id: &str,
        payload: &str,
        max_attempts: &str,
    ) -> String {
        format!(
            "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at,
                                      priority, metadata)
             SELECT {id}, '{queue}', {payload}, 'Pending', 0, {max_attempts}, now(), {priority},
                    ''::hstore
             FROM {source}",
            queue = spec.queue,
            priority = spec.priority,
        )
    }

    /// Settles the current run of each session-serial job (turns) named
    /// by `source`, a
    /// subquery with columns `job_id`, `kind` (`completed`, `failed`,
    /// `retrying`, `requeued`), `text` (the reply, or the error),
    /// `retry_at` (for `retrying`) and `attempts` (runs started so far,
    /// counted by its own row while it runs, see [`fetch`](super::fetch)):
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
        let capped = Backoff {
            base,
            max: Duration::from_secs(4),
        };
        assert!(capped.delay(10) <= Duration::from_secs(4));
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct V2 {
        name: String,
        count: u32,
    }

    impl Job for V2 {
        const SPEC: JobSpec = JobSpec {
            kind: "v2",
            queue: "test.v2",
            version: 2,
            ..JobSpec::DEFAULTS
        };

        fn upgrade(version: u32, payload: Value) -> Result<Self, PayloadError> {
            match version {
                1 => Ok(V2 {
                    name: payload["name"].as_str().unwrap_or_default().to_owned(),
                    count: 1,
                }),
                _ => Err(PayloadError::Version {
                    kind: "v2",
                    found: version,
                    current: 2,
                }),
            }
        }
    }

    #[test]
    fn payloads_round_trip_and_old_versions_are_upgraded() {
        let job = V2 {
            name: "a".into(),
            count: 3,
        };
        let stored = encode(&job).unwrap_or_default();
        assert_eq!(decode::<V2>(&stored).ok(), Some(job));
        let old = br#"{"version": 1, "payload": {"name": "b"}}"#;
        assert_eq!(
            decode::<V2>(old).ok(),
            Some(V2 {
                name: "b".into(),
                count: 1
            })
        );
        assert!(matches!(
            decode::<V2>(br#"{"version": 9, "payload": {}}"#),
            Err(PayloadError::Version { found: 9, .. })
        ));
        assert!(matches!(
            decode::<V2>(br#"{"name": "no envelope"}"#),
            Err(PayloadError::Shape { .. })
        ));
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for status in JobStatus::ALL {
            assert_eq!(JobStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(JobStatus::parse("done"), None);
    }
}
