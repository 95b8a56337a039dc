//! Starting asset migration runs and their rollbacks: the
//! `asset_migration` job's payload and the one way to enqueue it (the
//! worker's handler runs it). Operators start runs through the command
//! line and the admin API; both call these, so a run is recorded and its
//! job enqueued in one transaction, the same way.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Error, RUNS, Result, Run, begin_rollback, create_run};
use crate::jobs::{Backoff, Job, JobSpec};

/// The payload: which run, and whether to roll it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateAssets {
    /// The run (`asset_migration_runs`), made by `questboard admin
    /// migrate-assets run` or `POST /api/admin/migrations/assets`.
    pub run_id: Uuid,
    /// Put back what the run moved.
    #[serde(default)]
    pub rollback: bool,
}

impl Job for MigrateAssets {
    const SPEC: JobSpec = JobSpec {
        kind: "asset_migration",
        queue: "questboard.asset_migration",
        max_attempts: 10,
        backoff: Backoff::exponential(Duration::from_secs(10)),
        timeout: Duration::from_secs(24 * 3600),
        concurrency: 1,
        ..JobSpec::DEFAULTS
    };
}

/// A started run or rollback: the run and the job that does it.
pub type Started = crate::operator_run::Started<Run>;

async fn enqueue_for(
    tx: &mut sqlx::PgConnection,
    run: Run,
    rollback: bool,
    by: &str,
) -> Result<Started> {
    let job = MigrateAssets {
        run_id: run.id,
        rollback,
    };
    let direction = if rollback { "rollback" } else { "run" };
    let id = run.id;
    Ok(RUNS.enqueue(tx, run, id, &job, direction, by).await?)
}

/// Records a run (checked: options, source URL, mapping) and enqueues its
/// job in one transaction. Announce the kind after.
pub async fn start(
    pool: &sqlx::PgPool,
    allowlist: &crate::sources::Allowlist,
    source_url: &str,
    options: &super::Options,
    dry_run: bool,
    mapping: &[(String, Uuid)],
    by: &str,
) -> Result<Started> {
    let mut tx = pool.begin().await?;
    let run = create_run(
        &mut tx, allowlist, source_url, options, dry_run, mapping, by,
    )
    .await?;
    let started = enqueue_for(&mut tx, run, false, by).await?;
    tx.commit().await?;
    Ok(started)
}

/// Marks an ended run as being rolled back and enqueues the rollback.
pub async fn start_rollback(pool: &sqlx::PgPool, run_id: Uuid, by: &str) -> Result<Started> {
    let mut tx = pool.begin().await?;
    let run = begin_rollback(&mut tx, run_id).await?;
    let started = enqueue_for(&mut tx, run, true, by).await?;
    tx.commit().await?;
    Ok(started)
}

/// Enqueues an unfinished run's (or rollback's) job again: after it
/// failed for good, it resumes where it was; while it is still queued or
/// running, that job is returned.
pub async fn resume(pool: &sqlx::PgPool, run_id: Uuid, by: &str) -> Result<Started> {
    let run: Run = RUNS.get(pool, run_id).await?;
    if !matches!(run.status.as_str(), "running" | "rolling_back") {
        return Err(Error::Conflict(format!(
            "run {run_id} is {}; only an unfinished run resumes",
            run.status
        )));
    }
    let rollback = run.status == "rolling_back";
    let mut tx = pool.begin().await?;
    let started = enqueue_for(&mut tx, run, rollback, by).await?;
    tx.commit().await?;
    Ok(started)
}
