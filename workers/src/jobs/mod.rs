//! Job handlers, one file per kind, and the one list that registers them.
//!
//! A kind is declared next to its handler: the file's type implements
//! [`questboard_core::jobs::Job`] (its [`JobSpec`]: queue, payload version,
//! attempts, backoff, timeout, concurrency, ...) and [`Handler`] (what a
//! run does). [`registry`] lists every kind questboard runs; adding a kind
//! is one file and one line there, as with crates.io's `register_job_type`.
//! A test or the benchmark may register more kinds on top
//! ([`Registry::register`]).
//!
//! Handlers are idempotent: a run may be repeated after a crash or a
//! timeout, and what they record about the job goes through writes fenced
//! by the run's job lease. Their errors say what the runtime should do:
//! retry (perhaps after a delay the remote side asked for) or fail for good
//! ([`JobError`]); a handler never sleeps to retry by itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use questboard_core::events::{Delta, EventPublisher};
use questboard_core::jobs::{self, Job, JobSpec, PayloadError, plain};
use questboard_core::leases::Lease;
use questboard_core::metrics as m;
use questboard_core::storage::Storage;
use questboard_core::turns::TurnJob;
use questboard_core::wakeups;
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::providers::ChunkSink;

pub mod asset_migration;
pub mod legacy_import;
pub mod media;
pub mod prune;
pub mod reconcile;
pub mod turn;

/// Every kind questboard runs: turns on the session lane, the rest on the
/// plain lane.
pub fn registry() -> Registry {
    Registry::new()
        .turns()
        .register::<prune::Prune>()
        .register::<reconcile::Reconcile>()
        .register::<media::GenerateMedia>()
        .register::<questboard_core::asset_migration::MigrateAssets>()
        .register::<questboard_core::legacy_import::ImportLegacy>()
}

/// Why a run did not succeed, and what the runtime should do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// Worth another run (timeouts, a remote side's 429 or 5xx, a lost
    /// lease): after the kind's backoff, or `retry_after` if that is longer.
    #[error("{reason}")]
    Retryable {
        /// What happened (sanitised: shown to operators and members).
        reason: String,
        /// How long the remote side asked us to wait.
        retry_after: Option<Duration>,
    },
    /// Another run would fail the same way.
    #[error("{reason}")]
    Fatal {
        /// What happened (sanitised).
        reason: String,
    },
    /// An operator asked the job to stop and the handler did, at a safe
    /// point ([`JobRun::checkpoint`]).
    #[error("cancelled")]
    Cancelled,
}

impl JobError {
    /// A retryable error.
    pub fn retryable(reason: impl std::fmt::Display) -> Self {
        JobError::Retryable {
            reason: reason.to_string(),
            retry_after: None,
        }
    }

    /// A fatal error.
    pub fn fatal(reason: impl std::fmt::Display) -> Self {
        JobError::Fatal {
            reason: reason.to_string(),
        }
    }
}

/// What a run of a plain kind does.
pub trait Handler: Job {
    /// Runs the job. Returns the JSON report recorded as the job's result.
    /// Call [`JobRun::checkpoint`] between units of work, so a cancelled
    /// job stops and a run whose lease is gone stops writing.
    fn run(
        self,
        ctx: &JobContext,
        run: &JobRun,
    ) -> impl Future<Output = Result<Value, JobError>> + Send;
}

/// Runs a stored payload of one kind.
pub(crate) type RunFn =
    for<'a> fn(&'a [u8], &'a JobContext, &'a JobRun) -> BoxFuture<'a, Result<Value, JobError>>;

fn run_stored<'a, J: Handler>(
    stored: &'a [u8],
    ctx: &'a JobContext,
    run: &'a JobRun,
) -> BoxFuture<'a, Result<Value, JobError>> {
    Box::pin(async move {
        let job: J = jobs::decode(stored).map_err(JobError::fatal)?;
        job.run(ctx, run).await
    })
}

type ValidateFn = fn(Value) -> Result<(Vec<u8>, Option<Uuid>), PayloadError>;

/// Which part of the runtime runs a kind.
#[derive(Clone, Copy)]
pub(crate) enum Lane {
    /// The session lane (turns).
    Session,
    /// The plain lane, with the kind's handler.
    Plain(RunFn),
}

/// A registered kind.
#[derive(Clone, Copy)]
pub struct Kind {
    /// Its declaration.
    pub spec: JobSpec,
    pub(crate) lane: Lane,
    validate: ValidateFn,
    payload_schema: fn() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kind").field("spec", &self.spec).finish()
    }
}

impl Kind {
    /// Checks an untrusted payload against the kind and returns it in
    /// stored form with the session it names.
    pub fn validate(&self, payload: Value) -> Result<(Vec<u8>, Option<Uuid>), PayloadError> {
        (self.validate)(payload)
    }

    /// The JSON Schema of the payload an operator sends (the payload type's
    /// `utoipa::ToSchema`), for the OpenAPI description.
    pub fn payload_schema(&self) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        (self.payload_schema)()
    }
}

