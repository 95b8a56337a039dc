//! Any OpenAI-compatible chat-completions server (OpenAI, Ollama, vLLM,
//! llama.cpp's server), streamed.
//!
//! `POST {base_url}/chat/completions` with `"stream": true`; the reply
//! arrives as server-sent events (`data: {json}` lines, `choices[0].delta
//! .content` carrying text, `data: [DONE]` at the end). HTTP 429 and 5xx,
//! timeouts and dropped connections are retryable (honouring `Retry-After`);
//! other 4xx are fatal. Response bodies are logged for operators but never
//! put into the error a player sees.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt as _, StreamExt as _};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::Deserialize;

use super::{ChunkSink, ModelProvider, Prompt, ProviderError};

/// Settings of an OpenAI-compatible provider.
#[derive(Clone)]
pub struct OpenAiSettings {
    /// Base URL, e.g. `https://api.openai.com/v1` or `http://127.0.0.1:11434/v1`.
    pub base_url: String,
    /// Model name.
    pub model: String,
    /// Bearer key, if the server needs one.
    pub api_key: Option<String>,
    /// Whole-request timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for OpenAiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiSettings")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The provider.
#[derive(Debug, Clone)]
pub struct OpenAi {
    settings: OpenAiSettings,
    client: reqwest::Client,
    url: String,
}

impl OpenAi {
    /// A client for `settings`.
    pub fn new(settings: OpenAiSettings) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        let url = format!(
            "{}/chat/completions",
            settings.base_url.trim_end_matches('/')
        );
        Ok(Self {
            settings,
            client,
            url,
        })
    }

    async fn stream(
        &self,
        prompt: &Prompt,
        sink: &mut dyn ChunkSink,
    ) -> Result<String, ProviderError> {
        let body = serde_json::json!({
            "model": self.settings.model,
            "messages": prompt.messages,
            "stream": true,
        });
        let mut request = self.client.post(&self.url).json(&body);
        if let Some(key) = &self.settings.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = retry_after(response.headers());
            let detail: String = response
                .text()
                .await
                .unwrap_or_default()
                .chars()
                .take(500)
                .collect();
            tracing::warn!(%status, detail, "model provider refused the request");
            return Err(status_error(status, retry_after));
        }
        let mut reply = String::new();
        let mut index = 0u32;
        let mut buffer: Vec<u8> = Vec::new();
        let mut body = response.bytes_stream();
        while let Some(bytes) = body.next().await {
            buffer.extend_from_slice(&bytes.map_err(transport_error)?);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                match parse_line(line.trim_end_matches(['\r', '\n']))? {
                    Event::Text(text) if !text.is_empty() => {
                        sink.chunk(index, &text);
                        index += 1;
                        reply.push_str(&text);
                    }
                    Event::Done => return Ok(reply),
                    Event::Text(_) | Event::Nothing => {}
                }
            }
        }
        Err(ProviderError::Retryable {
            reason: "the model provider closed the stream before it finished".into(),
            retry_after: None,
        })
    }
}

impl ModelProvider for OpenAi {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn complete<'a>(
        &'a self,
        prompt: &'a Prompt,
        sink: &'a mut dyn ChunkSink,
    ) -> BoxFuture<'a, Result<String, ProviderError>> {
        self.stream(prompt, sink).boxed()
    }
}

enum Event {
    Text(String),
    Done,
    Nothing,
}

#[derive(Deserialize)]
struct StreamChunk {
    #[serde(default)]
    choices: Vec<Choice>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Delta,
}

#[derive(Deserialize, Default)]
struct Delta {
    content: Option<String>,
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
    Ok(Event::Text(
        chunk
            .choices
            .into_iter()
            .filter_map(|c| c.delta.content)
            .collect(),
    ))
}

fn transport_error(err: reqwest::Error) -> ProviderError {
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

fn status_error(status: StatusCode, retry_after: Option<Duration>) -> ProviderError {
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

/// `Retry-After` in seconds (the HTTP-date form is rare for model APIs and
/// is treated as absent).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: f64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sse_lines() {
        assert!(matches!(parse_line(": keep-alive"), Ok(Event::Nothing)));
        assert!(matches!(parse_line(""), Ok(Event::Nothing)));
        assert!(matches!(parse_line("data: [DONE]"), Ok(Event::Done)));
        match parse_line(r#"data: {"choices":[{"delta":{"content":"Hel"}}]}"#) {
            Ok(Event::Text(t)) => assert_eq!(t, "Hel"),
            _ => panic!("expected text"),
        }
        match parse_line(r#"data:{"choices":[{"delta":{"role":"assistant"}}]}"#) {
            Ok(Event::Text(t)) => assert!(t.is_empty()),
            _ => panic!("expected empty text"),
        }
        assert!(parse_line("data: {not json").is_err());
        assert!(parse_line(r#"data: {"error":{"message":"overloaded"}}"#).is_err());
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
    }
}
