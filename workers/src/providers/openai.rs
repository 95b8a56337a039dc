//! Any OpenAI-compatible chat-completions server (OpenAI, Ollama, vLLM,
//! llama.cpp's server), streamed.
//!
//! `POST {base_url}/chat/completions` with `"stream": true` and
//! `max_tokens` (`QB_LLM_MAX_TOKENS`, always sent: a reply is bounded); the reply
//! arrives as server-sent events (`data: {json}` lines, `choices[0].delta
//! .content` carrying text, `data: [DONE]` at the end), asking for the
//! token counts (`stream_options: {"include_usage": true}`: a last chunk
//! carries `usage`, which becomes the reply's [`Reply::usage`], summed over
//! both requests of a tool round; a server that sends none, as
//! llama-cpp-python's does in a stream, is charged questboard's estimate,
//! marked `estimated`). HTTP 429 and 5xx,
//! timeouts and dropped connections are retryable (honouring `Retry-After`);
//! other 4xx are fatal. Response bodies are logged for operators but never
//! put into the error a player sees.
//!
//! The game master may change the game state with its reply: the request
//! offers one tool (function calling, the chat-completions `tools` wire
//! format), `update_game_state` with an `operations` array. Its calls stream
//! as `choices[0].delta.tool_calls` fragments (an `index`, then the id and
//! name, then the JSON `arguments` a piece at a time), which are put back
//! together here. A model that calls the tool without saying anything is
//! answered as the protocol wants, with the assistant's `tool_calls`
//! message (its `content` an empty text: the common servers accept that,
//! while llama-cpp-python's answers `null` with 500) and a `tool` result, and asked once more, with `tool_choice:
//! "none"`, for the narration. The operations become the reply's
//! [`Proposal`]; arguments that are not the JSON asked for, or a call to a
//! tool that was not offered, become a proposal refused with why. A second
//! tool, `show_image` with a `prompt`, asks for an image to show with the
//! reply ([`Reply::images`]; calls without a usable prompt are dropped).
//! Servers that reject `tools` can be told not to get them
//! (`QB_LLM_TOOLS=false`).
//!
//! Failures are classified by whether asking again could help. A stream
//! that ends without a single chunk while tools were offered is a server
//! that cannot stream tool calls (llama-cpp-python's function-calling chat
//! format answers 200 and closes): the same round is asked again at once
//! without streaming, on a new connection (that server resets the one that
//! carried the empty stream), and from then on this process asks tool
//! rounds that way (the reply then arrives in one piece). A stream that ends with
//! nothing without tools, an empty reply (with tools offered, asked once
//! more with `tool_choice: "none"` first), a 400 or 422 (a context-length
//! refusal named as such) are certain to repeat: the turn fails at once
//! instead of spending its attempts. Every refusal is logged with the
//! provider's status and the start of its body.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt as _, StreamExt as _};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::Deserialize;

use questboard_core::state::Proposal;
use serde_json::{Value, json};

use super::{
    ChunkSink, ModelProvider, Prompt, ProviderError, Reply, TokenUsage, estimate_message,
    estimate_tokens,
};

/// The state tool's name.
pub const STATE_TOOL: &str = "update_game_state";

/// The image tool's name.
pub const IMAGE_TOOL: &str = "show_image";

/// Settings of an OpenAI-compatible provider.
#[derive(Clone)]
pub struct OpenAiSettings {
    /// The endpoint's name in usage, metrics and limits (`openai` for the
    /// primary, the configured name for a fallback).
    pub name: &'static str,
    /// Base URL, e.g. `https://api.openai.com/v1` or `http://127.0.0.1:11434/v1`.
    pub base_url: String,
    /// Model name.
    pub model: String,
    /// Bearer key, if the server needs one.
    pub api_key: Option<String>,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Offer the model the `update_game_state` tool.
    pub tools: bool,
    /// `max_tokens` of every request: the longest reply asked for.
    pub max_tokens: u32,
}

