//! Turns: a player's input to a campaign session and the game master's reply.
//!
//! A turn is numbered (`seq`, one more than the session's previous turn) and
//! created together with the durable job that processes it and its
//! `turn.queued` event, in one statement ([`submit()`]). Workers find sessions
//! with work through the runnable-session index ([`queue`]) and move turns
//! through `queued -> running -> completed` (or `failed`) with batched,
//! fenced writes ([`steps`]): every write checks the session's lease token,
//! and a settling write only applies to an unfinished turn, so a reply is
//! recorded exactly once however many times the model was asked.
//! Operators see the lanes (sessions with unfinished turns, and why each
//! waits) through [`lanes`].

use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::events::Event;
use crate::identity::UserId;
use crate::jobs::{self, Job, JobSpec};
use crate::leases;
use crate::sessions::{self, UnknownValue};

pub mod intake;
pub mod lanes;
pub mod queue;
pub mod steps;
pub mod submit;

pub use intake::Intake;
pub use queue::{Backlog, Claimed, Exchange, Pending, claim, postpone};
pub use steps::{
    Release, Settle, Step, StepOutcome, advance, advance_alone, complete, fail, hand_back,
    retry_later, start,
};
pub use submit::{submit, submit_many};

/// Longest accepted idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// Where a turn is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TurnStatus {
    /// Waiting for a worker (also between retries).
    Queued,
    /// A worker is asking the model.
    Running,
    /// The reply is recorded.
    Completed,
    /// Failed for good; `error` says why.
    Failed,
}

impl TurnStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            TurnStatus::Queued => "queued",
            TurnStatus::Running => "running",
            TurnStatus::Completed => "completed",
            TurnStatus::Failed => "failed",
        }
    }
}

impl FromStr for TurnStatus {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "queued" => Ok(TurnStatus::Queued),
            "running" => Ok(TurnStatus::Running),
            "completed" => Ok(TurnStatus::Completed),
            "failed" => Ok(TurnStatus::Failed),
            other => Err(UnknownValue::new(other)),
        }
    }
}
crate::text_column!(TurnStatus);

/// A turn as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Turn {
    /// Its id.
    pub id: Uuid,
    /// Its session.
    pub session_id: Uuid,
    /// Its number within the session, from 1.
    pub seq: i64,
    /// Who played it.
    pub author_user_id: String,
    /// Where it is.
    pub status: TurnStatus,
    /// What the player typed.
    pub input: String,
    /// The game master's reply, once completed.
    pub output: Option<String>,
    /// Why the last attempt failed (sanitised).
    pub error: Option<String>,
    /// What the reply did to the game state, if it asked for a change.
    pub state_change: Option<sqlx::types::Json<crate::state::StateChange>>,
    /// The tokens its reply cost, once completed, if the provider said.
    pub usage: Option<sqlx::types::Json<crate::usage::TokenUsage>>,
    /// The job processing it.
    pub job_id: String,
    /// The idempotency key it was submitted with.
    pub idempotency_key: Option<String>,
    /// Submitted.
    pub created_at: DateTime<Utc>,
    /// Last attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// Completed or failed for good.
    pub completed_at: Option<DateTime<Utc>>,
}

/// A turn to submit.
#[derive(Debug, Clone, Copy)]
pub struct NewTurn<'a> {
    /// The session.
    pub session_id: Uuid,
    /// The player.
    pub author: &'a UserId,
    /// What they typed (validated by [`validate_input`]).
    pub input: &'a str,
    /// Deduplicates retried submissions.
    pub idempotency_key: Option<&'a str>,
    /// Most runs of its job.
    pub max_attempts: u32,
}

/// The outcome of a submission.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The turn.
    pub turn: Turn,
    /// False when an earlier submission with the same idempotency key was returned.
    pub created: bool,
    /// The `turn.queued` event (None for a replay), to publish after commit.
    pub event: Option<Event>,
}

