//! The old app's folder layout: operators import it, players' old links
//! keep working (`docs/runbooks/legacy-import.md`).
//!
//! | route | does |
//! |---|---|
//! | `GET /api/legacy/{env}/{folder}/{path...}` | the file an old link names, from the session its folder became; members only (404 otherwise), every use logged and counted (`questboard_legacy_shim_requests_total{env}`) |
//! | `POST /api/admin/imports/legacy` | records an import run and enqueues its job: 202 `{run_id, job_id, status}`; operators only |
//! | `GET /api/admin/imports/legacy/{run_id}` | the run: status, options, folders imported and problems so far, report; operators only |

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use questboard_core::jobs::Job as _;
use questboard_core::legacy_import as li;
use questboard_core::media;
use questboard_core::metrics as m;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::AppState;
use super::audit::{Action, audited};
use super::download::{Object, send, send_object};
use super::error::{Error, ErrorBody, Result};
use super::extract::{AuthUser, Json, Operator, Path, Viewer};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/legacy/{env}/{folder}/{*path}", get(serve_legacy_path))
        .route("/admin/imports/legacy", post(start_import))
        .route("/admin/imports/legacy/{run_id}", get(get_import))
}

/// The file an old link (`campaigns/<env>/<folder>/<path>` in the old
/// app) names, served from the session its folder was imported as;
/// members of that session only (404 otherwise, as for a path that was
/// never imported). Images and audio are served as their media items;
/// other files as attachments. Every use is logged and counted, so
/// operators can tell when the old paths can go.
#[utoipa::path(get, path = "/api/legacy/{env}/{folder}/{path}", tag = "media",
    params(("env" = String, Path, description = "The old app's environment folder (`prod`, ...)"),
           ("folder" = String, Path, description = "The campaign folder, `campaign_<n> - <Name>`"),
           ("path" = String, Path, description = "The file's path in the folder (may hold `/`)"),
           ("Range" = Option<String>, Header, description = "One range of bytes"),
           ("If-None-Match" = Option<String>, Header, description = "An `ETag` seen before")),
    responses(
        (status = 200, description = "The bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "The range asked for", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 304, description = "Not modified"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, description = "Not imported, or not a member", body = ErrorBody),
        (status = 416, description = "The range is past the end", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn serve_legacy_path(
    AuthUser(user): AuthUser,
    State(state): State<AppState>,
    Path((env, folder, path)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let not_found = || Error::NotFound("file");
    let (known, file) = li::resolve(&state.pool, &env, &folder, &path, &user).await?;
    // Only envs of imported folders become label values: a client cannot
    // make up new series.
    let label = if known { env.clone() } else { "unknown".into() };
    let outcome = if file.is_some() {
        "served"
    } else {
        "not_found"
    };
    metrics::counter!(m::LEGACY_SHIM_REQUESTS_TOTAL, "env" => label, "outcome" => outcome)
        .increment(1);
    {
        use crate::telemetry::clipped;
        tracing::info!(user = %user, env = %clipped(&env), folder = %clipped(&folder),
            path = %clipped(&path), outcome,
            session_id = ?file.as_ref().map(|f| f.session_id), "legacy path used");
    }
    let file = file.ok_or_else(not_found)?;
    if let Some(media_id) = file.media_id {
        let item = media::find(
            &state.pool,
            media_id,
            Some(file.session_id),
            media::Viewer::Member(&user),
        )
        .await
        .map_err(|_| not_found())?;
        let name = item.file_name().ok_or_else(not_found)?;
        return send(&state, &item, item.version, &name, &headers).await;
    }
    let (Some(sha), Some(size)) = (&file.sha256, file.byte_size) else {
        return Err(not_found());
    };
    let file_name = file.name.rsplit('/').next().unwrap_or(&file.name);
    send_object(
        &state,
        &Object {
            key: &file.storage_key,
            sha256: sha,
            size: size.max(0) as u64,
            content_type: &file.content_type,
            inline: false,
            file_name,
            kind: None,
        },
        &headers,
    )
    .await
}

/// An import run to start.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartImport {
    /// The legacy tree's root, which holds `campaigns/`: `file:///<path>`,
    /// `s3://<bucket>/<prefix>` or `gs://<bucket>/<prefix>` (credentials
    /// from the workers' environment).
    #[schema(max_length = 2000, pattern = "^(file:///|s3://|gs://)")]
    pub source_url: String,
    /// `"<env>/<folder>"` -> the owner's user id, or `{owner, members,
    /// gms, skip}`.
    #[schema(value_type = Object)]
    pub mapping: BTreeMap<String, Value>,
    /// Read and check everything, change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Largest file copied (25,000,000); larger ones are reported.
    #[schema(minimum = 1, maximum = 1073741824)]
    pub max_file_bytes: Option<u64>,
}

/// An import run started.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportStarted {
    /// The run.
    pub run_id: Uuid,
    /// Its job (`GET /api/admin/jobs/{job_id}` for progress).
    pub job_id: String,
    /// `running`.
    pub status: String,
}

/// An import run as operators see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportView {
    /// The run.
    pub run_id: Uuid,
    /// `running`, `completed` or `failed`.
    pub status: String,
    /// The tree's root.
    pub source: String,
    /// Check only.
    pub dry_run: bool,
    /// Folders the mapping names.
    pub mapped_folders: usize,
    /// Largest file copied.
    pub max_file_bytes: u64,
    /// Folders this run imported so far.
    pub imported: i64,
    /// Problems so far, by kind.
    #[schema(value_type = Object)]
    pub problem_counts: Value,
    /// The report, once it ended.
    #[schema(value_type = Option<Object>)]
    pub report: Option<Value>,
    /// Its job.
    pub job_id: Option<String>,
    /// Who started it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

/// Starts a legacy layout import; operators only.
#[utoipa::path(post, path = "/api/admin/imports/legacy", tag = "admin",
    request_body = StartImport,
    responses((status = 202, body = ImportStarted),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, description = "Bad source URL, mapping or limit", body = ErrorBody)),
    security(("bearer" = ["questboard:operator"])))]
