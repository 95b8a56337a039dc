//! Group commit for turn submissions: concurrent requests share a
//! transaction.
//!
//! Every submission must be durable before its 202 is sent, and on our
//! 2-core machine a commit costs about a quarter of a millisecond of CPU
//! whatever it carries. Submitted one by one, busy API processes spend
//! most of Postgres on commits. The [`Intake`] takes the submissions of all
//! of a process's requests: a lone one goes through [`super::submit()`] (one
//! statement), and whatever queued up while a batch was in Postgres goes
//! through [`super::submit_many`] together. Each request gets its own
//! answer; a refusal (not a member, archived, key reused) affects only its
//! request. After commit the intake publishes the new `turn.queued` events
//! and wakes the workers, once per batch. Members' quotas are checked in
//! the batch's transaction (`submit_many`), so a lone submission takes the
//! one-statement path only when every turn quota is off.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;

use super::{Error, NewTurn, Result, Submitted, TurnJob};
use crate::events::{Event, EventPublisher};
use crate::identity::UserId;
use crate::jobs::Job as _;
use crate::quotas::Quotas;
use crate::wakeups;

/// Most submissions in one transaction.
const MAX_BATCH: usize = 256;
/// Most transactions in Postgres at once.
const IN_FLIGHT: usize = 4;

/// A submission waiting for its batch.
struct Request {
    session_id: Uuid,
    author: UserId,
    input: String,
    idempotency_key: Option<String>,
    max_attempts: u32,
    reply: oneshot::Sender<Result<Submitted>>,
}

/// Takes submissions and commits them in batches. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Intake {
    tx: mpsc::UnboundedSender<Request>,
    /// Set when the process starts shutting down: new submissions are
    /// refused as unavailable (the client retries elsewhere with its
    /// Idempotency-Key); batches already taken are committed and answered.
    closed: Arc<AtomicBool>,
}

impl Intake {
    /// Starts the batching task (inside a Tokio runtime). It stops when the
    /// last clone is dropped.
    /// Members' `quotas` are checked where each turn is written.
    pub fn start(
        pool: sqlx::PgPool,
        events: EventPublisher,
        wake: wakeups::Publisher,
        quotas: Quotas,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, events, wake, quotas, rx));
        Self {
            tx,
            closed: Arc::default(),
        }
    }

    /// Refuses every submission from now on (at shutdown).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Submits `new` with whatever else is waiting; answers once committed,
    /// its event handed to the publisher and the workers woken.
    pub async fn submit(&self, new: NewTurn<'_>) -> Result<Submitted> {
        let stopped = || Error::Unavailable("the API is shutting down; try again");
        if self.closed.load(Ordering::SeqCst) {
            return Err(stopped());
        }
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request {
                session_id: new.session_id,
                author: new.author.clone(),
                input: new.input.to_owned(),
                idempotency_key: new.idempotency_key.map(str::to_owned),
                max_attempts: new.max_attempts,
                reply,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(
    pool: sqlx::PgPool,
    events: EventPublisher,
    wake: wakeups::Publisher,
    quotas: Quotas,
    mut rx: mpsc::UnboundedReceiver<Request>,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::new();
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let (pool, events, wake) = (pool.clone(), events.clone(), wake.clone());
        let limits = quotas.values().turns();
        tokio::spawn(async move {
            commit(&pool, &events, &wake, limits, batch).await;
            drop(permit);
        });
    }
}

async fn commit(
    pool: &sqlx::PgPool,
    events: &EventPublisher,
    wake: &wakeups::Publisher,
    limits: crate::quotas::TurnQuotas,
    batch: Vec<Request>,
) {
    let outcomes = {
        let news: Vec<NewTurn<'_>> = batch
            .iter()
            .map(|r| NewTurn {
                session_id: r.session_id,
                author: &r.author,
                input: &r.input,
                idempotency_key: r.idempotency_key.as_deref(),
                max_attempts: r.max_attempts,
            })
            .collect();
        // A lone submission is one statement when no limit needs reading.
        if let ([one], false) = (news.as_slice(), limits.any()) {
            vec![super::retrying(|| super::submit(pool, *one)).await]
        } else {
            match super::retrying(|| super::submit_many(pool, &news, limits)).await {
                Ok(outcomes) => outcomes,
                Err(err) => {
                    tracing::warn!(error = %err, turns = news.len(), "a batch of submissions failed");
                    // sqlx's errors are not Clone: every submitter gets
                    // the failure's class (unavailable: 503 with
                    // Retry-After; otherwise its text).
                    let unavailable =
                        matches!(&err, Error::Database(db) if crate::db::is_unavailable(db));
                    let reason = err.to_string();
                    news.iter()
                        .map(|_| {
                            Err(if unavailable {
                                Error::Unavailable(
                                    "the database is unavailable right now; retry shortly",
                                )
                            } else {
                                Error::Database(sqlx::Error::Protocol(reason.clone()))
                            })
                        })
                        .collect::<Vec<Result<Submitted>>>()
                }
            }
        }
    };
    // One range of events per session and statement (see `events`).
    let mut by_session: BTreeMap<Uuid, Vec<Event>> = BTreeMap::new();
    for outcome in outcomes.iter().flatten() {
        if let Some(event) = &outcome.event {
            by_session
                .entry(event.session_id)
                .or_default()
                .push(event.clone());
        }
    }
    let any_new = !by_session.is_empty();
    for (_, mut group) in by_session {
        group.sort_by_key(|e| e.seq);
        events.events(group);
    }
    if any_new {
        wake.announce(TurnJob::SPEC.kind);
    }
    for (request, outcome) in batch.into_iter().zip(outcomes) {
        let _ = request.reply.send(outcome);
    }
}
