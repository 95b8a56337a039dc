//! Submitting turns: numbering them, enqueueing their jobs, marking their
//! sessions runnable and appending `turn.queued`, atomically.
//!
//! [`submit`] does one turn in one statement (one round trip, one commit):
//! the API's path for a single request. [`submit_many`] does a batch (any
//! sessions, several turns per session) in one transaction of three round
//! trips, whatever its size: the path for bulk enqueue and for the API's
//! group commit of concurrent requests. Both lock the sessions' rows, which
//! serialises submissions to one session and numbers turns and events
//! without gaps; `submit_many` takes the locks in session-id order, as the
//! workers' batched steps do, so concurrent batches cannot deadlock.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row as _};
use uuid::Uuid;

use super::{Error, NewTurn, Result, Submitted, TURN_COLUMNS, Turn, TurnJob, TurnStatus};
use crate::events::Event;
use crate::jobs::{self, Job as _};
use crate::quotas::{self, Bucket, Quota, TurnQuotas};
use crate::sessions::{self, SessionStatus};

/// The unique constraint that makes idempotency keys race-free.
const IDEMPOTENCY_CONSTRAINT: &str = "turns_session_id_author_user_id_idempotency_key_key";

/// Submits a turn: numbers it, enqueues its job, marks the session runnable
/// and appends `turn.queued`, all in one statement (one round trip, one
/// commit). With an idempotency key already used by this author in this
/// session, returns the original turn and enqueues nothing.
pub async fn submit(pool: &PgPool, new: NewTurn<'_>) -> Result<Submitted> {
    if let Some(key) = new.idempotency_key
        && let Some(replayed) = replay(pool, &new, key).await?
    {
        return Ok(replayed);
    }
    let id = Uuid::now_v7();
    let job_id = jobs::new_job_id();
    let payload = serde_json::to_vec(&TurnJob {
        turn_id: id,
        session_id: new.session_id,
    })
    .map_err(jobs::Error::from)?;
    let inserted = sqlx::query(sqlx::AssertSqlSafe(SUBMIT_SQL.as_str()))
        .bind(new.session_id)
        .bind(new.author.as_str())
        .bind(id)
        .bind(new.input)
        .bind(&job_id)
        .bind(new.idempotency_key)
        .bind(payload)
        .bind(i32::try_from(new.max_attempts).unwrap_or(i32::MAX))
        .fetch_optional(pool)
        .await;
    let row = match inserted {
        Ok(Some(row)) => row,
        Ok(None) => return Err(refusal(pool, &new).await),
        Err(sqlx::Error::Database(err)) if err.constraint() == Some(IDEMPOTENCY_CONSTRAINT) => {
            // A concurrent submission with the same key won the race.
            let key = new.idempotency_key.unwrap_or_default();
            return match replay(pool, &new, key).await? {
                Some(replayed) => Ok(replayed),
                None => Err(sqlx::Error::Database(err).into()),
            };
        }
        Err(err) => return Err(err.into()),
    };
    let turn = queued_turn(
        &new,
        id,
        row.try_get("seq")?,
        job_id,
        row.try_get("created_at")?,
    );
    let event = Event {
        seq: row.try_get("event_seq")?,
        kind: "turn.queued".into(),
        session_id: new.session_id,
        at: row.try_get("event_at")?,
        data: row.try_get("event_data")?,
    };
    Ok(Submitted {
        turn,
        created: true,
        event: Some(event),
    })
}

