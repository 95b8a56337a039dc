//! Members' quotas and budgets: each refuses with 429, its code, the quota
//! named and `Retry-After`; nothing is written for a refused request;
//! another user (or session) is unaffected; operators change them at run
//! time, audited.

use std::time::Duration;

use questboard::auth::Access;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Resp, TestApp, into_resp};

/// Asserts a quota's refusal and returns its `Retry-After` in seconds.
#[track_caller]
fn refused(resp: &Resp, code: &str, quota: &str) -> u64 {
    resp.assert_error(429, code);
    assert_eq!(resp.body["error"]["quota"], quota, "{}", resp.text);
    let wait: u64 = resp.header("retry-after").parse().expect("Retry-After");
    assert_eq!(resp.body["error"]["retry_after"], wait, "{}", resp.text);
    assert!(wait >= 1);
    wait
}

async fn set(app: &TestApp, quota: &str, value: u64) -> Resp {
    app.op(
        Method::PUT,
        &format!("/api/admin/quotas/{quota}"),
        Some(json!({ "value": value })),
    )
    .await
}

async fn count(app: &TestApp, sql: &'static str, session: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(uuid::Uuid::parse_str(session).expect("uuid"))
        .fetch_one(&app.db.pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn turns_per_minute_are_counted_per_user_changed_at_run_time_and_audited() {
    let app = TestApp::spawn().await;
    let alice = app.create_session("alice", "Alice's").await;
    let bob = app.create_session("bob", "Bob's").await;
    let page = set(&app, "user_turns_per_minute", 3).await;
    assert_eq!(page.status, 200, "{}", page.text);
    let row = page.body["quotas"]
        .as_array()
        .expect("quotas")
        .iter()
        .find(|q| q["name"] == "user_turns_per_minute")
        .expect("row")
        .clone();
    assert_eq!(row["value"], 3);
    assert_eq!(row["default"], 60);
    assert_eq!(row["overridden"], true);
    assert_eq!(row["updated_by"], "ops");
    assert_eq!(row["env"], "QB_USER_TURNS_PER_MINUTE");

    let keyed = |text: &str, key: &str| {
        app.client
            .post(app.url(&format!("/api/sessions/{alice}/turns")))
            .bearer_auth(app.token("alice"))
            .header("idempotency-key", key)
            .json(&json!({ "text": text }))
            .send()
    };
    for n in 0..3 {
        let resp = into_resp(
            keyed(&format!("turn {n}"), &format!("k{n}"))
                .await
                .expect("send"),
        )
        .await;
        assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text);
    }
    let resp = into_resp(keyed("turn 3", "k3").await.expect("send")).await;
    let wait = refused(&resp, "rate_limited", "user_turns_per_minute");
    // One turn every 20 s once the three are spent.
    assert!((15..=20).contains(&wait), "{wait}");
    assert_eq!(resp.body["error"]["limit"], 3);
    // Nothing of the refused turn was written.
    let turns = "SELECT count(*) FROM turns WHERE session_id = $1";
    let queued_events =
        "SELECT count(*) FROM session_events WHERE session_id = $1 AND type = 'turn.queued'";
    assert_eq!(count(&app, turns, &alice).await, 3);
    assert_eq!(count(&app, queued_events, &alice).await, 3);
    // A replay of an accepted turn is answered, not refused, and not charged.
    let replay = into_resp(keyed("turn 0", "k0").await.expect("send")).await;
    assert_eq!(replay.status, StatusCode::ACCEPTED, "{}", replay.text);
    assert_eq!(replay.header("idempotent-replayed"), "true");
    // Another user is unaffected.
    for n in 0..3 {
        let resp = app.submit("bob", &bob, &format!("bob {n}")).await;
        assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text);
    }
    // The same user in another session is not.
    let (_, token) = app.invite("bob", &bob, json!({})).await;
    assert_eq!(app.accept("alice", &token).await.status, 200);
    let other = app.submit("alice", &bob, "elsewhere").await;
    refused(&other, "rate_limited", "user_turns_per_minute");

    // Raised at run time: in force at once.
    assert_eq!(set(&app, "user_turns_per_minute", 6000).await.status, 200);
    let resp = into_resp(keyed("turn 3", "k3").await.expect("send")).await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text);
    // Back to the default (60).
    let reset = app
        .op(
            Method::DELETE,
            "/api/admin/quotas/user_turns_per_minute",
            None,
        )
        .await;
    assert_eq!(reset.status, 200, "{}", reset.text);
    let row = reset.body["quotas"][0].clone();
    assert_eq!(
        (row["value"].clone(), row["overridden"].clone()),
        (json!(60), json!(false))
    );

    // Each change is in the audit log.
    let audit = app
        .op(Method::GET, "/api/admin/audit?action=quota.set", None)
        .await;
    let entries = audit.body["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 2, "{}", audit.text);
    assert_eq!(entries[1]["target"], "user_turns_per_minute");
    assert_eq!(entries[1]["detail"], json!({"value": 3}));
    assert_eq!(entries[1]["outcome"], "ok");
    let audit = app
        .op(Method::GET, "/api/admin/audit?action=quota.reset", None)
        .await;
    assert_eq!(audit.body["entries"].as_array().expect("entries").len(), 1);

    // The refusals are counted by quota.
    let metrics = app.metrics().await;
    assert!(
        metrics.lines().any(|l| l
            .starts_with("questboard_quota_refusals_total{quota=\"user_turns_per_minute\"}")
            && !l.ends_with(" 0")),
        "{metrics}"
    );
}

