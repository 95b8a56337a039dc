//! The worker runtime: every registered kind a process serves, on two
//! lanes that share its slots' accounting, its shutdown and its grace.
//!
//! - The **session lane** ([`session_lane`]) runs turns: it claims
//!   campaign sessions (not single jobs) under their lease and drains each
//!   session's turns in order, with batched claims, group-committed steps
//!   and batched renewals.
//! - The **plain lane** ([`plain_lane`]) runs every other kind: it claims
//!   due jobs straight from `apalis.jobs` by kind, each under a job lease,
//!   never more per kind than the kind's concurrency (`QB_JOBS_CONCURRENCY`
//!   overrides the declared default), so a ten-minute migration can never
//!   take the slots turns need; outcomes are group-committed too.
//!
//! `QB_WORKER_KINDS` chooses which kinds a process serves (default: all),
//! so operators can run dedicated media workers.
//!
//! Wake-ups: whoever enqueues publishes the kind's name on Redis
//! ([`questboard_core::wakeups`]); a subscriber task wakes the lane that
//! serves it, so an idle worker picks new work up in milliseconds. A short
//! poll covers what no message announces (retries coming due, expired
//! leases of dead workers) and any message lost while Redis was away. The
//! same subscription carries operators' requests to stop a running job.
//!
//! Shutdown (SIGTERM, Ctrl-C): both lanes stop claiming at once; in-flight
//! runs may finish for `QB_SHUTDOWN_GRACE_MS`; then the rest are handed
//! back (queued again, the attempt not counted) and every lease released.

use std::sync::Arc;
use std::time::Duration;

use questboard_core::jobs::control;
use questboard_core::metrics as m;
use questboard_core::wakeups;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::committer::CommitSettings;
use crate::jobs::{JobContext, Lane, Registry};

pub mod plain_lane;
pub mod session_lane;

pub use session_lane::SessionSettings;

/// How long handing back interrupted runs may take after the grace period.
const HAND_BACK_WAIT: Duration = Duration::from_secs(5);

/// How a worker behaves.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Sessions the session lane processes at once (`QB_WORKER_CONCURRENCY`).
    pub concurrency: usize,
    /// The kinds this process serves (`QB_WORKER_KINDS`; None: all).
    pub kinds: Option<Vec<String>>,
    /// Per-kind concurrency of plain kinds (`QB_JOBS_CONCURRENCY`), over
    /// their declared defaults.
    pub kind_concurrency: Vec<(String, usize)>,
    /// Lease lifetime (sessions and jobs); renewed every third of it.
    pub lease_ttl: Duration,
    /// How long shutdown waits for in-flight runs before handing them back.
    pub shutdown_grace: Duration,
    /// How often an idle lane looks for work no notification announced.
    pub poll_interval: Duration,
    /// Most turns drained from one session before letting others go first.
    pub drain_limit: usize,
    /// How often queue statistics are sampled into metrics.
    pub sample_interval: Duration,
    /// How turn steps are batched into statements.
    pub commit: CommitSettings,
    /// The bus, for wake-ups when jobs are enqueued and cancellations
    /// (None: poll only).
    pub wakeups: Option<questboard_core::bus::Bus>,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 8,
            kinds: None,
            kind_concurrency: Vec::new(),
            lease_ttl: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            poll_interval: Duration::from_millis(250),
            drain_limit: 64,
            sample_interval: Duration::from_secs(5),
            commit: CommitSettings::default(),
            wakeups: None,
        }
    }
}

/// What stops a worker from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `QB_WORKER_KINDS` or `QB_JOBS_CONCURRENCY` names something wrong.
    #[error("{0}")]
    Config(String),
    /// The database failed at startup.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The two signals of a shutdown every lane follows: stop claiming, then
/// (after the grace period) interrupt what still runs.
#[derive(Clone)]
pub(crate) struct Shutdown {
    stopping: watch::Receiver<bool>,
    pub(crate) interrupt: watch::Receiver<bool>,
}

impl Shutdown {
    /// Completes once the worker stops claiming.
    pub(crate) async fn stopping(&mut self) {
        let _ = self.stopping.wait_for(|s| *s).await;
    }

    /// Completes once in-flight runs must be handed back.
    pub(crate) async fn interrupted(&mut self) {
        let _ = self.interrupt.wait_for(|s| *s).await;
    }
}

/// A worker process's runtime.
pub struct Worker {
    id: String,
    ctx: JobContext,
    registry: Registry,
    settings: WorkerSettings,
}

