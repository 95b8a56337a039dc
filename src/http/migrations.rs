//! `/api/admin/migrations/assets`: asset migration runs for operators, as
//! `questboard admin migrate-assets` starts them from the command line
//! (`docs/runbooks/asset-migration.md`). Operators only (401 without a
//! valid token, 403 without `questboard:operator`).
//!
//! | route | does |
//! |---|---|
//! | `POST /api/admin/migrations/assets` | records a run and enqueues its job: 202 `{run_id, job_id, status}` |
//! | `GET /api/admin/migrations/assets/{run_id}` | the run: status, options, checkpoint, counts, report (the source URL without its password) |
//! | `POST /api/admin/migrations/assets/{run_id}/rollback` | puts back what an ended run moved: 202; 409 for a run that is running, a dry run, or one rolled back |
//! | `POST /api/admin/migrations/assets/{run_id}/resume` | enqueues an unfinished run's (or rollback's) job again after it failed: it goes on from its checkpoint; 202; 409 for an ended run |
//! | `GET /api/assets/{table}/{asset_id}` | an old asset by its table and id, from wherever it is now: storage once moved, the source row before (and after a rollback); members of its session only |

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use questboard_core::asset_migration::{self as am, SourceTable};
use questboard_core::jobs::Job as _;
use questboard_core::media;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::AppState;
use super::audit::{Action, audited};
use super::error::{Error, ErrorBody, Result};
use super::extract::{AuthUser, Json, Operator, Path, Viewer};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/assets/{table}/{asset_id}", get(serve_old_asset))
        .route("/admin/migrations/assets", post(start_migration))
        .route("/admin/migrations/assets/{run_id}", get(get_migration))
        .route(
            "/admin/migrations/assets/{run_id}/rollback",
            post(roll_back_migration),
        )
        .route(
            "/admin/migrations/assets/{run_id}/resume",
            post(resume_migration),
        )
}

/// One line of a campaign -> session mapping.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CampaignSession {
    /// The old service's campaign id.
    #[schema(min_length = 1, max_length = 200)]
    pub campaign_id: String,
    /// The questboard session its assets go to.
    pub session_id: Uuid,
}

/// A run to start.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartMigration {
    /// The old service's database: `postgres://` or `postgresql://`.
    #[schema(pattern = "^postgres(ql)?://", max_length = 2000)]
    pub source_url: String,
    /// Campaign -> session (or give `session_column`).
    #[serde(default)]
    pub mapping: Vec<CampaignSession>,
    /// A column of the source rows holding their session's id.
    #[schema(pattern = "^[A-Za-z_][A-Za-z0-9_]{0,62}$")]
    pub session_column: Option<String>,
    /// The tables (default `campaign_maps` as maps, `campaign_notes` as
    /// notes, with columns `id`, `campaign_id`, `name`, `content_type`,
    /// `data`).
    pub tables: Option<Vec<SourceTable>>,
    /// Check everything, change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Leave the blobs in the source rows.
    #[serde(default)]
    pub keep_source: bool,
    /// Abort when more than this percentage of the assets so far failed (1).
    #[schema(minimum = 0, maximum = 100)]
    pub max_failure_percent: Option<f64>,
    /// Assets to see before the threshold can abort the run (100), at most
    /// 1,000,000,000.
    #[serde(default, deserialize_with = "super::extract::whole_number")]
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub min_sample: Option<u64>,
    /// Source rows read per page (100).
    #[serde(default, deserialize_with = "super::extract::whole_number")]
    #[schema(minimum = 1, maximum = 10000)]
    pub batch: Option<i64>,
}

/// A run started (or its rollback).
#[derive(Debug, Serialize, ToSchema)]
pub struct MigrationStarted {
    /// The run.
    pub run_id: Uuid,
    /// Its job (`GET /api/admin/jobs/{job_id}` for progress).
    pub job_id: String,
    /// `running` or `rolling_back`.
    pub status: String,
}

