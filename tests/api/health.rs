//! Probes, the `/metrics` listener and the OpenAPI description.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::json;

use crate::helpers::TestApp;

#[tokio::test]
async fn health_and_readiness_report_dependencies() {
    let app = TestApp::spawn().await;
    let health = app.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.body["status"], "ok");

    let ready = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    let names: BTreeSet<&str> = ready.body["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["status"] == "ok")
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, BTreeSet::from(["postgres", "redis", "storage"]));

    // On the in-process bus (`dev` without REDIS_URL) the bus is listed as such.
    let local = TestApp::spawn_with(|c| c.redis_url = None).await;
    let ready = local.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    assert_eq!(
        ready.body["checks"][1]["name"], "in-process",
        "{}",
        ready.text
    );
}

#[tokio::test]
async fn serve_work_and_schedule_refuse_to_start_without_redis_and_say_why() {
    let app = TestApp::spawn().await;
    for role in ["serve", "work", "schedule"] {
        let url = app.db.url.clone();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_questboard"))
                .arg(role)
                .env("DATABASE_URL", url)
                .env_remove("REDIS_URL")
                .env("QB_METRICS_ADDR", "127.0.0.1:0")
                .env("QB_HTTP_ADDR", "127.0.0.1:0")
                .env("QB_JWT_SECRET", "a-secret-for-this-test-only-0123456789")
                .output()
                .expect("questboard")
        })
        .await
        .expect("join");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{role} started without REDIS_URL");
        assert!(
            stderr.contains("REDIS_URL is not set") && stderr.contains("questboard dev"),
            "{role}: {stderr}"
        );
    }
}

#[tokio::test]
async fn readiness_fails_when_redis_is_unreachable() {
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let app = TestApp::spawn_with(|c| {
        c.redis_url = Some(questboard::config::Secret::new("redis://127.0.0.1:1"))
    })
    .await;
    let ready = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, 503, "{}", ready.text);
    assert_eq!(ready.body["status"], "unavailable");
    let redis = ready.body["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "redis")
        .cloned()
        .expect("redis check");
    assert_eq!(redis["status"], "error");
    // Liveness does not depend on Redis, and the API still works.
    assert_eq!(
        app.call(Method::GET, "/healthz", None, None).await.status,
        200
    );
    assert_eq!(
        app.post("alice", "/api/sessions", json!({ "name": "x" }))
            .await
            .status,
        201
    );
}

#[tokio::test]
async fn metrics_are_served_on_their_own_listener_by_matched_route() {
    let app = TestApp::spawn().await;
    let session = app.create_session("alice", "Keep").await;
    assert_eq!(
        app.get("alice", &format!("/api/sessions/{session}"))
            .await
            .status,
        200
    );
    app.get("mallory", &format!("/api/sessions/{session}"))
        .await
        .assert_error(404, "not_found");

    let text = app.metrics().await;
    assert!(
        text.contains("# TYPE questboard_http_requests_total counter"),
        "{text}"
    );
    assert!(text.contains("# TYPE questboard_http_request_duration_seconds histogram"));
    let has = |needles: &[&str]| text.lines().any(|l| needles.iter().all(|n| l.contains(n)));
    assert!(has(&[
        "questboard_http_requests_total{",
        "route=\"/api/sessions/{session_id}\"",
        "status=\"200\"",
        "method=\"GET\""
    ]));
    assert!(has(&[
        "questboard_http_requests_total{",
        "route=\"/api/sessions/{session_id}\"",
        "status=\"404\""
    ]));
    assert!(has(&[
        "questboard_http_request_duration_seconds_bucket{",
        "route=\"/api/sessions\"",
        "le=\"0.005\""
    ]));
    assert!(has(&["questboard_sessions_created_total"]));
    // Raw ids never become labels.
    assert!(!text.contains(&session), "a raw path leaked into labels");
    // The API listener does not serve /metrics.
    app.call(Method::GET, "/metrics", None, None)
        .await
        .assert_error(404, "not_found");
}

