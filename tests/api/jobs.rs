//! The job platform's plain lane end to end: jobs of kinds that are not
//! session-serial, started through the operators' API and run by worker
//! runtimes (in this process, or child processes that get killed):
//! takeover after `kill -9`, timeouts, per-kind concurrency next to turns,
//! pause, cancel, retry, unique keys, progress and who may read a job.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::TestApp;

fn status(job: &Value) -> &str {
    job["status"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_plain_job_runs_and_its_result_and_progress_are_recorded() {
    let app = TestApp::spawn().await;
    let worker = app.jobs_worker(|_| {}).await;
    let id = app
        .start_job("sleepy", json!({ "ms": 2400, "steps": 3 }))
        .await;
    // While it runs, its progress and lease holder show.
    let running = app
        .wait_job(&id, "progress while running", |j| {
            status(j) == "running" && j["progress"]["done"].as_i64().is_some_and(|d| d >= 1)
        })
        .await;
    assert_eq!(running["progress"]["total"], 3);
    assert_eq!(running["progress"]["message"], "sleeping");
    assert!(running["lease_holder"].is_string(), "{running:#}");
    let done = app
        .wait_job(&id, "success", |j| status(j) == "succeeded")
        .await;
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["result"]["slept_ms"], 2400);
    assert_eq!(done["result"]["attempt"], 1);
    assert_eq!(done["kind"], "sleepy");
    assert_eq!(done["payload"]["version"], 1);
    assert_eq!(done["payload"]["payload"]["ms"], 2400);
    assert!(
        done["lease_holder"].is_null(),
        "the lease ends with the run"
    );
    worker.stop().await;

    let text = app.metrics().await;
    for needle in [
        "questboard_jobs_started_total{kind=\"sleepy\"}",
        "questboard_jobs_succeeded_total{kind=\"sleepy\"}",
        "questboard_job_run_seconds_bucket{kind=\"sleepy\",outcome=\"succeeded\"",
        "questboard_job_items_total{kind=\"sleepy\"}",
        "questboard_job_progress_ratio{kind=\"sleepy\"}",
        "questboard_worker_busy_slots{kind=\"sleepy\"}",
    ] {
        assert!(text.contains(needle), "{needle} missing from /metrics");
    }
}

#[tokio::test]
async fn a_worker_killed_mid_job_is_taken_over_and_the_result_recorded_once() {
    let app = TestApp::spawn().await;
    let (mut doomed, log) = app.child_worker(&[("QB_WORKER_KINDS", "sleepy")]);
    let id = app
        .start_job("sleepy", json!({ "ms": 60000, "steps": 60 }))
        .await;
    let running = app
        .wait_job(&id, "the child to run it", |j| status(j) == "running")
        .await;
    let holder = running["lease_holder"].as_str().expect("holder").to_owned();
    assert!(
        holder.contains(&doomed.id().to_string()),
        "{holder}; log: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    doomed.kill().expect("kill -9");
    doomed.wait().expect("reap");
    let killed = Instant::now();

    // The job is long; the survivor gets a shorter copy of the same run by
    // being the one that takes over: its lease lapses after the TTL.
    let survivor = app.jobs_worker(|c| c.lease_ttl_ms = 1500).await;
    let taken = app
        .wait_job(&id, "the takeover", |j| {
            status(j) == "running" && j["attempts"] == 2
        })
        .await;
    // Not a speed check: a bound far below the job's 60 s and the default
    // 30 s TTL (so it was the 1.5 s lease that lapsed), loose enough for a
    // loaded machine.
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "taken over after {took:?} (TTL 1.5 s + poll)"
    );
    assert_ne!(taken["lease_holder"].as_str(), Some(holder.as_str()));
    let errors = taken["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0]["error"],
        "the worker running it stopped responding"
    );
    assert_eq!(errors[0]["attempt"], 1);
    // Cut the wait short: cancel, and check the cancellation is the one
    // outcome recorded (no result from the dead run ever appears).
    let resp = app
        .op(Method::POST, &format!("/api/admin/jobs/{id}/cancel"), None)
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text);
    let ended = app
        .wait_job(&id, "the cancellation", |j| status(j) == "cancelled")
        .await;
    assert!(ended["result"].is_null());
    assert_eq!(ended["attempts"], 2);
    survivor.stop().await;
}

