//! The plain lane: kinds whose runs are independent of each other.
//!
//! Shaped like River's services: a **producer** (the lane's loop) claims
//! due jobs of every kind that has free slots in one statement
//! ([`questboard_core::jobs::plain::claim`]), never more per kind than its
//! concurrency; an **executor** task per run decodes the payload, runs the
//! handler under the kind's timeout and classifies the outcome; a
//! **completer** writes the outcomes that queued up meanwhile in one fenced
//! statement ([`questboard_core::jobs::plain::settle`]). The lane also
//! **rescues** runs whose worker died: every poll one cheap probe
//! ([`questboard_core::jobs::plain::outlook`]) says whether a job is due or
//! a Running job's lease lapsed, and only then does it claim, or move those
//! runs back to due ([`questboard_core::jobs::plain::rescue`]).
//!
//! Each run holds a job lease, renewed with all others of the worker
//! ([`Renewals`]); a run whose lease is lost learns it at its next
//! checkpoint, and whatever it still tries to record is refused by the
//! fence. An operator's request to stop a run reaches it through Redis at
//! once and through the renewals at the latest a third of the TTL later;
//! the handler stops at its next checkpoint and the job ends `cancelled`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use questboard_core::jobs::JobSpec;
use questboard_core::jobs::plain::{self, Claimed, Outcome, Settle, Want};
use questboard_core::metrics as m;
use questboard_core::turns;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::{HAND_BACK_WAIT, Shutdown};
use crate::jobs::{JobContext, JobError, JobRun, RunFn};
use crate::renewals::Renewals;

/// Most jobs of one kind claimed by one statement.
const CLAIM_BATCH: usize = 256;
/// A free slot of a busy kind waits at most this long for more to free up
/// before it is filled by a claim of its own.
const CLAIM_AFTER: Duration = Duration::from_millis(20);
/// Most outcomes in one settle statement.
const SETTLE_BATCH: usize = 512;
/// Settle statements running at once.
const SETTLES_IN_FLIGHT: usize = 2;

/// A kind the lane serves, with its slots.
#[derive(Clone)]
pub(crate) struct PlainKind {
    spec: JobSpec,
    run: RunFn,
    slots: Arc<Semaphore>,
    concurrency: usize,
}

impl PlainKind {
    pub(crate) fn new(spec: JobSpec, run: RunFn, concurrency: usize) -> Self {
        Self {
            spec,
            run,
            slots: Arc::new(Semaphore::new(concurrency)),
            concurrency,
        }
    }

    fn busy(&self) -> usize {
        self.concurrency - self.slots.available_permits()
    }

    /// How many jobs of the kind to claim now: every free slot; but while
    /// some of its runs are still going, only once a quarter of its slots
    /// (at most 64) are free or [`CLAIM_AFTER`] passed since its last claim
    /// (`since`), so a busy lane claims in batches instead of a statement
    /// per finished run, and a slot never stays free for long.
    fn claimable(&self, since: Duration) -> usize {
        let free = self.slots.available_permits();
        let batch = (self.concurrency / 4).clamp(1, 64);
        if free == self.concurrency || free >= batch || (free > 0 && since >= CLAIM_AFTER) {
            free.min(CLAIM_BATCH)
        } else {
            0
        }
    }
}

/// Runs in progress, by job id: how to tell each to stop.
type Running = Arc<Mutex<HashMap<String, watch::Sender<bool>>>>;

fn lock(running: &Running) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<bool>>> {
    running.lock().unwrap_or_else(|p| p.into_inner())
}

/// The lane.
pub(crate) struct PlainLane {
    pub(crate) id: String,
    pub(crate) ctx: JobContext,
    pub(crate) kinds: Vec<PlainKind>,
    pub(crate) lease_ttl: Duration,
    pub(crate) poll_interval: Duration,
}

