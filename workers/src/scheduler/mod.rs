//! The cron scheduler (`questboard schedule`): fires scheduled jobs, each
//! tick exactly once, however many scheduler processes run.
//!
//! Two guards, as the anchors do it:
//! - only the process leading `scheduler/cron` fires ticks
//!   ([`questboard_core::leases::Leadership`]), and every tick is recorded
//!   under that lease's token (fenced) while moving the entry's last tick
//!   forward only from the value it read ([`schedule::fire`]);
//! - every tick's job carries the unique key `<entry>@<tick>`, so even a
//!   stale leader, or two processes that both believe they lead, cannot
//!   enqueue one tick twice (graphile-worker's `known_crontabs` idea).
//!
//! The last tick per entry is persisted, so a restarted or newly elected
//! leader knows what it missed. A tick fired within the tolerance
//! (`QB_SCHEDULER_TOLERANCE_MS`) of its time is on time; older ones were
//! missed (no scheduler ran, or the leader died and its lease had to
//! expire): with `missed = "once"` the newest missed tick fires once as a
//! catch-up, with `"skip"` none does; never a flood. On SIGTERM the leader
//! gives its lease up; after a crash another scheduler takes over once the
//! lease expires.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use questboard_core::leases::{Leadership, Lease};
use questboard_core::metrics as m;
use questboard_core::schedule::{self, FireError, TickJob};
use questboard_core::wakeups;
use serde::Serialize;
use sqlx::PgPool;

pub mod entries;

pub use entries::{Entry, Missed};

/// How the scheduler behaves.
#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    /// The leader lease's lifetime; renewed every third of it.
    pub lease_ttl: Duration,
    /// How late a tick may fire and still count as on time.
    pub tolerance: Duration,
    /// Who this process is, in the lease.
    pub holder: String,
}

/// Missed ticks are looked for at most this far back.
const LOOK_BACK: Duration = Duration::from_secs(7 * 24 * 3600);
/// The scheduler looks at the clock at least this often.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// The scheduler.
pub struct Scheduler {
    pool: PgPool,
    entries: Arc<Vec<Entry>>,
    settings: SchedulerSettings,
    wake: wakeups::Publisher,
}

impl Scheduler {
    /// A scheduler for `entries`.
    pub fn new(
        pool: PgPool,
        entries: Arc<Vec<Entry>>,
        settings: SchedulerSettings,
        wake: wakeups::Publisher,
    ) -> Self {
        Self {
            pool,
            entries,
            settings,
            wake,
        }
    }

    /// Competes for leadership and, while leading, fires due ticks, until
    /// `shutdown` completes; then gives the lease up.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let leadership = Leadership::start(
            self.pool.clone(),
            schedule::LEADER_LEASE.0,
            schedule::LEADER_LEASE.1,
            self.settings.holder.clone(),
            self.settings.lease_ttl,
        );
        let mut changes = leadership.watch();
        tracing::info!(
            holder = %self.settings.holder,
            entries = self.entries.iter().filter(|e| e.enabled).count(),
            "scheduler started"
        );
        tokio::pin!(shutdown);
        loop {
            if let Some(lease) = leadership.current() {
                self.fire_due(&lease).await;
            }
            let wait = self
                .until_next_tick()
                .clamp(Duration::from_millis(5), MAX_SLEEP);
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(wait) => {}
                _ = changes.changed() => {}
            }
        }
        leadership.release().await;
        tracing::info!("scheduler stopped");
    }

    fn until_next_tick(&self) -> Duration {
        let now = Utc::now();
        self.entries
            .iter()
            .filter(|e| e.enabled)
            .filter_map(|e| e.next_after(now))
            .map(|t| (t - now).to_std().unwrap_or_default())
            .min()
            .unwrap_or(MAX_SLEEP)
    }

    /// Fires every entry's due ticks under `lease`.
    async fn fire_due(&self, lease: &Lease) {
        let states = match schedule::ticks(&self.pool).await {
            Ok(states) => states
                .into_iter()
                .map(|s| (s.entry, s.last_tick))
                .collect::<HashMap<_, _>>(),
            Err(err) => {
                tracing::warn!(error = %err, "reading the schedule's state failed; retrying");
                return;
            }
        };
        for entry in self.entries.iter().filter(|e| e.enabled) {
            if let Err(err) = self
                .fire_entry(lease, entry, states.get(&entry.name).copied())
                .await
            {
                match err {
                    FireError::Fenced => {
                        tracing::warn!("not the scheduler's leader any more: not firing");
                        return;
                    }
                    FireError::Moved => {
                        tracing::info!(entry = %entry.name, "another scheduler fired this entry")
                    }
                    other => {
                        tracing::warn!(entry = %entry.name, error = %other, "firing a tick failed; retrying")
                    }
                }
            }
        }
    }

    async fn fire_entry(
        &self,
        lease: &Lease,
        entry: &Entry,
        last: Option<DateTime<Utc>>,
    ) -> Result<(), FireError> {
        let now = Utc::now();
        let Some(last) = last else {
            // A new entry: it starts from now; nothing before it was missed.
            schedule::fire(&self.pool, lease, &entry.name, None, now, &[]).await?;
            return Ok(());
        };
        let look_back = chrono::TimeDelta::from_std(LOOK_BACK).unwrap_or_default();
        let start = last.max(now - look_back);
        let due = entry.ticks_between(start, now, 100_000);
        let Some(&latest) = due.last() else {
            return Ok(());
        };
        let tolerance = chrono::TimeDelta::from_std(self.settings.tolerance).unwrap_or_default();
        let on_time = now - latest <= tolerance;
        let missed: &[DateTime<Utc>] = if on_time { &due[..due.len() - 1] } else { &due };
        let mut jobs = Vec::with_capacity(2);
        let catch_up = match (missed.last(), entry.missed) {
            (Some(&tick), Missed::Once) => {
                jobs.push(TickJob {
                    spec: &entry.spec,
                    payload: &entry.stored,
                    session: entry.session,
                    tick,
                    catch_up: true,
                });
                true
            }
            _ => false,
        };
        if on_time {
            jobs.push(TickJob {
                spec: &entry.spec,
                payload: &entry.stored,
                session: entry.session,
                tick: latest,
                catch_up: false,
            });
        }
        let enqueued =
            schedule::fire(&self.pool, lease, &entry.name, Some(last), latest, &jobs).await?;
        let skipped = missed.len() - usize::from(catch_up);
        let name = entry.name.clone();
        if on_time {
            metrics::counter!(m::SCHEDULE_TICKS_TOTAL, "entry" => name.clone(), "outcome" => "fired")
                .increment(1);
        }
        if catch_up {
            metrics::counter!(m::SCHEDULE_TICKS_TOTAL, "entry" => name.clone(), "outcome" => "caught_up")
                .increment(1);
        }
        if skipped > 0 {
            metrics::counter!(m::SCHEDULE_TICKS_TOTAL, "entry" => name, "outcome" => "skipped")
                .increment(skipped as u64);
        }
        if enqueued.iter().any(|e| e.created) {
            self.wake.announce(entry.spec.kind);
        }
        tracing::debug!(entry = %entry.name, %latest, on_time, catch_up, skipped, "ticks fired");
        Ok(())
    }
}

