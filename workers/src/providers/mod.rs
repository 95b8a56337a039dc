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
pub use questboard_core::usage::TokenUsage;

pub mod fallback;
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

    /// What the prompt costs in tokens, by [`estimate_message`].
    pub fn estimated_tokens(&self) -> u64 {
        self.messages
            .iter()
            .map(|m| estimate_message(&m.content))
            .sum()
    }

    /// The earlier exchanges the prompt carries.
    pub fn history_len(&self) -> usize {
        self.messages
            .iter()
            .filter(|m| m.role == Speaker::Assistant)
            .count()
    }
}

/// How much a request may hold: the model's context window, of which the
/// reply (`max_tokens`) keeps its share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextBudget {
    /// The model's context window, in tokens (`QB_LLM_CONTEXT_TOKENS`).
    pub context_tokens: u64,
    /// The longest reply asked for (`QB_LLM_MAX_TOKENS`).
    pub max_tokens: u64,
}

impl ContextBudget {
    /// The tokens a prompt may take.
    pub fn for_prompt(self) -> u64 {
        self.context_tokens.saturating_sub(self.max_tokens)
    }
}

/// What [`Prompt::fit`] left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// Earlier exchanges dropped, oldest first.
    pub exchanges: usize,
    /// The game state was replaced by a note.
    pub state: bool,
}

/// A prompt that cannot fit however much is left out: the instructions and
/// the turn alone take more than the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the instructions and the turn take about {needed} tokens, more than the {available} \
     the model's context leaves for a prompt"
)]
pub struct TooLong {
    /// Tokens the instructions and the turn are estimated to take.
    pub needed: u64,
    /// Tokens a prompt may take.
    pub available: u64,
}

impl Prompt {
    /// Trims the prompt to fit `budget` (by [`estimate_tokens`]): the
    /// instructions and the turn are always kept; the game state keeps at
    /// most half of what is left after them (a larger one is replaced by a
    /// note); earlier exchanges fill the rest, newest first, so the oldest
    /// are dropped. Returns what was left out.
    pub fn fit(&mut self, budget: ContextBudget) -> Result<Trimmed, TooLong> {
        let available = budget.for_prompt();
        let cost = |m: &Message| estimate_message(&m.content);
        let mut trimmed = Trimmed::default();
        let total: u64 = self.messages.iter().map(cost).sum();
        if total <= available {
            return Ok(trimmed);
        }
        let last = self.messages.len().saturating_sub(1);
        // The instructions (first) and the turn (last) are kept whole.
        let fixed: u64 = self
            .messages
            .iter()
            .enumerate()
            .filter(|(i, _)| *i == 0 || *i == last)
            .map(|(_, m)| cost(m))
            .sum();
        if fixed > available {
            return Err(TooLong {
                needed: fixed,
                available,
            });
        }
        let mut left = available - fixed;
        // The game state: other system messages, within half of the rest.
        let state_share = left / 2;
        for (i, message) in self.messages.iter_mut().enumerate() {
            if i == 0 || i == last || message.role != Speaker::System {
                continue;
            }
            if cost(message) > state_share {
                message.content = format!(
                    "The game state (about {} tokens) is too large to show within this                      model's context; change it only where you are sure of the path.",
                    estimate_tokens(&message.content)
                );
                trimmed.state = true;
            }
            left = left.saturating_sub(cost(message));
        }
        // Earlier exchanges, newest first, while they fit; the rest (the
        // oldest) are dropped whole, a question with its answer.
        let mut keep = vec![true; self.messages.len()];
        let mut full = false;
        let mut i = last;
        while i > 1 {
            let (said, answered) = (i - 2, i - 1);
            if self.messages[said].role != Speaker::User
                || self.messages[answered].role != Speaker::Assistant
            {
                break;
            }
            let pair = cost(&self.messages[said]) + cost(&self.messages[answered]);
            if full || pair > left {
                full = true;
                keep[said] = false;
                keep[answered] = false;
                trimmed.exchanges += 1;
            } else {
                left -= pair;
            }
            i -= 2;
        }
        let mut index = 0;
        self.messages.retain(|_| {
            index += 1;
            keep[index - 1]
        });
        Ok(trimmed)
    }
}

/// Tokens a chat message's framing (its role, separators) costs on top of
/// its text, as OpenAI documents for its chat models.
pub const TOKENS_PER_MESSAGE: u64 = 4;

