//! Model providers: whoever plays the game master.
//!
//! One trait, [`ModelProvider`], chosen by `QB_LLM_PROVIDER`:
//! - [`scripted`] (default): a deterministic game master built in, so a
//!   newcomer needs no API key and tests need no network;
//! - [`openai`]: any OpenAI-compatible chat-completions server (OpenAI,
//!   Ollama, vLLM, llama.cpp), streamed over SSE.
//!
//! Replies stream out chunk by chunk through a [`ChunkSink`] (the realtime
//! bridge publishes them to WebSockets). A reply may also ask to change the
//! session's game state ([`Reply::state`]): the operations are checked and
//! applied, or refused, when the reply is recorded, never here. Errors say whether a retry may help
//! ([`ProviderError::Retryable`], with the server's `Retry-After` if it gave
//! one) or not ([`ProviderError::Fatal`]); their text is safe to show a
//! player: no keys, no response bodies.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use questboard_core::state::Proposal;

pub mod media;
pub mod openai;
pub mod scripted;

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Speaker {
    /// Instructions to the model.
    System,
    /// The players.
    User,
    /// The game master.
    Assistant,
}

/// One message of a prompt.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Message {
    /// Who said it.
    pub role: Speaker,
    /// What was said.
    pub content: String,
}

/// What the model is asked: a system prompt, the recent history, the new turn.
#[derive(Debug, Clone, Default)]
pub struct Prompt {
    /// The messages, in order.
    pub messages: Vec<Message>,
}

impl Prompt {
    /// Builds the prompt for a turn from earlier exchanges (oldest first).
    pub fn for_turn<'a>(
        system: &str,
        history: impl IntoIterator<Item = (&'a str, &'a str)>,
        input: &str,
    ) -> Self {
        let mut messages = vec![Message {
            role: Speaker::System,
            content: system.to_owned(),
        }];
        for (said, answered) in history {
            messages.push(Message {
                role: Speaker::User,
                content: said.to_owned(),
            });
            messages.push(Message {
                role: Speaker::Assistant,
                content: answered.to_owned(),
            });
        }
        messages.push(Message {
            role: Speaker::User,
            content: input.to_owned(),
        });
        Self { messages }
    }

    /// Tells the model the session's game state as it is now (`version`,
    /// `document`), after the instructions. A document longer than
    /// [`MAX_PROMPT_STATE_BYTES`] is left out, and the model told so.
    pub fn with_state(mut self, version: i64, document: &serde_json::Value) -> Self {
        let text = document.to_string();
        let content = if text.len() <= MAX_PROMPT_STATE_BYTES {
            format!("The game state now (version {version}), as JSON:\n{text}")
        } else {
            format!(
                "The game state (version {version}) is too large to show here ({} bytes); \
                 change it only where you are sure of the path.",
                text.len()
            )
        };
        let at = self.messages.len().min(1);
        self.messages.insert(
            at,
            Message {
                role: Speaker::System,
                content,
            },
        );
        self
    }

    /// The earlier exchanges the prompt carries.
    pub fn history_len(&self) -> usize {
        self.messages
            .iter()
            .filter(|m| m.role == Speaker::Assistant)
            .count()
    }
}

/// The largest game state a prompt carries, in bytes of JSON.
pub const MAX_PROMPT_STATE_BYTES: usize = 32 * 1024;

/// Receives a reply as it streams.
pub trait ChunkSink: Send {
    /// Called for each chunk, `index` counting from 0.
    fn chunk(&mut self, index: u32, text: &str);

    /// Called once, before the first chunk passes on, when the attempt
    /// `attempt` of the turn was recorded as started by the event `seq`.
    fn attempt_started(&mut self, _attempt: i32, _seq: i64) {}
}

/// A sink that drops chunks (when nobody listens).
#[derive(Debug, Default, Clone, Copy)]
pub struct DiscardChunks;

impl ChunkSink for DiscardChunks {
    fn chunk(&mut self, _index: u32, _text: &str) {}
}

/// Why a completion failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Worth retrying: timeout, lost connection, 429, 5xx.
    #[error("{reason}")]
    Retryable {
        /// What happened (safe to show).
        reason: String,
        /// How long the provider asked us to wait.
        retry_after: Option<Duration>,
    },
    /// Retrying will not help: the request itself was refused.
    #[error("{reason}")]
    Fatal {
        /// What happened (safe to show).
        reason: String,
    },
}

impl ProviderError {
    /// A label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderError::Retryable { .. } => "retryable",
            ProviderError::Fatal { .. } => "fatal",
        }
    }
}

/// A whole reply.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reply {
    /// What the game master says.
    pub text: String,
    /// The game-state change it asks for with it, if any.
    pub state: Option<Proposal>,
    /// Prompts of the images it asks to show with it (each becomes a
    /// generated image of the session, `media.requested` then
    /// `media.ready`), at most [`MAX_IMAGES_PER_REPLY`] kept.
    pub images: Vec<String>,
}

pub use questboard_core::media::MAX_IMAGES_PER_REPLY;

impl Reply {
    /// A reply that changes nothing.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            state: None,
            images: Vec::new(),
        }
    }
}

/// A game master.
pub trait ModelProvider: Send + Sync {
    /// Short name for logs and metrics.
    fn name(&self) -> &'static str;

    /// Whether its prompts should carry the session's game state (it can
    /// change the state and needs to see it to do so sensibly).
    fn sees_state(&self) -> bool {
        false
    }

    /// Answers `prompt`, streaming the reply's text into `sink`; returns
    /// the whole reply.
    fn complete<'a>(
        &'a self,
        prompt: &'a Prompt,
        sink: &'a mut dyn ChunkSink,
    ) -> BoxFuture<'a, Result<Reply, ProviderError>>;
}

/// Which provider to use and how.
#[derive(Debug, Clone)]
pub enum ProviderSettings {
    /// The built-in game master.
    Scripted {
        /// Simulated model latency for a whole reply.
        latency: Duration,
    },
    /// An OpenAI-compatible server.
    OpenAi(openai::OpenAiSettings),
}

/// Builds the configured provider.
pub fn build(settings: &ProviderSettings) -> Result<Arc<dyn ModelProvider>, String> {
    Ok(match settings {
        ProviderSettings::Scripted { latency } => Arc::new(scripted::Scripted::new(*latency)),
        ProviderSettings::OpenAi(settings) => Arc::new(openai::OpenAi::new(settings.clone())?),
    })
}