/// Parameters: `$1` session, `$2` author, `$3` turn id, `$4` input, `$5` job
/// id, `$6` idempotency key, `$7` job payload, `$8` max attempts. No row:
/// not a member, or the session is archived. Locking the session row
/// (`UPDATE campaign_sessions`) serialises submissions to one session, which
/// numbers turns and events without gaps.
static SUBMIT_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH s AS (
             UPDATE campaign_sessions s
             SET next_turn_seq = s.next_turn_seq + 1, next_event_seq = s.next_event_seq + 1,
                 last_active_at = now()
             FROM campaign_session_members m
             WHERE s.id = $1 AND s.status = 'active' AND m.session_id = s.id AND m.user_id = $2
             RETURNING s.next_turn_seq - 1 AS seq, s.next_event_seq - 1 AS event_seq
         ),
         turn AS (
             INSERT INTO turns (id, session_id, seq, author_user_id, input, job_id,
                                idempotency_key, max_attempts, run_at)
             SELECT $3, $1, seq, $2, $4, $5, $6, $8, now() FROM s
             RETURNING seq, created_at
         ),
         queue AS (
             INSERT INTO session_queue (session_id, from_seq) SELECT $1, seq FROM s
             ON CONFLICT (session_id) DO NOTHING
         ),
         job AS ({job}),
         event AS (
             INSERT INTO session_events (session_id, seq, type, data)
             SELECT $1, event_seq, 'turn.queued', jsonb_build_object(
                 'turn_id', $3::uuid, 'seq', seq, 'author_user_id', $2::text, 'input', $4::text,
                 'job_id', $5::text)
             FROM s
             RETURNING seq, at, data
         )
         SELECT turn.seq, turn.created_at, event.seq AS event_seq, event.at AS event_at,
                event.data AS event_data
         FROM turn, event",
        job = jobs::sql::insert_pending(&TurnJob::SPEC, "s", "$5", "$7", "$8"),
    )
});

/// The earlier turn submitted with `key` by this author, if any (`KeyReused`
/// if its text differs).
async fn replay(pool: &PgPool, new: &NewTurn<'_>, key: &str) -> Result<Option<Submitted>> {
    let existing = sqlx::query_as::<_, Turn>(sqlx::AssertSqlSafe(format!(
        "SELECT {TURN_COLUMNS} FROM turns
         WHERE session_id = $1 AND author_user_id = $2 AND idempotency_key = $3"
    )))
    .bind(new.session_id)
    .bind(new.author.as_str())
    .bind(key)
    .fetch_optional(pool)
    .await?;
    match existing {
        Some(turn) if turn.input != new.input => Err(Error::KeyReused),
        Some(turn) => {
            // The key only counts for a member of a live session, as a
            // fresh submission would.
            sessions::require_member(pool, new.session_id, new.author).await?;
            Ok(Some(Submitted {
                turn,
                created: false,
                event: None,
            }))
        }
        None => Ok(None),
    }
}

/// Why a submission inserted nothing: not a member (404) or archived (409).
async fn refusal(pool: &PgPool, new: &NewTurn<'_>) -> Error {
    match sessions::require_member(pool, new.session_id, new.author).await {
        Ok(m) if m.session.status == SessionStatus::Archived => {
            sessions::Error::Conflict("the session is archived").into()
        }
        Ok(_) => sessions::Error::Conflict("the session changed meanwhile; try again").into(),
        Err(err) => err.into(),
    }
}
/// Where one turn of a batch stands after the checks.
enum Plan {
    /// Refused (not a member, archived, key reused with another text).
    Refused(Error),
    /// A replay of an earlier turn: stored, or item `n` of this batch.
    Stored(Box<Turn>),
    SameAs(usize),
    /// New: numbered and to be inserted.
    Insert {
        id: Uuid,
        job_id: String,
        seq: i64,
        event_seq: i64,
    },
}

/// Submits `batch` in one transaction and returns one outcome per turn, in
/// order: the turn (new, or the original for a reused idempotency key), or
/// why it was refused (not a member, archived, key reused with another
/// text, one of the `limits`: [`Error::Quota`]) without affecting the
/// others. Turns of one session are numbered in batch order. A replayed
/// turn is never refused by a limit nor charged to one. Fails as a whole
/// only if the database does.
pub async fn submit_many(
    pool: &PgPool,
    batch: &[NewTurn<'_>],
    limits: TurnQuotas,
) -> Result<Vec<Result<Submitted>>> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = pool.begin().await?;
    let mut counters = lock_sessions(&mut tx, batch, limits).await?;
    let stored = earlier_with_keys(&mut tx, batch).await?;
    let mut users = authors(&mut tx, batch, limits).await?;
    let plans = plan(batch, &mut counters, &stored, &mut users, limits);
    let created = insert(&mut tx, batch, &plans, &counters, &users, limits).await?;
    tx.commit().await?;
    Ok(answer(batch, plans, created))
}

