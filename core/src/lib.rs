//! # questboard-core
//!
//! The domain and infrastructure that questboard's API and its workers share.
//! Nothing in here knows about HTTP; the API (`questboard`) and the workers
//! call these typed functions, and SQL for each table lives in exactly one
//! module.
//!
//! Map of the crate:
//!
//! - [`db`]: connecting to Postgres and applying the migrations in `migrations/`.
//! - [`identity`]: the user id every request and membership is keyed by.
//! - [`sessions`]: campaign sessions, their members and roles (`campaign_sessions`,
//!   `campaign_session_members`).
//! - [`invites`]: one-time invite tokens, stored only as hashes
//!   (`campaign_session_invites`).
//! - [`turns`]: player turns, their numbering and idempotency, the
//!   runnable-session index, and the fenced writes workers make (`turns`,
//!   `session_queue`).
//! - [`jobs`]: the job contract ([`jobs::Job`], [`jobs::JobSpec`]) and
//!   durable job rows in apalis-postgres's `apalis.jobs`: enqueue in the
//!   caller's transaction, unique keys, status; the plain lane's claim,
//!   settle and rescue ([`jobs::plain`]); operators' controls
//!   ([`jobs::control`]).
//! - [`schedule`]: the cron scheduler's state: last tick per entry, fired
//!   under the leader lease.
//! - [`leases`]: time-bounded, fenced ownership of a key (a session, a
//!   job's run, a singleton role through [`leases::Leadership`]) on the
//!   database clock (`leases`).
//! - [`bus`]: publish/subscribe between processes (Redis) or inside one
//!   (`questboard dev`); every message on it is a hint over Postgres.
//! - [`events`]: the durable per-session event log, publishing it on the
//!   bus, and the relay for what missed it (`session_events`).
//! - [`wakeups`]: waking idle workers through the bus when jobs are enqueued.
//! - [`heartbeats`]: which worker processes are alive and what they run,
//!   for operators (`worker_heartbeats`).
//! - [`audit`]: the operators' audit log (`operator_audit`).
//! - [`state`]: each session's versioned game state and the game master's
//!   operations on it (`game_states`, `game_state_requests`).
//! - [`storage`]: the one abstraction over `object_store` for campaign files,
//!   with a per-session prefix and validated paths.
//! - [`media`]: campaign media (generated, uploaded, migrated) and who may
//!   see them (`campaign_media`, `campaign_media_versions`).
//! - [`asset_migration`]: moving maps and notes out of the old campaign
//!   service's database into storage, resumably and reversibly
//!   (`asset_migration_runs`, `asset_migration_items`).
//! - [`legacy_import`]: campaigns from the old app's folder layout made
//!   sessions, their files copied by documented rules, what cannot be
//!   decided reported (`legacy_import_runs`, `legacy_campaigns`,
//!   `legacy_files`, `legacy_import_problems`).
//! - [`operator_run`]: what every operator run (migration, import) has:
//!   its row's common columns, enqueueing its job once, its end and report,
//!   the summary operators see, and the CSV reader of mapping files.
//! - [`sources`]: where operators may point migrations and imports (the
//!   `QB_MIGRATION_SOURCES` allowlist), with bounded connections and
//!   stable error codes.
//! - [`provider_limits`]: requests and tokens per minute against a
//!   provider, shared by every worker, and the pauses a provider asks for
//!   (`provider_limits`).
//! - [`quotas`]: members' quotas and budgets (turns, queued turns, media,
//!   sessions, invites, sockets, daily tokens), their defaults and the
//!   operators' overrides (`quota_settings`, `quota_buckets`,
//!   `live_sockets`).
//! - [`usage`]: what the providers were paid for: each turn's token counts
//!   and the sums per day, session, user and model (`usage_daily`).
//! - [`metrics`]: the name, unit and help text of every metric questboard emits.

pub mod asset_migration;
pub mod audit;
pub mod bus;
pub mod db;
pub mod events;
pub mod heartbeats;
pub mod identity;
pub mod invites;
pub mod jobs;
pub mod leases;
pub mod legacy_import;
pub mod media;
pub mod metrics;
pub mod operator_run;
pub mod provider_limits;
pub mod quotas;
pub mod schedule;
pub mod sessions;
pub mod sources;
pub mod state;
pub mod storage;
pub mod text;
pub mod turns;
pub mod usage;
pub mod wakeups;
