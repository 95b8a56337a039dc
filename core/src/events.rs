//! The durable event log of a campaign session, and how events reach the
//! bus ([`crate::bus`]: Redis in production, in process under `dev`).
//!
//! Every change to a session appends an [`Event`] in the same transaction as
//! the change, numbered per session (`seq` = previous + 1, allocated under
//! the session row's lock). A statement trigger copies the key of every new
//! event into `event_outbox` in that same transaction (migration
//! `..._event_outbox`). After commit the writer hands the event to an
//! [`EventPublisher`], which publishes it on the session's bus channel
//! ([`channel`]) and then deletes its outbox key. If Redis is down, or the
//! writer dies between commit and publish, the change is committed anyway
//! and its key stays in the outbox: the relay ([`relay_once`], run under a
//! lease by one process) publishes whatever stayed there longer than its
//! grace period, so no committed event is lost to subscribers. Subscribers
//! treat the bus as an at-most-once transport: they detect gaps by `seq` and
//! read missing events from Postgres, which is the source of truth.
//!
//! Streamed model output travels as ephemeral [`Delta`]s through the bus
//! only: not stored, no `seq`.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::bus::{Bus, BusError};
use crate::leases::Lease;
use crate::metrics as m;

/// The bus channel of a session's events and deltas.
pub fn channel(session_id: Uuid) -> String {
    format!("questboard:session:{session_id}:events")
}

/// The prefix of every session channel (for parsing and pattern subscriptions).
pub const CHANNEL_PREFIX: &str = "questboard:session:";

/// A durable session event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Event {
    /// Position in the session's log, from 1, without gaps.
    pub seq: i64,
    /// Dotted type: `turn.queued`, `turn.started`, `turn.completed`,
    /// `turn.failed`, `turn.retrying`, `turn.requeued`, `member.joined`,
    /// `member.left`, `member.removed`, `session.updated`, `session.archived`.
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    pub kind: String,
    /// The session.
    pub session_id: Uuid,
    /// When it happened (database clock).
    pub at: DateTime<Utc>,
    /// Type-specific details.
    #[schema(value_type = Object)]
    pub data: Value,
}

/// An ephemeral chunk of a streamed reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// Always `turn.delta`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The session.
    pub session_id: Uuid,
    /// The turn being answered.
    pub turn_id: Uuid,
    /// The attempt this chunk belongs to, from 1: a retried turn streams
    /// its reply again from index 0 under the next attempt, and a client
    /// joining chunks drops what it had of an earlier attempt.
    pub attempt: i32,
    /// The seq of this attempt's `turn.started` event. A socket delivers a
    /// chunk only after every event up to this one (so a client never sees
    /// a reply ahead of the events before it, such as its own removal).
    pub started_seq: i64,
    /// Chunk number within this attempt, from 0.
    pub index: u32,
    /// The text.
    pub text: String,
}

impl Event {
    /// Whether this event ends `user`'s access to the session's live feed:
    /// their removal, their leaving, or the session's archiving (which ends
    /// everyone's). A socket closes (4003) once it has delivered it.
    pub fn ends_access_of(&self, user: &str) -> bool {
        match self.kind.as_str() {
            "member.removed" | "member.left" => self.data["user_id"].as_str() == Some(user),
            "session.archived" => true,
            _ => false,
        }
    }
}

/// What travels on a session channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Message {
    /// A durable event (has `seq`).
    Event(Event),
    /// A streamed chunk (no `seq`).
    Delta(Delta),
}

/// Appends an event to the session's log on `conn` (pass the transaction of
/// the change). Locks the session row until commit.
pub async fn append(
    conn: &mut PgConnection,
    session_id: Uuid,
    kind: &str,
    data: Value,
) -> sqlx::Result<Event> {
    sqlx::query_as::<_, Event>(
        "WITH seqs AS (
             UPDATE campaign_sessions SET next_event_seq = next_event_seq + 1
             WHERE id = $1 RETURNING next_event_seq - 1 AS seq
         )
         INSERT INTO session_events (session_id, seq, type, data)
         SELECT $1, seq, $2, $3 FROM seqs
         RETURNING seq, type, session_id, at, data",
    )
    .bind(session_id)
    .bind(kind)
    .bind(data)
    .fetch_one(&mut *conn)
    .await
}

