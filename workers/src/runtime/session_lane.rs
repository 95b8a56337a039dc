//! The session lane: claims campaign sessions that have turns to run,
//! holds their lease while draining their turns in order.
//!
//! Why sessions and not single jobs: a session's turns must run one at a
//! time in `seq` order across every worker. So a slot holds a session's
//! lease ([`questboard_core::leases`]), runs that session's next turns back
//! to back (up to [`SessionSettings::drain_limit`], then lets go so other
//! sessions get their turn), and releases it. A job whose session is
//! leased elsewhere never occupies a slot here: the claim skips it and the
//! holder drains it. Different sessions run in parallel up to
//! [`SessionSettings::concurrency`].
//!
//! Batching, because Postgres round trips and commits are what a turn
//! costs: free slots are filled by one claim statement and one read of the
//! claimed sessions' turns and history ([`questboard_core::turns::queue`]);
//! each turn then costs one step (record the previous turn's outcome and
//! start this one), and the steps of all busy sessions go to Postgres
//! together through the [`Committer`]; leases are renewed together by
//! [`Renewals`].
//!
//! Liveness: leases are renewed every third of their TTL. A holder that
//! cannot renew stops; and whatever it still tries to write is refused by
//! the fencing check, so a paused or partitioned worker cannot overwrite
//! the work of the one that took over.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use questboard_core::jobs::Job as _;
use questboard_core::leases::{Acquisition, SESSION_SCOPE};
use questboard_core::metrics as m;
use questboard_core::turns::{self, Backlog, Claimed, Pending, Release, Settle, Step, TurnJob};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use super::Shutdown;
use crate::committer::{CommitSettings, Committer};
use crate::jobs::{JobContext, turn};
use crate::renewals::{Hold, Renewals};

/// How the session lane behaves.
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    /// Sessions processed at once (`QB_WORKER_CONCURRENCY`).
    pub concurrency: usize,
    /// Lease lifetime; renewed every third of it.
    pub lease_ttl: Duration,
    /// How often an idle lane looks for work no notification announced.
    pub poll_interval: Duration,
    /// Most turns drained from one session before letting others go first.
    pub drain_limit: usize,
    /// How turn steps are batched into statements.
    pub commit: CommitSettings,
}

/// Most sessions claimed by one statement.
const CLAIM_BATCH: usize = 256;

/// The lane running turns.
pub(super) struct SessionLane {
    pub(super) id: String,
    pub(super) ctx: JobContext,
    pub(super) settings: SessionSettings,
}

impl SessionLane {
    /// Claims and drains sessions until `shutdown` says stop, then lets
    /// in-flight turns finish until it says interrupt, hands back the rest
    /// and releases every lease.
    pub(super) async fn run(self, wake: Arc<Notify>, mut shutdown: Shutdown) {
        let shared = Arc::new(Shared {
            id: self.id.clone(),
            committer: Committer::start(
                self.ctx.pool.clone(),
                self.ctx.events.clone(),
                self.ctx.wake.clone(),
                self.settings.commit,
                self.ctx.quotas.clone(),
            ),
            renewals: Renewals::sessions(self.ctx.pool.clone(), self.settings.lease_ttl),
            ctx: self.ctx.clone(),
            settings: self.settings,
            stopping: AtomicBool::new(false),
            wake: wake.clone(),
        });
        let interrupt_rx = shutdown.interrupt.clone();
        let concurrency = self.settings.concurrency.max(1);
        let slots = Arc::new(Semaphore::new(concurrency));
        let mut drains = JoinSet::new();
        let kind = TurnJob::SPEC.kind;

        // Whether the last claim got every session it asked for: then a
        // slot that frees up may find more work waiting; otherwise there is
        // none until a wake-up (new work, a session requeued) or the poll.
        let mut saturated = true;
        let mut look = true;
        loop {
            // Fill free slots with claimable sessions, a batch at a time.
            while look {
                let free = slots.available_permits().min(CLAIM_BATCH);
                if free == 0 {
                    break;
                }
                let Ok(permits) = slots.clone().try_acquire_many_owned(free as u32) else {
                    break;
                };
                match shared.claim(permits, &mut drains, &interrupt_rx).await {
                    Ok(claimed) => {
                        saturated = claimed == free;
                        look = saturated;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "claiming work failed; retrying shortly");
                        break;
                    }
                }
            }
            metrics::gauge!(m::WORKER_BUSY_SLOTS, "kind" => kind)
                .set((concurrency - slots.available_permits()) as f64);
            look = tokio::select! {
                () = shutdown.stopping() => break,
                () = wake.notified() => true,
                () = tokio::time::sleep(self.settings.poll_interval) => true,
                Some(joined) = drains.join_next(), if !drains.is_empty() => {
                    if let Err(err) = joined {
                        tracing::error!(error = %err, "a drain task panicked");
                    }
                    saturated
                }
            };
        }