impl std::fmt::Debug for OpenAiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiSettings")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("timeout", &self.timeout)
            .field("tools", &self.tools)
            .field("max_tokens", &self.max_tokens)
            .finish()
    }
}

/// The provider.
#[derive(Debug)]
pub struct OpenAi {
    settings: OpenAiSettings,
    client: reqwest::Client,
    url: String,
    /// A client that keeps no connection open: for the request after an
    /// empty stream, whose connection the server may have dropped.
    unpooled: reqwest::Client,
    /// The server answered a streamed request offering tools with an empty
    /// stream: tool rounds are asked without streaming from then on.
    tools_unstreamed: AtomicBool,
}

/// Which connection a request goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connection {
    /// One kept open from an earlier request, or a new one.
    Pooled,
    /// A new one: llama-cpp-python's server resets the connection that
    /// carried its empty answer to a streamed tool request, and a request
    /// sent on it at once fails with "connection reset".
    Fresh,
}

impl OpenAi {
    /// A client for `settings`.
    pub fn new(settings: OpenAiSettings) -> Result<Self, String> {
        let builder = || {
            reqwest::Client::builder()
                .timeout(settings.timeout)
                .connect_timeout(Duration::from_secs(10))
        };
        let client = builder()
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        let unpooled = builder()
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        let url = format!(
            "{}/chat/completions",
            settings.base_url.trim_end_matches('/')
        );
        Ok(Self {
            settings,
            client,
            unpooled,
            url,
            tools_unstreamed: AtomicBool::new(false),
        })
    }

    /// Asks for the reply: one request, or two when the model only called
    /// the tool the first time.
    async fn reply(
        &self,
        prompt: &Prompt,
        sink: &mut dyn ChunkSink,
    ) -> Result<Reply, ProviderError> {
        let mut messages: Vec<Value> = prompt
            .messages
            .iter()
            .map(|m| json!({ "role": m.role, "content": m.content }))
            .collect();
        let mut index = 0u32;
        let first = self.round(&messages, true, sink, &mut index).await?;
        let first_cost = cost(&messages, &first);
        if first.calls.is_empty() && first.text.trim().is_empty() {
            if !self.settings.tools {
                // Asked the same, a model answers the same.
                return Err(empty_reply());
            }
            // Offered the tools, the model said nothing and called nothing
            // (SmolLM2 under llama-cpp-python's function-calling format
            // does): the request is changed, not repeated; asked once
            // more with `tool_choice: "none"`, it has to speak.
            let words = self.round(&messages, false, sink, &mut index).await?;
            if words.text.trim().is_empty() {
                return Err(empty_reply());
            }
            let words_cost = cost(&messages, &words);
            return Ok(Reply {
                state: None,
                images: Vec::new(),
                usage: Some(self.usage([first_cost, words_cost])),
                // The first round's blanks were streamed: the reply is what
                // the chunks spell.
                text: first.text + &words.text,
            });
        }
        if first.calls.is_empty() || !first.text.trim().is_empty() {
            return Ok(Reply {
                state: proposal(&first.calls),
                images: images(&first.calls),
                usage: Some(self.usage([first_cost])),
                text: first.text,
            });
        }
        // Only the tool was called: answer it and ask for the words. The
        // call goes back with an empty text, not `null`, which some
        // servers (llama-cpp-python's) answer with 500.
        messages.push(json!({
            "role": "assistant",
            "content": "",
            "tool_calls": first.calls.iter().map(|c| json!({
                "id": c.id, "type": "function",
                "function": { "name": c.name, "arguments": c.arguments },
            })).collect::<Vec<_>>(),
        }));
        for call in &first.calls {
            messages.push(json!({
                "role": "tool",
                "tool_call_id": call.id,
                "content": "{\"status\": \"received; checked and applied with your reply\"}",
            }));
        }
        let second = self.round(&messages, false, sink, &mut index).await?;
        let second_cost = cost(&messages, &second);
        let mut calls = first.calls;
        calls.extend(second.calls);
        Ok(Reply {
            state: proposal(&calls),
            images: images(&calls),
            usage: Some(self.usage([first_cost, second_cost])),
            // Blanks the first round streamed with its call come first, as
            // the chunks do.
            text: first.text + &second.text,
        })
    }