impl PlainLane {
    /// Claims and runs jobs until `shutdown` says stop, then lets runs
    /// finish until it says interrupt, and hands back the rest.
    pub(crate) async fn run(
        self,
        wake: Arc<Notify>,
        mut cancels: mpsc::UnboundedReceiver<String>,
        mut shutdown: Shutdown,
    ) {
        let (renewed_cancel_tx, mut renewed_cancels) = mpsc::unbounded_channel();
        let renewals = Renewals::jobs(self.ctx.pool.clone(), self.lease_ttl, renewed_cancel_tx);
        let completer = Completer::start(self.ctx.pool.clone());
        let running: Running = Arc::default();
        let mut runs = JoinSet::new();
        let queues: Vec<&'static str> = self.kinds.iter().map(|k| k.spec.queue).collect();
        let mut last_claims: Vec<Instant> = vec![Instant::now(); self.kinds.len()];
        let mut look = true;
        // Set by the poll: look for lapsed runs first.
        let mut rescue = true;
        let mut saturated = true;
        // A claim that got some jobs but fewer than it asked for may have
        // skipped rows another worker was claiming at that moment: look
        // again soon rather than at the next poll.
        let mut partial = false;
        loop {
            if rescue {
                rescue = false;
                if self.rescue(&queues).await {
                    look = true;
                }
            }
            while look {
                let now = Instant::now();
                let wants: Vec<Want> = self
                    .kinds
                    .iter()
                    .zip(&last_claims)
                    .map(|(k, last)| Want {
                        kind: k.spec.kind,
                        queue: k.spec.queue,
                        limit: k.claimable(now.duration_since(*last)),
                    })
                    .collect();
                if wants.iter().all(|w| w.limit == 0) {
                    break;
                }
                for (want, last) in wants.iter().zip(&mut last_claims) {
                    if want.limit > 0 {
                        *last = now;
                    }
                }
                match plain::claim(&self.ctx.pool, &self.id, self.lease_ttl, &wants).await {
                    Ok(claimed) => {
                        let mut got: HashMap<&str, usize> = HashMap::new();
                        for job in &claimed {
                            *got.entry(job.queue.as_str()).or_default() += 1;
                        }
                        saturated = wants
                            .iter()
                            .any(|w| w.limit > 0 && got.get(w.queue).copied() == Some(w.limit));
                        partial = !saturated && !claimed.is_empty();
                        look = saturated;
                        for job in claimed {
                            self.start(job, &mut runs, &renewals, &completer, &running, &shutdown);
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "claiming jobs failed; retrying shortly");
                        break;
                    }
                }
            }
            for kind in &self.kinds {
                metrics::gauge!(m::WORKER_BUSY_SLOTS, "kind" => kind.spec.kind)
                    .set(kind.busy() as f64);
            }
            look = tokio::select! {
                () = shutdown.stopping() => break,
                () = wake.notified() => true,
                () = tokio::time::sleep(if partial { CLAIM_AFTER } else { self.poll_interval }) => {
                    if std::mem::take(&mut partial) {
                        true
                    } else {
                        // Nothing announced it: retries coming due, runs of
                        // dead workers. Claim and rescue only if there is
                        // something to find.
                        match plain::outlook(&self.ctx.pool, &queues).await {
                            Ok(outlook) => {
                                rescue = outlook.lost;
                                outlook.due || outlook.lost
                            }
                            Err(err) => {
                                tracing::debug!(error = %err, "looking for due jobs failed");
                                false
                            }
                        }
                    }
                }
                Some(id) = cancels.recv() => { stop(&running, &id); false }
                Some(id) = renewed_cancels.recv() => { stop(&running, &id); false }
                Some(joined) = runs.join_next(), if !runs.is_empty() => {
                    // Runs settled by one statement end together: let the
                    // others finish too, so one claim refills their slots.
                    tokio::task::yield_now().await;
                    let mut next = Some(joined);
                    while let Some(joined) = next {
                        if let Err(err) = joined {
                            tracing::error!(error = %err, "a job run panicked");
                        }
                        next = runs.try_join_next();
                    }
                    saturated
                }
            };
        }

        tracing::info!(worker = %self.id, in_flight = runs.len(), "plain lane stopping");
        loop {
            tokio::select! {
                next = runs.join_next() => if next.is_none() { break },
                Some(id) = cancels.recv() => stop(&running, &id),
                () = shutdown.interrupted() => {
                    tracing::warn!(in_flight = runs.len(), "grace period over: handing jobs back");
                    let _ = tokio::time::timeout(HAND_BACK_WAIT, async {
                        while runs.join_next().await.is_some() {}
                    })
                    .await;
                    runs.abort_all();
                    break;
                }
            }
        }
        for kind in &self.kinds {
            metrics::gauge!(m::WORKER_BUSY_SLOTS, "kind" => kind.spec.kind).set(0.0);
        }
    }

