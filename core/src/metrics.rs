//! Every metric questboard emits, declared once with its unit and help text.
//!
//! Code records metrics through these constants so a name cannot drift
//! between the code, the dashboards in `dashboards/` and the alert rules.
//! Names follow Prometheus conventions: a `questboard_` prefix, `_total` for
//! counters, `_seconds` for durations.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// HTTP requests served, by `method`, matched `route` and `status`.
pub const HTTP_REQUESTS_TOTAL: &str = "questboard_http_requests_total";
/// HTTP request latency, by `method`, matched `route` and `status_class`
/// (`2xx` ... `5xx`: statuses would multiply its buckets).
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "questboard_http_request_duration_seconds";
/// HTTP requests being served right now.
pub const HTTP_REQUESTS_IN_FLIGHT: &str = "questboard_http_requests_in_flight";
/// Connections closed at accept because `QB_HTTP_MAX_CONNECTIONS` were open.
pub const HTTP_CONNECTIONS_REFUSED_TOTAL: &str = "questboard_http_connections_refused_total";
/// Bearer tokens refused, by `reason`.
pub const AUTH_FAILURES_TOTAL: &str = "questboard_auth_failures_total";
/// JWKS fetches, by `outcome` (`ok`, `error`).
pub const JWKS_REFRESHES_TOTAL: &str = "questboard_jwks_refreshes_total";
/// Campaign sessions created.
pub const SESSIONS_CREATED_TOTAL: &str = "questboard_sessions_created_total";
/// Game-state updates applied, by `source` (`gm`, `system`).
pub const STATE_UPDATES_TOTAL: &str = "questboard_state_updates_total";
/// What became of the state changes and images AI replies asked for
/// outside `apply`, by `outcome` (`held`, `approved`, `rejected`,
/// `refused`).
pub const STATE_PROPOSALS_TOTAL: &str = "questboard_state_proposals_total";
/// Invites created.
pub const INVITES_CREATED_TOTAL: &str = "questboard_invites_created_total";
/// Invite acceptances, by `outcome` (`joined`, `already_member`, `not_found`,
/// `invite_used_up`, `invite_expired`, `invite_revoked`, `session_archived`).
pub const INVITE_ACCEPTS_TOTAL: &str = "questboard_invite_accepts_total";
/// Readiness checks, by `dependency` (`postgres`, `redis`) and `outcome`.
pub const READINESS_CHECKS_TOTAL: &str = "questboard_readiness_checks_total";
/// Process start time, seconds since the Unix epoch.
pub const PROCESS_START_TIME_SECONDS: &str = "questboard_process_start_time_seconds";
/// Turns submitted, by `outcome` (`created`, `replayed`).
pub const TURNS_SUBMITTED_TOTAL: &str = "questboard_turns_submitted_total";
/// Jobs enqueued, by `kind`.
pub const JOBS_ENQUEUED_TOTAL: &str = "questboard_jobs_enqueued_total";
/// Job runs started, by `kind`.
pub const JOBS_STARTED_TOTAL: &str = "questboard_jobs_started_total";
/// Jobs finished successfully, by `kind`.
pub const JOBS_SUCCEEDED_TOTAL: &str = "questboard_jobs_succeeded_total";
/// Jobs failed for good, by `kind`.
pub const JOBS_FAILED_TOTAL: &str = "questboard_jobs_failed_total";
/// Job runs failed and rescheduled, by `kind`.
pub const JOBS_RETRIED_TOTAL: &str = "questboard_jobs_retried_total";
/// Job runs handed back at shutdown, by `kind`.
pub const JOBS_HANDED_BACK_TOTAL: &str = "questboard_jobs_handed_back_total";
/// Time a job run took, by `kind` and `outcome`.
pub const JOB_RUN_SECONDS: &str = "questboard_job_run_seconds";
/// Time a job run waited after it became due (its scheduled time, or its
/// retry's), by `kind`.
pub const JOB_QUEUE_WAIT_SECONDS: &str = "questboard_job_queue_wait_seconds";
/// Job runs stopped at an operator's request, by `kind`.
pub const JOBS_CANCELLED_TOTAL: &str = "questboard_jobs_cancelled_total";
/// Job runs stopped for outliving their kind's timeout, by `kind`.
pub const JOBS_TIMED_OUT_TOTAL: &str = "questboard_jobs_timed_out_total";
/// Running jobs moved back in line because their worker stopped renewing the lease, by `kind`.
pub const JOBS_RESCUED_TOTAL: &str = "questboard_jobs_rescued_total";
/// Items long jobs reported done (progress), by `kind`.
pub const JOB_ITEMS_TOTAL: &str = "questboard_job_items_total";
/// The last reported share done of a long job, by `kind` (0 to 1).
pub const JOB_PROGRESS_RATIO: &str = "questboard_job_progress_ratio";
/// Unfinished jobs, by `kind` and `state` (`queued`, `running`, `retrying`); sampled.
pub const QUEUE_DEPTH: &str = "questboard_queue_depth";
/// Jobs failed for good or cancelled and not pruned yet, by `kind` and `state`; sampled.
pub const JOBS_DEAD: &str = "questboard_jobs_dead";
/// How long the oldest job that may run now has waited, by `kind`; sampled.
pub const QUEUE_OLDEST_WAIT_SECONDS: &str = "questboard_queue_oldest_wait_seconds";
/// 1 while a kind is paused by an operator, by `kind`; sampled.
pub const KIND_PAUSED: &str = "questboard_job_kind_paused";
/// Statements that recorded a batch of plain-job outcomes.
pub const COMPLETE_SECONDS: &str = "questboard_complete_seconds";
/// Schedule ticks, by `entry` and `outcome` (`fired`, `caught_up`, `skipped`).
pub const SCHEDULE_TICKS_TOTAL: &str = "questboard_schedule_ticks_total";
/// 1 while this process leads a singleton role, by `scope` (`scheduler`, `relay`).
pub const LEADER: &str = "questboard_leader";
/// Times this process started or stopped leading, by `scope`.
pub const LEADER_CHANGES_TOTAL: &str = "questboard_leader_changes_total";
/// Lease acquisition attempts, by `scope` and `outcome` (`acquired`, `busy`, `taken_over`).
pub const LEASE_ACQUISITIONS_TOTAL: &str = "questboard_lease_acquisitions_total";
/// How long leases were held, by `scope`.
pub const LEASE_HOLD_SECONDS: &str = "questboard_lease_hold_seconds";
/// Leases lost while held (renewal failed), by `scope`.
pub const LEASES_LOST_TOTAL: &str = "questboard_leases_lost_total";
/// Writes refused by the fencing check, by `scope`.
pub const FENCING_REJECTIONS_TOTAL: &str = "questboard_fencing_rejections_total";
/// Model provider call latency, by `provider` and `outcome` (`ok`, `retryable`, `fatal`).
pub const PROVIDER_REQUEST_SECONDS: &str = "questboard_provider_request_seconds";
/// Model provider errors, by `provider` and `kind` (`retryable`, `fatal`).
pub const PROVIDER_ERRORS_TOTAL: &str = "questboard_provider_errors_total";
/// Tokens the model providers counted for completed replies, by
/// `provider`, `model` and `kind` (`prompt`, `completion`).
pub const MODEL_TOKENS_TOTAL: &str = "questboard_model_tokens_total";
/// Generated media units, by `provider`, `model` and `unit` (`images`,
/// `speech_characters`).
pub const MEDIA_UNITS_TOTAL: &str = "questboard_media_units_total";
/// Time a call waited for its provider's limits (and pauses), by
/// `provider`.
pub const LIMITER_WAIT_SECONDS: &str = "questboard_limiter_wait_seconds";
/// Pauses a provider asked for (429 or 503 with a time to wait), by
/// `provider`.
pub const PROVIDER_PAUSES_TOTAL: &str = "questboard_provider_pauses_total";
/// Requests members' quotas and budgets refused, by `quota`.
pub const QUOTA_REFUSALS_TOTAL: &str = "questboard_quota_refusals_total";
/// Turns accepted from a session or user past 80 % of its daily token
/// budget, by `scope` (`session`, `user`).
pub const BUDGET_WARNINGS_TOTAL: &str = "questboard_budget_warnings_total";
/// Images a reply asked for and did not get because its author's media
/// quota was spent.
pub const MEDIA_SKIPPED_TOTAL: &str = "questboard_media_skipped_total";
/// Reply chunks streamed out of providers.
pub const TURN_CHUNKS_TOTAL: &str = "questboard_turn_chunks_total";
/// Worker slots busy right now, by `kind` (for turns: sessions).
pub const WORKER_BUSY_SLOTS: &str = "questboard_worker_busy_slots";
/// Statements that applied a batch of turn steps (one worker's group commit).
pub const COMMIT_SECONDS: &str = "questboard_commit_seconds";
/// Steps (sessions) per group-commit statement.
pub const COMMIT_BATCH_STEPS: &str = "questboard_commit_batch_steps";
/// Session events published on Redis, by `path` (`direct`, `relay`).
pub const EVENTS_PUBLISHED_TOTAL: &str = "questboard_events_published_total";
/// Failed attempts to publish a batch of events (left to the relay).
pub const EVENTS_PUBLISH_FAILURES_TOTAL: &str = "questboard_events_publish_failures_total";
/// Committed events the relay found still unpublished after its grace period (sampled each pass).
pub const RELAY_BACKLOG: &str = "questboard_relay_backlog";
/// Open WebSocket connections.
pub const WS_CONNECTIONS: &str = "questboard_ws_connections";
/// Live session events delivered to WebSocket clients.
pub const EVENTS_DELIVERED_TOTAL: &str = "questboard_events_delivered_total";
/// Session events replayed to clients from Postgres, by `reason` (`resume`, `gap`, `resync`, `rest`).
pub const EVENTS_REPLAYED_TOTAL: &str = "questboard_events_replayed_total";
/// Reply chunks delivered to WebSocket clients.
pub const DELTAS_DELIVERED_TOTAL: &str = "questboard_deltas_delivered_total";
/// Time from an event's commit to its delivery on a socket.
pub const EVENT_DELIVERY_LAG_SECONDS: &str = "questboard_event_delivery_lag_seconds";
/// WebSocket clients closed by the server, by `reason` (`slow_consumer`, `removed`, `ping_timeout`).
pub const WS_CLOSED_TOTAL: &str = "questboard_ws_closed_by_server_total";
/// Reconnections of the Redis pub/sub bridge.
pub const REDIS_RECONNECTS_TOTAL: &str = "questboard_redis_reconnects_total";
/// Storage operations on media, by `operation` (`upload`, `read`) and
/// `backend` (`local`, `memory`, `s3`, `gcs`).
pub const STORAGE_OPERATION_SECONDS: &str = "questboard_storage_operation_seconds";
/// Media generation jobs finished, by `kind` (`image`, `audio`) and
/// `outcome` (`ready`, `retried`, `failed`).
pub const MEDIA_JOBS_TOTAL: &str = "questboard_media_jobs_total";
/// Media provider call latency, by `kind`, `provider` and `outcome`.
pub const MEDIA_PROVIDER_SECONDS: &str = "questboard_media_provider_seconds";
/// Storage operations on media that failed in the backend, by `operation`
/// and `backend`.
pub const STORAGE_ERRORS_TOTAL: &str = "questboard_storage_errors_total";
/// Bytes of media uploaded, by `kind`.
pub const MEDIA_UPLOADED_BYTES_TOTAL: &str = "questboard_media_uploaded_bytes_total";
/// Bytes of media served, by `kind`.
pub const MEDIA_SERVED_BYTES_TOTAL: &str = "questboard_media_served_bytes_total";
/// Assets an asset migration handled, by `kind` (map, note) and `outcome`
/// (migrated, failed, validated, rolled_back).
pub const MIGRATION_ASSETS_TOTAL: &str = "questboard_migration_assets_total";
/// Bytes an asset migration moved to storage, by `kind`.
pub const MIGRATION_BYTES_TOTAL: &str = "questboard_migration_bytes_total";
/// Asset migration runs that ended, by `outcome` (completed, aborted,
/// failed, rolled_back).
pub const MIGRATION_RUNS_TOTAL: &str = "questboard_migration_runs_total";
/// Files a legacy layout import handled, by `area` (logs, data, images,
/// audio) and `outcome` (copied, validated, unreadable, oversized,
/// collision).
pub const LEGACY_IMPORT_FILES_TOTAL: &str = "questboard_legacy_import_files_total";
/// Bytes a legacy layout import copied to storage, by `area`.
pub const LEGACY_IMPORT_BYTES_TOTAL: &str = "questboard_legacy_import_bytes_total";
/// Legacy folders an import looked at, by `outcome` (imported, validated,
/// already_imported, unowned, duplicate, skipped, not_campaign).
pub const LEGACY_IMPORT_FOLDERS_TOTAL: &str = "questboard_legacy_import_folders_total";
/// Legacy import runs that ended, by `outcome` (completed, failed).
pub const LEGACY_IMPORT_RUNS_TOTAL: &str = "questboard_legacy_import_runs_total";
/// Requests to the legacy path shim (`/api/legacy/...`), by `env` (of an
/// imported folder; `unknown` otherwise) and `outcome` (served, not_found).
pub const LEGACY_SHIM_REQUESTS_TOTAL: &str = "questboard_legacy_shim_requests_total";

