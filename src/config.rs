//! The one typed configuration of a questboard process.
//!
//! Every setting comes from an environment variable (or the matching flag),
//! with a doc comment here that the README's configuration table mirrors.
//! The variable names are fixed: operators' tooling and the black-box tests
//! use them. Secrets are wrapped in [`Secret`] so `Debug` never prints them.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use anyhow::Context as _;
use url::Url;

/// A value that must not appear in logs or debug output.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Configuration shared by every subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Postgres connection string. Unset: `serve`, `work`, `schedule`,
    /// `migrate` and `admin` use `postgres://postgres@127.0.0.1:5432/questboard`;
    /// `dev` runs a private Postgres of its own (`QB_DEV_DATA_DIR`).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<Secret>,

    /// Most Postgres connections this process opens.
    #[arg(long, env = "QB_DB_MAX_CONNECTIONS", default_value_t = 20)]
    pub db_max_connections: u32,

    /// Longest an API request waits for a Postgres connection, in
    /// milliseconds; past it (the database is down or saturated) the request
    /// gets 503 `unavailable` with `Retry-After`.
    #[arg(long, env = "QB_DB_ACQUIRE_TIMEOUT_MS", default_value_t = 2_000)]
    pub db_acquire_timeout_ms: u64,

    /// Redis connection string: the bus between processes (session events
    /// to every API process, wake-ups and cancellations to workers).
    /// Required by `serve`, `work` and `schedule`; unset, `dev` uses an
    /// in-process bus.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<Secret>,

    /// Address the HTTP API listens on.
    #[arg(long, env = "QB_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// Address the Prometheus `/metrics` listener binds (port 0 picks a free port).
    #[arg(long, env = "QB_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,

    /// HS256 secret for bearer tokens (at least 32 bytes). Exactly one of this
    /// and `QB_JWKS_URL` must be set.
    #[arg(long, env = "QB_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// JWKS endpoint for RS256 bearer tokens (Auth0-style); keys are cached
    /// and refreshed.
    #[arg(long, env = "QB_JWKS_URL")]
    pub jwks_url: Option<Url>,

    /// Required `iss` claim (required with `QB_JWKS_URL`, optional otherwise).
    #[arg(long, env = "QB_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim (required with `QB_JWKS_URL`, optional otherwise).
    #[arg(long, env = "QB_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Where campaign files live: `file:///abs/path` or a plain path,
    /// `memory://`, `s3://bucket/prefix`, `gs://bucket/prefix`.
    #[arg(long, env = "QB_STORAGE_URL", default_value = "./data/storage")]
    pub storage_url: String,

    /// Most HTTP connections open at once; past it new ones are closed at
    /// accept.
    #[arg(long, env = "QB_HTTP_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub http_max_connections: usize,

    /// Longest wait for a request's head (request line and headers), in
    /// milliseconds, counted from when the connection is ready for one: a
    /// slow or silent client, or an idle keep-alive connection, is closed
    /// after it.
    #[arg(long, env = "QB_HTTP_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub http_header_timeout_ms: u64,

    /// Longest wait for a request's whole body, in milliseconds; then 408.
    #[arg(long, env = "QB_HTTP_BODY_TIMEOUT_MS", default_value_t = 30_000)]
    pub http_body_timeout_ms: u64,

    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, env = "QB_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Largest a session's game state may be after an update, in bytes of
    /// JSON; updates that would pass it get 422 `STATE_TOO_LARGE`.
    #[arg(long, env = "QB_STATE_MAX_BYTES", default_value_t = 1024 * 1024)]
    pub state_max_bytes: usize,

    /// Largest one state update's operations may be, in bytes of compact
    /// JSON (each update is sent to every member's socket as its
    /// `state.updated` event); larger ones get 422 `VALIDATION_ERROR`.
    #[arg(long, env = "QB_STATE_MAX_UPDATE_BYTES", default_value_t = questboard_core::state::DEFAULT_MAX_UPDATE_BYTES)]
    pub state_max_update_bytes: usize,

    /// Log format.
    #[arg(long, env = "QB_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// How often the event relay publishes committed events that missed Redis.
    #[arg(long, env = "QB_RELAY_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..))]
    pub relay_interval_ms: u64,

    /// Comma-separated sources operators may point asset migrations and
    /// legacy imports at (`postgres://host[:port]/db`, `s3://bucket/prefix`,
    /// `gs://bucket/prefix`, `file:///path`; a source matches an entry of
    /// the same scheme, host and port whose path is a whole-segment prefix
    /// of its own). Empty (the default): any source. Set it in production.
    #[arg(long, env = "QB_MIGRATION_SOURCES", value_delimiter = ',')]
    pub migration_sources: Vec<String>,

    /// Comma-separated Origins allowed to open session WebSockets (unset: any).
    #[arg(long, env = "QB_WS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub ws_allowed_origins: Option<Vec<String>>,

    /// Comma-separated origins (`https://app.example`) of apps that may show
    /// the table in a frame (unset: none; the page refuses to be framed).
    #[arg(long, env = "QB_TABLE_FRAME_ANCESTORS", value_delimiter = ',')]
    pub table_frame_ancestors: Vec<String>,

    /// Largest uploaded map, in bytes (`image/png` or `image/jpeg`).
    #[arg(long, env = "QB_MEDIA_MAP_MAX_BYTES", default_value_t = 25_000_000)]
    pub media_map_max_bytes: u64,

    /// Largest uploaded note, in bytes (`text/markdown` or `application/pdf`).
    #[arg(long, env = "QB_MEDIA_NOTE_MAX_BYTES", default_value_t = 10_000_000)]
    pub media_note_max_bytes: u64,

    /// Key of signed media links (any length). Unset: derived from
    /// `QB_JWT_SECRET`; with JWKS and no key, a random one per process (a
    /// link then works only on the process that made it).
    #[arg(long, env = "QB_MEDIA_SIGNING_KEY", hide_env_values = true)]
    pub media_signing_key: Option<Secret>,

    /// How long a signed media link stays valid, in seconds.
    #[arg(long, env = "QB_MEDIA_LINK_TTL_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub media_link_ttl_seconds: u64,

    /// Longest turn text accepted, in characters.
    #[arg(long, env = "QB_MAX_TURN_CHARS", default_value_t = 8000)]
    pub max_turn_chars: usize,

    /// Most runs of a turn before it fails for good (other kinds declare their own).
    #[arg(long, env = "QB_JOB_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub job_max_attempts: u32,

    /// First retry delay of a turn in milliseconds; doubles per attempt, with jitter.
    #[arg(long, env = "QB_JOB_BACKOFF_MS", default_value_t = 1000)]
    pub job_backoff_ms: u64,

    /// Campaign sessions a worker processes at once (the turn kind's concurrency).
    #[arg(long, env = "QB_WORKER_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub worker_concurrency: u32,

    /// Comma-separated job kinds this worker serves (unset: all), e.g. `prune,reconcile`.
    #[arg(long, env = "QB_WORKER_KINDS", value_delimiter = ',')]
    pub worker_kinds: Option<Vec<String>>,

    /// Per-kind concurrency over each kind's declared default, e.g. `prune=1,reconcile=2`.
    #[arg(long, env = "QB_JOBS_CONCURRENCY", default_value = "")]
    pub jobs_concurrency: String,

    /// The schedule file (TOML) that overrides and extends the built-in maintenance schedule.
    #[arg(long, env = "QB_SCHEDULE_FILE")]
    pub schedule_file: Option<std::path::PathBuf>,

    /// How late (ms) a scheduled tick may fire and still count as on time; older ticks were missed.
    #[arg(long, env = "QB_SCHEDULER_TOLERANCE_MS", default_value_t = 60_000)]
    pub scheduler_tolerance_ms: u64,

    /// Days session events are kept (`prune`).
    #[arg(long, env = "QB_EVENT_RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub event_retention_days: u32,

    /// Days without activity before `prune` archives a session.
    #[arg(long, env = "QB_SESSION_IDLE_DAYS", default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub session_idle_days: u32,

    /// Days a session stays archived before `prune` deletes it with everything it owns.
    #[arg(long, env = "QB_RETENTION_DAYS", default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub retention_days: u32,

    /// Days succeeded job rows are kept (`prune`).
    #[arg(long, env = "QB_JOB_RETENTION_SUCCEEDED_DAYS", default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub job_retention_succeeded_days: u32,

    /// Days failed and cancelled job rows are kept (`prune`).
    #[arg(long, env = "QB_JOB_RETENTION_FAILED_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub job_retention_failed_days: u32,

    /// Days expired, revoked or used-up invites are kept (`prune`).
    #[arg(long, env = "QB_INVITE_RETENTION_DAYS", default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub invite_retention_days: u32,

    /// Days entries of the operators' audit log are kept (`prune`).
    #[arg(long, env = "QB_AUDIT_RETENTION_DAYS", default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub audit_retention_days: u32,

    /// Days a media version is kept after a newer one replaced it (`prune`).
    #[arg(long, env = "QB_MEDIA_VERSION_RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub media_version_retention_days: u32,

    /// Hours an orphaned object must be old before `reconcile --repair` deletes it.
    #[arg(long, env = "QB_RECONCILE_GRACE_HOURS", default_value_t = 24)]
    pub reconcile_grace_hours: u64,

    /// How long a stopping worker lets in-flight turns finish before handing them back.
    #[arg(long, env = "QB_SHUTDOWN_GRACE_MS", default_value_t = 30_000)]
    pub shutdown_grace_ms: u64,

    /// Session lease lifetime in milliseconds; renewed every third of it. A
    /// crashed worker's sessions are taken over after this.
    #[arg(long, env = "QB_LEASE_TTL_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(300..))]
    pub lease_ttl_ms: u64,

    /// How often an idle worker looks for retries coming due and expired leases.
    #[arg(long, env = "QB_WORKER_POLL_MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..))]
    pub worker_poll_ms: u64,

    /// Statements a worker runs at once to write the turn progress of its
    /// sessions (each carries the steps of every session waiting by then).
    #[arg(long, env = "QB_WORKER_COMMITS_IN_FLIGHT", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=16))]
    pub worker_commits_in_flight: u64,

    /// The game master: `scripted` (built in) or `openai` (any OpenAI-compatible server).
    #[arg(long, env = "QB_LLM_PROVIDER", value_enum, default_value = "scripted")]
    pub llm_provider: LlmProvider,

    /// Simulated latency of a scripted reply, in milliseconds.
    #[arg(long, env = "QB_SCRIPTED_LATENCY_MS", default_value_t = 200)]
    pub scripted_latency_ms: u64,

    /// Base URL of the OpenAI-compatible API.
    #[arg(
        long,
        env = "QB_LLM_BASE_URL",
        default_value = "https://api.openai.com/v1"
    )]
    pub llm_base_url: String,

    /// Model name sent to the OpenAI-compatible API.
    #[arg(long, env = "QB_LLM_MODEL", default_value = "gpt-4o-mini")]
    pub llm_model: String,

    /// API key for the OpenAI-compatible API.
    #[arg(long, env = "QB_LLM_API_KEY", hide_env_values = true)]
    pub llm_api_key: Option<Secret>,

    /// Timeout of one model request, in milliseconds.
    #[arg(long, env = "QB_LLM_TIMEOUT_MS", default_value_t = 60_000)]
    pub llm_timeout_ms: u64,

    /// Offer the model the `update_game_state` tool (function calling), so
    /// its replies can change the game state; `false` for servers that
    /// reject `tools`.
    #[arg(
        long,
        env = "QB_LLM_TOOLS",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub llm_tools: bool,

    /// The longest reply asked of the model, in tokens (`max_tokens` of
    /// every request): a reply cannot run on for minutes.
    #[arg(long, env = "QB_LLM_MAX_TOKENS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub llm_max_tokens: u32,

    /// The model's context window, in tokens: a turn's prompt is trimmed
    /// (oldest exchanges first) to fit it with room for `QB_LLM_MAX_TOKENS`
    /// of reply; must exceed that.
    #[arg(long, env = "QB_LLM_CONTEXT_TOKENS", default_value_t = 32_768, value_parser = clap::value_parser!(u32).range(2..))]
    pub llm_context_tokens: u32,

    /// Requests per minute to the model provider, across every worker
    /// together (unset: unlimited).
    #[arg(long, env = "QB_LLM_REQUESTS_PER_MINUTE", value_parser = clap::value_parser!(u32).range(1..))]
    pub llm_requests_per_minute: Option<u32>,

    /// Tokens (prompt and reply, as the provider counts them) per minute
    /// to the model provider, across every worker together (unset:
    /// unlimited).
    #[arg(long, env = "QB_LLM_TOKENS_PER_MINUTE", value_parser = clap::value_parser!(u32).range(1..))]
    pub llm_tokens_per_minute: Option<u32>,

    /// Fallback model endpoints, tried in order when the primary keeps
    /// failing or is paused past `QB_LLM_FALLBACK_AFTER_PAUSE_MS`: a JSON
    /// array of `{"name", "base_url", "model", "api_key"?, "api_key_env"?,
    /// "requests_per_minute"?, "tokens_per_minute"?}` (OpenAI-compatible
    /// servers; `api_key_env` names the variable holding the key).
    #[arg(long, env = "QB_LLM_FALLBACKS", hide_env_values = true)]
    pub llm_fallbacks: Option<String>,

    /// Failed attempts in a row after which a model endpoint is left alone
    /// (its calls go to the next) for `QB_LLM_FALLBACK_COOLDOWN_MS`.
    #[arg(long, env = "QB_LLM_FALLBACK_AFTER_FAILURES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub llm_fallback_after_failures: u32,

    /// A pause a provider asks for longer than this hands the call to the
    /// next endpoint at once.
    #[arg(long, env = "QB_LLM_FALLBACK_AFTER_PAUSE_MS", default_value_t = 10_000)]
    pub llm_fallback_after_pause_ms: u64,

    /// How long a failing endpoint is left alone.
    #[arg(long, env = "QB_LLM_FALLBACK_COOLDOWN_MS", default_value_t = 60_000)]
    pub llm_fallback_cooldown_ms: u64,

    /// Turns one user may submit per minute, across sessions (0: no
    /// limit). Operators may override it at run time (`/api/admin/quotas`).
    #[arg(long, env = "QB_USER_TURNS_PER_MINUTE", default_value_t = 60)]
    pub user_turns_per_minute: u64,

    /// Turns waiting or running in one session (0: no limit).
    #[arg(long, env = "QB_SESSION_MAX_QUEUED_TURNS", default_value_t = 100)]
    pub session_max_queued_turns: u64,

    /// Generated images and narrations one user may ask for per hour,
    /// including those a reply to their turn asks for (0: no limit).
    #[arg(long, env = "QB_USER_MEDIA_PER_HOUR", default_value_t = 120)]
    pub user_media_per_hour: u64,

    /// Sessions one user may create per day (0: no limit).
    #[arg(long, env = "QB_USER_SESSIONS_PER_DAY", default_value_t = 50)]
    pub user_sessions_per_day: u64,

    /// Open invites (not used, revoked or expired) per session (0: no
    /// limit).
    #[arg(long, env = "QB_SESSION_MAX_INVITES", default_value_t = 100)]
    pub session_max_invites: u64,

    /// Session sockets one user may hold open at once, across API
    /// processes (0: no limit).
    #[arg(long, env = "QB_USER_MAX_SOCKETS", default_value_t = 20)]
    pub user_max_sockets: u64,

    /// Model tokens one session may spend per UTC day (0: no limit).
    #[arg(long, env = "QB_SESSION_DAILY_TOKENS", default_value_t = 2_000_000)]
    pub session_daily_tokens: u64,

    /// Model tokens one user's turns may spend per UTC day (0: no limit).
    #[arg(long, env = "QB_USER_DAILY_TOKENS", default_value_t = 5_000_000)]
    pub user_daily_tokens: u64,

    /// Requests per minute to the media provider (images, narration),
    /// across every worker together (unset: unlimited).
    #[arg(long, env = "QB_MEDIA_REQUESTS_PER_MINUTE", value_parser = clap::value_parser!(u32).range(1..))]
    pub media_requests_per_minute: Option<u32>,

    /// Earlier exchanges included in a turn's prompt.
    #[arg(long, env = "QB_LLM_HISTORY_TURNS", default_value_t = 20)]
    pub llm_history_turns: u32,

    /// The game master's system prompt.
    #[arg(
        long,
        env = "QB_LLM_SYSTEM_PROMPT",
        default_value = "You are the game master of a tabletop role-playing campaign. Answer the players' last turn in character, vividly and briefly, and end by inviting their next move."
    )]
    pub llm_system_prompt: String,

    /// Who makes images and narration: `builtin` (offline) or `openai`.
    #[arg(long, env = "QB_MEDIA_PROVIDER", value_enum, default_value = "builtin")]
    pub media_provider: MediaProviderKind,

    /// Base URL of the OpenAI-compatible media API (default: `QB_LLM_BASE_URL`).
    #[arg(long, env = "QB_MEDIA_BASE_URL")]
    pub media_base_url: Option<String>,

    /// Bearer key of the media API (default: `QB_LLM_API_KEY`).
    #[arg(long, env = "QB_MEDIA_API_KEY", hide_env_values = true)]
    pub media_api_key: Option<Secret>,

    /// Image model.
    #[arg(long, env = "QB_MEDIA_IMAGE_MODEL", default_value = "gpt-image-1")]
    pub media_image_model: String,

    /// Speech model.
    #[arg(long, env = "QB_MEDIA_SPEECH_MODEL", default_value = "tts-1")]
    pub media_speech_model: String,

    /// Longest a media provider call may take, in milliseconds.
    #[arg(long, env = "QB_MEDIA_TIMEOUT_MS", default_value_t = 120_000)]
    pub media_timeout_ms: u64,
}

