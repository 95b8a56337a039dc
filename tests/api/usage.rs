//! Usage: every completed turn keeps the tokens its provider counted, media
//! count in images and characters of narration, and the sums per day,
//! session, user and model are what members (`/api/sessions/{id}/usage`)
//! and operators (`/api/admin/usage`) read. With the scripted game master
//! (its own counts) and an OpenAI-compatible server reporting `usage` in
//! its last streamed chunk.

use std::time::Duration;

use questboard::auth::Access;
use reqwest::Method;
use serde_json::{Value, json};

use crate::fake_llm::{FakeLlm, Reply, state_call};
use crate::helpers::{Resp, TestApp};

fn estimate(text: &str) -> i64 {
    (text.chars().count() as i64 + 3) / 4
}

async fn usage(app: &TestApp, user: &str, session: &str, query: &str) -> Resp {
    app.get(user, &format!("/api/sessions/{session}/usage{query}"))
        .await
}

async fn as_viewer(app: &TestApp, path: &str) -> Resp {
    let token = app.token_with("vera", Access::Viewer);
    app.call_with_auth(Method::GET, path, &format!("Bearer {token}"))
        .await
}

/// Waits until the session's usage report satisfies `done`.
async fn wait_usage(app: &TestApp, session: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let resp = usage(app, "alice", session, "").await;
        assert_eq!(resp.status, 200, "{}", resp.text);
        if done(&resp.body) {
            return resp.body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "usage never got there: {:#}",
            resp.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn turns_and_media_are_counted_and_summed_for_members_and_operators() {
    let app = TestApp::spawn().await;
    let _worker = app.worker(|_| {}).await;
    let session = app.ai_gm_session("alice", &["bob"]).await;
    let other = app.create_session("carol", "Elsewhere").await;

    app.submit("bob", &session, "I look around.\n/image a misty harbour")
        .await;
    app.wait_finished("alice", &session, 1).await;
    app.submit("alice", &session, "The harbour master waves.")
        .await;
    app.submit("carol", &other, "Someone else's turn").await;
    let turns = app.wait_finished("alice", &session, 2).await;
    app.wait_finished("carol", &other, 1).await;
    let narration = "Welcome, travellers, to Saltmere.";
    let asked = app
        .post(
            "alice",
            &format!("/api/sessions/{session}/media"),
            json!({"type": "audio", "prompt": narration}),
        )
        .await;
    assert_eq!(asked.status, 202, "{}", asked.text);

    // Each completed turn carries the scripted game master's own counts.
    let (mut prompt, mut completion) = (0, 0);
    for turn in &turns {
        let used = &turn["usage"];
        assert_eq!(used["provider"], "scripted", "{turn}");
        assert_eq!(used["model"], "scripted");
        let output = turn["output"].as_str().expect("output");
        assert_eq!(used["completion_tokens"], estimate(output));
        let p = used["prompt_tokens"].as_i64().expect("prompt tokens");
        assert!(
            p > estimate(turn["input"].as_str().expect("input")),
            "{turn}"
        );
        prompt += p;
        completion += used["completion_tokens"].as_i64().expect("completion");
    }

    let report = wait_usage(&app, &session, |r| {
        r["totals"]["images"] == 1 && r["totals"]["speech_characters"] != 0
    })
    .await;
    assert_eq!(report["session_id"], session.as_str());
    assert_eq!(
        report["totals"],
        json!({"turns": 2, "prompt_tokens": prompt, "completion_tokens": completion,
               "images": 1, "speech_characters": narration.chars().count()})
    );
    let days = report["days"].as_array().expect("days");
    assert_eq!(days.len(), 1, "{report:#}");
    let today = chrono::Utc::now().date_naive().to_string();
    assert_eq!(days[0]["day"], today.as_str());
    assert_eq!(days[0]["turns"], 2);
    assert_eq!(
        report["models"],
        json!([
            {"provider": "builtin", "model": "builtin", "turns": 0, "prompt_tokens": 0,
             "completion_tokens": 0, "images": 1,
             "speech_characters": narration.chars().count()},
            {"provider": "scripted", "model": "scripted", "turns": 2, "prompt_tokens": prompt,
             "completion_tokens": completion, "images": 0, "speech_characters": 0},
        ])
    );
    // Days outside the range count nothing, nor does a range that ends
    // before it starts; what is not a date is refused.
    let tomorrow = (chrono::Utc::now().date_naive() + chrono::Days::new(1)).to_string();
    let later = usage(&app, "bob", &session, &format!("?from={tomorrow}")).await;
    assert_eq!(later.status, 200, "{}", later.text);
    assert_eq!(later.body["totals"]["turns"], 0);
    assert_eq!(later.body["days"], json!([]));
    let inside = usage(&app, "bob", &session, &format!("?from={today}&to={today}")).await;
    assert_eq!(inside.body["totals"], report["totals"]);
    let reversed = usage(
        &app,
        "bob",
        &session,
        &format!("?from={tomorrow}&to={today}"),
    )
    .await;
    assert_eq!(reversed.status, 200, "{}", reversed.text);
    assert_eq!(reversed.body["totals"]["turns"], 0);
    assert_eq!(
        usage(&app, "bob", &session, "?from=yesterday").await.status,
        400
    );
    // Someone else's session: not found, as for every session route.
    usage(&app, "carol", &session, "")
        .await
        .assert_error(404, "not_found");

    // Operators (and viewers) see everyone's; players see none of it.
    app.get("bob", "/api/admin/usage")
        .await
        .assert_error(403, "forbidden");
    let all = as_viewer(&app, "/api/admin/usage").await;
    assert_eq!(all.status, 200, "{}", all.text);
    assert_eq!(all.body["totals"]["turns"], 3, "{:#}", all.body);
    let sessions: Vec<&str> = all.body["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(sessions.len(), 2);
    assert!(sessions.contains(&session.as_str()) && sessions.contains(&other.as_str()));
    let mut users: Vec<&str> = all.body["users"]
        .as_array()
        .expect("users")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    users.sort_unstable();
    assert_eq!(users, ["alice", "bob", "carol"]);
    // Bob's: the turn he played and the image his turn asked for.
    let bob = as_viewer(&app, "/api/admin/usage?user=bob").await;
    assert_eq!(bob.body["totals"]["turns"], 1, "{:#}", bob.body);
    assert_eq!(bob.body["totals"]["images"], 1);
    assert_eq!(
        bob.body["totals"]["prompt_tokens"],
        turns[0]["usage"]["prompt_tokens"]
    );
    let one = as_viewer(&app, &format!("/api/admin/usage?session={other}")).await;
    assert_eq!(one.body["totals"]["turns"], 1);
    assert_eq!(one.body["users"][0]["id"], "carol");
    as_viewer(&app, "/api/admin/usage?session=nope")
        .await
        .assert_error(400, "invalid_query");
    let nobody = as_viewer(&app, "/api/admin/usage?user=%00").await;
    assert_eq!(nobody.status, 200);
    assert_eq!(nobody.body["totals"]["turns"], 0);
}

#[tokio::test]
async fn usage_totals_equal_what_the_provider_counted() {
    // A turn saying "tool" gets a tool-only first reply, then the narration
    // after the tool result: two requests, one turn.
    let fake = FakeLlm::start(|body, _| {
        if FakeLlm::tool_answered(body) {
            return Reply::Stream(vec!["The door ".into(), "creaks.".into()]);
        }
        let said = FakeLlm::last_user_message(body);
        if said.contains("tool") {
            return state_call(json!([{"path": "items", "operation": "push", "value": "key"}]));
        }
        Reply::Stream(vec!["You ".into(), "said: ".into(), said])
    })
    .await;
    let app = TestApp::spawn_with(fake.config()).await;
    let session = app.ai_gm_session("alice", &["bob"]).await;
    let _worker = app.worker(fake.config()).await;
    app.submit("bob", &session, "I open the door").await;
    app.submit("alice", &session, "a tool turn").await;
    app.submit("bob", &session, "I step through").await;
    let turns = app.wait_finished("bob", &session, 3).await;
    assert!(
        turns.iter().all(|t| t["status"] == "completed"),
        "{turns:#?}"
    );

    let requests = fake.requests();
    assert_eq!(
        requests.len(),
        4,
        "one request per turn, two for the tool turn"
    );
    assert!(
        requests
            .iter()
            .all(|r| r.body["stream_options"]["include_usage"] == true),
        "every request asks for the counts"
    );
    let counted: Vec<(i64, i64)> = requests
        .iter()
        .map(|r| r.usage.expect("the fake reported usage"))
        .collect();
    // The tool turn's usage is the sum of its two requests.
    assert_eq!(turns[1]["output"], "The door creaks.");
    assert_eq!(
        (
            turns[1]["usage"]["prompt_tokens"].as_i64(),
            turns[1]["usage"]["completion_tokens"].as_i64()
        ),
        (
            Some(counted[1].0 + counted[2].0),
            Some(counted[1].1 + counted[2].1)
        )
    );
    assert_eq!(turns[0]["usage"]["provider"], "openai");
    assert_eq!(turns[0]["usage"]["model"], "gm-test");
    assert_eq!(turns[0]["usage"]["prompt_tokens"], counted[0].0);
    assert_eq!(turns[2]["usage"]["completion_tokens"], counted[3].1);

    let report = usage(&app, "bob", &session, "").await;
    assert_eq!(report.status, 200, "{}", report.text);
    let prompt: i64 = counted.iter().map(|c| c.0).sum();
    let completion: i64 = counted.iter().map(|c| c.1).sum();
    assert_eq!(
        report.body["totals"],
        json!({"turns": 3, "prompt_tokens": prompt, "completion_tokens": completion,
               "images": 0, "speech_characters": 0})
    );
    assert_eq!(report.body["models"][0]["model"], "gm-test");
}