/// The kinds a process knows, each with its handler.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    kinds: Vec<Kind>,
}

impl Registry {
    /// No kinds.
    pub fn new() -> Self {
        Self::default()
    }

    fn add(mut self, kind: Kind) -> Self {
        let spec = kind.spec;
        assert!(
            !self
                .kinds
                .iter()
                .any(|k| k.spec.kind == spec.kind || k.spec.queue == spec.queue),
            "job kind {} (queue {}) registered twice",
            spec.kind,
            spec.queue
        );
        assert!(
            !spec.kind.is_empty()
                && spec
                    .kind
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
            "job kind names are lowercase letters and '_': {:?}",
            spec.kind
        );
        self.kinds.push(kind);
        self
    }

    /// Registers the turn kind, run by the session lane.
    pub fn turns(self) -> Self {
        self.add(Kind {
            spec: TurnJob::SPEC,
            lane: Lane::Session,
            validate: |_| {
                Err(PayloadError::Shape {
                    kind: "turn",
                    reason: "turns are submitted through their session".into(),
                })
            },
            payload_schema: || utoipa::openapi::schema::Object::new().into(),
        })
    }

    /// Registers plain kind `J` and its handler.
    pub fn register<J: Handler + utoipa::ToSchema>(self) -> Self {
        assert!(
            !J::SPEC.session_serial,
            "{}: only turns are session-serial (the session lane runs turn rows)",
            J::SPEC.kind
        );
        self.add(Kind {
            spec: J::SPEC,
            lane: Lane::Plain(run_stored::<J>),
            validate: jobs::validate::<J>,
            payload_schema: <J as utoipa::PartialSchema>::schema,
        })
    }

    /// The kind named `kind`.
    pub fn get(&self, kind: &str) -> Option<&Kind> {
        self.kinds.iter().find(|k| k.spec.kind == kind)
    }

    /// The kind stored under `queue`.
    pub fn by_queue(&self, queue: &str) -> Option<&Kind> {
        self.kinds.iter().find(|k| k.spec.queue == queue)
    }

    /// Every kind, in registration order.
    pub fn kinds(&self) -> &[Kind] {
        &self.kinds
    }

    /// Every kind's declaration.
    pub fn specs(&self) -> Vec<JobSpec> {
        self.kinds.iter().map(|k| k.spec).collect()
    }
}

/// Makes the sink a turn's streamed reply flows into.
pub trait SinkFactory: Send + Sync {
    /// A sink for one turn's reply.
    fn sink(&self, session_id: Uuid, turn_id: Uuid) -> Box<dyn ChunkSink>;
}

/// Publishes each chunk as an ephemeral `turn.delta` on the session's
/// Redis channel, where the API's WebSocket bridge picks it up.
#[derive(Debug, Clone)]
pub struct PublishDeltas(pub EventPublisher);

impl SinkFactory for PublishDeltas {
    fn sink(&self, session_id: Uuid, turn_id: Uuid) -> Box<dyn ChunkSink> {
        struct Publish {
            publisher: EventPublisher,
            session_id: Uuid,
            turn_id: Uuid,
            attempt: i32,
            started_seq: i64,
        }
        impl ChunkSink for Publish {
            fn attempt_started(&mut self, attempt: i32, seq: i64) {
                self.attempt = attempt;
                self.started_seq = seq;
            }
            fn chunk(&mut self, index: u32, text: &str) {
                metrics::counter!(m::TURN_CHUNKS_TOTAL).increment(1);
                self.publisher.delta(Delta {
                    kind: "turn.delta".into(),
                    session_id: self.session_id,
                    turn_id: self.turn_id,
                    attempt: self.attempt,
                    started_seq: self.started_seq,
                    index,
                    text: text.to_owned(),
                });
            }
        }
        Box::new(Publish {
            publisher: self.0.clone(),
            session_id,
            turn_id,
            attempt: 0,
            started_seq: 0,
        })
    }
}

/// What every handler can use: the services of the worker process.
#[derive(Clone)]
pub struct JobContext {
    /// Postgres.
    pub pool: PgPool,
    /// Campaign files and reports.
    pub storage: Storage,
    /// Publishes committed session events.
    pub events: EventPublisher,
    /// Wakes workers when a handler enqueues more work.
    pub wake: wakeups::Publisher,
    /// The game master: the primary model endpoint and its fallbacks,
    /// each with its limits shared by every worker.
    pub llm: Arc<crate::providers::fallback::Endpoints>,
    /// Who makes images and narration.
    pub media: Arc<dyn crate::providers::media::MediaProvider>,
    /// Size limits of maps and notes (uploads and migrated assets alike).
    pub media_limits: questboard_core::media::UploadLimits,
    /// Where streamed chunks go.
    pub sinks: Arc<dyn SinkFactory>,
    /// The system prompt for turns.
    pub system_prompt: Arc<str>,
    /// How many earlier exchanges a turn's prompt carries.
    pub history_window: i64,
    /// Members' quotas (the images a reply asks for are charged to its
    /// turn's author).
    pub quotas: questboard_core::quotas::Quotas,
    /// The media provider's limits, shared by every worker.
    pub media_limiter: Arc<questboard_core::provider_limits::Limiter>,
    /// What a turn's prompt may hold (trimmed to fit before each call).
    pub context: crate::providers::ContextBudget,
    /// First retry delay of turns; doubles per attempt, with jitter.
    pub backoff_base: Duration,
    /// What `prune` keeps, and for how long.
    pub retention: prune::Retention,
    /// How `reconcile` treats what it finds.
    pub reconcile: reconcile::Settings,
    /// Where migrations and imports may read from (`QB_MIGRATION_SOURCES`).
    pub sources: questboard_core::sources::Allowlist,
}