    /// Moves runs whose worker died back in line. True if there were any.
    async fn rescue(&self, queues: &[&str]) -> bool {
        match plain::rescue(&self.ctx.pool, queues).await {
            Ok(rescued) => {
                for job in &rescued {
                    let kind = self
                        .kinds
                        .iter()
                        .find(|k| k.spec.queue == job.queue)
                        .map_or("unknown", |k| k.spec.kind);
                    metrics::counter!(m::JOBS_RESCUED_TOTAL, "kind" => kind).increment(1);
                    if job.failed {
                        metrics::counter!(m::JOBS_FAILED_TOTAL, "kind" => kind).increment(1);
                    }
                    tracing::info!(job_id = %job.id, kind, failed = job.failed,
                        "rescued a job whose worker stopped renewing its lease");
                }
                !rescued.is_empty()
            }
            Err(err) => {
                tracing::debug!(error = %err, "rescuing lapsed runs failed; will retry");
                false
            }
        }
    }

    fn start(
        &self,
        job: Claimed,
        runs: &mut JoinSet<()>,
        renewals: &Renewals,
        completer: &Completer,
        running: &Running,
        shutdown: &Shutdown,
    ) {
        let Some(kind) = self
            .kinds
            .iter()
            .find(|k| k.spec.queue == job.queue)
            .cloned()
        else {
            return;
        };
        metrics::counter!(m::LEASE_ACQUISITIONS_TOTAL, "scope" => "job", "outcome" => "acquired")
            .increment(1);
        let Ok(permit) = kind.slots.clone().try_acquire_owned() else {
            // Claimed more than there are slots (cannot happen: only this
            // loop takes permits): give it straight back.
            let completer = completer.clone();
            runs.spawn(async move {
                let _ = completer
                    .settle(Outcome {
                        job_id: job.id.clone(),
                        token: job.lease.token,
                        settle: Settle::HandedBack,
                    })
                    .await;
            });
            return;
        };
        let hold = renewals.hold(&job.lease);
        let (cancel_tx, cancel_rx) = watch::channel(job.cancel_requested);
        lock(running).insert(job.id.clone(), cancel_tx);
        let run = JobRun::new(
            &job,
            kind.spec,
            cancel_rx,
            hold.lost_flag(),
            self.ctx.pool.clone(),
            self.ctx.events.clone(),
        );
        let (ctx, completer, running) = (self.ctx.clone(), completer.clone(), running.clone());
        let mut interrupt = shutdown.interrupt.clone();
        runs.spawn(async move {
            let _permit = permit;
            let spec = kind.spec;
            started(&spec, &job);
            let begun = Instant::now();
            let result = tokio::select! {
                result = tokio::time::timeout(spec.timeout, (kind.run)(&job.payload, &ctx, &run)) => {
                    Some(result.unwrap_or_else(|_| {
                        metrics::counter!(m::JOBS_TIMED_OUT_TOTAL, "kind" => spec.kind).increment(1);
                        Err(JobError::retryable(format!(
                            "timed out after {} s", spec.timeout.as_secs_f64()
                        )))
                    }))
                }
                _ = interrupt.wait_for(|stop| *stop) => None,
            };
            let settle = decide(&spec, &job, &run, result);
            let label = settle.label();
            let outcome = Outcome {
                job_id: job.id.clone(),
                token: job.lease.token,
                settle,
            };
            match completer.settle(outcome).await {
                Ok(true) => {
                    let counter = match label {
                        "succeeded" => m::JOBS_SUCCEEDED_TOTAL,
                        "retried" => m::JOBS_RETRIED_TOTAL,
                        "failed" => m::JOBS_FAILED_TOTAL,
                        "cancelled" => m::JOBS_CANCELLED_TOTAL,
                        _ => m::JOBS_HANDED_BACK_TOTAL,
                    };
                    metrics::counter!(counter, "kind" => spec.kind).increment(1);
                    if label != "handed_back" {
                        metrics::histogram!(m::JOB_RUN_SECONDS, "kind" => spec.kind, "outcome" => label)
                            .record(begun.elapsed().as_secs_f64());
                    }
                }
                Ok(false) => {
                    metrics::counter!(m::FENCING_REJECTIONS_TOTAL, "scope" => "job").increment(1);
                    tracing::warn!(job_id = %job.id, token = job.lease.token,
                        "outcome refused by the fencing check: this worker lost the job's lease");
                }
                Err(err) => tracing::warn!(job_id = %job.id, error = %err,
                    "recording a job's outcome failed; its lease lapses and it runs again"),
            }
            if run.lease_lost() {
                metrics::counter!(m::LEASES_LOST_TOTAL, "scope" => "job").increment(1);
            }
            lock(&running).remove(&job.id);
            drop(hold);
        });
    }
}

