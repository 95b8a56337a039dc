//! Who may keep listening on a session socket: a member removed, leaving,
//! or on an archived session hears nothing more, whatever `after_seq` they
//! sent and whichever API process made the change; a socket ends with its
//! token unless the client re-authenticates; socket messages follow REST's
//! JSON rules.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestApp, WsClient, WsItem};

const WAIT: Duration = Duration::from_secs(30);

/// Reads until the socket closes; what it delivered and the close code.
async fn drain_until_closed(socket: &mut WsClient, wait: Duration) -> (Vec<Value>, Option<u16>) {
    let deadline = tokio::time::Instant::now() + wait;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match socket.next(left).await {
            Some(WsItem::Json(value)) => seen.push(value),
            Some(WsItem::Closed(code)) => return (seen, code),
            None => panic!("the socket stayed open; it delivered {seen:#?}"),
        }
    }
}

/// Bob listens on API 1 with a huge `after_seq`; he loses access through
/// API 2 (`how`), then Alice plays a turn through API 2. Bob's socket
/// closes with 4003 and carries nothing of that turn, while Carol (still a
/// member, listening on API 1) gets the whole reply streamed.
async fn a_member_who_loses_access_hears_nothing_more(how: &str) {
    let api1 = TestApp::spawn().await;
    let api2 = api1.another_api(|_| {}).await;
    let session = api1.session_with("alice", &["bob", "carol"]).await;
    let _worker = api1.worker(|c| c.scripted_latency_ms = 40).await;

    let mut bobs = api1
        .ws("bob", &session, Some(1_000_000))
        .await
        .expect("bob's socket");
    let mut carols = api1
        .ws("carol", &session, None)
        .await
        .expect("carol's socket");
    // Both sockets are live: a first turn reaches them.
    assert_eq!(
        api2.submit("alice", &session, "I light a torch.")
            .await
            .status,
        202
    );
    carols
        .collect_until(WAIT, |m| m.iter().any(|e| e["type"] == "turn.completed"))
        .await;

    let removal = match how {
        "removed" => {
            api2.delete("alice", &format!("/api/sessions/{session}/members/bob"))
                .await
        }
        _ => {
            api2.delete("bob", &format!("/api/sessions/{session}/members/bob"))
                .await
        }
    };
    assert_eq!(removal.status, 204, "{}", removal.text);
    let secret = api2
        .submit("alice", &session, "I whisper the password.")
        .await;
    assert_eq!(secret.status, 202);
    let secret_turn = secret.body["turn_id"].as_str().expect("turn_id").to_owned();

    // Carol hears the whole secret turn, streamed.
    let carol_saw = carols
        .collect_until(WAIT, |m| {
            m.iter().any(|e| {
                e["type"] == "turn.completed" && e["data"]["turn_id"] == secret_turn.as_str()
            })
        })
        .await;
    assert!(
        carol_saw
            .iter()
            .any(|m| m["type"] == "turn.delta" && m["turn_id"] == secret_turn.as_str()),
        "carol got no chunks of the secret turn: {carol_saw:#?}"
    );

    // Bob's socket closed with 4003, and nothing of the secret turn
    // reached it: no chunk, no event.
    let (bob_saw, code) = drain_until_closed(&mut bobs, WAIT).await;
    assert_eq!(code, Some(4003), "bob saw {bob_saw:#?}");
    let kind = if how == "removed" {
        "member.removed"
    } else {
        "member.left"
    };
    assert!(
        bob_saw
            .iter()
            .any(|m| m["type"] == kind && m["data"]["user_id"] == "bob"),
        "bob's socket did not say why it closed: {bob_saw:#?}"
    );
    let leaked: Vec<&Value> = bob_saw
        .iter()
        .filter(|m| {
            m["turn_id"] == secret_turn.as_str() || m["data"]["turn_id"] == secret_turn.as_str()
        })
        .collect();
    assert!(leaked.is_empty(), "the removed member heard {leaked:#?}");
    // The removal is the last thing the socket sent.
    assert_eq!(bob_saw.last().map(|m| &m["type"]), Some(&json!(kind)));

    // And Bob cannot come back, on either process.
    assert_eq!(api1.ws("bob", &session, None).await.err(), Some(404));
    assert_eq!(
        api2.ws("bob", &session, Some(1_000_000)).await.err(),
        Some(404)
    );
}

#[tokio::test]
async fn a_removed_member_hears_nothing_more_whatever_after_seq_they_sent() {
    a_member_who_loses_access_hears_nothing_more("removed").await;
}

#[tokio::test]
async fn a_member_who_left_hears_nothing_more_whatever_after_seq_they_sent() {
    a_member_who_loses_access_hears_nothing_more("left").await;
}