    /// The reply's usage: the sum of its requests' costs.
    fn usage<const N: usize>(&self, rounds: [Cost; N]) -> TokenUsage {
        let mut sum = TokenUsage {
            provider: self.settings.name.into(),
            model: self.settings.model.clone(),
            prompt_tokens: 0,
            completion_tokens: 0,
            limiter_wait_ms: 0,
            estimated: false,
        };
        for round in rounds {
            sum.prompt_tokens += round.counted.prompt_tokens;
            sum.completion_tokens += round.counted.completion_tokens;
            sum.estimated |= round.estimated;
        }
        sum
    }

    /// One request of a reply: streamed, unless tool rounds must not be
    /// (see the module's notes on classification).
    async fn round(
        &self,
        messages: &[Value],
        may_call: bool,
        sink: &mut dyn ChunkSink,
        index: &mut u32,
    ) -> Result<Round, ProviderError> {
        let tools = self.settings.tools && may_call;
        if tools && self.tools_unstreamed.load(Ordering::Relaxed) {
            return self
                .whole(messages, may_call, sink, index, Connection::Pooled)
                .await;
        }
        match self.stream(messages, may_call, sink, index).await? {
            Streamed::Round(round) => Ok(round),
            Streamed::Nothing if tools => {
                if !self.tools_unstreamed.swap(true, Ordering::Relaxed) {
                    tracing::warn!(model = %self.settings.model,
                        "the model provider answered a streamed request offering tools with an \
                         empty stream; tool rounds are asked without streaming from now on");
                }
                self.whole(messages, may_call, sink, index, Connection::Fresh)
                    .await
            }
            Streamed::Nothing => Err(ProviderError::Fatal {
                reason: "the model provider ended the stream without sending anything".into(),
            }),
        }
    }

    /// The request body of a round.
    fn body(&self, messages: &[Value], may_call: bool, stream: bool) -> Value {
        let mut body = json!({
            "model": self.settings.model,
            "messages": messages,
            "max_tokens": self.settings.max_tokens,
        });
        if stream {
            body["stream"] = json!(true);
            body["stream_options"] = json!({ "include_usage": true });
        }
        if self.settings.tools {
            body["tools"] = json!([state_tool(), image_tool()]);
            body["tool_choice"] = json!(if may_call { "auto" } else { "none" });
        }
        body
    }

    /// Sends `body`; a refusal becomes the error it is classified as.
    async fn send(
        &self,
        body: &Value,
        connection: Connection,
    ) -> Result<reqwest::Response, ProviderError> {
        let client = match connection {
            Connection::Pooled => &self.client,
            Connection::Fresh => &self.unpooled,
        };
        let mut request = client.post(&self.url).json(body);
        if let Some(key) = &self.settings.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = retry_after(response.headers());
        let detail: String = response
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .take(500)
            .collect();
        tracing::warn!(%status, detail, model = %self.settings.model,
            "model provider refused the request");
        Err(refusal(status, retry_after, &detail))
    }

    /// One round without streaming: the reply's text arrives as one chunk.
    async fn whole(
        &self,
        messages: &[Value],
        may_call: bool,
        sink: &mut dyn ChunkSink,
        index: &mut u32,
        connection: Connection,
    ) -> Result<Round, ProviderError> {
        let response = self
            .send(&self.body(messages, may_call, false), connection)
            .await?;
        let bytes = response.bytes().await.map_err(transport_error)?;
        let completion: Completion =
            serde_json::from_slice(&bytes).map_err(|_| ProviderError::Retryable {
                reason: "the model provider sent a malformed reply".into(),
                retry_after: None,
            })?;
        let mut round = Round {
            usage: completion.usage,
            ..Round::default()
        };
        if let Some(choice) = completion.choices.into_iter().next() {
            let text = choice.message.content.unwrap_or_default();
            if !text.is_empty() {
                sink.chunk(*index, &text);
                *index += 1;
                round.text = text;
            }
            for (i, call) in choice.message.tool_calls.into_iter().enumerate() {
                round.add(CallFragment {
                    index: i as u64,
                    id: call.id,
                    function: call.function,
                });
            }
        }
        Ok(round)
    }