/// Every metric name above, for checks that dashboards and alerts use only
/// names that exist.
pub const ALL: &[&str] = &[
    HTTP_REQUESTS_TOTAL,
    HTTP_REQUEST_DURATION_SECONDS,
    HTTP_REQUESTS_IN_FLIGHT,
    HTTP_CONNECTIONS_REFUSED_TOTAL,
    AUTH_FAILURES_TOTAL,
    JWKS_REFRESHES_TOTAL,
    SESSIONS_CREATED_TOTAL,
    STATE_UPDATES_TOTAL,
    STATE_PROPOSALS_TOTAL,
    INVITES_CREATED_TOTAL,
    INVITE_ACCEPTS_TOTAL,
    READINESS_CHECKS_TOTAL,
    PROCESS_START_TIME_SECONDS,
    TURNS_SUBMITTED_TOTAL,
    JOBS_ENQUEUED_TOTAL,
    JOBS_STARTED_TOTAL,
    JOBS_SUCCEEDED_TOTAL,
    JOBS_FAILED_TOTAL,
    JOBS_RETRIED_TOTAL,
    JOBS_HANDED_BACK_TOTAL,
    JOB_RUN_SECONDS,
    JOB_QUEUE_WAIT_SECONDS,
    JOBS_CANCELLED_TOTAL,
    JOBS_TIMED_OUT_TOTAL,
    JOBS_RESCUED_TOTAL,
    JOB_ITEMS_TOTAL,
    JOB_PROGRESS_RATIO,
    QUEUE_DEPTH,
    JOBS_DEAD,
    QUEUE_OLDEST_WAIT_SECONDS,
    KIND_PAUSED,
    COMPLETE_SECONDS,
    SCHEDULE_TICKS_TOTAL,
    LEADER,
    LEADER_CHANGES_TOTAL,
    LEASE_ACQUISITIONS_TOTAL,
    LEASE_HOLD_SECONDS,
    LEASES_LOST_TOTAL,
    FENCING_REJECTIONS_TOTAL,
    PROVIDER_REQUEST_SECONDS,
    PROVIDER_ERRORS_TOTAL,
    MODEL_TOKENS_TOTAL,
    MEDIA_UNITS_TOTAL,
    LIMITER_WAIT_SECONDS,
    PROVIDER_PAUSES_TOTAL,
    QUOTA_REFUSALS_TOTAL,
    BUDGET_WARNINGS_TOTAL,
    MEDIA_SKIPPED_TOTAL,
    TURN_CHUNKS_TOTAL,
    WORKER_BUSY_SLOTS,
    COMMIT_SECONDS,
    COMMIT_BATCH_STEPS,
    EVENTS_PUBLISHED_TOTAL,
    EVENTS_PUBLISH_FAILURES_TOTAL,
    RELAY_BACKLOG,
    WS_CONNECTIONS,
    EVENTS_DELIVERED_TOTAL,
    EVENTS_REPLAYED_TOTAL,
    DELTAS_DELIVERED_TOTAL,
    EVENT_DELIVERY_LAG_SECONDS,
    WS_CLOSED_TOTAL,
    REDIS_RECONNECTS_TOTAL,
    STORAGE_OPERATION_SECONDS,
    STORAGE_ERRORS_TOTAL,
    MEDIA_JOBS_TOTAL,
    MEDIA_PROVIDER_SECONDS,
    MEDIA_UPLOADED_BYTES_TOTAL,
    MEDIA_SERVED_BYTES_TOTAL,
    MIGRATION_ASSETS_TOTAL,
    MIGRATION_BYTES_TOTAL,
    MIGRATION_RUNS_TOTAL,
    LEGACY_IMPORT_FILES_TOTAL,
    LEGACY_IMPORT_BYTES_TOTAL,
    LEGACY_IMPORT_FOLDERS_TOTAL,
    LEGACY_IMPORT_RUNS_TOTAL,
    LEGACY_SHIM_REQUESTS_TOTAL,
];

