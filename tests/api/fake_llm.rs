//! A local OpenAI-compatible chat-completions server for tests, speaking the
//! real wire protocol: `POST /v1/chat/completions` with `stream: true`
//! answered by `text/event-stream` chunks and `data: [DONE]`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt as _;
use serde_json::{Value, json};

/// What the fake answers to one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Stream these chunks, then `[DONE]`.
    Stream(Vec<String>),
    /// Stream these raw `delta` objects (text, `tool_calls` fragments),
    /// finishing with `tool_calls` if any carried one, else `stop`.
    Deltas(Vec<Value>),
    /// Answer with this status (and `Retry-After` seconds, if given).
    Status(u16, Option<u64>),
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: Instant,
    pub authorization: Option<String>,
    pub body: Value,
}

type Behaviour = dyn Fn(&Value, usize) -> Reply + Send + Sync;

#[derive(Clone)]
struct Fake {
    behaviour: Arc<Behaviour>,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

/// A running fake.
pub struct FakeLlm {
    /// Base URL to configure as `QB_LLM_BASE_URL`.
    pub base_url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl FakeLlm {
    /// Starts a fake whose reply to the n-th request (from 0) with body
    /// `request` is `behaviour(request, n)`.
    pub async fn start(
        behaviour: impl Fn(&Value, usize) -> Reply + Send + Sync + 'static,
    ) -> FakeLlm {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let fake = Fake {
            behaviour: Arc::new(behaviour),
            requests: requests.clone(),
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(complete))
            .with_state(fake);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeLlm {
            base_url: format!("http://{addr}/v1"),
            requests,
        }
    }

    /// Requests received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("lock").clone()
    }

    /// The last user message of a request.
    pub fn last_user_message(body: &Value) -> String {
        body["messages"]
            .as_array()
            .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_owned()
    }
}

async fn complete(State(fake): State<Fake>, headers: HeaderMap, body: String) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let n = {
        let mut requests = fake.requests.lock().expect("lock");
        requests.push(Recorded {
            at: Instant::now(),
            authorization: headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(String::from),
            body: body.clone(),
        });
        requests.len() - 1
    };
    if body["stream"] != true || body["model"].as_str().is_none() {
        return (
            StatusCode::BAD_REQUEST,
            "expected a streaming chat completion",
        )
            .into_response();
    }
    match (fake.behaviour)(&body, n) {
        Reply::Status(code, retry_after) => {
            let mut response = (
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                axum::Json(json!({ "error": { "message": "fake failure with secret details sk-should-not-leak" } })),
            )
                .into_response();
            if let Some(secs) = retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", secs.to_string().parse().expect("header"));
            }
            response
        }
        reply @ (Reply::Stream(_) | Reply::Deltas(_)) => {
            let (deltas, finish) = match reply {
                Reply::Stream(chunks) => (
                    chunks
                        .into_iter()
                        .map(|c| json!({ "content": c }))
                        .collect(),
                    "stop",
                ),
                Reply::Deltas(deltas) => {
                    let calls = deltas.iter().any(|d| d.get("tool_calls").is_some());
                    (deltas, if calls { "tool_calls" } else { "stop" })
                }
                Reply::Status(..) => unreachable!(),
            };
            let mut events = vec![
                ": keep-alive\n\n".to_owned(),
                format!(
                    "data: {}\n\n",
                    json!({
                        "id": "chatcmpl-fake", "object": "chat.completion.chunk",
                        "choices": [{ "index": 0, "delta": { "role": "assistant" }, "finish_reason": null }]
                    })
                ),
            ];
            for delta in deltas {
                events.push(format!(
                    "data: {}\n\n",
                    json!({
                        "id": "chatcmpl-fake", "object": "chat.completion.chunk",
                        "choices": [{ "index": 0, "delta": delta, "finish_reason": null }]
                    })
                ));
            }
            events.push(format!(
                "data: {}\n\n",
                json!({
                    "id": "chatcmpl-fake", "object": "chat.completion.chunk",
                    "choices": [{ "index": 0, "delta": {}, "finish_reason": finish }]
                })
            ));
            events.push("data: [DONE]\n\n".to_owned());
            // Sent one event at a time with a pause, so the client really streams.
            let stream = futures::stream::iter(events).then(|event| async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok::<_, std::io::Error>(bytes::Bytes::from(event))
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(stream))
                .expect("response")
        }
    }
}