/// A session of a batch, locked: whether it is archived, its counters
/// (advanced as the batch's turns are numbered) and which of the batch's
/// authors are members.
struct Counters {
    archived: bool,
    next_turn: i64,
    next_event: i64,
    members: Vec<String>,
    /// Turns waiting or running (counted only under a queue limit).
    queued: i64,
    /// Tokens spent today (read only under a session budget).
    spent: i64,
    /// The database's clock.
    now: DateTime<Utc>,
}

/// Locks the batch's sessions (in id order, so concurrent batches cannot
/// deadlock) and reads their counters, status and members among the
/// authors, and what the `limits` need: turns waiting or running, tokens
/// spent today. Unfinished turns are those from the session's `from_seq`
/// on: their number is at most the turns numbered since (no row read),
/// and only when that bound reaches the limit are they counted, on the
/// (session_id, seq) index and up to the limit.
async fn lock_sessions(
    tx: &mut sqlx::PgConnection,
    batch: &[NewTurn<'_>],
    limits: TurnQuotas,
) -> Result<HashMap<Uuid, Counters>> {
    let mut session_ids: Vec<Uuid> = batch.iter().map(|n| n.session_id).collect();
    session_ids.sort_unstable();
    session_ids.dedup();
    let authors: Vec<&str> = batch.iter().map(|n| n.author.as_str()).collect();
    type SessionRow = (Uuid, String, i64, i64, Vec<String>, i64, i64, DateTime<Utc>);
    let rows: Vec<SessionRow> = sqlx::query_as(
        "SELECT c.id, c.status, c.next_turn_seq, c.next_event_seq,
                array(SELECT m.user_id FROM campaign_session_members m
                      WHERE m.session_id = c.id AND m.user_id = ANY($2)) AS members,
                CASE WHEN $3 > 0 THEN coalesce((
                    SELECT CASE WHEN c.next_turn_seq - q.from_seq < $3
                                THEN c.next_turn_seq - q.from_seq
                                ELSE (SELECT count(*) FROM (
                                          SELECT 1 FROM turns t
                                          WHERE t.session_id = c.id AND t.seq >= q.from_seq
                                            AND t.status IN ('queued', 'running')
                                          LIMIT $3) u)
                           END
                    FROM session_queue q WHERE q.session_id = c.id), 0)
                ELSE 0 END AS queued,
                CASE WHEN $4 THEN (
                    SELECT coalesce(sum(d.prompt_tokens + d.completion_tokens), 0)::bigint
                    FROM usage_daily d
                    WHERE d.session_id = c.id AND d.day = (now() AT TIME ZONE 'UTC')::date)
                ELSE 0 END AS spent,
                now()
         FROM campaign_sessions c WHERE c.id = ANY($1)
         ORDER BY c.id FOR NO KEY UPDATE OF c",
    )
    .bind(&session_ids)
    .bind(&authors)
    .bind(
        limits
            .queued
            .map_or(0, |max| i64::try_from(max).unwrap_or(i64::MAX)),
    )
    .bind(limits.session_tokens.is_some())
    .fetch_all(tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(id, status, next_turn, next_event, members, queued, spent, now)| {
                (
                    id,
                    Counters {
                        archived: status == SessionStatus::Archived.as_str(),
                        next_turn,
                        next_event,
                        members,
                        queued,
                        spent,
                        now,
                    },
                )
            },
        )
        .collect())
}

/// An author of a batch, as the per-user limits see them.
struct Author {
    /// Their turns-per-minute bucket as read (under that limit).
    bucket: Bucket,
    /// Turns of theirs this batch admits.
    charged: u32,
    /// Tokens their turns spent today (under a user budget).
    spent: i64,
}