        tracing::info!(worker = %self.id, in_flight = drains.len(), "session lane stopping");
        shared.stopping.store(true, Ordering::SeqCst);
        loop {
            tokio::select! {
                next = drains.join_next() => if next.is_none() { break },
                () = shutdown.interrupted() => {
                    tracing::warn!(in_flight = drains.len(), "grace period over: handing turns back");
                    // Handing back is one quick write per drain.
                    let _ = tokio::time::timeout(super::HAND_BACK_WAIT, async {
                        while drains.join_next().await.is_some() {}
                    })
                    .await;
                    drains.abort_all();
                    break;
                }
            }
        }
        metrics::gauge!(m::WORKER_BUSY_SLOTS, "kind" => kind).set(0.0);
    }
}

struct Shared {
    id: String,
    ctx: JobContext,
    settings: SessionSettings,
    committer: Committer,
    renewals: Renewals,
    stopping: AtomicBool,
    wake: Arc<Notify>,
}

/// Why claiming failed.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct ClaimError(#[from] turns::Error);

impl Shared {
    /// Takes the leases of as many runnable sessions as `permits` allows,
    /// reads their turns, and starts a drain for each. Returns how many.
    async fn claim(
        self: &Arc<Self>,
        mut permits: OwnedSemaphorePermit,
        drains: &mut JoinSet<()>,
        interrupt: &watch::Receiver<bool>,
    ) -> Result<usize, ClaimError> {
        let wanted = permits.num_permits();
        let claimed = turns::claim(
            &self.ctx.pool,
            &self.id,
            self.settings.lease_ttl,
            wanted,
            self.settings.drain_limit,
            self.ctx.history_window,
        )
        .await?;
        for (c, _) in &claimed {
            metrics::counter!(m::LEASE_ACQUISITIONS_TOTAL, "scope" => SESSION_SCOPE, "outcome" => c.how.as_str())
                .increment(1);
            if c.how == Acquisition::TakenOver {
                tracing::info!(session_id = %c.session_id, token = c.lease.token, "took over an expired session lease");
            }
        }
        let count = claimed.len();
        for (claimed, backlog) in claimed {
            let hold = self.renewals.hold(&claimed.lease);
            let permit = permits.split(1);
            let shared = self.clone();
            let interrupt = interrupt.clone();
            drains.spawn(async move {
                let _permit = permit;
                Drain::new(shared, claimed, hold, backlog)
                    .run(interrupt)
                    .await;
            });
        }
        Ok(count)
    }
}

/// How the previous turn ended, waiting to be written with the next step.
struct Outcome {
    turn: Pending,
    settle: Settle,
    started: Instant,
    /// What `Drain::done_through` becomes once it is written.
    done_through: i64,
}

/// One session's drain: its turns in order, one step each, under its lease.
struct Drain {
    shared: Arc<Shared>,
    claimed: Claimed,
    hold: Hold,
    archived: bool,
    /// Unfinished turns still to run, in order.
    turns: VecDeque<Pending>,
    /// Whether `turns` was cut at the drain limit (more may follow).
    truncated: bool,
    /// The session's next turn number when the turns were read.
    horizon: i64,
    /// Recent completed exchanges, oldest first, kept up to date here.
    history: VecDeque<turns::Exchange>,
    /// Every turn up to this seq is finished, as written so far.
    done_through: i64,
    /// The previous turn's outcome, not written yet.
    outcome: Option<Outcome>,
    /// The last step released the session with no turn left.
    retired: bool,
    held_since: Instant,
}

/// Why a drain ends.
enum End {
    /// Let the session go; its next turn may run at this time (None: now).
    Release(Option<chrono::DateTime<chrono::Utc>>),
    /// The lease is gone or the write failed: write nothing more.
    Abandon,
}

