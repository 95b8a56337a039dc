//! The built-in game master: deterministic, offline, and honest about what
//! it saw.
//!
//! Its reply names the turn it answers and how many earlier exchanges its
//! prompt carried, so a test (or a curious newcomer) can tell that each turn
//! saw the history before it. It streams the reply a few words at a time,
//! spreading `QB_SCRIPTED_LATENCY_MS` over the chunks like a real model;
//! a reply takes that long on average (correcting for the timer's
//! lateness), so benchmarks with it measure what they say.
//!
//! It also changes the game state when told to, so the state written by
//! turns can be seen working offline: every line of the turn that reads
//! `/state <operation> <path> [value]` becomes one operation of its reply,
//! in order (`value` is JSON if it parses as JSON, else the text itself):
//!
//! ```text
//! I drink the potion.
//! /state inc characters.0.hitPoints 5
//! /state push items {"name": "empty flask"}
//! ```
//!
//! Nothing is checked here: a line the state refuses (`/state inc items
//! lots`) is recorded as refused on the turn, as a model's mistake is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;

#[cfg(test)]
use super::DiscardChunks;
use questboard_core::state::Proposal;
use serde_json::{Value, json};

use super::{ChunkSink, ModelProvider, Prompt, ProviderError, Reply, Speaker};

const OPENINGS: [&str; 6] = [
    "The torches gutter as",
    "A cold wind rises while",
    "Somewhere below, a bell tolls as",
    "The innkeeper looks up sharply as",
    "Dust sifts from the ceiling as",
    "Far off, wolves answer as",
];

/// Words per streamed chunk.
const WORDS_PER_CHUNK: usize = 4;

/// How late this process's sleeps wake, on average (nanoseconds; an
/// exponentially weighted mean over the last few dozen sleeps).
static LATENESS_NANOS: AtomicU64 = AtomicU64::new(0);

fn observe_lateness(late: Duration) {
    let late = u64::try_from(late.as_nanos())
        .unwrap_or(u64::MAX)
        .min(5_000_000);
    let old = LATENESS_NANOS.load(Ordering::Relaxed);
    // old + (late - old) / 16, in integers.
    let new = (old * 15 + late) / 16;
    LATENESS_NANOS.store(new, Ordering::Relaxed);
}

/// The scripted game master.
#[derive(Debug, Clone)]
pub struct Scripted {
    latency: Duration,
}

impl Scripted {
    /// A game master that takes `latency` per reply.
    pub fn new(latency: Duration) -> Self {
        Self { latency }
    }

    /// The reply to `prompt`, without streaming.
    pub fn reply(prompt: &Prompt) -> Reply {
        let input = prompt
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Speaker::User)
            .map(|m| m.content.trim())
            .unwrap_or_default();
        let earlier = prompt.history_len();
        let opening = OPENINGS[fnv(input) as usize % OPENINGS.len()];
        let quoted: String = input.chars().take(200).collect();
        let operations = state_lines(input);
        let mut text = format!(
            "{opening} you act: \"{quoted}\". (Game master's reply to exchange {}, \
             having read {earlier} earlier exchanges.)",
            earlier + 1
        );
        if !operations.is_empty() {
            let n = operations.len();
            text.push_str(&format!(
                " The game master changes the game state ({n} operation{}).",
                if n == 1 { "" } else { "s" }
            ));
        }
        text.push_str(" What do you do next?");
        Reply {
            text,
            state: (!operations.is_empty()).then_some(Proposal::Operations(operations)),
        }
    }
}