/// Reads the per-user state the `limits` need for the batch's authors:
/// their turn buckets (not locked: see [`insert`]) and tokens spent today.
async fn authors(
    tx: &mut sqlx::PgConnection,
    batch: &[NewTurn<'_>],
    limits: TurnQuotas,
) -> Result<HashMap<String, Author>> {
    let mut users = HashMap::new();
    if limits.per_minute.is_none() && limits.user_tokens.is_none() {
        return Ok(users);
    }
    let mut ids: Vec<&str> = batch.iter().map(|n| n.author.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let prefix = format!("{}:", Quota::UserTurnsPerMinute.name());
    let rows: Vec<(String, Option<DateTime<Utc>>, i64)> = sqlx::query_as(
        "SELECT u.user_id,
                CASE WHEN $2 THEN (SELECT tat FROM quota_buckets b WHERE b.key = $4 || u.user_id) END,
                CASE WHEN $3 THEN (
                    SELECT coalesce(sum(d.prompt_tokens + d.completion_tokens), 0)::bigint
                    FROM usage_daily d
                    WHERE d.user_id = u.user_id AND d.day = (now() AT TIME ZONE 'UTC')::date)
                ELSE 0 END
         FROM unnest($1::text[]) AS u(user_id)",
    )
    .bind(&ids)
    .bind(limits.per_minute.is_some())
    .bind(limits.user_tokens.is_some())
    .bind(&prefix)
    .fetch_all(&mut *tx)
    .await?;
    for (user, tat, spent) in rows {
        users.insert(
            user,
            Author {
                bucket: Bucket { tat },
                charged: 0,
                spent,
            },
        );
    }
    Ok(users)
}

/// Whether the `limits` let `new` in; charges its author's bucket when
/// they do. Counts turns accepted past 80 % of a budget.
fn admit(
    new: &NewTurn<'_>,
    session: &Counters,
    users: &mut HashMap<String, Author>,
    limits: TurnQuotas,
) -> std::result::Result<(), quotas::Refusal> {
    let now = session.now;
    if let Some(max) = limits.queued
        && session.queued >= i64::try_from(max).unwrap_or(i64::MAX)
    {
        return Err(quotas::Refusal::new(
            Quota::SessionMaxQueuedTurns,
            max,
            quotas::QUEUE_FULL_RETRY,
        ));
    }
    if let Some(budget) = limits.session_tokens {
        quotas::budget_left(Quota::SessionDailyTokens, budget, session.spent, now)?;
    }
    let author = users.get_mut(new.author.as_str());
    if let (Some(budget), Some(author)) = (limits.user_tokens, author.as_deref()) {
        quotas::budget_left(Quota::UserDailyTokens, budget, author.spent, now)?;
    }
    if let (Some(limit), Some(author)) = (limits.per_minute, author) {
        let period = Quota::UserTurnsPerMinute
            .period()
            .unwrap_or(std::time::Duration::from_secs(60));
        author
            .bucket
            .take(now, limit, period)
            .map_err(|wait| quotas::Refusal::new(Quota::UserTurnsPerMinute, limit, wait))?;
        author.charged += 1;
    }
    for (budget, spent, scope) in [
        (limits.session_tokens, session.spent, "session"),
        (
            limits.user_tokens,
            users.get(new.author.as_str()).map_or(0, |a| a.spent),
            "user",
        ),
    ] {
        if let Some(budget) = budget
            && quotas::near_exhaustion(spent, budget)
        {
            metrics::counter!(crate::metrics::BUDGET_WARNINGS_TOTAL, "scope" => scope).increment(1);
        }
    }
    Ok(())
}

/// Turns stored earlier under the batch's idempotency keys, by (session,
/// author, key).
type Replays = HashMap<(Uuid, String, String), Turn>;

/// The turns stored earlier with the idempotency keys of the batch.
async fn earlier_with_keys(tx: &mut sqlx::PgConnection, batch: &[NewTurn<'_>]) -> Result<Replays> {
    let keyed: Vec<&NewTurn<'_>> = batch
        .iter()
        .filter(|n| n.idempotency_key.is_some())
        .collect();
    let mut stored = Replays::new();
    if keyed.is_empty() {
        return Ok(stored);
    }
    let turns: Vec<Turn> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {TURN_COLUMNS} FROM turns
         WHERE (session_id, author_user_id, idempotency_key) IN (
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]))"
    )))
    .bind(keyed.iter().map(|n| n.session_id).collect::<Vec<_>>())
    .bind(keyed.iter().map(|n| n.author.as_str()).collect::<Vec<_>>())
    .bind(keyed.iter().map(|n| n.idempotency_key).collect::<Vec<_>>())
    .fetch_all(tx)
    .await?;
    for turn in turns {
        let key = turn.idempotency_key.clone().unwrap_or_default();
        stored.insert((turn.session_id, turn.author_user_id.clone(), key), turn);
    }
    Ok(stored)
}