    async fn stream(
        &self,
        messages: &[Value],
        may_call: bool,
        sink: &mut dyn ChunkSink,
        index: &mut u32,
    ) -> Result<Streamed, ProviderError> {
        let response = self
            .send(&self.body(messages, may_call, true), Connection::Pooled)
            .await?;
        let mut round = Round::default();
        let mut saw_data = false;
        let mut buffer: Vec<u8> = Vec::new();
        let mut body = response.bytes_stream();
        while let Some(bytes) = body.next().await {
            buffer.extend_from_slice(&bytes.map_err(transport_error)?);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let event = parse_line(line.trim_end_matches(['\r', '\n']))?;
                saw_data |= !matches!(event, Event::Nothing);
                match event {
                    Event::Delta { text, calls, usage } => {
                        if usage.is_some() {
                            round.usage = usage;
                        }
                        if !text.is_empty() {
                            sink.chunk(*index, &text);
                            *index += 1;
                            round.text.push_str(&text);
                        }
                        for fragment in calls {
                            round.add(fragment);
                        }
                    }
                    Event::Done => return Ok(Streamed::Round(round)),
                    Event::Nothing => {}
                }
            }
        }
        if !saw_data {
            return Ok(Streamed::Nothing);
        }
        Err(ProviderError::Retryable {
            reason: "the model provider closed the stream before it finished".into(),
            retry_after: None,
        })
    }
}

impl ModelProvider for OpenAi {
    fn name(&self) -> &'static str {
        self.settings.name
    }

    fn model(&self) -> &str {
        &self.settings.model
    }

    fn sees_state(&self) -> bool {
        self.settings.tools
    }

    fn complete<'a>(
        &'a self,
        prompt: &'a Prompt,
        sink: &'a mut dyn ChunkSink,
    ) -> BoxFuture<'a, Result<Reply, ProviderError>> {
        self.reply(prompt, sink).boxed()
    }
}

/// The tool offered to the model, in the chat-completions `tools` format.
fn state_tool() -> Value {
    json!({
        "type": "function",
        "function": {
            "name": STATE_TOOL,
            "description": "Change the session's game state (characters, actors, items, \
                currentEncounter, pluginData) together with your reply. Operations apply in \
                order, all or none, at dotted paths such as `characters.0.hitPoints` \
                (numbers index arrays): set (creates missing objects), unset, inc (numbers), \
                push (appends one element), pull (removes elements equal to the value).",
            "parameters": {
                "type": "object",
                "properties": {
                    "operations": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "path": { "type": "string" },
                                "operation": {
                                    "type": "string",
                                    "enum": ["set", "unset", "inc", "push", "pull"]
                                },
                                "value": {}
                            },
                            "required": ["path", "operation"]
                        }
                    }
                },
                "required": ["operations"]
            }
        }
    })
}

/// The image tool offered to the model.
fn image_tool() -> Value {
    json!({
        "type": "function",
        "function": {
            "name": IMAGE_TOOL,
            "description": "Show the players an image of the scene with your reply: describe \
                it in `prompt` (what is seen, the mood, the light). Use it sparingly, for \
                moments worth a picture.",
            "parameters": {
                "type": "object",
                "properties": { "prompt": { "type": "string" } },
                "required": ["prompt"]
            }
        }
    })
}

/// The prompts of the `show_image` calls among `calls`, in order; calls
/// whose arguments are not `{"prompt": "..."}` are dropped.
fn images(calls: &[Call]) -> Vec<String> {
    #[derive(Deserialize)]
    struct Arguments {
        prompt: String,
    }
    calls
        .iter()
        .filter(|c| c.name == IMAGE_TOOL)
        .filter_map(|c| match serde_json::from_str::<Arguments>(&c.arguments) {
            Ok(args) if !args.prompt.trim().is_empty() => Some(args.prompt.trim().to_owned()),
            _ => {
                tracing::info!("the model's {IMAGE_TOOL} call had no usable prompt; dropped");
                None
            }
        })
        .collect()
}