#[tokio::test]
async fn operators_only_change_quotas_and_bad_changes_are_refused() {
    let app = TestApp::spawn().await;
    let viewer = app.token_with("vera", Access::Viewer);
    let list = into_resp(
        app.client
            .get(app.url("/api/admin/quotas"))
            .bearer_auth(&viewer)
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(list.status, 200, "{}", list.text);
    let names: Vec<&str> = list.body["quotas"]
        .as_array()
        .expect("quotas")
        .iter()
        .filter_map(|q| q["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "user_turns_per_minute",
            "session_max_queued_turns",
            "user_media_per_hour",
            "user_sessions_per_day",
            "session_max_invites",
            "user_max_sockets",
            "session_daily_tokens",
            "user_daily_tokens"
        ]
    );
    let put = |token: String, name: &'static str, body: Value| {
        let app = &app;
        async move {
            into_resp(
                app.client
                    .put(app.url(&format!("/api/admin/quotas/{name}")))
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .expect("send"),
            )
            .await
        }
    };
    put(viewer.clone(), "user_max_sockets", json!({"value": 1}))
        .await
        .assert_error(403, "forbidden");
    put(app.token("alice"), "user_max_sockets", json!({"value": 1}))
        .await
        .assert_error(403, "forbidden");
    let op = app.operator_token("ops");
    put(op.clone(), "no_such_quota", json!({"value": 1}))
        .await
        .assert_error(404, "not_found");
    put(op.clone(), "user_max_sockets", json!({"value": -1}))
        .await
        .assert_error(422, "validation_failed");
    put(
        op.clone(),
        "user_max_sockets",
        json!({"value": 10_000_000_000_000u64}),
    )
    .await
    .assert_error(422, "validation_failed");
    put(
        op.clone(),
        "user_max_sockets",
        json!({"value": 1, "extra": true}),
    )
    .await
    .assert_error(422, "validation_failed");
    let unchanged: i64 = sqlx::query_scalar("SELECT count(*) FROM quota_settings")
        .fetch_one(&app.db.pool)
        .await
        .expect("count");
    assert_eq!(unchanged, 0);
    put(op.clone(), "user_max_sockets", json!({"value": 2.5}))
        .await
        .assert_error(422, "validation_failed");
    // JSON Schema's integer: 262143.0 is a whole number (the contract run
    // sends such).
    let whole = put(op.clone(), "user_max_sockets", json!({"value": 262143.0})).await;
    assert_eq!(whole.status, 200, "{}", whole.text);
    assert_eq!(whole.body["quotas"][5]["value"], 262_143);
}

