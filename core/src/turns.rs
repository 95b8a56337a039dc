//! Turns: a player's input to a campaign session and the game master's reply.
//!
//! A turn is numbered (`seq`, one more than the session's previous turn) and
//! created together with the durable job that processes it, in one
//! transaction. Workers move it through `queued -> running -> completed` (or
//! `failed`); every such write is fenced by the session's lease token
//! ([`crate::leases::check_fence`]), and the final write only applies to an
//! unfinished turn, so a reply is recorded exactly once however many times
//! the model was asked.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::LazyLock;

use sqlx::{PgConnection, PgExecutor, PgPool, Row as _};
use uuid::Uuid;

use crate::events::{self, Event};
use crate::identity::UserId;
use crate::jobs::{self, JobKind, NewJob};
use crate::leases::{self, Lease, SESSION_SCOPE};
use crate::sessions::{self, SessionStatus, UnknownValue};

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
    /// The idempotency key was used before with a different input.
    #[error("this Idempotency-Key was already used for a different turn")]
    KeyReused,
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

/// Checks a turn's text: not blank, at most `max_chars` characters.
pub fn validate_input(text: &str, max_chars: usize) -> Result<()> {
    if text.trim().is_empty() {
        return Err(Error::Invalid("text must not be empty".into()));
    }
    if text.chars().count() > max_chars {
        return Err(Error::Invalid(format!(
            "text must be at most {max_chars} characters"
        )));
    }
    if text.contains('\0') {
        return Err(Error::Invalid(
            "text must not contain NUL characters".into(),
        ));
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

const TURN_COLUMNS: &str = "id, session_id, seq, author_user_id, status, input, output, error, \
     job_id, idempotency_key, created_at, started_at, completed_at";

/// Submits a turn: numbers it and enqueues its job in one transaction. With
/// an idempotency key already used by this author in this session, returns
/// the original turn and enqueues nothing.
pub async fn submit(pool: &PgPool, new: NewTurn<'_>) -> Result<Submitted> {
    let mut tx = pool.begin().await?;
    let membership = sessions::require_member(&mut *tx, new.session_id, new.author).await?;
    if membership.session.status == SessionStatus::Archived {
        return Err(sessions::Error::Conflict("the session is archived").into());
    }
    // Lock the session row: submissions to one session are serialised here,
    // which makes both the numbering and the idempotency check race-free.
    let seq: i64 =
        sqlx::query_scalar("SELECT next_turn_seq FROM campaign_sessions WHERE id = $1 FOR UPDATE")
            .bind(new.session_id)
            .fetch_one(&mut *tx)
            .await?;
    if let Some(key) = new.idempotency_key {
        let existing = sqlx::query_as::<_, Turn>(sqlx::AssertSqlSafe(format!(
            "SELECT {TURN_COLUMNS} FROM turns
             WHERE session_id = $1 AND author_user_id = $2 AND idempotency_key = $3"
        )))
        .bind(new.session_id)
        .bind(new.author.as_str())
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(turn) = existing {
            if turn.input != new.input {
                return Err(Error::KeyReused);
            }
            return Ok(Submitted {
                turn,
                created: false,
                event: None,
            });
        }
    }
    sqlx::query(
        "UPDATE campaign_sessions SET next_turn_seq = next_turn_seq + 1, last_active_at = now()
         WHERE id = $1",
    )
    .bind(new.session_id)
    .execute(&mut *tx)
    .await?;
    let id = Uuid::now_v7();
    let job_id = jobs::new_job_id();
    let turn = sqlx::query_as::<_, Turn>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO turns (id, session_id, seq, author_user_id, input, job_id, idempotency_key)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         RETURNING {TURN_COLUMNS}"
    )))
    .bind(id)
    .bind(new.session_id)
    .bind(seq)
    .bind(new.author.as_str())
    .bind(new.input)
    .bind(&job_id)
    .bind(new.idempotency_key)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO session_queue (session_id) VALUES ($1) ON CONFLICT (session_id) DO NOTHING",
    )
    .bind(new.session_id)
    .execute(&mut *tx)
    .await?;
    jobs::enqueue(
        &mut tx,
        NewJob {
            kind: JobKind::Turn,
            id: &job_id,
            payload: &TurnJob {
                turn_id: id,
                session_id: new.session_id,
            },
            session_id: Some(new.session_id),
            max_attempts: new.max_attempts,
        },
    )
    .await?;
    let event = events::append(
        &mut tx,
        new.session_id,
        "turn.queued",
        serde_json::json!({
            "turn_id": turn.id,
            "seq": turn.seq,
            "author_user_id": turn.author_user_id,
            "input": turn.input,
            "job_id": turn.job_id,
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(Submitted {
        turn,
        created: true,
        event: Some(event),
    })
}

/// The payload of a turn job.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize)]
pub struct TurnJob {
    /// The turn.
    pub turn_id: Uuid,
    /// Its session.
    pub session_id: Uuid,
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

/// The session a job's turn belongs to, for access checks.
pub async fn by_job<'e>(db: impl PgExecutor<'e>, job_id: &str) -> Result<Option<Turn>> {
    Ok(sqlx::query_as::<_, Turn>(sqlx::AssertSqlSafe(format!(
        "SELECT {TURN_COLUMNS} FROM turns WHERE job_id = $1"
    )))
    .bind(job_id)
    .fetch_optional(db)
    .await?)
}

/// A session's next unfinished turn, as the worker sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NextTurn {
    /// The turn (lowest `seq` still queued or running).
    #[sqlx(flatten)]
    pub turn: Turn,
    /// Whether its job may run now (false while it waits out a retry backoff).
    pub due: bool,
    /// Most runs its job may have.
    pub max_attempts: i32,
    /// Runs its job has started so far.
    pub attempts: i32,
    /// Whether the session was archived (its queued turns then fail).
    pub session_archived: bool,
}

/// The next unfinished turn of a session, if any.
pub async fn next_unfinished(
    conn: &mut PgConnection,
    session_id: Uuid,
) -> Result<Option<NextTurn>> {
    Ok(sqlx::query_as::<_, NextTurn>(
        "SELECT t.id, t.session_id, t.seq, t.author_user_id, t.status, t.input, t.output, t.error,
                t.job_id, t.idempotency_key, t.created_at, t.started_at, t.completed_at,
                j.run_at <= now() AS due, j.max_attempts, j.attempts,
                s.status = 'archived' AS session_archived
         FROM turns t
         JOIN apalis.jobs j ON j.id = t.job_id
         JOIN campaign_sessions s ON s.id = t.session_id
         WHERE t.session_id = $1 AND t.status IN ('queued', 'running')
         ORDER BY t.seq LIMIT 1",
    )
    .bind(session_id)
    .fetch_optional(&mut *conn)
    .await?)
}

/// Sessions with a turn that may run now and whose lease is free (or
/// expired: its holder died), longest waiting first. Candidates only: the
/// caller still has to win the lease.
pub async fn claimable_sessions(pool: &PgPool, limit: i64) -> Result<Vec<Uuid>> {
    Ok(sqlx::query_scalar(
        "SELECT q.session_id
         FROM session_queue q
         LEFT JOIN leases l ON l.scope = 'session' AND l.key = q.session_id::text
         WHERE q.ready_at <= now() AND (l.key IS NULL OR l.expires_at <= clock_timestamp())
         ORDER BY q.ready_at
         LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Puts a session with more work at the back of the line (its holder lets
/// go so that others get a turn), or, when its next turn waits out a
/// backoff, at that turn's retry time.
pub async fn requeue_session<'e>(db: impl PgExecutor<'e>, session_id: Uuid) -> Result<()> {
    sqlx::query(
        "UPDATE session_queue SET ready_at = greatest(now(), coalesce((
             SELECT j.run_at FROM turns t JOIN apalis.jobs j ON j.id = t.job_id
             WHERE t.session_id = $1 AND t.status IN ('queued', 'running')
             ORDER BY t.seq LIMIT 1), now()))
         WHERE session_id = $1",
    )
    .bind(session_id)
    .execute(db)
    .await?;
    Ok(())
}

/// Removes a session from the runnable index once it has no unfinished
/// turn. Takes the session row lock that submissions take, so a turn being
/// submitted right now is either seen here or re-adds the row after.
pub async fn retire_session_if_idle(pool: &PgPool, session_id: Uuid) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT 1 FROM campaign_sessions WHERE id = $1 FOR UPDATE")
        .bind(session_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "DELETE FROM session_queue WHERE session_id = $1
           AND NOT EXISTS (SELECT 1 FROM turns WHERE session_id = $1 AND status IN ('queued', 'running'))",
    )
    .bind(session_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// One earlier exchange, for the model's context.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Exchange {
    /// The turn's number.
    pub seq: i64,
    /// What the player typed.
    pub input: String,
    /// What the game master answered.
    pub output: String,
}

/// The last `window` completed exchanges before `before_seq`, oldest first.
pub async fn history(
    conn: &mut PgConnection,
    session_id: Uuid,
    before_seq: i64,
    window: i64,
) -> Result<Vec<Exchange>> {
    let mut rows = sqlx::query_as::<_, Exchange>(
        "SELECT seq, input, output FROM turns
         WHERE session_id = $1 AND seq < $2 AND status = 'completed'
         ORDER BY seq DESC LIMIT $3",
    )
    .bind(session_id)
    .bind(before_seq)
    .bind(window)
    .fetch_all(&mut *conn)
    .await?;
    rows.reverse();
    Ok(rows)
}

/// Binds the parameters every fenced statement shares: `$1`..`$5` are
/// scope, key, token, job id, turn id; callers bind `$6`... after.
fn fenced<'q>(
    sql: &'q str,
    lease: &'q Lease,
    turn: &'q Turn,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(SESSION_SCOPE)
        .bind(lease.key.as_str())
        .bind(lease.token)
        .bind(turn.job_id.as_str())
        .bind(turn.id)
}

