//! The operators' audit log and the viewer permission: every operator
//! action through `/api/admin` is recorded with who, what, on what and how
//! it ended (and is not taken when it cannot be recorded); a viewer reads
//! every operators' route and acts on nothing; a player gets neither.

use questboard::auth::Access;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Resp, TestApp, into_resp};

async fn with_token(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Resp {
    let mut req = app.client.request(method, app.url(path)).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    into_resp(req.send().await.expect("request")).await
}

async fn audit(app: &TestApp, query: &str) -> Value {
    let resp = app
        .op(Method::GET, &format!("/api/admin/audit{query}"), None)
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text);
    resp.body
}

async fn turn_paused(app: &TestApp) -> bool {
    let queues = app.op(Method::GET, "/api/admin/queues", None).await;
    let turn = queues.body["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .find(|q| q["kind"] == "turn")
        .cloned()
        .expect("turn");
    turn["paused"].as_bool().expect("paused")
}

fn summary(page: &Value) -> Vec<(String, String, String)> {
    page["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or_default().to_owned(),
                e["target"].as_str().unwrap_or_default().to_owned(),
                e["outcome"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_viewer_reads_every_operators_route_and_acts_on_nothing() {
    let app = TestApp::spawn().await;
    let job = app.start_job("prune", json!({ "dry_run": true })).await;
    let viewer = app.token_with("vera", Access::Viewer);
    let player = app.token("pat");
    for path in [
        "/api/admin/queues".to_owned(),
        "/api/admin/jobs".to_owned(),
        format!("/api/admin/jobs/{job}"),
        "/api/admin/schedule".to_owned(),
        "/api/admin/audit".to_owned(),
        format!("/api/jobs/{job}"),
    ] {
        let seen = with_token(&app, &viewer, Method::GET, &path, None).await;
        assert_eq!(seen.status, 200, "viewer {path}: {}", seen.text);
    }
    let run = uuid::Uuid::now_v7();
    let actions: Vec<(&str, String, Option<Value>)> = vec![
        ("POST", "/api/admin/queues/turn/pause".into(), None),
        ("POST", "/api/admin/queues/turn/resume".into(), None),
        (
            "POST",
            "/api/admin/jobs".into(),
            Some(json!({ "kind": "prune", "payload": {} })),
        ),
        ("POST", format!("/api/admin/jobs/{job}/cancel"), None),
        ("POST", format!("/api/admin/jobs/{job}/retry"), None),
        (
            "POST",
            format!("/api/admin/migrations/assets/{run}/rollback"),
            None,
        ),
        (
            "POST",
            "/api/admin/migrations/assets".into(),
            Some(json!({ "source_url": "postgres://x@127.0.0.1/x", "session_column": "s" })),
        ),
        (
            "POST",
            "/api/admin/imports/legacy".into(),
            Some(json!({ "source_url": "file:///tmp", "mapping": {} })),
        ),
    ];
    for (method, path, body) in &actions {
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let forged = with_token(&app, &viewer, method.clone(), path, body.clone()).await;
        assert_eq!(forged.status, 403, "viewer {path}: {}", forged.text);
        assert_eq!(forged.code(), "forbidden");
        let player_try = with_token(&app, &player, method, path, body.clone()).await;
        assert_eq!(player_try.status, 403, "player {path}");
    }
    for path in [
        "/api/admin/queues",
        "/api/admin/audit",
        "/api/admin/schedule",
    ] {
        let refused = with_token(&app, &player, Method::GET, path, None).await;
        assert_eq!(refused.status, 403, "player {path}");
    }
    assert_eq!(
        with_token(
            &app,
            &player,
            Method::GET,
            &format!("/api/jobs/{job}"),
            None
        )
        .await
        .status,
        404,
        "a session-less job is the operators' business"
    );
    // Nothing the viewer sent changed anything: the job still waits, turns
    // are not paused, and the log holds the operator's one action.
    assert_eq!(app.job_detail(&job).await["status"], "queued");
    assert!(!turn_paused(&app).await);
    let log = audit(&app, "").await;
    assert_eq!(
        summary(&log),
        vec![("job.start".into(), "prune".into(), "ok".into())]
    );
    assert_eq!(log["entries"][0]["actor"], "ops");
    assert_eq!(
        log["entries"][0]["detail"]["result"]["job_id"],
        job.as_str()
    );
}

#[tokio::test]
async fn every_operator_action_is_recorded_with_its_outcome() {
    let app = TestApp::spawn().await;
    let pause = app
        .op(Method::POST, "/api/admin/queues/turn/pause", None)
        .await;
    assert_eq!(pause.status, 200, "{}", pause.text);
    app.op(Method::POST, "/api/admin/queues/turn/resume", None)
        .await;
    let unknown = app
        .op(Method::POST, "/api/admin/queues/nope/pause", None)
        .await;
    assert_eq!(unknown.status, 404);
    let job = app.start_job("prune", json!({ "dry_run": true })).await;
    let early_retry = app
        .op(Method::POST, &format!("/api/admin/jobs/{job}/retry"), None)
        .await;
    assert_eq!(early_retry.status, 409, "a queued job is not retried");
    let cancel = app
        .op(Method::POST, &format!("/api/admin/jobs/{job}/cancel"), None)
        .await;
    assert_eq!(cancel.status, 200, "{}", cancel.text);
    let retry = app
        .op(Method::POST, &format!("/api/admin/jobs/{job}/retry"), None)
        .await;
    assert_eq!(retry.status, 200, "{}", retry.text);

    let log = audit(&app, "").await;
    let expected: Vec<(String, String, String)> = [
        ("job.retry", job.as_str(), "ok"),
        ("job.cancel", job.as_str(), "ok"),
        ("job.retry", job.as_str(), "refused"),
        ("job.start", "prune", "ok"),
        ("queue.pause", "nope", "refused"),
        ("queue.resume", "turn", "ok"),
        ("queue.pause", "turn", "ok"),
    ]
    .iter()
    .map(|(a, t, o)| ((*a).to_owned(), (*t).to_owned(), (*o).to_owned()))
    .collect();
    assert_eq!(summary(&log), expected, "newest first");
    let entries = log["entries"].as_array().expect("entries");
    for e in entries {
        assert_eq!(e["actor"], "ops");
        assert!(e["finished_at"].is_string(), "{e}");
    }
    assert!(
        entries[2]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("conflict:")),
        "{}",
        entries[2]
    );
    assert!(
        entries[4]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("not_found:")),
        "{}",
        entries[4]
    );
    assert_eq!(entries[1]["detail"]["result"]["outcome"], "cancelled");
    assert_eq!(entries[3]["detail"]["payload"]["dry_run"], true);
    assert!(entries[0]["error"].is_null());

    // Filters and pages.
    let pauses = audit(&app, "?action=queue.pause").await;
    assert_eq!(summary(&pauses).len(), 2);
    let on_job = audit(&app, &format!("?target={job}")).await;
    assert_eq!(summary(&on_job).len(), 3);
    assert_eq!(summary(&audit(&app, "?actor=someone-else").await).len(), 0);
    let first = audit(&app, "?limit=4").await;
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let second = audit(&app, &format!("?limit=4&cursor={cursor}")).await;
    assert!(second["next_cursor"].is_null());
    let mut both = summary(&first);
    both.extend(summary(&second));
    assert_eq!(both, expected, "the pages follow on, no gap, no repeat");
    assert_eq!(
        summary(&audit(&app, "?actor=ops%00").await).len(),
        0,
        "a NUL matches nothing"
    );
    for bad in ["?limit=0", "?limit=501", "?cursor=not-a-cursor", "?cursor="] {
        let refused = app
            .op(Method::GET, &format!("/api/admin/audit{bad}"), None)
            .await;
        assert_eq!(refused.status, 400, "{bad}");
    }
}

#[tokio::test]
async fn an_action_that_cannot_be_recorded_is_not_taken() {
    let app = TestApp::spawn().await;
    sqlx::query("ALTER TABLE operator_audit RENAME TO operator_audit_away")
        .execute(&app.db.pool)
        .await
        .expect("rename");
    let refused = app
        .op(Method::POST, "/api/admin/queues/turn/pause", None)
        .await;
    assert_eq!(refused.status, 503, "{}", refused.text);
    sqlx::query("ALTER TABLE operator_audit_away RENAME TO operator_audit")
        .execute(&app.db.pool)
        .await
        .expect("rename back");
    assert!(!turn_paused(&app).await, "nothing was done");
    assert!(summary(&audit(&app, "").await).is_empty());
}
