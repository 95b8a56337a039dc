//! Worker heartbeats: which worker processes are alive and what each is
//! running, for operators (the console's overview, `GET /api/admin/activity`).
//!
//! Every worker upserts its row in `worker_heartbeats` every [`BEAT`]
//! ([`beat`]) and deletes it when it stops cleanly ([`gone`]). A worker not
//! seen for three beats is shown as dead; what it held lapses with its
//! leases and is taken over, so nothing depends on this table but the
//! operators' view. What a worker runs is not written twice: it is the
//! session and job leases it holds (`leases.holder` is the worker's id).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;

/// How often a worker says it is alive.
pub const BEAT: Duration = Duration::from_secs(5);

/// Records that worker `id` (on `host`, process `pid`, serving `kinds`) is
/// alive; removes rows of workers not seen for a day.
pub async fn beat(
    pool: &PgPool,
    id: &str,
    host: &str,
    pid: u32,
    kinds: &[&str],
) -> sqlx::Result<()> {
    let kinds: Vec<String> = kinds.iter().map(|k| (*k).to_owned()).collect();
    sqlx::query(
        "WITH gone AS (
             DELETE FROM worker_heartbeats WHERE seen_at < now() - interval '1 day'
         )
         INSERT INTO worker_heartbeats (id, host, pid, kinds) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE SET seen_at = now()",
    )
    .bind(id)
    .bind(host)
    .bind(i32::try_from(pid).unwrap_or(i32::MAX))
    .bind(&kinds)
    .execute(pool)
    .await?;
    Ok(())
}

/// Worker `id` stopped cleanly.
pub async fn gone(pool: &PgPool, id: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM worker_heartbeats WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// A lease a worker holds: what it is running.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Holding {
    /// `session` (draining a session's turns) or `job` (running a job).
    pub scope: String,
    /// The session id or the job id.
    pub key: String,
    /// The lease's fencing token.
    pub token: i64,
    /// Since when it holds it.
    pub since: DateTime<Utc>,
}

/// A worker process as operators see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WorkerView {
    /// Its id (what its leases name as holder).
    pub id: String,
    /// The machine.
    pub host: String,
    /// The process.
    pub pid: i32,
    /// The kinds it serves.
    pub kinds: Vec<String>,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its last heartbeat.
    pub seen_at: DateTime<Utc>,
    /// False once three heartbeats are missed (it crashed or hangs).
    pub alive: bool,
    /// The session and job leases it holds now.
    pub running: Vec<Holding>,
}

/// The workers seen in the last day, alive first, each with what it runs.
pub async fn workers(pool: &PgPool) -> sqlx::Result<Vec<WorkerView>> {
    type Row = (
        String,
        String,
        i32,
        Vec<String>,
        DateTime<Utc>,
        DateTime<Utc>,
        bool,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, host, pid, kinds, started_at, seen_at,
                seen_at > now() - make_interval(secs => $1)
         FROM worker_heartbeats
         ORDER BY 7 DESC, started_at",
    )
    .bind(BEAT.as_secs_f64() * 3.0)
    .fetch_all(pool)
    .await?;
    let held: Vec<(String, String, String, i64, DateTime<Utc>)> = sqlx::query_as(
        "SELECT holder, scope, key, token, acquired_at FROM leases
         WHERE holder = ANY($1) AND scope IN ('session', 'job')
           AND expires_at > clock_timestamp()
         ORDER BY acquired_at",
    )
    .bind(rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(id, host, pid, kinds, started_at, seen_at, alive)| WorkerView {
                running: held
                    .iter()
                    .filter(|h| h.0 == id)
                    .map(|h| Holding {
                        scope: h.1.clone(),
                        key: h.2.clone(),
                        token: h.3,
                        since: h.4,
                    })
                    .collect(),
                id,
                host,
                pid,
                kinds,
                started_at,
                seen_at,
                alive,
            },
        )
        .collect())
}
