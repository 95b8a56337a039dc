//! Wiring a process together: connections, listeners and shutdown.
//!
//! The CLI and the test harness both build the API through [`api_state`]
//! and [`serve_http`], so tests run exactly what production runs.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use questboard_core::db;
use questboard_core::events::EventPublisher;
use questboard_core::storage::Storage;
use questboard_core::turns::Intake;
use questboard_core::wakeups::Publisher;
use tokio::net::TcpListener;

use questboard_workers::committer::CommitSettings;
use questboard_workers::jobs::{JobContext, PublishDeltas};
use questboard_workers::providers::{self, ProviderSettings, openai::OpenAiSettings};
use questboard_workers::runtime::{Worker, WorkerSettings};

use crate::auth::Verifier;
use crate::bridge::Bridge;
use crate::config::{Config, LlmProvider};
use crate::http::{self, AppState, TurnSettings};

/// Connects to everything the API needs. Fails fast on bad configuration;
/// Redis being down is not fatal here (readiness reports it).
pub async fn api_state(config: &Config) -> anyhow::Result<AppState> {
    let auth = Verifier::from_config(config).context("bearer token configuration")?;
    auth.prefetch().await;
    let pool = db::connect(config.database_url.expose(), config.db_max_connections)
        .await
        .context("connecting to Postgres (DATABASE_URL)")?;
    let redis = redis::Client::open(config.redis_url.expose()).context("REDIS_URL")?;
    let wake = Publisher::new(redis.clone());
    let events = EventPublisher::start(redis.clone(), pool.clone());
    let intake = Intake::start(pool.clone(), events.clone(), wake.clone());
    let bridge = Bridge::start(redis.clone());
    let storage = Storage::from_url(&config.storage_url).context("QB_STORAGE_URL")?;
    tracing::info!(storage = storage.describe(), "storage configured");
    Ok(AppState {
        pool,
        redis,
        intake,
        events,
        bridge,
        ws_allowed_origins: config
            .ws_allowed_origins
            .as_ref()
            .filter(|o| !o.is_empty())
            .map(|o| o.iter().map(|s| s.trim().to_owned()).collect()),
        auth: Arc::new(auth),
        storage,
        max_body_bytes: config.max_body_bytes,
        turns: TurnSettings {
            max_chars: config.max_turn_chars,
            max_attempts: config.job_max_attempts,
        },
    })
}

/// Serves the API on `listener` until `shutdown` completes, then finishes
/// in-flight requests.
pub async fn serve_http(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, http::router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown requested");
}

/// Builds a worker from the configuration, on an existing pool.
pub fn worker(config: &Config, pool: sqlx::PgPool) -> anyhow::Result<Worker> {
    let provider = providers::build(&provider_settings(config)).map_err(anyhow::Error::msg)?;
    let events = match redis::Client::open(config.redis_url.expose()) {
        Ok(client) => EventPublisher::start(client, pool.clone()),
        Err(_) => EventPublisher::disabled(),
    };
    let ctx = JobContext {
        pool,
        provider,
        sinks: Arc::new(PublishDeltas(events.clone())),
        events,
        system_prompt: config.llm_system_prompt.as_str().into(),
        history_window: i64::from(config.llm_history_turns),
        backoff_base: Duration::from_millis(config.job_backoff_ms),
    };
    let settings = WorkerSettings {
        concurrency: config.worker_concurrency as usize,
        lease_ttl: Duration::from_millis(config.lease_ttl_ms),
        shutdown_grace: Duration::from_millis(config.shutdown_grace_ms),
        poll_interval: Duration::from_millis(config.worker_poll_ms),
        commit: CommitSettings {
            in_flight: config.worker_commits_in_flight as usize,
            ..CommitSettings::default()
        },
        wakeups: redis::Client::open(config.redis_url.expose())
            .inspect_err(|e| tracing::warn!(error = %e, "REDIS_URL unusable: workers will poll"))
            .ok(),
        ..WorkerSettings::default()
    };
    Ok(Worker::new(ctx, settings))
}

/// The model provider the configuration asks for.
pub fn provider_settings(config: &Config) -> ProviderSettings {
    match config.llm_provider {
        LlmProvider::Scripted => ProviderSettings::Scripted {
            latency: Duration::from_millis(config.scripted_latency_ms),
        },
        LlmProvider::Openai => ProviderSettings::OpenAi(OpenAiSettings {
            base_url: config.llm_base_url.clone(),
            model: config.llm_model.clone(),
            api_key: config.llm_api_key.as_ref().map(|k| k.expose().to_owned()),
            timeout: Duration::from_millis(config.llm_timeout_ms),
        }),
    }
}

/// Starts the event relay in the background (see `questboard_core::events::run_relay`).
pub fn spawn_relay(config: &Config, pool: sqlx::PgPool, holder: String) {
    if let Ok(client) = redis::Client::open(config.redis_url.expose()) {
        tokio::spawn(questboard_core::events::run_relay(
            pool,
            client,
            holder,
            Duration::from_millis(config.relay_interval_ms),
            Duration::from_millis(config.relay_interval_ms),
        ));
    }
}
