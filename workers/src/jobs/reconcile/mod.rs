//! The `reconcile` job: compares what Postgres says exists with what
//! storage holds, reports the differences and, with `repair`, fixes the
//! ones that are safe to fix.
//!
//! Two passes, both streamed, so a million objects or sessions never sit
//! in memory at once:
//! 1. Every object is listed, page by page, in chunks of 1,000; each
//!    chunk's session prefixes are looked up in one query. An object under
//!    `sessions/<x>/` whose prefix belongs to no session is an **orphan**
//!    (its session was deleted while storage was down, or an upload never
//!    got its row); one under a live session but outside the known areas
//!    (`logs/`, `data/`, `media/images/`, `media/audio/`, `media/maps/`, `media/notes/`, the manifest), or
//!    outside `sessions/`, `reports/` and `_questboard/` altogether, is
//!    **outside the known areas**.
//!    An object in a live session's media areas that no media version
//!    records (looked up per chunk too) is **untracked media** (a
//!    generation or upload stored its bytes and died before its row).
//! 2. Every session is read, page by page, and its manifest looked for
//!    (16 at a time): a session without one has a **missing prefix**.
//! 3. Every media version is read, page by page, and its object looked
//!    for (16 at a time): a version whose object is gone is **missing
//!    media** (`current` counts those that are what members are served).
//! 4. Generated items still pending whose job finished or is gone without
//!    recording them ([`media::stalled`]) are **stalled generations**.
//!
//! On a local root, the listing never follows a **symbolic link**: each
//! one met is reported (`symbolic_links`) and left alone, by repair too.
//!
//! `repair` deletes orphans and untracked media older than the grace
//! period (24 h by default, so an upload in flight is never deleted),
//! writes missing manifests and marks stalled generations failed
//! (`media.failed`, so clients stop waiting); it never touches objects
//! outside the known areas (an operator decides), and missing media is
//! only reported (the bytes are gone: an operator restores them from a
//! backup or deletes the item).
//! The report ([`Report`]: counts and the first 100 keys of each
//! category) is the job's result and is stored under `reports/reconcile/`.
//!
//! Each pass is a [`crate::sweep::Sweep`] in a file of its own
//! ([`objects`], [`prefixes`], [`media`]), run by the one sweep loop.

use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use questboard_core::jobs::{Backoff, Job, JobSpec};
use questboard_core::storage::ObjectInfo;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Handler, JobContext, JobError, JobRun};
use crate::sweep::{Sweeper, Tally};

mod media;
mod objects;
mod prefixes;

/// The payload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reconcile {
    /// Delete orphans past the grace period and write missing manifests.
    #[serde(default)]
    pub repair: bool,
}

impl Job for Reconcile {
    const SPEC: JobSpec = JobSpec {
        kind: "reconcile",
        queue: "questboard.reconcile",
        max_attempts: 3,
        backoff: Backoff::exponential(Duration::from_secs(60)),
        timeout: Duration::from_secs(6 * 3600),
        concurrency: 1,
        operator_may_start: true,
        ..JobSpec::DEFAULTS
    };
}

/// How `reconcile` treats what it finds (configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Orphans younger than this are reported but never deleted.
    pub grace: Duration,
    /// Keys kept per category in the report.
    pub sample: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(24 * 3600),
            sample: 100,
        }
    }
}

/// Rows or objects read per step (one lookup each).
const CHUNK: usize = 1000;
/// Objects looked for at once.
const PROBES: usize = 16;

/// Keys kept in a report's sample.
#[derive(Debug, Default, Serialize)]
#[serde(transparent)]
struct Sample(Vec<String>);

impl Sample {
    fn keep(&mut self, key: &str, sample: usize) {
        if self.0.len() < sample {
            self.0.push(key.to_owned());
        }
    }
}

/// Objects that may be deleted once past the grace period: orphans and
/// untracked media.
#[derive(Debug, Default, Serialize)]
pub struct Deletable {
    /// How many.
    pub count: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Deleted by this run (`repair`).
    pub deleted: u64,
    /// Younger than the grace period (never deleted).
    pub within_grace: u64,
    /// The grace period (orphans only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace_seconds: Option<u64>,
    /// The first keys.
    keys: Sample,
}

impl Deletable {
    /// Counts `object`; whether it is past the grace period (`cutoff`), so
    /// repair may delete it.
    fn add(&mut self, object: &ObjectInfo, cutoff: DateTime<Utc>, sample: usize) -> bool {
        self.count += 1;
        self.bytes += object.size;
        self.keys.keep(&object.key, sample);
        let young = object.last_modified >= cutoff;
        self.within_grace += u64::from(young);
        !young
    }
}

/// Objects only reported: outside the known areas.
#[derive(Debug, Default, Serialize)]
pub struct Reported {
    /// How many.
    pub count: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The first keys.
    keys: Sample,
}