/// An entry as operators see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EntryView {
    /// Its name.
    pub name: String,
    /// The cron expression.
    pub cron: String,
    /// The kind it enqueues.
    pub kind: String,
    /// The payload.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// The zone its expression is read in.
    pub timezone: String,
    /// `skip` or `once`.
    pub missed: Missed,
    /// Disabled entries never fire.
    pub enabled: bool,
    /// When it fires next.
    pub next_fire: Option<DateTime<Utc>>,
    /// The last tick fired (or when the entry was first seen).
    pub last_tick: Option<DateTime<Utc>>,
    /// The job its last tick enqueued.
    pub last_job_id: Option<String>,
    /// That job's status now (`succeeded`, `failed`, ...; absent once pruned).
    pub last_job_status: Option<questboard_core::jobs::JobStatus>,
}

/// The schedule as operators see it, and who leads.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ScheduleView {
    /// The entries.
    pub entries: Vec<EntryView>,
    /// The process leading (firing ticks), if any.
    pub leader: Option<String>,
    /// When its lease lapses unless renewed.
    pub leader_lease_expires_at: Option<DateTime<Utc>>,
}

/// What `entries` look like now.
pub async fn describe(pool: &PgPool, entries: &[Entry]) -> sqlx::Result<ScheduleView> {
    let states: HashMap<String, schedule::TickState> = schedule::ticks(pool)
        .await?
        .into_iter()
        .map(|s| (s.entry.clone(), s))
        .collect();
    let leader = schedule::leader(pool).await?;
    let now = Utc::now();
    let mut view = ScheduleView {
        entries: entries
            .iter()
            .map(|e| {
                let state = states.get(&e.name);
                EntryView {
                    name: e.name.clone(),
                    cron: e.cron.clone(),
                    kind: e.spec.kind.to_owned(),
                    payload: e.payload.clone(),
                    timezone: e.timezone.name().to_owned(),
                    missed: e.missed,
                    enabled: e.enabled,
                    next_fire: e.enabled.then(|| e.next_after(now)).flatten(),
                    last_tick: state.map(|s| s.last_tick),
                    last_job_id: state.and_then(|s| s.job_id.clone()),
                    last_job_status: None,
                }
            })
            .collect(),
        leader: leader.as_ref().map(|(holder, _)| holder.clone()),
        leader_lease_expires_at: leader.map(|(_, at)| at),
    };
    for entry in &mut view.entries {
        if let Some(id) = &entry.last_job_id
            && let Ok(Some(job)) = questboard_core::jobs::fetch(pool, id).await
        {
            entry.last_job_status = Some(job.client_status());
        }
    }
    Ok(view)
}
