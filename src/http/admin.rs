//! `/api/admin`: what operators see and do with the job platform. The
//! routes that read need the `questboard:viewer` or `questboard:operator`
//! permission, the routes that act need `questboard:operator` (401 without
//! a valid token, 403 without the permission).
//!
//! | route | does |
//! |---|---|
//! | `GET /api/admin/queues` | per kind: queued, running, retrying, failed, cancelled, oldest wait, paused, concurrency |
//! | `GET /api/admin/jobs?kind=&status=&session_id=&unique_key=&from=&to=&q=&limit=&cursor=` | jobs, newest first, keyset paged; `q` is text in the payload or the errors |
//! | `POST /api/admin/jobs/bulk` | retry or cancel many jobs, by id or by filter (`dry_run` counts them first) |
//! | `GET /api/admin/jobs/{id}` | a job with payload, errors, result, progress, lease holder |
//! | `POST /api/admin/jobs` | starts a job of a kind operators may start |
//! | `POST /api/admin/jobs/{id}/retry`, `/cancel` | queue a failed or cancelled job again; cancel a queued or running one |
//! | `POST /api/admin/queues/{kind}/pause`, `/resume` | stop or restart claiming a kind |
//! | `GET /api/admin/schedule` | schedule entries, next fire time, last tick, leader |
//! | `POST /api/admin/schedule/{name}/run` | fires an entry once now (unique-keyed per minute, like a tick) |
//!
//! The same operations, against the database, are `questboard admin ...`.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use questboard_core::jobs::control::{self, Cancellation, ListFilter, QueueStats, Retry};
use questboard_core::jobs::{self, JobRecord, JobStatus};
use questboard_workers::jobs::{Kind, Registry};
use questboard_workers::scheduler::{self, ScheduleView};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::audit::{Action, audited};
use super::error::{Error, ErrorBody, Result};
use super::extract::{Json, Operator, Path, Query, Viewer};
use super::jobs::JobView;

/// Default page of the job list.
pub const DEFAULT_PAGE: i64 = 50;
/// Largest page of the job list.
pub const MAX_PAGE: i64 = 500;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/queues", get(list_queues))
        .route("/admin/queues/{kind}/pause", post(pause_kind))
        .route("/admin/queues/{kind}/resume", post(resume_kind))
        .route("/admin/jobs", get(list_jobs).post(start_job))
        .route("/admin/jobs/bulk", post(bulk_jobs))
        .route("/admin/jobs/{job_id}", get(get_job))
        .route("/admin/jobs/{job_id}/retry", post(retry_job))
        .route("/admin/jobs/{job_id}/cancel", post(cancel_job))
        .route("/admin/schedule", get(get_schedule))
        .route("/admin/schedule/{name}/run", post(run_entry))
}

/// One kind's queue.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueView {
    /// The counts.
    #[serde(flatten)]
    pub stats: QueueStats,
    /// Runs one worker process runs at once by default
    /// (`QB_JOBS_CONCURRENCY` overrides it per worker).
    pub concurrency: usize,
    /// Whether operators may start jobs of the kind.
    pub operator_may_start: bool,
    /// For kinds operators may start: the JSON Schema of the payload (the
    /// console builds its start form from it).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub payload_schema: Option<Value>,
}

/// Every kind's queue.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueuesPage {
    /// One per registered kind.
    pub queues: Vec<QueueView>,
}

/// Per-kind queue statistics; viewers and operators.
#[utoipa::path(get, path = "/api/admin/queues", tag = "admin",
    responses((status = 200, body = QueuesPage), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody)),
    security(("bearer" = ["questboard:viewer"]), ("bearer" = ["questboard:operator"])))]
pub async fn list_queues(
    Viewer(_viewer): Viewer,
    State(state): State<AppState>,
) -> Result<Json<QueuesPage>> {
    let specs = state.registry.specs();
    let stats = control::queue_stats(&state.pool, &specs).await?;
    Ok(Json(queues_page(&state.registry, stats)))
}