#[tokio::test]
async fn a_resume_past_the_end_of_the_log_starts_at_the_end() {
    let app = TestApp::spawn().await;
    let session = app.session_with("alice", &["bob"]).await;
    let mut socket = app
        .ws("bob", &session, Some(i64::MAX))
        .await
        .expect("socket");
    // A rename through REST: the next seq is delivered, not skipped.
    let renamed = app
        .patch(
            "alice",
            &format!("/api/sessions/{session}"),
            json!({"name": "Renamed"}),
        )
        .await;
    assert_eq!(renamed.status, 200, "{}", renamed.text);
    let seen = socket
        .collect_until(WAIT, |m| m.iter().any(|e| e["type"] == "session.updated"))
        .await;
    let events = app.events("alice", &session, 0).await;
    let last = events.last().expect("events");
    assert_eq!(seen.last(), Some(last), "{seen:#?}");
}

#[tokio::test]
async fn archiving_closes_every_socket_and_a_later_socket_replays_then_closes() {
    let api1 = TestApp::spawn().await;
    let api2 = api1.another_api(|_| {}).await;
    let session = api1.session_with("alice", &["bob"]).await;
    let mut bobs = api1
        .ws("bob", &session, Some(1_000_000))
        .await
        .expect("socket");
    let archived = api2
        .delete("alice", &format!("/api/sessions/{session}"))
        .await;
    assert_eq!(archived.status, 200, "{}", archived.text);
    let (seen, code) = drain_until_closed(&mut bobs, WAIT).await;
    assert_eq!(code, Some(4003));
    assert_eq!(
        seen.last().map(|m| &m["type"]),
        Some(&json!("session.archived"))
    );

    // A member opening a socket afterwards gets what they missed, then the close.
    let mut late = api1.ws("bob", &session, Some(0)).await.expect("socket");
    let (replayed, code) = drain_until_closed(&mut late, WAIT).await;
    assert_eq!(code, Some(4003));
    assert_eq!(replayed.first().map(|m| &m["seq"]), Some(&json!(1)));
    assert_eq!(
        replayed.last().map(|m| &m["type"]),
        Some(&json!("session.archived"))
    );
}

#[tokio::test]
async fn a_socket_closes_when_its_token_expires() {
    let app = TestApp::spawn().await;
    let session = app.create_session("alice", "Short lived").await;
    let token = app.token_for("alice", Duration::from_secs(2));
    let mut socket = app
        .ws_with_token(&token, &session, None)
        .await
        .expect("socket");
    let opened = tokio::time::Instant::now();
    let (_, code) = drain_until_closed(&mut socket, WAIT).await;
    assert_eq!(code, Some(4001));
    // Not before the token (plus the leeway) ran out.
    assert!(opened.elapsed() >= Duration::from_secs(2));
    // While a REST call with it is refused too.
    let resp = app
        .call_with_auth(
            reqwest::Method::GET,
            &format!("/api/sessions/{session}"),
            &format!("Bearer {token}"),
        )
        .await;
    resp.assert_error(401, "unauthorized");
}

#[tokio::test]
async fn a_client_can_hand_a_fresh_token_to_an_open_socket() {
    let app = TestApp::spawn().await;
    let session = app.create_session("alice", "Long game").await;
    let short = app.token_for("alice", Duration::from_secs(1));
    let mut socket = app
        .ws_with_token(&short, &session, None)
        .await
        .expect("socket");

    // Someone else's token is refused, and changes nothing.
    let other = socket
        .request(
            json!({"type": "auth", "request_id": 1, "token": app.token("mallory")}),
            WAIT,
        )
        .await;
    assert_eq!(other["ok"], false);
    assert_eq!(other["error"]["code"], "forbidden");
    // A bad token likewise.
    let bad = socket
        .request(
            json!({"type": "auth", "request_id": 2, "token": "not.a.jwt"}),
            WAIT,
        )
        .await;
    assert_eq!(bad["ok"], false);
    assert_eq!(bad["error"]["code"], "unauthorized");

    let fresh = socket
        .request(
            json!({"type": "auth", "request_id": 3, "token": app.token("alice")}),
            WAIT,
        )
        .await;
    assert_eq!(fresh["ok"], true, "{fresh}");
    assert!(fresh["expires_at"].as_u64().is_some());
    // Past the short token's expiry and leeway, the socket still answers.
    tokio::time::sleep(Duration::from_secs(1 + 5 + 1)).await;
    let state = socket
        .request(json!({"type": "state.get", "request_id": 4}), WAIT)
        .await;
    assert_eq!(state["ok"], true, "{state}");
}

