//! Media providers: who makes a session's images and narration.
//!
//! One trait, [`MediaProvider`], chosen by `QB_MEDIA_PROVIDER`:
//! - [`builtin`] (default): offline and deterministic: a real PNG (a small
//!   picture derived from the prompt) and a real WAV (a few seconds of
//!   tones), so `questboard dev` shows media with no API key;
//! - [`openai`]: any OpenAI-compatible server's `/images/generations`
//!   (`response_format: "b64_json"`) and `/audio/speech`.
//!
//! Errors are the model providers' [`ProviderError`]: retryable (timeouts,
//! 429, 5xx, with the server's `Retry-After`) or fatal, with text safe to
//! show a member. Whatever a provider returns is checked to be the type it
//! claims before it is stored (by the `media` job).

use futures::future::BoxFuture;

use super::ProviderError;

pub mod builtin;
pub mod openai;

/// What a provider made.
#[derive(Debug, Clone)]
pub struct Generated {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// What they claim to be (`image/png`, `audio/wav`, ...).
    pub content_type: String,
    /// The model that made them (recorded with the item's usage).
    pub model: String,
}

/// An image request.
#[derive(Debug, Clone)]
pub struct ImageAsk<'a> {
    /// What to draw.
    pub prompt: &'a str,
    /// `WIDTHxHEIGHT`, e.g. `1024x1024`.
    pub size: &'a str,
}

/// A narration request.
#[derive(Debug, Clone)]
pub struct SpeechAsk<'a> {
    /// What to say.
    pub text: &'a str,
    /// Which voice.
    pub voice: &'a str,
}

/// Makes images and narration.
pub trait MediaProvider: Send + Sync {
    /// Its name, recorded with what it makes.
    fn name(&self) -> &'static str;

    /// The models it makes images and narration with, in that order.
    fn models(&self) -> [&str; 2];

    /// Draws an image.
    fn image<'a>(&'a self, ask: ImageAsk<'a>) -> BoxFuture<'a, Result<Generated, ProviderError>>;

    /// Speaks a text.
    fn speech<'a>(&'a self, ask: SpeechAsk<'a>) -> BoxFuture<'a, Result<Generated, ProviderError>>;
}