/// The queues page of the registry's kinds and their `stats` (in the
/// registry's order).
pub(super) fn queues_page(registry: &Registry, stats: Vec<QueueStats>) -> QueuesPage {
    QueuesPage {
        queues: registry
            .kinds()
            .iter()
            .zip(stats)
            .map(|(kind, stats)| QueueView {
                stats,
                concurrency: kind.spec.concurrency,
                operator_may_start: kind.spec.operator_may_start,
                payload_schema: kind
                    .spec
                    .operator_may_start
                    .then(|| serde_json::to_value(kind.payload_schema()).unwrap_or_default()),
            })
            .collect(),
    }
}

/// A kind's state after pausing or resuming it.
#[derive(Debug, Serialize, ToSchema)]
pub struct KindState {
    /// The kind.
    pub kind: String,
    /// Whether workers skip it.
    pub paused: bool,
}

fn known_kind<'a>(registry: &'a Registry, kind: &str) -> Result<&'a Kind> {
    registry.get(kind).ok_or(Error::NotFound("job kind"))
}

/// Pauses a kind: no worker claims its jobs until it is resumed; runs
/// going on finish. Operators only.
#[utoipa::path(post, path = "/api/admin/queues/{kind}/pause", tag = "admin",
    params(("kind" = String, Path, description = "Job kind")),
    responses((status = 200, body = KindState), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["questboard:operator"])))]
pub async fn pause_kind(
    Operator(user): Operator,
    State(state): State<AppState>,
    Path(kind): Path<String>,
) -> Result<Json<KindState>> {
    set_paused(&state, &user, &kind, true).await
}

/// Resumes a paused kind. Operators only.
#[utoipa::path(post, path = "/api/admin/queues/{kind}/resume", tag = "admin",
    params(("kind" = String, Path, description = "Job kind")),
    responses((status = 200, body = KindState), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["questboard:operator"])))]
pub async fn resume_kind(
    Operator(user): Operator,
    State(state): State<AppState>,
    Path(kind): Path<String>,
) -> Result<Json<KindState>> {
    set_paused(&state, &user, &kind, false).await
}

async fn set_paused(
    state: &AppState,
    user: &questboard_core::identity::UserId,
    kind: &str,
    paused: bool,
) -> Result<Json<KindState>> {
    let what = if paused {
        "queue.pause"
    } else {
        "queue.resume"
    };
    audited(
        state,
        user,
        Action::new(what, kind),
        async {
            let kind = known_kind(&state.registry, kind)?.spec.kind;
            control::set_paused(&state.pool, kind, paused, user.as_str()).await?;
            if !paused {
                state.wake.announce(kind);
            }
            tracing::info!(kind, paused, by = %user, "job kind paused or resumed");
            Ok(Json(KindState {
                kind: kind.to_owned(),
                paused,
            }))
        },
        |_| None,
    )
    .await
}

/// A job as operators see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobDetail {
    /// What members see.
    #[serde(flatten)]
    pub job: JobView,
    /// Its stored payload (`{"version", "payload"}`), on the detail route.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub payload: Option<Value>,
    /// The errors of its last failed runs (ten), oldest first: `[{attempt, at, error,
    /// worker, started_at}]` (the worker that ran the attempt and when it began).
    #[schema(value_type = Vec<Object>)]
    pub errors: Value,
    /// Its unique key, if it was enqueued with one.
    pub unique_key: Option<String>,
    /// Its priority.
    pub priority: Option<i32>,
    /// The worker holding its job lease while it runs.
    pub lease_holder: Option<String>,
    /// When that lease lapses unless renewed.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// When an operator asked it to stop, while it still runs.
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// Who or what asked for it (a schedule tick, an operator).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

impl JobDetail {
    fn of(record: JobRecord, registry: &Registry, payload: Option<Value>) -> Self {
        Self {
            job: JobView::of(&record, registry),
            payload,
            errors: record.errors.unwrap_or_else(|| Value::Array(Vec::new())),
            unique_key: record.unique_key,
            priority: record.priority,
            lease_holder: record.lease_holder,
            lease_expires_at: record.lease_expires_at,
            cancel_requested_at: record.cancel_requested_at,
            metadata: record.metadata,
        }
    }
}

