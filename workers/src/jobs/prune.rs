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
//! - `archived_sessions`: sessions archived more than `archived_sessions`
//!   ago (`QB_RETENTION_DAYS`) are deleted with everything that belongs to
//!   them: their objects in storage first, then events, turns and jobs in
//!   chunks, then the session row (members, invites, its place in line).
//!
//! Shaped like River's job cleaner: every statement touches at most
//! `batch` rows (1,000), the job pauses briefly between statements, and a
//! category ends when a batch comes back short, so pruning never holds
//! long locks against live traffic. Every step is idempotent: a run killed
//! halfway is simply run again. With `dry_run` nothing changes and the
//! result says what would go. The result counts every category.

use std::time::{Duration, Instant};

use chrono::Utc;
use questboard_core::jobs::{self, Backoff, Job, JobSpec};
use questboard_core::{events, invites, leases, media, sessions, turns};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Handler, JobContext, JobError, JobRun};

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
    /// Delete sessions archived too long, with everything they own.
    ArchivedSessions,
}

impl Category {
    /// Every category, in the order a full run goes through them.
    pub const ALL: [Category; 9] = [
        Category::Invites,
        Category::Leases,
        Category::StateRequests,
        Category::Proposals,
        Category::MediaVersions,
        Category::Jobs,
        Category::Events,
        Category::IdleSessions,
        Category::ArchivedSessions,
    ];

    fn name(self) -> &'static str {
        match self {
            Category::Invites => "invites",
            Category::Jobs => "jobs",
            Category::Events => "events",
            Category::Leases => "leases",
            Category::StateRequests => "state_requests",
            Category::Proposals => "proposals",
            Category::MediaVersions => "media_versions",
            Category::IdleSessions => "idle_sessions",
            Category::ArchivedSessions => "archived_sessions",
        }
    }
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
            batch: 1000,
            pause: Duration::from_millis(20),
        }
    }
}

/// Counts of one run.
#[derive(Debug, Default, Serialize)]
struct Report {
    invites: u64,
    jobs: u64,
    events: u64,
    leases: u64,
    state_requests: u64,
    proposals: u64,
    media_versions: u64,
    media_bytes: u64,
    sessions_archived: u64,
    sessions_deleted: u64,
    turns_deleted: u64,
    objects_deleted: u64,
    statements: u64,
}

impl Report {
    fn total(&self) -> i64 {
        (self.invites
            + self.jobs
            + self.events
            + self.leases
            + self.state_requests
            + self.proposals
            + self.media_versions
            + self.sessions_archived
            + self.sessions_deleted) as i64
    }
}

/// The time `d` ago.
fn ago(d: Duration) -> chrono::DateTime<Utc> {
    chrono::TimeDelta::from_std(d)
        .ok()
        .and_then(|d| Utc::now().checked_sub_signed(d))
        .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC)
}

fn db(err: impl std::fmt::Display) -> JobError {
    JobError::retryable(format!("database: {err}"))
}

struct Pruner<'a> {
    ctx: &'a JobContext,
    run: &'a JobRun,
    retention: Retention,
    dry_run: bool,
    report: Report,
}