/// Where a session's log starts and ends for a reader: every event with
/// `seq <= pruned_through` may be gone (retention), and `last` is the
/// newest seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizon {
    /// Events up to this seq were pruned.
    pub pruned_through: i64,
    /// The session's newest event.
    pub last: i64,
}

impl Horizon {
    /// Whether a reader that saw everything up to `after_seq` missed
    /// events that no longer exist: it must refetch state and resume from
    /// [`Horizon::last`] (the `reset` message of sockets and the event list).
    pub fn must_reset(&self, after_seq: i64) -> bool {
        after_seq < self.pruned_through
    }
}

/// The event columns of a `LEFT JOIN session_events` (all null when the
/// outer row has no event).
type JoinedEvent = (
    Option<i64>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<Value>,
);

/// A row of two leading columns (the first of type `A`, the second an
/// `i64`) and the [`JoinedEvent`] columns.
type JoinedRow<A> = (
    A,
    i64,
    Option<i64>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<Value>,
);

/// The event of `session_id` a left-joined row carries, if any.
fn joined(session_id: Uuid, (seq, kind, at, data): JoinedEvent) -> Option<Event> {
    Some(Event {
        seq: seq?,
        kind: kind?,
        session_id,
        at: at?,
        data: data?,
    })
}

/// Events of a session with `seq > after_seq`, in order, with the
/// session's [`Horizon`], in one statement (a reader resuming needs both:
/// the events, and whether some it asked for were pruned). None: no such
/// session.
pub async fn replay_page(
    pool: &PgPool,
    session_id: Uuid,
    after_seq: i64,
    limit: i64,
) -> sqlx::Result<Option<(Horizon, Vec<Event>)>> {
    let rows: Vec<JoinedRow<i64>> = sqlx::query_as(
        "SELECT c.events_pruned_through, c.next_event_seq - 1, e.seq, e.type, e.at, e.data
         FROM campaign_sessions c
         LEFT JOIN LATERAL (
             SELECT seq, type, at, data FROM session_events
             WHERE session_id = c.id AND seq > $2 ORDER BY seq LIMIT $3
         ) e ON true
         WHERE c.id = $1
         ORDER BY e.seq",
    )
    .bind(session_id)
    .bind(after_seq)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let Some(&(pruned_through, last, ..)) = rows.first() else {
        return Ok(None);
    };
    let events = rows
        .into_iter()
        .filter_map(|(_, _, seq, kind, at, data)| joined(session_id, (seq, kind, at, data)))
        .collect();
    Ok(Some((
        Horizon {
            pruned_through,
            last,
        },
        events,
    )))
}

