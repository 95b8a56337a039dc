//! Wiring a process together: connections, listeners and shutdown.
//!
//! The CLI and the test harness both build the API through [`api_state`]
//! and [`serve_http`], so tests run exactly what production runs.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use questboard_core::bus::Bus;
use questboard_core::db;
use questboard_core::events::EventPublisher;
use questboard_core::provider_limits::{Limiter, Limits};
use questboard_core::storage::Storage;
use questboard_core::turns::Intake;
use questboard_core::wakeups::Publisher;
use tokio::net::TcpListener;

use questboard_workers::committer::CommitSettings;
use questboard_workers::jobs::{self, JobContext, PublishDeltas, Registry, prune, reconcile};
use questboard_workers::providers::fallback::{Endpoint, Endpoints, FallbackSettings};
use questboard_workers::providers::{self, ProviderSettings, openai::OpenAiSettings};
use questboard_workers::runtime::{self, Worker, WorkerSettings};
use questboard_workers::scheduler::{self, Entry, Scheduler, SchedulerSettings};

use crate::auth::Verifier;
use crate::bridge::Bridge;
use crate::config::{Config, LlmProvider};
use crate::http::{self, AppState, TurnSettings};

/// Connects to everything the API needs, publishing on `bus`. Fails fast
/// on bad configuration; Redis being down is not fatal here (readiness
/// reports it).
pub async fn api_state(config: &Config, bus: &Bus) -> anyhow::Result<AppState> {
    api_state_with(config, bus, jobs::registry()).await
}

/// Like [`api_state`], knowing the kinds of `registry` (tests register
/// kinds of their own).
pub async fn api_state_with(
    config: &Config,
    bus: &Bus,
    registry: Registry,
) -> anyhow::Result<AppState> {
    let auth = Verifier::from_config(config).context("bearer token configuration")?;
    auth.prefetch().await;
    let pool = db::connect_waiting(
        config.database_url(),
        config.db_max_connections,
        Duration::from_millis(config.db_acquire_timeout_ms),
    )
    .await
    .context("connecting to Postgres (DATABASE_URL)")?;
    let wake = Publisher::new(bus.clone());
    let events = EventPublisher::start(bus.clone(), pool.clone());
    let quotas = questboard_core::quotas::Quotas::load(&pool, config.quota_defaults())
        .await
        .context("reading the quota settings (are the migrations applied?)")?;
    let intake = Intake::start(pool.clone(), events.clone(), wake.clone(), quotas.clone());
    let sockets = questboard_core::quotas::sockets::Sockets::start(pool.clone());
    let bridge = Bridge::start(bus.clone());
    let storage = Storage::from_url(&config.storage_url).context("QB_STORAGE_URL")?;
    tracing::info!(storage = storage.describe(), "storage configured");
    let schedule = Arc::new(schedule(config, &registry)?);
    let description = http::openapi::document(&registry, config.max_turn_chars)?;
    http::register_known_metrics(&description);
    let kinds: Vec<&str> = registry.kinds().iter().map(|k| k.spec.kind).collect();
    questboard_core::metrics::register_known(&questboard_core::metrics::Known {
        kinds: &kinds,
        storage_backend: storage.backend(),
        ..Default::default()
    });
    let openapi = axum::body::Bytes::from(
        serde_json::to_vec(&description).context("serialising the OpenAPI description")?,
    );
    let sources = config.source_allowlist()?;
    let pages = http::pages::Pages::for_storage(&storage, &config.table_frame_ancestors()?).await;
    Ok(AppState {
        pages,
        dev_tokens: None,
        openapi,
        asset_sources: questboard_core::asset_migration::Sources::new(sources.clone()),
        sources,
        pool,
        bus: bus.clone(),
        intake,
        quotas,
        sockets,
        wake,
        registry: Arc::new(registry),
        schedule,
        events,
        bridge,
        ws_openings: Arc::new(tokio::sync::Semaphore::new(
            config.db_max_connections.max(1) as usize,
        )),
        ws_allowed_origins: config
            .ws_allowed_origins
            .as_ref()
            .filter(|o| !o.is_empty())
            .map(|o| o.iter().map(|s| s.trim().to_owned()).collect()),
        auth: Arc::new(auth),
        storage,
        max_body_bytes: config.max_body_bytes,
        state_limits: config.state_limits(),
        recent_states: Arc::default(),
        http: http::server::Limits {
            max_connections: config.http_max_connections,
            header_timeout: Duration::from_millis(config.http_header_timeout_ms),
            body_timeout: Duration::from_millis(config.http_body_timeout_ms),
        },
        turns: TurnSettings {
            max_chars: config.max_turn_chars,
            max_attempts: config.job_max_attempts,
        },
        media: upload_limits(config),
        links: crate::http::MediaLinks {
            signer: link_signer(config),
            ttl: Duration::from_secs(config.media_link_ttl_seconds),
        },
    })
}