pub async fn start_import(
    Operator(operator): Operator,
    State(state): State<AppState>,
    Json(input): Json<StartImport>,
) -> Result<(StatusCode, Json<ImportStarted>)> {
    // Never the source URL (it may carry credentials): its shape only.
    let detail = serde_json::json!({
        "dry_run": input.dry_run,
        "folders": input.mapping.len(),
    });
    audited(
        &state,
        &operator,
        Action::new("import.start", "legacy_import").with(detail),
        start(&state, &operator, input),
        |(_, Json(run))| Some(serde_json::json!({ "run_id": run.run_id, "job_id": run.job_id })),
    )
    .await
}

async fn start(
    state: &AppState,
    operator: &questboard_core::identity::UserId,
    input: StartImport,
) -> Result<(StatusCode, Json<ImportStarted>)> {
    // One parser for the command line's files and this body.
    let text = serde_json::to_string(&input.mapping).map_err(Error::internal)?;
    let mapping = li::parse_mapping(&text)?;
    let options = li::Options {
        max_file_bytes: input.max_file_bytes.unwrap_or(li::DEFAULT_MAX_FILE_BYTES),
    };
    let by = format!("api:{}", operator.as_str());
    let started = li::start(
        &state.pool,
        &state.sources,
        &input.source_url,
        &mapping,
        options,
        input.dry_run,
        &by,
    )
    .await?;
    tracing::info!(run_id = %started.run.id, by, dry_run = input.dry_run, "legacy import started");
    state.wake.announce(li::ImportLegacy::SPEC.kind);
    Ok((
        StatusCode::ACCEPTED,
        Json(ImportStarted {
            run_id: started.run.id,
            job_id: started.job_id,
            status: started.run.status,
        }),
    ))
}

/// A legacy layout import run; viewers and operators.
#[utoipa::path(get, path = "/api/admin/imports/legacy/{run_id}", tag = "admin",
    params(("run_id" = Uuid, Path, description = "The run")),
    responses((status = 200, body = ImportView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = ["questboard:viewer"]), ("bearer" = ["questboard:operator"])))]
pub async fn get_import(
    Viewer(_viewer): Viewer,
    State(state): State<AppState>,
    Path(run_id): Path<Uuid>,
) -> Result<Json<ImportView>> {
    let run = li::get_run(&state.pool, run_id).await?;
    let (_, problem_counts) = li::problems(&state.pool, run_id, 0).await?;
    let imported = li::imported_by(&state.pool, run_id).await?;
    Ok(Json(ImportView {
        run_id: run.id,
        status: run.status,
        source: run.source_url,
        dry_run: run.dry_run,
        mapped_folders: run.mapping.0.len(),
        max_file_bytes: run.options.0.max_file_bytes,
        imported,
        problem_counts,
        report: run.report,
        job_id: run.job_id,
        created_by: run.created_by,
        created_at: run.created_at,
        finished_at: run.finished_at,
    }))
}
