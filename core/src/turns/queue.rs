//! The runnable-session index (`session_queue`) and how workers claim from
//! it: which sessions have turns to run, and what a worker needs to run
//! them.
//!
//! A session has a row here while it has unfinished turns: submitting
//! inserts it, the worker that releases the session's lease deletes it once
//! every turn is finished, or moves `ready_at` (the back of the line, or a
//! retry's time) and `from_seq` (every turn before it is finished) when
//! work is left. Claims are batched: one statement takes the leases of up
//! to `limit` runnable sessions, one more reads their unfinished turns and
//! recent history, so a worker with many free slots does not pay one round
//! trip per session.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::sync::LazyLock;
use uuid::Uuid;

use super::Result;
use crate::leases::{self, Acquisition, Lease, SESSION_SCOPE};

/// A session whose lease was just taken.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The lease.
    pub lease: Lease,
    /// The session.
    pub session_id: Uuid,
    /// A clean acquisition, or a takeover from a holder that died.
    pub how: Acquisition,
    /// Every turn of the session before this one is finished.
    pub from_seq: i64,
}

/// `$1` limit, `$2` holder, `$3` TTL in ms, `$4` turns per session, `$5`
/// history exchanges per session. Rows: one `turn` row per unfinished turn
/// (or one with NULL turn columns for a session without), then `history`
/// rows. Per-session lookups are LATERAL index probes and no two CTEs are
/// joined (see `steps`).
static CLAIM_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH candidates AS (
             SELECT q.session_id FROM session_queue q
             WHERE q.ready_at <= now()
               AND NOT EXISTS (SELECT 1 FROM job_kinds k WHERE k.kind = 'turn' AND k.paused)
               AND NOT EXISTS (
                   SELECT 1 FROM leases l
                   WHERE l.scope = 'session' AND l.key = q.session_id::text
                     AND l.expires_at > clock_timestamp())
             ORDER BY q.ready_at
             LIMIT $1
             FOR UPDATE OF q SKIP LOCKED
         ),
         acquired AS ({acquire}),
         parked AS (
             UPDATE session_queue q SET ready_at = a.expires_at
             FROM acquired a WHERE q.session_id = a.key::uuid
         ),
         s AS (
             SELECT a.key::uuid AS session_id, a.token, a.expires_at, a.prev_holder,
                    q.from_seq, c.next_turn_seq, c.status = 'archived' AS archived
             FROM acquired a
             CROSS JOIN LATERAL (
                 SELECT q.from_seq FROM session_queue q WHERE q.session_id = a.key::uuid
             ) q
             CROSS JOIN LATERAL (
                 SELECT c.next_turn_seq, c.status FROM campaign_sessions c
                 WHERE c.id = a.key::uuid
             ) c
         )
         SELECT 'turn' AS row, s.session_id, s.token, s.expires_at, s.prev_holder, s.from_seq,
                s.next_turn_seq, s.archived,
                t.id, t.seq, t.input, NULL::text AS output, t.job_id, t.created_at, t.run_at,
                t.run_at <= now() AS due, t.attempts, t.max_attempts
         FROM s
         LEFT JOIN LATERAL (
             SELECT * FROM turns t
             WHERE t.session_id = s.session_id AND t.seq >= s.from_seq
               AND t.status IN ('queued', 'running')
             ORDER BY t.seq LIMIT $4
         ) t ON true
         UNION ALL
         SELECT 'history', s.session_id, NULL, NULL, NULL, NULL, NULL, NULL,
                NULL, h.seq, h.input, h.output, NULL, NULL, NULL, NULL, NULL, NULL
         FROM s
         CROSS JOIN LATERAL (
             SELECT t.seq, t.input, t.output FROM turns t
             WHERE t.session_id = s.session_id AND t.status = 'completed'
               AND t.seq < coalesce(
                   (SELECT min(u.seq) FROM turns u
                    WHERE u.session_id = s.session_id AND u.seq >= s.from_seq
                      AND u.status IN ('queued', 'running')),
                   s.next_turn_seq)
             ORDER BY t.seq DESC LIMIT $5
         ) h",
        acquire = leases::acquire_each(
            "'session'",
            "(SELECT session_id::text AS key FROM candidates)",
            "$2",
            "$3"
        ),
    )
});

#[derive(sqlx::FromRow)]
struct ClaimRow {
    row: String,
    session_id: Uuid,
    token: Option<i64>,
    expires_at: Option<DateTime<Utc>>,
    prev_holder: Option<String>,
    from_seq: Option<i64>,
    next_turn_seq: Option<i64>,
    archived: Option<bool>,
    id: Option<Uuid>,
    seq: Option<i64>,
    input: Option<String>,
    output: Option<String>,
    job_id: Option<String>,
    created_at: Option<DateTime<Utc>>,
    run_at: Option<DateTime<Utc>>,
    due: Option<bool>,
    attempts: Option<i32>,
    max_attempts: Option<i32>,
}

