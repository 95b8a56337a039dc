//! The turn pipeline end to end: submission and idempotency over HTTP,
//! workers (in-process runtimes and real processes) running turns under
//! per-session leases, ordering, parallelism, takeover after a crash,
//! fencing, retries and the OpenAI-compatible provider against a fake
//! server speaking the real streaming protocol.

use std::time::Duration;

use chrono::{DateTime, Utc};
use questboard::config::LlmProvider;
use serde_json::{Value, json};

use crate::fake_llm::{FakeLlm, Reply, state_call};
use crate::helpers::{TestApp, signal, wait_log};

fn ts(turn: &Value, field: &str) -> DateTime<Utc> {
    turn[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} missing: {turn}"))
        .parse()
        .expect("timestamp")
}

async fn job(app: &TestApp, user: &str, job_id: &str) -> Value {
    let resp = app.get(user, &format!("/api/jobs/{job_id}")).await;
    assert_eq!(resp.status, 200, "{}", resp.text);
    resp.body
}

#[tokio::test]
async fn a_turn_is_accepted_queued_and_answered_by_the_scripted_game_master() {
    let app = TestApp::spawn().await;
    let session = app.session_with("alice", &["bob"]).await;
    let resp = app.submit("bob", &session, "I open the iron door.").await;
    assert_eq!(resp.status, 202, "{}", resp.text);
    assert_eq!(resp.body["seq"], 1);
    assert_eq!(resp.body["status"], "queued");
    let job_id = resp.body["job_id"].as_str().expect("job_id").to_owned();
    assert_eq!(job_id.len(), 26, "job ids are ULIDs");

    // Nothing runs it yet: the API does no slow work.
    let queued = job(&app, "alice", &job_id).await;
    assert_eq!(
        (queued["status"].as_str(), queued["attempts"].as_i64()),
        (Some("queued"), Some(0))
    );
    assert_eq!(queued["kind"], "turn");
    assert_eq!(queued["max_attempts"], 5);

    let worker = app.worker(|_| {}).await;
    let turns = app.wait_finished("bob", &session, 1).await;
    let turn = &turns[0];
    assert_eq!(turn["status"], "completed");
    assert_eq!(turn["author_user_id"], "bob");
    let output = turn["output"].as_str().expect("output");
    assert!(
        output.contains("I open the iron door.") && output.contains("having read 0 earlier"),
        "{output}"
    );
    assert!(ts(turn, "started_at") >= ts(turn, "created_at"));
    assert!(ts(turn, "completed_at") >= ts(turn, "started_at"));
    let done = job(&app, "bob", &job_id).await;
    assert_eq!(
        (done["status"].as_str(), done["attempts"].as_i64()),
        (Some("succeeded"), Some(1))
    );
    assert_eq!(done["session_id"], session.as_str());
    worker.stop().await;

    // The pipeline's metrics are on /metrics (the worker shares this process).
    let text = app.metrics().await;
    for needle in [
        "questboard_jobs_enqueued_total{kind=\"turn\"}",
        "questboard_jobs_started_total{kind=\"turn\"}",
        "questboard_jobs_succeeded_total{kind=\"turn\"}",
        "questboard_job_queue_wait_seconds_bucket{kind=\"turn\"",
        "questboard_job_run_seconds_bucket{",
        "questboard_lease_acquisitions_total{",
        "questboard_lease_hold_seconds_bucket{scope=\"session\"",
        "questboard_provider_request_seconds_bucket{",
        "questboard_queue_depth{",
        "questboard_turn_chunks_total",
    ] {
        assert!(text.contains(needle), "{needle} missing from /metrics");
    }
}

