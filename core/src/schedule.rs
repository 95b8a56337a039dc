//! What the cron scheduler keeps in Postgres: the last tick fired per
//! entry (`schedule_ticks`) and who leads.
//!
//! Only the holder of the `scheduler/cron` lease fires ticks, and it
//! records each one with [`fire`]: in one transaction it checks its lease
//! token (the fence), moves the entry's last tick forward only from the
//! value it read (so two leaders cannot both move it), and enqueues the
//! tick's jobs with the unique key `<entry>@<tick>` (so even a write that
//! slipped past both could not enqueue a tick twice). A restarted or newly
//! elected leader reads [`ticks`] to know what it missed.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::jobs::{self, Enqueued, JobSpec};
use crate::leases::{self, Lease};

/// The scope and key of the scheduler's leader lease.
pub const LEADER_LEASE: (&str, &str) = ("scheduler", "cron");

/// What an entry's row says.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TickState {
    /// The entry's name.
    pub entry: String,
    /// The last tick fired (or, for a new entry, when it was first seen).
    pub last_tick: DateTime<Utc>,
    /// When that was recorded.
    pub fired_at: DateTime<Utc>,
    /// The job the last tick enqueued.
    pub job_id: Option<String>,
}

/// Every entry's state.
pub async fn ticks(pool: &PgPool) -> sqlx::Result<Vec<TickState>> {
    sqlx::query_as("SELECT entry, last_tick, fired_at, job_id FROM schedule_ticks ORDER BY entry")
        .fetch_all(pool)
        .await
}

/// The scheduler's current leader: holder and lease expiry.
pub async fn leader(pool: &PgPool) -> sqlx::Result<Option<(String, DateTime<Utc>)>> {
    sqlx::query_as(
        "SELECT holder, expires_at FROM leases
         WHERE scope = $1 AND key = $2 AND holder IS NOT NULL AND expires_at > clock_timestamp()",
    )
    .bind(LEADER_LEASE.0)
    .bind(LEADER_LEASE.1)
    .fetch_optional(pool)
    .await
}

/// A job a tick enqueues.
#[derive(Debug, Clone)]
pub struct TickJob<'a> {
    /// Its kind.
    pub spec: &'a JobSpec,
    /// Its stored payload.
    pub payload: &'a [u8],
    /// Its session, if any.
    pub session: Option<Uuid>,
    /// The tick it is for.
    pub tick: DateTime<Utc>,
    /// Whether it makes up for ticks missed while no scheduler ran.
    pub catch_up: bool,
}

/// The unique key of entry `entry`'s tick at `tick`.
pub fn tick_key(entry: &str, tick: DateTime<Utc>) -> String {
    format!(
        "{entry}@{}",
        tick.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

/// Why a tick was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum FireError {
    /// This process no longer holds the leader lease.
    #[error("not the scheduler's leader any more")]
    Fenced,
    /// Another leader recorded the entry since it was read.
    #[error("the entry moved on meanwhile")]
    Moved,
    /// Enqueueing failed.
    #[error(transparent)]
    Job(#[from] jobs::Error),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Records that `entry` fired up to `latest` (its state read as `read`,
/// None for an entry never seen) and enqueues `jobs`, under the leader
/// lease `lease`, in one transaction. Returns the enqueued jobs.
pub async fn fire(
    pool: &PgPool,
    lease: &Lease,
    entry: &str,
    read: Option<DateTime<Utc>>,
    latest: DateTime<Utc>,
    jobs: &[TickJob<'_>],
) -> Result<Vec<Enqueued>, FireError> {
    let mut tx = pool.begin().await?;
    match leases::check_fence(&mut tx, &lease.scope, &lease.key, lease.token).await {
        Ok(()) => {}
        Err(leases::Error::Fenced { .. }) => return Err(FireError::Fenced),
        Err(leases::Error::Database(err)) => return Err(err.into()),
    }
    let mut enqueued = Vec::with_capacity(jobs.len());
    for job in jobs {
        let options = jobs::Options {
            unique_key: Some(tick_key(entry, job.tick)),
            metadata: vec![
                ("schedule_entry".into(), entry.to_owned()),
                ("tick".into(), job.tick.to_rfc3339()),
                ("catch_up".into(), job.catch_up.to_string()),
            ],
            ..jobs::Options::default()
        };
        enqueued.push(
            jobs::enqueue_stored(
                &mut tx,
                job.spec,
                job.payload.to_vec(),
                job.session,
                &options,
            )
            .await?,
        );
    }
    let last_job = enqueued.last().map(|e| e.id.clone());
    let moved = match read {
        Some(read) => sqlx::query(
            "UPDATE schedule_ticks SET last_tick = $3, fired_at = now(), job_id = coalesce($4, job_id)
             WHERE entry = $1 AND last_tick = $2",
        )
        .bind(entry)
        .bind(read)
        .bind(latest)
        .bind(last_job)
        .execute(&mut *tx)
        .await?
        .rows_affected(),
        None => sqlx::query(
            "INSERT INTO schedule_ticks (entry, last_tick, job_id) VALUES ($1, $2, $3)
             ON CONFLICT (entry) DO NOTHING",
        )
        .bind(entry)
        .bind(latest)
        .bind(last_job)
        .execute(&mut *tx)
        .await?
        .rows_affected(),
    };
    if moved != 1 {
        return Err(FireError::Moved);
    }
    tx.commit().await?;
    Ok(enqueued)
}