impl Reported {
    fn add(&mut self, object: &ObjectInfo, sample: usize) {
        self.count += 1;
        self.bytes += object.size;
        self.keys.keep(&object.key, sample);
    }
}

/// Symbolic links met in a local root (never followed).
#[derive(Debug, Default, Serialize)]
pub struct Links {
    /// How many.
    pub count: u64,
    /// The first keys.
    keys: Sample,
}

/// Sessions without a manifest.
#[derive(Debug, Default, Serialize)]
pub struct MissingPrefixes {
    /// How many.
    pub count: u64,
    /// Written by this run (`repair`).
    pub manifests_written: u64,
    /// The first prefixes.
    prefixes: Sample,
}

/// Media versions whose object is gone.
#[derive(Debug, Default, Serialize)]
pub struct MissingMedia {
    /// How many.
    pub count: u64,
    /// Of those, current versions (what members are served).
    pub current: u64,
    /// The first keys.
    keys: Sample,
}

/// Generations whose job ended without recording them.
#[derive(Debug, Default, Serialize)]
pub struct Stalled {
    /// How many.
    pub count: u64,
    /// Marked failed by this run (`repair`).
    pub failed: u64,
    /// The first items.
    media_ids: Sample,
}

/// What one run found and did (the job's result, also stored).
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Safe differences were fixed.
    pub repair: bool,
    /// When the run ended.
    pub at: Option<DateTime<Utc>>,
    /// Which storage was read.
    pub storage: String,
    /// Objects listed.
    pub objects_scanned: u64,
    /// Sessions read.
    pub sessions_scanned: u64,
    /// Objects under a prefix no session has.
    pub orphans: Deletable,
    /// Sessions without a manifest.
    pub missing_prefixes: MissingPrefixes,
    /// Objects outside the known areas.
    pub outside_areas: Reported,
    /// Symbolic links met.
    pub symbolic_links: Links,
    /// Media versions read.
    pub media_versions_scanned: u64,
    /// Objects in media areas no version records.
    pub untracked_media: Deletable,
    /// Versions whose object is gone.
    pub missing_media: MissingMedia,
    /// Generations that will never finish.
    pub stalled_generations: Stalled,
    /// How long the run took.
    pub seconds: f64,
    /// Where the report is stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_key: Option<String>,
}

impl Tally for Report {
    fn done(&self) -> i64 {
        (self.objects_scanned + self.sessions_scanned + self.media_versions_scanned) as i64
    }
}

/// What every step of a run reads.
struct Env {
    ctx: JobContext,
    repair: bool,
    settings: Settings,
    /// Objects modified after this are within the grace period.
    cutoff: DateTime<Utc>,
}

fn db(err: impl std::fmt::Display) -> JobError {
    JobError::retryable(format!("database: {err}"))
}

impl Handler for Reconcile {
    async fn run(self, ctx: &JobContext, run: &JobRun) -> Result<Value, JobError> {
        let started = Instant::now();
        let settings = ctx.reconcile;
        let grace = chrono::TimeDelta::from_std(settings.grace).unwrap_or(chrono::TimeDelta::MAX);
        let env = Env {
            ctx: ctx.clone(),
            repair: self.repair,
            settings,
            cutoff: Utc::now()
                .checked_sub_signed(grace)
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
        };
        let report = Report {
            repair: self.repair,
            storage: ctx.storage.describe().to_owned(),
            orphans: Deletable {
                grace_seconds: Some(settings.grace.as_secs()),
                ..Deletable::default()
            },
            ..Report::default()
        };
        let mut sweeper = Sweeper::new(run, env, report, Duration::ZERO);
        sweeper.sweep::<objects::Objects>().await?;
        sweeper.sweep::<prefixes::Prefixes>().await?;
        sweeper.sweep::<media::Versions>().await?;
        sweeper.sweep::<media::StalledGenerations>().await?;
        let mut report = sweeper.report;
        let at = Utc::now();
        report.at = Some(at);
        report.seconds = started.elapsed().as_secs_f64();
        let name = format!(
            "reconcile/{}-{}.json",
            at.format("%Y%m%dT%H%M%SZ"),
            run.id()
        );
        let stored = ctx
            .storage
            .put_report(
                &name,
                Bytes::from(serde_json::to_vec_pretty(&report).map_err(JobError::fatal)?),
            )
            .await
            .map_err(|e| JobError::retryable(format!("storing the report: {e}")))?;
        report.report_key = Some(stored);
        tracing::info!(
            orphans = report.orphans.count,
            missing = report.missing_prefixes.count,
            outside = report.outside_areas.count,
            links = report.symbolic_links.count,
            untracked_media = report.untracked_media.count,
            missing_media = report.missing_media.count,
            stalled = report.stalled_generations.count,
            "reconcile finished"
        );
        serde_json::to_value(&report).map_err(JobError::fatal)
    }
}
