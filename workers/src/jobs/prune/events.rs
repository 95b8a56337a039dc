//! Pruning session events older than `events` (`QB_EVENT_RETENTION_DAYS`):
//! a page of sessions with old events, then each of those a batch at a
//! time. The session remembers how far it was pruned, so a client
//! resuming from an older seq gets an explicit `reset` instead of a gap.
//!
//! Every statement deletes one session's events, at most a batch of them.
//! A step runs such statements, session after session, until it has
//! deleted a batch (or it has read one more page of sessions): most
//! sessions hold a few hundred old events, and one step per session spent
//! nine tenths of the time on the pause and the progress write between
//! steps (3,900 events/s on 10 million rows; BENCHMARKS.md, "Pruning 10
//! million old session events").

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
        let mut deleted = 0;
        let mut paged = false;
        while deleted < batch {
            let Some(&(session, pruned)) = at.pending.front() else {
                // At most one page per step: a run of pages without old
                // events still pauses and reports between them.
                if at.last_page || paged {
                    break;
                }
                let (old, next) =
                    events::sessions_with_old_events(&env.ctx.pool, at.after, before, batch)
                        .await
                        .map_err(db)?;
                paged = true;
                at.pending = old.into();
                match next {
                    Some(next) => at.after = next,
                    None => at.last_page = true,
                }
                continue;
            };
            let (count, mark) =
                events::prune_session(&env.ctx.pool, session, pruned, before, batch, env.dry_run)
                    .await
                    .map_err(db)?;
            report.events += count;
            deleted += i64::try_from(count).unwrap_or(i64::MAX);
            // A dry run deletes nothing, so the next batch starts where this
            // one ended.
            if (count as i64) < batch || mark <= pruned {
                at.pending.pop_front();
            } else if let Some(front) = at.pending.front_mut() {
                front.1 = mark;
            }
        }
        Ok((!at.pending.is_empty() || !at.last_page).then_some(at))
    }
}
