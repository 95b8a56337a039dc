//! Group commit: the steps of all the sessions a worker is draining go to
//! Postgres together.
//!
//! Each session's drain writes one step per turn and waits for it (its next
//! turn must not start before the previous one is recorded). Written one by
//! one, every step would pay a round trip, a statement and a commit, and a
//! worker with many busy sessions would spend its time on those. Instead,
//! drains hand their steps to the [`Committer`], which applies whatever has
//! queued up in one statement ([`questboard_core::turns::advance`]) and
//! answers each drain. Under load a batch carries many sessions; a lone
//! session pays one statement, as before. At most
//! [`CommitSettings::in_flight`] batches run at once, so the next batch
//! fills while one is in Postgres.
//!
//! After each commit the committer publishes the batch's events, in order,
//! before answering: a session's next step (and its events) can only come
//! after.
//!
//! A step whose reply changes the game state or asks for images is the
//! exception: it runs alone in its own transaction
//! ([`turns::advance_alone`]), next to the batch. A state change locks the
//! session's state row; each image becomes, in the same transaction as the
//! reply, a pending media item (`media.requested`) and the `media` job
//! that generates it, so a recorded reply never loses its images and a
//! reply recorded twice (it cannot be) would not ask twice. Turns without
//! either never wait for it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use questboard_core::events::EventPublisher;
use questboard_core::jobs::Job as _;
use questboard_core::metrics as m;
use questboard_core::turns::{self, Step, StepOutcome};
use questboard_core::{media, wakeups};
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};

use questboard_core::media::GenerateMedia;

/// How the committer batches.
#[derive(Debug, Clone, Copy)]
pub struct CommitSettings {
    /// Most steps in one statement.
    pub max_batch: usize,
    /// Most statements running at once.
    pub in_flight: usize,
    /// The largest a game state may become by a reply's change
    /// (`QB_STATE_MAX_BYTES`).
    pub state_limits: questboard_core::state::Limits,
}

impl Default for CommitSettings {
    fn default() -> Self {
        Self {
            max_batch: 512,
            in_flight: 2,
            state_limits: questboard_core::state::Limits::default(),
        }
    }
}

/// Why a step was not applied. The whole batch it was in failed; nothing
/// of it was written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("writing turn progress failed: {0}")]
pub struct CommitError(Arc<str>);

struct Request {
    step: Step,
    reply: Reply,
}

/// Hands steps to the batching task. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Committer {
    tx: mpsc::UnboundedSender<Request>,
}

impl Committer {
    /// Starts the batching task (inside a Tokio runtime). It stops when the
    /// last clone is dropped.
    pub fn start(
        pool: PgPool,
        events: EventPublisher,
        wake: wakeups::Publisher,
        settings: CommitSettings,
        quotas: questboard_core::quotas::Quotas,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, events, wake, settings, quotas, rx));
        Self { tx }
    }

    /// Applies `step` with whatever else is waiting, and returns what it did
    /// once it is committed and its events are handed to the publisher
    /// (so the outcome's `events` is empty).
    pub async fn commit(&self, step: Step) -> Result<StepOutcome, CommitError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request { step, reply })
            .map_err(|_| CommitError("the committer stopped".into()))?;
        answer
            .await
            .map_err(|_| CommitError("the committer stopped".into()))?
    }
}

async fn run(
    pool: PgPool,
    events: EventPublisher,
    wake: wakeups::Publisher,
    settings: CommitSettings,
    quotas: questboard_core::quotas::Quotas,
    mut rx: mpsc::UnboundedReceiver<Request>,
) {
    let slots = Arc::new(Semaphore::new(settings.in_flight.max(1)));
    let max_batch = settings.max_batch.max(1);
    // Steps held back because their session already is in the batch being
    // formed (a drain has one step outstanding, so only a misuse does this).
    let mut held_back: Vec<Request> = Vec::new();
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = std::mem::take(&mut held_back);
        if batch.is_empty() && rx.recv_many(&mut batch, max_batch).await == 0 {
            return;
        }
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let mut sessions = HashSet::with_capacity(batch.len());
        let (batch, later): (Vec<Request>, Vec<Request>) = batch
            .into_iter()
            .partition(|r| sessions.insert(r.step.session_id));
        held_back = later;
        let (pool, events, wake) = (pool.clone(), events.clone(), wake.clone());
        // The images a reply asks for are charged to its turn's author.
        let media_per_hour = quotas.limit(questboard_core::quotas::Quota::UserMediaPerHour);
        let state_limits = settings.state_limits;
        tokio::spawn(async move {
            apply(&pool, &events, &wake, batch, state_limits, media_per_hour).await;
            drop(permit);
        });
    }
}