/// Asks the run of job `id`, if this lane has it, to stop.
fn stop(running: &Running, id: &str) {
    if let Some(cancel) = lock(running).get(id) {
        tracing::info!(job_id = %id, "an operator asked this job to stop");
        let _ = cancel.send(true);
    }
}

/// Counts a started run and how long it waited since it was due: a job
/// scheduled ahead or a retry waiting out its backoff is not late.
fn started(spec: &JobSpec, job: &Claimed) {
    metrics::counter!(m::JOBS_STARTED_TOTAL, "kind" => spec.kind).increment(1);
    metrics::histogram!(m::JOB_QUEUE_WAIT_SECONDS, "kind" => spec.kind)
        .record(job.waited.as_secs_f64());
}

/// How a run ends, from what its handler returned (None: interrupted at
/// shutdown). A job an operator asked to stop that fails anyway ends
/// cancelled rather than retrying; one that finished its work regardless
/// is recorded as succeeded, because the work was done.
fn decide(
    spec: &JobSpec,
    job: &Claimed,
    run: &JobRun,
    result: Option<Result<serde_json::Value, JobError>>,
) -> Settle {
    let Some(result) = result else {
        return Settle::HandedBack;
    };
    match result {
        Ok(report) => Settle::Succeeded(report),
        Err(_) if run.is_cancelled() => Settle::Cancelled("cancelled by an operator".into()),
        Err(JobError::Cancelled) => Settle::Cancelled("cancelled by an operator".into()),
        Err(JobError::Fatal { reason }) => {
            tracing::warn!(job_id = %job.id, kind = spec.kind, reason, "job failed");
            Settle::Failed(reason)
        }
        Err(JobError::Retryable {
            reason,
            retry_after,
        }) if job.attempt < job.max_attempts => {
            let delay = spec
                .backoff
                .delay(job.attempt.max(1) as u32)
                .max(retry_after.unwrap_or_default());
            tracing::info!(job_id = %job.id, kind = spec.kind, attempt = job.attempt, ?delay, reason,
                "job will be retried");
            Settle::Retrying {
                error: reason,
                delay,
            }
        }
        Err(JobError::Retryable { reason, .. }) => {
            tracing::warn!(job_id = %job.id, kind = spec.kind, reason, "job failed for good");
            Settle::Failed(format!("{reason} (gave up after {} attempts)", job.attempt))
        }
    }
}

/// Group commit of outcomes: the runs that end while a settle statement is
/// in Postgres are written together by the next one.
#[derive(Clone)]
struct Completer {
    tx: mpsc::UnboundedSender<(Outcome, oneshot::Sender<Result<bool, String>>)>,
}

impl Completer {
    fn start(pool: PgPool) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(complete(pool, rx));
        Self { tx }
    }

    /// Writes `outcome` with whatever else is waiting; true if the fence
    /// let it through.
    async fn settle(&self, outcome: Outcome) -> Result<bool, String> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((outcome, reply))
            .map_err(|_| "the completer stopped".to_owned())?;
        answer
            .await
            .map_err(|_| "the completer stopped".to_owned())?
    }
}

type Pending = (Outcome, oneshot::Sender<Result<bool, String>>);

async fn complete(pool: PgPool, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let slots = Arc::new(Semaphore::new(SETTLES_IN_FLIGHT));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::new();
        if rx.recv_many(&mut batch, SETTLE_BATCH).await == 0 {
            return;
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            let (outcomes, replies): (Vec<Outcome>, Vec<_>) = batch.into_iter().unzip();
            let started = Instant::now();
            let written = turns::retrying(|| async {
                plain::settle(&pool, &outcomes)
                    .await
                    .map_err(turns::Error::Job)
            })
            .await;
            metrics::histogram!(m::COMPLETE_SECONDS).record(started.elapsed().as_secs_f64());
            match written {
                Ok(written) => {
                    for (ok, reply) in written.into_iter().zip(replies) {
                        let _ = reply.send(Ok(ok));
                    }
                }
                Err(err) => {
                    let reason = err.to_string();
                    for reply in replies {
                        let _ = reply.send(Err(reason.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
}