/// Sessions after `after` (in id order, at most `limit` looked at) whose
/// oldest kept event was written before `before`, with how far each was
/// pruned; and where to go on (None once a batch came back short). One
/// primary-key probe per session: a session's events are appended in time
/// order, so its first kept event is its oldest.
pub async fn sessions_with_old_events(
    pool: &PgPool,
    after: Uuid,
    before: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<(Vec<(Uuid, i64)>, Option<Uuid>)> {
    let rows: Vec<(Uuid, i64, bool)> = sqlx::query_as(
        "SELECT c.id, c.events_pruned_through,
                EXISTS (SELECT 1 FROM session_events e
                        WHERE e.session_id = c.id AND e.seq = c.events_pruned_through + 1
                          AND e.at < $2)
         FROM campaign_sessions c WHERE c.id > $1 ORDER BY c.id LIMIT $3",
    )
    .bind(after)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let next = if rows.len() as i64 >= limit {
        rows.last().map(|r| r.0)
    } else {
        None
    };
    Ok((
        rows.into_iter()
            .filter(|r| r.2)
            .map(|(id, pruned, _)| (id, pruned))
            .collect(),
        next,
    ))
}

/// Deletes (or with `dry_run` counts) up to `limit` of the session's
/// events after `pruned_through` written before `before`, and moves the
/// session's `events_pruned_through` to the last one deleted, in one
/// statement (readers see both or neither). Returns how many and the new
/// mark.
pub async fn prune_session(
    pool: &PgPool,
    session_id: Uuid,
    pruned_through: i64,
    before: DateTime<Utc>,
    limit: i64,
    dry_run: bool,
) -> sqlx::Result<(u64, i64)> {
    let sql = if dry_run {
        "SELECT count(*), coalesce(max(seq), $2) FROM session_events
         WHERE session_id = $1 AND seq > $2 AND seq <= $2 + $4 AND at < $3"
    } else {
        "WITH gone AS (
             DELETE FROM session_events
             WHERE session_id = $1 AND seq > $2 AND seq <= $2 + $4 AND at < $3
             RETURNING seq
         ),
         marked AS (
             UPDATE campaign_sessions c
             SET events_pruned_through = greatest(c.events_pruned_through,
                                                  (SELECT max(seq) FROM gone))
             WHERE c.id = $1 AND EXISTS (SELECT 1 FROM gone)
         )
         SELECT count(*), coalesce(max(seq), $2) FROM gone"
    };
    let (count, mark): (i64, i64) = sqlx::query_as(sql)
        .bind(session_id)
        .bind(pruned_through)
        .bind(before)
        .bind(limit)
        .fetch_one(pool)
        .await?;
    Ok((count as u64, mark))
}

/// Deletes up to `limit` events of a session being deleted, with their
/// outbox ranges once none are left. Returns how many events went.
pub async fn delete_session_chunk(
    pool: &PgPool,
    session_id: Uuid,
    limit: i64,
) -> sqlx::Result<u64> {
    let (count,): (i64,) = sqlx::query_as(
        "WITH doomed AS (
             SELECT seq FROM session_events WHERE session_id = $1 ORDER BY seq LIMIT $2
         ),
         gone AS (
             DELETE FROM session_events e USING doomed d
             WHERE e.session_id = $1 AND e.seq = d.seq RETURNING e.seq
         )
         SELECT count(*) FROM gone",
    )
    .bind(session_id)
    .bind(limit)
    .fetch_one(pool)
    .await?;
    if count == 0 {
        sqlx::query("DELETE FROM event_outbox WHERE session_id = $1")
            .bind(session_id)
            .execute(pool)
            .await?;
    }
    Ok(count as u64)
}

/// Publishes events and deltas on the bus from a background task, in the
/// order handed over, and clears published events from the outbox in
/// batches. Never blocks or fails its caller: what cannot be published is
/// left to the relay.
#[derive(Clone, Debug)]
pub struct EventPublisher {
    tx: Option<mpsc::UnboundedSender<Outgoing>>,
}

/// A message on its way to the bus.
#[derive(Debug)]
struct Outgoing {
    message: Message,
}

impl EventPublisher {
    /// Starts the publishing task on `bus` (inside a Tokio runtime).
    pub fn start(bus: Bus, pool: PgPool) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(publish_loop(bus, pool, rx));
        Self { tx: Some(tx) }
    }

    /// A publisher that drops everything (the relay publishes events).
    pub fn disabled() -> Self {
        Self { tx: None }
    }

    /// Publishes the events a committed transaction appended, in seq
    /// order. Each is cleared from the outbox once published: the outbox
    /// keeps one range per statement, and a transaction of several
    /// statements (a reply with its images, an approval) has several
    /// ranges, each ending at one of these events.
    pub fn events(&self, events: impl IntoIterator<Item = Event>) {
        if let Some(tx) = &self.tx {
            for event in events {
                let _ = tx.send(Outgoing {
                    message: Message::Event(event),
                });
            }
        }
    }

    /// Publishes a streamed chunk.
    pub fn delta(&self, delta: Delta) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Outgoing {
                message: Message::Delta(delta),
            });
        }
    }
}

