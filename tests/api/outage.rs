//! Outages of Postgres and Redis for one API process (through a proxy the
//! test pulls the plug on, so the shared servers stay up): requests get
//! 503 `unavailable` with `Retry-After` within the acquire timeout, never
//! 500, and the process recovers by itself; a socket whose live feed
//! broke is told so (`resync`) and gets what it missed, in order.

use std::time::{Duration, Instant};

use questboard::config::Secret;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{TestApp, WsItem, redis_url};
use crate::proxy::Proxy;

#[tokio::test]
async fn a_database_outage_answers_503_with_retry_after_and_the_api_recovers() {
    let app = TestApp::spawn().await;
    let session = app.create_session("alice", "Outage").await;
    let (postgres, through) = Proxy::to(&app.db.url).await;
    let api = app
        .another_api(|c| {
            c.database_url = Some(Secret::new(through));
            c.db_acquire_timeout_ms = 500;
        })
        .await;
    let path = format!("/api/sessions/{session}");
    assert_eq!(api.get("alice", &path).await.status, StatusCode::OK);

    postgres.down().await;
    let requests = [
        (Method::GET, path.clone(), None),
        (
            Method::POST,
            format!("{path}/turns"),
            Some(json!({"text": "I wait."})),
        ),
        (Method::GET, format!("{path}/state"), None),
        (
            Method::POST,
            format!("{path}/state/updates"),
            Some(
                json!({"version": 0, "operations": [{"path": "items", "operation": "push", "value": 1}]}),
            ),
        ),
        (Method::GET, "/api/sessions".to_owned(), None),
    ];
    for (method, path, body) in requests {
        let asked = Instant::now();
        let resp = api.call(method.clone(), &path, Some("alice"), body).await;
        let took = asked.elapsed();
        resp.assert_error(503, "unavailable");
        assert!(
            resp.headers.get("retry-after").is_some(),
            "{method} {path}: no Retry-After"
        );
        // Bounded by the acquire timeout (0.5 s here), not the old 10 s.
        assert!(
            took < Duration::from_secs(5),
            "{method} {path} took {took:?}"
        );
    }
    let ready = api.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        ready.text
    );

    // Back up: served again without a restart, nothing half-written.
    postgres.up().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let resp = api.get("alice", &path).await;
        if resp.status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "not recovered: {}", resp.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(app.turns("alice", &session).await.is_empty());
    let state = app.get("alice", &format!("{path}/state")).await;
    assert_eq!(state.body["version"], 0);
    let ready = api.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text);
}

#[tokio::test]
async fn a_socket_whose_live_feed_broke_is_told_and_gets_what_it_missed() {
    let app = TestApp::spawn().await;
    let session = app.create_session("alice", "Blip").await;
    let (redis, through) = Proxy::to(&redis_url()).await;
    let api = app
        .another_api(|c| c.redis_url = Some(Secret::new(through)))
        .await;
    let mut socket = api.ws("alice", &session, None).await.expect("socket");
    // Live through the proxy first.
    let rename = |name: &'static str| {
        let app = &app;
        let session = session.clone();
        async move {
            let resp = app
                .patch(
                    "alice",
                    &format!("/api/sessions/{session}"),
                    json!({ "name": name }),
                )
                .await;
            assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
        }
    };
    rename("Before").await;
    let seen = socket
        .collect_until(Duration::from_secs(10), |m| {
            m.iter().any(|e| e["type"] == "session.updated")
        })
        .await;
    let before = seen.last().and_then(|e| e["seq"].as_i64()).expect("seq");

    // Until the bridge has subscribed (through the proxy: the only
    // subscriber of this channel), the socket is fed by its catch-ups and
    // there is no live feed to break yet.
    let client = redis::Client::open(redis_url()).expect("redis");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let channel = questboard_core::events::channel(session.parse().expect("uuid"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, subscribers): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channel)
            .query_async(&mut conn)
            .await
            .expect("numsub");
        if subscribers > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bridge never subscribed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The feed breaks; an event happens (on the other API) while it is down.
    redis.down().await;
    rename("During").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.up().await;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !got.iter().any(|e: &serde_json::Value| {
        e["type"] == "session.updated" && e["data"]["name"] == "During"
    }) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match socket.next(left).await {
            Some(WsItem::Json(message)) => got.push(message),
            other => panic!("socket ended ({other:?}) after {got:#?}"),
        }
    }
    let notice = got
        .iter()
        .position(|m| m["type"] == "resync")
        .unwrap_or_else(|| panic!("no resync notice: {got:#?}"));
    assert_eq!(got[notice]["reason"], "live_feed_interrupted");
    assert_eq!(got[notice]["after_seq"], before);
    let missed = got
        .iter()
        .position(|m| m["data"]["name"] == "During")
        .expect("missed event");
    assert!(
        notice < missed,
        "the notice comes before the replay: {got:#?}"
    );
    assert_eq!(got[missed]["seq"], before + 1);
}