#[tokio::test]
async fn a_short_job_of_a_killed_worker_completes_elsewhere_with_one_result() {
    let app = TestApp::spawn().await;
    let (mut doomed, _log) = app.child_worker(&[("QB_WORKER_KINDS", "sleepy")]);
    // Long enough to be killed mid-run by the first worker, short for the second.
    let id = app.start_job("sleepy", json!({ "ms": 4000 })).await;
    app.wait_job(&id, "the child to run it", |j| status(j) == "running")
        .await;
    doomed.kill().expect("kill -9");
    doomed.wait().expect("reap");
    let survivor = app.jobs_worker(|c| c.lease_ttl_ms = 1500).await;
    let done = app
        .wait_job(&id, "completion by the survivor", |j| {
            status(j) == "succeeded"
        })
        .await;
    assert_eq!(done["attempts"], 2);
    assert_eq!(
        done["result"]["attempt"], 2,
        "the survivor's run is the one recorded"
    );
    assert_eq!(done["result"]["pid"], std::process::id());
    let fenced: i64 =
        sqlx::query_scalar("SELECT count(*) FROM leases WHERE scope = 'job' AND key = $1")
            .bind(&id)
            .fetch_one(&app.db.pool)
            .await
            .expect("leases");
    assert_eq!(fenced, 0, "a settled run's lease is gone");
    survivor.stop().await;
}

#[tokio::test]
async fn a_run_past_its_kinds_timeout_is_stopped_and_retried() {
    let app = TestApp::spawn().await;
    let worker = app.jobs_worker(|_| {}).await;
    let id = app.start_job("stuck", json!({})).await;
    let done = app
        .wait_job(&id, "the retry to succeed", |j| status(j) == "succeeded")
        .await;
    // The first run hangs for 30 s; the 500 ms timeout cut it short (an
    // error, a second attempt).
    assert_eq!(done["attempts"], 2);
    assert_eq!(done["result"]["attempt"], 2);
    assert_eq!(done["errors"][0]["error"], "timed out after 0.5 s");
    worker.stop().await;
    assert!(
        app.metrics()
            .await
            .contains("questboard_jobs_timed_out_total{kind=\"stuck\"} 1")
    );
}

#[tokio::test]
async fn per_kind_concurrency_holds_and_turns_keep_their_slots() {
    let app = TestApp::spawn().await;
    let worker = app
        .jobs_worker(|c| c.jobs_concurrency = "sleepy=2".into())
        .await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(app.start_job("sleepy", json!({ "ms": 3000 })).await);
    }
    // Every sleepy slot busy with long jobs...
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let running: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM apalis.jobs WHERE job_type = 'test.sleepy' AND status = 'Running'",
        )
        .fetch_one(&app.db.pool)
        .await
        .expect("count");
        assert!(
            running <= 2,
            "{running} sleepy jobs ran at once with concurrency 2"
        );
        if running == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the sleepy jobs did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...turns on other sessions are still picked up at once.
    for n in 0..3 {
        let session = app.create_session("alice", &format!("Busy {n}")).await;
        app.submit("alice", &session, "I knock.").await;
        let turns = app.wait_finished("alice", &session, 1).await;
        assert_eq!(turns[0]["status"], "completed");
        let waited = turns[0]["started_at"]
            .as_str()
            .and_then(|s| s.parse::<chrono::DateTime<chrono::Utc>>().ok())
            .zip(
                turns[0]["created_at"]
                    .as_str()
                    .and_then(|s| s.parse::<chrono::DateTime<chrono::Utc>>().ok()),
            )
            .map(|(s, c)| s - c)
            .expect("times");
        assert!(
            waited < chrono::TimeDelta::milliseconds(1000),
            "a turn waited {waited} while the plain slots were busy"
        );
    }
    let queues = app.op(Method::GET, "/api/admin/queues", None).await;
    let sleepy = queues.body["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .find(|q| q["kind"] == "sleepy")
        .cloned()
        .expect("sleepy queue");
    assert_eq!(sleepy["running"], 2, "{sleepy}");
    assert!(
        sleepy["queued"].as_i64().is_some_and(|q| q >= 1),
        "{sleepy}"
    );
    for id in &ids {
        app.wait_job(id, "every job to finish", |j| status(j) == "succeeded")
            .await;
    }
    worker.stop().await;
}

