//! Archiving sessions idle for `session_idle` (`QB_SESSION_IDLE_DAYS`): a
//! page of session ids each step; each archived one gets
//! `session.archived` (reason `idle`), published to its members.

use questboard_core::sessions;
use uuid::Uuid;

use super::{Env, Report, db};
use crate::jobs::JobError;
use crate::sweep::{Sweep, more_if_full};

/// Archive sessions idle too long.
pub(super) struct IdleSessions;

impl Sweep for IdleSessions {
    type Env = Env;
    type Report = Report;
    /// The last session id looked at.
    type Cursor = Uuid;
    const NAME: &'static str = "idle_sessions";

    async fn step(env: &Env, report: &mut Report, after: Uuid) -> Result<Option<Uuid>, JobError> {
        let ids = sessions::page_ids(&env.ctx.pool, after, env.retention.batch)
            .await
            .map_err(db)?;
        let (archived, count) =
            sessions::archive_idle(&env.ctx.pool, &ids, env.retention.session_idle, env.dry_run)
                .await
                .map_err(db)?;
        report.sessions_archived += count;
        env.ctx.events.events(archived);
        Ok(ids
            .last()
            .and_then(|last| more_if_full(ids.len() as u64, env.retention.batch, *last)))
    }
}