/// One run of a plain job: who it is, and the handler's line to the
/// runtime (cancellation, progress).
pub struct JobRun {
    id: String,
    spec: JobSpec,
    attempt: i32,
    max_attempts: i32,
    session: Option<Uuid>,
    lease: Lease,
    cancel: watch::Receiver<bool>,
    lost: Arc<AtomicBool>,
    pool: PgPool,
    events: EventPublisher,
    progress: Mutex<Throttle>,
}

#[derive(Default)]
struct Throttle {
    written: Option<Instant>,
    done: i64,
}

/// Least time between two progress writes of one run.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

impl JobRun {
    pub(crate) fn new(
        claimed: &plain::Claimed,
        spec: JobSpec,
        cancel: watch::Receiver<bool>,
        lost: Arc<AtomicBool>,
        pool: PgPool,
        events: EventPublisher,
    ) -> Self {
        Self {
            id: claimed.id.clone(),
            spec,
            attempt: claimed.attempt,
            max_attempts: claimed.max_attempts,
            session: claimed.session,
            lease: claimed.lease.clone(),
            cancel,
            lost,
            pool,
            events,
            progress: Mutex::new(Throttle::default()),
        }
    }

    /// The job's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// This run's attempt number, from 1.
    pub fn attempt(&self) -> i32 {
        self.attempt
    }

    /// Most runs the job may have.
    pub fn max_attempts(&self) -> i32 {
        self.max_attempts
    }

    /// The job's session, if it has one.
    pub fn session(&self) -> Option<Uuid> {
        self.session
    }

    /// Whether an operator asked the job to stop.
    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Whether the run's job lease may belong to another worker now.
    pub fn lease_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// A safe point: fails with [`JobError::Cancelled`] once an operator
    /// asked the job to stop, and with a retryable error once the lease
    /// is lost (another worker may be running the job).
    pub fn checkpoint(&self) -> Result<(), JobError> {
        if self.is_cancelled() {
            return Err(JobError::Cancelled);
        }
        if self.lease_lost() {
            return Err(JobError::retryable(
                "the worker lost the job's lease; another worker takes over",
            ));
        }
        Ok(())
    }

    /// Completes when an operator asks the job to stop (for `select!`
    /// around long awaits).
    pub async fn cancelled(&self) {
        let mut cancel = self.cancel.clone();
        let _ = cancel.wait_for(|c| *c).await;
    }

    /// Reports progress: `done` of `total` items, and what it is doing.
    /// Written at most once per [`PROGRESS_EVERY`] (reports in between are
    /// dropped), fenced by the run's lease; for a job of a session it also
    /// becomes a `job.progress` session event. Fails only when the lease is
    /// lost.
    pub async fn progress(
        &self,
        done: i64,
        total: Option<i64>,
        message: &str,
    ) -> Result<(), JobError> {
        let previous = {
            let mut throttle = self
                .progress
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if throttle
                .written
                .is_some_and(|at| at.elapsed() < PROGRESS_EVERY)
            {
                return Ok(());
            }
            throttle.written = Some(Instant::now());
            std::mem::replace(&mut throttle.done, done)
        };
        let kind = self.spec.kind;
        if done > previous {
            metrics::counter!(m::JOB_ITEMS_TOTAL, "kind" => kind)
                .increment((done - previous) as u64);
        }
        if let Some(total) = total.filter(|t| *t > 0) {
            metrics::gauge!(m::JOB_PROGRESS_RATIO, "kind" => kind)
                .set((done as f64 / total as f64).clamp(0.0, 1.0));
        }
        let report = plain::ProgressReport {
            kind,
            done,
            total,
            message: Some(message),
        };
        match plain::report_progress(&self.pool, &self.lease, self.session, &report).await {
            Ok(Some(event)) => {
                if let Some(event) = event {
                    self.events.events([event]);
                }
                Ok(())
            }
            Ok(None) => {
                self.lost.store(true, Ordering::SeqCst);
                metrics::counter!(m::FENCING_REJECTIONS_TOTAL, "scope" => "job").increment(1);
                Err(JobError::retryable(
                    "the worker lost the job's lease; another worker takes over",
                ))
            }
            Err(err) => {
                // Progress is informative: a failed write does not stop the run.
                tracing::warn!(job_id = %self.id, error = %err, "recording progress failed");
                Ok(())
            }
        }
    }
}
