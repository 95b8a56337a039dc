//! Images and narration from any OpenAI-compatible server:
//! `POST {base}/images/generations` (`model`, `prompt`, `size`, `n: 1`,
//! `response_format: "b64_json"`; the image is `data[0].b64_json`) and
//! `POST {base}/audio/speech` (`model`, `input`, `voice`,
//! `response_format`; the body is the audio). 429, 5xx and timeouts are
//! retryable, with the server's `Retry-After`.

use std::time::Duration;

use base64::Engine as _;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::{Generated, ImageAsk, MediaProvider, SpeechAsk};
use crate::providers::ProviderError;
use crate::providers::openai::{retry_after, status_error, transport_error};

/// Where and how to ask.
#[derive(Clone)]
pub struct OpenAiMediaSettings {
    /// Base URL, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// Model of images, e.g. `gpt-image-1` or `dall-e-3`.
    pub image_model: String,
    /// Model of speech, e.g. `tts-1`.
    pub speech_model: String,
    /// Bearer key, if the server needs one.
    pub api_key: Option<String>,
    /// Whole-request timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for OpenAiMediaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiMediaSettings")
            .field("base_url", &self.base_url)
            .field("image_model", &self.image_model)
            .field("speech_model", &self.speech_model)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The provider.
#[derive(Debug)]
pub struct OpenAiMedia {
    settings: OpenAiMediaSettings,
    client: reqwest::Client,
}

impl OpenAiMedia {
    /// A client for `settings`.
    pub fn new(settings: OpenAiMediaSettings) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        Ok(Self { settings, client })
    }

    async fn post(&self, path: &str, body: Value) -> Result<reqwest::Response, ProviderError> {
        let url = format!("{}/{path}", self.settings.base_url.trim_end_matches('/'));
        let mut request = self.client.post(url).json(&body);
        if let Some(key) = &self.settings.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status();
        if !status.is_success() {
            let wait = retry_after(response.headers());
            tracing::warn!(%status, path, "media provider refused the request");
            return Err(status_error(status, wait));
        }
        Ok(response)
    }
}

fn malformed(what: &str) -> ProviderError {
    ProviderError::Retryable {
        reason: format!("the media provider sent a malformed {what}"),
        retry_after: None,
    }
}

impl MediaProvider for OpenAiMedia {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn models(&self) -> [&str; 2] {
        [&self.settings.image_model, &self.settings.speech_model]
    }

    fn image<'a>(&'a self, ask: ImageAsk<'a>) -> BoxFuture<'a, Result<Generated, ProviderError>> {
        Box::pin(async move {
            let body = json!({
                "model": self.settings.image_model,
                "prompt": ask.prompt,
                "size": ask.size,
                "n": 1,
                "response_format": "b64_json",
            });
            let reply: Value = self
                .post("images/generations", body)
                .await?
                .json()
                .await
                .map_err(|_| malformed("reply"))?;
            let encoded = reply["data"][0]["b64_json"]
                .as_str()
                .ok_or_else(|| malformed("reply (no data[0].b64_json)"))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| malformed("image (not base64)"))?;
            // What the bytes look like among the image types a session
            // keeps; anything else is claimed PNG and refused by the check
            // before storing.
            let content_type = if infer::image::is_jpeg(&bytes) {
                "image/jpeg"
            } else if infer::image::is_webp(&bytes) {
                "image/webp"
            } else {
                "image/png"
            };
            Ok(Generated {
                bytes,
                content_type: content_type.into(),
                model: self.settings.image_model.clone(),
            })
        })
    }

    fn speech<'a>(&'a self, ask: SpeechAsk<'a>) -> BoxFuture<'a, Result<Generated, ProviderError>> {
        Box::pin(async move {
            let body = json!({
                "model": self.settings.speech_model,
                "input": ask.text,
                "voice": ask.voice,
                "response_format": "wav",
            });
            let bytes = self
                .post("audio/speech", body)
                .await?
                .bytes()
                .await
                .map_err(transport_error)?;
            Ok(Generated {
                bytes: bytes.to_vec(),
                content_type: "audio/wav".into(),
                model: self.settings.speech_model.clone(),
            })
        })
    }
}
