//! Deleting sessions archived more than `archived_sessions` ago
//! (`QB_RETENTION_DAYS`) with everything that belongs to them: their
//! objects in storage first (a failure leaves the session to be pruned
//! again, never rows whose files are still there), then their events,
//! jobs and turns in batches, then the session row (members, invites, its
//! place in line go with it). One statement per step.

use std::collections::{HashSet, VecDeque};

use questboard_core::{events, jobs, sessions, turns};
use uuid::Uuid;

use super::{Env, Report, db};
use crate::jobs::JobError;
use crate::sweep::Sweep;

/// Delete sessions archived too long.
pub(super) struct ArchivedSessions;

/// Sessions taken up at once.
const SESSIONS_PER_PAGE: i64 = 100;

/// What is left of the session being deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Files,
    Events,
    Jobs,
    Turns,
    Row,
}

/// Where the sweep is.
#[derive(Default)]
pub(super) struct Cursor {
    /// Sessions taken up this run (one whose deletion failed is not taken
    /// again).
    tried: HashSet<Uuid>,
    /// Sessions of the current page not started yet.
    pending: VecDeque<(Uuid, String)>,
    /// The session being deleted, its prefix, and what is left of it.
    current: Option<(Uuid, String, Phase)>,
}

impl Sweep for ArchivedSessions {
    type Env = Env;
    type Report = Report;
    type Cursor = Cursor;
    const NAME: &'static str = "archived_sessions";

    async fn step(
        env: &Env,
        report: &mut Report,
        mut at: Cursor,
    ) -> Result<Option<Cursor>, JobError> {
        let retention = env.retention.archived_sessions;
        if env.dry_run {
            report.sessions_deleted += sessions::count_archived_before(&env.ctx.pool, retention)
                .await
                .map_err(db)?;
            return Ok(None);
        }
        let Some((session, prefix, phase)) = at.current.take() else {
            if at.pending.is_empty() {
                let doomed = sessions::archived_before(&env.ctx.pool, retention, SESSIONS_PER_PAGE)
                    .await
                    .map_err(db)?;
                at.pending = doomed
                    .into_iter()
                    .filter(|(id, _)| at.tried.insert(*id))
                    .collect();
            }
            return Ok(at.pending.pop_front().map(|(session, prefix)| {
                at.current = Some((session, prefix, Phase::Files));
                at
            }));
        };
        let batch = env.retention.batch;
        let pool = &env.ctx.pool;
        let next = match phase {
            Phase::Files => {
                let files = env.ctx.storage.session(&prefix).map_err(JobError::fatal)?;
                report.objects_deleted += files
                    .delete_all()
                    .await
                    .map_err(|e| JobError::retryable(format!("storage: {e}")))?;
                Some(Phase::Events)
            }
            Phase::Events => {
                let n = events::delete_session_chunk(pool, session, batch)
                    .await
                    .map_err(db)?;
                report.events += n;
                Some(if n == 0 { Phase::Jobs } else { Phase::Events })
            }
            Phase::Jobs => {
                let n = jobs::control::delete_session_jobs_chunk(pool, session, batch)
                    .await
                    .map_err(db)?;
                report.jobs += n;
                Some(if (n as i64) < batch {
                    Phase::Turns
                } else {
                    Phase::Jobs
                })
            }
            Phase::Turns => {
                let n = turns::delete_session_chunk(pool, session, batch)
                    .await
                    .map_err(db)?;
                report.turns_deleted += n;
                Some(if (n as i64) < batch {
                    Phase::Row
                } else {
                    Phase::Turns
                })
            }
            Phase::Row => {
                if sessions::delete_archived(pool, session).await.map_err(db)? {
                    report.sessions_deleted += 1;
                    tracing::info!(%session, "deleted a session archived past retention");
                }
                None
            }
        };
        at.current = next.map(|phase| (session, prefix, phase));
        Ok(Some(at))
    }
}
