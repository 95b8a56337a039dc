//! The durable event log of a campaign session, and how events reach Redis.
//!
//! Every change to a session appends an [`Event`] in the same transaction as
//! the change, numbered per session (`seq` = previous + 1, allocated under
//! the session row's lock). After commit the writer hands the event to an
//! [`EventPublisher`], which PUBLISHes it on the session's Redis channel
//! ([`channel`]) and then marks it published. If Redis is down the change
//! still commits; the relay ([`relay_once`], run under a lease by one
//! process) publishes whatever stayed unpublished, so no committed event is
//! lost to subscribers. Subscribers treat Redis as an at-most-once
//! transport: they detect gaps by `seq` and read missing events from
//! Postgres, which is the source of truth.
//!
//! Streamed model output travels as ephemeral [`Delta`]s through Redis
//! only: not stored, no `seq`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::metrics as m;

/// The Redis channel of a session's events and deltas.
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
    /// Chunk number within this attempt, from 0.
    pub index: u32,
    /// The text.
    pub text: String,
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

/// SQL CTEs appending one event inside a larger single statement: `seqs`
/// then `event`, guarded by `guard`. `session`, `kind` and `data` are SQL
/// expressions (parameters or columns of earlier CTEs).
pub fn append_ctes(session: &str, kind: &str, data: &str, guard: &str) -> String {
    format!(
        "seqs AS (UPDATE campaign_sessions SET next_event_seq = next_event_seq + 1
                  WHERE id = {session} AND {guard} RETURNING next_event_seq - 1 AS seq),
         event AS (INSERT INTO session_events (session_id, seq, type, data)
                   SELECT {session}, seq, {kind}, {data} FROM seqs
                   RETURNING seq, type, session_id, at, data)"
    )
}

/// Events of a session with `seq > after_seq`, in order.
pub async fn list(
    pool: &PgPool,
    session_id: Uuid,
    after_seq: i64,
    limit: i64,
) -> sqlx::Result<Vec<Event>> {
    sqlx::query_as::<_, Event>(
        "SELECT seq, type, session_id, at, data FROM session_events
         WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(session_id)
    .bind(after_seq)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Publishes events and deltas on Redis from a background task, in the
/// order handed over, and marks published events in batches. Never blocks
/// or fails its caller: what cannot be published is left to the relay.
#[derive(Clone, Debug)]
pub struct EventPublisher {
    tx: Option<mpsc::UnboundedSender<Message>>,
}

impl EventPublisher {
    /// Starts the publishing task (inside a Tokio runtime).
    pub fn start(client: redis::Client, pool: PgPool) -> Self {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1);
        let conn = match ConnectionManager::new_lazy_with_config(client, config) {
            Ok(conn) => conn,
            Err(err) => {
                tracing::warn!(error = %err, "event publishing disabled; the relay will publish");
                return Self { tx: None };
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(publish_loop(conn, pool, rx));
        Self { tx: Some(tx) }
    }

    /// A publisher that drops everything (the relay publishes events).
    pub fn disabled() -> Self {
        Self { tx: None }
    }

    /// Publishes committed events, in order.
    pub fn events(&self, events: impl IntoIterator<Item = Event>) {
        if let Some(tx) = &self.tx {
            for event in events {
                let _ = tx.send(Message::Event(event));
            }
        }
    }

    /// Publishes a streamed chunk.
    pub fn delta(&self, delta: Delta) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Message::Delta(delta));
        }
    }
}

/// How often published events are marked in Postgres. Marking is
/// bookkeeping for the relay, which only looks at events older than its
/// grace period (`QB_RELAY_INTERVAL_MS`, at least 50 ms): one UPDATE per
/// interval instead of one per publish batch.
const MARK_EVERY: Duration = Duration::from_millis(100);

async fn publish_loop(
    mut conn: ConnectionManager,
    pool: PgPool,
    mut rx: mpsc::UnboundedReceiver<Message>,
) {
    let mut batch = Vec::new();
    let mut published: (Vec<Uuid>, Vec<i64>) = (Vec::new(), Vec::new());
    let mut mark = tokio::time::interval(MARK_EVERY);
    loop {
        tokio::select! {
            received = rx.recv_many(&mut batch, 256) => {
                if received == 0 {
                    break;
                }
                publish_batch(&mut conn, &batch, &mut published).await;
                batch.clear();
            }
            _ = mark.tick(), if !published.0.is_empty() => {
                let (sessions, seqs) = std::mem::take(&mut published);
                if let Err(err) = mark_published(&pool, &sessions, &seqs).await {
                    tracing::warn!(error = %err, "marking events published failed; the relay may publish them again");
                }
            }
        }
    }
    if !published.0.is_empty() {
        let _ = mark_published(&pool, &published.0, &published.1).await;
    }
}