#[tokio::test]
async fn an_idle_worker_is_woken_through_redis_when_a_turn_is_submitted() {
    let app = TestApp::spawn().await;
    let session = app.create_session("alice", "Wake").await;
    // Polling once a minute: only the Redis wake-up can make it pick up in time.
    let worker = app.worker(|c| c.worker_poll_ms = 60_000).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.submit("alice", &session, "hello?").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let turns = app.turns("alice", &session).await;
        if turns[0]["status"] == "completed" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the idle worker was not woken: {turns:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.stop().await;
}

#[tokio::test]
async fn twenty_turns_to_one_session_run_one_at_a_time_in_seq_order() {
    let app = TestApp::spawn().await;
    let session = app.create_session("alice", "Hot").await;
    // Three runtimes race for the same session.
    let workers = vec![
        app.worker(|_| {}).await,
        app.worker(|_| {}).await,
        app.worker(|_| {}).await,
    ];
    let texts: Vec<String> = (0..20).map(|i| format!("action {i}")).collect();
    let submitted =
        futures::future::join_all(texts.iter().map(|text| app.submit("alice", &session, text)))
            .await;
    let mut seqs: Vec<i64> = submitted
        .iter()
        .map(|r| {
            assert_eq!(r.status, 202, "{}", r.text);
            r.body["seq"].as_i64().expect("seq")
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=20).collect::<Vec<_>>(),
        "seq increases by one per turn"
    );

    let turns = app.wait_finished("alice", &session, 20).await;
    for (i, turn) in turns.iter().enumerate() {
        assert_eq!(turn["seq"], i as i64 + 1);
        assert_eq!(turn["status"], "completed", "{turn}");
        let output = turn["output"].as_str().expect("output");
        assert!(
            output.contains(&format!("having read {i} earlier exchanges")),
            "turn {} did not see the {i} turns before it: {output}",
            i + 1
        );
        if i > 0 {
            let previous = &turns[i - 1];
            assert!(
                ts(turn, "started_at") >= ts(previous, "completed_at"),
                "turn {} started before turn {} finished",
                i + 1,
                i
            );
        }
    }
    for worker in workers {
        worker.stop().await;
    }
}

#[tokio::test]
async fn turns_of_different_sessions_run_at_the_same_time() {
    let app = TestApp::spawn().await;
    let mut sessions = Vec::new();
    for i in 0..4 {
        sessions.push(app.create_session("alice", &format!("Table {i}")).await);
    }
    let worker = app
        .worker(|c| {
            c.scripted_latency_ms = 600;
            c.worker_concurrency = 4;
        })
        .await;
    for session in &sessions {
        assert_eq!(
            app.submit("alice", session, "roll for initiative")
                .await
                .status,
            202
        );
    }
    let mut intervals = Vec::new();
    for session in &sessions {
        let turns = app.wait_finished("alice", session, 1).await;
        intervals.push((ts(&turns[0], "started_at"), ts(&turns[0], "completed_at")));
    }
    let latest_start = intervals.iter().map(|(s, _)| *s).max().expect("starts");
    let earliest_end = intervals.iter().map(|(_, e)| *e).min().expect("ends");
    assert!(
        latest_start < earliest_end,
        "the four turns did not overlap: {intervals:?}"
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_worker_killed_mid_turn_is_taken_over_after_its_lease_expires() {
    let app = TestApp::spawn().await;
    let session = app.create_session("alice", "Crash").await;
    let resp = app.submit("alice", &session, "I pull the lever.").await;
    let job_id = resp.body["job_id"].as_str().expect("job").to_owned();

    // A worker process with a slow model picks the turn up...
    let (mut doomed, _log) = app
        .worker_running_first_turn("alice", &session, 30000, 1500)
        .await;
    // The job shows the run in progress (read from the turn: its job row
    // is written at enqueue and settle only).
    let running = job(&app, "alice", &job_id).await;
    assert_eq!(
        (running["status"].as_str(), running["attempts"].as_i64()),
        (Some("running"), Some(1))
    );
    let (first_holder, first_token): (String, i64) =
        sqlx::query_as("SELECT holder, token FROM leases WHERE scope = 'session' AND key = $1")
            .bind(&session)
            .fetch_one(&app.db.pool)
            .await
            .expect("lease");
    // ...and dies without a word.
    doomed.kill().expect("kill -9");
    doomed.wait().expect("reap");

    let survivor = app.worker(|c| c.lease_ttl_ms = 1500).await;
    let turns = app.wait_finished("alice", &session, 1).await;
    assert_eq!(turns[0]["status"], "completed");
    assert!(
        turns[0]["output"]
            .as_str()
            .is_some_and(|o| o.contains("I pull the lever."))
    );

    // The model was asked twice, the reply recorded once, by the new holder.
    let done = job(&app, "alice", &job_id).await;
    assert_eq!(
        (done["status"].as_str(), done["attempts"].as_i64()),
        (Some("succeeded"), Some(2))
    );
    let (fence, prev_holder): (i64, Option<String>) = sqlx::query_as(
        "SELECT t.fence_token, l.prev_holder FROM turns t, leases l
         WHERE t.job_id = $1 AND l.scope = 'session' AND l.key = t.session_id::text",
    )
    .bind(&job_id)
    .fetch_one(&app.db.pool)
    .await
    .expect("fence");
    assert!(
        fence > first_token,
        "the reply was written under the new lease"
    );
    assert!(
        first_holder.contains(&doomed.id().to_string()),
        "{first_holder}"
    );
    // The survivor took the lease over from the dead worker: not a clean
    // hand-off, the dead holder is recorded as the one it replaced.
    assert_eq!(prev_holder.as_deref(), Some(first_holder.as_str()));
    survivor.stop().await;
}

#[tokio::test]
async fn a_turn_whose_every_attempt_died_with_its_worker_fails_instead_of_looping() {
    let app = TestApp::spawn_with(|c| c.job_max_attempts = 1).await;
    // On purpose: the poisoned turn's job fails for good.
    app.db.expect_failed_jobs();
    let session = app.create_session("alice", "Poison").await;
    let job_id = app
        .submit("alice", &session, "a turn that kills workers")
        .await
        .body["job_id"]
        .as_str()
        .expect("job")
        .to_owned();
    app.submit("alice", &session, "the next turn").await;
    let (mut doomed, _log) = app
        .worker_running_first_turn("alice", &session, 30000, 1000)
        .await;
    doomed.kill().expect("kill -9");
    doomed.wait().expect("reap");

    let survivor = app.worker(|c| c.lease_ttl_ms = 1000).await;
    let turns = app.wait_finished("alice", &session, 2).await;
    assert_eq!(turns[0]["status"], "failed");
    assert_eq!(
        turns[0]["error"],
        "the worker running it stopped responding (gave up after 1 attempts)"
    );
    assert_eq!(turns[1]["status"], "completed");
    let job = job(&app, "alice", &job_id).await;
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("failed"), Some(1))
    );
    survivor.stop().await;
}

#[tokio::test]
async fn a_paused_worker_that_lost_its_lease_cannot_write_its_stale_reply() {
    let app = TestApp::spawn().await;
    let session = app.create_session("alice", "Pause").await;
    let resp = app.submit("alice", &session, "I hold my breath.").await;
    let job_id = resp.body["job_id"].as_str().expect("job").to_owned();

    let (mut paused, log) = app
        .worker_running_first_turn("alice", &session, 1500, 900)
        .await;
    signal(&paused, "-STOP");

    // While it is frozen, its lease lapses and another worker finishes the turn.
    let other = app.worker(|c| c.lease_ttl_ms = 900).await;
    let turns = app.wait_finished("alice", &session, 1).await;
    let fence: i64 = sqlx::query_scalar("SELECT fence_token FROM turns WHERE job_id = $1")
        .bind(&job_id)
        .fetch_one(&app.db.pool)
        .await
        .expect("fence");
    other.stop().await;

    // Thawed, the stale holder finishes its model call and tries to record it.
    signal(&paused, "-CONT");
    let text = wait_log(
        &log,
        "write refused by the fencing check",
        Duration::from_secs(20),
    )
    .await;
    paused.kill().expect("kill");
    paused.wait().expect("reap");
    assert!(
        text.contains("write refused by the fencing check"),
        "stale worker log:\n{text}"
    );

    // The recorded reply is still the one written under the newer lease.
    let after: (i64, String) =
        sqlx::query_as("SELECT fence_token, status FROM turns WHERE job_id = $1")
            .bind(&job_id)
            .fetch_one(&app.db.pool)
            .await
            .expect("turn");
    assert_eq!(after, (fence, "completed".to_owned()));
    assert_eq!(app.turns("alice", &session).await, turns);
}

#[tokio::test]
async fn resubmitting_with_the_same_idempotency_key_returns_the_original() {
    let app = TestApp::spawn().await;
    let session = app.session_with("alice", &["bob"]).await;
    let send = |user: &'static str, key: &'static str, text: &'static str| {
        let req = app
            .client
            .post(app.url(&format!("/api/sessions/{session}/turns")))
            .bearer_auth(app.token(user))
            .header("idempotency-key", key)
            .json(&json!({ "text": text }));
        async move { crate::helpers::into_resp(req.send().await.expect("send")).await }
    };
    let first = send("alice", "k-1", "I draw my sword.").await;
    assert_eq!(first.status, 202, "{}", first.text);
    let again =
        futures::future::join_all((0..5).map(|_| send("alice", "k-1", "I draw my sword."))).await;
    for replay in &again {
        assert_eq!(replay.status, 202, "{}", replay.text);
        assert_eq!(replay.body["turn_id"], first.body["turn_id"]);
        assert_eq!(replay.body["job_id"], first.body["job_id"]);
        assert_eq!(
            replay
                .headers
                .get("idempotent-replayed")
                .map(|v| v.as_bytes()),
            Some(&b"true"[..])
        );
    }
    // Same key, different text: refused. Another user's key space is separate.
    send("alice", "k-1", "I sheathe my sword.")
        .await
        .assert_error(409, "conflict");
    let bobs = send("bob", "k-1", "I draw my sword.").await;
    assert_eq!(bobs.status, 202);
    assert_ne!(bobs.body["turn_id"], first.body["turn_id"]);
    assert_eq!(bobs.body["seq"], 2);

    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM apalis.jobs")
        .fetch_one(&app.db.pool)
        .await
        .expect("count");
    assert_eq!(jobs, 2, "replays enqueue nothing");
    for bad in ["", "é", &"k".repeat(256)] {
        let req = app
            .client
            .post(app.url(&format!("/api/sessions/{session}/turns")))
            .bearer_auth(app.token("alice"))
            .header("idempotency-key", bad.as_bytes())
            .json(&json!({ "text": "x" }));
        if let Ok(resp) = req.send().await {
            crate::helpers::into_resp(resp)
                .await
                .assert_error(400, "invalid_idempotency_key");
        }
    }
}

