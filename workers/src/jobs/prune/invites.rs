//! Pruning dead invites: expired, revoked or used up more than
//! `invites` ago, a page of ids at a time.

use questboard_core::invites;
use uuid::Uuid;

use super::{Env, Report, db};
use crate::jobs::JobError;
use crate::sweep::Sweep;

/// Dead invites.
pub(super) struct Invites;

impl Sweep for Invites {
    type Env = Env;
    type Report = Report;
    /// The last invite id looked at.
    type Cursor = Uuid;
    const NAME: &'static str = "invites";

    async fn step(env: &Env, report: &mut Report, after: Uuid) -> Result<Option<Uuid>, JobError> {
        let (_, deleted, next) = invites::prune(
            &env.ctx.pool,
            after,
            env.retention.invites,
            env.retention.batch,
            env.dry_run,
        )
        .await
        .map_err(db)?;
        report.invites += deleted;
        Ok(next)
    }
}
