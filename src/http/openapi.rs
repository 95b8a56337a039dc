//! The OpenAPI 3 description of the API, generated from the handlers'
//! annotations so it cannot drift from the code. Served without a token at
//! `GET /api/openapi.json` so web clients can generate bindings; it
//! describes shapes only, never data.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use questboard_core::jobs as job_rows;
use questboard_core::media::MediaKind;
use questboard_core::sessions::{Cursor, MAX_NAME_CHARS};
use questboard_core::state::ops;
use questboard_core::text;
use questboard_workers::jobs::Registry;
use serde_json::{Value, json};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::AppState;
use super::{
    activity, admin, audit, download, error, events, health, invites, jobs, lanes, legacy, live,
    media, migrations, proposals, quotas, runs, sessions, state, turns, usage,
};

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
        sessions::update_session,
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
        usage::session_usage,
        usage::admin_usage,
        quotas::list_quotas,
        quotas::set_quota,
        quotas::reset_quota,
        admin::list_queues,
        admin::pause_kind,
        admin::resume_kind,
        admin::list_jobs,
        admin::bulk_jobs,
        admin::get_job,
        admin::start_job,
        admin::retry_job,
        admin::cancel_job,
        admin::get_schedule,
        admin::run_entry,
        audit::list_audit,
        activity::activity,
        lanes::list_lanes,
        lanes::get_lane,
        lanes::session_events,
        live::live,
        live::reply,
        runs::list_runs,
        migrations::resume_migration,
        migrations::start_migration,
        migrations::get_migration,
        migrations::roll_back_migration,
        migrations::serve_old_asset,
        legacy::start_import,
        legacy::get_import,
        proposals::list_proposals,
        proposals::approve_proposal,
        proposals::reject_proposal,
        events::list_events,
        media::generate_media,
        media::upload_asset,
        media::upload_version,
        media::list_media,
        media::get_media,
        media::delete_media,
        media::media_link,
        download::serve_media,
        download::serve_legacy_image,
        legacy::serve_legacy_path,
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
        (name = "usage", description = "What the model and media providers were paid for: tokens per turn as the provider counted them, images, characters of narration; summed per UTC day (docs/architecture.md, Usage)"),
        (name = "admin", description = "Operators' controls of the job platform: queues, jobs, session lanes, the schedule, runs, the audit log, live feeds. Reads need a token with the `questboard:viewer` or `questboard:operator` permission, actions `questboard:operator` (in `permissions`, or in a space-separated `scope`)"),
        (name = "events", description = "The session event log (the WebSocket `/ws/sessions/{session_id}?after_seq=N` delivers the same events live)"),
        (name = "media", description = "A session's images, audio, maps and notes: uploaded by game masters, served to members (docs/architecture.md, Media)"),
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

async fn openapi_json(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        state.openapi,
    )
}

