//! Members' quotas and budgets over HTTP, for operators: what is in force
//! (`GET /api/admin/quotas`, viewers and operators) and changing it at run
//! time (`PUT /api/admin/quotas/{name}` `{value}`, `DELETE` back to the
//! default; operators, recorded in the audit log). The quotas themselves
//! are `questboard_core::quotas`; a change is in force on this process at
//! once and on every other within `quotas::REFRESH`.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use questboard_core::quotas::{MAX_VALUE, Quota, Setting};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::audit::{Action, audited};
use super::error::{Error, ErrorBody, Result};
use super::extract::{Json, Operator, Path, Viewer};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/quotas", get(list_quotas))
        .route(
            "/admin/quotas/{name}",
            axum::routing::put(set_quota).delete(reset_quota),
        )
}

/// Every quota in force.
#[derive(Debug, Serialize, ToSchema)]
pub struct QuotasPage {
    /// In the order of the configuration table.
    pub quotas: Vec<Setting>,
    /// Seconds within which a change reaches every process.
    pub refresh_seconds: u64,
}

/// A new value for a quota.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaInput {
    /// The limit (0: no limit); a whole number (`5` or `5.0`).
    #[schema(minimum = 0, maximum = 1_000_000_000_000_u64)]
    #[serde(deserialize_with = "super::extract::required_whole_number")]
    pub value: u64,
}

/// Members' quotas and budgets in force, with their defaults and who
/// changed them; viewers and operators.
#[utoipa::path(get, path = "/api/admin/quotas", tag = "admin",
    responses((status = 200, body = QuotasPage), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody)),
    security(("bearer" = ["questboard:viewer"]), ("bearer" = ["questboard:operator"])))]
pub async fn list_quotas(
    Viewer(_viewer): Viewer,
    State(state): State<AppState>,
) -> Result<Json<QuotasPage>> {
    page(&state).await.map(Json)
}

async fn page(state: &AppState) -> Result<QuotasPage> {
    Ok(QuotasPage {
        quotas: state.quotas.list(&state.pool).await?,
        refresh_seconds: questboard_core::quotas::REFRESH.as_secs(),
    })
}

fn known(name: &str) -> Result<Quota> {
    Quota::parse(name).ok_or(Error::NotFound("quota"))
}

/// Sets a quota (0: no limit) without a restart; operators only,
/// recorded in the audit log (`quota.set`).
#[utoipa::path(put, path = "/api/admin/quotas/{name}", tag = "admin",
    params(("name" = String, Path, description = "The quota (`user_turns_per_minute`, ...)")),
    request_body = QuotaInput,
    responses((status = 200, body = QuotasPage), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = ["questboard:operator"])))]
pub async fn set_quota(
    Operator(user): Operator,
    State(state): State<AppState>,
    Path(name): Path<String>,
    Json(input): Json<QuotaInput>,
) -> Result<Json<QuotasPage>> {
    let detail = serde_json::json!({ "value": input.value });
    audited(
        &state,
        &user,
        Action::new("quota.set", &name).with(detail),
        async {
            let quota = known(&name)?;
            if input.value > MAX_VALUE {
                return Err(Error::Unprocessable(format!(
                    "value must be at most {MAX_VALUE} (0: no limit)"
                )));
            }
            state
                .quotas
                .set(&state.pool, quota, Some(input.value), user.as_str())
                .await?;
            tracing::info!(quota = quota.name(), value = input.value, by = %user, "quota set");
            page(&state).await
        },
        |_| None,
    )
    .await
    .map(Json)
}

/// Puts a quota back to its default (the environment's); operators only,
/// recorded in the audit log (`quota.reset`).
#[utoipa::path(delete, path = "/api/admin/quotas/{name}", tag = "admin",
    params(("name" = String, Path, description = "The quota")),
    responses((status = 200, body = QuotasPage), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["questboard:operator"])))]
pub async fn reset_quota(
    Operator(user): Operator,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<QuotasPage>> {
    audited(
        &state,
        &user,
        Action::new("quota.reset", &name),
        async {
            let quota = known(&name)?;
            state
                .quotas
                .set(&state.pool, quota, None, user.as_str())
                .await?;
            tracing::info!(quota = quota.name(), by = %user, "quota back to its default");
            page(&state).await
        },
        |_| None,
    )
    .await
    .map(Json)
}
