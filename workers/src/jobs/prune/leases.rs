//! Pruning lease rows expired for more than `leases`, a page of
//! `(scope, key)` at a time.

use questboard_core::leases;

use super::{Env, Report, db};
use crate::jobs::JobError;
use crate::sweep::Sweep;

/// Expired lease rows.
pub(super) struct Leases;

impl Sweep for Leases {
    type Env = Env;
    type Report = Report;
    /// The last `(scope, key)` looked at.
    type Cursor = (String, String);
    const NAME: &'static str = "leases";

    async fn step(
        env: &Env,
        report: &mut Report,
        after: (String, String),
    ) -> Result<Option<(String, String)>, JobError> {
        let (_, deleted, next) = leases::prune_expired(
            &env.ctx.pool,
            (&after.0, &after.1),
            env.retention.leases,
            env.retention.batch,
            env.dry_run,
        )
        .await
        .map_err(db)?;
        report.leases += deleted;
        Ok(next)
    }
}