#[tokio::test]
async fn a_paused_kind_is_not_claimed_until_resumed() {
    let app = TestApp::spawn().await;
    let resp = app
        .op(Method::POST, "/api/admin/queues/sleepy/pause", None)
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text);
    assert_eq!(resp.body, json!({ "kind": "sleepy", "paused": true }));
    let worker = app.jobs_worker(|_| {}).await;
    let id = app.start_job("sleepy", json!({ "ms": 10 })).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let job = app.job_detail(&id).await;
    assert_eq!(status(&job), "queued", "a paused kind ran: {job:#}");
    let queues = app.op(Method::GET, "/api/admin/queues", None).await;
    assert!(
        queues.body["queues"]
            .as_array()
            .expect("queues")
            .iter()
            .any(|q| q["kind"] == "sleepy" && q["paused"] == true && q["queued"] == 1),
        "{}",
        queues.text
    );
    let resp = app
        .op(Method::POST, "/api/admin/queues/sleepy/resume", None)
        .await;
    assert_eq!(resp.body["paused"], false);
    app.wait_job(&id, "the resumed kind to run", |j| status(j) == "succeeded")
        .await;
    // Unknown kinds are 404.
    let resp = app
        .op(Method::POST, "/api/admin/queues/nope/pause", None)
        .await;
    resp.assert_error(404, "not_found");
    worker.stop().await;
}

