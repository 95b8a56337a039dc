//! The OpenAPI 3 description of the API, generated from the handlers'
//! annotations so it cannot drift from the code. Served without a token at
//! `GET /api/openapi.json` so web clients can generate bindings; it
//! describes shapes only, never data.

use axum::Router;
use axum::routing::get;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::AppState;
use super::extract::Json;
use super::{admin, error, events, health, invites, jobs, sessions, state, turns};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "questboard",
        description = "Campaign sessions, members, invites and turns for AI game-master apps, \
            and operators' controls of the job platform (/api/admin, which needs the \
            `questboard:operator` permission). \
            Every /api route except this description needs `Authorization: Bearer <JWT>`; \
            every error is `{\"error\": {\"code\", \"message\"}}`."
    ),
    paths(
        sessions::create_session,
        sessions::list_sessions,
        sessions::get_session,
        sessions::rename_session,
        sessions::archive_session,
        sessions::remove_member,
        invites::create_invite,
        invites::list_invites,
        invites::revoke_invite,
        invites::accept_invite,
        state::get_state,
        state::update_state,
        turns::submit_turn,
        turns::list_turns,
        jobs::get_job,
        admin::list_queues,
        admin::pause_kind,
        admin::resume_kind,
        admin::list_jobs,
        admin::get_job,
        admin::start_job,
        admin::retry_job,
        admin::cancel_job,
        admin::get_schedule,
        events::list_events,
        health::healthz,
        health::readyz,
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail)),
    modifiers(&BearerAuth),
    tags(
        (name = "sessions", description = "Campaign sessions and their members"),
        (name = "invites", description = "One-time invite tokens"),
        (name = "state", description = "Each session's versioned game state: members read it, game masters (the owner and `gm` members) change it with operations against its version (see docs/architecture.md for the operations table)"),
        (name = "turns", description = "Player turns and the game master's replies"),
        (name = "jobs", description = "Durable job status"),
        (name = "admin", description = "Operators' controls of the job platform: queues, jobs, the schedule. Every route needs a token with the `questboard:operator` permission (in `permissions`, or in a space-separated `scope`)"),
        (name = "events", description = "The session event log (the WebSocket `/ws/sessions/{session_id}?after_seq=N` delivers the same events live)"),
        (name = "health", description = "Liveness and readiness")
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi_json))
}

async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