#[tokio::test]
async fn a_full_queue_refuses_until_the_game_master_catches_up() {
    let app = TestApp::spawn_with(|c| c.session_max_queued_turns = 2).await;
    let session = app.session_with("alice", &["bob"]).await;
    let other = app.create_session("carol", "Carol's").await;
    for text in ["one", "two"] {
        let resp = app.submit("alice", &session, text).await;
        assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text);
    }
    // Any member: the queue is the session's.
    let resp = app.submit("bob", &session, "three").await;
    let wait = refused(&resp, "queue_full", "session_max_queued_turns");
    assert_eq!(wait, 5);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM turns WHERE session_id = $1",
            &session
        )
        .await,
        2
    );
    // Another session is unaffected.
    for text in ["a", "b"] {
        let resp = app.submit("carol", &other, text).await;
        assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text);
    }
    // Once the turns ran, the session takes more.
    let worker = app.worker(|_| {}).await;
    app.wait_finished("alice", &session, 2).await;
    let resp = app.submit("bob", &session, "three").await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text);
    app.wait_finished("alice", &session, 3).await;
    worker.stop().await;
}

#[tokio::test]
async fn daily_token_budgets_refuse_until_midnight_utc_per_session_and_per_user() {
    let app = TestApp::spawn().await;
    let worker = app.worker(|_| {}).await;
    let spent = app.create_session("alice", "Spent").await;
    let resp = app.submit("alice", &spent, "I open the door.").await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text);
    let turns = app.wait_finished("alice", &spent, 1).await;
    let usage = &turns[0]["usage"];
    let tokens = usage["prompt_tokens"].as_u64().expect("prompt")
        + usage["completion_tokens"].as_u64().expect("completion");
    assert!(tokens > 0);

    // A session budget equal to what it spent: refused, until midnight UTC.
    assert_eq!(set(&app, "session_daily_tokens", tokens).await.status, 200);
    let resp = app.submit("alice", &spent, "And again.").await;
    let wait = refused(&resp, "budget_exhausted", "session_daily_tokens");
    let now = chrono::Utc::now();
    let midnight = (now.date_naive() + chrono::Days::new(1))
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc();
    let left = (midnight - now).num_seconds().max(1) as u64;
    assert!(wait.abs_diff(left) <= 5, "{wait} vs {left}");
    // Alice's other session still has its budget.
    let fresh = app.create_session("alice", "Fresh").await;
    let resp = app.submit("alice", &fresh, "Hello.").await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text);
    app.wait_finished("alice", &fresh, 1).await;

    // A user budget: alice has spent more than one turn's worth; bob none.
    assert_eq!(set(&app, "session_daily_tokens", 0).await.status, 200);
    assert_eq!(set(&app, "user_daily_tokens", tokens + 1).await.status, 200);
    let another = app.create_session("alice", "Another").await;
    let resp = app.submit("alice", &another, "Hello again.").await;
    refused(&resp, "budget_exhausted", "user_daily_tokens");
    let bobs = app.create_session("bob", "Bob's").await;
    let resp = app.submit("bob", &bobs, "Hello.").await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM turns WHERE session_id = $1",
            &another
        )
        .await,
        0
    );
    app.wait_finished("bob", &bobs, 1).await;
    worker.stop().await;
}