impl Drain {
    fn new(shared: Arc<Shared>, claimed: Claimed, hold: Hold, backlog: Backlog) -> Self {
        let truncated = backlog.turns.len() >= shared.settings.drain_limit;
        let done_through = backlog
            .turns
            .first()
            .map_or(backlog.next_turn_seq - 1, |t| t.seq - 1);
        Self {
            shared,
            claimed,
            hold,
            archived: backlog.archived,
            turns: backlog.turns.into(),
            truncated,
            horizon: backlog.next_turn_seq,
            history: backlog.history.into(),
            done_through,
            outcome: None,
            retired: false,
            held_since: Instant::now(),
        }
    }

    async fn run(mut self, mut interrupt: watch::Receiver<bool>) {
        let end = self.drain(&mut interrupt).await;
        let session_id = self.claimed.session_id;
        match end {
            // Written even if the lease looks lost: the fence decides (and
            // counts the refusal), not this worker's view of the clock.
            End::Release(ready_at) => {
                let mut step = self.step();
                step.release = Some(Release {
                    done_through: self
                        .outcome
                        .as_ref()
                        .map_or(self.done_through, |o| o.done_through),
                    ready_at,
                });
                if let Err(err) = self.write(step).await {
                    self.abandoned(err);
                }
            }
            End::Abandon => {}
        }
        if self.hold.lost() {
            metrics::counter!(m::LEASES_LOST_TOTAL, "scope" => SESSION_SCOPE).increment(1);
        }
        metrics::histogram!(m::LEASE_HOLD_SECONDS, "scope" => SESSION_SCOPE)
            .record(self.held_since.elapsed().as_secs_f64());
        tracing::trace!(%session_id, retired = self.retired, "drain ended");
        // A session let go with work left is claimable again at once.
        if !self.retired {
            self.shared.wake.notify_one();
        }
    }

    /// Runs turns until the session is done, must wait, or must be let go.
    async fn drain(&mut self, interrupt: &mut watch::Receiver<bool>) -> End {
        let mut ran = 0;
        while ran < self.shared.settings.drain_limit {
            if self.shared.stopping.load(Ordering::SeqCst) || self.hold.lost() {
                break;
            }
            let Some(turn) = self.turns.pop_front() else {
                break;
            };
            if !turn.due {
                // Its retry backoff is not over: come back then.
                let at = turn.run_at;
                self.turns.push_front(turn);
                return End::Release(Some(at));
            }
            if let Some(refused) = turn::refusal(&turn, self.archived) {
                // Record the previous outcome first: a step carries one.
                if self.outcome.is_some() {
                    let step = self.step();
                    if let Err(err) = self.write(step).await {
                        self.abandoned(err);
                        return End::Abandon;
                    }
                }
                self.outcome = Some(Outcome {
                    done_through: self.finished(turn.seq),
                    turn,
                    settle: refused,
                    started: Instant::now(),
                });
                continue;
            }
            let mut step = self.step();
            step.start = Some((turn.id, turn.job_id.clone()));
            // The reply is asked for while the step that starts the turn
            // commits (see `jobs::turn`): its chunks wait behind the gate,
            // and it is dropped if the step does not go through. Within the
            // fence nobody else starts this turn, so its attempt is the one
            // read plus one.
            let shared = self.shared.clone();
            let mut prompt = turn::prompt(&shared.ctx, &turn, &self.history);
            if shared.ctx.llm.primary().provider.sees_state() {
                prompt = turn::with_state(&shared.ctx, prompt, self.claimed.session_id).await;
            }
            let gate = turn::Gate::new(shared.ctx.sinks.sink(self.claimed.session_id, turn.id));
            let started = Instant::now();
            let interrupted = async {
                let _ = interrupt.wait_for(|stop| *stop).await;
            };
            // The reply's future borrows the turn: it ends in this block.
            let settle = {
                let run = turn::run(
                    &shared.ctx,
                    &turn,
                    turn.attempts + 1,
                    prompt,
                    gate.sink(),
                    interrupted,
                );
                tokio::pin!(run);
                let commit = shared.committer.commit(step);
                tokio::pin!(commit);
                let mut early = None;
                let written = loop {
                    tokio::select! {
                        // The step goes to the committer first; the reply
                        // is asked for while it is in Postgres.
                        biased;
                        written = &mut commit => break written,
                        settle = &mut run, if early.is_none() => early = Some(settle),
                    }
                };
                let (attempt, started_seq) = match self.record(written) {
                    Ok(Some(started)) => started,
                    Ok(None) => {
                        // Already finished (a previous holder recorded it).
                        self.done_through = self.finished(turn.seq);
                        continue;
                    }
                    Err(err) => {
                        self.abandoned(err);
                        return End::Abandon;
                    }
                };
                gate.open(attempt, started_seq);
                turn::started(&turn);
                match early {
                    Some(settle) => settle,
                    None => run.await,
                }
            };
            ran += 1;
            let finishes = settle.finishes();
            let done_through = if finishes {
                self.finished(turn.seq)
            } else {
                self.done_through
            };
            if let Settle::Completed { output, .. } = &settle {
                self.history.push_back(turns::Exchange {
                    seq: turn.seq,
                    input: turn.input.clone(),
                    output: output.clone(),
                });
                while self.history.len() as i64 > self.shared.ctx.history_window {
                    self.history.pop_front();
                }
            }
            self.outcome = Some(Outcome {
                turn,
                settle,
                started,
                done_through,
            });
            if !finishes {
                // A retry waits (order is strict); a hand-back stops.
                return End::Release(None);
            }
        }
        End::Release(None)
    }