/// Takes the leases of up to `limit` sessions that have a turn which may
/// run now (none while an operator paused the `turn` kind) and no live lease (free, released, or expired because their
/// holder died), longest waiting first, and reads what their holder needs:
/// up to `turns` unfinished turns each, from the session's `from_seq` on,
/// and the `history` completed exchanges before the first of them. One
/// statement for the whole batch. Sessions that another worker is claiming
/// at the same moment are skipped, not waited for. A claimed session's
/// `ready_at` moves to its lease's expiry (and [`postpone`] keeps it there
/// while the lease is renewed), so later claims do not step over it.
pub async fn claim(
    pool: &PgPool,
    holder: &str,
    ttl: Duration,
    limit: usize,
    turns: usize,
    history: i64,
) -> Result<Vec<(Claimed, Backlog)>> {
    let rows: Vec<ClaimRow> = sqlx::query_as(sqlx::AssertSqlSafe(CLAIM_SQL.as_str()))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(holder)
        .bind(ttl.as_secs_f64() * 1000.0)
        .bind(i64::try_from(turns).unwrap_or(i64::MAX))
        .bind(history)
        .fetch_all(pool)
        .await?;
    let mut claimed: Vec<(Claimed, Backlog)> = Vec::new();
    let mut index: std::collections::HashMap<Uuid, usize> = std::collections::HashMap::new();
    for r in rows {
        if r.row == "turn" && !index.contains_key(&r.session_id) {
            let (Some(token), Some(expires_at), Some(from_seq)) =
                (r.token, r.expires_at, r.from_seq)
            else {
                continue;
            };
            index.insert(r.session_id, claimed.len());
            claimed.push((
                Claimed {
                    lease: Lease {
                        scope: SESSION_SCOPE.to_owned(),
                        key: r.session_id.to_string(),
                        holder: holder.to_owned(),
                        token,
                        expires_at,
                    },
                    session_id: r.session_id,
                    how: if r.prev_holder.is_some() {
                        Acquisition::TakenOver
                    } else {
                        Acquisition::Acquired
                    },
                    from_seq,
                },
                Backlog {
                    session_id: r.session_id,
                    next_turn_seq: r.next_turn_seq.unwrap_or(from_seq),
                    archived: r.archived.unwrap_or(false),
                    turns: Vec::new(),
                    history: Vec::new(),
                },
            ));
        }
        let Some(&at) = index.get(&r.session_id) else {
            continue;
        };
        let backlog = &mut claimed[at].1;
        if r.row == "turn" {
            if let (
                Some(id),
                Some(seq),
                Some(input),
                Some(job_id),
                Some(created_at),
                Some(run_at),
            ) = (r.id, r.seq, r.input, r.job_id, r.created_at, r.run_at)
            {
                backlog.turns.push(Pending {
                    id,
                    seq,
                    input,
                    job_id,
                    created_at,
                    run_at,
                    due: r.due.unwrap_or(false),
                    attempts: r.attempts.unwrap_or(0),
                    max_attempts: r.max_attempts.unwrap_or(1),
                });
            }
        } else if let (Some(seq), Some(input), Some(output)) = (r.seq, r.input, r.output) {
            backlog.history.push(Exchange { seq, input, output });
        }
    }
    for (_, backlog) in &mut claimed {
        backlog.turns.sort_by_key(|t| t.seq);
        backlog.history.sort_by_key(|e| e.seq);
    }
    Ok(claimed)
}

/// Moves each held session's place in line to its lease's new expiry: it
/// becomes claimable then if its holder stops renewing (dies).
pub async fn postpone(pool: &PgPool, held: &[(Uuid, DateTime<Utc>)]) -> Result<()> {
    let (sessions, until): (Vec<Uuid>, Vec<DateTime<Utc>>) = held.iter().copied().unzip();
    sqlx::query(
        "UPDATE session_queue q SET ready_at = h.until
         FROM unnest($1::uuid[], $2::timestamptz[]) AS h(session_id, until)
         WHERE q.session_id = h.session_id AND q.ready_at < h.until",
    )
    .bind(sessions)
    .bind(until)
    .execute(pool)
    .await?;
    Ok(())
}

/// An unfinished turn, as a worker needs it.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The turn.
    pub id: Uuid,
    /// Its number in the session.
    pub seq: i64,
    /// What the player typed.
    pub input: String,
    /// Its job.
    pub job_id: String,
    /// Submitted.
    pub created_at: DateTime<Utc>,
    /// When its job may run (later than now while a retry waits).
    pub run_at: DateTime<Utc>,
    /// Whether it may run now.
    pub due: bool,
    /// Runs of its job started so far.
    pub attempts: i32,
    /// Most runs its job may have.
    pub max_attempts: i32,
}

/// One earlier exchange, for the model's context.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The turn's number.
    pub seq: i64,
    /// What the player typed.
    pub input: String,
    /// What the game master answered.
    pub output: String,
}

/// What a worker that holds a session's lease has to do.
#[derive(Debug, Clone)]
pub struct Backlog {
    /// The session.
    pub session_id: Uuid,
    /// The session's next turn number when read: turns below it that are
    /// not in `turns` are finished (unless `turns` was cut at the limit).
    pub next_turn_seq: i64,
    /// Whether the session was archived (its unfinished turns then fail).
    pub archived: bool,
    /// Its unfinished turns from `from_seq` on, in order, at most the limit.
    pub turns: Vec<Pending>,
    /// Its last completed exchanges before the first of `turns`, oldest first.
    pub history: Vec<Exchange>,
}
