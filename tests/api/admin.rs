//! Operators' controls: who may use them (401 without a token, 403 without
//! the `questboard:operator` permission, Auth0 `permissions` or OAuth
//! `scope`), every route, and the same operations from `questboard admin`.

use std::process::Command;

use questboard::auth::OPERATOR_PERMISSION;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TEST_SECRET, TestApp, redis_url};

/// A token with arbitrary extra claims, signed with the test secret.
fn token_with(claims: Value) -> String {
    let mut claims = claims;
    claims["exp"] = json!(jsonwebtoken::get_current_timestamp() + 600);
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .expect("token")
}

#[tokio::test]
async fn every_admin_route_needs_the_operator_permission() {
    let app = TestApp::spawn().await;
    let job = app.start_job("sleepy", json!({ "ms": 1 })).await;
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/api/admin/queues".into(), None),
        (Method::POST, "/api/admin/queues/sleepy/pause".into(), None),
        (Method::POST, "/api/admin/queues/sleepy/resume".into(), None),
        (Method::GET, "/api/admin/jobs".into(), None),
        (
            Method::POST,
            "/api/admin/jobs".into(),
            Some(json!({ "kind": "sleepy", "payload": { "ms": 1 } })),
        ),
        (Method::GET, format!("/api/admin/jobs/{job}"), None),
        (Method::POST, format!("/api/admin/jobs/{job}/retry"), None),
        (Method::POST, format!("/api/admin/jobs/{job}/cancel"), None),
        (Method::GET, "/api/admin/schedule".into(), None),
    ];
    let player = format!("Bearer {}", app.token("player"));
    let scoped_elsewhere = format!(
        "Bearer {}",
        token_with(json!({ "sub": "p", "scope": "read:sessions questboard:operators" }))
    );
    for (method, path, body) in &routes {
        let none = app.call(method.clone(), path, None, body.clone()).await;
        none.assert_error(401, "unauthorized");
        let forbidden = app
            .call(method.clone(), path, Some("player"), body.clone())
            .await;
        forbidden.assert_error(403, "forbidden");
        for auth in [&player, &scoped_elsewhere] {
            let mut req = app
                .client
                .request(method.clone(), app.url(path))
                .header("authorization", auth);
            if let Some(body) = body {
                req = req.json(body);
            }
            let resp = crate::helpers::into_resp(req.send().await.expect("request")).await;
            resp.assert_error(403, "forbidden");
        }
    }
    // Both ways of granting the permission work.
    for claims in [
        json!({ "sub": "ops1", "permissions": ["read:all", OPERATOR_PERMISSION] }),
        json!({ "sub": "ops2", "scope": format!("openid {OPERATOR_PERMISSION}") }),
    ] {
        let resp = app
            .call_with_auth(
                Method::GET,
                "/api/admin/queues",
                &format!("Bearer {}", token_with(claims)),
            )
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text);
    }
}