#[tokio::test]
async fn media_per_hour_counts_requests_and_the_images_replies_ask_for() {
    let app = TestApp::spawn_with(|c| c.user_media_per_hour = 2).await;
    let session = app.ai_gm_session("alice", &["bob"]).await;
    let media_path = format!("/api/sessions/{session}/media");
    let ask = |user: &'static str| {
        app.post(
            user,
            &media_path,
            json!({"type": "image", "prompt": "a lantern"}),
        )
    };
    assert_eq!(ask("bob").await.status, StatusCode::ACCEPTED);
    // Bob's reply asks for two images: one fits, the other is skipped and
    // the reply goes on in text.
    let worker = app.worker(|c| c.user_media_per_hour = 2).await;
    let mut ws = app.ws("alice", &session, Some(0)).await.expect("socket");
    let resp = app
        .submit(
            "bob",
            &session,
            "I look.\n/image the hall\n/image the stairs",
        )
        .await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text);
    let turn_id = resp.body["turn_id"].as_str().expect("turn").to_owned();
    let seen = ws
        .collect_until(Duration::from_secs(30), |events| {
            events.iter().any(|e| e["type"] == "media.skipped")
        })
        .await;
    let skipped = seen
        .iter()
        .find(|e| e["type"] == "media.skipped")
        .expect("skipped");
    assert_eq!(skipped["data"]["turn_id"], turn_id.as_str());
    assert_eq!(skipped["data"]["skipped"], 1);
    assert_eq!(skipped["data"]["quota"], "user_media_per_hour");
    assert!(
        skipped["data"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Images are off")),
        "{skipped}"
    );
    let asked: Vec<&Value> = seen
        .iter()
        .filter(|e| e["type"] == "media.requested" && e["data"]["turn_id"] == turn_id.as_str())
        .collect();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0]["data"]["prompt"], "the hall");
    let completed = seen
        .iter()
        .find(|e| e["type"] == "turn.completed")
        .expect("completed");
    assert_eq!(completed["data"]["turn_id"], turn_id.as_str());

    // Bob's hour is spent: his request is refused, nothing recorded.
    let before = count(
        &app,
        "SELECT count(*) FROM campaign_media WHERE session_id = $1",
        &session,
    )
    .await;
    let resp = ask("bob").await;
    let wait = refused(&resp, "rate_limited", "user_media_per_hour");
    assert!((1700..=1800).contains(&wait), "{wait}");
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM campaign_media WHERE session_id = $1",
            &session
        )
        .await,
        before
    );
    // Alice's are her own.
    assert_eq!(ask("alice").await.status, StatusCode::ACCEPTED);
    worker.stop().await;
}

#[tokio::test]
async fn sessions_per_day_invites_per_session_and_sockets_per_user() {
    let app = TestApp::spawn_with(|c| {
        c.user_sessions_per_day = 2;
        c.session_max_invites = 1;
        c.user_max_sockets = 2;
    })
    .await;
    let first = app.create_session("alice", "One").await;
    let second = app.create_session("alice", "Two").await;
    let resp = app
        .post("alice", "/api/sessions", json!({"name": "Three"}))
        .await;
    let wait = refused(&resp, "rate_limited", "user_sessions_per_day");
    assert!((43_000..=43_200).contains(&wait), "{wait}");
    let owned: i64 =
        sqlx::query_scalar("SELECT count(*) FROM campaign_sessions WHERE owner_user_id = 'alice'")
            .fetch_one(&app.db.pool)
            .await
            .expect("count");
    assert_eq!(owned, 2);
    app.create_session("bob", "Bob's").await;

    // One open invite per session; another session has its own.
    let (invite, _) = app
        .invite("alice", &first, json!({"ttl_seconds": 600}))
        .await;
    let resp = app
        .post(
            "alice",
            &format!("/api/sessions/{first}/invites"),
            json!({}),
        )
        .await;
    let wait = refused(&resp, "limit_reached", "session_max_invites");
    assert!(
        (590..=600).contains(&wait),
        "until the open one expires: {wait}"
    );
    app.invite("alice", &second, json!({})).await;
    let revoked = app
        .delete("alice", &format!("/api/sessions/{first}/invites/{invite}"))
        .await;
    assert_eq!(revoked.status, 204);
    app.invite("alice", &first, json!({})).await;

    // Two sockets per user, across sessions; bob has his own.
    let a = app.ws("alice", &first, None).await.expect("first socket");
    let _b = app.ws("alice", &second, None).await.expect("second socket");
    let third = app.ws("alice", &first, None).await;
    assert_eq!(third.err(), Some(429));
    let refusal = into_resp(
        app.client
            .get(app.url(&format!("/ws/sessions/{first}")))
            .bearer_auth(app.token("alice"))
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
            .await
            .expect("send"),
    )
    .await;
    refused(&refusal, "limit_reached", "user_max_sockets");
    let bobs = app.create_session("bob", "Bob's second").await;
    let _bob = app.ws("bob", &bobs, None).await.expect("bob's socket");
    // A closed socket frees its place.
    drop(a);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match app.ws("alice", &first, None).await {
            Ok(_) => break,
            Err(status) => {
                assert_eq!(status, 429);
                assert!(
                    std::time::Instant::now() < deadline,
                    "the place was not given back"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
