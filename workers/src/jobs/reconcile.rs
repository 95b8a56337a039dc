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
//! The report (counts and the first 100 keys of each category) is the
//! job's result and is stored under `reports/reconcile/`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt as _, TryStreamExt as _};
use questboard_core::jobs::{Backoff, Job, JobSpec};
use questboard_core::storage::{self, Area, MANIFEST, ObjectInfo, REPORTS};
use questboard_core::{media, sessions};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Handler, JobContext, JobError, JobRun};

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

/// Objects listed per chunk (one session lookup each).
const CHUNK: usize = 1000;
/// Manifests looked for at once.
const PROBES: usize = 16;

#[derive(Debug, Default, Serialize)]
struct Category {
    count: u64,
    bytes: u64,
    keys: Vec<String>,
}

impl Category {
    fn add(&mut self, key: &str, bytes: u64, sample: usize) {
        self.count += 1;
        self.bytes += bytes;
        if self.keys.len() < sample {
            self.keys.push(key.to_owned());
        }
    }
}

#[derive(Debug, Default)]
struct Findings {
    objects: u64,
    sessions: u64,
    orphans: Category,
    orphans_deleted: u64,
    orphans_in_grace: u64,
    outside_areas: Category,
    links: Category,
    missing_prefixes: Category,
    manifests_written: u64,
    untracked_media: Category,
    untracked_deleted: u64,
    untracked_in_grace: u64,
    media_versions: u64,
    missing_media: Category,
    missing_current: u64,
    stalled: Category,
    stalled_failed: u64,
}

/// Whether `rest` (a key below a session prefix) is in a known area.
fn in_known_area(rest: &str) -> bool {
    rest == MANIFEST
        || Area::ALL.iter().any(|area| {
            rest.strip_prefix(area.dir())
                .is_some_and(|tail| tail.starts_with('/') && tail.len() > 1)
        })
}

/// The session prefix (`sessions/<x>`) of a key and the rest below it.
fn split_session_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix("sessions/")?;
    let (id, below) = rest.split_once('/')?;
    let prefix_len = "sessions/".len() + id.len();
    Some((&key[..prefix_len], below))
}

struct Reconciler<'a> {
    ctx: &'a JobContext,
    run: &'a JobRun,
    repair: bool,
    settings: Settings,
    cutoff: DateTime<Utc>,
    found: Findings,
}