/// Decides each turn of the batch, in order, as one-by-one submissions
/// would: refused, a replay, or new (numbered from its session's
/// counters, which advance).
fn plan(
    batch: &[NewTurn<'_>],
    counters: &mut HashMap<Uuid, Counters>,
    stored: &Replays,
    users: &mut HashMap<String, Author>,
    limits: TurnQuotas,
) -> Vec<Plan> {
    let mut in_batch: HashMap<(Uuid, &str, &str), usize> = HashMap::new();
    let mut plans = Vec::with_capacity(batch.len());
    for (i, new) in batch.iter().enumerate() {
        let Some(session) = counters
            .get_mut(&new.session_id)
            .filter(|c| c.members.iter().any(|m| m == new.author.as_str()))
        else {
            plans.push(Plan::Refused(sessions::Error::NotFound.into()));
            continue;
        };
        if let Some(key) = new.idempotency_key {
            let id = (
                new.session_id,
                new.author.as_str().to_owned(),
                key.to_owned(),
            );
            if let Some(turn) = stored.get(&id) {
                plans.push(if turn.input == new.input {
                    Plan::Stored(Box::new(turn.clone()))
                } else {
                    Plan::Refused(Error::KeyReused)
                });
                continue;
            }
            if let Some(&first) = in_batch.get(&(new.session_id, new.author.as_str(), key)) {
                plans.push(if batch[first].input == new.input {
                    Plan::SameAs(first)
                } else {
                    Plan::Refused(Error::KeyReused)
                });
                continue;
            }
        }
        if session.archived {
            plans.push(Plan::Refused(
                sessions::Error::Conflict("the session is archived").into(),
            ));
            continue;
        }
        if let Err(refusal) = admit(new, session, users, limits) {
            plans.push(Plan::Refused(Error::Quota(refusal)));
            continue;
        }
        if let Some(key) = new.idempotency_key {
            in_batch.insert((new.session_id, new.author.as_str(), key), i);
        }
        session.queued += 1;
        plans.push(Plan::Insert {
            id: Uuid::now_v7(),
            job_id: jobs::new_job_id(),
            seq: session.next_turn,
            event_seq: session.next_event,
        });
        session.next_turn += 1;
        session.next_event += 1;
    }
    plans
}

/// Inserts the new turns of `plans` in one statement (with their jobs,
/// events, places in line and the sessions' counters); their creation
/// times and `turn.queued` events, by turn id.
async fn insert(
    tx: &mut sqlx::PgConnection,
    batch: &[NewTurn<'_>],
    plans: &[Plan],
    counters: &HashMap<Uuid, Counters>,
    users: &HashMap<String, Author>,
    limits: TurnQuotas,
) -> Result<HashMap<Uuid, (DateTime<Utc>, Event)>> {
    let mut cols = InsertColumns::default();
    for (new, plan) in batch.iter().zip(plans) {
        if let Plan::Insert {
            id,
            job_id,
            seq,
            event_seq,
        } = plan
        {
            cols.push(new, *id, job_id, *seq, *event_seq)?;
        }
    }
    let mut created = HashMap::new();
    if cols.ids.is_empty() {
        return Ok(created);
    }
    // Per session touched: its first new seq, and its counters after.
    let mut touched: Vec<(Uuid, i64)> = Vec::new();
    for (session, seq) in cols.sessions.iter().zip(&cols.seqs) {
        if !touched.iter().any(|(s, _)| s == session) {
            touched.push((*session, *seq));
        }
    }
    let sessions_touched: Vec<Uuid> = touched.iter().map(|(s, _)| *s).collect();
    let first_seqs: Vec<i64> = touched.iter().map(|(_, first)| *first).collect();
    let next_turns: Vec<i64> = touched.iter().map(|(s, _)| counters[s].next_turn).collect();
    let next_events: Vec<i64> = touched
        .iter()
        .map(|(s, _)| counters[s].next_event)
        .collect();
    // Each author's bucket moves on by the turns admitted, relative to
    // where it stands when this statement runs: a batch committed
    // meanwhile for the same author is charged too, never overwritten.
    let per_turn = limits.per_minute.map_or(0.0, |limit| 60.0 / limit as f64);
    let (bucket_keys, bucket_secs): (Vec<String>, Vec<f64>) = users
        .iter()
        .filter(|(_, a)| a.charged > 0)
        .map(|(user, a)| {
            (
                quotas::bucket_key(Quota::UserTurnsPerMinute, user),
                f64::from(a.charged) * per_turn,
            )
        })
        .unzip();
    let rows = sqlx::query(sqlx::AssertSqlSafe(SUBMIT_MANY_SQL.as_str()))
        .bind(&cols.ids)
        .bind(&cols.sessions)
        .bind(&cols.seqs)
        .bind(&cols.authors)
        .bind(&cols.inputs)
        .bind(&cols.job_ids)
        .bind(&cols.keys)
        .bind(&cols.max_attempts)
        .bind(&cols.payloads)
        .bind(&cols.event_seqs)
        .bind(&sessions_touched)
        .bind(&first_seqs)
        .bind(&next_turns)
        .bind(&next_events)
        .bind(&bucket_keys)
        .bind(&bucket_secs)
        .fetch_all(tx)
        .await?;
    for row in rows {
        let id: Uuid = row.try_get("id")?;
        let event = Event {
            seq: row.try_get("event_seq")?,
            kind: "turn.queued".into(),
            session_id: row.try_get("session_id")?,
            at: row.try_get("event_at")?,
            data: row.try_get("event_data")?,
        };
        created.insert(id, (row.try_get("created_at")?, event));
    }
    Ok(created)
}

/// The outcome of each turn of the batch, in order.
fn answer(
    batch: &[NewTurn<'_>],
    plans: Vec<Plan>,
    mut created: HashMap<Uuid, (DateTime<Utc>, Event)>,
) -> Vec<Result<Submitted>> {
    let mut outcomes: Vec<Result<Submitted>> = Vec::with_capacity(batch.len());
    for (new, plan) in batch.iter().zip(plans) {
        let outcome = match plan {
            Plan::Refused(err) => Err(err),
            Plan::Stored(turn) => Ok(Submitted {
                turn: *turn,
                created: false,
                event: None,
            }),
            Plan::SameAs(first) => match &outcomes[first] {
                Ok(original) => Ok(Submitted {
                    turn: original.turn.clone(),
                    created: false,
                    event: None,
                }),
                Err(Error::Quota(refusal)) => Err(Error::Quota(refusal.clone())),
                Err(_) => Err(Error::KeyReused),
            },
            Plan::Insert {
                id,
                job_id,
                seq,
                event_seq: _,
            } => match created.remove(&id) {
                Some((created_at, event)) => Ok(Submitted {
                    turn: queued_turn(new, id, seq, job_id, created_at),
                    created: true,
                    event: Some(event),
                }),
                None => Err(Error::Database(sqlx::Error::RowNotFound)),
            },
        };
        outcomes.push(outcome);
    }
    outcomes
}

/// The turn just inserted for `new`, as stored.
fn queued_turn(
    new: &NewTurn<'_>,
    id: Uuid,
    seq: i64,
    job_id: String,
    created_at: DateTime<Utc>,
) -> Turn {
    Turn {
        id,
        session_id: new.session_id,
        seq,
        author_user_id: new.author.as_str().to_owned(),
        status: TurnStatus::Queued,
        input: new.input.to_owned(),
        output: None,
        error: None,
        state_change: None,
        usage: None,
        job_id,
        idempotency_key: new.idempotency_key.map(str::to_owned),
        created_at,
        started_at: None,
        completed_at: None,
    }
}

/// The columns of a batch insert, one element per new turn.
#[derive(Default)]
struct InsertColumns {
    ids: Vec<Uuid>,
    sessions: Vec<Uuid>,
    seqs: Vec<i64>,
    authors: Vec<String>,
    inputs: Vec<String>,
    job_ids: Vec<String>,
    keys: Vec<Option<String>>,
    max_attempts: Vec<i32>,
    payloads: Vec<Vec<u8>>,
    event_seqs: Vec<i64>,
}

impl InsertColumns {
    fn push(
        &mut self,
        new: &NewTurn<'_>,
        id: Uuid,
        job_id: &str,
        seq: i64,
        event_seq: i64,
    ) -> Result<()> {
        self.payloads.push(
            serde_json::to_vec(&TurnJob {
                turn_id: id,
                session_id: new.session_id,
            })
            .map_err(jobs::Error::from)?,
        );
        self.ids.push(id);
        self.sessions.push(new.session_id);
        self.seqs.push(seq);
        self.authors.push(new.author.as_str().to_owned());
        self.inputs.push(new.input.to_owned());
        self.job_ids.push(job_id.to_owned());
        self.keys.push(new.idempotency_key.map(str::to_owned));
        self.max_attempts
            .push(i32::try_from(new.max_attempts).unwrap_or(i32::MAX));
        self.event_seqs.push(event_seq);
        Ok(())
    }
}

/// Parameters: per new turn `$1` id, `$2` session, `$3` seq, `$4` author,
/// `$5` input, `$6` job id, `$7` idempotency key, `$8` max attempts, `$9`
/// job payload, `$10` event seq; per session touched `$11` id, `$12` its
/// first new seq, `$13` its next turn seq and `$14` next event seq after
/// the batch; `$15` the turn buckets charged and `$16` the seconds each
/// moves on. The session rows are locked by the caller's transaction. A
/// turn's `created_at` is `now()`, the transaction's time, as its column
/// default is; no two CTEs are joined (see `steps` for why).
static SUBMIT_MANY_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH n AS (
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::text[],
                                  $6::text[], $7::text[], $8::int[], $9::bytea[], $10::bigint[])
                 AS n(id, session_id, seq, author, input, job_id, idempotency_key, max_attempts,
                      payload, event_seq)
         ),
         turn AS (
             INSERT INTO turns (id, session_id, seq, author_user_id, input, job_id,
                                idempotency_key, max_attempts, run_at)
             SELECT id, session_id, seq, author, input, job_id, idempotency_key, max_attempts,
                    now()
             FROM n
         ),
         job AS ({job}),
         event AS (
             INSERT INTO session_events (session_id, seq, type, data)
             SELECT session_id, event_seq, 'turn.queued', jsonb_build_object(
                 'turn_id', id, 'seq', seq, 'author_user_id', author, 'input', input,
                 'job_id', job_id)
             FROM n
             RETURNING session_id, seq, at, data
         ),
         queue AS (
             INSERT INTO session_queue (session_id, from_seq)
             SELECT * FROM unnest($11::uuid[], $12::bigint[])
             ON CONFLICT (session_id) DO NOTHING
         ),
         buckets AS (
             INSERT INTO quota_buckets AS b (key, tat)
             SELECT k, now() + make_interval(secs => secs)
             FROM unnest($15::text[], $16::float8[]) AS u(k, secs)
             ON CONFLICT (key) DO UPDATE SET tat = greatest(b.tat, now()) + (EXCLUDED.tat - now())
         ),
         counters AS (
             UPDATE campaign_sessions c
             SET next_turn_seq = u.next_turn, next_event_seq = u.next_event,
                 last_active_at = now()
             FROM unnest($11::uuid[], $13::bigint[], $14::bigint[]) AS u(id, next_turn, next_event)
             WHERE c.id = u.id
         )
         SELECT (data ->> 'turn_id')::uuid AS id, now() AS created_at, session_id,
                seq AS event_seq, at AS event_at, data AS event_data
         FROM event",
        job = jobs::sql::insert_pending(
            &TurnJob::SPEC,
            "n",
            "n.job_id",
            "n.payload",
            "n.max_attempts"
        ),
    )
});
