//! The HTTP API: one router per area, merged here, with the layers every
//! request passes through (body limit, metrics, JSON fallbacks).
//!
//! | area | module |
//! |---|---|
//! | campaign sessions and members | [`sessions`] |
//! | invites | [`invites`] |
//! | turns | [`turns`] |
//! | the game state | [`state`] |
//! | job status | [`jobs`] |
//! | what the providers were paid for | [`usage`] |
//! | operators' controls of the job platform | [`admin`] |
//! | the operators' audit log | [`audit`] |
//! | asset migrations | [`migrations`] |
//! | the old folder layout: imports and the old links' shim | [`legacy`] |
//! | the session event log | [`events`] |
//! | live session WebSockets | [`ws`] |
//! | liveness and readiness | [`health`] |
//! | the OpenAPI description | [`openapi`] |
//! | the table page and its assets | [`pages`] |
//! | sign-in by name, `questboard dev` only | [`dev`] |

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use questboard_core::metrics as m;
use questboard_core::storage::Storage;
use sqlx::PgPool;

use crate::auth::Verifier;

pub mod activity;
pub mod admin;
pub mod audit;
pub mod dev;
pub mod download;
pub mod error;
pub mod events;
pub mod extract;
pub mod health;
pub mod invites;
pub mod jobs;
pub mod lanes;
pub mod legacy;
pub mod live;
pub mod media;
pub mod migrations;
pub mod openapi;
pub mod pages;
pub mod proposals;
pub mod quotas;
pub mod runs;
pub mod server;
pub mod sessions;
pub mod state;
pub mod turns;
pub mod usage;
pub mod ws;

pub use error::{Error, Result};

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Postgres.
    pub pool: PgPool,
    /// The bus (Redis, or in process under `dev`): readiness.
    pub bus: questboard_core::bus::Bus,
    /// Commits turn submissions of concurrent requests together.
    pub intake: questboard_core::turns::Intake,
    /// Members' quotas and budgets in force (defaults and operators'
    /// overrides).
    pub quotas: questboard_core::quotas::Quotas,
    /// This process's open session sockets, for the per-user quota.
    pub sockets: questboard_core::quotas::sockets::Sockets,
    /// Wakes workers when operators start, retry or resume jobs; tells
    /// them to stop a cancelled one.
    pub wake: questboard_core::wakeups::Publisher,
    /// Every job kind, with its declaration (shared: the state is cloned
    /// for every request and socket).
    pub registry: Arc<questboard_workers::jobs::Registry>,
    /// The schedule, for operators to read.
    pub schedule: Arc<Vec<questboard_workers::scheduler::Entry>>,
    /// Publishes committed session events on Redis.
    pub events: questboard_core::events::EventPublisher,
    /// Delivers Redis session channels to this process's WebSockets.
    pub bridge: crate::bridge::Bridge,
    /// Session sockets opening right now (the checks before the upgrade
    /// and the first catch-up): at most as many as the pool has
    /// connections, so that in a reconnect storm the openings let in finish
    /// instead of all timing out on the pool ([`ws`]).
    pub ws_openings: Arc<tokio::sync::Semaphore>,
    /// Origins allowed to open session sockets (None: any).
    pub ws_allowed_origins: Option<Arc<[String]>>,
    /// Bearer token verification.
    pub auth: Arc<Verifier>,
    /// Campaign files.
    pub storage: Storage,
    /// Largest accepted body, in bytes.
    pub max_body_bytes: usize,
    /// How large a game state and one update to it may be.
    pub state_limits: questboard_core::state::Limits,
    /// The game states this process wrote last (see `state::recent`).
    pub recent_states: Arc<questboard_core::state::Recent>,
    /// Connection limits and timeouts of the listener.
    pub http: server::Limits,
    /// Limits of submitted turns.
    pub turns: TurnSettings,
    /// Limits of uploaded media.
    pub media: questboard_core::media::UploadLimits,
    /// Signed links to media objects.
    pub links: MediaLinks,
    /// The OpenAPI description as served, built once at start
    /// ([`openapi::document`]).
    pub openapi: axum::body::Bytes,
    /// Connections to asset migrations' source databases, for assets not
    /// moved yet ([`migrations::serve_old_asset`]).
    pub asset_sources: questboard_core::asset_migration::Sources,
    /// Where operators may point migrations and imports.
    pub sources: questboard_core::sources::Allowlist,
    /// The table page, its policy and whether it offers dev sign-in.
    pub pages: pages::Pages,
    /// Sign-in by name: `Some` only in `questboard dev`.
    pub dev_tokens: Option<dev::DevTokens>,
}

