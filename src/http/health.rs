//! Liveness and readiness probes for orchestrators and load balancers.
//!
//! `/healthz` answers as long as the process serves HTTP. `/readyz` answers
//! 200 only when Postgres, Redis and the object store respond within
//! [`CHECK_TIMEOUT`], and names what failed otherwise. Neither needs a token.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Router, routing::get};
use questboard_core::metrics as m;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::extract::Json;

/// How long one dependency may take to answer.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// Liveness and readiness report.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `unavailable`.
    pub status: &'static str,
    /// Per dependency: `ok` or what failed (readiness only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
}

/// One dependency's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct Check {
    /// `postgres`, `redis` (`in-process` under `questboard dev` without
    /// Redis: the bus, which always answers) or `storage`.
    pub name: &'static str,
    /// `ok` or `error`.
    pub status: &'static str,
    /// What failed, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Liveness: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process is alive", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        checks: Vec::new(),
    })
}

/// Readiness: Postgres, the bus (Redis) and storage all answer.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready to serve", body = Health),
        (status = 503, description = "A dependency is unavailable", body = Health)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let postgres = check("postgres", async {
        sqlx::query("SELECT 1")
            .execute(&state.pool)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    let redis = check(state.bus.kind(), async {
        state.bus.ping().await.map_err(|e| e.to_string())
    });
    let storage = check("storage", async {
        state.storage.check().await.map_err(|e| e.to_string())
    });
    let (postgres, redis, storage) = tokio::join!(postgres, redis, storage);
    let checks = vec![postgres, redis, storage];
    let ready = checks.iter().all(|c| c.status == "ok");
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Health {
        status: if ready { "ok" } else { "unavailable" },
        checks,
    };
    (status, Json(body)).into_response()
}

async fn check(name: &'static str, probe: impl Future<Output = Result<(), String>>) -> Check {
    let result = match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
    };
    if let Err(detail) = &result {
        tracing::warn!(dependency = name, error = %detail, "readiness check failed");
    }
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::counter!(m::READINESS_CHECKS_TOTAL, "dependency" => name, "outcome" => outcome)
        .increment(1);
    Check {
        name,
        status: outcome,
        // The detail is logged above; callers of this unauthenticated
        // endpoint learn only which dependency is down.
        error: result.err().map(|_| "unreachable".to_owned()),
    }
}