#[tokio::test]
async fn turn_text_and_session_state_are_validated() {
    let app = TestApp::spawn_with(|c| c.max_turn_chars = 50).await;
    let session = app.create_session("alice", "Rules").await;
    for body in [
        json!({ "text": "" }),
        json!({ "text": "   \n" }),
        json!({ "text": "x".repeat(51) }),
        json!({}),
        json!({ "text": 5 }),
        json!({ "text": "a\u{0}b" }),
    ] {
        app.post("alice", &format!("/api/sessions/{session}/turns"), body)
            .await
            .assert_error(422, "validation_failed");
    }
    assert_eq!(
        app.submit("alice", &session, &"é".repeat(50)).await.status,
        202
    );
    assert_eq!(
        app.delete("alice", &format!("/api/sessions/{session}"))
            .await
            .status,
        200
    );
    app.submit("alice", &session, "too late")
        .await
        .assert_error(409, "conflict");
    for bad in ["after_seq=-1", "limit=0", "limit=501", "after_seq=x"] {
        app.get("alice", &format!("/api/sessions/{session}/turns?{bad}"))
            .await
            .assert_error(400, "invalid_query");
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM turns")
        .fetch_one(&app.db.pool)
        .await
        .expect("count");
    assert_eq!(count, 1);
}

#[tokio::test]
async fn non_members_get_404_on_turns_and_jobs() {
    let app = TestApp::spawn().await;
    let session = app.create_session("alice", "Private").await;
    let job_id = app.submit("alice", &session, "secret plan").await.body["job_id"]
        .as_str()
        .expect("job")
        .to_owned();
    app.submit("mallory", &session, "let me in")
        .await
        .assert_error(404, "not_found");
    app.get("mallory", &format!("/api/sessions/{session}/turns"))
        .await
        .assert_error(404, "not_found");
    let resp = app.get("mallory", &format!("/api/jobs/{job_id}")).await;
    resp.assert_error(404, "not_found");
    assert!(!resp.text.contains("secret"));
    for unknown in ["01M83ZZNBQ8FJJ8BY91YHXQJKR", "nope", "../../etc", "%00"] {
        app.get("alice", &format!("/api/jobs/{unknown}"))
            .await
            .assert_error(404, "not_found");
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM turns")
        .fetch_one(&app.db.pool)
        .await
        .expect("count");
    assert_eq!(count, 1, "the non-member's turn was not recorded");
}

fn openai(fake: &FakeLlm) -> impl FnOnce(&mut questboard::config::Config) + '_ {
    move |c| {
        c.llm_provider = LlmProvider::Openai;
        c.llm_base_url = fake.base_url.clone();
        c.llm_model = "gm-test".into();
        c.llm_api_key = Some(questboard::config::Secret::new("sk-test-key-123"));
        c.job_max_attempts = 3;
    }
}

#[tokio::test]
async fn the_openai_provider_streams_replies_and_sends_the_history() {
    let fake = FakeLlm::start(|body, _| {
        let said = FakeLlm::last_user_message(body);
        Reply::Stream(vec!["You ".into(), "said: ".into(), said])
    })
    .await;
    let app = TestApp::spawn_with(openai(&fake)).await;
    let session = app.create_session("alice", "Streams").await;
    let worker = app.worker(openai(&fake)).await;
    app.submit("alice", &session, "first words").await;
    app.wait_finished("alice", &session, 1).await;
    app.submit("alice", &session, "second words").await;
    let turns = app.wait_finished("alice", &session, 2).await;
    assert_eq!(turns[0]["output"], "You said: first words");
    assert_eq!(turns[1]["output"], "You said: second words");

    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[0].authorization.as_deref(),
        Some("Bearer sk-test-key-123")
    );
    assert_eq!(requests[1].body["model"], "gm-test");
    let roles: Vec<&str> = requests[1].body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["role"].as_str())
        .collect();
    // The instructions, the game state, the history, the turn.
    assert_eq!(roles, ["system", "system", "user", "assistant", "user"]);
    assert_eq!(
        requests[1].body["messages"][3]["content"],
        "You said: first words"
    );
    worker.stop().await;
}

