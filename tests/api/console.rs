//! The admin routes the operators' console reads and acts through, against
//! the real services: the job list's filters, bulk retry and cancel (by id
//! and by filter, with a dry run's count first), session lanes and a
//! session's events, activity (throughput and live workers), and the live
//! feeds (queue changes, a running turn's reply as it streams).

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use questboard::auth::Access;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::TestApp;

fn ids(page: &Value) -> Vec<String> {
    page["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["job_id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn the_job_list_filters_by_key_time_and_text() {
    let app = TestApp::spawn().await;
    let keyed = app
        .op(
            Method::POST,
            "/api/admin/jobs",
            Some(
                json!({ "kind": "sleepy", "payload": { "ms": 1, "steps": 7 },
                         "unique_key": "nightly-7", "run_at": "2099-01-01T00:00:00Z" }),
            ),
        )
        .await;
    assert_eq!(keyed.status, 201, "{}", keyed.text);
    let keyed = keyed.body["job_id"].as_str().expect("id").to_owned();
    let other = app.start_job("sleepy", json!({ "ms": 2 })).await;

    for (query, want) in [
        ("unique_key=nightly-7", vec![keyed.clone()]),
        ("unique_key=nightly-8", vec![]),
        ("q=%22steps%22%3A7", vec![keyed.clone()]),
        ("q=%22ms%22%3A2", vec![other.clone()]),
        (
            "from=2000-01-01T00:00:00Z",
            vec![other.clone(), keyed.clone()],
        ),
        ("from=2099-01-01T00:00:00Z", vec![]),
        ("to=2000-01-01T00:00:00Z", vec![]),
        // An empty range matches nothing.
        ("from=2030-01-01T00:00:00Z&to=2020-01-01T00:00:00Z", vec![]),
        (
            "kind=sleepy&status=queued&q=%22ms%22",
            vec![other.clone(), keyed.clone()],
        ),
        // No stored text holds a NUL: nothing matches (and nothing fails).
        ("q=a%00b", vec![]),
    ] {
        let page = app
            .op(Method::GET, &format!("/api/admin/jobs?{query}"), None)
            .await;
        assert_eq!(page.status, 200, "{query}: {}", page.text);
        assert_eq!(ids(&page.body), want, "{query}");
    }
    for bad in [
        "/api/admin/jobs?from=yesterday",
        "/api/admin/jobs?q=",
        &format!("/api/admin/jobs?q={}", "x".repeat(201)),
        &format!("/api/admin/jobs?unique_key={}", "k".repeat(256)),
    ] {
        let resp = app.op(Method::GET, bad, None).await;
        assert_eq!(resp.status, 400, "{bad}: {}", resp.text);
    }
}

async fn bulk(app: &TestApp, body: Value) -> Value {
    let resp = app
        .op(Method::POST, "/api/admin/jobs/bulk", Some(body))
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text);
    resp.body
}

#[tokio::test]
async fn bulk_actions_by_filter_and_by_ids_are_counted_confirmed_and_audited() {
    let app = TestApp::spawn().await;
    app.db.expect_failed_jobs();
    let worker = app.jobs_worker(|_| {}).await;
    let failing: Vec<String> = futures::future::join_all(
        (0..3).map(|_| app.start_job("sleepy", json!({ "ms": 1, "fail_attempts": 9 }))),
    )
    .await;
    let fine = app.start_job("sleepy", json!({ "ms": 1 })).await;
    for id in &failing {
        app.wait_job(id, "a failure for good", |j| j["status"] == "failed")
            .await;
    }
    app.wait_job(&fine, "success", |j| j["status"] == "succeeded")
        .await;
    // Errors are searched in any case.
    let page = app
        .op(
            Method::GET,
            "/api/admin/jobs?kind=sleepy&q=PLANNED%20FAILURE",
            None,
        )
        .await;
    let mut found = ids(&page.body);
    found.sort();
    let mut want = failing.clone();
    want.sort();
    assert_eq!(found, want, "{}", page.text);

    // The console counts first (not recorded), then acts.
    let filter = json!({ "kind": "sleepy", "status": "failed" });
    let dry = bulk(
        &app,
        json!({ "action": "retry", "filter": filter, "dry_run": true }),
    )
    .await;
    assert_eq!(
        (dry["matched"].as_i64(), dry["done"].as_i64()),
        (Some(3), Some(0))
    );
    let done = bulk(&app, json!({ "action": "retry", "filter": filter })).await;
    assert_eq!(
        (
            done["matched"].as_i64(),
            done["done"].as_i64(),
            done["more"].as_bool()
        ),
        (Some(3), Some(3), Some(false)),
        "{done:#}"
    );
    for id in &failing {
        let job = app
            .wait_job(id, "the retried runs", |j| {
                j["status"] == "failed" && j["attempts"] == 3
            })
            .await;
        assert_eq!(job["errors"].as_array().map(Vec::len), Some(6), "{job:#}");
    }

    // By ids: two long jobs are cancelled (one waiting, one running), the
    // finished one is skipped with its reason.
    let running = app
        .start_job("sleepy", json!({ "ms": 60_000, "steps": 600 }))
        .await;
    app.wait_job(&running, "it to run", |j| j["status"] == "running")
        .await;
    let waiting = app
        .op(
            Method::POST,
            "/api/admin/jobs",
            Some(json!({ "kind": "sleepy", "payload": { "ms": 1 }, "run_at": "2099-01-01T00:00:00Z" })),
        )
        .await;
    let waiting = waiting.body["job_id"].as_str().expect("id").to_owned();
    let done = bulk(
        &app,
        json!({ "action": "cancel", "job_ids": [running, waiting, fine, "not-a-job"] }),
    )
    .await;
    assert_eq!(
        (
            done["matched"].as_i64(),
            done["done"].as_i64(),
            done["skipped_count"].as_i64()
        ),
        (Some(3), Some(2), Some(1)),
        "{done:#}"
    );
    assert_eq!(done["skipped"][0]["job_id"], fine.as_str());
    assert_eq!(done["skipped"][0]["reason"], "it already ended: succeeded");
    for id in [&running, &waiting] {
        app.wait_job(id, "cancelled", |j| j["status"] == "cancelled")
            .await;
    }

    // Refusals: both or neither selection, too many ids, a bad filter, a
    // viewer, a player.
    for (body, status) in [
        (json!({ "action": "retry" }), 422),
        (
            json!({ "action": "retry", "job_ids": [fine], "filter": {} }),
            422,
        ),
        (json!({ "action": "retry", "job_ids": [] }), 422),
        (
            json!({ "action": "retry", "job_ids": vec![fine.clone(); 501] }),
            422,
        ),
        (
            json!({ "action": "retry", "filter": { "kind": "nope" } }),
            400,
        ),
        (
            json!({ "action": "retry", "filter": { "colour": "red" } }),
            422,
        ),
        (json!({ "action": "explode", "job_ids": [fine] }), 422),
    ] {
        let resp = app
            .op(Method::POST, "/api/admin/jobs/bulk", Some(body.clone()))
            .await;
        assert_eq!(resp.status, status, "{body}: {}", resp.text);
    }
    let viewer = app.token_with("watcher", Access::Viewer);
    let resp = app
        .client
        .post(app.url("/api/admin/jobs/bulk"))
        .bearer_auth(viewer)
        .json(&json!({ "action": "retry", "filter": filter }))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 403);

    // Every bulk action asked for is recorded (a dry run is not: it
    // changes nothing), refusals with their reason; the one that acted
    // with what it did.
    let audit = audit_of(&app, "jobs.bulk_retry").await;
    let all = audit["entries"].as_array().expect("entries");
    assert_eq!(all.len(), 6, "{audit}");
    let refused = all.iter().filter(|e| e["outcome"] == "refused").count();
    assert_eq!(refused, 5, "{audit}");
    let entries: Vec<&Value> = all.iter().filter(|e| e["outcome"] == "ok").collect();
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(entries[0]["actor"], "ops");
    assert_eq!(entries[0]["outcome"], "ok");
    assert_eq!(entries[0]["detail"]["result"]["done"], 3, "{audit}");
    let audit = audit_of(&app, "jobs.bulk_cancel").await;
    assert_eq!(audit["entries"][0]["target"], "ids");
    assert_eq!(audit["entries"][0]["detail"]["result"]["done"], 2);

    // A NUL in an id or a filter's text (which Postgres stores in neither
    // text nor jsonb) matches nothing and is still recorded, as U+FFFD.
    let hostile = bulk(
        &app,
        json!({ "action": "cancel", "job_ids": ["a\u{0}b", ""], "filter": null }),
    )
    .await;
    assert_eq!(hostile["matched"], 0, "{hostile:#}");
    let hostile = bulk(
        &app,
        json!({ "action": "retry", "filter": { "q": "x\u{0}y" } }),
    )
    .await;
    assert_eq!(hostile["matched"], 0, "{hostile:#}");
    let audit = audit_of(&app, "jobs.bulk_cancel").await;
    assert_eq!(
        audit["entries"][0]["detail"]["job_ids"][0], "a\u{FFFD}b",
        "{audit}"
    );
    worker.stop().await;
}

