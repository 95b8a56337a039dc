//! `GET /api/jobs/{job_id}`: a durable job's state, for every kind.
//!
//! A job of a campaign session is visible to that session's members only
//! (an operator who is not a member included: this is the members' view,
//! scoped by membership like every other session route); a job without a
//! session (maintenance) only to operators and viewers. Anyone else gets 404, exactly
//! as for an id that does not exist, so job ids cannot be probed.
//! Operators see every job, with more of it (payload, errors of each run,
//! the lease holder), through `GET /api/admin/jobs/{id}` (`admin.rs`),
//! which shares these views: one route per audience, each with one rule.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use chrono::{DateTime, Utc};
use questboard_core::jobs::{self, JobRecord, JobStatus, Progress};
use questboard_core::sessions;
use questboard_workers::jobs::Registry;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::AppState;
use super::error::{Error, ErrorBody, Result};
use super::extract::{AuthCaller, Json, Path};

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/jobs/{job_id}", get(get_job))
}

/// A job's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    /// The job id (a ULID).
    pub job_id: String,
    /// What it does (`turn`, `prune`, `reconcile`, ...).
    pub kind: String,
    /// Where it is.
    pub status: JobStatus,
    /// Runs started so far.
    pub attempts: i32,
    /// Most runs allowed.
    pub max_attempts: i32,
    /// Why the last run failed (sanitised), if it did.
    pub last_error: Option<String>,
    /// When it may run (next, while queued or retrying).
    pub run_at: DateTime<Utc>,
    /// When its last run started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// The campaign session it belongs to, if any.
    pub session_id: Option<Uuid>,
    /// What its handler reported when it succeeded.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// What a long job last reported while running.
    pub progress: Option<Progress>,
}

impl JobView {
    /// The view of `record`, with its kind named from `registry`.
    pub fn of(record: &JobRecord, registry: &Registry) -> Self {
        Self {
            job_id: record.id.clone(),
            kind: kind_name(registry, &record.job_type),
            status: record.client_status(),
            attempts: record.attempts,
            max_attempts: record.max_attempts,
            last_error: record.last_error.clone(),
            run_at: record.run_at,
            started_at: record.lock_at,
            finished_at: record.done_at,
            session_id: record.session(),
            result: record.result.clone(),
            progress: record.progress(),
        }
    }
}

/// The kind stored under `queue`, or the queue itself for kinds this
/// process does not know.
pub fn kind_name(registry: &Registry, queue: &str) -> String {
    registry
        .by_queue(queue)
        .map_or_else(|| queue.to_owned(), |k| k.spec.kind.to_owned())
}

/// A job's state: members of its session see a session's job, operators
/// and viewers a job without a session (they see every job at
/// `/api/admin/jobs/{id}`).
#[utoipa::path(get, path = "/api/jobs/{job_id}", tag = "jobs",
    params(("job_id" = String, Path, description = "Job id, as returned when the work was submitted")),
    responses(
        (status = 200, body = JobView),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No such job, or not visible to the caller", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_job(
    AuthCaller(caller): AuthCaller,
    State(state): State<AppState>,
    Path(job_id): Path<String>,
) -> Result<Json<JobView>> {
    if !jobs::is_job_id(&job_id) {
        return Err(Error::NotFound("job"));
    }
    let job = jobs::fetch(&state.pool, &job_id)
        .await?
        .ok_or(Error::NotFound("job"))?;
    match job.session() {
        Some(session) => {
            sessions::require_member(&state.pool, session, &caller.user)
                .await
                .map_err(|_| Error::NotFound("job"))?;
        }
        None if caller.access >= crate::auth::Access::Viewer => {}
        None => return Err(Error::NotFound("job")),
    }
    Ok(Json(JobView::of(&job, &state.registry)))
}