/// How a streamed round ended.
enum Streamed {
    /// With `[DONE]`.
    Round(Round),
    /// Without a single chunk: the server would not stream this request.
    Nothing,
}

fn empty_reply() -> ProviderError {
    ProviderError::Fatal {
        reason: "the model answered with an empty reply".into(),
    }
}

/// A non-streamed chat completion.
#[derive(Deserialize)]
struct Completion {
    #[serde(default)]
    choices: Vec<WholeChoice>,
    usage: Option<Counted>,
}

#[derive(Deserialize)]
struct WholeChoice {
    message: WholeMessage,
}

#[derive(Deserialize)]
struct WholeMessage {
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<WholeCall>,
}

#[derive(Deserialize)]
struct WholeCall {
    id: Option<String>,
    function: Option<FunctionFragment>,
}

/// One tool call, put back together from its fragments.
#[derive(Debug, Default, Clone, PartialEq)]
struct Call {
    id: String,
    name: String,
    arguments: String,
}

/// What one streamed response said.
#[derive(Debug, Default)]
struct Round {
    text: String,
    /// By the call's `index` in the stream.
    calls: Vec<Call>,
    indexes: Vec<u64>,
    /// The token counts it reported (its last `usage`).
    usage: Option<Counted>,
}

impl Round {
    fn add(&mut self, fragment: CallFragment) {
        let at = match self.indexes.iter().position(|i| *i == fragment.index) {
            Some(at) => at,
            None => {
                self.indexes.push(fragment.index);
                self.calls.push(Call::default());
                self.calls.len() - 1
            }
        };
        let call = &mut self.calls[at];
        if let Some(id) = fragment.id {
            call.id = id;
        }
        if let Some(function) = fragment.function {
            if let Some(name) = function.name {
                call.name.push_str(&name);
            }
            if let Some(arguments) = function.arguments {
                call.arguments.push_str(&arguments);
            }
        }
    }
}

/// The state change the tool `calls` ask for, in order; None if there were
/// none. One unreadable call makes the whole proposal refused: applying
/// the rest of what the model meant would be a guess.
fn proposal(calls: &[Call]) -> Option<Proposal> {
    let calls: Vec<&Call> = calls.iter().filter(|c| c.name != IMAGE_TOOL).collect();
    if calls.is_empty() {
        return None;
    }
    let mut operations = Vec::new();
    for call in calls {
        if call.name != STATE_TOOL {
            let name: String = call.name.chars().take(64).collect();
            return Some(Proposal::Unreadable(format!(
                "the model called a tool that was not offered: `{name}`"
            )));
        }
        #[derive(Deserialize)]
        struct Arguments {
            operations: Vec<Value>,
        }
        match serde_json::from_str::<Arguments>(&call.arguments) {
            Ok(args) => operations.extend(args.operations),
            Err(_) => {
                return Some(Proposal::Unreadable(format!(
                    "the arguments of the model's {STATE_TOOL} call were not a JSON object \
                     with an `operations` array"
                )));
            }
        }
    }
    Some(Proposal::Operations(operations))
}

enum Event {
    Delta {
        text: String,
        calls: Vec<CallFragment>,
        usage: Option<Counted>,
    },
    Done,
    Nothing,
}

#[derive(Deserialize)]
struct StreamChunk {
    #[serde(default)]
    choices: Vec<Choice>,
    error: Option<serde_json::Value>,
    usage: Option<Counted>,
}

/// A response's `usage` (other fields, such as `total_tokens`, ignored).
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
struct Counted {
    #[serde(default)]
    prompt_tokens: i64,
    #[serde(default)]
    completion_tokens: i64,
}

/// What one request of a reply cost.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cost {
    counted: Counted,
    /// The server reported nothing (llama-cpp-python's ignores
    /// `stream_options` and streams no usage): `counted` is questboard's
    /// estimate of the messages sent and the reply received, so budgets
    /// and limits still see the request.
    estimated: bool,
}