#[tokio::test]
async fn operators_see_queues_jobs_and_the_schedule_and_steer_them() {
    let app = TestApp::spawn().await;
    let session = app.create_session("alice", "Ops").await;
    app.submit("alice", &session, "a turn").await;
    let a = app.start_job("sleepy", json!({ "ms": 1 })).await;
    let b = app
        .start_job("sleepy", json!({ "ms": 1, "session": session }))
        .await;

    let queues = app.op(Method::GET, "/api/admin/queues", None).await;
    assert_eq!(queues.status, 200, "{}", queues.text);
    let kinds: Vec<&str> = queues.body["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .filter_map(|q| q["kind"].as_str())
        .collect();
    for kind in ["turn", "prune", "reconcile", "sleepy", "stuck"] {
        assert!(kinds.contains(&kind), "{kinds:?}");
    }
    let sleepy = &queues.body["queues"][kinds.iter().position(|k| *k == "sleepy").expect("sleepy")];
    assert_eq!(sleepy["queued"], 2);
    assert_eq!(sleepy["concurrency"], 2);
    assert_eq!(sleepy["operator_may_start"], true);
    assert!(sleepy["oldest_wait_seconds"].as_f64().is_some());
    let turn = &queues.body["queues"][kinds.iter().position(|k| *k == "turn").expect("turn")];
    assert_eq!(turn["queued"], 1);
    assert_eq!(turn["operator_may_start"], false);

    // The list: newest first, filtered, keyset paged.
    let all = app.op(Method::GET, "/api/admin/jobs?limit=2", None).await;
    assert_eq!(all.status, 200, "{}", all.text);
    let page: Vec<&str> = all.body["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["job_id"].as_str())
        .collect();
    assert_eq!(page, [b.as_str(), a.as_str()]);
    let cursor = all.body["next_cursor"].as_str().expect("cursor");
    let rest = app
        .op(
            Method::GET,
            &format!("/api/admin/jobs?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(rest.body["jobs"].as_array().map(Vec::len), Some(1));
    assert_eq!(rest.body["jobs"][0]["kind"], "turn");
    assert!(rest.body["next_cursor"].is_null());
    let by_kind = app
        .op(
            Method::GET,
            "/api/admin/jobs?kind=sleepy&status=queued",
            None,
        )
        .await;
    assert_eq!(by_kind.body["jobs"].as_array().map(Vec::len), Some(2));
    let by_session = app
        .op(
            Method::GET,
            &format!("/api/admin/jobs?session_id={session}"),
            None,
        )
        .await;
    let of_session: Vec<&str> = by_session.body["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["kind"].as_str())
        .collect();
    assert_eq!(of_session, ["sleepy", "turn"], "{}", by_session.text);
    for bad in [
        "/api/admin/jobs?status=done",
        "/api/admin/jobs?kind=nope",
        "/api/admin/jobs?limit=0",
        "/api/admin/jobs?cursor=../../etc",
    ] {
        app.op(Method::GET, bad, None)
            .await
            .assert_error(400, "invalid_query");
    }

    // Detail, cancel, retry.
    let detail = app.job_detail(&a).await;
    assert_eq!(detail["payload"]["payload"]["ms"], 1);
    assert_eq!(detail["metadata"]["enqueued_by"], "ops");
    let resp = app
        .op(Method::POST, &format!("/api/admin/jobs/{a}/cancel"), None)
        .await;
    assert_eq!(resp.body["outcome"], "cancelled");
    let resp = app
        .op(Method::POST, &format!("/api/admin/jobs/{a}/retry"), None)
        .await;
    assert_eq!(resp.body["status"], "queued", "{}", resp.text);
    app.op(
        Method::GET,
        "/api/admin/jobs/01ARZ3NDEKTSV4RRFFQ69G5FAV",
        None,
    )
    .await
    .assert_error(404, "not_found");

    // Starting jobs: only kinds operators may start, with valid payloads.
    for (body, code) in [
        (
            json!({ "kind": "turn", "payload": {} }),
            "validation_failed",
        ),
        (json!({ "kind": "nope" }), "validation_failed"),
        (
            json!({ "kind": "prune", "payload": { "only": ["everything"] } }),
            "validation_failed",
        ),
        (
            json!({ "kind": "prune", "payload": { "dry_run": "yes" } }),
            "validation_failed",
        ),
        // serde would read a struct from an array; a payload is an object.
        (
            json!({ "kind": "prune", "payload": [] }),
            "validation_failed",
        ),
        (
            json!({ "kind": "reconcile", "payload": [true] }),
            "validation_failed",
        ),
    ] {
        app.op(Method::POST, "/api/admin/jobs", Some(body))
            .await
            .assert_error(422, code);
    }
    let resp = app
        .op(
            Method::POST,
            "/api/admin/jobs",
            Some(json!({ "kind": "prune", "payload": { "dry_run": true }, "run_at": "2099-01-01T00:00:00Z" })),
        )
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text);
    let later = app
        .job_detail(resp.body["job_id"].as_str().expect("id"))
        .await;
    assert_eq!(later["run_at"], "2099-01-01T00:00:00Z");

    // The schedule: built-in entries with their next fire time.
    let schedule = app.op(Method::GET, "/api/admin/schedule", None).await;
    assert_eq!(schedule.status, 200, "{}", schedule.text);
    let names: Vec<&str> = schedule.body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(names, ["prune", "prune-hourly", "reconcile"]);
    assert_eq!(schedule.body["entries"][0]["cron"], "0 3 * * *");
    assert_eq!(schedule.body["entries"][0]["timezone"], "UTC");
    assert_eq!(schedule.body["entries"][0]["missed"], "once");
    assert!(schedule.body["entries"][0]["next_fire"].is_string());
    assert!(schedule.body["leader"].is_null(), "no scheduler runs here");
}

/// Runs `questboard ARGS` against the app's database (off the runtime's
/// thread: it may wait for a worker in this process).
async fn cli(app: &TestApp, args: &[&str]) -> (bool, String, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let url = app.db.url.clone();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_questboard"))
            .args(&args)
            .env("DATABASE_URL", url)
            .env("REDIS_URL", redis_url())
            .env("QB_JWT_SECRET", TEST_SECRET)
            .env("RUST_LOG", "warn")
            .output()
            .expect("questboard");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("cli")
}

#[tokio::test]
async fn the_command_line_mints_operators_and_runs_the_same_controls() {
    let app = TestApp::spawn().await;
    // `questboard token --operator` mints a token the admin routes accept.
    let (ok, token, err) = cli(&app, &["token", "--user", "night-ops", "--operator"]).await;
    assert!(ok, "{err}");
    let resp = app
        .call_with_auth(
            Method::GET,
            "/api/admin/queues",
            &format!("Bearer {}", token.trim()),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text);
    let (ok, plain, _) = cli(&app, &["token", "--user", "player"]).await;
    assert!(ok);
    let resp = app
        .call_with_auth(
            Method::GET,
            "/api/admin/queues",
            &format!("Bearer {}", plain.trim()),
        )
        .await;
    resp.assert_error(403, "forbidden");

    let job = app.start_job("prune", json!({ "dry_run": true })).await;
    let (ok, out, err) = cli(&app, &["admin", "queues"]).await;
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("prune") && l.contains(" 1 ")),
        "{out}"
    );
    let (ok, out, err) = cli(&app, &["admin", "jobs", "list", "--kind", "prune"]).await;
    assert!(ok, "{err}");
    assert!(out.contains(&job) && out.contains("queued"), "{out}");
    let (ok, out, err) = cli(&app, &["admin", "jobs", "show", &job]).await;
    assert!(ok, "{err}");
    let shown: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(shown["kind"], "prune");
    assert_eq!(shown["payload"]["payload"]["dry_run"], true);
    let (ok, out, _) = cli(&app, &["admin", "jobs", "cancel", &job]).await;
    assert!(ok && out.contains("cancelled"), "{out}");
    let (ok, _, err) = cli(&app, &["admin", "jobs", "cancel", &job]).await;
    assert!(!ok && err.contains("already ended"), "{err}");
    let (ok, out, err) = cli(&app, &["admin", "jobs", "retry", &job]).await;
    assert!(ok, "{err}");
    assert!(out.contains("queued again"), "{out}");
    let (ok, _, err) = cli(&app, &["admin", "jobs", "show", "not-a-job"]).await;
    assert!(!ok && err.contains("not a job id"), "{err}");
    let (ok, out, err) = cli(&app, &["admin", "queues", "pause", "reconcile"]).await;
    assert!(ok && out.contains("paused"), "{err}");
    let (ok, out, _) = cli(&app, &["admin", "queues"]).await;
    assert!(
        ok && out
            .lines()
            .any(|l| l.starts_with("reconcile") && l.trim_end().ends_with("yes")),
        "{out}"
    );
    let (ok, _, _) = cli(&app, &["admin", "queues", "resume", "reconcile"]).await;
    assert!(ok);
    // Quotas: listed, overridden (the API sees it), refused when unknown or
    // too large, reset.
    let (ok, out, err) = cli(&app, &["admin", "quotas"]).await;
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 9, "{out}");
    let (ok, out, err) = cli(
        &app,
        &["admin", "quotas", "set", "user_turns_per_minute", "5"],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("user_turns_per_minute") && l.contains(" 5 ")),
        "{out}"
    );
    let seen = app.op(Method::GET, "/api/admin/quotas", None).await;
    let turns = seen.body["quotas"]
        .as_array()
        .expect("quotas")
        .iter()
        .find(|q| q["name"] == "user_turns_per_minute")
        .expect("quota")
        .clone();
    assert_eq!(
        (turns["value"].clone(), turns["overridden"].clone()),
        (json!(5), json!(true))
    );
    let (ok, _, err) = cli(&app, &["admin", "quotas", "set", "nope", "1"]).await;
    assert!(!ok && err.contains("unknown quota"), "{err}");
    let (ok, _, err) = cli(
        &app,
        &[
            "admin",
            "quotas",
            "set",
            "user_turns_per_minute",
            "1000000000001",
        ],
    )
    .await;
    assert!(!ok && err.contains("at most"), "{err}");
    let (ok, out, err) = cli(&app, &["admin", "quotas", "reset", "user_turns_per_minute"]).await;
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("user_turns_per_minute") && l.contains(" no ")),
        "{out}"
    );
    // Every command that acted is in the audit log, as `cli:$USER`; the
    // ones that only read are not.
    let audit = app.op(Method::GET, "/api/admin/audit?limit=50", None).await;
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let mut acted: Vec<(String, String, String)> = audit.body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["actor"] == format!("cli:{user}"))
        .map(|e| {
            (
                e["action"].as_str().unwrap_or_default().to_owned(),
                e["target"].as_str().unwrap_or_default().to_owned(),
                e["outcome"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    acted.reverse();
    let want: Vec<(String, String, String)> = [
        ("job.cancel", job.as_str(), "ok"),
        ("job.cancel", job.as_str(), "failed"),
        ("job.retry", job.as_str(), "ok"),
        ("queue.pause", "reconcile", "ok"),
        ("queue.resume", "reconcile", "ok"),
        ("quota.set", "user_turns_per_minute", "ok"),
        ("quota.set", "nope", "failed"),
        ("quota.set", "user_turns_per_minute", "failed"),
        ("quota.reset", "user_turns_per_minute", "ok"),
    ]
    .iter()
    .map(|(a, t, o)| ((*a).to_owned(), (*t).to_owned(), (*o).to_owned()))
    .collect();
    assert!(acted.ends_with(&want), "{acted:?}");
    assert!(ok);
    let (ok, out, err) = cli(&app, &["admin", "schedule"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("\"prune-hourly\""), "{out}");

    // Prune and reconcile wait for a worker to run them, then print the
    // report (and reconcile writes it to --output).
    let worker = app
        .jobs_worker(|c| c.worker_kinds = Some(vec!["prune".into(), "reconcile".into()]))
        .await;
    let (ok, out, err) = cli(&app, &["admin", "prune", "--dry-run"]).await;
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).expect("report");
    assert_eq!(report["dry_run"], true);
    assert!(report["statements"].as_u64().is_some_and(|n| n > 0));
    let output = std::env::temp_dir().join(format!("qb-reconcile-{}.json", uuid::Uuid::new_v4()));
    let (ok, out, err) = cli(
        &app,
        &[
            "admin",
            "reconcile",
            "--output",
            output.to_str().expect("path"),
        ],
    )
    .await;
    assert!(ok, "{err}");
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&output).expect("report file"))
            .expect("json");
    let printed: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(written, printed);
    assert_eq!(written["repair"], false);
    let (ok, _, err) = cli(&app, &["admin", "prune", "--only", "everything"]).await;
    assert!(!ok && err.contains("--only"), "{err}");
    worker.stop().await;
}