/// Which jobs: the filter of the job list and of bulk actions.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobFilter {
    /// Only this kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Only this status: queued, running, succeeded, failed, retrying, cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Only this session's jobs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<Uuid>,
    /// Only jobs holding (or, failed or cancelled, having held) this unique key.
    #[schema(min_length = 1, max_length = 255)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unique_key: Option<String>,
    /// Only jobs created at or after this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<DateTime<Utc>>,
    /// Only jobs created before this time (a `to` before `from` matches nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<DateTime<Utc>>,
    /// Only jobs whose payload contains this text (exact case), or whose
    /// errors contain it (any case).
    #[schema(min_length = 1, max_length = 200)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
}

/// Longest `q`, in characters.
pub const MAX_TEXT_CHARS: usize = 200;

impl JobFilter {
    /// The core filter (None: nothing can match, e.g. a NUL in a text, which
    /// no stored text holds), or a 400 naming what is wrong.
    fn resolve(&self, registry: &Registry) -> Result<Option<ListFilter>> {
        let bad = |message: String| Error::bad_request("invalid_query", message);
        let queue = match &self.kind {
            Some(kind) => Some(
                registry
                    .get(kind)
                    .ok_or_else(|| bad("kind is not a known job kind".into()))?
                    .spec
                    .queue
                    .to_owned(),
            ),
            None => None,
        };
        let status = match &self.status {
            Some(status) => Some(JobStatus::parse(status).ok_or_else(|| {
                bad(
                    "status must be one of queued, running, succeeded, failed, retrying, cancelled"
                        .into(),
                )
            })?),
            None => None,
        };
        if let Some(key) = &self.unique_key
            && (key.is_empty() || key.chars().count() > jobs::MAX_UNIQUE_KEY_BYTES)
        {
            return Err(bad(format!(
                "unique_key must be 1 to {} characters",
                jobs::MAX_UNIQUE_KEY_BYTES
            )));
        }
        if let Some(q) = &self.q
            && (q.is_empty() || q.chars().count() > MAX_TEXT_CHARS)
        {
            return Err(bad(format!("q must be 1 to {MAX_TEXT_CHARS} characters")));
        }
        let nul = |t: &Option<String>| t.as_deref().is_some_and(|t| t.contains('\0'));
        if nul(&self.unique_key) || nul(&self.q) {
            return Ok(None);
        }
        Ok(Some(ListFilter {
            queue,
            status,
            session: self.session_id,
            unique_key: self.unique_key.clone(),
            from: self.from,
            to: self.to,
            text: self.q.clone(),
            ..ListFilter::default()
        }))
    }
}

/// Query of the job list: the fields of [`JobFilter`], and the page.
/// (Flat, not `#[serde(flatten)]`: query strings carry only text, and a
/// flattened number would not parse.)
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobParams {
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this status: queued, running, succeeded, failed, retrying, cancelled.
    pub status: Option<String>,
    /// Only this session's jobs.
    pub session_id: Option<Uuid>,
    /// Only jobs holding (or, failed or cancelled, having held) this unique key.
    #[param(min_length = 1, max_length = 255)]
    pub unique_key: Option<String>,
    /// Only jobs created at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Only jobs created before this time.
    pub to: Option<DateTime<Utc>>,
    /// Only jobs whose payload contains this text (exact case), or whose
    /// errors contain it (any case).
    #[param(min_length = 1, max_length = 200)]
    pub q: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// Where the page starts: the previous page's `next_cursor`.
    #[param(pattern = "^[0-9A-Za-z]{26}$")]
    pub cursor: Option<String>,
}

impl JobParams {
    fn filter(&self) -> JobFilter {
        JobFilter {
            kind: self.kind.clone(),
            status: self.status.clone(),
            session_id: self.session_id,
            unique_key: self.unique_key.clone(),
            from: self.from,
            to: self.to,
            q: self.q.clone(),
        }
    }
}

/// A page of jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    /// Newest first.
    pub jobs: Vec<JobDetail>,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next_cursor: Option<String>,
}

/// Lists jobs, newest first, keyset paged; viewers and operators.
#[utoipa::path(get, path = "/api/admin/jobs", tag = "admin",
    params(JobParams),
    responses((status = 200, body = JobPage), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = ["questboard:viewer"]), ("bearer" = ["questboard:operator"])))]
