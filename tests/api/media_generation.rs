//! Generated images and narration end to end: a member asks, the `media`
//! job makes the bytes (the built-in provider, or a local fake of an
//! OpenAI-compatible server speaking `/images/generations` and
//! `/audio/speech`), checks them, stores them, and `media.ready` reaches the
//! session's sockets; the bytes are then fetched. A 429 is retried after
//! `Retry-After`; a reply that is not an image fails the item with
//! `media.failed`. A game master's reply asks for images (`/image` lines,
//! the `show_image` tool). On the local filesystem, and on S3 (moto) with a
//! `questboard work` process.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode as AxumStatus;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use questboard_workers::providers::media::builtin;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, WsItem};

/// An app whose API and workers share a local storage directory (an
/// in-memory store would be one per process-part).
async fn app_on_disk() -> (TestApp, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("qb-gen-{}", uuid::Uuid::new_v4().simple()));
    let path = dir.to_string_lossy().into_owned();
    (
        TestApp::spawn_with(move |c| c.storage_url = path).await,
        dir,
    )
}

async fn ask(
    app: &TestApp,
    user: &str,
    session: &str,
    body: Value,
    key: Option<&str>,
) -> crate::helpers::Resp {
    let mut req = app
        .client
        .post(app.url(&format!("/api/sessions/{session}/media")))
        .bearer_auth(app.token(user))
        .json(&body);
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    crate::helpers::into_resp(req.send().await.expect("ask")).await
}

async fn bytes_of(app: &TestApp, user: &str, url: &str) -> (StatusCode, String, Vec<u8>) {
    let resp = app
        .client
        .get(app.url(url))
        .bearer_auth(app.token(user))
        .send()
        .await
        .expect("get");
    let status = resp.status();
    let ty = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, ty, resp.bytes().await.expect("bytes").to_vec())
}