/// What a request of `messages` answered by `round` cost: the server's
/// count, or the estimate when it sent none.
fn cost(messages: &[Value], round: &Round) -> Cost {
    if let Some(counted) = round.usage {
        return Cost {
            counted,
            estimated: false,
        };
    }
    let prompt: u64 = messages
        .iter()
        .map(|m| estimate_message(m["content"].as_str().unwrap_or_default()))
        .sum();
    let completion = estimate_tokens(&round.text)
        + round
            .calls
            .iter()
            .map(|c| estimate_tokens(&c.name) + estimate_tokens(&c.arguments))
            .sum::<u64>();
    Cost {
        counted: Counted {
            prompt_tokens: i64::try_from(prompt).unwrap_or(i64::MAX),
            completion_tokens: i64::try_from(completion).unwrap_or(i64::MAX),
        },
        estimated: true,
    }
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Delta,
}

#[derive(Deserialize, Default)]
struct Delta {
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<CallFragment>,
}

#[derive(Deserialize, Debug)]
struct CallFragment {
    #[serde(default)]
    index: u64,
    id: Option<String>,
    function: Option<FunctionFragment>,
}

#[derive(Deserialize, Debug)]
struct FunctionFragment {
    name: Option<String>,
    arguments: Option<String>,
}

fn parse_line(line: &str) -> Result<Event, ProviderError> {
    // Comments (`: keep-alive`), `event:`/`id:` fields and blank separators
    // carry no text.
    let Some(data) = line.strip_prefix("data:") else {
        return Ok(Event::Nothing);
    };
    let data = data.trim_start();
    if data == "[DONE]" {
        return Ok(Event::Done);
    }
    let chunk: StreamChunk = serde_json::from_str(data).map_err(|_| ProviderError::Retryable {
        reason: "the model provider sent a malformed stream".into(),
        retry_after: None,
    })?;
    if chunk.error.is_some() {
        tracing::warn!(data, "model provider reported an error mid-stream");
        return Err(ProviderError::Retryable {
            reason: "the model provider failed while streaming".into(),
            retry_after: None,
        });
    }
    let mut text = String::new();
    let mut calls = Vec::new();
    // Only the first choice is the reply (`n` is never asked for).
    if let Some(choice) = chunk.choices.into_iter().next() {
        text = choice.delta.content.unwrap_or_default();
        calls = choice.delta.tool_calls;
    }
    let usage = chunk.usage.map(|u| Counted {
        prompt_tokens: u.prompt_tokens.max(0),
        completion_tokens: u.completion_tokens.max(0),
    });
    Ok(Event::Delta { text, calls, usage })
}

pub(crate) fn transport_error(err: reqwest::Error) -> ProviderError {
    let reason = if err.is_timeout() {
        "the model provider timed out"
    } else if err.is_connect() {
        "the model provider could not be reached"
    } else {
        "the connection to the model provider failed"
    };
    tracing::warn!(error = %err, "model provider transport error");
    ProviderError::Retryable {
        reason: reason.into(),
        retry_after: None,
    }
}

/// A refused request's error: [`status_error`], with a context-length
/// refusal (a 400 whose body says so) named as such.
fn refusal(status: StatusCode, retry_after: Option<Duration>, body: &str) -> ProviderError {
    let body = body.to_ascii_lowercase();
    let context = body.contains("context")
        && ["length", "window", "exceed", "too long", "maximum"]
            .iter()
            .any(|w| body.contains(w));
    if status == StatusCode::BAD_REQUEST && context {
        return ProviderError::Fatal {
            reason: "the prompt is longer than the model's context (HTTP 400)".into(),
        };
    }
    status_error(status, retry_after)
}

