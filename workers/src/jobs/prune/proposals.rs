//! Pruning proposals held for review and decided (approved or rejected)
//! more than `events` ago, with the events that named them: the oldest
//! batch each step.

use questboard_core::state::review;

use super::{Env, Report, db};
use crate::jobs::JobError;
use crate::sweep::{Sweep, more_if_full};

/// Proposals decided long ago.
pub(super) struct Proposals;

impl Sweep for Proposals {
    type Env = Env;
    type Report = Report;
    type Cursor = ();
    const NAME: &'static str = "proposals";

    async fn step(env: &Env, report: &mut Report, (): ()) -> Result<Option<()>, JobError> {
        let n = review::prune_decided(
            &env.ctx.pool,
            env.ago(env.retention.events),
            env.retention.batch,
            env.dry_run,
        )
        .await
        .map_err(db)?;
        report.proposals += n;
        Ok(if env.dry_run {
            None
        } else {
            more_if_full(n, env.retention.batch, ())
        })
    }
}
