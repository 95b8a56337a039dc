//! Job kinds that exist only in the tests, registered next to the
//! production ones, and the child worker processes that run them (so a
//! test can `kill -9` a worker in the middle of a job).
//!
//! - [`Sleepy`]: sleeps in steps, reporting progress and stopping at a
//!   checkpoint when cancelled; fails on its first `fail_attempts` runs;
//!   may belong to a session.
//! - [`Stuck`]: its first run hangs past the kind's 500 ms timeout.

use std::time::Duration;

use questboard_core::jobs::{Backoff, Job, JobSpec};
use questboard_workers::jobs::{Handler, JobContext, JobError, JobRun, Registry, registry};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

/// Every production kind, and the test kinds.
pub fn test_registry() -> Registry {
    registry().register::<Sleepy>().register::<Stuck>()
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Sleepy {
    pub ms: u64,
    #[serde(default)]
    pub steps: u32,
    #[serde(default)]
    pub fail_attempts: i32,
    #[serde(default)]
    pub session: Option<Uuid>,
}

impl Job for Sleepy {
    const SPEC: JobSpec = JobSpec {
        kind: "sleepy",
        queue: "test.sleepy",
        max_attempts: 3,
        backoff: Backoff::exponential(Duration::from_millis(50)),
        timeout: Duration::from_secs(60),
        concurrency: 2,
        operator_may_start: true,
        ..JobSpec::DEFAULTS
    };

    fn session(&self) -> Option<Uuid> {
        self.session
    }
}

impl Handler for Sleepy {
    async fn run(self, _ctx: &JobContext, run: &JobRun) -> Result<Value, JobError> {
        let steps = self.steps.max(1);
        let pause = Duration::from_millis(self.ms / u64::from(steps));
        for step in 0..steps {
            run.checkpoint()?;
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = run.cancelled() => return Err(JobError::Cancelled),
            }
            run.progress(i64::from(step + 1), Some(i64::from(steps)), "sleeping")
                .await?;
        }
        if run.attempt() <= self.fail_attempts {
            return Err(JobError::retryable(format!(
                "planned failure of attempt {}",
                run.attempt()
            )));
        }
        Ok(json!({
            "attempt": run.attempt(),
            "slept_ms": self.ms,
            "pid": std::process::id(),
        }))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Stuck {}

impl Job for Stuck {
    const SPEC: JobSpec = JobSpec {
        kind: "stuck",
        queue: "test.stuck",
        max_attempts: 3,
        backoff: Backoff::exponential(Duration::from_millis(50)),
        timeout: Duration::from_millis(500),
        concurrency: 1,
        operator_may_start: true,
        ..JobSpec::DEFAULTS
    };
}

impl Handler for Stuck {
    async fn run(self, _ctx: &JobContext, run: &JobRun) -> Result<Value, JobError> {
        if run.attempt() == 1 {
            // Ignores everything, as a handler stuck on a dead socket would.
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Ok(json!({ "attempt": run.attempt() }))
    }
}

/// Env var that turns [`child_worker_entry_point`] into a worker.
pub const CHILD_ENV: &str = "QB_TEST_CHILD_WORKER";

/// Not a test: the entry point of worker child processes (see
/// `TestApp::child_worker`), which re-run this test binary with only this
/// function selected. Without [`CHILD_ENV`] it returns at once.
#[tokio::test]
#[ignore = "entry point of child worker processes, run by other tests"]
async fn child_worker_entry_point() {
    if std::env::var(CHILD_ENV).is_err() {
        return;
    }
    questboard::telemetry::init_logging(questboard::config::LogFormat::Text);
    let config = questboard::config::Config::from_env().expect("config");
    let pool = questboard_core::db::connect(config.database_url(), 5)
        .await
        .expect("pool");
    let bus = config.shared_bus().expect("REDIS_URL");
    let worker =
        questboard::app::worker_with(&config, pool, &bus, test_registry()).expect("worker");
    worker
        .run(std::future::pending())
        .await
        .expect("worker run");
}