pub(crate) fn status_error(status: StatusCode, retry_after: Option<Duration>) -> ProviderError {
    let slow_down =
        status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE;
    if let (true, Some(retry_after)) = (slow_down, retry_after) {
        return ProviderError::Limited {
            reason: format!("the model provider answered HTTP {}", status.as_u16()),
            retry_after,
        };
    }
    if status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
    {
        ProviderError::Retryable {
            reason: format!("the model provider answered HTTP {}", status.as_u16()),
            retry_after,
        }
    } else {
        ProviderError::Fatal {
            reason: format!(
                "the model provider rejected the request (HTTP {})",
                status.as_u16()
            ),
        }
    }
}

/// How long the provider asks callers to wait: `Retry-After` in seconds
/// (the HTTP-date form is rare for model APIs and is treated as absent),
/// else the later of OpenAI's `x-ratelimit-reset-requests` and
/// `x-ratelimit-reset-tokens` (durations such as `1s`, `6m0s`, `20ms`).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(secs) = header(RETRY_AFTER.as_str())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|secs| secs.is_finite() && *secs >= 0.0)
    {
        return Some(Duration::from_secs_f64(secs.min(3600.0)));
    }
    ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
        .into_iter()
        .filter_map(|name| header(name).and_then(go_duration))
        .max()
        .map(|d| d.min(Duration::from_secs(3600)))
}