/// Registers the help text and unit of every metric with the installed
/// recorder. Call once per process after installing the recorder.
pub fn describe() {
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "HTTP requests served, by method, matched route and status."
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "HTTP request latency, by method, matched route and status class."
    );
    describe_gauge!(
        HTTP_REQUESTS_IN_FLIGHT,
        "HTTP requests being served right now."
    );
    describe_counter!(
        HTTP_CONNECTIONS_REFUSED_TOTAL,
        "Connections closed at accept because the connection cap was reached."
    );
    describe_counter!(AUTH_FAILURES_TOTAL, "Bearer tokens refused, by reason.");
    describe_counter!(JWKS_REFRESHES_TOTAL, "JWKS fetches, by outcome.");
    describe_counter!(SESSIONS_CREATED_TOTAL, "Campaign sessions created.");
    describe_counter!(
        STATE_UPDATES_TOTAL,
        "Game-state updates applied, by source."
    );
    describe_counter!(
        STATE_PROPOSALS_TOTAL,
        "What became of the changes AI replies asked for outside apply, by outcome."
    );
    describe_counter!(INVITES_CREATED_TOTAL, "Invites created.");
    describe_counter!(INVITE_ACCEPTS_TOTAL, "Invite acceptances, by outcome.");
    describe_counter!(
        READINESS_CHECKS_TOTAL,
        "Readiness checks, by dependency and outcome."
    );
    describe_counter!(
        TURNS_SUBMITTED_TOTAL,
        "Turns submitted, by outcome (created, replayed)."
    );
    describe_counter!(JOBS_ENQUEUED_TOTAL, "Jobs enqueued, by kind.");
    describe_counter!(JOBS_STARTED_TOTAL, "Job runs started, by kind.");
    describe_counter!(JOBS_SUCCEEDED_TOTAL, "Jobs finished successfully, by kind.");
    describe_counter!(JOBS_FAILED_TOTAL, "Jobs failed for good, by kind.");
    describe_counter!(
        JOBS_RETRIED_TOTAL,
        "Job runs failed and rescheduled with backoff, by kind."
    );
    describe_counter!(
        JOBS_HANDED_BACK_TOTAL,
        "Job runs handed back at worker shutdown, by kind."
    );
    describe_histogram!(
        JOB_RUN_SECONDS,
        Unit::Seconds,
        "Job run time, by kind and outcome."
    );
    describe_histogram!(
        JOB_QUEUE_WAIT_SECONDS,
        Unit::Seconds,
        "Time a job run waited after it became due (scheduled or retry time), by kind."
    );
    describe_counter!(
        JOBS_CANCELLED_TOTAL,
        "Job runs stopped at an operator's request, by kind."
    );
    describe_counter!(
        JOBS_TIMED_OUT_TOTAL,
        "Job runs stopped for outliving their kind's timeout, by kind."
    );
    describe_counter!(
        JOBS_RESCUED_TOTAL,
        "Running jobs moved back in line because their worker stopped renewing the lease, by kind."
    );
    describe_counter!(
        JOB_ITEMS_TOTAL,
        "Items long jobs reported done in their progress, by kind."
    );
    describe_gauge!(
        JOB_PROGRESS_RATIO,
        "Share done last reported by a long job, by kind (0 to 1)."
    );
    describe_gauge!(
        QUEUE_DEPTH,
        "Unfinished jobs, by kind and state (queued, running, retrying), sampled."
    );
    describe_gauge!(
        JOBS_DEAD,
        "Jobs failed for good or cancelled and not pruned yet, by kind and state, sampled."
    );
    describe_gauge!(
        QUEUE_OLDEST_WAIT_SECONDS,
        Unit::Seconds,
        "How long the oldest job that may run now has waited, by kind, sampled."
    );
    describe_gauge!(KIND_PAUSED, "1 while a job kind is paused by an operator.");
    describe_histogram!(
        COMPLETE_SECONDS,
        Unit::Seconds,
        "Time of one statement recording a batch of plain-job outcomes."
    );
    describe_counter!(
        SCHEDULE_TICKS_TOTAL,
        "Schedule ticks, by entry and outcome (fired, caught_up, skipped)."
    );
    describe_gauge!(
        LEADER,
        "1 while this process leads a singleton role, by scope (scheduler, relay)."
    );
    describe_counter!(
        LEADER_CHANGES_TOTAL,
        "Times this process started or stopped leading a singleton role, by scope."
    );
    describe_counter!(
        LEASE_ACQUISITIONS_TOTAL,
        "Lease acquisition attempts, by scope and outcome."
    );
    describe_histogram!(
        LEASE_HOLD_SECONDS,
        Unit::Seconds,
        "How long leases were held, by scope."
    );
    describe_counter!(LEASES_LOST_TOTAL, "Leases lost while held, by scope.");
    describe_counter!(
        FENCING_REJECTIONS_TOTAL,
        "Writes refused by the fencing check, by scope."
    );
    describe_histogram!(
        PROVIDER_REQUEST_SECONDS,
        Unit::Seconds,
        "Model provider call latency, by provider and outcome."
    );
    describe_counter!(
        PROVIDER_ERRORS_TOTAL,
        "Model provider errors, by provider and kind."
    );
    describe_histogram!(
        LIMITER_WAIT_SECONDS,
        Unit::Seconds,
        "Time a call waited for its provider's limits and pauses, by provider."
    );
    describe_counter!(
        QUOTA_REFUSALS_TOTAL,
        "Requests members' quotas and budgets refused (429), by quota."
    );
    describe_counter!(
        BUDGET_WARNINGS_TOTAL,
        "Turns accepted from a session or user past 80% of its daily token budget, by scope."
    );
    describe_counter!(
        MEDIA_SKIPPED_TOTAL,
        "Images replies asked for and did not get: their authors' media quota was spent."
    );
    describe_counter!(
        PROVIDER_PAUSES_TOTAL,
        "Pauses a provider asked for (429 or 503 with a time to wait), by provider."
    );
    describe_counter!(
        MODEL_TOKENS_TOTAL,
        "Tokens the model providers counted for completed replies, by provider, model and kind."
    );
    describe_counter!(
        MEDIA_UNITS_TOTAL,
        "Generated media units (images, characters of speech), by provider, model and unit."
    );
    describe_counter!(
        TURN_CHUNKS_TOTAL,
        "Reply chunks streamed out of model providers."
    );
    describe_gauge!(
        WORKER_BUSY_SLOTS,
        "Worker slots busy right now, by kind (for turns: sessions being drained)."
    );
    describe_histogram!(
        COMMIT_SECONDS,
        Unit::Seconds,
        "Time of one group-commit statement applying a batch of turn steps."
    );
    describe_histogram!(
        COMMIT_BATCH_STEPS,
        "Turn steps (one per session) applied by one group-commit statement."
    );
    describe_counter!(
        EVENTS_PUBLISHED_TOTAL,
        "Session events published on Redis, by path (direct, relay)."
    );
    describe_counter!(
        EVENTS_PUBLISH_FAILURES_TOTAL,
        "Failed attempts to publish a batch of events (left to the relay)."
    );
    describe_gauge!(
        RELAY_BACKLOG,
        "Committed events still unpublished after the relay's grace period, sampled."
    );
    describe_gauge!(WS_CONNECTIONS, "Open WebSocket connections.");
    describe_counter!(
        EVENTS_DELIVERED_TOTAL,
        "Live session events delivered to WebSocket clients."
    );
    describe_counter!(
        EVENTS_REPLAYED_TOTAL,
        "Session events replayed to clients from Postgres, by reason."
    );
    describe_counter!(
        DELTAS_DELIVERED_TOTAL,
        "Reply chunks delivered to WebSocket clients."
    );
    describe_histogram!(
        EVENT_DELIVERY_LAG_SECONDS,
        Unit::Seconds,
        "Time from an event's commit to its delivery on a socket."
    );
    describe_counter!(
        WS_CLOSED_TOTAL,
        "WebSocket clients closed by the server, by reason."
    );
    describe_counter!(
        REDIS_RECONNECTS_TOTAL,
        "Reconnections of the Redis pub/sub bridge."
    );
    describe_histogram!(
        STORAGE_OPERATION_SECONDS,
        Unit::Seconds,
        "Storage operations on media, by operation and backend."
    );
    describe_counter!(
        STORAGE_ERRORS_TOTAL,
        "Storage operations on media that failed in the backend, by operation and backend."
    );
    describe_counter!(
        MEDIA_JOBS_TOTAL,
        "Media generation jobs finished, by kind and outcome."
    );
    describe_histogram!(
        MEDIA_PROVIDER_SECONDS,
        Unit::Seconds,
        "Media provider call latency, by kind, provider and outcome."
    );
    describe_counter!(
        MEDIA_UPLOADED_BYTES_TOTAL,
        Unit::Bytes,
        "Bytes of media uploaded, by kind."
    );
    describe_counter!(
        MEDIA_SERVED_BYTES_TOTAL,
        Unit::Bytes,
        "Bytes of media served, by kind."
    );
    describe_counter!(
        MIGRATION_ASSETS_TOTAL,
        "Assets an asset migration handled, by kind and outcome."
    );
    describe_counter!(
        MIGRATION_BYTES_TOTAL,
        Unit::Bytes,
        "Bytes an asset migration moved to storage, by kind."
    );
    describe_counter!(
        MIGRATION_RUNS_TOTAL,
        "Asset migration runs that ended, by outcome."
    );
    describe_counter!(
        LEGACY_IMPORT_FILES_TOTAL,
        "Files a legacy layout import handled, by area and outcome."
    );
    describe_counter!(
        LEGACY_IMPORT_BYTES_TOTAL,
        Unit::Bytes,
        "Bytes a legacy layout import copied to storage, by area."
    );
    describe_counter!(
        LEGACY_IMPORT_FOLDERS_TOTAL,
        "Legacy folders an import looked at, by outcome."
    );
    describe_counter!(
        LEGACY_IMPORT_RUNS_TOTAL,
        "Legacy import runs that ended, by outcome."
    );
    describe_counter!(
        LEGACY_SHIM_REQUESTS_TOTAL,
        "Requests to the legacy path shim, by env and outcome."
    );
    describe_gauge!(
        PROCESS_START_TIME_SECONDS,
        Unit::Seconds,
        "Process start time, seconds since the Unix epoch."
    );
}

