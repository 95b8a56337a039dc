//! A local OpenAI-compatible chat-completions server for tests, speaking the
//! real wire protocol: `POST /v1/chat/completions` with `stream: true`
//! answered by `text/event-stream` chunks and `data: [DONE]`. Asked with
//! `stream_options: {"include_usage": true}`, it ends the stream as
//! OpenAI does, with a chunk of no choices carrying `usage`: its own
//! counts (prompt: the messages' characters over 7; completion: three per
//! delta), recorded with the request so a test can compare. A request
//! without `stream: true` gets the same reply as one `chat.completion`
//! (with `usage`, as OpenAI always sends it there).

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
    /// Answer with this status and body text.
    Refuse(u16, &'static str),
    /// Answer 200 as an event stream and close it at once, sending nothing
    /// (llama-cpp-python's server with a streamed request it refuses).
    EmptyStream,
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: Instant,
    pub authorization: Option<String>,
    pub body: Value,
    /// The `usage` it answered with, (prompt, completion), if it sent one.
    pub usage: Option<(i64, i64)>,
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

    /// The configuration of a questboard whose game master is this fake
    /// (model `gm-test`, three attempts per turn).
    pub fn config(&self) -> impl FnOnce(&mut questboard::config::Config) + '_ {
        move |c| {
            c.llm_provider = questboard::config::LlmProvider::Openai;
            c.llm_base_url = self.base_url.clone();
            c.llm_model = "gm-test".into();
            c.job_max_attempts = 3;
        }
    }

    /// Requests received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("lock").clone()
    }

    /// Whether the request answers a tool call: its last message is a
    /// `tool` result (the round that asks for the narration).
    pub fn tool_answered(body: &Value) -> bool {
        body["messages"]
            .as_array()
            .is_some_and(|m| m.last().is_some_and(|m| m["role"] == "tool"))
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
            usage: None,
        });
        requests.len() - 1
    };
    if body["model"].as_str().is_none() || body["messages"].as_array().is_none() {
        return (StatusCode::BAD_REQUEST, "expected a chat completion").into_response();
    }
    let reply = (fake.behaviour)(&body, n);
    if body["stream"] != true {
        return whole(&fake, &body, n, reply);
    }
    match reply {
        Reply::Refuse(code, text) => (
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            text,
        )
            .into_response(),
        Reply::EmptyStream => Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::empty())
            .expect("response"),
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
                Reply::Status(..) | Reply::Refuse(..) | Reply::EmptyStream => unreachable!(),
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
            if body["stream_options"]["include_usage"] == true {
                let prompt = body["messages"].to_string().chars().count() as i64 / 7;
                let completion = 3 * (events.len() as i64 - 3);
                events.push(format!(
                    "data: {}\n\n",
                    json!({
                        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": [],
                        "usage": { "prompt_tokens": prompt, "completion_tokens": completion,
                                   "total_tokens": prompt + completion }
                    })
                ));
                fake.requests.lock().expect("lock")[n].usage = Some((prompt, completion));
            }
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

/// The answer to a request without `stream: true`: the reply as one
/// `chat.completion`, its deltas' text joined and their tool calls put
/// together, with `usage` (prompt: the messages' characters over 7;
/// completion: three per delta).
fn whole(fake: &Fake, body: &Value, n: usize, reply: Reply) -> Response {
    let deltas: Vec<Value> = match reply {
        Reply::Stream(chunks) => chunks
            .into_iter()
            .map(|c| json!({ "content": c }))
            .collect(),
        Reply::Deltas(deltas) => deltas,
        Reply::EmptyStream => Vec::new(),
        Reply::Status(code, _) | Reply::Refuse(code, _) => {
            return StatusCode::from_u16(code)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                .into_response();
        }
    };
    let mut content = String::new();
    let mut calls: Vec<Value> = Vec::new();
    for delta in &deltas {
        content.push_str(delta["content"].as_str().unwrap_or_default());
        for fragment in delta["tool_calls"].as_array().into_iter().flatten() {
            let at = fragment["index"].as_u64().unwrap_or(0) as usize;
            while calls.len() <= at {
                calls.push(json!({"id": "", "type": "function",
                                  "function": {"name": "", "arguments": ""}}));
            }
            let call = &mut calls[at];
            if let Some(id) = fragment["id"].as_str() {
                call["id"] = json!(id);
            }
            for field in ["name", "arguments"] {
                if let Some(piece) = fragment["function"][field].as_str() {
                    let joined =
                        format!("{}{piece}", call["function"][field].as_str().unwrap_or(""));
                    call["function"][field] = json!(joined);
                }
            }
        }
    }
    let prompt = body["messages"].to_string().chars().count() as i64 / 7;
    let completion = 3 * deltas.len() as i64;
    fake.requests.lock().expect("lock")[n].usage = Some((prompt, completion));
    let mut message = json!({ "role": "assistant", "content": content });
    if !calls.is_empty() {
        message["tool_calls"] = json!(calls);
    }
    axum::Json(json!({
        "id": "chatcmpl-fake", "object": "chat.completion",
        "choices": [{ "index": 0, "message": message,
                      "finish_reason": if calls.is_empty() { "stop" } else { "tool_calls" } }],
        "usage": { "prompt_tokens": prompt, "completion_tokens": completion,
                   "total_tokens": prompt + completion }
    }))
    .into_response()
}

/// A reply that only calls `update_game_state` with `operations`, in one
/// delta.
pub fn state_call(operations: Value) -> Reply {
    let arguments = json!({ "operations": operations }).to_string();
    Reply::Deltas(vec![json!({"role": "assistant", "tool_calls": [
        {"index": 0, "id": "call_1", "type": "function",
         "function": {"name": "update_game_state", "arguments": arguments}}]})])
}