/// How signed media links are made.
#[derive(Debug, Clone)]
pub struct MediaLinks {
    /// Signs questboard's own links (where storage cannot presign).
    pub signer: questboard_core::media::LinkSigner,
    /// How long a link stays valid.
    pub ttl: std::time::Duration,
}

/// Limits of submitted turns.
#[derive(Debug, Clone, Copy)]
pub struct TurnSettings {
    /// Longest text, in characters.
    pub max_chars: usize,
    /// Most runs of a turn's job.
    pub max_attempts: u32,
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    let body_timeout = state.http.body_timeout;
    let api = Router::new()
        .merge(sessions::router())
        .merge(invites::router())
        .merge(turns::router())
        .merge(usage::router())
        .merge(quotas::router())
        .merge(state::router())
        .merge(proposals::router())
        .merge(jobs::router())
        .merge(admin::router())
        .merge(audit::router())
        .merge(activity::router())
        .merge(lanes::router())
        .merge(live::router())
        .merge(runs::router())
        .merge(migrations::router())
        .merge(legacy::router())
        .merge(events::router())
        .merge(media::router())
        .merge(download::router())
        .merge(openapi::router());
    // Uploads are files with their own limits (checked as they stream),
    // outside the JSON body limit; bodies must still keep arriving.
    let uploads = Router::new()
        .nest("/api", media::upload_router())
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        .route_layer(middleware::from_fn(record_metrics))
        .layer(DefaultBodyLimit::disable())
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            body_timeout,
        ));
    let pages = if state.dev_tokens.is_some() {
        pages::router().merge(dev::router())
    } else {
        pages::router()
    };
    Router::new()
        .nest("/api", api)
        .merge(health::router())
        .merge(ws::router())
        .merge(pages)
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        .route_layer(middleware::from_fn(record_metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            body_timeout,
        ))
        .layer(middleware::from_fn(move |mut req: Request, next: Next| {
            req.extensions_mut().insert(extract::BodyLimit(limit));
            // A declared length over the limit is refused before any of the
            // body is read (the client may be sending it slowly, or never).
            let declared = req
                .headers()
                .get(axum::http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            async move {
                if declared.is_some_and(|n| n > limit as u64) {
                    return Error::PayloadTooLarge(limit).into_response();
                }
                next.run(req).await
            }
        }))
        .merge(uploads)
        .with_state(state)
}

async fn not_found() -> Response {
    metrics::counter!(
        m::HTTP_REQUESTS_TOTAL,
        "method" => "any",
        "route" => "unmatched",
        "status" => "404"
    )
    .increment(1);
    Error::NotFound("route").into_response()
}

/// Counts requests and times them, labelled by the matched route (never the
/// raw path, which would explode label cardinality).
async fn record_metrics(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let in_flight = metrics::gauge!(m::HTTP_REQUESTS_IN_FLIGHT);
    in_flight.increment(1.0);
    let response = next.run(req).await;
    in_flight.decrement(1.0);
    let status = response.status().as_u16();
    let class = status_class(status);
    let elapsed = started.elapsed().as_secs_f64();
    metrics::histogram!(m::HTTP_REQUEST_DURATION_SECONDS,
        "method" => method.clone(), "route" => route.clone(), "status_class" => class)
    .record(elapsed);
    metrics::counter!(m::HTTP_REQUESTS_TOTAL,
        "method" => method, "route" => route, "status" => status.to_string())
    .increment(1);
    response
}

/// A status's class label (`2xx` ... `5xx`): the latency histogram is
/// labelled by class, not status, so statuses do not multiply its buckets.
fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Registers at 0 the API's counter series whose labels are known ahead
/// (see `questboard_core::metrics::register_known`): a 500 and a 503 of
/// every documented route, every reason a token is refused, every reason a
/// socket is closed.
pub fn register_known_metrics(openapi: &serde_json::Value) {
    if let Some(paths) = openapi["paths"].as_object() {
        for (route, item) in paths {
            for method in item.as_object().into_iter().flat_map(|m| m.keys()) {
                for status in ["500", "503"] {
                    metrics::counter!(m::HTTP_REQUESTS_TOTAL,
                        "method" => method.to_uppercase(), "route" => route.clone(),
                        "status" => status)
                    .increment(0);
                }
            }
        }
    }
    for reason in crate::auth::AuthError::ALL {
        metrics::counter!(m::AUTH_FAILURES_TOTAL, "reason" => reason.reason()).increment(0);
    }
    for reason in ws::CLOSE_REASONS {
        metrics::counter!(m::WS_CLOSED_TOTAL, "reason" => reason).increment(0);
    }
}
