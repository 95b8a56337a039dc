//! Pruning media versions replaced by a newer one more than
//! `media_versions` ago: a page at a time, objects deleted before rows (a
//! failure leaves rows to be pruned again, never rows whose objects are
//! still there). The current version always stays; media of deleted
//! sessions go with the session.

use chrono::{DateTime, Utc};
use questboard_core::media;
use uuid::Uuid;

use super::{Env, Report, db};
use crate::jobs::JobError;
use crate::sweep::{Sweep, more_if_full};

/// Versions of media replaced long ago.
pub(super) struct MediaVersions;

impl Sweep for MediaVersions {
    type Env = Env;
    type Report = Report;
    /// The last version looked at: when it was replaced, its item, its
    /// number (None: from the start).
    type Cursor = Option<(DateTime<Utc>, Uuid, i32)>;
    const NAME: &'static str = "media_versions";

    async fn step(
        env: &Env,
        report: &mut Report,
        after: Self::Cursor,
    ) -> Result<Option<Self::Cursor>, JobError> {
        let before = env.ago(env.retention.media_versions);
        let page = media::replaced_before(&env.ctx.pool, before, after, env.retention.batch)
            .await
            .map_err(db)?;
        let Some((at, last)) = page.last() else {
            return Ok(None);
        };
        let next = Some((*at, last.media_id, last.version));
        let versions: Vec<media::OldVersion> = page.into_iter().map(|(_, v)| v).collect();
        let seen = versions.len() as u64;
        report.media_bytes += versions
            .iter()
            .map(|v| v.byte_size.max(0) as u64)
            .sum::<u64>();
        if env.dry_run {
            report.media_versions += seen;
        } else {
            let keys = versions.iter().map(|v| v.storage_key.clone()).collect();
            report.objects_deleted += env
                .ctx
                .storage
                .delete_objects(keys)
                .await
                .map_err(|e| JobError::retryable(format!("storage: {e}")))?;
            report.media_versions += media::forget_versions(&env.ctx.pool, &versions)
                .await
                .map_err(db)?;
        }
        Ok(more_if_full(seen, env.retention.batch, next))
    }
}