#[tokio::test]
async fn queued_and_running_jobs_are_cancelled_and_cancelled_or_failed_ones_retried() {
    let app = TestApp::spawn().await;
    // Queued (nobody serves it yet): cancelled outright, never runs.
    let queued = app.start_job("sleepy", json!({ "ms": 10 })).await;
    let resp = app
        .op(
            Method::POST,
            &format!("/api/admin/jobs/{queued}/cancel"),
            None,
        )
        .await;
    assert_eq!(resp.body["outcome"], "cancelled", "{}", resp.text);
    // Attempts and errors are counted exactly below: a lease long enough
    // that a loaded machine's late renewal never looks like a dead worker
    // (a takeover would add a run and an error of its own).
    let worker = app.jobs_worker(|c| c.lease_ttl_ms = 15_000).await;

    // Running: asked to stop, it stops at a checkpoint, no result. The
    // job would sleep for ten minutes, far past `wait_job`'s deadline, so
    // reaching `cancelled` at all shows it stopped early.
    let running = app
        .start_job("sleepy", json!({ "ms": 600_000, "steps": 6000 }))
        .await;
    app.wait_job(&running, "it to run", |j| status(j) == "running")
        .await;
    let resp = app
        .op(
            Method::POST,
            &format!("/api/admin/jobs/{running}/cancel"),
            None,
        )
        .await;
    assert_eq!(resp.body["outcome"], "cancel_requested", "{}", resp.text);
    let ended = app
        .wait_job(&running, "the cancellation", |j| status(j) == "cancelled")
        .await;
    assert!(ended["result"].is_null(), "{ended:#}");
    assert_eq!(ended["last_error"], "cancelled by an operator", "{ended:#}");
    // Cancelling it again is a conflict; so is cancelling a turn.
    let resp = app
        .op(
            Method::POST,
            &format!("/api/admin/jobs/{running}/cancel"),
            None,
        )
        .await;
    resp.assert_error(409, "conflict");

    let job = app.job_detail(&queued).await;
    assert_eq!(status(&job), "cancelled", "{job:#}");
    assert_eq!(
        job["attempts"], 0,
        "a cancelled queued job never ran: {job:#}"
    );

    // Retry: the cancelled one runs now, attempts reset.
    let resp = app
        .op(
            Method::POST,
            &format!("/api/admin/jobs/{queued}/retry"),
            None,
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text);
    let done = app
        .wait_job(&queued, "the retried job", |j| status(j) == "succeeded")
        .await;
    assert_eq!(done["attempts"], 1, "{done:#}");

    // A job that failed for good (three failed runs) is retried too.
    app.db.expect_failed_jobs();
    let failing = app
        .start_job("sleepy", json!({ "ms": 10, "fail_attempts": 9 }))
        .await;
    let failed = app
        .wait_job(&failing, "it to fail for good", |j| status(j) == "failed")
        .await;
    assert_eq!(failed["attempts"], 3, "{failed:#}");
    assert_eq!(
        failed["errors"].as_array().map(Vec::len),
        Some(3),
        "{failed:#}"
    );
    assert_eq!(
        failed["last_error"], "planned failure of attempt 3 (gave up after 3 attempts)",
        "{failed:#}"
    );
    // Succeeded and running jobs are not retried.
    let resp = app
        .op(
            Method::POST,
            &format!("/api/admin/jobs/{queued}/retry"),
            None,
        )
        .await;
    resp.assert_error(409, "conflict");
    let resp = app
        .op(
            Method::POST,
            &format!("/api/admin/jobs/{failing}/retry"),
            None,
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text);
    assert_eq!(resp.body["status"], "queued");
    assert_eq!(resp.body["attempts"], 0);
    // It fails again (its payload says so), three runs more: attempts were reset.
    let failed = app
        .wait_job(&failing, "it to fail again", |j| {
            status(j) == "failed" && j["attempts"] == 3
        })
        .await;
    assert_eq!(
        failed["errors"].as_array().map(Vec::len),
        Some(6),
        "{failed:#}"
    );

    // Turns are not retried or cancelled by hand.
    let session = app.create_session("alice", "Turns").await;
    let turn = app.submit("alice", &session, "hi").await;
    let turn_job = turn.body["job_id"].as_str().expect("job");
    for action in ["cancel", "retry"] {
        let resp = app
            .op(
                Method::POST,
                &format!("/api/admin/jobs/{turn_job}/{action}"),
                None,
            )
            .await;
        resp.assert_error(409, "conflict");
    }
    worker.stop().await;
}

