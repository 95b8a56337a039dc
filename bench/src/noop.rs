//! The benchmark's own job kind: a no-op, registered only by this binary,
//! so the plain lane can be measured against raw apalis-postgres doing the
//! same nothing.

use std::time::Duration;

use anyhow::Context as _;
use questboard::config::Config;
use questboard_core::db;
use questboard_core::jobs::{Job, JobSpec};
use questboard_workers::jobs::{Handler, JobContext, JobError, JobRun, Registry};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The kind's name.
pub const KIND: &str = "bench_noop";

/// A job that does nothing.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Noop {
    /// Its number.
    pub n: u64,
}

impl Job for Noop {
    const SPEC: JobSpec = JobSpec {
        kind: KIND,
        queue: "questboard.bench_noop",
        max_attempts: 1,
        timeout: Duration::from_secs(60),
        concurrency: 256,
        ..JobSpec::DEFAULTS
    };
}

impl Handler for Noop {
    async fn run(self, _ctx: &JobContext, _run: &JobRun) -> Result<Value, JobError> {
        Ok(Value::Null)
    }
}

/// Runs a questboard worker serving only [`Noop`] against `DATABASE_URL`
/// until the process is killed.
pub async fn serve(config: &Config) -> anyhow::Result<()> {
    let pool = db::connect(config.database_url(), config.db_max_connections)
        .await
        .context("connecting to Postgres")?;
    let bus = config.shared_bus()?;
    let worker =
        questboard::app::worker_with(config, pool, &bus, Registry::new().register::<Noop>())?;
    worker.run(std::future::pending()).await?;
    Ok(())
}