/// The operations the `/state` lines of `input` ask for (see the module
/// documentation), as raw JSON, unchecked.
pub fn state_lines(input: &str) -> Vec<Value> {
    input
        .lines()
        .filter_map(|line| line.trim().strip_prefix("/state "))
        .map(|rest| {
            let mut words = rest.trim().splitn(3, char::is_whitespace);
            let operation = words.next().unwrap_or_default();
            let path = words.next().unwrap_or_default();
            let mut op = json!({ "path": path, "operation": operation });
            if let Some(value) = words.next().map(str::trim).filter(|v| !v.is_empty()) {
                let value = serde_json::from_str(value).unwrap_or_else(|_| json!(value));
                op["value"] = value;
            }
            op
        })
        .collect()
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl ModelProvider for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }

    fn complete<'a>(
        &'a self,
        prompt: &'a Prompt,
        sink: &'a mut dyn ChunkSink,
    ) -> BoxFuture<'a, Result<Reply, ProviderError>> {
        async move {
            let reply = Self::reply(prompt);
            let words: Vec<&str> = reply.text.split_inclusive(' ').collect();
            let chunks: Vec<String> = words.chunks(WORDS_PER_CHUNK).map(|c| c.concat()).collect();
            // Each chunk is due at its share of the latency from the start,
            // on absolute deadlines (relative sleeps of a fraction of a
            // millisecond each would add the timer's rounding once per
            // chunk: a 5 ms reply took about 10). A timer fires on the first
            // millisecond tick after its deadline, and its task wakes a
            // little later still: each sleep is set early by the lateness
            // sleeps showed so far, so the reply takes the configured time
            // on average.
            let start = tokio::time::Instant::now();
            let count = chunks.len().max(1) as u32;
            for (index, chunk) in chunks.iter().enumerate() {
                if !self.latency.is_zero() {
                    let due = start + self.latency * (index as u32 + 1) / count;
                    let wake = due
                        .checked_sub(Duration::from_nanos(LATENESS_NANOS.load(Ordering::Relaxed)))
                        .unwrap_or(due)
                        .max(start);
                    tokio::time::sleep_until(wake).await;
                    let late = tokio::time::Instant::now().saturating_duration_since(wake);
                    observe_lateness(late);
                }
                sink.chunk(index as u32, chunk);
            }
            Ok(reply)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Collect(Vec<String>);
    impl ChunkSink for Collect {
        fn chunk(&mut self, index: u32, text: &str) {
            assert_eq!(index as usize, self.0.len());
            self.0.push(text.to_owned());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_configured_latency_is_the_whole_replys() {
        let prompt = Prompt::for_turn("sys", [], "a fairly long turn of many words to split");
        let started = tokio::time::Instant::now();
        let _ = Scripted::new(Duration::from_millis(5))
            .complete(&prompt, &mut DiscardChunks)
            .await;
        assert_eq!(started.elapsed(), Duration::from_millis(5));
    }

    #[tokio::test]
    async fn streams_a_deterministic_reply_that_counts_the_history() {
        let prompt = Prompt::for_turn("sys", [("a", "b"), ("c", "d")], "open the door");
        let mut sink = Collect(Vec::new());
        let reply = Scripted::new(Duration::ZERO)
            .complete(&prompt, &mut sink)
            .await
            .unwrap_or_default();
        assert!(reply.text.contains("open the door"));
        assert!(
            reply
                .text
                .contains("exchange 3, having read 2 earlier exchanges")
        );
        assert!(sink.0.len() > 1);
        assert_eq!(sink.0.concat(), reply.text);
        assert_eq!(reply, Scripted::reply(&prompt));
        assert_eq!(reply.state, None);
    }

    #[test]
    fn state_lines_become_operations_in_order() {
        let input = "I drink the potion.\n\
                     /state inc characters.0.hitPoints 5\n\
                     /state push items {\"name\": \"empty flask\"}\n\
                     /state set currentEncounter.map The Crypt\n\
                     /state unset pluginData.dice\n\
                     not /state a command";
        let prompt = Prompt::for_turn("sys", [], input);
        let reply = Scripted::reply(&prompt);
        assert!(reply.text.contains("changes the game state (4 operations)"));
        assert_eq!(
            reply.state,
            Some(Proposal::Operations(vec![
                json!({"path": "characters.0.hitPoints", "operation": "inc", "value": 5}),
                json!({"path": "items", "operation": "push", "value": {"name": "empty flask"}}),
                json!({"path": "currentEncounter.map", "operation": "set", "value": "The Crypt"}),
                json!({"path": "pluginData.dice", "operation": "unset"}),
            ]))
        );
    }
}
