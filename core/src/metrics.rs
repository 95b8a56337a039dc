//! Every metric questboard emits, declared once with its unit and help text.
//!
//! Code records metrics through these constants so a name cannot drift
//! between the code, the dashboards in `dashboards/` and the alert rules.
//! Names follow Prometheus conventions: a `questboard_` prefix, `_total` for
//! counters, `_seconds` for durations.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// HTTP requests served, by `method`, matched `route` and `status`.
pub const HTTP_REQUESTS_TOTAL: &str = "questboard_http_requests_total";
/// HTTP request latency, by `method`, matched `route` and `status`.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "questboard_http_request_duration_seconds";
/// HTTP requests being served right now.
pub const HTTP_REQUESTS_IN_FLIGHT: &str = "questboard_http_requests_in_flight";
/// Bearer tokens refused, by `reason`.
pub const AUTH_FAILURES_TOTAL: &str = "questboard_auth_failures_total";
/// JWKS fetches, by `outcome` (`ok`, `error`).
pub const JWKS_REFRESHES_TOTAL: &str = "questboard_jwks_refreshes_total";
/// Campaign sessions created.
pub const SESSIONS_CREATED_TOTAL: &str = "questboard_sessions_created_total";
/// Invites created.
pub const INVITES_CREATED_TOTAL: &str = "questboard_invites_created_total";
/// Invite acceptances, by `outcome` (`joined`, `already_member`, `not_found`,
/// `invite_used_up`, `invite_expired`, `invite_revoked`, `session_archived`).
pub const INVITE_ACCEPTS_TOTAL: &str = "questboard_invite_accepts_total";
/// Readiness checks, by `dependency` (`postgres`, `redis`) and `outcome`.
pub const READINESS_CHECKS_TOTAL: &str = "questboard_readiness_checks_total";
/// Process start time, seconds since the Unix epoch.
pub const PROCESS_START_TIME_SECONDS: &str = "questboard_process_start_time_seconds";

/// Every metric name above, for checks that dashboards and alerts use only
/// names that exist.
pub const ALL: &[&str] = &[
    HTTP_REQUESTS_TOTAL,
    HTTP_REQUEST_DURATION_SECONDS,
    HTTP_REQUESTS_IN_FLIGHT,
    AUTH_FAILURES_TOTAL,
    JWKS_REFRESHES_TOTAL,
    SESSIONS_CREATED_TOTAL,
    INVITES_CREATED_TOTAL,
    INVITE_ACCEPTS_TOTAL,
    READINESS_CHECKS_TOTAL,
    PROCESS_START_TIME_SECONDS,
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
        "HTTP request latency, by method, matched route and status."
    );
    describe_gauge!(
        HTTP_REQUESTS_IN_FLIGHT,
        "HTTP requests being served right now."
    );
    describe_counter!(AUTH_FAILURES_TOTAL, "Bearer tokens refused, by reason.");
    describe_counter!(JWKS_REFRESHES_TOTAL, "JWKS fetches, by outcome.");
    describe_counter!(SESSIONS_CREATED_TOTAL, "Campaign sessions created.");
    describe_counter!(INVITES_CREATED_TOTAL, "Invites created.");
    describe_counter!(INVITE_ACCEPTS_TOTAL, "Invite acceptances, by outcome.");
    describe_counter!(
        READINESS_CHECKS_TOTAL,
        "Readiness checks, by dependency and outcome."
    );
    describe_gauge!(
        PROCESS_START_TIME_SECONDS,
        Unit::Seconds,
        "Process start time, seconds since the Unix epoch."
    );
}
