//! Starting legacy import runs: the `legacy_import` job's payload and the
//! one way to enqueue it (the worker's handler runs it). The command line
//! and the admin API both call [`start`], so a run is recorded and its job
//! enqueued in one transaction, the same way.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Mapping, Options, RUNS, Result, Run, create_run};
use crate::jobs::{Backoff, Job, JobSpec};

/// The payload: which run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportLegacy {
    /// The run (`legacy_import_runs`), made by `questboard admin
    /// import-legacy run` or `POST /api/admin/imports/legacy`.
    pub run_id: Uuid,
}

impl Job for ImportLegacy {
    const SPEC: JobSpec = JobSpec {
        kind: "legacy_import",
        queue: "questboard.legacy_import",
        max_attempts: 10,
        backoff: Backoff::exponential(Duration::from_secs(10)),
        timeout: Duration::from_secs(24 * 3600),
        concurrency: 1,
        ..JobSpec::DEFAULTS
    };
}

/// A started run: the run and the job that does it.
pub type Started = crate::operator_run::Started<Run>;

/// Records a run (source, mapping and options checked) and enqueues its
/// job in one transaction; the job's unique key (`run:<id>`) keeps one job
/// per run at a time. Announce the kind after.
pub async fn start(
    pool: &sqlx::PgPool,
    allowlist: &crate::sources::Allowlist,
    source_url: &str,
    mapping: &Mapping,
    options: Options,
    dry_run: bool,
    by: &str,
) -> Result<Started> {
    let mut tx = pool.begin().await?;
    let run = create_run(
        &mut tx, allowlist, source_url, mapping, options, dry_run, by,
    )
    .await?;
    let job = ImportLegacy { run_id: run.id };
    let id = run.id;
    let started = RUNS.enqueue(&mut tx, run, id, &job, "run", by).await?;
    tx.commit().await?;
    Ok(started)
}