fn fenced_out(lease: &Lease) -> Error {
    Error::Fenced(leases::Error::Fenced {
        scope: SESSION_SCOPE.to_owned(),
        key: lease.key.clone(),
        token: lease.token,
    })
}

/// Builds a fenced statement: the `fence` CTE, the turn update (named
/// `turn`, returning `session_id` and `seq`), the job transition, `more`
/// CTEs (each followed by a comma), the event append, and a final row
/// `(fenced_in, extra, event columns...)`.
fn fenced_statement(
    turn_update: &str,
    job: &str,
    more: &str,
    event_kind: &str,
    event_data: &str,
    extra: &str,
) -> String {
    format!(
        "WITH fence AS ({fence}),
         turn AS ({turn_update}),
         job AS ({job}),
         {more}
         {events}
         SELECT EXISTS (SELECT 1 FROM fence) AS fenced_in, {extra} AS extra,
                e.seq, e.type, e.session_id, e.at, e.data
         FROM (SELECT 1) AS one LEFT JOIN event e ON true",
        fence = leases::FENCE_SQL,
        events = events::append_ctes(
            "(SELECT session_id FROM turn)",
            &format!("'{event_kind}'"),
            event_data,
            "EXISTS (SELECT 1 FROM turn)"
        ),
    )
}