impl Reconciler<'_> {
    async fn objects(&mut self) -> Result<(), JobError> {
        let mut listing = self.ctx.storage.list_objects("");
        let mut chunk: Vec<ObjectInfo> = Vec::with_capacity(CHUNK);
        loop {
            let next = match listing.next().await.transpose() {
                Err(storage::Error::Link(key)) => {
                    self.found.links.add(&key, 0, self.settings.sample);
                    continue;
                }
                next => next.map_err(|e| JobError::retryable(format!("listing storage: {e}")))?,
            };
            let done = next.is_none();
            if let Some(object) = next {
                self.found.objects += 1;
                chunk.push(object);
            }
            if chunk.len() >= CHUNK || (done && !chunk.is_empty()) {
                self.chunk(std::mem::take(&mut chunk)).await?;
                self.run.checkpoint()?;
                self.run
                    .progress(self.found.objects as i64, None, "listing objects")
                    .await?;
            }
            if done {
                return Ok(());
            }
        }
    }

    async fn chunk(&mut self, chunk: Vec<ObjectInfo>) -> Result<(), JobError> {
        let sample = self.settings.sample;
        let prefixes: Vec<String> = chunk
            .iter()
            .filter_map(|o| split_session_key(&o.key).map(|(p, _)| p.to_owned()))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let ids: Vec<Uuid> = prefixes
            .iter()
            .filter_map(|p| p.strip_prefix("sessions/")?.parse().ok())
            .collect();
        let known: HashSet<String> = sessions::prefixes_of(&self.ctx.pool, &ids)
            .await
            .map_err(|e| JobError::retryable(format!("database: {e}")))?
            .into_iter()
            .map(|(_, prefix)| prefix)
            .collect();
        let mut doomed = Vec::new();
        let mut media_objects = Vec::new();
        for object in &chunk {
            match split_session_key(&object.key) {
                Some((prefix, rest)) if known.contains(prefix) => {
                    if !in_known_area(rest) {
                        self.found
                            .outside_areas
                            .add(&object.key, object.size, sample);
                    } else if rest.starts_with("media/") {
                        media_objects.push(object);
                    }
                }
                Some(_) => {
                    self.found.orphans.add(&object.key, object.size, sample);
                    if object.last_modified >= self.cutoff {
                        self.found.orphans_in_grace += 1;
                    } else if self.repair {
                        doomed.push(object.key.clone());
                    }
                }
                None => {
                    let top = object.key.split('/').next().unwrap_or_default();
                    if top != REPORTS && top != "_questboard" {
                        self.found
                            .outside_areas
                            .add(&object.key, object.size, sample);
                    }
                }
            }
        }
        if !media_objects.is_empty() {
            let keys: Vec<String> = media_objects.iter().map(|o| o.key.clone()).collect();
            let tracked: HashSet<String> = media::known_keys(&self.ctx.pool, &keys)
                .await
                .map_err(|e| JobError::retryable(format!("database: {e}")))?
                .into_iter()
                .collect();
            let mut untracked = Vec::new();
            for object in media_objects
                .into_iter()
                .filter(|o| !tracked.contains(&o.key))
            {
                self.found
                    .untracked_media
                    .add(&object.key, object.size, sample);
                if object.last_modified >= self.cutoff {
                    self.found.untracked_in_grace += 1;
                } else if self.repair {
                    untracked.push(object.key.clone());
                }
            }
            if !untracked.is_empty() {
                self.found.untracked_deleted += self
                    .ctx
                    .storage
                    .delete_objects(untracked)
                    .await
                    .map_err(|e| JobError::retryable(format!("deleting untracked media: {e}")))?;
            }
        }
        if !doomed.is_empty() {
            self.found.orphans_deleted += self
                .ctx
                .storage
                .delete_objects(doomed)
                .await
                .map_err(|e| JobError::retryable(format!("deleting orphans: {e}")))?;
        }
        Ok(())
    }

    async fn sessions(&mut self) -> Result<(), JobError> {
        let mut after = Uuid::nil();
        loop {
            let page = sessions::page_prefixes(&self.ctx.pool, after, CHUNK as i64)
                .await
                .map_err(|e| JobError::retryable(format!("database: {e}")))?;
            let Some(last) = page.last().map(|p| p.0) else {
                return Ok(());
            };
            self.found.sessions += page.len() as u64;
            let storage = self.ctx.storage.clone();
            let probes = page.clone().into_iter().map(move |(id, prefix, created)| {
                let storage = storage.clone();
                async move {
                    let files = storage
                        .session(&prefix)
                        .map_err(|e| JobError::fatal(format!("session {id}: {e}")))?;
                    let has = files
                        .has_manifest()
                        .await
                        .map_err(|e| JobError::retryable(format!("storage: {e}")))?;
                    Ok::<_, JobError>((!has).then_some((id, prefix, created)))
                }
            });
            let missing: Vec<Option<(Uuid, String, DateTime<Utc>)>> = futures::stream::iter(probes)
                .buffer_unordered(PROBES)
                .try_collect()
                .await?;
            let storage = &self.ctx.storage;
            for (id, prefix, created) in missing.into_iter().flatten() {
                self.found
                    .missing_prefixes
                    .add(&prefix, 0, self.settings.sample);
                if self.repair {
                    let files = storage.session(&prefix).map_err(JobError::fatal)?;
                    files
                        .put_manifest(&storage::manifest(id, created))
                        .await
                        .map_err(|e| JobError::retryable(format!("writing a manifest: {e}")))?;
                    self.found.manifests_written += 1;
                }
            }
            self.run.checkpoint()?;
            self.run
                .progress(
                    (self.found.objects + self.found.sessions) as i64,
                    None,
                    "checking session prefixes",
                )
                .await?;
            if page.len() < CHUNK {
                return Ok(());
            }
            after = last;
        }
    }
}

impl Reconciler<'_> {
    async fn media(&mut self) -> Result<(), JobError> {
        let mut after = String::new();
        loop {
            let page = media::page_keys(&self.ctx.pool, &after, CHUNK as i64)
                .await
                .map_err(|e| JobError::retryable(format!("database: {e}")))?;
            let Some(last) = page.last().map(|(key, _)| key.clone()) else {
                break;
            };
            self.found.media_versions += page.len() as u64;
            let storage = self.ctx.storage.clone();
            let probes = page.clone().into_iter().map(move |(key, current)| {
                let storage = storage.clone();
                async move {
                    let there = storage
                        .exists(&key)
                        .await
                        .map_err(|e| JobError::retryable(format!("storage: {e}")))?;
                    Ok::<_, JobError>((!there).then_some((key, current)))
                }
            });
            let missing: Vec<Option<(String, bool)>> = futures::stream::iter(probes)
                .buffer_unordered(PROBES)
                .try_collect()
                .await?;
            for (key, current) in missing.into_iter().flatten() {
                self.found.missing_media.add(&key, 0, self.settings.sample);
                self.found.missing_current += u64::from(current);
            }
            self.run.checkpoint()?;
            self.run
                .progress(
                    (self.found.objects + self.found.sessions + self.found.media_versions) as i64,
                    None,
                    "checking media objects",
                )
                .await?;
            if page.len() < CHUNK {
                break;
            }
            after = last;
        }
        // Stalled generations: few, read at once (up to 10,000 a run).
        let stalled = media::stalled(&self.ctx.pool, 10_000)
            .await
            .map_err(|e| JobError::retryable(format!("database: {e}")))?;
        for item in stalled {
            self.found
                .stalled
                .add(&item.id.to_string(), 0, self.settings.sample);
            if self.repair {
                let reason = "generation stopped: its job ended without recording it";
                match media::record_failure(&self.ctx.pool, item.id, reason).await {
                    Ok(Some(event)) => {
                        self.ctx.events.events([event]);
                        self.found.stalled_failed += 1;
                    }
                    Ok(None) => {}
                    Err(e) => return Err(JobError::retryable(format!("database: {e}"))),
                }
            }
        }
        self.run.checkpoint()?;
        Ok(())
    }
}