pub async fn list_jobs(
    Viewer(_viewer): Viewer,
    State(state): State<AppState>,
    Query(params): Query<JobParams>,
) -> Result<Json<JobPage>> {
    let bad = |message: String| Error::bad_request("invalid_query", message);
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(bad(format!("limit must be between 1 and {MAX_PAGE}")));
    }
    if let Some(cursor) = &params.cursor
        && !jobs::is_job_id(cursor)
    {
        return Err(bad("cursor is not valid".into()));
    }
    let Some(filter) = params.filter().resolve(&state.registry)? else {
        return Ok(Json(JobPage {
            jobs: Vec::new(),
            next_cursor: None,
        }));
    };
    let (records, next) = control::list(
        &state.pool,
        &ListFilter {
            before: params.cursor.clone(),
            limit,
            ..filter
        },
    )
    .await?;
    Ok(Json(JobPage {
        jobs: records
            .into_iter()
            .map(|r| JobDetail::of(r, &state.registry, None))
            .collect(),
        next_cursor: next,
    }))
}

/// Most jobs one bulk action touches; the answer says when more matched.
pub const BULK_MAX: i64 = 10_000;
/// Most ids a bulk action may name.
pub const BULK_MAX_IDS: usize = 500;

/// What a bulk action does.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BulkAction {
    /// Queue failed or cancelled jobs again.
    Retry,
    /// Cancel waiting jobs, ask running ones to stop.
    Cancel,
}

/// Body of `POST /api/admin/jobs/bulk`: the action and either the jobs by
/// id or a filter (every matching job, up to 10,000 per call).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    /// Retry or cancel.
    pub action: BulkAction,
    /// These jobs (1 to 500 ids), or:
    #[schema(max_items = 500, min_items = 1)]
    pub job_ids: Option<Vec<String>>,
    /// Every job matching this filter.
    pub filter: Option<JobFilter>,
    /// Only count what would be acted on (the console shows the count and
    /// asks for a confirmation before the real call).
    #[serde(default)]
    pub dry_run: bool,
}

/// A job a bulk action left alone.
#[derive(Debug, Serialize, ToSchema)]
pub struct BulkSkip {
    /// The job.
    pub job_id: String,
    /// Why (a turn, already finished, not failed, its key is taken, ...).
    pub reason: String,
}

/// What a bulk action did (or, dry, would act on).
#[derive(Debug, Serialize, ToSchema)]
pub struct BulkOutcome {
    /// The action.
    pub action: BulkAction,
    /// Jobs selected (by id: the ids that exist; by filter: the matches, at most 10,000).
    pub matched: i64,
    /// Jobs retried or cancelled (0 in a dry run).
    pub done: i64,
    /// Jobs left alone, and why (the first 50).
    pub skipped: Vec<BulkSkip>,
    /// How many were left alone in all.
    pub skipped_count: i64,
    /// More than 10,000 matched: call again for the rest.
    pub more: bool,
    /// It was a dry run.
    pub dry_run: bool,
}

/// Retries or cancels many jobs at once, by id or by filter; operators
/// only, recorded in the audit log as one action. Turn jobs are never
/// touched (they follow their session's order) and are reported as
/// skipped, as are jobs the action does not apply to.
#[utoipa::path(post, path = "/api/admin/jobs/bulk", tag = "admin",
    request_body = BulkRequest,
    responses((status = 200, body = BulkOutcome), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 413, body = ErrorBody),
              (status = 415, description = "The body is not `application/json`", body = ErrorBody),
              (status = 422, body = ErrorBody)),
    security(("bearer" = ["questboard:operator"])))]