/// The description as served: the annotations' document plus what only
/// the running process knows or what attributes cannot hold: the job kinds
/// of its registry (and each startable kind's payload), the configured
/// length of a turn, and the patterns shared with the validating code.
///
/// Every patch names the place it changes; a place the annotations no
/// longer have (a renamed schema, a moved route) is an error naming it,
/// so the served description never silently loses a constraint.
pub fn document(registry: &Registry, max_turn_chars: usize) -> Result<Value, StalePatches> {
    let mut patches = Patches::new(serde_json::to_value(ApiDoc::openapi()).unwrap_or_default());
    let kinds: Vec<&str> = registry.kinds().iter().map(|k| k.spec.kind).collect();
    let schemas = "/components/schemas";
    patches.set(
        &format!("{schemas}/SessionInput/properties/name"),
        "pattern",
        json!(*text::NAME_PATTERN),
    );
    patches.set(
        &format!("{schemas}/SessionInput/properties/name"),
        "maxLength",
        json!(MAX_NAME_CHARS),
    );
    patches.set(
        &format!("{schemas}/SessionChanges"),
        "minProperties",
        json!(1),
    );
    for key in ["pattern", "maxLength"] {
        let value = patches
            .doc
            .pointer(&format!("{schemas}/SessionInput/properties/name/{key}"))
            .cloned()
            .unwrap_or_default();
        patches.set(
            &format!("{schemas}/SessionChanges/properties/name"),
            key,
            value,
        );
    }
    patches.set(
        &format!("{schemas}/TurnInput/properties/text"),
        "pattern",
        json!(*text::TEXT_PATTERN),
    );
    patches.set(
        &format!("{schemas}/GenerateInput/properties/prompt"),
        "pattern",
        json!(*text::TEXT_PATTERN),
    );
    patches.set(
        &format!("{schemas}/TurnInput/properties/text"),
        "maxLength",
        json!(max_turn_chars),
    );
    patches.set(
        &format!("{schemas}/StateOperation/properties/path"),
        "pattern",
        json!(ops::Path::PATTERN),
    );
    patches.set(
        &format!("{schemas}/StateOperation/properties/path"),
        "not",
        json!({ "pattern": ops::Path::FORBIDDEN_PATTERN }),
    );
    // Versions are counted one by one: far below 2^53, the largest whole
    // number every JSON reader holds exactly.
    patches.set(
        &format!("{schemas}/StateUpdateInput/properties/version"),
        "maximum",
        json!(9_007_199_254_740_991_i64),
    );
    patches.set(
        &format!("{schemas}/StateOperation/properties"),
        "value",
        json!({
        "description": "The operand, any JSON value; absent for `unset`." }),
    );
    // What a game master sends: the same fields, with what each operation
    // needs of its value.
    let path = json!({ "type": "string", "pattern": ops::Path::PATTERN,
        "not": { "pattern": ops::Path::FORBIDDEN_PATTERN },
        "description": "The dotted path (see docs/architecture.md)." });
    let shape = |operations: Value, value: Option<Value>| {
        let mut required = vec!["path", "operation"];
        if value.is_some() {
            required.push("value");
        }
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": required,
            "properties": {
                "path": path,
                "operation": { "type": "string", "enum": operations },
                "value": value.unwrap_or_else(|| json!({ "description": "Ignored." })),
            }
        })
    };
    patches.set(
        schemas,
        "StateOperationInput",
        json!({
            "description": "One operation; refused with `VALIDATION_ERROR` (422) when it does not \
                apply to the state at that point (a missing parent, a wrong type, an index past the end).",
            "oneOf": [
                shape(json!(["set", "push", "pull"]), Some(json!({ "description": "Any JSON value." }))),
                shape(json!(["inc"]), Some(json!({ "type": "number" }))),
                shape(json!(["unset"]), None),
            ]
        }),
    );
    patches.set(
        &format!("{schemas}/StateUpdateInput/properties/operations"),
        "items",
        json!({ "$ref": "#/components/schemas/StateOperationInput" }),
    );
    patches.parameter(
        "/api/sessions",
        "get",
        "cursor",
        "pattern",
        json!(Cursor::PATTERN),
    );
    patches.parameter(
        "/api/admin/jobs",
        "get",
        "cursor",
        "pattern",
        json!(job_rows::JOB_ID_PATTERN),
    );
    patches.parameter("/api/admin/jobs", "get", "kind", "enum", json!(kinds));
    patches.parameter(
        "/api/admin/jobs",
        "get",
        "status",
        "enum",
        json!(job_rows::JobStatus::ALL.map(job_rows::JobStatus::as_str)),
    );
    for action in ["pause", "resume"] {
        patches.parameter(
            &format!("/api/admin/queues/{{kind}}/{action}"),
            "post",
            "kind",
            "enum",
            json!(kinds),
        );
    }
    // What operators may start: one shape per kind, with its payload.
    let startable: Vec<Value> = registry
        .kinds()
        .iter()
        .filter(|k| k.spec.operator_may_start)
        .map(|k| {
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["kind"],
                "properties": {
                    "kind": { "type": "string", "enum": [k.spec.kind] },
                    "payload": {
                        "anyOf": [
                            serde_json::to_value(k.payload_schema()).unwrap_or_default(),
                            { "type": "null" }
                        ],
                        "description": "The kind's payload; absent or null means `{}`."
                    },
                    "run_at": { "type": ["string", "null"], "format": "date-time",
                        "description": "Not before this time." },
                    "unique_key": { "type": ["string", "null"], "minLength": 1, "pattern": "^[ -~]+$",
                        "maxLength": job_rows::MAX_UNIQUE_KEY_BYTES,
                        "description": "While a job of the kind holds this key, starting it again returns that job." },
                }
            })
        })
        .collect();
    // Served bytes: every type a media item may have.
    let mut served_types: Vec<&str> = MediaKind::ALL
        .iter()
        .flat_map(|k| k.content_types().iter().map(|(ty, _)| *ty))
        .collect();
    served_types.sort_unstable();
    served_types.dedup();
    let served: serde_json::Map<String, Value> = served_types
        .into_iter()
        .map(|ty| {
            (
                ty.to_owned(),
                json!({ "schema": { "type": "string", "format": "binary" } }),
            )
        })
        .collect();
    for path in [
        "/api/media/{session_id}/{kind}/{file}",
        "/api/images/{file}",
    ] {
        for status in ["200", "206"] {
            let pointer = format!("/paths/{}/get/responses/{status}", path.replace('/', "~1"));
            patches.set(&pointer, "content", Value::Object(served.clone()));
        }
    }
    // An upload's body is the file: one entry per type its kinds take.
    let binary = json!({ "schema": { "type": "string", "format": "binary" } });
    let upload_types: serde_json::Map<String, Value> = [MediaKind::Map, MediaKind::Note]
        .iter()
        .flat_map(|k| k.content_types().iter().map(|(ty, _)| (*ty).to_owned()))
        .map(|ty| (ty, binary.clone()))
        .collect();
    for (path, method) in [
        ("/api/sessions/{session_id}/assets", "post"),
        ("/api/sessions/{session_id}/assets/{media_id}", "put"),
    ] {
        let pointer = format!("/paths/{}/{method}/requestBody", path.replace('/', "~1"));
        patches.set(&pointer, "content", Value::Object(upload_types.clone()));
    }
    patches.parameter(
        "/api/sessions/{session_id}/assets",
        "post",
        "kind",
        "enum",
        json!(["map", "note"]),
    );
    patches.parameter(
        "/api/sessions/{session_id}/media",
        "get",
        "kind",
        "enum",
        json!(MediaKind::ALL.map(MediaKind::as_str)),
    );
    patches.parameter(
        "/api/media/{session_id}/{kind}/{file}",
        "get",
        "kind",
        "enum",
        json!(MediaKind::ALL.map(MediaKind::url_segment)),
    );
    patches.set(
        schemas,
        "StartJob",
        json!({ "oneOf": startable,
        "description": "A job of a kind operators may start, with that kind's payload (default `{}`)." }),
    );
    patches.finish()
}

