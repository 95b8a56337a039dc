//! Pruning the client ids of game-state updates (which make resends
//! idempotent) older than `state_requests`: the oldest batch each step.

use questboard_core::state;

use super::{Env, Report, db};
use crate::jobs::JobError;
use crate::sweep::{Sweep, more_if_full};

/// Old client ids of game-state updates.
pub(super) struct StateRequests;

impl Sweep for StateRequests {
    type Env = Env;
    type Report = Report;
    type Cursor = ();
    const NAME: &'static str = "state_requests";

    async fn step(env: &Env, report: &mut Report, (): ()) -> Result<Option<()>, JobError> {
        let n = state::prune_requests(
            &env.ctx.pool,
            env.retention.state_requests,
            env.retention.batch,
            env.dry_run,
        )
        .await
        .map_err(db)?;
        report.state_requests += n;
        // A dry run counts everything in one statement.
        Ok(if env.dry_run {
            None
        } else {
            more_if_full(n, env.retention.batch, ())
        })
    }
}
