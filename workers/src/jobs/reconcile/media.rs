//! The last passes: every media version, a page at a time, its object
//! looked for (16 at a time): a version whose object is gone is missing
//! media, only reported (the bytes are gone: an operator restores them
//! from a backup or deletes the item). Then generated items still pending
//! whose job finished or is gone without recording them
//! ([`media::stalled`]): stalled generations, which `repair` marks failed
//! (`media.failed`, so clients stop waiting).

use futures::{StreamExt as _, TryStreamExt as _};
use questboard_core::media;

use super::{CHUNK, Env, PROBES, Report, db};
use crate::jobs::JobError;
use crate::sweep::{Sweep, more_if_full};

/// Every media version's object.
pub(super) struct Versions;

impl Sweep for Versions {
    type Env = Env;
    type Report = Report;
    /// The last storage key looked at.
    type Cursor = String;
    const NAME: &'static str = "checking media objects";

    async fn step(
        env: &Env,
        report: &mut Report,
        after: String,
    ) -> Result<Option<String>, JobError> {
        let page = media::page_keys(&env.ctx.pool, &after, CHUNK as i64)
            .await
            .map_err(db)?;
        let Some(last) = page.last().map(|(key, _)| key.clone()) else {
            return Ok(None);
        };
        let seen = page.len() as u64;
        report.media_versions_scanned += seen;
        let probes = page.into_iter().map(|(key, current)| {
            let storage = env.ctx.storage.clone();
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
            let found = &mut report.missing_media;
            found.count += 1;
            found.current += u64::from(current);
            found.keys.keep(&key, env.settings.sample);
        }
        Ok(more_if_full(seen, CHUNK as i64, last))
    }
}

/// Generations that will never finish: few, read in one step (up to
/// 10,000 a run).
pub(super) struct StalledGenerations;

/// Stalled generations read per run.
const STALLED_PER_RUN: i64 = 10_000;

impl Sweep for StalledGenerations {
    type Env = Env;
    type Report = Report;
    type Cursor = ();
    const NAME: &'static str = "stalled generations";

    async fn step(env: &Env, report: &mut Report, (): ()) -> Result<Option<()>, JobError> {
        let stalled = media::stalled(&env.ctx.pool, STALLED_PER_RUN)
            .await
            .map_err(db)?;
        for item in stalled {
            let found = &mut report.stalled_generations;
            found.count += 1;
            found
                .media_ids
                .keep(&item.id.to_string(), env.settings.sample);
            if env.repair {
                let reason = "generation stopped: its job ended without recording it";
                if let Some(event) = media::record_failure(&env.ctx.pool, item.id, reason)
                    .await
                    .map_err(db)?
                {
                    env.ctx.events.events([event]);
                    found.failed += 1;
                }
            }
        }
        Ok(None)
    }
}