#[tokio::test]
async fn the_openapi_description_covers_every_route_and_the_error_schema() {
    let app = TestApp::spawn().await;
    let doc = app.call(Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(doc.status, 200, "{}", doc.text);
    assert!(
        doc.body["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3."))
    );
    let mut operations = BTreeSet::new();
    for (path, item) in doc.body["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("item").keys() {
            operations.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    let expected: BTreeSet<String> = [
        "POST /api/sessions",
        "GET /api/sessions",
        "GET /api/sessions/{session_id}",
        "PATCH /api/sessions/{session_id}",
        "DELETE /api/sessions/{session_id}",
        "DELETE /api/sessions/{session_id}/members/{user_id}",
        "POST /api/sessions/{session_id}/invites",
        "GET /api/sessions/{session_id}/invites",
        "DELETE /api/sessions/{session_id}/invites/{invite_id}",
        "POST /api/invites/accept",
        "POST /api/sessions/{session_id}/turns",
        "GET /api/sessions/{session_id}/turns",
        "GET /api/sessions/{session_id}/usage",
        "GET /api/sessions/{session_id}/state",
        "POST /api/sessions/{session_id}/state/updates",
        "GET /api/sessions/{session_id}/state/proposals",
        "POST /api/sessions/{session_id}/state/proposals/{proposal_id}/approve",
        "POST /api/sessions/{session_id}/state/proposals/{proposal_id}/reject",
        "GET /api/jobs/{job_id}",
        "GET /api/sessions/{session_id}/events",
        "POST /api/sessions/{session_id}/assets",
        "POST /api/sessions/{session_id}/media",
        "PUT /api/sessions/{session_id}/assets/{media_id}",
        "GET /api/sessions/{session_id}/media",
        "GET /api/sessions/{session_id}/media/{media_id}",
        "DELETE /api/sessions/{session_id}/media/{media_id}",
        "GET /api/media/{session_id}/{kind}/{file}",
        "GET /api/sessions/{session_id}/media/{media_id}/url",
        "GET /api/images/{file}",
        "GET /api/legacy/{env}/{folder}/{path}",
        "GET /api/assets/{table}/{asset_id}",
        "GET /api/admin/queues",
        "POST /api/admin/queues/{kind}/pause",
        "POST /api/admin/queues/{kind}/resume",
        "GET /api/admin/jobs",
        "POST /api/admin/jobs",
        "POST /api/admin/jobs/bulk",
        "GET /api/admin/jobs/{job_id}/reply",
        "GET /api/admin/jobs/{job_id}",
        "POST /api/admin/jobs/{job_id}/retry",
        "POST /api/admin/jobs/{job_id}/cancel",
        "GET /api/admin/schedule",
        "POST /api/admin/schedule/{name}/run",
        "GET /api/admin/audit",
        "GET /api/admin/usage",
        "GET /api/admin/quotas",
        "PUT /api/admin/quotas/{name}",
        "DELETE /api/admin/quotas/{name}",
        "GET /api/admin/activity",
        "GET /api/admin/lanes",
        "GET /api/admin/lanes/{session_id}",
        "GET /api/admin/sessions/{session_id}/events",
        "GET /api/admin/live",
        "GET /api/admin/runs",
        "POST /api/admin/migrations/assets/{run_id}/resume",
        "POST /api/admin/migrations/assets",
        "GET /api/admin/migrations/assets/{run_id}",
        "POST /api/admin/migrations/assets/{run_id}/rollback",
        "POST /api/admin/imports/legacy",
        "GET /api/admin/imports/legacy/{run_id}",
        "GET /healthz",
        "GET /readyz",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(operations, expected);
    let schemas = &doc.body["components"]["schemas"];
    assert!(schemas["ErrorBody"].is_object() && schemas["ErrorDetail"].is_object());
    // Bounds and rules the server enforces are in the description.
    let param = |path: &str, method: &str, name: &str| {
        doc.body["paths"][path][method]["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name).cloned())
            .unwrap_or_else(|| panic!("{method} {path}: no parameter {name}"))
    };
    let limit = param("/api/sessions/{session_id}/turns", "get", "limit");
    assert_eq!(
        (
            limit["schema"]["minimum"].as_f64(),
            limit["schema"]["maximum"].as_f64()
        ),
        (Some(1.0), Some(500.0)),
        "{limit}"
    );
    let after = param("/api/sessions/{session_id}/events", "get", "after_seq");
    assert_eq!(after["schema"]["minimum"].as_f64(), Some(0.0), "{after}");
    let key = param(
        "/api/sessions/{session_id}/turns",
        "post",
        "Idempotency-Key",
    );
    assert_eq!(key["schema"]["maxLength"], 255, "{key}");
    for (path, method) in [
        ("/api/sessions/{session_id}", "patch"),
        ("/api/sessions/{session_id}/invites", "post"),
        ("/api/invites/accept", "post"),
        ("/api/sessions/{session_id}/state/updates", "post"),
    ] {
        let responses = &doc.body["paths"][path][method]["responses"];
        assert!(
            responses["415"].is_object() && responses["413"].is_object(),
            "{method} {path}: {responses}"
        );
    }
    assert_eq!(
        schemas["SessionInput"]["properties"]["name"]["minLength"],
        1
    );
    // An invite grants `player` or `gm`, never `owner`.
    assert_eq!(
        schemas["GrantedRole"]["enum"],
        serde_json::json!(["player", "gm"])
    );
    // What a turn's reply did to the game state is described on turns.
    assert!(
        schemas["TurnView"]["properties"]["state_change"].is_object()
            && schemas["StateChange"]["properties"]["applied"].is_object()
            && schemas["Refusal"]["properties"]["operation"].is_object(),
        "{}",
        schemas
    );
    // The state update's operations are described, not just "any".
    assert!(
        schemas["StateOperation"]["properties"]["operation"].is_object(),
        "{}",
        schemas["StateOperation"]
    );
    assert_eq!(
        doc.body["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    // Operators' routes say what they need: reads a viewer or an
    // operator, actions an operator only.
    for (path, item) in doc.body["paths"].as_object().expect("paths") {
        if path.starts_with("/api/admin") {
            for (method, op) in item.as_object().expect("item") {
                let needs: Vec<&str> = op["security"]
                    .as_array()
                    .expect("security")
                    .iter()
                    .filter_map(|s| s["bearer"][0].as_str())
                    .collect();
                let expected = if method == "get" {
                    vec!["questboard:viewer", "questboard:operator"]
                } else {
                    vec!["questboard:operator"]
                };
                assert_eq!(needs, expected, "{method} {path}");
                assert!(op["responses"]["403"].is_object(), "{method} {path}");
            }
        }
    }
    // Every 4xx response points at the error schema.
    for (path, item) in doc.body["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("item") {
            for (status, response) in op["responses"].as_object().expect("responses") {
                if status.starts_with('4') {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(
                        schema, "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
}
