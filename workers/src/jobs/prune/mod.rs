//! The `prune` job: retention, in small bounded steps.
//!
//! What goes (each category can be run alone, as the hourly schedule does
//! for invites and leases):
//! - `invites`: expired, revoked or used up more than `invites` ago;
//! - `jobs`: finished job rows: succeeded more than `jobs_succeeded` ago,
//!   failed or cancelled more than `jobs_failed` ago;
//! - `events`: session events older than `events` (`QB_EVENT_RETENTION_DAYS`);
//!   the session remembers how far it was pruned, and a client resuming
//!   from an older seq gets an explicit `reset` instead of a gap;
//! - `leases`: lease rows expired for more than `leases`;
//! - `state_requests`: client ids of game-state updates (which make resends
//!   idempotent) older than `state_requests`;
//! - `proposals`: proposals held for review and decided (approved or
//!   rejected) more than `events` ago, with the events that named them;
//! - `media_versions`: versions of media replaced by a newer one more than
//!   `media_versions` ago (`QB_MEDIA_VERSION_RETENTION_DAYS`): their objects
//!   first, then their rows (the current version always stays; media of
//!   deleted sessions go with the session, below);
//! - `idle_sessions`: active sessions without activity for `session_idle`
//!   (`QB_SESSION_IDLE_DAYS`) are archived (`session.archived`, reason `idle`);
//! - `audit`: entries of the operators' audit log older than `audit`
//!   (`QB_AUDIT_RETENTION_DAYS`);
//! - `archived_sessions`: sessions archived more than `archived_sessions`
//!   ago (`QB_RETENTION_DAYS`) are deleted with everything that belongs to
//!   them: their objects in storage first, then events, turns and jobs in
//!   chunks, then the session row (members, invites, its place in line).
//!
//! Shaped like River's job cleaner: each category is a [`Sweep`] in a
//! file of its own, every step one statement of at most `batch` rows
//! (1,000; events: statements of one session each, up to a batch in all),
//! run by the one loop in [`crate::sweep`] (pause between steps,
//! stop when a batch comes back short), so pruning never holds long locks
//! against live traffic. Every step is idempotent: a run killed halfway is
//! simply run again. With `dry_run` nothing changes and the result says
//! what would go. The result ([`Report`]) counts every category.

use std::time::{Duration, Instant};

use chrono::Utc;
use questboard_core::jobs::{Backoff, Job, JobSpec};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Handler, JobContext, JobError, JobRun};
use crate::sweep::{Sweeper, Tally};

mod archived_sessions;
mod audit;
mod events;
mod idle_sessions;
mod invites;
mod jobs;
mod leases;
mod media_versions;
mod proposals;
mod state_requests;

/// What to prune.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Dead invites.
    Invites,
    /// Finished job rows.
    Jobs,
    /// Old session events.
    Events,
    /// Expired lease rows.
    Leases,
    /// Old client ids of game-state updates.
    StateRequests,
    /// Proposals decided long ago.
    Proposals,
    /// Versions of media replaced long ago.
    MediaVersions,
    /// Archive sessions idle too long.
    IdleSessions,
    /// Old entries of the operators' audit log.
    Audit,
    /// Delete sessions archived too long, with everything they own.
    ArchivedSessions,
}

impl Category {
    /// Every category, in the order a full run goes through them.
    pub const ALL: [Category; 10] = [
        Category::Invites,
        Category::Leases,
        Category::StateRequests,
        Category::Proposals,
        Category::MediaVersions,
        Category::Jobs,
        Category::Events,
        Category::IdleSessions,
        Category::Audit,
        Category::ArchivedSessions,
    ];
}

/// The payload: which categories (default all), and whether to change
/// anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Prune {
    /// Only these categories (empty: all).
    #[serde(default)]
    #[schema(inline)]
    pub only: Vec<Category>,
    /// Report what would go; change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

impl Job for Prune {
    const SPEC: JobSpec = JobSpec {
        kind: "prune",
        queue: "questboard.prune",
        max_attempts: 3,
        backoff: Backoff::exponential(Duration::from_secs(30)),
        timeout: Duration::from_secs(3 * 3600),
        concurrency: 1,
        operator_may_start: true,
        ..JobSpec::DEFAULTS
    };
}

/// How long things are kept (configuration), and how big a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Dead invites.
    pub invites: Duration,
    /// Succeeded job rows.
    pub jobs_succeeded: Duration,
    /// Failed and cancelled job rows.
    pub jobs_failed: Duration,
    /// Session events.
    pub events: Duration,
    /// Expired lease rows.
    pub leases: Duration,
    /// Client ids of game-state updates.
    pub state_requests: Duration,
    /// Media versions, after a newer one replaced them.
    pub media_versions: Duration,
    /// Idle time before a session is archived.
    pub session_idle: Duration,
    /// Time archived before a session is deleted.
    pub archived_sessions: Duration,
    /// Entries of the operators' audit log.
    pub audit: Duration,
    /// Most rows one statement touches.
    pub batch: i64,
    /// Pause between statements.
    pub pause: Duration,
}