impl Worker {
    /// A worker with a fresh, unique holder id, serving the kinds of
    /// `registry` that `settings.kinds` selects.
    pub fn new(
        ctx: JobContext,
        registry: Registry,
        settings: WorkerSettings,
    ) -> Result<Self, Error> {
        for name in settings.kinds.iter().flatten() {
            if registry.get(name).is_none() {
                return Err(Error::Config(format!(
                    "QB_WORKER_KINDS: unknown job kind {name:?} (known: {})",
                    known(&registry)
                )));
            }
        }
        for (name, n) in &settings.kind_concurrency {
            if registry.get(name).is_none() {
                return Err(Error::Config(format!(
                    "QB_JOBS_CONCURRENCY: unknown job kind {name:?} (known: {})",
                    known(&registry)
                )));
            }
            if *n == 0 {
                return Err(Error::Config(format!(
                    "QB_JOBS_CONCURRENCY: {name} must run at least one job at a time"
                )));
            }
        }
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".to_owned());
        let id = format!(
            "{host}-{}-{}",
            std::process::id(),
            &Uuid::new_v4().simple().to_string()[..8]
        );
        Ok(Self {
            id,
            ctx,
            registry,
            settings,
        })
    }

    /// The holder id this worker writes into leases.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The kinds this worker serves, by name.
    pub fn served(&self) -> Vec<&'static str> {
        self.registry
            .kinds()
            .iter()
            .filter(|k| self.serves(k.spec.kind))
            .map(|k| k.spec.kind)
            .collect()
    }

    fn serves(&self, kind: &str) -> bool {
        self.settings
            .kinds
            .as_ref()
            .is_none_or(|kinds| kinds.iter().any(|k| k == kind))
    }

    fn concurrency_of(&self, kind: &str, default: usize) -> usize {
        self.settings
            .kind_concurrency
            .iter()
            .rev()
            .find(|(k, _)| k == kind)
            .map_or(default, |(_, n)| *n)
            .max(1)
    }

    /// Runs until `shutdown` completes, then stops claiming, lets in-flight
    /// runs finish within the grace period, hands back the rest and
    /// releases every lease.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (interrupt_tx, interrupt_rx) = watch::channel(false);
        let signals = Shutdown {
            stopping: stop_rx,
            interrupt: interrupt_rx,
        };
        let session_wake = Arc::new(Notify::new());
        let plain_wake = Arc::new(Notify::new());
        let (cancel_tx, cancel_rx) = mpsc::unbounded_channel();

        let mut lanes = JoinSet::new();
        let mut plain_kinds = Vec::new();
        let mut turns = None;
        for kind in self.registry.kinds() {
            if !self.serves(kind.spec.kind) {
                continue;
            }
            match kind.lane {
                Lane::Session => {
                    turns = Some(self.concurrency_of(kind.spec.kind, self.settings.concurrency))
                }
                Lane::Plain(run) => plain_kinds.push(plain_lane::PlainKind::new(
                    kind.spec,
                    run,
                    self.concurrency_of(kind.spec.kind, kind.spec.concurrency),
                )),
            }
        }
        let served: Vec<&'static str> = self.served();
        tracing::info!(worker = %self.id, kinds = ?served, "worker started");
        if let Some(concurrency) = turns {
            let lane = session_lane::SessionLane {
                id: self.id.clone(),
                ctx: self.ctx.clone(),
                settings: SessionSettings {
                    concurrency,
                    lease_ttl: self.settings.lease_ttl,
                    poll_interval: self.settings.poll_interval,
                    drain_limit: self.settings.drain_limit,
                    commit: self.settings.commit,
                },
            };
            lanes.spawn(lane.run(session_wake.clone(), signals.clone()));
        }
        if !plain_kinds.is_empty() {
            let lane = plain_lane::PlainLane {
                id: self.id.clone(),
                ctx: self.ctx.clone(),
                kinds: plain_kinds,
                lease_ttl: self.settings.lease_ttl,
                poll_interval: self.settings.poll_interval,
            };
            lanes.spawn(lane.run(plain_wake.clone(), cancel_rx, signals.clone()));
        }
        let listening = self.settings.wakeups.clone().map(|bus| {
            tokio::spawn(forward_wakeups(
                bus,
                session_wake.clone(),
                plain_wake.clone(),
                cancel_tx.clone(),
            ))
        });
        let beating = tokio::spawn(heartbeat(
            self.ctx.pool.clone(),
            self.id.clone(),
            served.clone(),
        ));
        let sampling = tokio::spawn(sample_queues(
            self.ctx.pool.clone(),
            self.registry.clone(),
            self.settings.sample_interval,
        ));

        shutdown.await;
        tracing::info!(worker = %self.id, "worker stopping");
        let _ = stop_tx.send(true);
        let grace = tokio::time::sleep(self.settings.shutdown_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                next = lanes.join_next() => if next.is_none() { break },
                () = &mut grace, if !*interrupt_tx.borrow() => {
                    let _ = interrupt_tx.send(true);
                }
            }
        }
        if let Some(listening) = listening {
            listening.abort();
        }
        sampling.abort();
        beating.abort();
        if let Err(err) = questboard_core::heartbeats::gone(&self.ctx.pool, &self.id).await {
            tracing::warn!(worker = %self.id, error = %err, "removing this worker's heartbeat failed; it shows as dead");
        }
        tracing::info!(worker = %self.id, "worker stopped");
        Ok(())
    }
}

