//! Pruning session events older than `events` (`QB_EVENT_RETENTION_DAYS`):
//! a page of sessions with old events, then each of those a batch at a
//! time. The session remembers how far it was pruned, so a client
//! resuming from an older seq gets an explicit `reset` instead of a gap.

use std::collections::VecDeque;

use questboard_core::events;
use uuid::Uuid;

use super::{Env, Report, db};
use crate::jobs::JobError;
use crate::sweep::Sweep;

/// Old session events.
pub(super) struct Events;

/// Where the sweep is: the sessions of the current page still to prune
/// (each with how far it is pruned), and where the next page starts.
#[derive(Default)]
pub(super) struct Cursor {
    pending: VecDeque<(Uuid, i64)>,
    after: Uuid,
    last_page: bool,
}

impl Sweep for Events {
    type Env = Env;
    type Report = Report;
    type Cursor = Cursor;
    const NAME: &'static str = "events";

    async fn step(
        env: &Env,
        report: &mut Report,
        mut at: Cursor,
    ) -> Result<Option<Cursor>, JobError> {
        let before = env.ago(env.retention.events);
        let batch = env.retention.batch;
        let Some(&(session, pruned)) = at.pending.front() else {
            if at.last_page {
                return Ok(None);
            }
            let (old, next) =
                events::sessions_with_old_events(&env.ctx.pool, at.after, before, batch)
                    .await
                    .map_err(db)?;
            at.pending = old.into();
            match next {
                Some(next) => at.after = next,
                None => at.last_page = true,
            }
            return Ok((!at.pending.is_empty() || !at.last_page).then_some(at));
        };
        let (count, mark) =
            events::prune_session(&env.ctx.pool, session, pruned, before, batch, env.dry_run)
                .await
                .map_err(db)?;
        report.events += count;
        // A dry run deletes nothing, so the next batch starts where this
        // one ended.
        if (count as i64) < batch || mark <= pruned {
            at.pending.pop_front();
        } else if let Some(front) = at.pending.front_mut() {
            front.1 = mark;
        }
        Ok((!at.pending.is_empty() || !at.last_page).then_some(at))
    }
}