/// The estimate questboard trims prompts by: a token per four characters,
/// rounded up, and four per message.
fn estimated(body: &Value) -> u64 {
    body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| (m["content"].as_str().unwrap_or_default().chars().count() as u64).div_ceil(4) + 4)
        .sum()
}

#[tokio::test]
async fn a_long_history_is_trimmed_to_the_context_and_a_turn_too_long_fails_at_once() {
    let fake = FakeLlm::start(|body, _| {
        let said = FakeLlm::last_user_message(body);
        Reply::Stream(vec!["You said: ".into(), said])
    })
    .await;
    let small = |c: &mut questboard::config::Config| {
        openai(&fake)(c);
        c.llm_context_tokens = 300;
        c.llm_max_tokens = 100;
    };
    let app = TestApp::spawn_with(small).await;
    // On purpose: the turn too long for the context fails.
    app.db.expect_failed_jobs();
    let session = app.create_session("alice", "Long").await;
    let worker = app.worker(small).await;
    for n in 0..8 {
        app.submit(
            "alice",
            &session,
            &format!("exchange number {n}, a few more words"),
        )
        .await;
    }
    app.wait_finished("alice", &session, 8).await;
    let requests = fake.requests();
    assert_eq!(requests.len(), 8);
    let last = &requests[7].body;
    assert_eq!(last["max_tokens"], 100);
    assert!(
        estimated(last) <= 200,
        "{} tokens: {last:#}",
        estimated(last)
    );
    let messages = last["messages"].as_array().expect("messages");
    let users: Vec<&str> = messages
        .iter()
        .filter(|m| m["role"] == "user")
        .filter_map(|m| m["content"].as_str())
        .collect();
    // Some history is kept, the oldest is gone, the newest kept in order,
    // the instructions first and the turn last.
    assert!(users.len() > 1 && users.len() < 8, "{users:?}");
    assert_eq!(messages[0]["role"], "system");
    assert_eq!(
        users.last().copied(),
        Some("exchange number 7, a few more words")
    );
    assert_eq!(
        users[users.len() - 2],
        "exchange number 6, a few more words"
    );
    assert!(!users.contains(&"exchange number 0, a few more words"));
    // Earlier requests that fitted were sent whole.
    assert_eq!(
        requests[1].body["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .filter(|m| m["role"] == "user")
            .count(),
        2
    );

    // The instructions and a turn that cannot fit however much history is
    // dropped: failed at once, the provider never asked.
    let huge = "a very long turn ".repeat(60);
    app.submit("alice", &session, &huge).await;
    let turns = app.wait_finished("alice", &session, 9).await;
    assert_eq!(turns[8]["status"], "failed");
    let error = turns[8]["error"].as_str().expect("error");
    assert!(
        error.contains("more than the 200 the model's context leaves"),
        "{error}"
    );
    assert_eq!(fake.requests().len(), 8);
    worker.stop().await;
}

#[tokio::test]
async fn retryable_failures_back_off_then_fail_and_the_session_moves_on() {
    // Turns saying "doomed" always meet a 500; others succeed.
    let fake = FakeLlm::start(|body, _| {
        if FakeLlm::last_user_message(body).contains("doomed") {
            Reply::Status(500, None)
        } else {
            Reply::Stream(vec!["fine".into()])
        }
    })
    .await;
    let app = TestApp::spawn_with(openai(&fake)).await;
    // On purpose: the doomed turn's job fails for good.
    app.db.expect_failed_jobs();
    let session = app.create_session("alice", "Retries").await;
    let doomed = app.submit("alice", &session, "a doomed plan").await;
    app.submit("alice", &session, "a sensible plan").await;
    let worker = app
        .worker(|c| {
            openai(&fake)(c);
            c.job_backoff_ms = 200;
        })
        .await;
    let turns = app.wait_finished("alice", &session, 2).await;
    assert_eq!(turns[0]["status"], "failed");
    let error = turns[0]["error"].as_str().expect("error");
    assert_eq!(
        error,
        "the model provider answered HTTP 500 (gave up after 3 attempts)"
    );
    assert_eq!(
        turns[1]["status"], "completed",
        "the session goes on after a failed turn"
    );
    assert!(ts(&turns[1], "started_at") >= ts(&turns[0], "completed_at"));

    let job = job(&app, "alice", doomed.body["job_id"].as_str().expect("job")).await;
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("failed"), Some(3))
    );
    assert!(
        !job.to_string().contains("sk-"),
        "no secrets in job status: {job}"
    );

    // Three tries of the doomed turn, spaced by a backoff that really waited:
    // at least half of 200 ms, then half of 400 ms (full jitter keeps half).
    let doomed_at: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| FakeLlm::last_user_message(&r.body).contains("doomed"))
        .map(|r| r.at)
        .collect();
    assert_eq!(doomed_at.len(), 3);
    assert!(
        doomed_at[1] - doomed_at[0] >= Duration::from_millis(100),
        "{doomed_at:?}"
    );
    assert!(
        doomed_at[2] - doomed_at[1] >= Duration::from_millis(200),
        "{doomed_at:?}"
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_429_pauses_the_provider_for_its_retry_after_within_the_attempt() {
    let fake = FakeLlm::start(|_, n| {
        if n == 0 {
            Reply::Status(429, Some(1))
        } else {
            Reply::Stream(vec!["patience".into()])
        }
    })
    .await;
    let app = TestApp::spawn_with(openai(&fake)).await;
    let session = app.create_session("alice", "Rate limits").await;
    let resp = app.submit("alice", &session, "hurry").await;
    let worker = app.worker(openai(&fake)).await;
    let turns = app.wait_finished("alice", &session, 1).await;
    assert_eq!(turns[0]["output"], "patience");
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    assert!(
        requests[1].at - requests[0].at >= Duration::from_millis(950),
        "Retry-After: 1 was not honoured"
    );
    // The provider was paused and asked again within the same attempt.
    let job = job(&app, "alice", resp.body["job_id"].as_str().expect("job")).await;
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("succeeded"), Some(1))
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_rejected_request_fails_at_once() {
    let fake = FakeLlm::start(|_, _| Reply::Status(400, None)).await;
    let app = TestApp::spawn_with(openai(&fake)).await;
    // On purpose: the rejected turn's job fails for good.
    app.db.expect_failed_jobs();
    let session = app.create_session("alice", "Fatal").await;
    let resp = app
        .submit("alice", &session, "something the model refuses")
        .await;
    let worker = app.worker(openai(&fake)).await;
    let turns = app.wait_finished("alice", &session, 1).await;
    assert_eq!(turns[0]["status"], "failed");
    assert_eq!(
        turns[0]["error"],
        "the model provider rejected the request (HTTP 400)"
    );
    let job = job(&app, "alice", resp.body["job_id"].as_str().expect("job")).await;
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("failed"), Some(1))
    );
    assert_eq!(fake.requests().len(), 1);
    worker.stop().await;
}