/// A Go-style duration (`1h2m3.5s`, `20ms`, `6m0s`), as OpenAI's rate-limit
/// headers write them.
fn go_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += number * scale;
    }
    (total.is_finite() && total >= 0.0).then(|| Duration::from_secs_f64(total.min(86_400.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_the_server_did_not_count_is_charged_the_estimate() {
        let messages = [
            json!({"role": "system", "content": "12345678"}),
            json!({"role": "user", "content": "abcd"}),
        ];
        let round = Round {
            text: "twelve chars".into(),
            ..Round::default()
        };
        // (2 + 4) + (1 + 4) for the messages, 3 for the reply.
        let estimated = cost(&messages, &round);
        assert_eq!(
            (
                estimated.counted.prompt_tokens,
                estimated.counted.completion_tokens,
                estimated.estimated
            ),
            (11, 3, true)
        );
        let counted = Round {
            usage: Some(Counted {
                prompt_tokens: 40,
                completion_tokens: 9,
            }),
            ..round
        };
        let reported = cost(&messages, &counted);
        assert_eq!(
            (reported.counted.prompt_tokens, reported.estimated),
            (40, false)
        );
    }

    #[test]
    fn parses_sse_lines() {
        assert!(matches!(parse_line(": keep-alive"), Ok(Event::Nothing)));
        assert!(matches!(parse_line(""), Ok(Event::Nothing)));
        assert!(matches!(parse_line("data: [DONE]"), Ok(Event::Done)));
        match parse_line(r#"data: {"choices":[{"delta":{"content":"Hel"}}]}"#) {
            Ok(Event::Delta { text, calls, usage }) => {
                assert_eq!((text.as_str(), calls.len(), usage), ("Hel", 0, None))
            }
            _ => panic!("expected text"),
        }
        match parse_line(
            r#"data: {"choices":[],"usage":{"prompt_tokens":31,"completion_tokens":7,"total_tokens":38}}"#,
        ) {
            Ok(Event::Delta { text, usage, .. }) => assert_eq!(
                (text.as_str(), usage),
                (
                    "",
                    Some(Counted {
                        prompt_tokens: 31,
                        completion_tokens: 7
                    })
                )
            ),
            _ => panic!("expected text"),
        }
        match parse_line(r#"data:{"choices":[{"delta":{"role":"assistant"}}]}"#) {
            Ok(Event::Delta { text, .. }) => assert!(text.is_empty()),
            _ => panic!("expected empty text"),
        }
        assert!(parse_line("data: {not json").is_err());
        assert!(parse_line(r#"data: {"error":{"message":"overloaded"}}"#).is_err());
    }

    fn fragments(lines: &[&str]) -> Round {
        let mut round = Round::default();
        for line in lines {
            if let Ok(Event::Delta { calls, .. }) = parse_line(line) {
                for fragment in calls {
                    round.add(fragment);
                }
            }
        }
        round
    }

    #[test]
    fn streamed_tool_calls_are_put_back_together_in_order() {
        let round = fragments(&[
            r#"data: {"choices":[{"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"update_game_state","arguments":""}}]}}]}"#,
            r#"data: {"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"operations\": [{\"path\""}}]}}]}"#,
            r#"data: {"choices":[{"delta":{"tool_calls":[{"index":1,"id":"call_b","function":{"name":"update_game_state","arguments":"{\"operations\":[]}"}}]}}]}"#,
            r#"data: {"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":": \"items\", \"operation\": \"push\", \"value\": 1}]}"}}]}}]}"#,
        ]);
        assert_eq!(round.calls.len(), 2);
        assert_eq!(round.calls[0].id, "call_a");
        assert_eq!(
            proposal(&round.calls),
            Some(Proposal::Operations(vec![
                json!({"path": "items", "operation": "push", "value": 1})
            ]))
        );
        assert_eq!(proposal(&[]), None);
    }

    #[test]
    fn unreadable_tool_calls_become_a_refused_proposal() {
        let bad_json = Call {
            id: "c".into(),
            name: STATE_TOOL.into(),
            arguments: "{\"operations\": [".into(),
        };
        assert!(
            matches!(proposal(&[bad_json]), Some(Proposal::Unreadable(why)) if why.contains("not a JSON object"))
        );
        let other_tool = Call {
            id: "c".into(),
            name: "launch_missiles".into(),
            arguments: "{}".into(),
        };
        assert!(
            matches!(proposal(&[other_tool]), Some(Proposal::Unreadable(why)) if why.contains("launch_missiles"))
        );
    }

    #[test]
    fn image_calls_become_prompts_and_no_state_change() {
        let call = |name: &str, arguments: &str| Call {
            id: "c".into(),
            name: name.into(),
            arguments: arguments.into(),
        };
        let calls = [
            call(IMAGE_TOOL, r#"{"prompt": " a misty harbour "}"#),
            call(IMAGE_TOOL, r#"{"prompt": ""}"#),
            call(IMAGE_TOOL, "not json"),
            call(IMAGE_TOOL, r#"{"prompt": "the dragon's eye"}"#),
        ];
        assert_eq!(images(&calls), ["a misty harbour", "the dragon's eye"]);
        assert_eq!(proposal(&calls), None, "images change no state");
        let mixed = [
            call(IMAGE_TOOL, r#"{"prompt": "x"}"#),
            call(STATE_TOOL, r#"{"operations": []}"#),
        ];
        assert_eq!(proposal(&mixed), Some(Proposal::Operations(vec![])));
    }

    #[test]
    fn statuses_split_into_retryable_and_fatal() {
        assert!(matches!(
            status_error(StatusCode::TOO_MANY_REQUESTS, None),
            ProviderError::Retryable { .. }
        ));
        assert!(matches!(
            status_error(StatusCode::BAD_GATEWAY, None),
            ProviderError::Retryable { .. }
        ));
        assert!(matches!(
            status_error(StatusCode::BAD_REQUEST, None),
            ProviderError::Fatal { .. }
        ));
        assert!(matches!(
            status_error(StatusCode::UNAUTHORIZED, None),
            ProviderError::Fatal { .. }
        ));
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "2".parse().unwrap_or_else(|_| unreachable!()));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        assert!(matches!(
            status_error(StatusCode::TOO_MANY_REQUESTS, Some(Duration::from_secs(2))),
            ProviderError::Limited { .. }
        ));
        assert!(matches!(
            status_error(StatusCode::BAD_GATEWAY, Some(Duration::from_secs(2))),
            ProviderError::Retryable { .. }
        ));
        let mut openai = HeaderMap::new();
        for (name, value) in [
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-reset-tokens", "6m0.5s"),
        ] {
            openai.insert(name, value.parse().unwrap_or_else(|_| unreachable!()));
        }
        assert_eq!(retry_after(&openai), Some(Duration::from_millis(360_500)));
        assert_eq!(go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(go_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(go_duration("soon"), None);
        assert_eq!(go_duration("5"), None);
    }
}
