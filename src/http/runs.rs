//! `GET /api/admin/runs`: the operator runs (asset migrations and legacy
//! imports), newest first, with their job's progress, for the console's
//! runs screen. Each run in full (counts, report) is at its own route
//! (`/api/admin/migrations/assets/{id}`, `/api/admin/imports/legacy/{id}`).
//! Viewers and operators.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::error::{Error, ErrorBody, Result};
use super::extract::{Json, Query, Viewer};

/// Largest page of runs.
pub const MAX_RUNS: i64 = 200;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/admin/runs", get(list_runs))
}

/// Query of the run list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunParams {
    /// Runs to return, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

/// A run as the list shows it.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct RunRow {
    /// `asset_migration` or `legacy_import`.
    pub kind: String,
    /// The run.
    pub run_id: Uuid,
    /// `running`, `completed`, `failed`, `aborted`, `rolling_back`, `rolled_back`.
    pub status: String,
    /// It checks only.
    pub dry_run: bool,
    /// Its latest job.
    pub job_id: Option<String>,
    /// That job's progress: done.
    pub progress_done: Option<i64>,
    /// Of.
    pub progress_total: Option<i64>,
    /// What it is doing.
    pub progress_message: Option<String>,
    /// Who started it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

/// The runs.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunsPage {
    /// Newest first.
    pub runs: Vec<RunRow>,
}

/// Asset migrations and legacy imports, newest first; viewers and operators.
#[utoipa::path(get, path = "/api/admin/runs", tag = "admin",
    params(RunParams),
    responses((status = 200, body = RunsPage), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = ["questboard:viewer"]), ("bearer" = ["questboard:operator"])))]
pub async fn list_runs(
    Viewer(_viewer): Viewer,
    State(state): State<AppState>,
    Query(params): Query<RunParams>,
) -> Result<Json<RunsPage>> {
    let limit = params.limit.unwrap_or(50);
    if !(1..=MAX_RUNS).contains(&limit) {
        return Err(Error::bad_request(
            "invalid_query",
            format!("limit must be between 1 and {MAX_RUNS}"),
        ));
    }
    let runs: Vec<RunRow> = sqlx::query_as(
        "SELECT r.kind, r.id AS run_id, r.status, r.dry_run, r.job_id,
                p.progress_done, p.progress_total, p.progress_message,
                r.created_by, r.created_at, r.finished_at
         FROM (
             (SELECT 'asset_migration' AS kind, id, status, dry_run, job_id, created_by,
                     created_at, finished_at
              FROM asset_migration_runs ORDER BY created_at DESC LIMIT $1)
             UNION ALL
             (SELECT 'legacy_import', id, status, dry_run, job_id, created_by, created_at,
                     finished_at
              FROM legacy_import_runs ORDER BY created_at DESC LIMIT $1)
         ) r
         LEFT JOIN job_runs p ON p.job_id = r.job_id
         ORDER BY r.created_at DESC, r.id
         LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(RunsPage { runs }))
}