impl Pruner<'_> {
    /// Between statements: stop if asked to, say how far we are, breathe.
    async fn step(&mut self, category: Category) -> Result<(), JobError> {
        self.report.statements += 1;
        self.run.checkpoint()?;
        self.run
            .progress(self.report.total(), None, category.name())
            .await?;
        if !self.retention.pause.is_zero() {
            tokio::time::sleep(self.retention.pause).await;
        }
        Ok(())
    }

    async fn invites(&mut self) -> Result<(), JobError> {
        let mut after = Uuid::nil();
        loop {
            let (_, deleted, next) = invites::prune(
                &self.ctx.pool,
                after,
                self.retention.invites,
                self.retention.batch,
                self.dry_run,
            )
            .await
            .map_err(db)?;
            self.report.invites += deleted;
            self.step(Category::Invites).await?;
            match next {
                Some(next) => after = next,
                None => return Ok(()),
            }
        }
    }

    async fn leases(&mut self) -> Result<(), JobError> {
        let mut after = (String::new(), String::new());
        loop {
            let (_, deleted, next) = leases::prune_expired(
                &self.ctx.pool,
                (&after.0, &after.1),
                self.retention.leases,
                self.retention.batch,
                self.dry_run,
            )
            .await
            .map_err(db)?;
            self.report.leases += deleted;
            self.step(Category::Leases).await?;
            match next {
                Some(next) => after = next,
                None => return Ok(()),
            }
        }
    }

    async fn state_requests(&mut self) -> Result<(), JobError> {
        loop {
            let n = questboard_core::state::prune_requests(
                &self.ctx.pool,
                self.retention.state_requests,
                self.retention.batch,
                self.dry_run,
            )
            .await
            .map_err(db)?;
            self.report.state_requests += n;
            self.step(Category::StateRequests).await?;
            // A dry run counts everything in one statement.
            if self.dry_run || (n as i64) < self.retention.batch {
                return Ok(());
            }
        }
    }

    async fn proposals(&mut self) -> Result<(), JobError> {
        let before = ago(self.retention.events);
        loop {
            let n = questboard_core::state::review::prune_decided(
                &self.ctx.pool,
                before,
                self.retention.batch,
                self.dry_run,
            )
            .await
            .map_err(db)?;
            self.report.proposals += n;
            self.step(Category::Proposals).await?;
            if self.dry_run || (n as i64) < self.retention.batch {
                return Ok(());
            }
        }
    }

    /// Old media versions: a page at a time, objects deleted before rows
    /// (a failure leaves rows to be pruned again, never rows without
    /// their objects gone).
    async fn media_versions(&mut self) -> Result<(), JobError> {
        let before = ago(self.retention.media_versions);
        let mut after = None;
        loop {
            let page = media::replaced_before(&self.ctx.pool, before, after, self.retention.batch)
                .await
                .map_err(db)?;
            let Some((at, last)) = page.last() else {
                return self.step(Category::MediaVersions).await;
            };
            after = Some((*at, last.media_id, last.version));
            let full = page.len() as i64 >= self.retention.batch;
            let versions: Vec<media::OldVersion> = page.into_iter().map(|(_, v)| v).collect();
            let bytes: u64 = versions.iter().map(|v| v.byte_size.max(0) as u64).sum();
            if self.dry_run {
                self.report.media_versions += versions.len() as u64;
                self.report.media_bytes += bytes;
            } else {
                let keys = versions.iter().map(|v| v.storage_key.clone()).collect();
                self.report.objects_deleted += self
                    .ctx
                    .storage
                    .delete_objects(keys)
                    .await
                    .map_err(|e| JobError::retryable(format!("storage: {e}")))?;
                self.report.media_versions += media::forget_versions(&self.ctx.pool, &versions)
                    .await
                    .map_err(db)?;
                self.report.media_bytes += bytes;
            }
            self.step(Category::MediaVersions).await?;
            if !full {
                return Ok(());
            }
        }
    }

    async fn jobs(&mut self) -> Result<(), JobError> {
        let succeeded_before = ago(self.retention.jobs_succeeded);
        let dead_before = ago(self.retention.jobs_failed);
        let mut after = String::new();
        loop {
            let step = jobs::control::prune_finished(
                &self.ctx.pool,
                &after,
                succeeded_before,
                dead_before,
                self.retention.batch,
                self.dry_run,
            )
            .await
            .map_err(db)?;
            self.report.jobs += step.deleted;
            self.step(Category::Jobs).await?;
            match step.next {
                Some(next) => after = next,
                None => return Ok(()),
            }
        }
    }

    async fn events(&mut self) -> Result<(), JobError> {
        let before = ago(self.retention.events);
        let mut after = Uuid::nil();
        loop {
            let (old, next) = events::sessions_with_old_events(
                &self.ctx.pool,
                after,
                before,
                self.retention.batch,
            )
            .await
            .map_err(db)?;
            self.step(Category::Events).await?;
            for (session, mut pruned) in old {
                loop {
                    let (count, mark) = events::prune_session(
                        &self.ctx.pool,
                        session,
                        pruned,
                        before,
                        self.retention.batch,
                        self.dry_run,
                    )
                    .await
                    .map_err(db)?;
                    self.report.events += count;
                    self.step(Category::Events).await?;
                    // A dry run deletes nothing, so the next chunk starts
                    // where this one ended.
                    if (count as i64) < self.retention.batch || mark <= pruned {
                        break;
                    }
                    pruned = mark;
                }
            }
            match next {
                Some(next) => after = next,
                None => return Ok(()),
            }
        }
    }

    async fn idle_sessions(&mut self) -> Result<(), JobError> {
        let mut after = Uuid::nil();
        loop {
            let ids = sessions::page_ids(&self.ctx.pool, after, self.retention.batch)
                .await
                .map_err(db)?;
            let (archived, count) = sessions::archive_idle(
                &self.ctx.pool,
                &ids,
                self.retention.session_idle,
                self.dry_run,
            )
            .await
            .map_err(db)?;
            self.report.sessions_archived += count;
            for event in archived {
                self.ctx.events.events([event]);
            }
            self.step(Category::IdleSessions).await?;
            match ids.last() {
                Some(last) if ids.len() as i64 >= self.retention.batch => after = *last,
                _ => return Ok(()),
            }
        }
    }

    async fn archived_sessions(&mut self) -> Result<(), JobError> {
        if self.dry_run {
            self.report.sessions_deleted +=
                sessions::count_archived_before(&self.ctx.pool, self.retention.archived_sessions)
                    .await
                    .map_err(db)?;
            return self.step(Category::ArchivedSessions).await;
        }
        // Sessions whose deletion failed this run are not taken again.
        let mut tried = std::collections::HashSet::new();
        loop {
            let doomed =
                sessions::archived_before(&self.ctx.pool, self.retention.archived_sessions, 100)
                    .await
                    .map_err(db)?;
            let fresh: Vec<(Uuid, String)> = doomed
                .into_iter()
                .filter(|(id, _)| tried.insert(*id))
                .collect();
            if fresh.is_empty() {
                return Ok(());
            }
            for (session, prefix) in fresh {
                self.delete_session(session, &prefix).await?;
            }
        }
    }

    /// Deletes one archived session: storage first (a failure leaves the
    /// session to be pruned again; never rows without their files gone),
    /// then its rows in chunks, then the session row.
    async fn delete_session(&mut self, session: Uuid, prefix: &str) -> Result<(), JobError> {
        let files = self.ctx.storage.session(prefix).map_err(JobError::fatal)?;
        self.report.objects_deleted += files
            .delete_all()
            .await
            .map_err(|e| JobError::retryable(format!("storage: {e}")))?;
        loop {
            let n = events::delete_session_chunk(&self.ctx.pool, session, self.retention.batch)
                .await
                .map_err(db)?;
            self.report.events += n;
            self.step(Category::ArchivedSessions).await?;
            if n == 0 {
                break;
            }
        }
        loop {
            let n = jobs::control::delete_session_jobs_chunk(
                &self.ctx.pool,
                session,
                self.retention.batch,
            )
            .await
            .map_err(db)?;
            self.report.jobs += n;
            self.step(Category::ArchivedSessions).await?;
            if (n as i64) < self.retention.batch {
                break;
            }
        }
        loop {
            let n = turns::delete_session_chunk(&self.ctx.pool, session, self.retention.batch)
                .await
                .map_err(db)?;
            self.report.turns_deleted += n;
            self.step(Category::ArchivedSessions).await?;
            if (n as i64) < self.retention.batch {
                break;
            }
        }
        if sessions::delete_archived(&self.ctx.pool, session)
            .await
            .map_err(db)?
        {
            self.report.sessions_deleted += 1;
            tracing::info!(%session, "deleted a session archived past retention");
        }
        Ok(())
    }
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
        let mut pruner = Pruner {
            ctx,
            run,
            retention: ctx.retention,
            dry_run: self.dry_run,
            report: Report::default(),
        };
        for category in &categories {
            match category {
                Category::Invites => pruner.invites().await?,
                Category::Leases => pruner.leases().await?,
                Category::StateRequests => pruner.state_requests().await?,
                Category::Proposals => pruner.proposals().await?,
                Category::MediaVersions => pruner.media_versions().await?,
                Category::Jobs => pruner.jobs().await?,
                Category::Events => pruner.events().await?,
                Category::IdleSessions => pruner.idle_sessions().await?,
                Category::ArchivedSessions => pruner.archived_sessions().await?,
            }
        }
        let report = pruner.report;
        tracing::info!(?report, dry_run = self.dry_run, "prune finished");
        Ok(json!({
            "dry_run": self.dry_run,
            "categories": categories.iter().map(|c| c.name()).collect::<Vec<_>>(),
            "invites": report.invites,
            "jobs": report.jobs,
            "events": report.events,
            "leases": report.leases,
            "state_requests": report.state_requests,
            "proposals": report.proposals,
            "media_versions": report.media_versions,
            "media_bytes": report.media_bytes,
            "sessions_archived": report.sessions_archived,
            "sessions_deleted": report.sessions_deleted,
            "turns_deleted": report.turns_deleted,
            "objects_deleted": report.objects_deleted,
            "statements": report.statements,
            "seconds": started.elapsed().as_secs_f64(),
        }))
    }
}