/// The audit list of one action, newest first.
async fn audit_of(app: &TestApp, action: &str) -> Value {
    let resp = app
        .op(
            Method::GET,
            &format!("/api/admin/audit?action={action}"),
            None,
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text);
    resp.body
}

#[tokio::test]
async fn session_lanes_show_who_holds_what_and_why_turns_wait() {
    let app = TestApp::spawn().await;
    app.op(Method::POST, "/api/admin/queues/turn/pause", None)
        .await;
    let busy = app.session_with("gina", &[]).await;
    let quiet = app.session_with("hugo", &[]).await;
    for text in ["one", "two", "three"] {
        assert_eq!(app.submit("gina", &busy, text).await.status, 202);
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(app.submit("hugo", &quiet, "hello").await.status, 202);
    let worker = app.worker(|_| {}).await;

    let lanes = app.op(Method::GET, "/api/admin/lanes", None).await;
    assert_eq!(lanes.status, 200, "{}", lanes.text);
    assert_eq!(lanes.body["total"], 2);
    let listed = lanes.body["lanes"].as_array().expect("lanes");
    assert_eq!(listed[0]["session_id"], busy.as_str(), "longest wait first");
    assert_eq!(listed[0]["unfinished"], 3);
    assert_eq!(listed[0]["head_seq"], 1);
    assert_eq!(listed[0]["waiting"], "kind_paused");
    assert!(listed[0]["lease_holder"].is_null());
    assert_eq!(listed[1]["session_id"], quiet.as_str());
    let lane = app
        .op(Method::GET, &format!("/api/admin/lanes/{busy}"), None)
        .await;
    let seqs: Vec<i64> = lane.body["turns"]
        .as_array()
        .expect("turns")
        .iter()
        .filter_map(|t| t["seq"].as_i64())
        .collect();
    assert_eq!(seqs, [1, 2, 3], "{}", lane.text);
    let events = app
        .op(
            Method::GET,
            &format!("/api/admin/sessions/{busy}/events?after_seq=0"),
            None,
        )
        .await;
    let kinds: Vec<&str> = events.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "turn.queued").count(),
        3,
        "{kinds:?}"
    );
    // Viewers read lanes; players do not.
    let viewer = app.token_with("watcher", Access::Viewer);
    let resp = app
        .client
        .get(app.url("/api/admin/lanes"))
        .bearer_auth(&viewer)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    app.get("gina", &format!("/api/admin/sessions/{busy}/events"))
        .await
        .assert_error(403, "forbidden");
    app.op(Method::GET, "/api/admin/lanes?limit=0", None)
        .await
        .assert_error(400, "invalid_query");
    app.op(
        Method::GET,
        "/api/admin/lanes/00000000-0000-0000-0000-000000000000",
        None,
    )
    .await
    .assert_error(404, "not_found");

    // Resumed, the lanes drain.
    app.op(Method::POST, "/api/admin/queues/turn/resume", None)
        .await;
    app.wait_finished("gina", &busy, 3).await;
    app.wait_finished("hugo", &quiet, 1).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.op(Method::GET, "/api/admin/lanes", None).await.body["total"] != 0 {
        assert!(Instant::now() < deadline, "the lanes did not drain");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.stop().await;
}

