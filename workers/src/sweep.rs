//! Maintenance in small steps: one trait for a kind of sweep (a bounded
//! step from a cursor) and one loop that runs any of them, shaped like
//! River's maintenance services.
//!
//! A [`Sweep`] does one bounded piece of work per step (one statement of
//! at most a batch of rows, one page of objects) from where the previous
//! step left off, counts what it did into the run's report, and says where
//! the next step starts, or that it is done (a batch that came back short,
//! a last page). [`Sweeper::sweep`] runs steps until then; between two it
//! stops if the run was cancelled or lost its lease, reports progress, and
//! pauses, so a sweep never holds long locks against live traffic and a
//! run killed halfway simply runs again. `prune` and `reconcile` are
//! sweeps, one file per kind.

use std::time::Duration;

use crate::jobs::{JobError, JobRun};

/// A kind of sweep, done in bounded steps.
pub(crate) trait Sweep {
    /// What every step reads (the job's context and settings).
    type Env;
    /// What steps count into.
    type Report: Tally;
    /// Where a step starts; the first from `Default`.
    type Cursor: Default;
    /// Its name in progress messages.
    const NAME: &'static str;

    /// Does one bounded step from `cursor`, counting into `report`; the
    /// cursor of the next step, or None when the sweep is done.
    async fn step(
        env: &Self::Env,
        report: &mut Self::Report,
        cursor: Self::Cursor,
    ) -> Result<Option<Self::Cursor>, JobError>;
}

/// A report's running total, for progress.
pub(crate) trait Tally {
    /// How much was done so far.
    fn done(&self) -> i64;
}

/// The next cursor when a step handled a full batch (`n` of `batch`),
/// None when it came back short: the rows ran out.
pub(crate) fn more_if_full<C>(n: u64, batch: i64, next: C) -> Option<C> {
    (i64::try_from(n).unwrap_or(i64::MAX) >= batch).then_some(next)
}

/// Runs sweeps for one job run.
pub(crate) struct Sweeper<'a, E, R> {
    /// What the sweeps read.
    pub(crate) env: E,
    /// What they counted.
    pub(crate) report: R,
    /// Steps run so far.
    pub(crate) steps: u64,
    run: &'a JobRun,
    pause: Duration,
}

impl<'a, E, R: Tally> Sweeper<'a, E, R> {
    /// A sweeper for `run`, pausing `pause` between steps.
    pub(crate) fn new(run: &'a JobRun, env: E, report: R, pause: Duration) -> Self {
        Self {
            env,
            report,
            steps: 0,
            run,
            pause,
        }
    }

    /// Runs `S` from its first cursor until it is done.
    pub(crate) async fn sweep<S: Sweep<Env = E, Report = R>>(&mut self) -> Result<(), JobError> {
        let mut cursor = S::Cursor::default();
        loop {
            let next = S::step(&self.env, &mut self.report, cursor).await?;
            self.steps += 1;
            self.run.checkpoint()?;
            self.run.progress(self.report.done(), None, S::NAME).await?;
            let Some(next) = next else {
                return Ok(());
            };
            if !self.pause.is_zero() {
                tokio::time::sleep(self.pause).await;
            }
            cursor = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_batch_ends_the_sweep() {
        assert_eq!(more_if_full(1000, 1000, 7), Some(7));
        assert_eq!(more_if_full(999, 1000, 7), None);
        assert_eq!(more_if_full(0, 1000, 7), None);
        assert_eq!(more_if_full(u64::MAX, 1000, 7), Some(7));
    }
}