/// Patches of the annotations' document, with the places they did not find.
struct Patches {
    doc: Value,
    missing: Vec<String>,
}

/// Patches of the OpenAPI document whose places the annotations no longer
/// have: the patch is stale and the served description would be wrong.
#[derive(Debug, thiserror::Error)]
#[error("OpenAPI patches name places the document does not have: {}", .0.join(", "))]
pub struct StalePatches(pub Vec<String>);

impl Patches {
    fn new(doc: Value) -> Self {
        Self {
            doc,
            missing: Vec::new(),
        }
    }

    /// Sets `key` of the object at JSON pointer `pointer`.
    fn set(&mut self, pointer: &str, key: &str, value: Value) {
        match self.doc.pointer_mut(pointer) {
            Some(Value::Object(target)) => {
                target.insert(key.to_owned(), value);
            }
            _ => self.missing.push(format!("{pointer} (for {key})")),
        }
    }

    /// Sets `key` of the schema of the parameter `name` of `method path`.
    fn parameter(&mut self, path: &str, method: &str, name: &str, key: &str, value: Value) {
        let pointer = format!(
            "/paths/{}/{method}/parameters",
            path.replace('~', "~0").replace('/', "~1")
        );
        let mut found = false;
        if let Some(Value::Array(parameters)) = self.doc.pointer_mut(&pointer) {
            for parameter in parameters {
                if parameter["name"] == name
                    && let Some(Value::Object(schema)) = parameter.get_mut("schema")
                {
                    schema.insert(key.to_owned(), value.clone());
                    found = true;
                }
            }
        }
        if !found {
            self.missing
                .push(format!("parameter {name} of {method} {path} (for {key})"));
        }
    }

    fn finish(self) -> Result<Value, StalePatches> {
        if self.missing.is_empty() {
            Ok(self.doc)
        } else {
            Err(StalePatches(self.missing))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::*;

    #[test]
    fn every_patch_finds_its_place() {
        let registry = questboard_workers::jobs::registry();
        let doc = document(&registry, 4000).expect("no stale patch");
        assert_eq!(
            doc.pointer("/components/schemas/TurnInput/properties/text/maxLength"),
            Some(&json!(4000))
        );
    }

    #[test]
    fn every_operation_has_its_own_id() {
        let doc = document(&questboard_workers::jobs::registry(), 4000).expect("document");
        let mut ids = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("path item") {
                let id = operation["operationId"].as_str().unwrap_or_default();
                assert!(!id.is_empty(), "{method} {path} has no operationId");
                ids.push(id.to_owned());
            }
        }
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(
            ids.len(),
            count,
            "operationIds are not unique: client generators refuse them"
        );
    }

    #[test]
    fn a_patch_of_a_place_that_is_gone_is_named() {
        let mut patches = Patches::new(json!({ "paths": {}, "components": { "schemas": {} } }));
        patches.set(
            "/components/schemas/Gone/properties/name",
            "pattern",
            json!("x"),
        );
        patches.set("/components/schemas", "Added", json!({}));
        patches.parameter("/api/gone", "get", "cursor", "pattern", json!("x"));
        let Err(StalePatches(missing)) = patches.finish() else {
            panic!("stale patches were accepted");
        };
        assert_eq!(
            missing,
            [
                "/components/schemas/Gone/properties/name (for pattern)",
                "parameter cursor of get /api/gone (for pattern)",
            ]
        );
    }
}
