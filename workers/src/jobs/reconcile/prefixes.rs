//! The second pass: every session, a page at a time, its manifest looked
//! for (16 at a time). A session without one has a missing prefix; with
//! `repair` its manifest is written.

use futures::{StreamExt as _, TryStreamExt as _};
use questboard_core::{sessions, storage};
use uuid::Uuid;

use super::{CHUNK, Env, PROBES, Report, db};
use crate::jobs::JobError;
use crate::sweep::{Sweep, more_if_full};

/// Every session's manifest.
pub(super) struct Prefixes;

impl Sweep for Prefixes {
    type Env = Env;
    type Report = Report;
    /// The last session id looked at.
    type Cursor = Uuid;
    const NAME: &'static str = "checking session prefixes";

    async fn step(env: &Env, report: &mut Report, after: Uuid) -> Result<Option<Uuid>, JobError> {
        let page = sessions::page_prefixes(&env.ctx.pool, after, CHUNK as i64)
            .await
            .map_err(db)?;
        let Some(last) = page.last().map(|p| p.0) else {
            return Ok(None);
        };
        let seen = page.len() as u64;
        report.sessions_scanned += seen;
        let probes = page.into_iter().map(|(id, prefix, created)| {
            let storage = env.ctx.storage.clone();
            async move {
                let files = storage
                    .session(&prefix)
                    .map_err(|e| JobError::fatal(format!("session {id}: {e}")))?;
                let has = files
                    .has_manifest()
                    .await
                    .map_err(|e| JobError::retryable(format!("storage: {e}")))?;
                Ok::<_, JobError>((!has).then_some((id, files, prefix, created)))
            }
        });
        let missing: Vec<_> = futures::stream::iter(probes)
            .buffer_unordered(PROBES)
            .try_collect()
            .await?;
        for (id, files, prefix, created) in missing.into_iter().flatten() {
            let found = &mut report.missing_prefixes;
            found.count += 1;
            found.prefixes.keep(&prefix, env.settings.sample);
            if env.repair {
                files
                    .put_manifest(&storage::manifest(id, created))
                    .await
                    .map_err(|e| JobError::retryable(format!("writing a manifest: {e}")))?;
                found.manifests_written += 1;
            }
        }
        Ok(more_if_full(seen, CHUNK as i64, last))
    }
}