/// The key of signed media links: `QB_MEDIA_SIGNING_KEY`, else derived
/// from `QB_JWT_SECRET`, else random (said in the log).
fn link_signer(config: &Config) -> questboard_core::media::LinkSigner {
    use questboard_core::media::LinkSigner;
    match (&config.media_signing_key, &config.jwt_secret) {
        (Some(key), _) => LinkSigner::from_secret(key.expose().as_bytes()),
        (None, Some(secret)) => LinkSigner::from_secret(secret.expose().as_bytes()),
        (None, None) => {
            tracing::warn!(
                "QB_MEDIA_SIGNING_KEY unset and no QB_JWT_SECRET: signed media links work only on this process"
            );
            LinkSigner::random()
        }
    }
}

/// Serves the API on `listener` until `shutdown` completes, then finishes
/// in-flight requests. From that moment turn submissions are refused with
/// 503 (the client retries, with its Idempotency-Key, on another process).
pub async fn serve_http(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let intake = state.intake.clone();
    let limits = state.http;
    http::server::serve(listener, http::router(state), limits, async move {
        shutdown.await;
        intake.close();
    })
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

/// The primary model endpoint and the fallbacks of `QB_LLM_FALLBACKS`,
/// each with its own limiter row (`llm:<name>`).
fn model_endpoints(
    config: &Config,
    pool: &sqlx::PgPool,
    bus: &Bus,
    provider: Arc<dyn questboard_workers::providers::ModelProvider>,
    limiter: Arc<Limiter>,
) -> anyhow::Result<Endpoints> {
    let mut fallbacks = Vec::new();
    for endpoint in config.llm_fallbacks()? {
        // A name lives as long as the process (metrics labels take
        // `&'static str`); a handful, once, at start.
        let name: &'static str = endpoint.name.leak();
        let provider = providers::openai::OpenAi::new(OpenAiSettings {
            name,
            base_url: endpoint.base_url,
            model: endpoint.model,
            api_key: endpoint.api_key,
            timeout: Duration::from_millis(config.llm_timeout_ms),
            tools: config.llm_tools,
            max_tokens: config.llm_max_tokens,
        })
        .map_err(anyhow::Error::msg)?;
        let limiter = Limiter::new(
            pool.clone(),
            Some(bus.clone()),
            &format!("llm:{name}"),
            Limits {
                requests_per_minute: endpoint.requests_per_minute,
                tokens_per_minute: endpoint.tokens_per_minute,
            },
        );
        fallbacks.push(Endpoint::new(Arc::new(provider), limiter));
    }
    Ok(Endpoints::new(
        Endpoint::new(provider, limiter),
        fallbacks,
        FallbackSettings {
            after_failures: config.llm_fallback_after_failures,
            after_pause: Duration::from_millis(config.llm_fallback_after_pause_ms),
            cooldown: Duration::from_millis(config.llm_fallback_cooldown_ms),
        },
    ))
}

/// Builds a worker for every registered kind from the configuration, on
/// an existing pool and `bus`.
pub fn worker(config: &Config, pool: sqlx::PgPool, bus: &Bus) -> anyhow::Result<Worker> {
    worker_with(config, pool, bus, jobs::registry())
}

/// What every job handler of this process can use.
pub fn job_context(config: &Config, pool: sqlx::PgPool, bus: &Bus) -> anyhow::Result<JobContext> {
    let provider = providers::build(&provider_settings(config)).map_err(anyhow::Error::msg)?;
    let events = EventPublisher::start(bus.clone(), pool.clone());
    let wake = Publisher::new(bus.clone());
    let storage = Storage::from_url(&config.storage_url).context("QB_STORAGE_URL")?;
    let day = |days: u32| Duration::from_secs(u64::from(days) * 24 * 3600);
    let media = media_provider(config)?;
    // One limiter row per provider kind and name: every worker of this
    // deployment charges the same rows.
    let limiter = Limiter::new(
        pool.clone(),
        Some(bus.clone()),
        &format!("llm:{}", provider.name()),
        Limits {
            requests_per_minute: config.llm_requests_per_minute,
            tokens_per_minute: config.llm_tokens_per_minute,
        },
    );
    let media_limiter = Limiter::new(
        pool.clone(),
        Some(bus.clone()),
        &format!("media:{}", media.name()),
        Limits {
            requests_per_minute: config.media_requests_per_minute,
            tokens_per_minute: None,
        },
    );
    let llm = Arc::new(model_endpoints(config, &pool, bus, provider, limiter)?);
    let quotas = questboard_core::quotas::Quotas::start(&pool, config.quota_defaults());
    Ok(JobContext {
        quotas,
        pool,
        storage,
        wake,
        llm,
        media,
        media_limiter,
        media_limits: upload_limits(config),
        sinks: Arc::new(PublishDeltas(events.clone())),
        events,
        system_prompt: config.llm_system_prompt.as_str().into(),
        history_window: i64::from(config.llm_history_turns),
        context: config.context_budget()?,
        backoff_base: Duration::from_millis(config.job_backoff_ms),
        retention: prune::Retention {
            invites: day(config.invite_retention_days),
            jobs_succeeded: day(config.job_retention_succeeded_days),
            jobs_failed: day(config.job_retention_failed_days),
            events: day(config.event_retention_days),
            session_idle: day(config.session_idle_days),
            archived_sessions: day(config.retention_days),
            media_versions: day(config.media_version_retention_days),
            audit: day(config.audit_retention_days),
            ..prune::Retention::default()
        },
        reconcile: reconcile::Settings {
            grace: Duration::from_secs(config.reconcile_grace_hours.saturating_mul(3600)),
            ..reconcile::Settings::default()
        },
        sources: config.source_allowlist()?,
    })
}

/// The size limits of maps and notes (`QB_MEDIA_MAP_MAX_BYTES`,
/// `QB_MEDIA_NOTE_MAX_BYTES`), for uploads and migrated assets alike.
fn upload_limits(config: &Config) -> questboard_core::media::UploadLimits {
    questboard_core::media::UploadLimits {
        map_max_bytes: config.media_map_max_bytes,
        note_max_bytes: config.media_note_max_bytes,
    }
}

/// The configured media provider.
fn media_provider(
    config: &Config,
) -> anyhow::Result<Arc<dyn questboard_workers::providers::media::MediaProvider>> {
    use crate::config::MediaProviderKind;
    use questboard_workers::providers::media::{builtin, openai};
    Ok(match config.media_provider {
        MediaProviderKind::Builtin => Arc::new(builtin::Builtin),
        MediaProviderKind::Openai => Arc::new(
            openai::OpenAiMedia::new(openai::OpenAiMediaSettings {
                base_url: config
                    .media_base_url
                    .clone()
                    .unwrap_or_else(|| config.llm_base_url.clone()),
                image_model: config.media_image_model.clone(),
                speech_model: config.media_speech_model.clone(),
                api_key: config
                    .media_api_key
                    .as_ref()
                    .or(config.llm_api_key.as_ref())
                    .map(|k| k.expose().to_owned()),
                timeout: Duration::from_millis(config.media_timeout_ms),
            })
            .map_err(anyhow::Error::msg)?,
        ),
    })
}

/// Builds a worker serving the kinds of `registry` (the production list,
/// or more: tests and the benchmark register kinds of their own).
pub fn worker_with(
    config: &Config,
    pool: sqlx::PgPool,
    bus: &Bus,
    registry: Registry,
) -> anyhow::Result<Worker> {
    let ctx = job_context(config, pool, bus)?;
    let kinds: Vec<&str> = registry.kinds().iter().map(|k| k.spec.kind).collect();
    questboard_core::metrics::register_known(&questboard_core::metrics::Known {
        kinds: &kinds,
        storage_backend: ctx.storage.backend(),
        provider: ctx.llm.primary().provider.name(),
        model: ctx.llm.primary().provider.model(),
        media: Some({
            let [image, speech] = ctx.media.models();
            (ctx.media.name(), image, speech)
        }),
        ..Default::default()
    });
    let kind_concurrency = runtime::parse_kind_concurrency(&config.jobs_concurrency)
        .map_err(|e| anyhow::anyhow!("QB_JOBS_CONCURRENCY: {e}"))?;
    let settings = WorkerSettings {
        concurrency: config.worker_concurrency as usize,
        kinds: config
            .worker_kinds
            .as_ref()
            .map(|kinds| {
                kinds
                    .iter()
                    .map(|k| k.trim().to_owned())
                    .filter(|k| !k.is_empty())
                    .collect::<Vec<_>>()
            })
            .filter(|kinds| !kinds.is_empty()),
        kind_concurrency,
        lease_ttl: Duration::from_millis(config.lease_ttl_ms),
        shutdown_grace: Duration::from_millis(config.shutdown_grace_ms),
        poll_interval: Duration::from_millis(config.worker_poll_ms),
        commit: CommitSettings {
            in_flight: config.worker_commits_in_flight as usize,
            state_limits: config.state_limits(),
            ..CommitSettings::default()
        },
        wakeups: Some(bus.clone()),
        ..WorkerSettings::default()
    };
    Ok(Worker::new(ctx, registry, settings)?)
}

/// The schedule: built-in maintenance entries, with `QB_SCHEDULE_FILE`'s
/// overrides; a bad file is refused with its line and the reason.
pub fn schedule(config: &Config, registry: &Registry) -> anyhow::Result<Vec<Entry>> {
    Ok(scheduler::entries::load(
        registry,
        config.schedule_file.as_deref(),
    )?)
}

/// The cron scheduler for `entries`, on an existing pool, announcing the
/// jobs it enqueues on `bus`.
pub fn scheduler(
    config: &Config,
    pool: sqlx::PgPool,
    bus: &Bus,
    entries: Arc<Vec<Entry>>,
) -> Scheduler {
    let wake = Publisher::new(bus.clone());
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    questboard_core::metrics::register_known(&questboard_core::metrics::Known {
        schedule_entries: &names,
        ..Default::default()
    });
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "scheduler".to_owned());
    Scheduler::new(
        pool,
        entries,
        SchedulerSettings {
            lease_ttl: Duration::from_millis(config.lease_ttl_ms),
            tolerance: Duration::from_millis(config.scheduler_tolerance_ms),
            holder: format!(
                "{host}-{}-{}",
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
        },
        wake,
    )
}

/// The model provider the configuration asks for.
pub fn provider_settings(config: &Config) -> ProviderSettings {
    match config.llm_provider {
        LlmProvider::Scripted => ProviderSettings::Scripted {
            latency: Duration::from_millis(config.scripted_latency_ms),
        },
        LlmProvider::Openai => ProviderSettings::OpenAi(OpenAiSettings {
            name: "openai",
            base_url: config.llm_base_url.clone(),
            model: config.llm_model.clone(),
            api_key: config.llm_api_key.as_ref().map(|k| k.expose().to_owned()),
            timeout: Duration::from_millis(config.llm_timeout_ms),
            tools: config.llm_tools,
            max_tokens: config.llm_max_tokens,
        }),
    }
}

/// Starts the event relay on `bus` in the background (see
/// `questboard_core::events::run_relay`).
pub fn spawn_relay(config: &Config, pool: sqlx::PgPool, bus: &Bus, holder: String) {
    tokio::spawn(questboard_core::events::run_relay(
        pool,
        bus.clone(),
        holder,
        Duration::from_millis(config.relay_interval_ms),
        Duration::from_millis(config.relay_interval_ms),
    ));
}
