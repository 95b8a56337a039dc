//! What a hostile or sloppy client sends: malformed JSON, wrong content
//! types, huge bodies, bad ids, unknown routes and path tricks. Each gets
//! our JSON error with a 4xx, never a 500 or axum's plain text.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{TestApp, into_resp};

#[tokio::test]
async fn malformed_and_mistyped_bodies_get_json_errors() {
    let app = TestApp::spawn().await;
    let send = |body: &'static str, content_type: Option<&'static str>| {
        let mut req = app
            .client
            .post(app.url("/api/sessions"))
            .bearer_auth(app.token("alice"))
            .body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        async move { into_resp(req.send().await.expect("send")).await }
    };
    send("{\"name\":", Some("application/json"))
        .await
        .assert_error(400, "malformed_json");
    send("not json", Some("application/json"))
        .await
        .assert_error(400, "malformed_json");
    send("", Some("application/json"))
        .await
        .assert_error(400, "malformed_json");
    send("{\"name\":\"x\"}", None)
        .await
        .assert_error(415, "unsupported_media_type");
    send("{\"name\":\"x\"}", Some("text/plain"))
        .await
        .assert_error(415, "unsupported_media_type");
    send("{\"name\":\"\\ud800\"}", Some("application/json"))
        .await
        .assert_error(400, "malformed_json");
    // serde would read an array as the struct's fields in order: refused.
    send(" [\"Keep\"]", Some("application/json"))
        .await
        .assert_error(422, "validation_failed");
    // +json types are JSON too.
    let resp = send(
        "{\"name\":\"x\"}",
        Some("application/merge-patch+json; charset=utf-8"),
    )
    .await;
    assert_eq!(resp.status, 201, "{}", resp.text);
    let sessions = app.get("alice", "/api/sessions").await;
    assert_eq!(
        sessions.body["sessions"].as_array().map(Vec::len),
        Some(1),
        "only the object was created"
    );
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let app = TestApp::spawn_with(|c| c.max_body_bytes = 4096).await;
    let big = json!({ "name": "x".repeat(5000) });
    app.post("alice", "/api/sessions", big.clone())
        .await
        .assert_error(413, "payload_too_large");
    // Chunked (no Content-Length) is caught too.
    let body = reqwest::Body::wrap_stream(futures::stream::iter(
        (0..10).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 1000]))),
    ));
    let resp = app
        .client
        .post(app.url("/api/invites/accept"))
        .bearer_auth(app.token("alice"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("send");
    into_resp(resp).await.assert_error(413, "payload_too_large");
    // Under the limit is fine.
    let ok = app
        .post("alice", "/api/sessions", json!({ "name": "small" }))
        .await;
    assert_eq!(ok.status, 201);
}

#[tokio::test]
async fn ids_that_are_not_uuids_are_400() {
    let app = TestApp::spawn().await;
    let session = app.create_session("alice", "Keep").await;
    for path in [
        "/api/sessions/not-a-uuid".to_owned(),
        "/api/sessions/1".to_owned(),
        "/api/sessions/%00".to_owned(),
        "/api/sessions/..%2F..%2Fetc".to_owned(),
        "/api/sessions/not-a-uuid/invites".to_owned(),
        format!("/api/sessions/{session}/invites/not-a-uuid"),
    ] {
        let method = if path.contains("/invites/") {
            Method::DELETE
        } else {
            Method::GET
        };
        app.call(method, &path, Some("alice"), None)
            .await
            .assert_error(400, "invalid_path");
    }
}

#[tokio::test]
async fn path_tricks_in_member_ids_are_just_unknown_members() {
    let app = TestApp::spawn().await;
    let session = app.session_with("alice", &["bob"]).await;
    for member in ["..%2F..%2Fbob", "%2e%2e", "bob%00", "%20bob", "alice%2Fbob"] {
        app.delete(
            "alice",
            &format!("/api/sessions/{session}/members/{member}"),
        )
        .await
        .assert_error(404, "not_found");
    }
    let got = app.get("alice", &format!("/api/sessions/{session}")).await;
    assert_eq!(got.body["members"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let app = TestApp::spawn().await;
    app.get("alice", "/api/nope")
        .await
        .assert_error(404, "not_found");
    app.get("alice", "/nope")
        .await
        .assert_error(404, "not_found");
    app.call(Method::PUT, "/api/sessions", Some("alice"), Some(json!({})))
        .await
        .assert_error(405, "method_not_allowed");
    app.call(Method::POST, "/healthz", None, None)
        .await
        .assert_error(405, "method_not_allowed");
}

#[tokio::test]
async fn nothing_a_client_sends_here_produces_a_500() {
    let app = TestApp::spawn().await;
    let session = app.create_session("alice", "Keep").await;
    let weird_bodies = [
        json!(null),
        json!(1),
        json!("s"),
        json!([]),
        json!({ "name": { "nested": true } }),
        json!({ "token": 5 }),
        json!({ "role": 7 }),
        json!({ "ttl_seconds": 1.5 }),
    ];
    let paths = [
        "/api/sessions".to_owned(),
        format!("/api/sessions/{session}"),
        format!("/api/sessions/{session}/invites"),
        "/api/invites/accept".to_owned(),
    ];
    for path in &paths {
        for method in [Method::POST, Method::PATCH] {
            for body in &weird_bodies {
                let resp = app
                    .call(method.clone(), path, Some("alice"), Some(body.clone()))
                    .await;
                assert!(
                    resp.status.is_client_error(),
                    "{method} {path} {body}: {} {}",
                    resp.status,
                    resp.text
                );
                assert!(
                    resp.body["error"]["code"].is_string(),
                    "not our JSON error: {}",
                    resp.text
                );
            }
        }
    }
}

#[tokio::test]
async fn error_messages_echo_little_input_and_no_rust_types() {
    let app = TestApp::spawn().await;
    // A 10 KB path segment comes back cut, not whole.
    let long = "a".repeat(10_000);
    let resp = app.get("alice", &format!("/api/sessions/{long}")).await;
    resp.assert_error(400, "invalid_path");
    let message = resp.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.len() < 300, "{message}");
    assert!(!message.contains(&"a".repeat(65)), "{message}");
    // Shape errors describe JSON, not the Rust type behind it.
    for body in [json!("a string"), json!([1, 2]), json!({ "name": ["x"] })] {
        let resp = app.post("alice", "/api/sessions", body.clone()).await;
        resp.assert_error(422, "validation_failed");
        let message = resp.body["error"]["message"].as_str().unwrap_or_default();
        for rust in ["struct", "SessionInput", "enum ", "sequence", "a map"] {
            assert!(!message.contains(rust), "{body}: {message}");
        }
    }
}

/// Who may act is checked before what they asked for and before what the
/// session allows, on every route that changes a session: on an archived
/// session, with requests that would also be refused for their content, a
/// player gets 403 for what only the owner or a GM may do, and a stranger
/// gets 404 for everything.
#[tokio::test]
async fn who_may_act_comes_before_what_the_request_or_the_session_allows() {
    let app = TestApp::spawn().await;
    let session = app.session_with("alice", &["bob"]).await;
    let base = format!("/api/sessions/{session}");
    let (invite_id, _) = app.invite("alice", &session, json!({})).await;
    let resp = app.delete("alice", &base).await;
    assert!(resp.status.is_success(), "{}", resp.text);

    let bad_invite = json!({ "role": "owner", "ttl_seconds": 0, "max_uses": 0 });
    let bad_state = json!({ "version": 0, "operations": [{ "op": "set" }] });
    let stale_state = json!({ "version": 999, "operations": [
        { "path": "items", "operation": "push", "value": 1 } ] });
    let owner_or_gm_only: Vec<(Method, String, Option<serde_json::Value>)> = vec![
        (Method::PATCH, base.clone(), Some(json!({ "name": "" }))),
        (
            Method::PATCH,
            base.clone(),
            Some(json!({ "name": "Bob's" })),
        ),
        (Method::DELETE, base.clone(), None),
        (
            Method::POST,
            format!("{base}/invites"),
            Some(bad_invite.clone()),
        ),
        (Method::POST, format!("{base}/invites"), Some(json!({}))),
        (Method::GET, format!("{base}/invites"), None),
        (Method::DELETE, format!("{base}/invites/{invite_id}"), None),
        (
            Method::DELETE,
            format!("{base}/invites/{}", uuid::Uuid::now_v7()),
            None,
        ),
        (Method::DELETE, format!("{base}/members/alice"), None),
        (Method::DELETE, format!("{base}/members/nobody"), None),
        (
            Method::POST,
            format!("{base}/state/updates"),
            Some(bad_state),
        ),
        (
            Method::POST,
            format!("{base}/state/updates"),
            Some(stale_state.clone()),
        ),
    ];
    for (method, path, body) in &owner_or_gm_only {
        let resp = app
            .call(method.clone(), path, Some("bob"), body.clone())
            .await;
        assert_eq!(resp.status, 403, "bob {method} {path}: {}", resp.text);
        assert_eq!(resp.code(), "forbidden", "bob {method} {path}");
    }
    let members_too: Vec<(Method, String, Option<serde_json::Value>)> = vec![
        (Method::GET, base.clone(), None),
        (
            Method::POST,
            format!("{base}/turns"),
            Some(json!({ "text": "" })),
        ),
        (
            Method::POST,
            format!("{base}/turns"),
            Some(json!({ "text": "hi" })),
        ),
        (Method::GET, format!("{base}/turns"), None),
        (Method::GET, format!("{base}/events"), None),
        (Method::GET, format!("{base}/state"), None),
        (Method::DELETE, format!("{base}/members/mallory"), None),
    ];
    for (method, path, body) in owner_or_gm_only.iter().chain(&members_too) {
        let resp = app
            .call(method.clone(), path, Some("mallory"), body.clone())
            .await;
        assert_eq!(resp.status, 404, "mallory {method} {path}: {}", resp.text);
        assert_eq!(resp.code(), "not_found", "mallory {method} {path}");
    }
    // The owner, who may act, is told what the session allows.
    app.post("alice", &format!("{base}/invites"), json!({}))
        .await
        .assert_error(409, "conflict");
    app.post("alice", &format!("{base}/state/updates"), stale_state)
        .await
        .assert_error(409, "conflict");
}

/// A client's path in the legacy shim's log line is cut (the probe wrote a
/// 6,171-character line with one request), by the real `questboard serve`.
#[tokio::test]
async fn logged_client_input_is_cut() {
    let app = TestApp::spawn().await;
    let (http, metrics) = (crate::helpers::free_port(), crate::helpers::free_port());
    let log = std::env::temp_dir().join(format!("qb-serve-{}.log", uuid::Uuid::new_v4()));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_questboard"))
        .arg("serve")
        .env("DATABASE_URL", &app.db.url)
        .env("REDIS_URL", crate::helpers::redis_url())
        .env("QB_JWT_SECRET", crate::helpers::TEST_SECRET)
        .env("QB_STORAGE_URL", "memory://")
        .env("QB_HTTP_ADDR", format!("127.0.0.1:{http}"))
        .env("QB_METRICS_ADDR", format!("127.0.0.1:{metrics}"))
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("questboard serve");
    let client = reqwest::Client::new();
    let long = "a/".repeat(3_085) + "x";
    let url = format!("http://127.0.0.1:{http}/api/legacy/prod/campaign_1/{long}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        match client
            .get(&url)
            .bearer_auth(app.token("alice"))
            .send()
            .await
        {
            Ok(resp) => break resp.status().as_u16(),
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(err) => panic!("serve never answered: {err}"),
        }
    };
    assert_eq!(status, 404);
    let text =
        crate::helpers::wait_log(&log, "legacy path used", std::time::Duration::from_secs(10))
            .await;
    let _ = child.kill();
    let _ = child.wait();
    let line = text
        .lines()
        .find(|l| l.contains("legacy path used"))
        .unwrap_or_else(|| panic!("no log line in {text}"));
    assert!(line.len() < 1_000, "{} characters: {line}", line.len());
    assert!(line.contains("more characters"), "{line}");
}