#[tokio::test]
async fn a_unique_key_returns_the_live_job_and_is_given_up_when_it_is_cancelled() {
    let app = TestApp::spawn().await;
    let start = |key: &'static str| {
        let app = &app;
        async move {
            app.op(
                Method::POST,
                "/api/admin/jobs",
                Some(json!({ "kind": "sleepy", "payload": { "ms": 10 }, "unique_key": key })),
            )
            .await
        }
    };
    let first = start("nightly").await;
    assert_eq!(first.status, 201, "{}", first.text);
    assert_eq!(first.body["created"], true);
    let id = first.body["job_id"].as_str().expect("id").to_owned();
    let again = start("nightly").await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body, json!({ "job_id": id, "created": false }));
    // A different key is a different job.
    assert_eq!(start("weekly").await.status, 201);
    // Succeeded jobs keep their key (the work was done)...
    let worker = app.jobs_worker(|_| {}).await;
    app.wait_job(&id, "it to run", |j| status(j) == "succeeded")
        .await;
    assert_eq!(start("nightly").await.body["job_id"], id.as_str());
    // ...cancelled ones give it up, so the work can be asked for again.
    worker.stop().await;
    let monthly = start("monthly").await.body["job_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let resp = app
        .op(
            Method::POST,
            &format!("/api/admin/jobs/{monthly}/cancel"),
            None,
        )
        .await;
    assert_eq!(resp.body["outcome"], "cancelled", "{}", resp.text);
    let fresh = start("monthly").await;
    assert_eq!(fresh.status, 201, "{}", fresh.text);
    assert_ne!(fresh.body["job_id"], monthly.as_str());
    // The cancelled one keeps its key for display; retrying it now would
    // run the work twice.
    assert_eq!(app.job_detail(&monthly).await["unique_key"], "monthly");
    let resp = app
        .op(
            Method::POST,
            &format!("/api/admin/jobs/{monthly}/retry"),
            None,
        )
        .await;
    resp.assert_error(409, "conflict");
    // Keys are bounded.
    let resp = app
        .op(
            Method::POST,
            "/api/admin/jobs",
            Some(
                json!({ "kind": "sleepy", "payload": { "ms": 1 }, "unique_key": "x".repeat(300) }),
            ),
        )
        .await;
    resp.assert_error(422, "validation_failed");
}

#[tokio::test]
async fn session_jobs_are_visible_to_members_and_report_progress_as_session_events() {
    let app = TestApp::spawn().await;
    let session = app.session_with("alice", &["bob"]).await;
    let worker = app.jobs_worker(|_| {}).await;
    let id = app
        .start_job(
            "sleepy",
            json!({ "ms": 2200, "steps": 2, "session": session }),
        )
        .await;
    app.wait_job(&id, "success", |j| status(j) == "succeeded")
        .await;
    // Members read it; others get 404, as for a job that does not exist.
    let seen = app.get("bob", &format!("/api/jobs/{id}")).await;
    assert_eq!(seen.status, 200, "{}", seen.text);
    assert_eq!(seen.body["session_id"], session.as_str());
    assert_eq!(seen.body["result"]["slept_ms"], 2200);
    assert_eq!(seen.body["progress"]["done"], 2);
    app.get("mallory", &format!("/api/jobs/{id}"))
        .await
        .assert_error(404, "not_found");
    // An operator who is not a member gets the members' view refused too
    // (as the README says); the operators' route shows it to them.
    let operator = |path: String| {
        let app = &app;
        async move {
            app.call_with_auth(
                Method::GET,
                &path,
                &format!("Bearer {}", app.operator_token("ops")),
            )
            .await
        }
    };
    operator(format!("/api/jobs/{id}"))
        .await
        .assert_error(404, "not_found");
    assert_eq!(operator(format!("/api/admin/jobs/{id}")).await.status, 200);
    // Its progress reached the session's log (at most once a second).
    let events = app.events("alice", &session, 0).await;
    let progress: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "job.progress")
        .collect();
    assert!(!progress.is_empty() && progress.len() <= 3, "{events:#?}");
    assert_eq!(progress[0]["data"]["job_id"], id.as_str());
    assert_eq!(progress[0]["data"]["kind"], "sleepy");

    // A job without a session is for operators only.
    let lone = app.start_job("sleepy", json!({ "ms": 1 })).await;
    app.get("alice", &format!("/api/jobs/{lone}"))
        .await
        .assert_error(404, "not_found");
    let resp = app
        .call_with_auth(
            Method::GET,
            &format!("/api/jobs/{lone}"),
            &format!("Bearer {}", app.operator_token("ops")),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text);
    assert_eq!(resp.body["kind"], "sleepy");
    worker.stop().await;
}

