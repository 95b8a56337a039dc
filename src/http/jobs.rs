//! `GET /api/jobs/{job_id}`: a durable job's state, for members of the
//! job's campaign session only (404 for anyone else, as for sessions).

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use chrono::{DateTime, Utc};
use questboard_core::jobs::{self, JobKind, JobStatus};
use questboard_core::sessions;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::AppState;
use super::error::{Error, ErrorBody, Result};
use super::extract::{AuthUser, Json, Path};

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/jobs/{job_id}", get(get_job))
}

/// A job's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    /// The job id (a ULID).
    pub job_id: String,
    /// What it does.
    pub kind: JobKind,
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
    /// The campaign session it belongs to.
    pub session_id: Uuid,
}

/// A job's state; members of its session only.
#[utoipa::path(get, path = "/api/jobs/{job_id}", tag = "jobs",
    params(("job_id" = String, Path, description = "Job id, as returned when the work was submitted")),
    responses(
        (status = 200, body = JobView),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_job(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    Path(job_id): Path<String>,
) -> Result<Json<JobView>> {
    if job_id.len() != 26 || !job_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(Error::NotFound("job"));
    }
    let job = jobs::fetch(&state.pool, &job_id)
        .await
        .map_err(Error::internal)?
        .ok_or(Error::NotFound("job"))?;
    let (Some(kind), Some(session_id)) = (
        job.kind(),
        job.session_id
            .as_deref()
            .and_then(|s| s.parse::<Uuid>().ok()),
    ) else {
        return Err(Error::NotFound("job"));
    };
    sessions::require_member(&state.pool, session_id, &user)
        .await
        .map_err(|_| Error::NotFound("job"))?;
    Ok(Json(JobView {
        job_id: job.id.clone(),
        kind,
        status: job.client_status(),
        attempts: job.attempts,
        max_attempts: job.max_attempts,
        last_error: job.last_error.clone(),
        run_at: job.run_at,
        started_at: job.lock_at,
        finished_at: job.done_at,
        session_id,
    }))
}