const DAY: Duration = Duration::from_secs(24 * 3600);

impl Default for Retention {
    fn default() -> Self {
        Self {
            invites: 7 * DAY,
            jobs_succeeded: 7 * DAY,
            jobs_failed: 30 * DAY,
            events: 30 * DAY,
            leases: DAY,
            state_requests: 7 * DAY,
            media_versions: 30 * DAY,
            session_idle: 90 * DAY,
            archived_sessions: 365 * DAY,
            audit: 365 * DAY,
            batch: 1000,
            pause: Duration::from_millis(20),
        }
    }
}

/// What one run did (the job's result).
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Nothing was changed; the counts say what would go.
    pub dry_run: bool,
    /// The categories run, in order.
    pub categories: Vec<Category>,
    /// Invites deleted.
    pub invites: u64,
    /// Job rows deleted.
    pub jobs: u64,
    /// Session events deleted.
    pub events: u64,
    /// Lease rows deleted.
    pub leases: u64,
    /// Client ids of game-state updates deleted.
    pub state_requests: u64,
    /// Decided proposals deleted.
    pub proposals: u64,
    /// Media versions deleted.
    pub media_versions: u64,
    /// Their bytes.
    pub media_bytes: u64,
    /// Sessions archived for idling.
    pub sessions_archived: u64,
    /// Sessions deleted.
    pub sessions_deleted: u64,
    /// Audit entries deleted.
    pub audit: u64,
    /// Turns deleted with their sessions.
    pub turns_deleted: u64,
    /// Objects deleted from storage.
    pub objects_deleted: u64,
    /// Steps run: each one statement of at most `batch` rows (events:
    /// statements of one session each, up to a batch in all).
    pub statements: u64,
    /// How long the run took.
    pub seconds: f64,
}

impl Tally for Report {
    fn done(&self) -> i64 {
        (self.invites
            + self.jobs
            + self.events
            + self.leases
            + self.state_requests
            + self.proposals
            + self.media_versions
            + self.sessions_archived
            + self.sessions_deleted
            + self.audit) as i64
    }
}

/// What every step of a prune run reads.
struct Env {
    ctx: JobContext,
    retention: Retention,
    dry_run: bool,
}

impl Env {
    /// The time `d` ago.
    fn ago(&self, d: Duration) -> chrono::DateTime<Utc> {
        chrono::TimeDelta::from_std(d)
            .ok()
            .and_then(|d| Utc::now().checked_sub_signed(d))
            .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC)
    }
}

fn db(err: impl std::fmt::Display) -> JobError {
    JobError::retryable(format!("database: {err}"))
}

impl Handler for Prune {
    async fn run(self, ctx: &JobContext, run: &JobRun) -> Result<Value, JobError> {
        let started = Instant::now();
        let categories: Vec<Category> = if self.only.is_empty() {
            Category::ALL.to_vec()
        } else {
            Category::ALL
                .into_iter()
                .filter(|c| self.only.contains(c))
                .collect()
        };
        let env = Env {
            ctx: ctx.clone(),
            retention: ctx.retention,
            dry_run: self.dry_run,
        };
        let report = Report {
            dry_run: self.dry_run,
            categories: categories.clone(),
            ..Report::default()
        };
        let mut sweeper = Sweeper::new(run, env, report, ctx.retention.pause);
        for category in categories {
            match category {
                Category::Invites => sweeper.sweep::<invites::Invites>().await?,
                Category::Leases => sweeper.sweep::<leases::Leases>().await?,
                Category::StateRequests => sweeper.sweep::<state_requests::StateRequests>().await?,
                Category::Proposals => sweeper.sweep::<proposals::Proposals>().await?,
                Category::MediaVersions => sweeper.sweep::<media_versions::MediaVersions>().await?,
                Category::Jobs => sweeper.sweep::<jobs::Jobs>().await?,
                Category::Events => sweeper.sweep::<events::Events>().await?,
                Category::IdleSessions => sweeper.sweep::<idle_sessions::IdleSessions>().await?,
                Category::Audit => sweeper.sweep::<audit::Audit>().await?,
                Category::ArchivedSessions => {
                    sweeper
                        .sweep::<archived_sessions::ArchivedSessions>()
                        .await?
                }
            }
        }
        let mut report = sweeper.report;
        report.statements = sweeper.steps;
        report.seconds = started.elapsed().as_secs_f64();
        tracing::info!(?report, "prune finished");
        serde_json::to_value(&report).map_err(JobError::fatal)
    }
}