/// Says every [`questboard_core::heartbeats::BEAT`] that this worker is
/// alive, for operators; a failed beat is logged and the next one tried.
async fn heartbeat(pool: sqlx::PgPool, id: String, kinds: Vec<&'static str>) {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".to_owned());
    let mut every = tokio::time::interval(questboard_core::heartbeats::BEAT);
    loop {
        every.tick().await;
        let beat = questboard_core::heartbeats::beat(&pool, &id, &host, std::process::id(), &kinds);
        if let Err(err) = beat.await {
            tracing::debug!(worker = %id, error = %err, "heartbeat failed");
        }
    }
}

fn known(registry: &Registry) -> String {
    registry
        .kinds()
        .iter()
        .map(|k| k.spec.kind)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses `QB_JOBS_CONCURRENCY` (`media=4,prune=1`).
pub fn parse_kind_concurrency(text: &str) -> Result<Vec<(String, usize)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (kind, n) = part
                .split_once('=')
                .ok_or_else(|| format!("expected kind=N, got {part:?}"))?;
            let n: usize = n
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: N must be a whole number"))?;
            if n == 0 || n > 4096 {
                return Err(format!("{part:?}: N must be between 1 and 4096"));
            }
            Ok((kind.trim().to_owned(), n))
        })
        .collect()
}

/// Turns wake-up messages into wake-ups of the lane serving the kind
/// announced, and cancellation messages into requests to the plain lane,
/// subscribing again with backoff whenever the bus loses messages.
async fn forward_wakeups(
    bus: questboard_core::bus::Bus,
    session_wake: Arc<Notify>,
    plain_wake: Arc<Notify>,
    cancels: mpsc::UnboundedSender<String>,
) {
    let turn = <questboard_core::turns::TurnJob as questboard_core::jobs::Job>::SPEC.kind;
    let mut delay = Duration::from_millis(100);
    loop {
        match subscribe_wakeups(&bus).await {
            Ok(mut subscriber) => {
                delay = Duration::from_millis(100);
                // Anything enqueued while we were away: look now.
                session_wake.notify_one();
                plain_wake.notify_one();
                while let Some(message) = subscriber.next().await {
                    let text = String::from_utf8_lossy(&message.payload);
                    if &*message.channel == wakeups::CANCEL_CHANNEL {
                        let _ = cancels.send(text.into_owned());
                    } else if text == turn {
                        session_wake.notify_one();
                    } else {
                        plain_wake.notify_one();
                    }
                }
                tracing::warn!("wake-up subscription ended; resubscribing");
            }
            Err(err) => {
                tracing::warn!(error = %err, bus = bus.kind(), "subscribing to wake-ups failed; polling meanwhile")
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn subscribe_wakeups(
    bus: &questboard_core::bus::Bus,
) -> Result<questboard_core::bus::Subscriber, questboard_core::bus::BusError> {
    let mut subscriber = bus.subscriber().await?;
    subscriber.subscribe(wakeups::CHANNEL).await?;
    subscriber.subscribe(wakeups::CANCEL_CHANNEL).await?;
    Ok(subscriber)
}

/// Samples every kind's queue into metrics: jobs by state
/// ([`m::QUEUE_DEPTH`]: queued, running, retrying; [`m::JOBS_DEAD`]:
/// failed, cancelled), the oldest due job's wait and whether the kind is
/// paused. Every worker process samples; dashboards take the maximum.
async fn sample_queues(pool: sqlx::PgPool, registry: Registry, every: Duration) {
    let specs = registry.specs();
    loop {
        match control::queue_stats(&pool, &specs).await {
            Ok(stats) => {
                for (spec, s) in specs.iter().zip(stats) {
                    let kind = spec.kind;
                    for (state, value) in [
                        ("queued", s.queued),
                        ("running", s.running),
                        ("retrying", s.retrying),
                    ] {
                        metrics::gauge!(m::QUEUE_DEPTH, "kind" => kind, "state" => state)
                            .set(value as f64);
                    }
                    for (state, value) in [("failed", s.failed), ("cancelled", s.cancelled)] {
                        metrics::gauge!(m::JOBS_DEAD, "kind" => kind, "state" => state)
                            .set(value as f64);
                    }
                    metrics::gauge!(m::QUEUE_OLDEST_WAIT_SECONDS, "kind" => kind)
                        .set(s.oldest_wait_seconds.unwrap_or(0.0));
                    metrics::gauge!(m::KIND_PAUSED, "kind" => kind).set(if s.paused {
                        1.0
                    } else {
                        0.0
                    });
                }
            }
            Err(err) => tracing::debug!(error = %err, "sampling queue statistics failed"),
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_concurrency_parses_and_refuses_nonsense() {
        assert_eq!(
            parse_kind_concurrency("media=4, prune=1,").ok(),
            Some(vec![("media".into(), 4), ("prune".into(), 1)])
        );
        assert_eq!(parse_kind_concurrency("").ok(), Some(vec![]));
        for bad in ["media", "media=0", "media=x", "media=-1", "media=99999"] {
            assert!(parse_kind_concurrency(bad).is_err(), "{bad}");
        }
    }
}