/// Who makes images and narration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MediaProviderKind {
    /// Built in, offline, deterministic (a PNG and a WAV from the prompt).
    Builtin,
    /// An OpenAI-compatible server's `/images/generations` and `/audio/speech`.
    Openai,
}

/// Which model provider plays the game master.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LlmProvider {
    /// The built-in deterministic game master.
    Scripted,
    /// An OpenAI-compatible chat-completions server.
    Openai,
}

/// The Postgres URL every role but `dev` uses when `DATABASE_URL` is unset.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/questboard";

impl Config {
    /// `DATABASE_URL`, else [`DEFAULT_DATABASE_URL`].
    pub fn database_url(&self) -> &str {
        self.database_url
            .as_ref()
            .map_or(DEFAULT_DATABASE_URL, Secret::expose)
    }

    /// The fallback endpoints of `QB_LLM_FALLBACKS`, checked: names of
    /// 1 to 32 lowercase letters, digits, `-` or `_`, unique and not a
    /// primary's (`openai`, `scripted`); http(s) base URLs; keys from
    /// `api_key_env` read now.
    pub fn llm_fallbacks(&self) -> anyhow::Result<Vec<FallbackEndpoint>> {
        let Some(raw) = self
            .llm_fallbacks
            .as_deref()
            .filter(|r| !r.trim().is_empty())
        else {
            return Ok(Vec::new());
        };
        let mut list: Vec<FallbackEndpoint> = serde_json::from_str(raw).map_err(|e| {
            anyhow::anyhow!("QB_LLM_FALLBACKS is not a JSON array of endpoints: {e}")
        })?;
        let mut seen = std::collections::HashSet::new();
        for endpoint in &mut list {
            let name = endpoint.name.as_str();
            let valid = (1..=32).contains(&name.len())
                && name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !valid || ["openai", "scripted"].contains(&name) || !seen.insert(name.to_owned()) {
                anyhow::bail!(
                    "QB_LLM_FALLBACKS: {name:?} is not a valid endpoint name (1 to 32 of a-z, 0-9, - and _, unique, not openai or scripted)"
                );
            }
            if !(endpoint.base_url.starts_with("http://")
                || endpoint.base_url.starts_with("https://"))
            {
                anyhow::bail!("QB_LLM_FALLBACKS: {name}'s base_url must be an http(s) URL");
            }
            if let Some(var) = &endpoint.api_key_env {
                let key = std::env::var(var).map_err(|_| {
                    anyhow::anyhow!(
                        "QB_LLM_FALLBACKS: {name}'s api_key_env names {var}, which is not set"
                    )
                })?;
                endpoint.api_key = Some(key);
            }
        }
        Ok(list)
    }

