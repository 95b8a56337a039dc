//! Session lanes as operators see them: the sessions with unfinished
//! turns, ordered by how long their head turn (the next to run; a session
//! runs its turns strictly in order) has waited, who holds each session's
//! lease, and why the head turn is not running yet.
//!
//! Read from the runnable-session index (`session_queue`), the session
//! leases and the turns' own rows; nothing here is written.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use uuid::Uuid;

use super::Result;

/// Why a lane's head turn is where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Waiting {
    /// It runs now, on the lease holder.
    Running,
    /// A worker holds the session's lease (it is about to start it, or
    /// finishing the turn before).
    LeaseHeld,
    /// It failed a run and runs again at `retry_at`.
    RetryDue,
    /// The `turn` kind is paused: no worker claims sessions.
    KindPaused,
    /// Nothing holds it back: it waits for a free worker slot.
    Ready,
}

/// One session's lane.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Lane {
    /// The session.
    pub session_id: Uuid,
    /// Its name (as its owner typed it: show as text).
    pub session_name: String,
    /// Unfinished turns (queued or running).
    pub unfinished: i64,
    /// The head turn: the next to run, or running.
    pub head_turn_id: Uuid,
    /// Its number in the session.
    pub head_seq: i64,
    /// Its job.
    pub head_job_id: String,
    /// `queued` or `running`.
    pub head_status: String,
    /// Runs it started.
    pub head_attempts: i32,
    /// When it was submitted.
    pub head_created_at: DateTime<Utc>,
    /// How long it has waited since, in seconds.
    pub head_wait_seconds: f64,
    /// Its last failure (sanitised), if a run failed.
    pub head_error: Option<String>,
    /// Why it is not running (or that it is).
    pub waiting: Waiting,
    /// When a failed run's retry is due.
    pub retry_at: Option<DateTime<Utc>>,
    /// The worker holding the session's lease.
    pub lease_holder: Option<String>,
    /// That lease's fencing token.
    pub fencing_token: Option<i64>,
    /// When that lease lapses unless renewed.
    pub lease_expires_at: Option<DateTime<Utc>>,
}

/// A turn waiting in a lane.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct LaneTurn {
    /// The turn.
    pub turn_id: Uuid,
    /// Its number.
    pub seq: i64,
    /// Its job.
    pub job_id: String,
    /// Who played it.
    pub author_user_id: String,
    /// `queued` or `running`.
    pub status: String,
    /// Runs started.
    pub attempts: i32,
    /// Submitted.
    pub created_at: DateTime<Utc>,
    /// Not before.
    pub run_at: DateTime<Utc>,
    /// Its last failure.
    pub error: Option<String>,
}

type LaneRow = (
    Uuid,
    String,
    i64,
    Uuid,
    i64,
    String,
    String,
    i32,
    DateTime<Utc>,
    Option<String>,
    DateTime<Utc>,
    Option<String>,
    Option<i64>,
    Option<DateTime<Utc>>,
    bool,
);

const LANE_SELECT: &str = "
    SELECT q.session_id, s.name,
           (SELECT count(*) FROM turns c
            WHERE c.session_id = q.session_id AND c.status IN ('queued', 'running')),
           h.id, h.seq, h.job_id, h.status, h.attempts, h.created_at, h.error, h.run_at,
           l.holder, l.token, l.expires_at,
           EXISTS (SELECT 1 FROM job_kinds k WHERE k.kind = 'turn' AND k.paused)
    FROM session_queue q
    JOIN campaign_sessions s ON s.id = q.session_id
    CROSS JOIN LATERAL (
        SELECT t.id, t.seq, t.job_id, t.status, t.attempts, t.created_at, t.error, t.run_at
        FROM turns t
        WHERE t.session_id = q.session_id AND t.status IN ('queued', 'running')
          AND t.seq >= q.from_seq
        ORDER BY t.seq LIMIT 1
    ) h
    LEFT JOIN leases l ON l.scope = 'session' AND l.key = q.session_id::text
                      AND l.holder IS NOT NULL AND l.expires_at > clock_timestamp()";

fn lane(row: LaneRow, now: DateTime<Utc>) -> Lane {
    let (session_id, name, unfinished, turn, seq, job, status, attempts, created, error, run_at) = (
        row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7, row.8, row.9, row.10,
    );
    let (holder, token, expires, paused) = (row.11, row.12, row.13, row.14);
    let waiting = if status == "running" && holder.is_some() {
        Waiting::Running
    } else if holder.is_some() {
        Waiting::LeaseHeld
    } else if paused {
        Waiting::KindPaused
    } else if run_at > now {
        Waiting::RetryDue
    } else {
        Waiting::Ready
    };
    Lane {
        session_id,
        session_name: name,
        unfinished,
        head_turn_id: turn,
        head_seq: seq,
        head_job_id: job,
        head_status: status,
        head_attempts: attempts,
        head_created_at: created,
        head_wait_seconds: ((now - created).num_milliseconds().max(0) as f64) / 1000.0,
        head_error: error,
        waiting,
        retry_at: (run_at > now).then_some(run_at),
        lease_holder: holder,
        fencing_token: token,
        lease_expires_at: expires,
    }
}

/// Up to `limit` lanes, the longest-waiting head turn first, and how many
/// sessions have unfinished turns in all.
pub async fn lanes(pool: &PgPool, limit: i64) -> Result<(Vec<Lane>, i64)> {
    let rows: Vec<LaneRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{LANE_SELECT} ORDER BY h.created_at, q.session_id LIMIT $1"
    )))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let (total,): (i64,) = sqlx::query_as("SELECT count(*) FROM session_queue")
        .fetch_one(pool)
        .await?;
    let now = Utc::now();
    Ok((rows.into_iter().map(|r| lane(r, now)).collect(), total))
}

/// Session `session`'s lane and up to `limit` of its unfinished turns in
/// order (None: it has no unfinished turn).
pub async fn lane_of(
    pool: &PgPool,
    session: Uuid,
    limit: i64,
) -> Result<Option<(Lane, Vec<LaneTurn>)>> {
    let row: Option<LaneRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{LANE_SELECT} WHERE q.session_id = $1"
    )))
    .bind(session)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let turns: Vec<LaneTurn> = sqlx::query_as(
        "SELECT id AS turn_id, seq, job_id, author_user_id, status, attempts, created_at,
                run_at, error
         FROM turns WHERE session_id = $1 AND status IN ('queued', 'running')
         ORDER BY seq LIMIT $2",
    )
    .bind(session)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(Some((lane(row, Utc::now()), turns)))
}