async fn publish_batch(
    conn: &mut ConnectionManager,
    batch: &[Message],
    published: &mut (Vec<Uuid>, Vec<i64>),
) {
    let mut pipe = redis::pipe();
    for message in batch {
        let session = match message {
            Message::Event(e) => e.session_id,
            Message::Delta(d) => d.session_id,
        };
        let Ok(payload) = serde_json::to_string(message) else {
            continue;
        };
        pipe.cmd("PUBLISH")
            .arg(channel(session))
            .arg(payload)
            .ignore();
    }
    match pipe.query_async::<()>(conn).await {
        Ok(()) => {
            let before = published.0.len();
            for message in batch {
                if let Message::Event(e) = message {
                    published.0.push(e.session_id);
                    published.1.push(e.seq);
                }
            }
            metrics::counter!(m::EVENTS_PUBLISHED_TOTAL, "path" => "direct")
                .increment((published.0.len() - before) as u64);
        }
        Err(err) => {
            metrics::counter!(m::EVENTS_PUBLISH_FAILURES_TOTAL).increment(1);
            tracing::warn!(error = %err, count = batch.len(), "publishing events failed; the relay will publish them");
        }
    }
}

async fn mark_published(pool: &PgPool, sessions: &[Uuid], seqs: &[i64]) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE session_events e SET published = true
         FROM unnest($1::uuid[], $2::bigint[]) AS p(session_id, seq)
         WHERE e.session_id = p.session_id AND e.seq = p.seq AND NOT e.published",
    )
    .bind(sessions)
    .bind(seqs)
    .execute(pool)
    .await?;
    Ok(())
}

/// Publishes, in order, events that committed more than `grace` ago and
/// are still unpublished (Redis was down, or a process died between commit
/// and publish). Returns how many were published. Run by one process at a
/// time, under the `relay` lease.
pub async fn relay_once(
    pool: &PgPool,
    conn: &mut ConnectionManager,
    grace: Duration,
    limit: i64,
) -> Result<usize, RelayError> {
    let backlog: Vec<Event> = sqlx::query_as::<_, Event>(
        "SELECT seq, type, session_id, at, data FROM session_events
         WHERE NOT published AND at < clock_timestamp() - make_interval(secs => $1)
         ORDER BY session_id, seq LIMIT $2",
    )
    .bind(grace.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM session_events WHERE NOT published")
            .fetch_one(pool)
            .await?;
    metrics::gauge!(m::RELAY_BACKLOG).set(pending as f64);
    if backlog.is_empty() {
        return Ok(0);
    }
    let mut pipe = redis::pipe();
    for event in &backlog {
        let payload = serde_json::to_string(&Message::Event(event.clone()))?;
        pipe.cmd("PUBLISH")
            .arg(channel(event.session_id))
            .arg(payload)
            .ignore();
    }
    pipe.query_async::<()>(conn).await?;
    let (sessions, seqs): (Vec<Uuid>, Vec<i64>) =
        backlog.iter().map(|e| (e.session_id, e.seq)).unzip();
    mark_published(pool, &sessions, &seqs).await?;
    metrics::counter!(m::EVENTS_PUBLISHED_TOTAL, "path" => "relay").increment(backlog.len() as u64);
    Ok(backlog.len())
}

/// Why a relay pass failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Postgres failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// Redis failed.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    /// Serialising failed.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// Runs the relay until the task is dropped: every `interval`, the process
/// holding the `relay/events` lease publishes committed events still
/// unpublished after `grace`. Every API and worker process runs this; the
/// lease makes one of them do the work (duplicates would be harmless,
/// since subscribers drop seqs they have seen, but wasteful).
pub async fn run_relay(
    pool: PgPool,
    client: redis::Client,
    holder: String,
    interval: Duration,
    grace: Duration,
) {
    let ttl = interval * 5;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(1);
    let Ok(mut conn) = ConnectionManager::new_lazy_with_config(client, config) else {
        tracing::warn!("event relay disabled: REDIS_URL unusable");
        return;
    };
    let mut held: Option<crate::leases::Lease> = None;
    loop {
        tokio::time::sleep(interval).await;
        held = match held.take() {
            Some(lease) => match crate::leases::renew(&pool, &lease, ttl).await {
                Ok(true) => Some(lease),
                _ => None,
            },
            None => crate::leases::try_acquire(&pool, "relay", "events", &holder, ttl)
                .await
                .ok()
                .flatten()
                .map(|(lease, _)| lease),
        };
        if held.is_none() {
            continue;
        }
        match relay_once(&pool, &mut conn, grace, 1000).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                published = n,
                "relay published events that had missed Redis"
            ),
            Err(err) => tracing::debug!(error = %err, "relay pass failed; will retry"),
        }
    }
}
