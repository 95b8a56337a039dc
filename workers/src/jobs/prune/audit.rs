//! Pruning the operators' audit log: entries older than `audit`
//! (`QB_AUDIT_RETENTION_DAYS`), oldest first, a page at a time.

use questboard_core::audit;
use uuid::Uuid;

use super::{Env, Report, db};
use crate::jobs::JobError;
use crate::sweep::Sweep;

/// Old audit entries.
pub(super) struct Audit;

impl Sweep for Audit {
    type Env = Env;
    type Report = Report;
    /// The last entry looked at.
    type Cursor = Uuid;
    const NAME: &'static str = "audit";

    async fn step(env: &Env, report: &mut Report, after: Uuid) -> Result<Option<Uuid>, JobError> {
        let (deleted, next) = audit::prune(
            &env.ctx.pool,
            after,
            env.retention.audit,
            env.retention.batch,
            env.dry_run,
        )
        .await
        .map_err(db)?;
        report.audit += deleted;
        Ok(next)
    }
}