#[tokio::test]
async fn activity_shows_live_workers_what_they_run_and_throughput() {
    let app = TestApp::spawn().await;
    let worker = app.jobs_worker(|_| {}).await;
    let quick = app.start_job("sleepy", json!({ "ms": 1 })).await;
    app.wait_job(&quick, "success", |j| j["status"] == "succeeded")
        .await;
    let long = app
        .start_job("sleepy", json!({ "ms": 60_000, "steps": 600 }))
        .await;
    app.wait_job(&long, "it to run", |j| j["status"] == "running")
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let activity = loop {
        let resp = app.op(Method::GET, "/api/admin/activity", None).await;
        assert_eq!(resp.status, 200, "{}", resp.text);
        let seen = resp.body["workers"].as_array().is_some_and(|w| {
            w.iter().any(|w| {
                w["alive"] == true
                    && w["running"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|h| h["key"] == long.as_str()))
            })
        });
        if seen {
            break resp.body;
        }
        assert!(
            Instant::now() < deadline,
            "no live worker runs it: {}",
            resp.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let sleepy = activity["throughput"]["hour"]
        .as_array()
        .expect("hour")
        .iter()
        .find(|s| s["kind"] == "sleepy")
        .cloned()
        .expect("sleepy series");
    let sum = |v: &Value| {
        v.as_array()
            .map_or(0, |a| a.iter().filter_map(Value::as_i64).sum::<i64>())
    };
    assert_eq!(sleepy["succeeded"].as_array().map(Vec::len), Some(12));
    assert_eq!(sum(&sleepy["succeeded"]), 1, "{sleepy}");
    let day = activity["throughput"]["day"]
        .as_array()
        .expect("day")
        .iter()
        .find(|s| s["kind"] == "sleepy")
        .cloned()
        .expect("sleepy series");
    assert_eq!(day["succeeded"].as_array().map(Vec::len), Some(24));
    assert_eq!(sum(&day["succeeded"]), 1);
    assert!(
        activity["workers"][0]["kinds"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "sleepy")),
        "{activity:#}"
    );
    app.op(
        Method::POST,
        &format!("/api/admin/jobs/{long}/cancel"),
        None,
    )
    .await;
    // A worker that stops cleanly leaves the list.
    worker.stop().await;
    let after = app.op(Method::GET, "/api/admin/activity", None).await;
    assert_eq!(
        after.body["workers"].as_array().map(Vec::len),
        Some(0),
        "{}",
        after.text
    );
}

