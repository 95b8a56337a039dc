//! Pruning finished job rows: succeeded more than `jobs_succeeded` ago,
//! failed or cancelled more than `jobs_failed` ago, a page of ids at a
//! time.

use questboard_core::jobs::control;

use super::{Env, Report, db};
use crate::jobs::JobError;
use crate::sweep::Sweep;

/// Finished job rows.
pub(super) struct Jobs;

impl Sweep for Jobs {
    type Env = Env;
    type Report = Report;
    /// The last job id looked at.
    type Cursor = String;
    const NAME: &'static str = "jobs";

    async fn step(
        env: &Env,
        report: &mut Report,
        after: String,
    ) -> Result<Option<String>, JobError> {
        let step = control::prune_finished(
            &env.ctx.pool,
            &after,
            env.ago(env.retention.jobs_succeeded),
            env.ago(env.retention.jobs_failed),
            env.retention.batch,
            env.dry_run,
        )
        .await
        .map_err(db)?;
        report.jobs += step.deleted;
        Ok(step.next)
    }
}
