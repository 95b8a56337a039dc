//! Provider limits shared by every worker: two `questboard work` processes
//! together hold a requests-per-minute limit; a provider's 429 with
//! `Retry-After` pauses every worker's calls and spends no attempt; turns
//! waiting for the limit are served in turn, so a session with many queued
//! turns does not hold back sessions with one. Against a local
//! OpenAI-compatible server that records when each request arrived.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fake_llm::{FakeLlm, Reply};
use crate::helpers::{TestApp, signal};

fn openai_env(fake: &FakeLlm) -> Vec<(&'static str, String)> {
    vec![
        ("QB_LLM_PROVIDER", "openai".into()),
        ("QB_LLM_BASE_URL", fake.base_url.clone()),
        ("QB_LLM_MODEL", "gm-test".into()),
        ("QB_LLM_TOOLS", "false".into()),
        ("QB_WORKER_CONCURRENCY", "8".into()),
    ]
}

fn stop(children: Vec<std::process::Child>) {
    for mut child in children {
        signal(&child, "-TERM");
        let _ = child.wait();
    }
}

async fn wait_all_finished(app: &TestApp, sessions: &[(String, usize)]) -> Vec<Vec<Value>> {
    let mut all = Vec::new();
    for (session, count) in sessions {
        all.push(app.wait_finished("alice", session, *count).await);
    }
    all
}

#[tokio::test]
async fn two_worker_processes_hold_a_requests_per_minute_limit_together() {
    let fake = FakeLlm::start(|_, _| Reply::Stream(vec!["ok".into()])).await;
    let app = TestApp::spawn().await;
    let mut sessions = Vec::new();
    for n in 0..24 {
        sessions.push((app.create_session("alice", &format!("S{n}")).await, 1));
    }
    for (session, _) in &sessions {
        app.submit("alice", session, "go").await;
    }
    // 120 a minute: 2 a second, a burst of 4 (two seconds' worth).
    let mut env = openai_env(&fake);
    env.push(("QB_LLM_REQUESTS_PER_MINUTE", "120".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let workers = vec![app.worker_process(&env).0, app.worker_process(&env).0];
    let turns = wait_all_finished(&app, &sessions).await;
    stop(workers);
    assert!(turns.iter().all(|t| t[0]["status"] == "completed"));

    let times: Vec<Instant> = fake.requests().iter().map(|r| r.at).collect();
    assert_eq!(times.len(), 24);
    // In every stretch of requests, at most the burst plus the rate over
    // its length (and a little for the two clocks: the database's decides,
    // the fake's stamps arrivals).
    let mut worst = 0.0f64;
    for i in 0..times.len() {
        for j in i..times.len() {
            let span = times[j].duration_since(times[i]).as_secs_f64();
            let allowed = 4.0 + 2.0 * (span + 0.25);
            let count = (j - i + 1) as f64;
            worst = worst.max(count - allowed);
        }
    }
    assert!(
        worst <= 0.0,
        "a stretch went {worst} requests over the limit"
    );
    // And the limit really bit: 24 requests at 2 a second after a burst of
    // 4 take about 10 seconds.
    let whole = times[23].duration_since(times[0]).as_secs_f64();
    assert!(whole >= 9.0, "24 requests in {whole} s");
}

#[tokio::test]
async fn a_429_with_retry_after_pauses_every_worker_and_spends_no_attempt() {
    // The first request is refused with `Retry-After: 4`; every other is
    // answered.
    let fake = FakeLlm::start(|_, n| {
        if n == 0 {
            Reply::Status(429, Some(4))
        } else {
            Reply::Stream(vec!["ok".into()])
        }
    })
    .await;
    let app = TestApp::spawn().await;
    let first = app.create_session("alice", "First").await;
    let env = openai_env(&fake);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let workers = vec![app.worker_process(&env).0, app.worker_process(&env).0];
    let submitted = app.submit("alice", &first, "knock").await;
    // Wait for the refusal, then give every worker turns to run.
    let deadline = Instant::now() + Duration::from_secs(30);
    while fake.requests().is_empty() {
        assert!(Instant::now() < deadline, "no request reached the provider");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused_at = fake.requests()[0].at;
    let mut sessions = vec![(first.clone(), 1)];
    for n in 0..6 {
        let session = app.create_session("alice", &format!("S{n}")).await;
        app.submit("alice", &session, "go").await;
        sessions.push((session, 1));
    }
    let turns = wait_all_finished(&app, &sessions).await;
    stop(workers);
    assert!(turns.iter().all(|t| t[0]["status"] == "completed"));

    // Nothing reached the provider during the pause (after the moment it
    // took the refusal to be published).
    let during: Vec<f64> = fake
        .requests()
        .iter()
        .skip(1)
        .map(|r| r.at.duration_since(refused_at).as_secs_f64())
        .filter(|s| *s > 0.5 && *s < 3.9)
        .collect();
    assert!(
        during.is_empty(),
        "requests during the pause at {during:?} s"
    );
    assert_eq!(fake.requests().len(), 8, "the refused one, then one each");
    // The refused turn waited within its attempt: one attempt, done.
    let job = app
        .get(
            "alice",
            &format!(
                "/api/jobs/{}",
                submitted.body["job_id"].as_str().expect("job")
            ),
        )
        .await;
    assert_eq!(
        (job.body["status"].as_str(), job.body["attempts"].as_i64()),
        (Some("succeeded"), Some(1)),
        "{}",
        job.text
    );
    // The turn record shows the wait.
    let waited = turns[0][0]["usage"]["limiter_wait_ms"]
        .as_i64()
        .unwrap_or(0);
    assert!(waited >= 3_000, "{}", turns[0][0]);
}

#[tokio::test]
async fn sessions_with_one_turn_are_not_held_back_by_a_session_with_thirty() {
    let fake = FakeLlm::start(|_, _| Reply::Stream(vec!["ok".into()])).await;
    let app = TestApp::spawn().await;
    let busy = app.create_session("alice", "Busy").await;
    for n in 0..30 {
        app.submit("alice", &busy, &format!("turn {n}")).await;
    }
    let mut singles = Vec::new();
    for n in 0..5 {
        let session = app.create_session("alice", &format!("Single {n}")).await;
        app.submit("alice", &session, "one turn").await;
        singles.push(session);
    }
    // 120 a minute: 2 a second, a burst of 4.
    let worker = app
        .worker(|c| {
            fake.config()(c);
            c.llm_tools = false;
            c.worker_concurrency = 8;
            c.llm_requests_per_minute = Some(120);
        })
        .await;
    let busy_turns = app.wait_finished("alice", &busy, 30).await;
    let mut singles_done = Vec::new();
    for session in &singles {
        let turns = app.wait_finished("alice", session, 1).await;
        singles_done.push(turns[0]["completed_at"].as_str().expect("done").to_owned());
    }
    worker.stop().await;
    // Waiting turns are served in the order they asked: the busy session
    // gets one turn through per round, so every single finishes before its
    // sixth turn (RFC 3339 times in UTC compare as text).
    let sixth = busy_turns[5]["completed_at"].as_str().expect("done");
    for done in &singles_done {
        assert!(
            done.as_str() < sixth,
            "a single finished at {done}, the busy 6th at {sixth}"
        );
    }
}