/// Reads server-sent events from `resp` until `stop` says so (or a minute
/// passes); returns `(event, data)` pairs.
async fn read_events(
    resp: reqwest::Response,
    stop: impl Fn(&str, &Value) -> bool,
) -> Vec<(String, Value)> {
    let mut stream = resp.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("events in time")
            .expect("the stream ended")
            .expect("a chunk");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut name = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if name.is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(&data).expect("json data");
            let done = stop(&name, &value);
            events.push((name, value));
            if done {
                return events;
            }
        }
    }
}

#[tokio::test]
async fn live_feeds_stream_queue_changes_and_a_running_turns_reply() {
    let app = TestApp::spawn().await;
    let viewer = app.token_with("watcher", Access::Viewer);
    let feed = app
        .client
        .get(app.url("/api/admin/live"))
        .bearer_auth(&viewer)
        .send()
        .await
        .expect("request");
    assert_eq!(feed.status(), 200);
    assert!(
        feed.headers()["content-type"]
            .to_str()
            .is_ok_and(|t| t.starts_with("text/event-stream"))
    );
    let pause = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        app.op(Method::POST, "/api/admin/queues/prune/pause", None)
            .await;
    };
    let (events, ()) = tokio::join!(
        read_events(feed, |_, page| {
            page["queues"].as_array().is_some_and(|q| {
                q.iter()
                    .any(|k| k["kind"] == "prune" && k["paused"] == true)
            })
        }),
        pause
    );
    assert!(
        events.len() >= 2,
        "the first state, then the change: {events:?}"
    );
    assert!(events.iter().all(|(name, _)| name == "queues"));

    // A running turn's reply, chunk by chunk, then the completed turn.
    let session = app.session_with("gina", &[]).await;
    let worker = app.worker(|c| c.scripted_latency_ms = 1500).await;
    let submitted = app.submit("gina", &session, "look around").await;
    let job = submitted.body["job_id"].as_str().expect("job").to_owned();
    let reply = app
        .client
        .get(app.url(&format!("/api/admin/jobs/{job}/reply")))
        .bearer_auth(&viewer)
        .send()
        .await
        .expect("request");
    assert_eq!(reply.status(), 200);
    let events = read_events(reply, |name, turn| {
        name == "turn" && turn["status"] == "completed"
    })
    .await;
    assert_eq!(events[0].0, "turn", "{events:?}");
    let deltas: Vec<&Value> = events
        .iter()
        .filter(|(name, _)| name == "delta")
        .map(|(_, d)| d)
        .collect();
    assert!(!deltas.is_empty(), "the reply streamed: {events:?}");
    let streamed: String = deltas.iter().filter_map(|d| d["text"].as_str()).collect();
    let output = events
        .last()
        .map(|(_, t)| t["output"].as_str().unwrap_or_default().to_owned());
    assert!(
        output.as_deref().is_some_and(|o| o.ends_with(&streamed)),
        "{streamed:?} is the end of {output:?}"
    );
    // Not a turn's job, or no job: 404; a player: 403.
    let prune = app.start_job("prune", json!({ "dry_run": true })).await;
    app.op(Method::GET, &format!("/api/admin/jobs/{prune}/reply"), None)
        .await
        .assert_error(404, "not_found");
    app.get("gina", &format!("/api/admin/jobs/{job}/reply"))
        .await
        .assert_error(403, "forbidden");
    worker.stop().await;
}