async fn apply(
    pool: &PgPool,
    events: &EventPublisher,
    wake: &wakeups::Publisher,
    batch: Vec<Request>,
    state_limits: questboard_core::state::Limits,
    media_per_hour: Option<u64>,
) {
    let (alone, batch): (Vec<Request>, Vec<Request>) =
        batch.into_iter().partition(|r| r.step.runs_alone());
    let alone = alone.into_iter().map(|request| async move {
        let applied =
            turns::retrying(|| advance_alone(pool, &request.step, state_limits, media_per_hour))
                .await;
        if let Ok((_, images)) = &applied
            && *images > 0
        {
            metrics::counter!(m::JOBS_ENQUEUED_TOTAL, "kind" => GenerateMedia::SPEC.kind)
                .increment(*images as u64);
            wake.announce(GenerateMedia::SPEC.kind);
        }
        answer(
            events,
            applied.map(|(o, _)| vec![o]),
            vec![request.reply],
            1,
        );
    });
    let batched = async {
        if !batch.is_empty() {
            apply_batch(pool, events, batch).await;
        }
    };
    futures::future::join(futures::future::join_all(alone), batched).await;
}

/// Applies a step that runs alone, with the images its reply asks for, in
/// one transaction; returns its outcome (with every event it appended) and
/// how many images were asked for.
async fn advance_alone(
    pool: &PgPool,
    step: &Step,
    state_limits: questboard_core::state::Limits,
    media_per_hour: Option<u64>,
) -> turns::Result<(StepOutcome, usize)> {
    let mut tx = pool.begin().await?;
    let mut outcome = turns::advance_alone(&mut tx, step, state_limits).await?;
    let mut asked = 0;
    if outcome.images
        && let Some((turn_id, _, settle)) = &step.settle
    {
        let requested = media::ask_for_turn_images(
            &mut tx,
            step.session_id,
            *turn_id,
            settle.images(),
            media_per_hour,
        )
        .await
        .map_err(|e| match e {
            media::Error::Database(e) => turns::Error::Database(e),
            other => turns::Error::Invalid(other.to_string()),
        })?;
        asked = requested
            .iter()
            .filter(|e| e.kind == "media.requested")
            .count();
        outcome.events.extend(requested);
    }
    tx.commit().await?;
    Ok((outcome, asked))
}

/// Counts what the events of one step say about the game state: a reply's
/// applied change (`state_updates_total{source="system"}`), a change held
/// for review, a change refused by the session's setting.
fn count_state_events(appended: &[questboard_core::events::Event]) {
    for event in appended {
        match event.kind.as_str() {
            "state.updated" => {
                metrics::counter!(m::STATE_UPDATES_TOTAL, "source" => "system").increment(1);
            }
            "state.proposed" => {
                metrics::counter!(m::STATE_PROPOSALS_TOTAL, "outcome" => "held").increment(1);
            }
            "turn.completed" if event.data["state_change"]["error"]["code"] == "AI_NOT_ALLOWED" => {
                metrics::counter!(m::STATE_PROPOSALS_TOTAL, "outcome" => "refused").increment(1);
            }
            _ => {}
        }
    }
}

async fn apply_batch(pool: &PgPool, events: &EventPublisher, batch: Vec<Request>) {
    let (steps, replies): (Vec<Step>, Vec<_>) =
        batch.into_iter().map(|r| (r.step, r.reply)).unzip();
    let started = Instant::now();
    let applied = turns::retrying(|| turns::advance(pool, &steps)).await;
    metrics::histogram!(m::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
    metrics::histogram!(m::COMMIT_BATCH_STEPS).record(steps.len() as f64);
    answer(events, applied, replies, steps.len());
}

type Reply = oneshot::Sender<Result<StepOutcome, CommitError>>;

/// Publishes what the steps appended, then answers their drains.
fn answer(
    events: &EventPublisher,
    applied: turns::Result<Vec<StepOutcome>>,
    replies: Vec<Reply>,
    steps: usize,
) {
    match applied {
        Ok(outcomes) => {
            for (mut outcome, reply) in outcomes.into_iter().zip(replies) {
                count_state_events(&outcome.events);
                events.events(std::mem::take(&mut outcome.events));
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, steps, "turn steps failed");
            let err = CommitError(err.to_string().into());
            for reply in replies {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}