/// What a process knows at start that counter labels come from.
#[derive(Debug, Clone, Copy, Default)]
pub struct Known<'a> {
    /// The job kinds of its registry.
    pub kinds: &'a [&'a str],
    /// Its storage backend (`local`, `memory`, `s3`, `gcs`).
    pub storage_backend: &'a str,
    /// Its model provider's name.
    pub provider: &'a str,
    /// Its model provider's model.
    pub model: &'a str,
    /// Its media provider's name, and the models it makes images and
    /// narration with.
    pub media: Option<(&'a str, &'a str, &'a str)>,
    /// Its schedule's entries.
    pub schedule_entries: &'a [&'a str],
}

/// Counters of one label set each, by name.
const UNLABELLED: &[&str] = &[
    MEDIA_SKIPPED_TOTAL,
    REDIS_RECONNECTS_TOTAL,
    EVENTS_PUBLISH_FAILURES_TOTAL,
    HTTP_CONNECTIONS_REFUSED_TOTAL,
    SESSIONS_CREATED_TOTAL,
    INVITES_CREATED_TOTAL,
    EVENTS_DELIVERED_TOTAL,
    DELTAS_DELIVERED_TOTAL,
    TURN_CHUNKS_TOTAL,
];

/// Counters with one label of a fixed set of values: (name, label, values).
const FIXED: &[(&str, &str, &[&str])] = &[
    (BUDGET_WARNINGS_TOTAL, "scope", &["session", "user"]),
    (FENCING_REJECTIONS_TOTAL, "scope", &["session", "job"]),
    (LEASES_LOST_TOTAL, "scope", &["session", "job"]),
    (
        MIGRATION_RUNS_TOTAL,
        "outcome",
        &["completed", "aborted", "failed", "rolled_back"],
    ),
    (
        LEGACY_IMPORT_RUNS_TOTAL,
        "outcome",
        &["completed", "failed"],
    ),
    (
        LEGACY_IMPORT_FOLDERS_TOTAL,
        "outcome",
        &[
            "imported",
            "validated",
            "already_imported",
            "unowned",
            "duplicate",
            "skipped",
            "not_campaign",
        ],
    ),
    (STATE_UPDATES_TOTAL, "source", &["gm", "system"]),
    (
        STATE_PROPOSALS_TOTAL,
        "outcome",
        &["held", "approved", "rejected", "refused"],
    ),
    (EVENTS_PUBLISHED_TOTAL, "path", &["direct", "relay"]),
    (
        EVENTS_REPLAYED_TOTAL,
        "reason",
        &["resume", "resync", "gap", "rest"],
    ),
    (JWKS_REFRESHES_TOTAL, "outcome", &["ok", "error"]),
    (MEDIA_UPLOADED_BYTES_TOTAL, "kind", &["map", "note"]),
    (
        MEDIA_SERVED_BYTES_TOTAL,
        "kind",
        &["image", "audio", "map", "note"],
    ),
    (MIGRATION_BYTES_TOTAL, "kind", &["map", "note"]),
    (
        LEGACY_IMPORT_BYTES_TOTAL,
        "area",
        &["logs", "images", "audio", "data"],
    ),
    (TURNS_SUBMITTED_TOTAL, "outcome", &["created", "replayed"]),
    (
        INVITE_ACCEPTS_TOTAL,
        "outcome",
        &[
            "joined",
            "already_member",
            "not_found",
            "invite_used_up",
            "invite_expired",
            "invite_revoked",
            "session_archived",
            "error",
        ],
    ),
];