/// A run as operators see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MigrationView {
    /// The run.
    pub run_id: Uuid,
    /// `running`, `completed`, `aborted`, `failed`, `rolling_back`, `rolled_back`.
    pub status: String,
    /// The source, its password replaced by `***`.
    pub source: String,
    /// Validate only.
    pub dry_run: bool,
    /// Tables, limits, threshold.
    #[schema(value_type = Object)]
    pub options: Value,
    /// Per table, the last source id of a finished page.
    #[schema(value_type = Object)]
    pub checkpoint: Value,
    /// Assets found to do when it started.
    pub total: Option<i64>,
    /// Counts by outcome so far.
    #[schema(value_type = Object)]
    pub counts: Value,
    /// The report, once it ended.
    #[schema(value_type = Option<Object>)]
    pub report: Option<Value>,
    /// Its latest job.
    pub job_id: Option<String>,
    /// Who started it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

fn started(state: &AppState, started: am::Started) -> (StatusCode, Json<MigrationStarted>) {
    state.wake.announce(am::MigrateAssets::SPEC.kind);
    (
        StatusCode::ACCEPTED,
        Json(MigrationStarted {
            run_id: started.run.id,
            job_id: started.job_id,
            status: started.run.status,
        }),
    )
}

/// Starts an asset migration run; operators only.
#[utoipa::path(post, path = "/api/admin/migrations/assets", tag = "admin",
    request_body = StartMigration,
    responses((status = 202, body = MigrationStarted),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, description = "Bad options, source URL or mapping", body = ErrorBody)),
    security(("bearer" = ["questboard:operator"])))]
pub async fn start_migration(
    Operator(operator): Operator,
    State(state): State<AppState>,
    Json(input): Json<StartMigration>,
) -> Result<(StatusCode, Json<MigrationStarted>)> {
    // Never the source URL (it may carry a password): its shape only.
    let detail = serde_json::json!({
        "dry_run": input.dry_run,
        "campaigns": input.mapping.len(),
        "keep_source": input.keep_source,
    });
    audited(
        &state,
        &operator,
        Action::new("migration.start", "asset_migration").with(detail),
        start(&state, &operator, input),
        made,
    )
    .await
}

fn made((_, Json(run)): &(StatusCode, Json<MigrationStarted>)) -> Option<serde_json::Value> {
    Some(serde_json::json!({ "run_id": run.run_id, "job_id": run.job_id }))
}

async fn start(
    state: &AppState,
    operator: &questboard_core::identity::UserId,
    input: StartMigration,
) -> Result<(StatusCode, Json<MigrationStarted>)> {
    let defaults = am::Options::default();
    let options = am::Options {
        tables: input.tables.unwrap_or(defaults.tables),
        session_column: input.session_column,
        keep_source: input.keep_source,
        max_failure_percent: input
            .max_failure_percent
            .unwrap_or(defaults.max_failure_percent),
        min_sample: input.min_sample.unwrap_or(defaults.min_sample),
        batch: input.batch.unwrap_or(defaults.batch),
    };
    let mut seen = std::collections::HashSet::new();
    let mut mapping = Vec::with_capacity(input.mapping.len());
    for line in input.mapping {
        if !seen.insert(line.campaign_id.clone()) {
            return Err(Error::Unprocessable(format!(
                "campaign {:?} is mapped twice",
                line.campaign_id
            )));
        }
        mapping.push((line.campaign_id, line.session_id));
    }
    let by = format!("api:{}", operator.as_str());
    let run = am::start(
        &state.pool,
        &state.sources,
        &input.source_url,
        &options,
        input.dry_run,
        &mapping,
        &by,
    )
    .await?;
    tracing::info!(run_id = %run.run.id, by, dry_run = input.dry_run, "asset migration started");
    Ok(started(state, run))
}