/// What can go wrong with turns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Session-level refusal (not a member, archived).
    #[error(transparent)]
    Session(#[from] sessions::Error),
    /// The input or key is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The process cannot take submissions now (it is shutting down).
    #[error("{0}")]
    Unavailable(&'static str),
    /// The idempotency key was used before with a different input.
    #[error("this Idempotency-Key was already used for a different turn")]
    KeyReused,
    /// A member's quota or budget refused it.
    #[error(transparent)]
    Quota(#[from] crate::quotas::Refusal),
    /// The lease was lost: the write was refused.
    #[error(transparent)]
    Fenced(#[from] leases::Error),
    /// Enqueueing failed.
    #[error(transparent)]
    Job(#[from] jobs::Error),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the database gave up on the statement for a reason that
    /// running it again can cure: it was chosen as a deadlock victim or
    /// failed serialisation. Batched statements lock many rows; the lock
    /// order is the same everywhere (session id), but Postgres may still
    /// pick a victim among waits it cannot see through, and the answer to
    /// that is to try again.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Database(sqlx::Error::Database(err))
            | Error::Job(jobs::Error::Database(sqlx::Error::Database(err))) => {
                matches!(err.code().as_deref(), Some("40P01" | "40001"))
            }
            _ => false,
        }
    }
}

/// Runs `attempt`, and runs it again (up to three more times, a few
/// milliseconds apart) while it fails with a [transient](Error::is_transient)
/// error. Each attempt must be a whole transaction.
pub async fn retrying<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut outcome = attempt().await;
    for retry in 1..=3u64 {
        match &outcome {
            Err(err) if err.is_transient() => {
                tracing::info!(error = %err, retry, "rolled back by the database; running it again");
                tokio::time::sleep(std::time::Duration::from_millis(5 * retry)).await;
                outcome = attempt().await;
            }
            _ => break,
        }
    }
    outcome
}

/// Checks a turn's text: it follows [`crate::text::TEXT_PATTERN`] (not
/// blank, no control characters but tab and line breaks) and has at most
/// `max_chars` characters.
pub fn validate_input(text: &str, max_chars: usize) -> Result<()> {
    if text.chars().count() > max_chars {
        return Err(Error::Invalid(format!(
            "text must be at most {max_chars} characters"
        )));
    }
    if !crate::text::is_text(text) {
        let reason = if text.trim().is_empty() {
            "text must not be empty"
        } else {
            "text must not contain control characters other than tab and line breaks"
        };
        return Err(Error::Invalid(reason.into()));
    }
    Ok(())
}

/// Checks an idempotency key: 1 to 255 visible ASCII characters.
pub fn validate_idempotency_key(key: &str) -> Result<()> {
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY_BYTES
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(Error::Invalid(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} visible ASCII characters"
        )));
    }
    Ok(())
}

pub(crate) const TURN_COLUMNS: &str = "id, session_id, seq, author_user_id, status, input, output, error, \
     state_change, usage, job_id, idempotency_key, created_at, started_at, completed_at";

/// The payload of a turn job, and the turn kind's declaration.
///
/// Turns are the one session-serial kind: the worker's session lane runs
/// them (a session's turns one at a time, in `seq` order, under the
/// session's lease), reading everything from the turn row; the payload is
/// kept for apalis tooling. Their attempts and backoff come from
/// `QB_JOB_MAX_ATTEMPTS` and `QB_JOB_BACKOFF_MS`, their concurrency from
/// `QB_WORKER_CONCURRENCY` (the values here are those settings' defaults);
/// a run is bounded by the model request's timeout, not by the runtime.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize)]
pub struct TurnJob {
    /// The turn.
    pub turn_id: Uuid,
    /// Its session.
    pub session_id: Uuid,
}

impl Job for TurnJob {
    const SPEC: JobSpec = JobSpec {
        kind: "turn",
        queue: "questboard.turn",
        max_attempts: 5,
        concurrency: 8,
        session_serial: true,
        ..JobSpec::DEFAULTS
    };

    fn session(&self) -> Option<Uuid> {
        Some(self.session_id)
    }
}

/// The turn processed by job `job_id`, if that job is a turn's.
pub async fn by_job(pool: &PgPool, job_id: &str) -> Result<Option<Turn>> {
    Ok(sqlx::query_as::<_, Turn>(sqlx::AssertSqlSafe(format!(
        "SELECT {TURN_COLUMNS} FROM turns WHERE job_id = $1"
    )))
    .bind(job_id)
    .fetch_optional(pool)
    .await?)
}

/// Turns of a session with `seq > after_seq`, in order.
pub async fn list(
    pool: &PgPool,
    session_id: Uuid,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<Turn>> {
    Ok(sqlx::query_as::<_, Turn>(sqlx::AssertSqlSafe(format!(
        "SELECT {TURN_COLUMNS} FROM turns
         WHERE session_id = $1 AND seq > $2
         ORDER BY seq LIMIT $3"
    )))
    .bind(session_id)
    .bind(after_seq)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Deletes up to `limit` turns of a session being deleted, oldest first,
/// with their job rows. Returns how many turns went.
pub async fn delete_session_chunk(pool: &PgPool, session_id: Uuid, limit: i64) -> Result<u64> {
    let (count,): (i64,) = sqlx::query_as(
        "WITH doomed AS (
             SELECT id, job_id FROM turns WHERE session_id = $1 ORDER BY seq LIMIT $2
         ),
         jobs AS (
             DELETE FROM apalis.jobs j USING doomed d WHERE j.id = d.job_id
         ),
         gone AS (
             DELETE FROM turns t USING doomed d WHERE t.id = d.id RETURNING t.id
         )
         SELECT count(*) FROM gone",
    )
    .bind(session_id)
    .bind(limit)
    .fetch_one(pool)
    .await?;
    Ok(count as u64)
}