/// The outcome of a fenced write.
struct Fenced<T> {
    extra: T,
    event: Option<Event>,
}

async fn run_fenced<T>(
    query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    pool: &PgPool,
    lease: &Lease,
) -> Result<Fenced<T>>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    let row = query.fetch_one(pool).await?;
    let fenced_in: bool = row.try_get("fenced_in")?;
    if !fenced_in {
        return Err(fenced_out(lease));
    }
    let seq: Option<i64> = row.try_get("seq")?;
    let event = match seq {
        Some(seq) => Some(Event {
            seq,
            kind: row.try_get("type")?,
            session_id: row.try_get("session_id")?,
            at: row.try_get("at")?,
            data: row.try_get("data")?,
        }),
        None => None,
    };
    Ok(Fenced {
        extra: row.try_get("extra")?,
        event,
    })
}

static START_SQL: LazyLock<String> = LazyLock::new(|| {
    fenced_statement(
        "UPDATE turns SET status = 'running', started_at = clock_timestamp()
         WHERE id = $5 AND status IN ('queued', 'running') AND EXISTS (SELECT 1 FROM fence)
         RETURNING session_id, seq",
        &jobs::sql::start_attempt("EXISTS (SELECT 1 FROM fence)"),
        "",
        "turn.started",
        "jsonb_build_object('turn_id', $5, 'seq', (SELECT seq FROM turn), 'attempt', (SELECT attempts FROM job))",
        "(SELECT attempts FROM job)",
    )
});

/// Marks the turn running and counts the job's attempt, under the lease,
/// in one statement (appending `turn.started`). Returns the attempt number.
pub async fn start(pool: &PgPool, turn: &Turn, lease: &Lease) -> Result<(i32, Option<Event>)> {
    let done: Fenced<Option<i32>> =
        run_fenced(fenced(&START_SQL, lease, turn), pool, lease).await?;
    Ok((done.extra.unwrap_or(0), done.event))
}

