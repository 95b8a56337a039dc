//! `GET /api/admin/activity`: what the job platform has been doing, from
//! the database alone (the console works without Prometheus): per kind,
//! jobs succeeded and failed over the last hour (five-minute buckets) and
//! day (hourly), and the worker processes alive with what each runs.
//! Viewers and operators.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use questboard_core::heartbeats::{self, WorkerView};
use questboard_core::jobs::control::{self, Throughput};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ErrorBody, Result};
use super::extract::{Json, Viewer};

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/admin/activity", get(activity))
}

/// Throughput and workers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Activity {
    /// Jobs that ended, per kind, over the last hour and day.
    pub throughput: Throughput,
    /// Worker processes seen in the last day, alive first.
    pub workers: Vec<WorkerView>,
}

/// Throughput per kind and the workers alive; viewers and operators.
#[utoipa::path(get, path = "/api/admin/activity", tag = "admin",
    responses((status = 200, body = Activity), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody)),
    security(("bearer" = ["questboard:viewer"]), ("bearer" = ["questboard:operator"])))]
pub async fn activity(
    Viewer(_viewer): Viewer,
    State(state): State<AppState>,
) -> Result<Json<Activity>> {
    let throughput = control::throughput(&state.pool, &state.registry.specs()).await?;
    let workers = heartbeats::workers(&state.pool).await?;
    Ok(Json(Activity {
        throughput,
        workers,
    }))
}
