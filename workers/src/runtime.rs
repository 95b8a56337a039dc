//! The worker runtime: claims campaign sessions that have work, holds their
//! lease while draining their turns in order, and shuts down gracefully.
//!
//! Why sessions and not single jobs: a session's turns must run one at a
//! time in `seq` order across every worker. So a worker slot takes a
//! session's lease ([`questboard_core::leases`]), runs that session's next
//! turns back to back (up to [`WorkerSettings::drain_limit`], then lets go
//! so other sessions get their turn), and releases it. A job whose session
//! is leased elsewhere never occupies a slot here: the claim skips it and
//! the holder drains it. Different sessions run in parallel up to
//! [`WorkerSettings::concurrency`].
//!
//! Wake-ups: whoever enqueues publishes on Redis
//! ([`questboard_core::wakeups`]); a subscriber task turns that into a
//! coalesced wake-up, so an idle worker picks new work up in milliseconds.
//! A short poll covers what no message announces (retries coming due,
//! expired leases of dead workers) and any message lost while Redis was away.
//!
//! Liveness: the lease is renewed every third of its TTL. A holder that
//! cannot renew stops; and whatever it still tries to write is refused by
//! the fencing check, so a paused or partitioned worker cannot overwrite
//! the work of the one that took over.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use questboard_core::leases::{self, Acquisition, Lease, SESSION_SCOPE};
use questboard_core::metrics as m;
use questboard_core::turns;
use sqlx::PgPool;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::jobs::{JobContext, turn};

/// How a worker behaves.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Sessions processed at once.
    pub concurrency: usize,
    /// Lease lifetime; renewed every third of it.
    pub lease_ttl: Duration,
    /// How long shutdown waits for in-flight turns before handing them back.
    pub shutdown_grace: Duration,
    /// How often an idle worker looks for work no notification announced.
    pub poll_interval: Duration,
    /// Most turns drained from one session before letting others go first.
    pub drain_limit: usize,
    /// How often queue depth is sampled into metrics.
    pub sample_interval: Duration,
    /// Redis, for wake-ups when jobs are enqueued (None: poll only).
    pub wakeups: Option<redis::Client>,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 8,
            lease_ttl: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            poll_interval: Duration::from_millis(250),
            drain_limit: 64,
            sample_interval: Duration::from_secs(5),
            wakeups: None,
        }
    }
}

/// What stops a worker from running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed at startup.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A worker process's runtime.
pub struct Worker {
    id: String,
    ctx: JobContext,
    settings: WorkerSettings,
}

impl Worker {
    /// A worker with a fresh, unique holder id.
    pub fn new(ctx: JobContext, settings: WorkerSettings) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".to_owned());
        let id = format!(
            "{host}-{}-{}",
            std::process::id(),
            &Uuid::new_v4().simple().to_string()[..8]
        );
        Self { id, ctx, settings }
    }

    /// The holder id this worker writes into leases.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Runs until `shutdown` completes, then stops claiming, lets in-flight
    /// turns finish within the grace period, hands back the rest and
    /// releases every lease.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let wake = Arc::new(Notify::new());
        let listening = self
            .settings
            .wakeups
            .clone()
            .map(|client| tokio::spawn(forward_wakeups(client, wake.clone())));
        let sampling = tokio::spawn(sample_queue_depth(
            self.ctx.pool.clone(),
            self.settings.sample_interval,
        ));
        tracing::info!(worker = %self.id, concurrency = self.settings.concurrency, "worker started");

        let shared = Arc::new(Shared {
            id: self.id.clone(),
            ctx: self.ctx.clone(),
            settings: self.settings.clone(),
            stopping: AtomicBool::new(false),
            wake: wake.clone(),
        });
        let (interrupt_tx, interrupt_rx) = watch::channel(false);
        let slots = Arc::new(Semaphore::new(self.settings.concurrency.max(1)));
        let mut drains = JoinSet::new();
        tokio::pin!(shutdown);

        loop {
            // Fill free slots with claimable sessions.
            while let Ok(permit) = slots.clone().try_acquire_owned() {
                match shared.claim().await {
                    Ok(Some(lease)) => {
                        let shared = shared.clone();
                        let interrupt = interrupt_rx.clone();
                        drains.spawn(async move { shared.drain(lease, permit, interrupt).await });
                    }
                    Ok(None) => break,
                    Err(err) => {
                        tracing::warn!(error = %err, "claiming work failed; retrying shortly");
                        break;
                    }
                }
            }
            metrics::gauge!(m::WORKER_BUSY_SLOTS)
                .set((self.settings.concurrency.max(1) - slots.available_permits()) as f64);
            tokio::select! {
                () = &mut shutdown => break,
                () = wake.notified() => {}
                () = tokio::time::sleep(self.settings.poll_interval) => {}
                Some(joined) = drains.join_next(), if !drains.is_empty() => {
                    if let Err(err) = joined {
                        tracing::error!(error = %err, "a drain task panicked");
                    }
                }
            }
        }

        tracing::info!(worker = %self.id, in_flight = drains.len(), "worker stopping");
        shared.stopping.store(true, Ordering::SeqCst);
        let grace = tokio::time::sleep(self.settings.shutdown_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                next = drains.join_next() => if next.is_none() { break },
                () = &mut grace => {
                    tracing::warn!(in_flight = drains.len(), "grace period over: handing turns back");
                    let _ = interrupt_tx.send(true);
                    // Handing back is a couple of quick writes per drain.
                    let _ = tokio::time::timeout(Duration::from_secs(5), async {
                        while drains.join_next().await.is_some() {}
                    })
                    .await;
                    drains.abort_all();
                    break;
                }
            }
        }
        if let Some(listening) = listening {
            listening.abort();
        }
        sampling.abort();
        metrics::gauge!(m::WORKER_BUSY_SLOTS).set(0.0);
        tracing::info!(worker = %self.id, "worker stopped");
        Ok(())
    }
}