#[tokio::test]
async fn a_worker_serves_only_the_kinds_it_is_told_to() {
    let app = TestApp::spawn().await;
    let worker = app
        .jobs_worker(|c| c.worker_kinds = Some(vec!["stuck".into()]))
        .await;
    let id = app.start_job("sleepy", json!({ "ms": 1 })).await;
    let session = app.create_session("alice", "Nobody here").await;
    app.submit("alice", &session, "hello?").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(status(&app.job_detail(&id).await), "queued");
    assert_eq!(app.turns("alice", &session).await[0]["status"], "queued");
    worker.stop().await;
    // Unknown kinds are refused at start.
    let mut config = app.config.clone();
    config.worker_kinds = Some(vec!["nope".into()]);
    let refused = questboard::app::worker_with(
        &config,
        app.db.pool.clone(),
        &app.bus,
        crate::kinds::test_registry(),
    );
    assert!(refused.is_err());
    config.worker_kinds = None;
    config.jobs_concurrency = "sleepy=0".into();
    assert!(
        questboard::app::worker_with(
            &config,
            app.db.pool.clone(),
            &app.bus,
            crate::kinds::test_registry(),
        )
        .is_err()
    );
}

#[tokio::test]
async fn pausing_turns_holds_every_session_until_resumed() {
    let app = TestApp::spawn().await;
    let session = app.create_session("alice", "Held").await;
    let resp = app
        .op(Method::POST, "/api/admin/queues/turn/pause", None)
        .await;
    assert_eq!(resp.body["paused"], true, "{}", resp.text);
    let worker = app.worker(|_| {}).await;
    app.submit("alice", &session, "Anyone?").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(app.turns("alice", &session).await[0]["status"], "queued");
    app.op(Method::POST, "/api/admin/queues/turn/resume", None)
        .await;
    let turns = app.wait_finished("alice", &session, 1).await;
    assert_eq!(turns[0]["status"], "completed");
    worker.stop().await;
}

/// A run's queue wait is counted from when the job became due, on the
/// database's clock: a job scheduled ahead and claimed when due waited
/// almost nothing (it used to read as its whole time in the table); one
/// due a while back waited that long.
#[tokio::test]
async fn a_runs_wait_counts_from_when_it_became_due() {
    use questboard_core::jobs::{self, Job as _, plain};
    use questboard_workers::jobs::reconcile::Reconcile;
    let app = TestApp::spawn().await;
    let mut conn = app.db.pool.acquire().await.expect("conn");
    let ahead = chrono::Utc::now() + chrono::TimeDelta::seconds(2);
    let scheduled = jobs::enqueue(
        &mut conn,
        &Reconcile::default(),
        &jobs::Options {
            run_at: Some(ahead),
            ..jobs::Options::default()
        },
    )
    .await
    .expect("enqueue");
    drop(conn);
    let want = plain::Want {
        kind: Reconcile::SPEC.kind,
        queue: Reconcile::SPEC.queue,
        limit: 1,
    };
    let ttl = Duration::from_secs(30);
    let claimed = loop {
        let claimed = plain::claim(&app.db.pool, "test", ttl, std::slice::from_ref(&want))
            .await
            .expect("claim");
        if let Some(job) = claimed.into_iter().next() {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(claimed.id, scheduled.id);
    assert!(
        claimed.waited < Duration::from_secs(1),
        "a job claimed when due waited {:?}",
        claimed.waited
    );
    // One due three seconds ago (backdated as a retry's time would be).
    let mut conn = app.db.pool.acquire().await.expect("conn");
    let late = jobs::enqueue(&mut conn, &Reconcile::default(), &jobs::Options::default())
        .await
        .expect("enqueue");
    sqlx::query("UPDATE apalis.jobs SET run_at = now() - interval '3 seconds' WHERE id = $1")
        .bind(&late.id)
        .execute(&mut *conn)
        .await
        .expect("backdate");
    let claimed = plain::claim(&app.db.pool, "test", ttl, std::slice::from_ref(&want))
        .await
        .expect("claim");
    let job = claimed.first().expect("the late job");
    assert_eq!(job.id, late.id);
    assert!(job.waited >= Duration::from_secs(3), "{:?}", job.waited);
}