    /// Members' quotas and budgets as the environment sets them (the
    /// defaults operators may override).
    pub fn quota_defaults(&self) -> questboard_core::quotas::Values {
        use questboard_core::quotas::{Quota, Values};
        let mut values = Values::default();
        for (quota, value) in [
            (Quota::UserTurnsPerMinute, self.user_turns_per_minute),
            (Quota::SessionMaxQueuedTurns, self.session_max_queued_turns),
            (Quota::UserMediaPerHour, self.user_media_per_hour),
            (Quota::UserSessionsPerDay, self.user_sessions_per_day),
            (Quota::SessionMaxInvites, self.session_max_invites),
            (Quota::UserMaxSockets, self.user_max_sockets),
            (Quota::SessionDailyTokens, self.session_daily_tokens),
            (Quota::UserDailyTokens, self.user_daily_tokens),
        ] {
            values.set(quota, value);
        }
        values
    }

    /// What a turn's prompt may hold: `QB_LLM_CONTEXT_TOKENS`, less
    /// `QB_LLM_MAX_TOKENS` for the reply, which must leave room.
    pub fn context_budget(&self) -> anyhow::Result<questboard_workers::providers::ContextBudget> {
        if self.llm_context_tokens <= self.llm_max_tokens {
            anyhow::bail!(
                "QB_LLM_CONTEXT_TOKENS ({}) must be larger than QB_LLM_MAX_TOKENS ({}): \
                 the reply needs its share of the context and the prompt the rest",
                self.llm_context_tokens,
                self.llm_max_tokens
            );
        }
        Ok(questboard_workers::providers::ContextBudget {
            context_tokens: u64::from(self.llm_context_tokens),
            max_tokens: u64::from(self.llm_max_tokens),
        })
    }

