//! A probe of a running `questboard dev`, for `scripts/dev-check` (which
//! starts the run command with no system services and runs this test
//! against it): `QB_PROBE_URL` is its address. With `QB_PROBE_MODE=turn`
//! it signs in by name, creates a session, watches it on a socket while a
//! turn runs, checks the streamed chunks spell the reply, and writes the
//! session id to `QB_PROBE_OUT`; with `QB_PROBE_MODE=find` it checks the
//! session of `QB_PROBE_SESSION` and its completed turn are still there
//! (after a restart). Ignored in the normal run: there is nothing to probe.

use std::time::Duration;

use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
#[ignore = "run by scripts/dev-check against a running `questboard dev`"]
async fn probe_a_running_dev_platform() {
    let Ok(base) = std::env::var("QB_PROBE_URL") else {
        return;
    };
    let mode = std::env::var("QB_PROBE_MODE").unwrap_or_else(|_| "turn".into());
    let http = reqwest::Client::new();
    let signed_in: Value = http
        .post(format!("{base}/dev/token"))
        .json(&json!({ "user": "probe" }))
        .send()
        .await
        .expect("sign in")
        .json()
        .await
        .expect("token");
    let token = signed_in["token"].as_str().expect("token").to_owned();
    let get = |path: String| {
        let http = http.clone();
        let token = token.clone();
        let base = base.clone();
        async move {
            let resp = http
                .get(format!("{base}{path}"))
                .bearer_auth(token)
                .send()
                .await
                .expect("request");
            assert!(resp.status().is_success(), "{path}: {}", resp.status());
            resp.json::<Value>().await.expect("json")
        }
    };

    if mode == "find" {
        let session = std::env::var("QB_PROBE_SESSION").expect("QB_PROBE_SESSION");
        let page = get("/api/sessions".into()).await;
        let found = page["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .any(|s| s["session_id"] == session.as_str());
        assert!(found, "session {session} is gone: {page}");
        let turns = get(format!("/api/sessions/{session}/turns")).await;
        assert_eq!(turns["turns"][0]["status"], "completed", "{turns}");
        println!("probe: found session {session} and its completed turn");
        return;
    }

    let created: Value = http
        .post(format!("{base}/api/sessions"))
        .bearer_auth(&token)
        .json(&json!({ "name": "Probe campaign" }))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("session");
    let session = created["session_id"]
        .as_str()
        .expect("session_id")
        .to_owned();
    let ws_base = base.replacen("http://", "ws://", 1);
    let mut request = format!("{ws_base}/ws/sessions/{session}")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("socket");
    let submitted = http
        .post(format!("{base}/api/sessions/{session}/turns"))
        .bearer_auth(&token)
        .json(&json!({ "text": "I open the door." }))
        .send()
        .await
        .expect("submit");
    assert_eq!(submitted.status(), 202);
    let mut deltas: Vec<(u64, String)> = Vec::new();
    let output = loop {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("an event in time")
            .expect("socket open")
            .expect("frame");
        let Message::Text(text) = message else {
            continue;
        };
        let event: Value = serde_json::from_str(&text).expect("json");
        match event["type"].as_str() {
            Some("turn.delta") => deltas.push((
                event["index"].as_u64().expect("index"),
                event["text"].as_str().expect("text").to_owned(),
            )),
            Some("turn.completed") => {
                break event["data"]["output"].as_str().expect("output").to_owned();
            }
            Some("turn.failed") => panic!("the turn failed: {event}"),
            _ => {}
        }
    };
    deltas.sort();
    let joined: String = deltas.into_iter().map(|(_, t)| t).collect();
    assert_eq!(joined, output, "the chunks spell the reply");
    if let Ok(out) = std::env::var("QB_PROBE_OUT") {
        std::fs::write(out, &session).expect("write the session id");
    }
    println!("probe: session {session}, a turn's events and chunks received over the socket");
}