/// How often published events are cleared from the outbox. Clearing is
/// bookkeeping for the relay, which only looks at events older than its
/// grace period (`QB_RELAY_INTERVAL_MS`, at least 50 ms): one DELETE per
/// interval instead of one per publish batch.
const MARK_EVERY: Duration = Duration::from_millis(100);

async fn publish_loop(bus: Bus, pool: PgPool, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    let mut batch = Vec::new();
    let mut published: (Vec<Uuid>, Vec<i64>) = (Vec::new(), Vec::new());
    let mut mark = tokio::time::interval(MARK_EVERY);
    loop {
        tokio::select! {
            received = rx.recv_many(&mut batch, 256) => {
                if received == 0 {
                    break;
                }
                publish_batch(&bus, &batch, &mut published).await;
                batch.clear();
            }
            _ = mark.tick(), if !published.0.is_empty() => {
                let (sessions, seqs) = std::mem::take(&mut published);
                if let Err(err) = clear_published(&pool, &sessions, &seqs).await {
                    tracing::warn!(error = %err, "clearing published events from the outbox failed; the relay may publish them again");
                }
            }
        }
    }
    if !published.0.is_empty() {
        let _ = clear_published(&pool, &published.0, &published.1).await;
    }
}

async fn publish_batch(bus: &Bus, batch: &[Outgoing], published: &mut (Vec<Uuid>, Vec<i64>)) {
    let mut messages = Vec::with_capacity(batch.len());
    for Outgoing { message, .. } in batch {
        let session = match message {
            Message::Event(e) => e.session_id,
            Message::Delta(d) => d.session_id,
        };
        let Ok(payload) = serde_json::to_vec(message) else {
            continue;
        };
        messages.push((channel(session), Bytes::from(payload)));
    }
    match bus.publish(&messages).await {
        Ok(()) => {
            let mut events = 0;
            for outgoing in batch {
                if let Message::Event(e) = &outgoing.message {
                    events += 1;
                    published.0.push(e.session_id);
                    published.1.push(e.seq);
                }
            }
            metrics::counter!(m::EVENTS_PUBLISHED_TOTAL, "path" => "direct").increment(events);
        }
        Err(err) => {
            metrics::counter!(m::EVENTS_PUBLISH_FAILURES_TOTAL).increment(1);
            tracing::warn!(error = %err, count = batch.len(), "publishing events failed; the relay will publish them");
        }
    }
}

/// Deletes the outbox ranges ending at each (session, seq) (a seq that
/// ends no range, in the middle of a statement's events, deletes nothing).
async fn clear_published(pool: &PgPool, sessions: &[Uuid], seqs: &[i64]) -> sqlx::Result<()> {
    clear_ranges(pool, sessions, seqs, None).await
}

/// Deletes the outbox ranges ending at each (session, seq); with `fence`,
/// only while that lease is live (the relay's writes are fenced by its
/// leader lease).
async fn clear_ranges(
    pool: &PgPool,
    sessions: &[Uuid],
    seqs: &[i64],
    fence: Option<&Lease>,
) -> sqlx::Result<()> {
    sqlx::query(
        "DELETE FROM event_outbox o
         USING unnest($1::uuid[], $2::bigint[]) AS p(session_id, seq)
         WHERE o.session_id = p.session_id AND o.to_seq = p.seq
           AND ($3::bigint IS NULL OR EXISTS (
               SELECT 1 FROM leases l
               WHERE l.scope = $4 AND l.key = $5 AND l.token = $3
                 AND l.holder IS NOT NULL AND l.expires_at > clock_timestamp()))",
    )
    .bind(sessions)
    .bind(seqs)
    .bind(fence.map(|l| l.token))
    .bind(fence.map(|l| l.scope.as_str()))
    .bind(fence.map(|l| l.key.as_str()))
    .execute(pool)
    .await?;
    Ok(())
}