pub async fn bulk_jobs(
    Operator(user): Operator,
    State(state): State<AppState>,
    Json(body): Json<BulkRequest>,
) -> Result<Json<BulkOutcome>> {
    let what = match body.action {
        BulkAction::Retry => "jobs.bulk_retry",
        BulkAction::Cancel => "jobs.bulk_cancel",
    };
    // The ids as sent (at most the first 500 are kept: the log records
    // what was asked, not an unbounded body).
    let detail = serde_json::json!({
        "job_ids": body.job_ids.as_ref().map(|ids| ids.iter().take(BULK_MAX_IDS).collect::<Vec<_>>()),
        "job_id_count": body.job_ids.as_ref().map(Vec::len),
        "filter": body.filter,
    });
    let target = if body.job_ids.is_some() {
        "ids"
    } else {
        "filter"
    };
    if body.dry_run {
        return bulk(&state, &user, body).await.map(Json);
    }
    audited(
        &state,
        &user,
        Action::new(what, target).with(detail),
        bulk(&state, &user, body),
        |done: &BulkOutcome| {
            Some(serde_json::json!({
                "matched": done.matched, "done": done.done,
                "skipped": done.skipped_count, "more": done.more
            }))
        },
    )
    .await
    .map(Json)
}

async fn bulk(
    state: &AppState,
    user: &questboard_core::identity::UserId,
    body: BulkRequest,
) -> Result<BulkOutcome> {
    let selected: Vec<(String, String)> = match (&body.job_ids, &body.filter) {
        (Some(ids), None) => {
            if ids.is_empty() || ids.len() > BULK_MAX_IDS {
                return Err(Error::Unprocessable(format!(
                    "job_ids must name 1 to {BULK_MAX_IDS} jobs"
                )));
            }
            let ids: Vec<String> = ids
                .iter()
                .filter(|id| jobs::is_job_id(id))
                .cloned()
                .collect();
            sqlx::query_as(
                "SELECT id, job_type FROM apalis.jobs WHERE id = ANY($1) ORDER BY id DESC",
            )
            .bind(&ids)
            .fetch_all(&state.pool)
            .await?
        }
        (None, Some(filter)) => match filter.resolve(&state.registry)? {
            Some(filter) => control::matching(&state.pool, &filter, BULK_MAX + 1).await?,
            None => Vec::new(),
        },
        _ => {
            return Err(Error::Unprocessable(
                "give either job_ids or filter, not both".into(),
            ));
        }
    };
    let more = selected.len() as i64 > BULK_MAX;
    let selected = &selected[..selected.len().min(BULK_MAX as usize)];
    let mut outcome = BulkOutcome {
        action: body.action,
        matched: selected.len() as i64,
        done: 0,
        skipped: Vec::new(),
        skipped_count: 0,
        more,
        dry_run: body.dry_run,
    };
    let skip = |outcome: &mut BulkOutcome, id: &str, reason: String| {
        outcome.skipped_count += 1;
        if outcome.skipped.len() < 50 {
            outcome.skipped.push(BulkSkip {
                job_id: id.to_owned(),
                reason,
            });
        }
    };
    let mut woken = std::collections::HashSet::new();
    for (id, queue) in selected {
        let Some(kind) = state.registry.by_queue(queue) else {
            skip(&mut outcome, id, "not a kind this build knows".into());
            continue;
        };
        if kind.spec.session_serial {
            skip(
                &mut outcome,
                id,
                "a turn: turns follow their session's order".into(),
            );
            continue;
        }
        if body.dry_run {
            continue;
        }
        match body.action {
            BulkAction::Retry => match control::retry(&state.pool, id).await? {
                Some(Retry::Queued) => {
                    outcome.done += 1;
                    woken.insert(kind.spec.kind);
                }
                Some(Retry::NotRetryable(status)) => {
                    skip(&mut outcome, id, format!("it is {}", status.as_str()))
                }
                Some(Retry::KeyTaken(holder)) => skip(
                    &mut outcome,
                    id,
                    format!("its unique key is held by job {holder}"),
                ),
                None => skip(&mut outcome, id, "it is gone".into()),
            },
            BulkAction::Cancel => match control::cancel(&state.pool, id, user.as_str()).await? {
                Some(Cancellation::Cancelled) => outcome.done += 1,
                Some(Cancellation::Requested) => {
                    state.wake.cancel(id);
                    outcome.done += 1;
                }
                Some(Cancellation::AlreadyFinished(status)) => skip(
                    &mut outcome,
                    id,
                    format!("it already ended: {}", status.as_str()),
                ),
                None => skip(&mut outcome, id, "it is gone".into()),
            },
        }
    }
    for kind in woken {
        state.wake.announce(kind);
    }
    if !body.dry_run {
        tracing::info!(action = ?body.action, done = outcome.done, skipped = outcome.skipped_count,
            by = %user, "bulk job action by an operator");
    }
    Ok(outcome)
}

