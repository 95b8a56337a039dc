//! The operators' audit log over HTTP: [`audited`] wraps every operator
//! action of `/api/admin` (recorded before and after it; an action whose
//! record cannot be written is not taken), and `GET /api/admin/audit`
//! lists the log for viewers and operators, newest first.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use questboard_core::audit::{self, Entry, Outcome};
use questboard_core::identity::UserId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::error::{Error, ErrorBody, Result};
use super::extract::{Json, Query, Viewer};

/// Default page of the audit list.
pub const DEFAULT_PAGE: i64 = 50;
/// Largest page of the audit list.
pub const MAX_PAGE: i64 = 500;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/admin/audit", get(list_audit))
}

/// An operator action, as the audit log records it.
pub(super) struct Action<'a> {
    /// `queue.pause`, `job.retry`, ...
    pub(super) what: &'static str,
    /// A kind, a job id, a run id.
    pub(super) target: &'a str,
    /// What else the operator sent (never secrets: no source URL).
    pub(super) detail: Value,
}

impl<'a> Action<'a> {
    /// `what` on `target`, with no detail.
    pub(super) fn new(what: &'static str, target: &'a str) -> Self {
        Self {
            what,
            target,
            detail: Value::Object(Default::default()),
        }
    }

    /// With `detail`.
    pub(super) fn with(self, detail: Value) -> Self {
        Self { detail, ..self }
    }
}

/// Runs `work`, the `action` `operator` asked for, between two writes to
/// the audit log: before (so no action goes unrecorded: if the log cannot
/// be written, the action is refused with 503) and after, with its outcome
/// (`ok` with what `made` says it made, `refused` for a 4xx answer with its
/// code and message, `failed` for a 5xx with its code only).
pub(super) async fn audited<T>(
    state: &AppState,
    operator: &UserId,
    action: Action<'_>,
    work: impl Future<Output = Result<T>>,
    made: impl FnOnce(&T) -> Option<Value>,
) -> Result<T> {
    let Action {
        what,
        target,
        detail,
    } = action;
    let id = audit::begin(&state.pool, operator.as_str(), what, target, &detail)
        .await
        .map_err(|err| {
            tracing::error!(error = %err, what, target, "the audit log cannot be written: action refused");
            Error::Unavailable("the audit log cannot be written; nothing was done".into())
        })?;
    let result = work.await;
    let (outcome, error, output) = match &result {
        Ok(done) => (Outcome::Ok, None, made(done)),
        Err(err) if err.status().is_client_error() => (
            Outcome::Refused,
            Some(format!("{}: {err}", err.code())),
            None,
        ),
        Err(err) => (Outcome::Failed, Some(err.code().to_owned()), None),
    };
    if let Err(err) =
        audit::finish(&state.pool, id, outcome, error.as_deref(), output.as_ref()).await
    {
        // The action happened; its row stays `pending`, which says so.
        tracing::error!(error = %err, %id, what, target, "recording an action's outcome failed");
    }
    result
}

/// Query of the audit list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only this operator's actions.
    pub actor: Option<String>,
    /// Only this action (`queue.pause`, `job.retry`, ...).
    pub action: Option<String>,
    /// Only actions on this target (a kind, a job id, a run id).
    pub target: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// Where the page starts: the previous page's `next_cursor` (the last
    /// entry's id).
    pub cursor: Option<Uuid>,
}

/// A page of the audit log.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// Newest first.
    pub entries: Vec<Entry>,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next_cursor: Option<Uuid>,
}

/// The operators' audit log, newest first; viewers and operators.
#[utoipa::path(get, path = "/api/admin/audit", tag = "admin",
    params(AuditParams),
    responses((status = 200, body = AuditPage),
              (status = 400, description = "Bad limit or cursor", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = ["questboard:viewer"]), ("bearer" = ["questboard:operator"])))]
pub async fn list_audit(
    Viewer(_viewer): Viewer,
    State(state): State<AppState>,
    Query(params): Query<AuditParams>,
) -> Result<Json<AuditPage>> {
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Error::bad_request(
            "invalid_query",
            format!("limit must be 1 to {MAX_PAGE}"),
        ));
    }
    let before = params.cursor;
    let filter = audit::Filter {
        actor: params.actor,
        action: params.action,
        target: params.target,
    };
    // Text Postgres cannot hold names no entry: nothing matches.
    if [&filter.actor, &filter.action, &filter.target]
        .into_iter()
        .flatten()
        .any(|f| f.contains('\0'))
    {
        return Ok(Json(AuditPage {
            entries: Vec::new(),
            next_cursor: None,
        }));
    }
    let entries = audit::list(&state.pool, &filter, before, limit).await?;
    let next_cursor = (entries.len() as i64 == limit)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    Ok(Json(AuditPage {
        entries,
        next_cursor,
    }))
}