    /// The bus of a process that shares it with others: Redis at
    /// `REDIS_URL`, which `serve`, `work` and `schedule` cannot run
    /// without (see [`questboard_core::bus`]).
    pub fn shared_bus(&self) -> anyhow::Result<questboard_core::bus::Bus> {
        let Some(url) = &self.redis_url else {
            anyhow::bail!(
                "REDIS_URL is not set. `serve`, `work` and `schedule` are separate processes and \
                 reach each other through Redis (session events to every API process, wake-ups \
                 and cancellations to workers); only `questboard dev`, which runs them all in one \
                 process, can do without it"
            );
        };
        let client = redis::Client::open(url.expose()).context("REDIS_URL")?;
        questboard_core::bus::Bus::redis(client).context("REDIS_URL")
    }

    /// The bus of `questboard dev`: Redis at `REDIS_URL` when set, else
    /// one inside this process.
    pub fn dev_bus(&self) -> anyhow::Result<questboard_core::bus::Bus> {
        if self.redis_url.is_some() {
            return self.shared_bus();
        }
        tracing::info!("REDIS_URL unset: using the in-process bus (one process only)");
        Ok(questboard_core::bus::Bus::in_process())
    }

    /// The allowlist of `QB_MIGRATION_SOURCES`.
    pub fn source_allowlist(&self) -> anyhow::Result<questboard_core::sources::Allowlist> {
        questboard_core::sources::Allowlist::parse(&self.migration_sources)
            .map_err(anyhow::Error::msg)
    }