async fn detail(state: &AppState, job_id: &str) -> Result<JobDetail> {
    if !jobs::is_job_id(job_id) {
        return Err(Error::NotFound("job"));
    }
    let record = jobs::fetch(&state.pool, job_id)
        .await?
        .ok_or(Error::NotFound("job"))?;
    let payload = jobs::payload(&state.pool, job_id).await?;
    Ok(JobDetail::of(record, &state.registry, payload))
}

/// A job in full; viewers and operators.
#[utoipa::path(get, path = "/api/admin/jobs/{job_id}", tag = "admin", operation_id = "get_admin_job",
    params(("job_id" = String, Path, description = "Job id")),
    responses((status = 200, body = JobDetail), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["questboard:viewer"]), ("bearer" = ["questboard:operator"])))]
pub async fn get_job(
    Viewer(_viewer): Viewer,
    State(state): State<AppState>,
    Path(job_id): Path<String>,
) -> Result<Json<JobDetail>> {
    Ok(Json(detail(&state, &job_id).await?))
}

/// Refuses hand operations on turn jobs: a turn's place in its session's
/// strict order is what it is; it is retried and failed by the pipeline.
fn not_a_turn(state: &AppState, record: &JobRecord) -> Result<()> {
    match state.registry.by_queue(&record.job_type) {
        Some(kind) if kind.spec.session_serial => Err(Error::Conflict(
            "turn jobs follow their session's order; they are not retried or cancelled by hand"
                .into(),
        )),
        _ => Ok(()),
    }
}

/// Queues a failed or cancelled job again with its attempts reset;
/// operators only.
#[utoipa::path(post, path = "/api/admin/jobs/{job_id}/retry", tag = "admin",
    params(("job_id" = String, Path, description = "Job id")),
    responses((status = 200, body = JobDetail), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "Not failed or cancelled, a turn, or its unique key is held by a newer job", body = ErrorBody)),
    security(("bearer" = ["questboard:operator"])))]
pub async fn retry_job(
    Operator(user): Operator,
    State(state): State<AppState>,
    Path(job_id): Path<String>,
) -> Result<Json<JobDetail>> {
    audited(
        &state,
        &user,
        Action::new("job.retry", &job_id),
        retry(&state, &user, &job_id),
        |_| None,
    )
    .await
}

async fn retry(
    state: &AppState,
    user: &questboard_core::identity::UserId,
    job_id: &str,
) -> Result<Json<JobDetail>> {
    let current = detail(state, job_id).await?;
    if let Some(record) = jobs::fetch(&state.pool, job_id).await? {
        not_a_turn(state, &record)?;
    }
    match control::retry(&state.pool, job_id).await? {
        None => return Err(Error::NotFound("job")),
        Some(Retry::Queued) => {}
        Some(Retry::NotRetryable(status)) => {
            return Err(Error::Conflict(format!(
                "only failed or cancelled jobs can be retried; this one is {}",
                status.as_str()
            )));
        }
        Some(Retry::KeyTaken(holder)) => {
            return Err(Error::Conflict(format!(
                "its unique key is held by job {holder}; retrying would run the work twice"
            )));
        }
    }
    if let Some(kind) = state.registry.get(&current.job.kind) {
        state.wake.announce(kind.spec.kind);
    }
    tracing::info!(job_id, by = %user, "job retried by an operator");
    Ok(Json(detail(state, job_id).await?))
}

/// What a cancellation did.
#[derive(Debug, Serialize, ToSchema)]
pub struct CancelOutcome {
    /// The job.
    pub job_id: String,
    /// `cancelled` (it was waiting) or `cancel_requested` (it is running:
    /// it stops at its next safe point and ends cancelled).
    pub outcome: String,
}

/// Cancels a job: a waiting one at once, a running one at its next safe
/// point; operators only.
#[utoipa::path(post, path = "/api/admin/jobs/{job_id}/cancel", tag = "admin",
    params(("job_id" = String, Path, description = "Job id")),
    responses((status = 200, body = CancelOutcome), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "Already finished, or a turn", body = ErrorBody)),
    security(("bearer" = ["questboard:operator"])))]