impl Handler for Reconcile {
    async fn run(self, ctx: &JobContext, run: &JobRun) -> Result<Value, JobError> {
        let started = Instant::now();
        let settings = ctx.reconcile;
        let grace = chrono::TimeDelta::from_std(settings.grace).unwrap_or(chrono::TimeDelta::MAX);
        let mut reconciler = Reconciler {
            ctx,
            run,
            repair: self.repair,
            settings,
            cutoff: Utc::now()
                .checked_sub_signed(grace)
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
            found: Findings::default(),
        };
        reconciler.objects().await?;
        reconciler.sessions().await?;
        reconciler.media().await?;
        let f = reconciler.found;
        let at = Utc::now();
        let key_name = format!(
            "reconcile/{}-{}.json",
            at.format("%Y%m%dT%H%M%SZ"),
            run.id()
        );
        let mut report = json!({
            "repair": self.repair,
            "at": at,
            "storage": ctx.storage.describe(),
            "objects_scanned": f.objects,
            "sessions_scanned": f.sessions,
            "orphans": {
                "count": f.orphans.count,
                "bytes": f.orphans.bytes,
                "deleted": f.orphans_deleted,
                "within_grace": f.orphans_in_grace,
                "grace_seconds": settings.grace.as_secs(),
                "keys": f.orphans.keys,
            },
            "missing_prefixes": {
                "count": f.missing_prefixes.count,
                "manifests_written": f.manifests_written,
                "prefixes": f.missing_prefixes.keys,
            },
            "outside_areas": {
                "count": f.outside_areas.count,
                "bytes": f.outside_areas.bytes,
                "keys": f.outside_areas.keys,
            },
            "symbolic_links": {
                "count": f.links.count,
                "keys": f.links.keys,
            },
            "media_versions_scanned": f.media_versions,
            "untracked_media": {
                "count": f.untracked_media.count,
                "bytes": f.untracked_media.bytes,
                "deleted": f.untracked_deleted,
                "within_grace": f.untracked_in_grace,
                "keys": f.untracked_media.keys,
            },
            "missing_media": {
                "count": f.missing_media.count,
                "current": f.missing_current,
                "keys": f.missing_media.keys,
            },
            "stalled_generations": {
                "count": f.stalled.count,
                "failed": f.stalled_failed,
                "media_ids": f.stalled.keys,
            },
            "seconds": started.elapsed().as_secs_f64(),
        });
        let stored = ctx
            .storage
            .put_report(
                &key_name,
                Bytes::from(serde_json::to_vec_pretty(&report).unwrap_or_default()),
            )
            .await
            .map_err(|e| JobError::retryable(format!("storing the report: {e}")))?;
        report["report_key"] = Value::String(stored);
        tracing::info!(
            orphans = f.orphans.count,
            missing = f.missing_prefixes.count,
            outside = f.outside_areas.count,
            links = f.links.count,
            untracked_media = f.untracked_media.count,
            missing_media = f.missing_media.count,
            stalled = f.stalled.count,
            "reconcile finished"
        );
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_placed_in_areas() {
        assert!(in_known_area("logs/turn-1.json"));
        assert!(in_known_area("media/images/a.png"));
        assert!(in_known_area("session.json"));
        assert!(!in_known_area("media/other.png"));
        assert!(!in_known_area("logs"));
        assert!(!in_known_area("logs/"));
        assert!(!in_known_area("stray.bin"));
        assert_eq!(
            split_session_key("sessions/abc/logs/x"),
            Some(("sessions/abc", "logs/x"))
        );
        assert_eq!(split_session_key("sessions/abc"), None);
        assert_eq!(split_session_key("reports/x"), None);
    }
}