/// An asset migration run; viewers and operators.
#[utoipa::path(get, path = "/api/admin/migrations/assets/{run_id}", tag = "admin",
    params(("run_id" = Uuid, Path, description = "The run")),
    responses((status = 200, body = MigrationView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["questboard:viewer"]), ("bearer" = ["questboard:operator"])))]
pub async fn get_migration(
    Viewer(_viewer): Viewer,
    State(state): State<AppState>,
    Path(run_id): Path<Uuid>,
) -> Result<Json<MigrationView>> {
    let run = am::get_run(&state.pool, run_id).await?;
    let counts = am::counts(&state.pool, run_id).await?;
    Ok(Json(MigrationView {
        run_id: run.id,
        status: run.status,
        source: am::redacted(&run.source_url),
        dry_run: run.dry_run,
        options: serde_json::to_value(&run.options).unwrap_or_default(),
        checkpoint: run.checkpoint,
        total: run.total,
        counts: serde_json::to_value(&counts).unwrap_or_default(),
        report: run.report,
        job_id: run.job_id,
        created_by: run.created_by,
        created_at: run.created_at,
        finished_at: run.finished_at,
    }))
}

/// Rolls back an ended run: every blob it cleared back into its source
/// row, byte for byte, its objects and media rows deleted; operators only.
#[utoipa::path(post, path = "/api/admin/migrations/assets/{run_id}/rollback", tag = "admin",
    params(("run_id" = Uuid, Path, description = "The run")),
    responses((status = 202, body = MigrationStarted),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "Still running, a dry run, or rolled back already", body = ErrorBody)),
    security(("bearer" = ["questboard:operator"])))]
pub async fn roll_back_migration(
    Operator(operator): Operator,
    State(state): State<AppState>,
    Path(run_id): Path<Uuid>,
) -> Result<(StatusCode, Json<MigrationStarted>)> {
    run_again(&state, &operator, run_id, Again::Rollback).await
}

/// What to start again for an existing run.
#[derive(Clone, Copy)]
enum Again {
    Rollback,
    Resume,
}

/// Starts `again` for run `run_id`, recorded in the audit log: 202 with
/// the run and its job.
async fn run_again(
    state: &AppState,
    operator: &questboard_core::identity::UserId,
    run_id: Uuid,
    again: Again,
) -> Result<(StatusCode, Json<MigrationStarted>)> {
    let target = run_id.to_string();
    let what = match again {
        Again::Rollback => "migration.rollback",
        Again::Resume => "migration.resume",
    };
    audited(
        state,
        operator,
        Action::new(what, &target),
        async {
            let by = format!("api:{}", operator.as_str());
            let run = match again {
                Again::Rollback => am::start_rollback(&state.pool, run_id, &by).await?,
                Again::Resume => am::resume(&state.pool, run_id, &by).await?,
            };
            tracing::info!(%run_id, by, what, "asset migration started again");
            Ok(started(state, run))
        },
        made,
    )
    .await
}

/// Resumes an unfinished run (or rollback) whose job failed for good (the
/// source was down, say): its job is enqueued again and goes on from the
/// run's checkpoint; while its job is still queued or running, that job is
/// returned. Operators only.
#[utoipa::path(post, path = "/api/admin/migrations/assets/{run_id}/resume", tag = "admin",
    params(("run_id" = Uuid, Path, description = "The run")),
    responses((status = 202, body = MigrationStarted),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The run ended: nothing to resume", body = ErrorBody)),
    security(("bearer" = ["questboard:operator"])))]
pub async fn resume_migration(
    Operator(operator): Operator,
    State(state): State<AppState>,
    Path(run_id): Path<Uuid>,
) -> Result<(StatusCode, Json<MigrationStarted>)> {
    run_again(&state, &operator, run_id, Again::Resume).await
}