#[tokio::test]
async fn socket_messages_follow_the_rest_rules_for_keys_and_request_ids() {
    let app = TestApp::spawn().await;
    let session = app.create_session("alice", "Rules").await;
    let mut socket = app.ws("alice", &session, None).await.expect("socket");

    // A key twice: refused, not read as the last one.
    socket
        .send_text(r#"{"type":"state.update","type":"state.get","request_id":"a"}"#.into())
        .await;
    let reply = next_reply(&mut socket).await;
    assert_eq!(reply["request_id"], "a");
    assert_eq!(reply["error"]["code"], "bad_message");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("duplicate key"),
        "{reply}"
    );
    // ...at any depth.
    socket
        .send_text(
            r#"{"type":"state.update","request_id":"b","version":0,"operations":[{"op":"set","path":"/notes","value":{"x":1,"x":2}}]}"#
                .into(),
        )
        .await;
    assert_eq!(
        next_reply(&mut socket).await["error"]["code"],
        "bad_message"
    );

    // An integer request id beyond what JavaScript holds exactly is refused.
    socket
        .send_text(r#"{"type":"state.get","request_id":123456789012345678901234567890}"#.into())
        .await;
    let reply = next_reply(&mut socket).await;
    assert_eq!(reply["request_id"], Value::Null);
    assert_eq!(reply["error"]["code"], "bad_message");
    // The largest safe one comes back exactly.
    socket
        .send_text(r#"{"type":"state.get","request_id":9007199254740991}"#.into())
        .await;
    let reply = next_reply(&mut socket).await;
    assert_eq!(reply["ok"], true);
    assert_eq!(reply["request_id"].as_i64(), Some(9_007_199_254_740_991));
    // A fraction is not an id.
    socket
        .send_text(r#"{"type":"state.get","request_id":1.5}"#.into())
        .await;
    assert_eq!(
        next_reply(&mut socket).await["error"]["code"],
        "bad_message"
    );

    // REST refuses a duplicate key too.
    let resp = app
        .client
        .post(app.url("/api/sessions"))
        .bearer_auth(app.token("alice"))
        .header("content-type", "application/json")
        .body(r#"{"name":"One","name":"Two"}"#)
        .send()
        .await
        .expect("request");
    let resp = crate::helpers::into_resp(resp).await;
    resp.assert_error(422, "validation_failed");
    assert!(resp.text.contains("duplicate key"), "{}", resp.text);
    // ...in free-form values as well.
    let state = app
        .get("alice", &format!("/api/sessions/{session}/state"))
        .await;
    let version = state.body["version"].as_i64().expect("version");
    let resp = app
        .client
        .post(app.url(&format!("/api/sessions/{session}/state/updates")))
        .bearer_auth(app.token("alice"))
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"version":{version},"operations":[{{"op":"set","path":"/notes","value":{{"x":1,"x":2}}}}]}}"#
        ))
        .send()
        .await
        .expect("request");
    crate::helpers::into_resp(resp)
        .await
        .assert_error(422, "validation_failed");
}

async fn next_reply(socket: &mut WsClient) -> Value {
    loop {
        match socket.next(WAIT).await {
            Some(WsItem::Json(value)) if value["type"] == "reply" => return value,
            Some(WsItem::Json(_)) => continue,
            other => panic!("no reply: {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_oversized_token_is_refused_before_it_is_parsed() {
    let app = TestApp::spawn().await;
    let session = app.create_session("alice", "Big tokens").await;
    // Validly signed tokens made big by padding in a claim.
    let padded = |bytes: usize| {
        use jsonwebtoken::{EncodingKey, Header, encode};
        let claims = json!({
            "sub": "alice",
            "exp": chrono::Utc::now().timestamp() + 600,
            "padding": "x".repeat(bytes),
        });
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(crate::helpers::TEST_SECRET.as_bytes()),
        )
        .expect("encode")
    };
    let huge = padded(100 * 1024);
    assert!(huge.len() > 133 * 1000);
    let resp = app
        .call_with_auth(
            reqwest::Method::GET,
            &format!("/api/sessions/{session}"),
            &format!("Bearer {huge}"),
        )
        .await;
    resp.assert_error(401, "unauthorized");
    assert!(resp.text.contains("too long"), "{}", resp.text);
    // The browsers' query parameter likewise.
    let url = format!("/ws/sessions/{session}?access_token={}", padded(12 * 1024));
    let resp = app.client.get(app.url(&url)).send().await.expect("request");
    assert_eq!(resp.status().as_u16(), 401);
    // A token just under the cap is read as usual.
    let under = padded(5 * 1024);
    assert!(under.len() < 8 * 1024);
    let resp = app
        .call_with_auth(
            reqwest::Method::GET,
            &format!("/api/sessions/{session}"),
            &format!("Bearer {under}"),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text);
}