#[tokio::test]
async fn failures_certain_to_repeat_fail_at_once_and_say_why() {
    // "empty": an empty stream (tools off); "silent": [DONE] with no text;
    // "long": a llama.cpp-style context refusal.
    let fake = FakeLlm::start(|body, _| {
        let said = FakeLlm::last_user_message(body);
        if said.contains("empty") {
            Reply::EmptyStream
        } else if said.contains("silent") {
            Reply::Stream(vec!["  ".into()])
        } else if said.contains("long") {
            Reply::Refuse(
                400,
                r#"{"error": {"message": "Requested tokens (3120) exceed context window of 2048"}}"#,
            )
        } else {
            Reply::Stream(vec!["fine".into()])
        }
    })
    .await;
    let no_tools = |c: &mut questboard::config::Config| {
        openai(&fake)(c);
        c.llm_tools = false;
    };
    let app = TestApp::spawn_with(no_tools).await;
    // On purpose: three turns fail for good.
    app.db.expect_failed_jobs();
    let session = app.create_session("alice", "Certain").await;
    for text in [
        "an empty answer",
        "a silent answer",
        "a long story",
        "a fine turn",
    ] {
        app.submit("alice", &session, text).await;
    }
    let worker = app.worker(no_tools).await;
    let turns = app.wait_finished("alice", &session, 4).await;
    let errors: Vec<(&str, &str)> = turns
        .iter()
        .map(|t| {
            (
                t["status"].as_str().unwrap_or_default(),
                t["error"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        [
            (
                "failed",
                "the model provider ended the stream without sending anything"
            ),
            ("failed", "the model answered with an empty reply"),
            (
                "failed",
                "the prompt is longer than the model's context (HTTP 400)"
            ),
            ("completed", ""),
        ]
    );
    // One request each: no attempt was spent on a certain repeat.
    assert_eq!(fake.requests().len(), 4);
    worker.stop().await;
}

#[tokio::test]
async fn a_server_that_will_not_stream_tool_calls_is_asked_without_streaming() {
    // Like llama-cpp-python's function-calling chat format: a streamed
    // request with `tool_choice: "auto"` gets 200 and an empty stream.
    let fake = FakeLlm::start(|body, _| {
        if body["stream"] == true && body["tool_choice"] == "auto" {
            return Reply::EmptyStream;
        }
        if FakeLlm::tool_answered(body) {
            return Reply::Stream(vec!["The lock ".into(), "clicks open.".into()]);
        }
        let said = FakeLlm::last_user_message(body);
        if said.contains("lock") {
            return state_call(
                json!([{"path": "items", "operation": "push", "value": "lockpick"}]),
            );
        }
        Reply::Stream(vec!["You ".into(), "said: ".into(), said])
    })
    .await;
    let app = TestApp::spawn_with(openai(&fake)).await;
    let session = app.ai_gm_session("alice", &["bob"]).await;
    let worker = app.worker(openai(&fake)).await;
    app.submit("bob", &session, "I pick the lock").await;
    app.wait_finished("bob", &session, 1).await;
    app.submit("bob", &session, "hello there").await;
    let turns = app.wait_finished("bob", &session, 2).await;
    assert_eq!(turns[0]["status"], "completed", "{}", turns[0]);
    assert_eq!(turns[0]["output"], "The lock clicks open.");
    assert_eq!(turns[0]["state_change"]["applied"], true, "{}", turns[0]);
    assert_eq!(turns[1]["output"], "You said: hello there");
    let requests = fake.requests();
    let shape: Vec<(bool, &str)> = requests
        .iter()
        .map(|r| {
            (
                r.body["stream"] == true,
                r.body["tool_choice"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    // The refused stream, the same round unstreamed, the narration
    // streamed (no tools called there); then tool rounds go unstreamed.
    assert_eq!(
        shape,
        [
            (true, "auto"),
            (false, "auto"),
            (true, "none"),
            (false, "auto")
        ]
    );
    // Usage comes from both kinds of answer.
    let (a, b) = (
        requests[1].usage.expect("usage"),
        requests[2].usage.expect("usage"),
    );
    assert_eq!(turns[0]["usage"]["prompt_tokens"], a.0 + b.0);
    assert_eq!(turns[0]["usage"]["completion_tokens"], a.1 + b.1);
    worker.stop().await;
}

#[tokio::test]
async fn a_model_that_says_nothing_when_offered_tools_is_asked_once_without_them() {
    // Offered the tools, it answers with neither words nor a call; told it
    // may not call them, it speaks. Without tools it never speaks.
    let fake = FakeLlm::start(|body, _| {
        let said = FakeLlm::last_user_message(body);
        if body["tool_choice"] == "auto" || said.contains("mute") {
            return Reply::Stream(vec![" ".into()]);
        }
        Reply::Stream(vec!["The door ".into(), "creaks.".into()])
    })
    .await;
    let app = TestApp::spawn_with(openai(&fake)).await;
    // On purpose: the mute turn fails for good.
    app.db.expect_failed_jobs();
    let session = app.ai_gm_session("alice", &["bob"]).await;
    let worker = app.worker(openai(&fake)).await;
    app.submit("bob", &session, "I open the door").await;
    app.wait_finished("bob", &session, 1).await;
    app.submit("bob", &session, "a mute turn").await;
    let turns = app.wait_finished("bob", &session, 2).await;
    assert_eq!(turns[0]["status"], "completed", "{}", turns[0]);
    // The blank the first request streamed is part of what clients were
    // sent, so it is part of the reply.
    assert_eq!(turns[0]["output"], " The door creaks.");
    // Both requests are counted.
    let requests = fake.requests();
    let (a, b) = (
        requests[0].usage.expect("usage"),
        requests[1].usage.expect("usage"),
    );
    assert_eq!(turns[0]["usage"]["prompt_tokens"], a.0 + b.0);
    // Silent both ways: failed as an empty reply after one attempt of two
    // requests, not retried.
    assert_eq!(turns[1]["status"], "failed");
    assert_eq!(turns[1]["error"], "the model answered with an empty reply");
    let requests = fake.requests();
    let choices: Vec<&str> = requests
        .iter()
        .map(|r| r.body["tool_choice"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(choices, ["auto", "none", "auto", "none"]);
    worker.stop().await;
}

#[tokio::test]
async fn a_stopping_worker_hands_unfinished_turns_back_and_releases_the_lease() {
    let app = TestApp::spawn().await;
    let session = app.create_session("alice", "Shutdown").await;
    let resp = app.submit("alice", &session, "a long speech").await;
    let worker = app
        .worker(|c| {
            c.scripted_latency_ms = 30_000;
            c.shutdown_grace_ms = 200;
        })
        .await;
    app.wait_turns("alice", &session, "the turn to start", |t| {
        t[0]["status"] == "running"
    })
    .await;
    worker.stop().await;

    let turns = app.turns("alice", &session).await;
    assert_eq!(turns[0]["status"], "queued", "handed back");
    let job_id = resp.body["job_id"].as_str().expect("job");
    let handed = job(&app, "alice", job_id).await;
    assert_eq!(
        (handed["status"].as_str(), handed["attempts"].as_i64()),
        (Some("queued"), Some(0))
    );
    let free: bool = sqlx::query_scalar(
        "SELECT holder IS NULL AND expires_at <= clock_timestamp() FROM leases WHERE key = $1",
    )
    .bind(&session)
    .fetch_one(&app.db.pool)
    .await
    .expect("lease");
    assert!(free, "the lease was released, not left to expire");

    // The next worker picks it straight up.
    let next = app.worker(|_| {}).await;
    let turns = app.wait_finished("alice", &session, 1).await;
    assert_eq!(turns[0]["status"], "completed");
    next.stop().await;
}

#[tokio::test]
async fn a_turn_submitted_while_the_api_shuts_down_gets_503() {
    let mut app = TestApp::spawn().await;
    let session = app.create_session("alice", "Closing time").await;
    // The request is in flight (its body half sent) when shutdown begins.
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(2);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
    });
    let request = app
        .client
        .post(app.url(&format!("/api/sessions/{session}/turns")))
        .bearer_auth(app.token("alice"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    let sending = tokio::spawn(request);
    tx.send(bytes::Bytes::from_static(b"{\"text\": \"I "))
        .await
        .expect("chunk");
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    tx.send(bytes::Bytes::from_static(b"leave.\"}"))
        .await
        .expect("chunk");
    drop(tx);
    let resp = crate::helpers::into_resp(sending.await.expect("task").expect("response")).await;
    resp.assert_error(503, "unavailable");
    assert_eq!(
        resp.headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    // Nothing was written: the turn does not exist.
    let turns: i64 = sqlx::query_scalar("SELECT count(*) FROM turns")
        .fetch_one(&app.db.pool)
        .await
        .expect("count");
    assert_eq!(turns, 0);
}

/// The configuration of a primary `fake` with `backup` as its fallback.
fn with_fallback<'a>(
    fake: &'a FakeLlm,
    backup: &'a FakeLlm,
) -> impl Fn(&mut questboard::config::Config) + 'a {
    move |c| {
        openai(fake)(c);
        c.job_max_attempts = 5;
        c.job_backoff_ms = 100;
        c.llm_fallback_after_failures = 2;
        c.llm_fallbacks = Some(
            json!([{
                "name": "backup",
                "base_url": backup.base_url,
                "model": "gm-backup",
                "api_key": "sk-backup",
            }])
            .to_string(),
        );
    }
}

#[tokio::test]
async fn a_primary_that_keeps_failing_hands_turns_to_the_fallback() {
    let fake = FakeLlm::start(|_, _| Reply::Status(500, None)).await;
    let backup =
        FakeLlm::start(|_, _| Reply::Stream(vec!["from the ".into(), "backup".into()])).await;
    let app = TestApp::spawn_with(with_fallback(&fake, &backup)).await;
    let session = app.create_session("alice", "Fallback").await;
    let first = app.submit("alice", &session, "one").await;
    let worker = app.worker(with_fallback(&fake, &backup)).await;
    let turns = app.wait_finished("alice", &session, 1).await;
    assert_eq!(turns[0]["status"], "completed", "{}", turns[0]);
    assert_eq!(turns[0]["output"], "from the backup");
    // The turn records who answered.
    assert_eq!(turns[0]["usage"]["provider"], "backup", "{}", turns[0]);
    assert_eq!(turns[0]["usage"]["model"], "gm-backup");
    // Two failed attempts on the primary, the third on the fallback.
    let job = job(&app, "alice", first.body["job_id"].as_str().expect("job")).await;
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_i64()),
        (Some("succeeded"), Some(3))
    );
    assert_eq!(fake.requests().len(), 2);
    let asked = backup.requests();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].authorization.as_deref(), Some("Bearer sk-backup"));
    assert_eq!(asked[0].body["model"], "gm-backup");
    // While the primary rests, the next turn goes straight to the fallback.
    app.submit("alice", &session, "two").await;
    let turns = app.wait_finished("alice", &session, 2).await;
    assert_eq!(turns[1]["usage"]["provider"], "backup");
    assert_eq!(fake.requests().len(), 2);
    worker.stop().await;
}

#[tokio::test]
async fn a_primary_paused_past_the_threshold_hands_the_call_on_within_the_attempt() {
    // A 429 asking for a minute's wait: past the 10 s threshold.
    let fake = FakeLlm::start(|_, _| Reply::Status(429, Some(60))).await;
    let backup = FakeLlm::start(|_, _| Reply::Stream(vec!["at once".into()])).await;
    let app = TestApp::spawn_with(with_fallback(&fake, &backup)).await;
    let session = app.create_session("alice", "Paused").await;
    let first = app.submit("alice", &session, "one").await;
    let worker = app.worker(with_fallback(&fake, &backup)).await;
    let turns = app.wait_finished("alice", &session, 1).await;
    assert_eq!(turns[0]["output"], "at once");
    assert_eq!(turns[0]["usage"]["provider"], "backup");
    let job = job(&app, "alice", first.body["job_id"].as_str().expect("job")).await;
    assert_eq!(job["attempts"], 1, "the pause spent no attempt: {job}");
    // The pause is the primary's, recorded for every worker.
    let paused: bool = sqlx::query_scalar(
        "SELECT paused_until > now() + interval '30 seconds' FROM provider_limits WHERE provider = 'llm:openai'",
    )
    .fetch_one(&app.db.pool)
    .await
    .expect("row");
    assert!(paused);
    app.submit("alice", &session, "two").await;
    let turns = app.wait_finished("alice", &session, 2).await;
    assert_eq!(turns[1]["usage"]["provider"], "backup");
    assert_eq!(
        fake.requests().len(),
        1,
        "the paused primary was not asked again"
    );
    worker.stop().await;
}

#[tokio::test]
async fn bad_fallback_lists_are_refused_at_start() {
    let mut config = TestApp::spawn().await.config.clone();
    for (list, why) in [
        ("not json", "not a JSON array"),
        (
            r#"[{"name": "openai", "base_url": "http://x/v1", "model": "m"}]"#,
            "valid endpoint name",
        ),
        (
            r#"[{"name": "a", "base_url": "ftp://x", "model": "m"}]"#,
            "http(s) URL",
        ),
        (
            r#"[{"name": "a", "base_url": "http://x/v1", "model": "m", "api_key_env": "QB_NOT_SET_ANYWHERE"}]"#,
            "not set",
        ),
        (
            r#"[{"name": "a", "base_url": "http://x/v1", "model": "m", "key": "k"}]"#,
            "unknown field",
        ),
    ] {
        config.llm_fallbacks = Some(list.into());
        let err = config.llm_fallbacks().expect_err(list).to_string();
        assert!(err.contains(why), "{list}: {err}");
    }
    // A key may come from a variable the operator names.
    config.llm_fallbacks = Some(
        r#"[{"name": "b", "base_url": "http://x/v1", "model": "m", "api_key_env": "PATH"}]"#.into(),
    );
    let list = config.llm_fallbacks().expect("valid");
    assert_eq!(list[0].api_key, std::env::var("PATH").ok());
}