pub async fn cancel_job(
    Operator(user): Operator,
    State(state): State<AppState>,
    Path(job_id): Path<String>,
) -> Result<Json<CancelOutcome>> {
    audited(
        &state,
        &user,
        Action::new("job.cancel", &job_id),
        cancel(&state, &user, job_id.clone()),
        |done| Some(serde_json::json!({ "outcome": done.0.outcome })),
    )
    .await
}

async fn cancel(
    state: &AppState,
    user: &questboard_core::identity::UserId,
    job_id: String,
) -> Result<Json<CancelOutcome>> {
    if !jobs::is_job_id(&job_id) {
        return Err(Error::NotFound("job"));
    }
    let record = jobs::fetch(&state.pool, &job_id)
        .await?
        .ok_or(Error::NotFound("job"))?;
    not_a_turn(state, &record)?;
    let outcome = match control::cancel(&state.pool, &job_id, user.as_str()).await? {
        None => return Err(Error::NotFound("job")),
        Some(Cancellation::Cancelled) => "cancelled",
        Some(Cancellation::Requested) => {
            state.wake.cancel(&job_id);
            "cancel_requested"
        }
        Some(Cancellation::AlreadyFinished(status)) => {
            return Err(Error::Conflict(format!(
                "the job already ended: {}",
                status.as_str()
            )));
        }
    };
    tracing::info!(job_id, by = %user, outcome, "job cancelled by an operator");
    Ok(Json(CancelOutcome {
        job_id,
        outcome: outcome.into(),
    }))
}

/// Body of `POST /api/admin/jobs`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartJob {
    /// A kind operators may start (`prune`, `reconcile`, ...; never `turn`).
    pub kind: String,
    /// The kind's payload (default `{}`).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub payload: Value,
    /// Not before this time.
    pub run_at: Option<DateTime<Utc>>,
    /// While a job of the kind holds this key, starting it again returns that job.
    pub unique_key: Option<String>,
}

/// What starting a job did.
#[derive(Debug, Serialize, ToSchema)]
pub struct StartedJob {
    /// The job (new, or the one holding the unique key).
    pub job_id: String,
    /// False: a job with the same unique key existed and is returned.
    pub created: bool,
}

/// Starts a job of a kind operators may start; operators only.
#[utoipa::path(post, path = "/api/admin/jobs", tag = "admin",
    request_body = StartJob,
    responses((status = 201, description = "Enqueued", body = StartedJob),
              (status = 200, description = "A job with this unique key exists", body = StartedJob),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, description = "The body is not `application/json`", body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = ["questboard:operator"])))]
pub async fn start_job(
    Operator(user): Operator,
    State(state): State<AppState>,
    Json(body): Json<StartJob>,
) -> Result<Response> {
    let target = body.kind.clone();
    let detail = serde_json::json!({
        "payload": body.payload,
        "run_at": body.run_at,
        "unique_key": body.unique_key,
    });
    started_answer(
        &state,
        &user,
        Action::new("job.start", &target).with(detail),
        start(&state, &user, body),
    )
    .await
}

/// Runs `work`, an operator's start of a job, audited; 201 with the new
/// job, or 200 with the one holding its unique key.
async fn started_answer(
    state: &AppState,
    user: &questboard_core::identity::UserId,
    action: Action<'_>,
    work: impl Future<Output = Result<StartedJob>>,
) -> Result<Response> {
    let started = audited(state, user, action, work, |started| {
        Some(serde_json::json!({ "job_id": started.job_id, "created": started.created }))
    })
    .await?;
    let status = if started.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(started)).into_response())
}