/// Counters of two labels, every pair of a fixed set: (name, (label,
/// values), (label, values)).
type Pairs = (
    &'static str,
    (&'static str, &'static [&'static str]),
    (&'static str, &'static [&'static str]),
);
const PAIRS: &[Pairs] = &[
    (
        MIGRATION_ASSETS_TOTAL,
        ("kind", &["map", "note"]),
        (
            "outcome",
            &["migrated", "validated", "failed", "rolled_back"],
        ),
    ),
    (
        LEGACY_IMPORT_FILES_TOTAL,
        ("area", &["logs", "images", "audio", "data"]),
        (
            "outcome",
            &[
                "copied",
                "validated",
                "unreadable",
                "oversized",
                "collision",
            ],
        ),
    ),
    (
        MEDIA_JOBS_TOTAL,
        ("kind", &["image", "audio"]),
        ("outcome", &["ready", "failed", "retried"]),
    ),
    (
        LEASE_ACQUISITIONS_TOTAL,
        ("scope", &["session", "job"]),
        ("outcome", &["acquired", "taken_over"]),
    ),
    (
        READINESS_CHECKS_TOTAL,
        ("dependency", &["postgres", "redis", "storage"]),
        ("outcome", &["ok", "error"]),
    ),
    (
        LEGACY_SHIM_REQUESTS_TOTAL,
        ("env", &["unknown"]),
        ("outcome", &["served", "not_found"]),
    ),
];

/// Job counters labelled by kind.
const BY_KIND: &[&str] = &[
    JOBS_ENQUEUED_TOTAL,
    JOBS_STARTED_TOTAL,
    JOBS_SUCCEEDED_TOTAL,
    JOBS_FAILED_TOTAL,
    JOBS_RETRIED_TOTAL,
    JOBS_HANDED_BACK_TOTAL,
    JOBS_CANCELLED_TOTAL,
    JOBS_TIMED_OUT_TOTAL,
    JOBS_RESCUED_TOTAL,
    JOB_ITEMS_TOTAL,
];

/// Storage operations, as `storage_errors_total{operation}` names them.
const STORAGE_OPERATIONS: &[&str] = &["put", "read", "head", "delete", "upload", "upload_begin"];

/// Counts a refusal of `quota` (by name).
pub fn quota_refused(quota: &'static str) {
    metrics::counter!(QUOTA_REFUSALS_TOTAL, "quota" => quota).increment(1);
}

/// Registers, at 0, every counter series whose labels this process knows
/// ahead: Prometheus takes a series' first sample as its baseline, so a
/// counter that first appears at 1 (the first failed import, the first
/// fenced write) shows no `increase()` and the alert written for exactly
/// that event never fires, again after every restart. Counters labelled by
/// what clients send (routes, reasons) are registered where those are
/// known (the API's own list), leader changes where a leadership starts
/// (`leases::Leadership::start`).
pub fn register_known(known: &Known<'_>) {
    for name in UNLABELLED {
        metrics::counter!(*name).increment(0);
    }
    for quota in crate::quotas::Quota::ALL {
        metrics::counter!(QUOTA_REFUSALS_TOTAL, "quota" => quota.name()).increment(0);
    }
    for (name, label, values) in FIXED {
        for value in *values {
            metrics::counter!(*name, *label => *value).increment(0);
        }
    }
    for (name, (first, firsts), (second, seconds)) in PAIRS {
        for a in *firsts {
            for b in *seconds {
                metrics::counter!(*name, *first => *a, *second => *b).increment(0);
            }
        }
    }
    for name in BY_KIND {
        for kind in known.kinds {
            metrics::counter!(*name, "kind" => kind.to_string()).increment(0);
        }
    }
    if !known.storage_backend.is_empty() {
        for operation in STORAGE_OPERATIONS {
            metrics::counter!(STORAGE_ERRORS_TOTAL, "operation" => *operation,
                "backend" => known.storage_backend.to_owned())
            .increment(0);
        }
    }
    if !known.provider.is_empty() {
        for kind in ["retryable", "fatal"] {
            metrics::counter!(PROVIDER_ERRORS_TOTAL, "provider" => known.provider.to_owned(),
                "kind" => kind)
            .increment(0);
        }
        metrics::counter!(PROVIDER_PAUSES_TOTAL, "provider" => known.provider.to_owned())
            .increment(0);
        for kind in ["prompt", "completion"] {
            metrics::counter!(MODEL_TOKENS_TOTAL, "provider" => known.provider.to_owned(),
                "model" => known.model.to_owned(), "kind" => kind)
            .increment(0);
        }
    }
    if let Some((provider, image_model, speech_model)) = known.media {
        for (model, unit) in [(image_model, "images"), (speech_model, "speech_characters")] {
            metrics::counter!(MEDIA_UNITS_TOTAL, "provider" => provider.to_owned(),
                "model" => model.to_owned(), "unit" => unit)
            .increment(0);
        }
    }
    for entry in known.schedule_entries {
        for outcome in ["fired", "caught_up", "skipped"] {
            metrics::counter!(SCHEDULE_TICKS_TOTAL, "entry" => entry.to_string(),
                "outcome" => outcome)
            .increment(0);
        }
    }
    for scope in [
        crate::schedule::LEADER_LEASE.0,
        crate::events::RELAY_LEASE.0,
    ] {
        metrics::counter!(LEADER_CHANGES_TOTAL, "scope" => scope).increment(0);
    }
    // Gauges that are truly 0 at start, and a histogram with no labels: a
    // dashboard then shows 0 (or nothing recorded) rather than "no data".
    metrics::gauge!(WS_CONNECTIONS).increment(0.0);
    metrics::gauge!(RELAY_BACKLOG).increment(0.0);
    for kind in known.kinds {
        metrics::gauge!(JOB_PROGRESS_RATIO, "kind" => kind.to_string()).increment(0.0);
    }
    let _ = metrics::histogram!(EVENT_DELIVERY_LAG_SECONDS);
}