/// An asset of the old campaign service, by its source table and id (a map
/// `campaign_maps/123`), from wherever it is now: once a migration run has
/// stored and verified it, its media item (served as `/api/media` serves
/// it); before that, or after a rollback, the source row's bytes, read
/// from the newest run's source database. Members of the asset's session
/// only (404 otherwise, as for an asset that does not exist); bytes that
/// are not a type the kind admits, or not what their type says, are never
/// served.
#[utoipa::path(get, path = "/api/assets/{table}/{asset_id}", tag = "media",
    params(("table" = String, Path, description = "The source table (`campaign_maps`, `campaign_notes`, or a run's own)"),
           ("asset_id" = String, Path, description = "The asset's id in that table"),
           ("Range" = Option<String>, Header, description = "One range of bytes (migrated assets)"),
           ("If-None-Match" = Option<String>, Header, description = "An `ETag` seen before (migrated assets)")),
    responses(
        (status = 200, description = "The bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "The range asked for", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 304, description = "Not modified"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, description = "No such asset, or not a member of its session", body = ErrorBody),
        (status = 416, description = "The range is past the end", body = ErrorBody),
        (status = 503, description = "The source database cannot be reached", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn serve_old_asset(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    Path((table, asset_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let not_found = || Error::NotFound("asset");
    let unavailable = |err: am::Error| match err {
        // A source no longer allowed serves nothing: as if not there.
        am::Error::Source(source) if source.is_request() => not_found(),
        am::Error::Source(_) => {
            Error::Unavailable("the old service's database cannot be reached; retry shortly".into())
        }
        other => other.into(),
    };
    if am::quoted(&table).is_err() || asset_id.is_empty() || asset_id.len() > 200 {
        return Err(not_found());
    }
    if let Some(media_id) = am::moved(&state.pool, &table, &asset_id).await? {
        let item = media::find(&state.pool, media_id, None, media::Viewer::Member(&user))
            .await
            .map_err(|_| not_found())?;
        let name = item.file_name().ok_or_else(not_found)?;
        return super::download::send(&state, &item, item.version, &name, &headers).await;
    }
    let run = am::latest_run_for(&state.pool, &table)
        .await?
        .ok_or_else(not_found)?;
    let spec = run
        .options
        .tables
        .iter()
        .find(|t| t.table == table)
        .ok_or_else(not_found)?;
    let (source, source_table) = state
        .asset_sources
        .table(&run.source_url, spec, run.options.session_column.as_deref())
        .await
        .map_err(|err| match err {
            // The table is gone from the source: so is the asset.
            am::Error::Invalid(_) => not_found(),
            other => unavailable(other),
        })?;
    let asset = source
        .asset(&source_table, &asset_id)
        .await
        .map_err(unavailable)?
        .ok_or_else(not_found)?;
    let owner = asset.owner.clone().ok_or_else(not_found)?;
    let target = am::targets(&state.pool, &run, std::slice::from_ref(&owner))
        .await?
        .remove(&owner)
        .ok_or_else(not_found)?;
    // A stranger learns no more than of an asset that does not exist.
    questboard_core::sessions::require_member(&state.pool, target.id, &user)
        .await
        .map_err(|err| match err {
            questboard_core::sessions::Error::Database(err) => Error::database(err),
            _ => not_found(),
        })?;
    // What the migration would refuse is not served either.
    let kind = spec.kind;
    let ext = am::check(
        kind,
        asset.content_type.as_deref(),
        asset.size,
        &state.media,
    )
    .map_err(|_| not_found())?;
    let bytes = source
        .blob(&source_table, &asset_id)
        .await
        .map_err(unavailable)?
        .ok_or_else(not_found)?;
    am::sniff(asset.content_type.as_deref().unwrap_or_default(), &bytes)
        .map_err(|_| not_found())?;
    let stem: String = asset_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok(super::download::send_bytes(
        kind.content_type_of(ext)
            .unwrap_or("application/octet-stream"),
        kind.inline(),
        &format!("{stem}.{ext}"),
        bytes,
    ))
}