    /// The seq through which every turn is finished once turn `seq` is:
    /// every turn before the next unfinished one.
    fn finished(&self, seq: i64) -> i64 {
        match self.turns.front() {
            Some(next) => next.seq - 1,
            None if !self.truncated => self.horizon - 1,
            None => seq,
        }
    }

    /// A step carrying the previous turn's outcome, if any.
    fn step(&self) -> Step {
        let mut step = Step::new(self.claimed.session_id, &self.claimed.lease);
        if let Some(o) = &self.outcome {
            step.settle = Some((o.turn.id, o.turn.job_id.clone(), o.settle.clone()));
        }
        step
    }

    /// Writes `step` (one that starts no turn).
    async fn write(&mut self, step: Step) -> Result<(), WriteError> {
        let written = self.shared.committer.commit(step).await;
        self.record(written).map(drop)
    }

    /// Takes in what a step did; returns the attempt of the turn it
    /// started, if any, and the seq of its `turn.started`.
    fn record(
        &mut self,
        written: Result<turns::StepOutcome, crate::committer::CommitError>,
    ) -> Result<Option<(i32, i64)>, WriteError> {
        let written = written.map_err(WriteError::Failed)?;
        if !written.fenced_in {
            metrics::counter!(m::FENCING_REJECTIONS_TOTAL, "scope" => SESSION_SCOPE).increment(1);
            tracing::warn!(
                session_id = %self.claimed.session_id, token = self.claimed.lease.token,
                "write refused by the fencing check: this worker lost the session lease"
            );
            return Err(WriteError::Fenced);
        }
        self.retired = written.retired;
        if let Some(o) = self.outcome.take() {
            self.done_through = o.done_through;
            if written.settled {
                turn::settled(&o.turn, &o.settle, o.started);
            } else {
                tracing::warn!(turn_id = %o.turn.id, "turn was already finished; outcome not recorded twice");
            }
        }
        Ok(written
            .attempt
            .map(|attempt| (attempt, written.started_seq.unwrap_or(0))))
    }

    /// After a failed write: log it and let the session go if the lease is
    /// still ours (whatever the failed step carried is run again later). If
    /// that fails too, the lease and the session's place in line expire
    /// together.
    fn abandoned(&self, err: WriteError) {
        if let WriteError::Failed(err) = err {
            tracing::warn!(session_id = %self.claimed.session_id, error = %err,
                "turn progress not written; the session will be picked up again");
            let mut step = Step::new(self.claimed.session_id, &self.claimed.lease);
            step.release = Some(Release {
                done_through: self.done_through,
                ready_at: None,
            });
            let committer = self.shared.committer.clone();
            tokio::spawn(async move {
                let _ = committer.commit(step).await;
            });
        }
    }
}

/// Why a step was not written.
enum WriteError {
    /// The lease is no longer ours.
    Fenced,
    /// The batch failed.
    Failed(crate::committer::CommitError),
}
