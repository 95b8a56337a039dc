//! What the providers were paid for, over HTTP: a session's usage for its
//! members (`GET /api/sessions/{id}/usage`) and everyone's for operators
//! (`GET /api/admin/usage`), summed from `usage_daily` by
//! `questboard_core::usage`.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use chrono::NaiveDate;
use questboard_core::sessions;
use questboard_core::usage::{self, Filter, Report, Share};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::error::{Error, ErrorBody, Result};
use super::extract::{AuthUser, Json, Path, Query, Viewer};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/sessions/{session_id}/usage", get(session_usage))
        .route("/admin/usage", get(admin_usage))
}

/// Which days a usage report covers.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Days {
    /// From this UTC day (`YYYY-MM-DD`), kept; default: the first.
    pub from: Option<NaiveDate>,
    /// Up to this UTC day, kept; default: today. Before `from`: nothing.
    pub to: Option<NaiveDate>,
}

impl Days {
    /// Refuses days Postgres cannot hold (before 4713 BC; never a valid
    /// RFC 3339 date). A range that ends before it starts selects nothing.
    fn check(&self) -> Result<()> {
        use chrono::Datelike as _;
        if [self.from, self.to]
            .into_iter()
            .flatten()
            .any(|day| day.year() < -4712)
        {
            return Err(Error::bad_request(
                "invalid_query",
                "days before 4713 BC cannot be stored",
            ));
        }
        Ok(())
    }
}

/// A session's usage.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionUsage {
    /// The session.
    pub session_id: Uuid,
    /// Its sums: totals, by day, by provider and model.
    #[serde(flatten)]
    pub report: Report,
}

/// What a session's game master and media cost: totals, by UTC day and by
/// provider and model; members only.
#[utoipa::path(get, path = "/api/sessions/{session_id}/usage", tag = "usage",
    params(("session_id" = Uuid, Path, description = "Session id"), Days),
    responses(
        (status = 200, body = SessionUsage),
        (status = 400, description = "Not a date", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No such session, or not a member", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn session_usage(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    Path(session_id): Path<Uuid>,
    Query(days): Query<Days>,
) -> Result<Json<SessionUsage>> {
    sessions::require_member(&state.pool, session_id, &user).await?;
    days.check()?;
    let filter = Filter {
        session: Some(session_id),
        user: None,
        from: days.from,
        to: days.to,
    };
    let report = usage::report(&state.pool, &filter).await?;
    Ok(Json(SessionUsage { session_id, report }))
}

/// Query of the operators' usage report.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AdminUsageParams {
    /// Only this user's usage (turns they played, media they asked for).
    pub user: Option<String>,
    /// Only this session's usage.
    pub session: Option<Uuid>,
    /// From this UTC day (`YYYY-MM-DD`), kept.
    pub from: Option<NaiveDate>,
    /// Up to this UTC day, kept.
    pub to: Option<NaiveDate>,
}

/// The operators' usage report.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminUsage {
    /// The sums of what the filter selects: totals, by day, by model.
    #[serde(flatten)]
    pub report: Report,
    /// The users who spent the most (at most 100), most tokens first.
    pub users: Vec<Share>,
    /// The sessions that spent the most (at most 100), most tokens first.
    pub sessions: Vec<Share>,
}

/// Usage of every session, or of one user or session, over days; viewers
/// and operators.
#[utoipa::path(get, path = "/api/admin/usage", tag = "admin",
    params(AdminUsageParams),
    responses((status = 200, body = AdminUsage),
              (status = 400, description = "Not a date, or not a session id", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = ["questboard:viewer"]), ("bearer" = ["questboard:operator"])))]
pub async fn admin_usage(
    Viewer(_viewer): Viewer,
    State(state): State<AppState>,
    Query(params): Query<AdminUsageParams>,
) -> Result<Json<AdminUsage>> {
    Days {
        from: params.from,
        to: params.to,
    }
    .check()?;
    // Text Postgres cannot hold names no user: nothing matches.
    if params.user.as_deref().is_some_and(|u| u.contains('\0')) {
        return Ok(Json(AdminUsage {
            report: Report::default(),
            users: Vec::new(),
            sessions: Vec::new(),
        }));
    }
    let filter = Filter {
        session: params.session,
        user: params.user,
        from: params.from,
        to: params.to,
    };
    let report = usage::report(&state.pool, &filter).await?;
    let users = usage::top(&state.pool, &filter, false).await?;
    let sessions = usage::top(&state.pool, &filter, true).await?;
    Ok(Json(AdminUsage {
        report,
        users,
        sessions,
    }))
}