struct Shared {
    id: String,
    ctx: JobContext,
    settings: WorkerSettings,
    stopping: AtomicBool,
    wake: Arc<Notify>,
}

impl Shared {
    /// Takes the lease of one session with runnable work, if any.
    async fn claim(&self) -> Result<Option<Lease>, sqlx::Error> {
        let candidates = turns::claimable_sessions(&self.ctx.pool, 16)
            .await
            .map_err(|e| match e {
                turns::Error::Database(e) => e,
                other => sqlx::Error::Protocol(other.to_string()),
            })?;
        for session in candidates {
            let key = session.to_string();
            let acquired = leases::try_acquire(
                &self.ctx.pool,
                SESSION_SCOPE,
                &key,
                &self.id,
                self.settings.lease_ttl,
            )
            .await
            .map_err(|e| match e {
                leases::Error::Database(e) => e,
                other => sqlx::Error::Protocol(other.to_string()),
            })?;
            match acquired {
                Some((lease, how)) => {
                    metrics::counter!(m::LEASE_ACQUISITIONS_TOTAL, "scope" => SESSION_SCOPE, "outcome" => how.as_str())
                        .increment(1);
                    if how == Acquisition::TakenOver {
                        tracing::info!(session_id = %session, token = lease.token, "took over an expired session lease");
                    }
                    return Ok(Some(lease));
                }
                None => {
                    metrics::counter!(m::LEASE_ACQUISITIONS_TOTAL, "scope" => SESSION_SCOPE, "outcome" => "busy")
                        .increment(1);
                }
            }
        }
        Ok(None)
    }