    /// The origins of `QB_TABLE_FRAME_ANCESTORS`, checked: each must be an
    /// `http(s)://host[:port]` origin and nothing more (no path, no
    /// wildcard), since it goes into the pages' Content-Security-Policy.
    pub fn table_frame_ancestors(&self) -> anyhow::Result<Vec<String>> {
        self.table_frame_ancestors
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(|raw| {
                let origin = crate::http::pages::origin_of(raw);
                match origin {
                    Some(o) if o == raw.trim_end_matches('/') => Ok(o),
                    _ => Err(anyhow::anyhow!(
                        "QB_TABLE_FRAME_ANCESTORS: {raw:?} is not an origin (https://host[:port])"
                    )),
                }
            })
            .collect()
    }

    /// How large a game state and one update to it may be.
    pub fn state_limits(&self) -> questboard_core::state::Limits {
        questboard_core::state::Limits {
            max_bytes: self.state_max_bytes,
            max_update_bytes: self.state_max_update_bytes,
        }
    }

    /// The configuration from the environment alone (no command line), as
    /// tests and embedders use it.
    pub fn from_env() -> Result<Self, clap::Error> {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            config: Config,
        }
        <Only as clap::Parser>::try_parse_from(["questboard"]).map(|o| o.config)
    }
}

/// A fallback model endpoint of `QB_LLM_FALLBACKS`.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackEndpoint {
    /// Its name in usage, metrics and limits.
    pub name: String,
    /// The OpenAI-compatible base URL.
    pub base_url: String,
    /// The model it asks.
    pub model: String,
    /// Its key.
    #[serde(default)]
    pub api_key: Option<String>,
    /// The variable holding its key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Its requests per minute across every worker.
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    /// Its tokens per minute across every worker.
    #[serde(default)]
    pub tokens_per_minute: Option<u32>,
}

impl std::fmt::Debug for FallbackEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackEndpoint")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("requests_per_minute", &self.requests_per_minute)
            .field("tokens_per_minute", &self.tokens_per_minute)
            .finish()
    }
}