/// Publishes, in order, the events of up to `limit` outbox ranges written
/// more than `grace` ago and still there (the bus was down, or a process died
/// between commit and publish), then clears those ranges. Returns how many
/// events were published. Run by one process at a time, under the
/// `relay/events` leader lease `lease`, which fences the clearing.
pub async fn relay_once(
    pool: &PgPool,
    bus: &Bus,
    lease: &Lease,
    grace: Duration,
    limit: i64,
) -> Result<usize, RelayError> {
    let rows: Vec<JoinedRow<Uuid>> = sqlx::query_as(
        "WITH ranges AS (
             SELECT session_id, from_seq, to_seq FROM event_outbox
             WHERE at < clock_timestamp() - make_interval(secs => $1)
             ORDER BY at LIMIT $2
         )
         SELECT r.session_id, r.to_seq, e.seq, e.type, e.at, e.data
         FROM ranges r
         LEFT JOIN session_events e ON e.session_id = r.session_id
                                   AND e.seq BETWEEN r.from_seq AND r.to_seq
         ORDER BY r.session_id, e.seq",
    )
    .bind(grace.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await?;
    // Every range read is cleared once published (a range whose events are
    // gone with their session is cleared as well).
    let mut ranges: Vec<(Uuid, i64)> = rows.iter().map(|r| (r.0, r.1)).collect();
    ranges.dedup();
    let backlog: Vec<Event> = rows
        .into_iter()
        .filter_map(|(session_id, _, seq, kind, at, data)| {
            joined(session_id, (seq, kind, at, data))
        })
        .collect();
    // Only ranges older than the grace period count: younger ones are
    // normally on their way (the publisher clears ranges every 100 ms).
    let pending: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(to_seq - from_seq + 1), 0)::bigint FROM event_outbox
         WHERE at < clock_timestamp() - make_interval(secs => $1)",
    )
    .bind(grace.as_secs_f64())
    .fetch_one(pool)
    .await?;
    metrics::gauge!(m::RELAY_BACKLOG).set(pending as f64);
    if ranges.is_empty() {
        return Ok(0);
    }
    let mut messages = Vec::with_capacity(backlog.len());
    for event in &backlog {
        let payload = serde_json::to_vec(&Message::Event(event.clone()))?;
        messages.push((channel(event.session_id), Bytes::from(payload)));
    }
    if !messages.is_empty() {
        bus.publish(&messages).await?;
    }
    let (sessions, ends): (Vec<Uuid>, Vec<i64>) = ranges.into_iter().unzip();
    clear_ranges(pool, &sessions, &ends, Some(lease)).await?;
    metrics::counter!(m::EVENTS_PUBLISHED_TOTAL, "path" => "relay").increment(backlog.len() as u64);
    Ok(backlog.len())
}

/// Why a relay pass failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Postgres failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// Serialising failed.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// The scope and key of the relay's leader lease.
pub const RELAY_LEASE: (&str, &str) = ("relay", "events");

/// Runs the relay until the task is dropped: every `interval`, the process
/// leading `relay/events` ([`crate::leases::Leadership`]) publishes
/// committed events still in the outbox after `grace`. Every API and
/// worker process runs this; the lease makes one of them do the work
/// (duplicates would be harmless, since subscribers drop seqs they have
/// seen, but wasteful).
pub async fn run_relay(
    pool: PgPool,
    bus: Bus,
    holder: String,
    interval: Duration,
    grace: Duration,
) {
    let leadership = crate::leases::Leadership::start(
        pool.clone(),
        RELAY_LEASE.0,
        RELAY_LEASE.1,
        holder,
        interval * 5,
    );
    loop {
        tokio::time::sleep(interval).await;
        let Some(lease) = leadership.current() else {
            continue;
        };
        match relay_once(&pool, &bus, &lease, grace, 1000).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                published = n,
                "relay published events that had missed the bus"
            ),
            Err(err) => tracing::debug!(error = %err, "relay pass failed; will retry"),
        }
    }
}