/// The tokens a text is estimated to cost before a provider counts it:
/// one per four characters, rounded up (the usual rule of thumb for
/// English with the common tokenizers). Limits charge this before a call
/// and correct it with the provider's count after; the scripted game
/// master reports it as its count.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// The tokens a chat message with `content` is estimated to cost: its
/// text by [`estimate_tokens`] plus [`TOKENS_PER_MESSAGE`] of framing.
pub fn estimate_message(content: &str) -> u64 {
    estimate_tokens(content) + TOKENS_PER_MESSAGE
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
    /// The provider asked every caller to wait `retry_after` (429 or 503
    /// with `Retry-After` or `x-ratelimit-reset-*`): the provider is paused
    /// for every worker and the call asked again after it, without
    /// spending an attempt.
    #[error("{reason}")]
    Limited {
        /// What happened (safe to show).
        reason: String,
        /// How long the provider asked everyone to wait.
        retry_after: Duration,
    },
    /// Retrying will not help: the request itself was refused.
    #[error("{reason}")]
    Fatal {
        /// What happened (safe to show).
        reason: String,
    },
}

impl ProviderError {
    /// How long the provider asked to wait before the next call, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::Retryable { retry_after, .. } => *retry_after,
            ProviderError::Limited { retry_after, .. } => Some(*retry_after),
            ProviderError::Fatal { .. } => None,
        }
    }

    /// A label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderError::Retryable { .. } => "retryable",
            ProviderError::Limited { .. } => "limited",
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
    /// The tokens the provider counted for it (all its requests), if it
    /// reported them.
    pub usage: Option<TokenUsage>,
}

pub use questboard_core::media::MAX_IMAGES_PER_REPLY;

impl Reply {
    /// A reply that changes nothing.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            state: None,
            images: Vec::new(),
            usage: None,
        }
    }
}

/// A game master.
pub trait ModelProvider: Send + Sync {
    /// Short name for logs and metrics.
    fn name(&self) -> &'static str;

    /// The model it asks (recorded with each reply's usage).
    fn model(&self) -> &str;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(context_tokens: u64, max_tokens: u64) -> ContextBudget {
        ContextBudget {
            context_tokens,
            max_tokens,
        }
    }

    fn history(n: usize) -> Vec<(String, String)> {
        (0..n)
            .map(|i| {
                (
                    format!("turn {i} {}", "x".repeat(36)),
                    format!("reply {i} {}", "y".repeat(36)),
                )
            })
            .collect()
    }

    #[test]
    fn a_prompt_that_fits_is_left_alone() {
        let h = history(3);
        let mut prompt =
            Prompt::for_turn("sys", h.iter().map(|(a, b)| (a.as_str(), b.as_str())), "go");
        let before = prompt.messages.clone();
        assert_eq!(prompt.fit(budget(10_000, 1_000)), Ok(Trimmed::default()));
        assert_eq!(prompt.messages, before);
    }

    #[test]
    fn the_oldest_exchanges_go_first_and_the_rest_fits() {
        let h = history(10);
        let mut prompt =
            Prompt::for_turn("sys", h.iter().map(|(a, b)| (a.as_str(), b.as_str())), "go")
                .with_state(3, &serde_json::json!({"items": ["lamp"]}));
        // Each exchange costs 2 * (ceil(44 / 4) + 4) = 30 tokens.
        let b = budget(200, 50);
        let trimmed = prompt.fit(b).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            prompt.estimated_tokens() <= b.for_prompt(),
            "{}",
            prompt.estimated_tokens()
        );
        assert!(!trimmed.state);
        assert_eq!(trimmed.exchanges + prompt.history_len(), 10);
        assert!(trimmed.exchanges > 0 && prompt.history_len() > 0);
        // The newest exchanges are the ones kept, in order, after the
        // instructions and the state; the turn is last.
        assert_eq!(prompt.messages[0].content, "sys");
        assert!(
            prompt.messages[1]
                .content
                .starts_with("The game state now (version 3)")
        );
        let kept: Vec<&str> = prompt
            .messages
            .iter()
            .filter(|m| m.role == Speaker::User)
            .map(|m| m.content.split(' ').nth(1).unwrap_or_default())
            .collect();
        let first_kept = 10 - prompt.history_len();
        let expected: Vec<String> = (first_kept..10).map(|i| i.to_string()).collect();
        assert_eq!(
            kept[..kept.len() - 1],
            expected.iter().map(String::as_str).collect::<Vec<_>>()[..]
        );
        assert_eq!(
            prompt.messages.last().map(|m| m.content.as_str()),
            Some("go")
        );
    }

    #[test]
    fn a_large_state_becomes_a_note_and_a_turn_too_long_is_refused() {
        let big = serde_json::json!({"notes": "z".repeat(2_000)});
        let mut prompt = Prompt::for_turn("sys", [], "go").with_state(1, &big);
        let trimmed = prompt
            .fit(budget(600, 100))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(trimmed.state);
        assert!(prompt.messages[1].content.contains("too large"));
        assert!(prompt.estimated_tokens() <= 500);

        let mut long = Prompt::for_turn("sys", [], &"w".repeat(4_000));
        assert_eq!(
            long.fit(budget(600, 100)),
            Err(TooLong {
                needed: 1_000 + 4 + 1 + 4,
                available: 500
            })
        );
    }
}