static COMPLETE_SQL: LazyLock<String> = LazyLock::new(|| {
    fenced_statement(
        "UPDATE turns
         SET status = 'completed', output = $6, error = NULL,
             completed_at = clock_timestamp(), fence_token = $3
         WHERE id = $5 AND status IN ('queued', 'running') AND EXISTS (SELECT 1 FROM fence)
         RETURNING session_id, seq",
        &jobs::sql::succeed("EXISTS (SELECT 1 FROM turn)"),
        "",
        "turn.completed",
        "jsonb_build_object('turn_id', $5, 'seq', (SELECT seq FROM turn), 'output', $6::text)",
        "EXISTS (SELECT 1 FROM turn)",
    )
});

/// Records the reply, under the lease, in one statement (appending
/// `turn.completed`). Returns false if the turn was already finished
/// (nothing written).
pub async fn complete(
    pool: &PgPool,
    turn: &Turn,
    lease: &Lease,
    output: &str,
) -> Result<(bool, Option<Event>)> {
    let result = serde_json::json!({ "chars": output.chars().count() });
    let done: Fenced<bool> = run_fenced(
        fenced(&COMPLETE_SQL, lease, turn).bind(output).bind(result),
        pool,
        lease,
    )
    .await?;
    Ok((done.extra, done.event))
}

static RETRY_SQL: LazyLock<String> = LazyLock::new(|| {
    fenced_statement(
        "UPDATE turns SET status = 'queued', error = $6
         WHERE id = $5 AND status IN ('queued', 'running') AND EXISTS (SELECT 1 FROM fence)
         RETURNING session_id, seq",
        &jobs::sql::retry("EXISTS (SELECT 1 FROM turn)"),
        // The session's place in line moves to the retry time.
        "queue AS (UPDATE session_queue SET ready_at = (SELECT run_at FROM job)
                   WHERE session_id = (SELECT session_id FROM turn) RETURNING 1),",
        "turn.retrying",
        "jsonb_build_object('turn_id', $5, 'seq', (SELECT seq FROM turn), 'error', $6::text, 'retry_at', (SELECT run_at FROM job))",
        "EXISTS (SELECT 1 FROM queue)",
    )
});

/// Records a failed attempt that will be retried after `delay`, under the
/// lease (appending `turn.retrying`), and moves the session's place in line
/// to the retry time.
pub async fn retry_later(
    pool: &PgPool,
    turn: &Turn,
    lease: &Lease,
    error: &str,
    delay: std::time::Duration,
) -> Result<Option<Event>> {
    let done: Fenced<bool> = run_fenced(
        fenced(&RETRY_SQL, lease, turn)
            .bind(error)
            .bind(delay.as_secs_f64() * 1000.0),
        pool,
        lease,
    )
    .await?;
    Ok(done.event)
}

static FAIL_SQL: LazyLock<String> = LazyLock::new(|| {
    fenced_statement(
        "UPDATE turns
         SET status = 'failed', error = $6, completed_at = clock_timestamp(), fence_token = $3
         WHERE id = $5 AND status IN ('queued', 'running') AND EXISTS (SELECT 1 FROM fence)
         RETURNING session_id, seq",
        &jobs::sql::fail("EXISTS (SELECT 1 FROM turn)"),
        "",
        "turn.failed",
        "jsonb_build_object('turn_id', $5, 'seq', (SELECT seq FROM turn), 'error', $6::text)",
        "EXISTS (SELECT 1 FROM turn)",
    )
});

/// Records a final failure, under the lease (appending `turn.failed`); the
/// session moves on to its next turn.
pub async fn fail(pool: &PgPool, turn: &Turn, lease: &Lease, error: &str) -> Result<Option<Event>> {
    let done: Fenced<bool> =
        run_fenced(fenced(&FAIL_SQL, lease, turn).bind(error), pool, lease).await?;
    Ok(done.event)
}

static HAND_BACK_SQL: LazyLock<String> = LazyLock::new(|| {
    fenced_statement(
        "UPDATE turns SET status = 'queued'
         WHERE id = $5 AND status = 'running' AND EXISTS (SELECT 1 FROM fence)
         RETURNING session_id, seq",
        &jobs::sql::hand_back("EXISTS (SELECT 1 FROM turn)"),
        "",
        "turn.requeued",
        "jsonb_build_object('turn_id', $5, 'seq', (SELECT seq FROM turn))",
        "EXISTS (SELECT 1 FROM turn)",
    )
});

/// Hands an interrupted turn back (worker shutdown): queued again
/// (appending `turn.requeued`), the attempt not counted.
pub async fn hand_back(pool: &PgPool, turn: &Turn, lease: &Lease) -> Result<Option<Event>> {
    let done: Fenced<bool> = run_fenced(fenced(&HAND_BACK_SQL, lease, turn), pool, lease).await?;
    Ok(done.event)
}