    /// Runs the session's turns in order while the lease holds.
    async fn drain(
        self: Arc<Self>,
        lease: Lease,
        _permit: OwnedSemaphorePermit,
        mut interrupt: watch::Receiver<bool>,
    ) {
        let held_since = Instant::now();
        let lost = Arc::new(AtomicBool::new(false));
        let heartbeat = tokio::spawn(keep_alive(
            self.ctx.pool.clone(),
            lease.clone(),
            self.settings.lease_ttl,
            lost.clone(),
        ));
        let Ok(session_id) = lease.key.parse::<Uuid>() else {
            heartbeat.abort();
            return;
        };
        let mut drained = 0;
        let mut history = None;
        // Why the drain ends decides the session's place in the runnable index.
        let mut emptied = false;
        while drained < self.settings.drain_limit
            && !self.stopping.load(Ordering::SeqCst)
            && !lost.load(Ordering::SeqCst)
        {
            let next = async {
                let mut conn = self.ctx.pool.acquire().await?;
                turns::next_unfinished(&mut conn, session_id)
                    .await
                    .map_err(|e| match e {
                        turns::Error::Database(e) => e,
                        other => sqlx::Error::Protocol(other.to_string()),
                    })
            }
            .await;
            let next = match next {
                Ok(Some(next)) if next.due => next,
                Ok(Some(_)) => break,
                Ok(None) => {
                    emptied = true;
                    break;
                }
                Err(err) => {
                    tracing::warn!(%session_id, error = %err, "reading the next turn failed");
                    break;
                }
            };
            let interrupted = async {
                let _ = interrupt.wait_for(|stop| *stop).await;
            };
            match turn::run(&self.ctx, &next, &lease, &mut history, interrupted).await {
                Ok(turn::Next::Continue) => drained += 1,
                Ok(turn::Next::Stop) => break,
                Err(err) => {
                    tracing::warn!(%session_id, turn_id = %next.turn.id, error = %err, "turn run failed; it will be picked up again");
                    break;
                }
            }
        }
        let placed = if emptied {
            turns::retire_session_if_idle(&self.ctx.pool, session_id).await
        } else {
            turns::requeue_session(&self.ctx.pool, session_id).await
        };
        if let Err(err) = placed {
            tracing::warn!(%session_id, error = %err, "updating the runnable-session index failed");
        }
        heartbeat.abort();
        if lost.load(Ordering::SeqCst) {
            metrics::counter!(m::LEASES_LOST_TOTAL, "scope" => SESSION_SCOPE).increment(1);
        } else if let Err(err) = leases::release(&self.ctx.pool, &lease).await {
            tracing::warn!(%session_id, error = %err, "releasing the lease failed; it will expire");
        }
        metrics::histogram!(m::LEASE_HOLD_SECONDS, "scope" => SESSION_SCOPE)
            .record(held_since.elapsed().as_secs_f64());
        // The session may have more work (or another may now be claimable).
        self.wake.notify_one();
    }
}

/// Renews `lease` every third of its TTL. Sets `lost` when renewal is
/// refused, or has failed for two thirds of the TTL (the holder must then
/// assume someone else may hold it).
async fn keep_alive(pool: PgPool, lease: Lease, ttl: Duration, lost: Arc<AtomicBool>) {
    let mut last_ok = Instant::now();
    loop {
        tokio::time::sleep(ttl / 3).await;
        match leases::renew(&pool, &lease, ttl).await {
            Ok(true) => last_ok = Instant::now(),
            Ok(false) => {
                tracing::warn!(key = %lease.key, token = lease.token, "lease lost: renewal refused");
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(err) => {
                tracing::warn!(key = %lease.key, error = %err, "lease renewal failed");
                if last_ok.elapsed() >= ttl * 2 / 3 {
                    lost.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
    }
}

/// Turns wake-up messages into coalesced wake-ups, resubscribing with
/// backoff whenever the Redis connection drops.
async fn forward_wakeups(client: redis::Client, wake: Arc<Notify>) {
    let mut delay = Duration::from_millis(100);
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(questboard_core::wakeups::CHANNEL).await {
                Ok(()) => {
                    delay = Duration::from_millis(100);
                    // Anything enqueued while we were away: look now.
                    wake.notify_one();
                    let mut messages = pubsub.on_message();
                    while messages.next().await.is_some() {
                        wake.notify_one();
                    }
                    tracing::warn!("wake-up subscription ended; resubscribing");
                }
                Err(err) => tracing::warn!(error = %err, "subscribing to wake-ups failed"),
            },
            Err(err) => {
                tracing::warn!(error = %err, "connecting to Redis for wake-ups failed; polling meanwhile")
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Samples unfinished jobs by kind and state into [`m::QUEUE_DEPTH`].
async fn sample_queue_depth(pool: PgPool, every: Duration) {
    loop {
        let rows: Result<Vec<(String, String, i64)>, _> = sqlx::query_as(
            "SELECT job_type,
                    CASE WHEN status IN ('Running', 'Queued') THEN 'running'
                         WHEN attempts > 0 THEN 'retrying'
                         ELSE 'queued' END AS state,
                    count(*)
             FROM apalis.jobs
             WHERE status IN ('Pending', 'Queued', 'Running')
                OR (status = 'Failed' AND attempts < max_attempts)
             GROUP BY 1, 2",
        )
        .fetch_all(&pool)
        .await;
        if let Ok(rows) = rows {
            for kind in questboard_core::jobs::JobKind::ALL {
                for state in ["queued", "running", "retrying"] {
                    let count = rows
                        .iter()
                        .find(|(t, s, _)| t == kind.queue() && s == state)
                        .map(|(_, _, c)| *c)
                        .unwrap_or(0);
                    metrics::gauge!(m::QUEUE_DEPTH, "kind" => kind.name(), "state" => state)
                        .set(count as f64);
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}
