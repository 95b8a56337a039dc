//! The worker's side of operator runs ([`questboard_core::operator_run`]):
//! loading the run a job names, failing one that cannot start (its report
//! says why), and ending one with its report stored and counted. Asset
//! migrations and legacy imports both end this way.

use bytes::Bytes;
use questboard_core::operator_run::{self, Kind};
use serde_json::{Value, json};
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::jobs::{JobContext, JobError};

fn db(err: impl std::fmt::Display) -> JobError {
    JobError::retryable(format!("database: {err}"))
}

/// The run `id` of `kind` (a job naming no run fails for good).
pub(crate) async fn load<R>(ctx: &JobContext, kind: &Kind, id: Uuid) -> Result<R, JobError>
where
    R: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin,
{
    match kind.get(&ctx.pool, id).await {
        Ok(run) => Ok(run),
        Err(operator_run::Error::NotFound) => {
            Err(JobError::fatal(format!("no such run in {}", kind.table)))
        }
        Err(err) => Err(db(err)),
    }
}

/// What a job returns for a run that already ended (`status`): its
/// report, or why it was skipped.
pub(crate) fn ended(status: &str, report: Option<Value>) -> Value {
    report.unwrap_or_else(|| json!({ "skipped": format!("the run is {status}") }))
}

/// Ends run `id` as failed before it could start, with `reason` as its
/// report; the error the job fails with.
pub(crate) async fn fail(ctx: &JobContext, kind: &Kind, id: Uuid, reason: String) -> JobError {
    let report = json!({ "run_id": id, "outcome": "failed", "reason": reason });
    if let Err(err) = kind.finish(&ctx.pool, id, "failed", &report, None).await {
        return db(err);
    }
    metrics::counter!(kind.ends_metric, "outcome" => "failed").increment(1);
    JobError::Fatal { reason }
}

/// Ends run `id` as `outcome` with `report`, stored first (its key is
/// added to the report).
pub(crate) async fn finish(
    ctx: &JobContext,
    kind: &Kind,
    id: Uuid,
    outcome: &'static str,
    mut report: Value,
) -> Result<Value, JobError> {
    let body = serde_json::to_vec_pretty(&report).map_err(JobError::fatal)?;
    let key = ctx
        .storage
        .put_report(&kind.report_name(id), Bytes::from(body))
        .await
        .map_err(|e| JobError::retryable(format!("storing the report: {e}")))?;
    report["report_key"] = Value::String(key.clone());
    kind.finish(&ctx.pool, id, outcome, &report, Some(&key))
        .await
        .map_err(db)?;
    metrics::counter!(kind.ends_metric, "outcome" => outcome).increment(1);
    Ok(report)
}