/// Waits on the socket for the `media.ready` or `media.failed` of `media_id`.
async fn outcome(ws: &mut crate::helpers::WsClient, media_id: &str, wait: Duration) -> Value {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ws.next(left).await {
            Some(WsItem::Json(event))
                if matches!(event["type"].as_str(), Some("media.ready" | "media.failed"))
                    && event["data"]["media_id"] == media_id =>
            {
                return event;
            }
            Some(WsItem::Json(_)) => {}
            other => panic!("socket ended early: {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_builtin_provider_makes_a_png_and_a_wav_that_members_fetch() {
    let (app, dir) = app_on_disk().await;
    let _worker = app.worker(|_| {}).await;
    let session = app.ai_gm_session("alice", &["bob"]).await;
    let mut ws = app.ws("bob", &session, Some(0)).await.expect("socket");

    let prompt = "the drowned chapel at low tide";
    let resp = ask(
        &app,
        "bob",
        &session,
        json!({"type": "image", "prompt": prompt, "size": "64x48"}),
        Some("img-1"),
    )
    .await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text);
    assert_eq!(resp.body["status"], "pending");
    let media_id = resp.body["media_id"].as_str().expect("id").to_owned();
    assert!(resp.body["job_id"].is_string());
    // The same key and body: the same item, nothing new.
    let again = ask(
        &app,
        "bob",
        &session,
        json!({"type": "image", "prompt": prompt, "size": "64x48"}),
        Some("img-1"),
    )
    .await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.body["media_id"], media_id.as_str());
    assert_eq!(
        again
            .headers
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    // The same key, another body: refused.
    ask(
        &app,
        "bob",
        &session,
        json!({"type": "image", "prompt": "other"}),
        Some("img-1"),
    )
    .await
    .assert_error(409, "conflict");

    let ready = outcome(&mut ws, &media_id, Duration::from_secs(30)).await;
    assert_eq!(ready["type"], "media.ready", "{ready}");
    assert_eq!(ready["data"]["kind"], "image");
    let url = ready["data"]["url"].as_str().expect("url").to_owned();
    assert_eq!(url, format!("/api/media/{session}/images/{media_id}.png"));
    let (status, ty, bytes) = bytes_of(&app, "alice", &url).await;
    assert_eq!((status, ty.as_str()), (StatusCode::OK, "image/png"));
    assert_eq!(bytes, builtin::picture(prompt, 64, 48).expect("picture"));
    let item = app
        .get(
            "alice",
            &format!("/api/sessions/{session}/media/{media_id}"),
        )
        .await;
    assert_eq!(item.body["source"], "generated");
    assert_eq!(item.body["status"], "ready");

    let resp = ask(
        &app,
        "alice",
        &session,
        json!({"type": "audio", "prompt": "Welcome back, heroes.", "voice": "nova"}),
        None,
    )
    .await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text);
    let audio_id = resp.body["media_id"].as_str().expect("id").to_owned();
    let ready = outcome(&mut ws, &audio_id, Duration::from_secs(30)).await;
    assert_eq!(ready["type"], "media.ready", "{ready}");
    let (status, ty, bytes) =
        bytes_of(&app, "bob", ready["data"]["url"].as_str().expect("url")).await;
    assert_eq!((status, ty.as_str()), (StatusCode::OK, "audio/wav"));
    assert_eq!(bytes, builtin::tones("nova\0Welcome back, heroes."));

    // Refused: a stranger (404, whatever they send), bad type, blank prompt, bad size.
    ask(
        &app,
        "mallory",
        &session,
        json!({"type": "image", "prompt": "x"}),
        None,
    )
    .await
    .assert_error(404, "not_found");
    ask(
        &app,
        "mallory",
        &session,
        json!({"type": "video", "prompt": ""}),
        None,
    )
    .await
    .assert_error(404, "not_found");
    for bad in [
        json!({"type": "video", "prompt": "x"}),
        json!({"type": "image", "prompt": "  \n "}),
        json!({"type": "image", "prompt": "x", "size": "huge"}),
        json!({"type": "audio", "prompt": "x", "voice": "../../etc"}),
    ] {
        ask(&app, "bob", &session, bad.clone(), None)
            .await
            .assert_error(422, "validation_failed");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_game_masters_reply_shows_the_images_it_asks_for() {
    let (app, dir) = app_on_disk().await;
    let _worker = app.worker(|_| {}).await;
    let session = app.ai_gm_session("alice", &["bob"]).await;
    let mut ws = app.ws("alice", &session, Some(0)).await.expect("socket");
    let prompt = "a flooded crypt lit by one lantern";
    let text = format!(
        "I light the lantern.\n/image {prompt}\n/state push items {{\"name\": \"lantern\"}}\n\
         /image  \n/image the same crypt from above"
    );
    let resp = app.submit("bob", &session, &text).await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text);
    let turn_id = resp.body["turn_id"].as_str().expect("turn id").to_owned();
    let seen = ws
        .collect_until(Duration::from_secs(30), |events| {
            events.iter().filter(|e| e["type"] == "media.ready").count() == 2
        })
        .await;
    let of = |kind: &str| -> Vec<&Value> { seen.iter().filter(|e| e["type"] == kind).collect() };
    let completed = of("turn.completed");
    assert_eq!(completed.len(), 1);
    assert!(
        completed[0]["data"]["output"]
            .as_str()
            .is_some_and(|o| o.contains("shows you 2 images")),
        "{}",
        completed[0]
    );
    let requested = of("media.requested");
    assert_eq!(requested.len(), 2, "the blank /image line asks for nothing");
    assert_eq!(requested[0]["data"]["prompt"], prompt);
    assert_eq!(requested[1]["data"]["prompt"], "the same crypt from above");
    for event in &requested {
        assert_eq!(event["data"]["turn_id"], turn_id.as_str());
        assert_eq!(event["data"]["kind"], "image");
        assert_eq!(event["data"]["by"], "bob");
        // Recorded with the reply: right after it, in the same commit.
        assert!(event["seq"].as_i64() > completed[0]["seq"].as_i64());
    }
    // The state change of the same reply applied too.
    let state = app
        .get("bob", &format!("/api/sessions/{session}/state"))
        .await;
    assert_eq!(state.body["state"]["items"], json!([{"name": "lantern"}]));

    let first = requested[0]["data"]["media_id"].as_str().expect("id");
    let ready = of("media.ready")
        .into_iter()
        .find(|e| e["data"]["media_id"] == first)
        .expect("ready");
    assert_eq!(ready["data"]["turn_id"], turn_id.as_str());
    let (status, ty, bytes) =
        bytes_of(&app, "bob", ready["data"]["url"].as_str().expect("url")).await;
    assert_eq!((status, ty.as_str()), (StatusCode::OK, "image/png"));
    assert_eq!(bytes, builtin::picture(prompt, 512, 512).expect("picture"));
    let list = app
        .get("bob", &format!("/api/sessions/{session}/media?kind=image"))
        .await;
    let items = list.body["media"].as_array().expect("media");
    assert_eq!(items.len(), 2, "{}", list.text);
    assert!(
        items.iter().all(|i| i["source"] == "generated"
            && i["status"] == "ready"
            && i["created_by"] == "bob")
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_openai_game_master_shows_an_image_through_its_tool() {
    use crate::fake_llm::{FakeLlm, Reply};
    let fake = FakeLlm::start(|_, _| {
        Reply::Deltas(vec![
            json!({"role": "assistant", "content": "The gate creaks open. "}),
            json!({"tool_calls": [{"index": 0, "id": "call_i", "type": "function",
                   "function": {"name": "show_image", "arguments": "{\"prompt\": \"a rusted"}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": " gate at dusk\"}"}}]}),
        ])
    })
    .await;
    let dir = std::env::temp_dir().join(format!("qb-gen-{}", uuid::Uuid::new_v4().simple()));
    let path = dir.to_string_lossy().into_owned();
    let base = fake.base_url.clone();
    let configure = move |c: &mut questboard::config::Config| {
        c.storage_url = path.clone();
        c.llm_provider = questboard::config::LlmProvider::Openai;
        c.llm_base_url = base.clone();
        c.llm_model = "gm-test".into();
    };
    let app = TestApp::spawn_with(configure.clone()).await;
    let _worker = app.worker(configure).await;
    let session = app.ai_gm_session("alice", &["bob"]).await;
    let mut ws = app.ws("bob", &session, Some(0)).await.expect("socket");
    app.submit("bob", &session, "I push the gate").await;
    let seen = ws
        .collect_until(Duration::from_secs(30), |events| {
            events.iter().any(|e| e["type"] == "media.ready")
        })
        .await;
    let completed = seen
        .iter()
        .find(|e| e["type"] == "turn.completed")
        .expect("completed");
    assert_eq!(completed["data"]["output"], "The gate creaks open. ");
    let requested = seen
        .iter()
        .find(|e| e["type"] == "media.requested")
        .expect("requested");
    assert_eq!(requested["data"]["prompt"], "a rusted gate at dusk");
    let ready = seen
        .iter()
        .find(|e| e["type"] == "media.ready")
        .expect("ready");
    let (status, _, bytes) =
        bytes_of(&app, "bob", ready["data"]["url"].as_str().expect("url")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        bytes,
        builtin::picture("a rusted gate at dusk", 512, 512).expect("picture")
    );
    let requests = fake.requests();
    assert_eq!(requests.len(), 1, "text and a call: one request");
    let tools: Vec<&str> = requests[0].body["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    assert_eq!(tools, ["update_game_state", "show_image"]);
    let _ = std::fs::remove_dir_all(dir);
}

/// A fake OpenAI-compatible media server: what it answers, and what it got.
#[derive(Clone, Default)]
struct FakeMedia {
    requests: Arc<Mutex<Vec<(String, Value, Instant)>>>,
}

async fn images(State(fake): State<FakeMedia>, axum::Json(body): axum::Json<Value>) -> Response {
    let n = {
        let mut seen = fake.requests.lock().expect("lock");
        seen.push(("images".into(), body.clone(), Instant::now()));
        seen.iter()
            .filter(|(p, b, _)| p == "images" && b["prompt"] == body["prompt"])
            .count()
    };
    let prompt = body["prompt"].as_str().unwrap_or_default();
    if prompt.contains("busy") && n == 1 {
        return (
            AxumStatus::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            "slow down",
        )
            .into_response();
    }
    let bytes = if prompt.contains("broken") {
        b"<html>not an image</html>".to_vec()
    } else {
        builtin::picture(prompt, 32, 32).expect("picture")
    };
    axum::Json(json!({
        "created": 1,
        "data": [{ "b64_json": base64::engine::general_purpose::STANDARD.encode(bytes) }]
    }))
    .into_response()
}

async fn speech(State(fake): State<FakeMedia>, axum::Json(body): axum::Json<Value>) -> Response {
    fake.requests
        .lock()
        .expect("lock")
        .push(("speech".into(), body.clone(), Instant::now()));
    (
        [("content-type", "audio/wav")],
        builtin::tones(body["input"].as_str().unwrap_or_default()),
    )
        .into_response()
}

#[tokio::test]
async fn an_openai_compatible_server_is_asked_retried_and_checked() {
    let fake = FakeMedia::default();
    let router = Router::new()
        .route("/v1/images/generations", post(images))
        .route("/v1/audio/speech", post(speech))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}/v1", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let (app, dir) = app_on_disk().await;
    // On purpose: a provider's reply that is not an image fails its job for good.
    app.db.expect_failed_jobs();
    let _worker = app
        .worker(|c| {
            c.media_provider = questboard::config::MediaProviderKind::Openai;
            c.media_base_url = Some(base.clone());
            c.media_api_key = Some(questboard::config::Secret::new("sk-test"));
            c.media_image_model = "gpt-image-1".into();
        })
        .await;
    let session = app.ai_gm_session("alice", &["bob"]).await;
    let mut ws = app.ws("alice", &session, Some(0)).await.expect("socket");

    // 429 with Retry-After: 1, then the image.
    let resp = ask(
        &app,
        "bob",
        &session,
        json!({"type": "image", "prompt": "a busy market", "size": "512x512"}),
        None,
    )
    .await;
    let busy = resp.body["media_id"].as_str().expect("id").to_owned();
    let ready = outcome(&mut ws, &busy, Duration::from_secs(30)).await;
    assert_eq!(ready["type"], "media.ready", "{ready}");
    let (_, ty, bytes) = bytes_of(&app, "bob", ready["data"]["url"].as_str().expect("url")).await;
    assert_eq!(ty, "image/png");
    assert_eq!(
        bytes,
        builtin::picture("a busy market", 32, 32).expect("picture")
    );
    {
        let seen = fake.requests.lock().expect("lock");
        let asked: Vec<&(String, Value, Instant)> =
            seen.iter().filter(|(p, _, _)| p == "images").collect();
        assert_eq!(asked.len(), 2, "one 429, one success");
        assert_eq!(
            asked[0].1,
            json!({"model": "gpt-image-1", "prompt": "a busy market", "size": "512x512", "n": 1, "response_format": "b64_json"})
        );
        assert!(
            asked[1].2 - asked[0].2 >= Duration::from_secs(1),
            "Retry-After honoured"
        );
    }

    // Narration: the body is the audio.
    let resp = ask(
        &app,
        "bob",
        &session,
        json!({"type": "audio", "prompt": "Roll for initiative.", "voice": "onyx"}),
        None,
    )
    .await;
    let audio = resp.body["media_id"].as_str().expect("id").to_owned();
    let ready = outcome(&mut ws, &audio, Duration::from_secs(30)).await;
    assert_eq!(ready["type"], "media.ready", "{ready}");
    let (_, ty, bytes) = bytes_of(&app, "bob", ready["data"]["url"].as_str().expect("url")).await;
    assert_eq!(
        (ty.as_str(), bytes),
        ("audio/wav", builtin::tones("Roll for initiative."))
    );
    let speech_body = fake
        .requests
        .lock()
        .expect("lock")
        .iter()
        .find(|(p, _, _)| p == "speech")
        .map(|(_, b, _)| b.clone())
        .expect("speech asked");
    assert_eq!(speech_body["input"], "Roll for initiative.");
    assert_eq!(speech_body["voice"], "onyx");

    // A reply that is not an image: failed, said on the socket, nothing stored.
    let resp = ask(
        &app,
        "bob",
        &session,
        json!({"type": "image", "prompt": "a broken mirror"}),
        None,
    )
    .await;
    let broken = resp.body["media_id"].as_str().expect("id").to_owned();
    let failed = outcome(&mut ws, &broken, Duration::from_secs(30)).await;
    assert_eq!(failed["type"], "media.failed", "{failed}");
    assert_eq!(
        failed["data"]["reason"],
        "the provider's reply is not a valid image"
    );
    let item = app
        .get("bob", &format!("/api/sessions/{session}/media/{broken}"))
        .await;
    assert_eq!(item.body["status"], "failed");
    assert!(item.body["url"].is_null());
    // The job settles just after the event: failed for good, not retried.
    let job_id = resp.body["job_id"].as_str().expect("job").to_owned();
    let job = app
        .wait_job(&job_id, "the media job to fail", |j| {
            j["status"] != "running" && j["status"] != "queued"
        })
        .await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(
        job["attempts"], 1,
        "a reply that is not an image is not retried: {job}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_generated_image_is_stored_on_s3_and_served_from_there() {
    let storage = crate::helpers::s3_test_storage("tenant").await;
    let (endpoint, bucket) = crate::helpers::s3_location(&storage);
    let app = TestApp::spawn_with_storage(storage.clone(), |_| {}).await;
    // The worker is a `questboard work` process on the same bucket.
    let mut worker = std::process::Command::new(env!("CARGO_BIN_EXE_questboard"))
        .arg("work")
        .env("DATABASE_URL", &app.db.url)
        .env("REDIS_URL", crate::helpers::redis_url())
        .env("QB_METRICS_ADDR", "127.0.0.1:0")
        .env("QB_WORKER_KINDS", "media")
        .env("QB_WORKER_POLL_MS", "50")
        .env("QB_STORAGE_URL", format!("s3://{bucket}/tenant"))
        .env("AWS_ENDPOINT", &endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("questboard work");
    let session = app.ai_gm_session("alice", &["bob"]).await;
    let mut ws = app.ws("bob", &session, Some(0)).await.expect("socket");
    let prompt = "a lighthouse in a storm";
    let resp = ask(
        &app,
        "bob",
        &session,
        json!({"type": "image", "prompt": prompt, "size": "96x64"}),
        None,
    )
    .await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text);
    let media_id = resp.body["media_id"].as_str().expect("id").to_owned();
    let ready = outcome(&mut ws, &media_id, Duration::from_secs(30)).await;
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(ready["type"], "media.ready", "{ready}");
    let url = ready["data"]["url"].as_str().expect("url");
    let (status, ty, bytes) = bytes_of(&app, "alice", url).await;
    assert_eq!((status, ty.as_str()), (StatusCode::OK, "image/png"));
    let expected = builtin::picture(prompt, 96, 64).expect("picture");
    assert_eq!(bytes, expected);
    // The object is in the bucket, under the session's prefix.
    let key = format!("sessions/{session}/media/images/{media_id}.png");
    assert_eq!(
        storage.get_object(&key).await.expect("object").as_ref(),
        expected.as_slice()
    );
    let (status, _, _) = bytes_of(&app, "mallory", url).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