/// Enqueues an operator's job; counts it and wakes the workers of its kind
/// when it is new.
async fn enqueue_started(
    state: &AppState,
    spec: &questboard_core::jobs::JobSpec,
    stored: Vec<u8>,
    session: Option<Uuid>,
    options: &jobs::Options,
) -> Result<StartedJob> {
    let mut conn = state.pool.acquire().await?;
    let enqueued = jobs::enqueue_stored(&mut conn, spec, stored, session, options).await?;
    if enqueued.created {
        metrics::counter!(questboard_core::metrics::JOBS_ENQUEUED_TOTAL, "kind" => spec.kind)
            .increment(1);
        state.wake.announce(spec.kind);
    }
    Ok(StartedJob {
        job_id: enqueued.id,
        created: enqueued.created,
    })
}

async fn start(
    state: &AppState,
    user: &questboard_core::identity::UserId,
    body: StartJob,
) -> Result<StartedJob> {
    let kind = state
        .registry
        .get(&body.kind)
        .ok_or_else(|| Error::Unprocessable(format!("unknown job kind {:?}", body.kind)))?;
    if !kind.spec.operator_may_start {
        return Err(Error::Unprocessable(format!(
            "jobs of kind {} cannot be started by operators",
            kind.spec.kind
        )));
    }
    let payload = if body.payload.is_null() {
        Value::Object(Default::default())
    } else {
        body.payload
    };
    let (stored, session) = kind
        .validate(payload)
        .map_err(|e| Error::Unprocessable(e.to_string()))?;
    let started = enqueue_started(
        state,
        &kind.spec,
        stored,
        session,
        &jobs::Options {
            run_at: body.run_at,
            unique_key: body.unique_key,
            metadata: vec![("enqueued_by".into(), user.as_str().to_owned())],
            ..jobs::Options::default()
        },
    )
    .await?;
    if started.created {
        tracing::info!(job_id = %started.job_id, kind = kind.spec.kind, by = %user, "job started by an operator");
    }
    Ok(started)
}

/// The schedule: entries, next fire times, last ticks and the leader;
/// viewers and operators.
#[utoipa::path(get, path = "/api/admin/schedule", tag = "admin",
    responses((status = 200, body = ScheduleView), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody)),
    security(("bearer" = ["questboard:viewer"]), ("bearer" = ["questboard:operator"])))]
pub async fn get_schedule(
    Viewer(_viewer): Viewer,
    State(state): State<AppState>,
) -> Result<Json<ScheduleView>> {
    Ok(Json(
        scheduler::describe(&state.pool, &state.schedule).await?,
    ))
}

/// Fires a schedule entry once, now: its job with its payload, as a tick
/// would enqueue it, under the unique key `<name>@run:<minute>` (UTC), so
/// a double click makes one job (the second answer is that job, 200),
/// while a run a minute later makes another. Disabled entries run too (an
/// operator asked). Operators only; recorded in the audit log.
#[utoipa::path(post, path = "/api/admin/schedule/{name}/run", tag = "admin",
    params(("name" = String, Path, description = "The entry's name")),
    responses((status = 201, description = "Enqueued", body = StartedJob),
              (status = 200, description = "Run already this minute: that job", body = StartedJob),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, description = "No such entry", body = ErrorBody)),
    security(("bearer" = ["questboard:operator"])))]
pub async fn run_entry(
    Operator(user): Operator,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response> {
    started_answer(
        &state,
        &user,
        Action::new("schedule.run", &name),
        run_now(&state, &user, &name),
    )
    .await
}

async fn run_now(
    state: &AppState,
    user: &questboard_core::identity::UserId,
    name: &str,
) -> Result<StartedJob> {
    let entry = state
        .schedule
        .iter()
        .find(|e| e.name == name)
        .ok_or(Error::NotFound("schedule entry"))?;
    let (stored, session) = entry.job();
    let minute = Utc::now().format("%Y-%m-%dT%H:%MZ");
    let started = enqueue_started(
        state,
        &entry.spec,
        stored,
        session,
        &jobs::Options {
            unique_key: Some(format!("{}@run:{minute}", entry.name)),
            metadata: vec![
                ("enqueued_by".into(), user.as_str().to_owned()),
                ("schedule_entry".into(), entry.name.clone()),
                ("run_now".into(), "true".into()),
            ],
            ..jobs::Options::default()
        },
    )
    .await?;
    if started.created {
        tracing::info!(job_id = %started.job_id, entry = %entry.name, by = %user, "schedule entry run now by an operator");
    }
    Ok(started)
}
