//! The `turn` job: ask the game master, decide how the run ends.
//!
//! Runs only while the worker holds the turn's session lease, from the
//! step that starts the turn to the step that settles it (see
//! `runtime::session_lane`): this file decides *what* is recorded (the
//! reply, a retry with backoff, a final failure, a hand-back at shutdown);
//! the fenced, batched write records it exactly once.
//!
//! The reply is asked for while the step that starts the turn commits, not
//! after: a slot's time then goes to replies, not to waiting for its own
//! writes. Nothing of the reply is seen before that step is committed: its
//! streamed chunks wait behind a [`Gate`] that opens only then, and if the
//! step is refused (the lease was lost) or fails, the reply is dropped.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use questboard_core::metrics as m;
use questboard_core::turns::{Exchange, Pending, Settle};

use super::JobContext;
use crate::providers::{ChunkSink, Prompt, ProviderError};

const KIND: &str = "turn";

/// How often one attempt waits out a provider's pause before it counts as
/// a failed attempt.
const MAX_PAUSES_PER_ATTEMPT: u32 = 10;

/// Why `turn` must fail without being run, if it must: every allowed run
/// started and none finished (the workers running it died: a turn that
/// crashes its worker must not loop), or its session was archived.
pub fn refusal(turn: &Pending, archived: bool) -> Option<Settle> {
    if turn.attempts >= turn.max_attempts {
        return Some(Settle::Failed {
            reason: format!(
                "the worker running it stopped responding (gave up after {} attempts)",
                turn.attempts
            ),
        });
    }
    archived.then(|| Settle::Failed {
        reason: "the session was archived".into(),
    })
}

/// Counts a started run and how long it waited since it was due (its
/// submission, or its retry's time).
pub fn started(turn: &Pending) {
    metrics::counter!(m::JOBS_STARTED_TOTAL, "kind" => KIND).increment(1);
    let due = turn.run_at.max(turn.created_at);
    let waited = (chrono::Utc::now() - due).to_std().unwrap_or_default();
    metrics::histogram!(m::JOB_QUEUE_WAIT_SECONDS, "kind" => KIND).record(waited.as_secs_f64());
}

/// What the model is asked for `turn`: the system prompt, the session's
/// recent `history` (oldest first) and the turn.
pub fn prompt(ctx: &JobContext, turn: &Pending, history: &VecDeque<Exchange>) -> Prompt {
    Prompt::for_turn(
        &ctx.system_prompt,
        history
            .iter()
            .map(|e| (e.input.as_str(), e.output.as_str())),
        &turn.input,
    )
}

/// `prompt` with the session's game state, for a provider that can change
/// it ([`crate::providers::ModelProvider::sees_state`]). If the state cannot
/// be read the prompt goes without it: the turn does not wait on it.
pub async fn with_state(ctx: &JobContext, prompt: Prompt, session_id: uuid::Uuid) -> Prompt {
    match questboard_core::state::read(&ctx.pool, session_id).await {
        Ok(Some(snapshot)) => prompt.with_state(snapshot.version, &snapshot.document()),
        Ok(None) => prompt,
        Err(err) => {
            tracing::warn!(%session_id, error = %err, "game state not read for the prompt");
            prompt
        }
    }
}

/// Holds a reply's streamed chunks until its turn's start is committed,
/// then passes them (and every later one) to the session's sink, in order.
#[derive(Clone)]
pub struct Gate(Arc<Mutex<GateState>>);

struct GateState {
    sink: Box<dyn ChunkSink>,
    open: bool,
    /// The held chunks' text, one after another, and where each ends.
    text: String,
    held: Vec<(u32, usize)>,
}

impl Gate {
    /// A closed gate in front of `sink`.
    pub fn new(sink: Box<dyn ChunkSink>) -> Self {
        Self(Arc::new(Mutex::new(GateState {
            sink,
            open: false,
            text: String::new(),
            held: Vec::new(),
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets the held chunks, and every later one, through: the attempt
    /// `attempt` was recorded as started by the event `seq`.
    pub fn open(&self, attempt: i32, seq: i64) {
        let mut state = self.state();
        let state = &mut *state;
        state.open = true;
        state.sink.attempt_started(attempt, seq);
        let mut start = 0;
        for (index, end) in state.held.drain(..) {
            state.sink.chunk(index, &state.text[start..end]);
            start = end;
        }
        state.text = String::new();
    }

    /// The sink the reply streams into.
    pub fn sink(&self) -> Box<dyn ChunkSink> {
        Box::new(Gated(self.clone()))
    }
}

struct Gated(Gate);

impl ChunkSink for Gated {
    fn chunk(&mut self, index: u32, text: &str) {
        let mut state = self.0.state();
        if state.open {
            state.sink.chunk(index, text);
        } else {
            state.text.push_str(text);
            let end = state.text.len();
            state.held.push((index, end));
        }
    }
}

/// Runs attempt `attempt` of `turn`: asks the model `prompt` and streams
/// its reply into `sink`. `interrupted` completes when the worker must
/// stop now: the run is then handed back.
pub async fn run(
    ctx: &JobContext,
    turn: &Pending,
    attempt: i32,
    prompt: Prompt,
    mut sink: Box<dyn ChunkSink>,
    interrupted: impl Future<Output = ()>,
) -> Settle {
    let mut prompt = prompt;
    match prompt.fit(ctx.context) {
        Ok(trimmed) if trimmed != Default::default() => {
            tracing::debug!(turn_id = %turn.id, dropped_exchanges = trimmed.exchanges,
                state_left_out = trimmed.state, "prompt trimmed to the model's context");
        }
        Ok(_) => {}
        // Certain to happen again: no attempt is spent on it.
        Err(too_long) => {
            return Settle::Failed {
                reason: too_long.to_string(),
            };
        }
    }
    // The endpoint asked: the primary, or the first fallback fit to take
    // the call (see `providers::fallback`).
    let endpoints = &ctx.llm;
    let mut at = endpoints.choose(0);
    // What the call may cost, charged to the tokens-per-minute limit before
    // it and corrected by the provider's count after.
    let estimate = prompt.estimated_tokens() + ctx.context.max_tokens;
    tokio::pin!(interrupted);
    let mut waited = Duration::ZERO;
    let mut pauses = 0;
    let result = loop {
        let endpoint = endpoints.get(at);
        let provider = endpoint.provider.name();
        // The provider's limits, shared by every worker.
        let acquired = tokio::select! {
            acquired = endpoint.limiter.acquire(estimate) => acquired,
            () = &mut interrupted => {
                tracing::info!(turn_id = %turn.id, "worker stopping: handing the turn back");
                return Settle::HandedBack;
            }
        };
        match acquired {
            Ok(wait) => {
                waited += wait;
                metrics::histogram!(m::LIMITER_WAIT_SECONDS, "provider" => provider)
                    .record(wait.as_secs_f64());
            }
            Err(err) => {
                tracing::warn!(turn_id = %turn.id, error = %err, "provider limits unreadable");
                break Err(ProviderError::Retryable {
                    reason: "the provider's limits could not be read".into(),
                    retry_after: None,
                });
            }
        }
        let asked = Instant::now();
        let result = tokio::select! {
            result = endpoint.provider.complete(&prompt, sink.as_mut()) => result,
            () = &mut interrupted => {
                tracing::info!(turn_id = %turn.id, "worker stopping: handing the turn back");
                return Settle::HandedBack;
            }
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        };
        metrics::histogram!(m::PROVIDER_REQUEST_SECONDS, "provider" => provider, "outcome" => outcome)
            .record(asked.elapsed().as_secs_f64());
        match result {
            // The provider asked everyone to wait: paused for every worker,
            // and asked again after, within this attempt (at most
            // MAX_PAUSES_PER_ATTEMPT times: then it is a failed attempt);
            // a pause past the fallback threshold hands the call to the
            // next endpoint at once (nothing was streamed yet).
            Err(ProviderError::Limited {
                reason,
                retry_after,
            }) if pauses < MAX_PAUSES_PER_ATTEMPT => {
                pauses += 1;
                metrics::counter!(m::PROVIDER_PAUSES_TOTAL, "provider" => provider).increment(1);
                tracing::info!(turn_id = %turn.id, provider, ?retry_after, reason, "provider paused");
                let next = endpoints.after_pause(at, retry_after);
                if let Err(err) = endpoint.limiter.pause(retry_after, &reason).await {
                    tracing::warn!(error = %err, "the pause could not be recorded");
                    if next.is_none() {
                        tokio::time::sleep(retry_after).await;
                    }
                }
                if let Some(next) = next {
                    tracing::info!(turn_id = %turn.id, from = provider,
                        to = endpoints.get(next).provider.name(),
                        "the provider is paused for longer than the fallback threshold: asking the next endpoint");
                    at = next;
                }
            }
            other => break other,
        }
    };
    let endpoint = endpoints.get(at);
    let provider = endpoint.provider.name();
    let err = match result {
        Ok(mut reply) => {
            endpoints.succeeded(at);
            if let Some(usage) = &mut reply.usage {
                usage.limiter_wait_ms = waited.as_millis().min(i64::MAX as u128) as i64;
                let counted = (usage.prompt_tokens + usage.completion_tokens).max(0) as u64;
                if let Err(err) = endpoint.limiter.correct(estimate, counted).await {
                    tracing::warn!(error = %err, "the token charge could not be corrected");
                }
            }
            if let Some(usage) = &reply.usage {
                let (provider, model) = (usage.provider.clone(), usage.model.clone());
                metrics::counter!(m::MODEL_TOKENS_TOTAL, "provider" => provider.clone(),
                    "model" => model.clone(), "kind" => "prompt")
                .increment(usage.prompt_tokens.max(0) as u64);
                metrics::counter!(m::MODEL_TOKENS_TOTAL, "provider" => provider,
                    "model" => model, "kind" => "completion")
                .increment(usage.completion_tokens.max(0) as u64);
            }
            return Settle::Completed {
                output: reply.text,
                state: reply.state,
                images: reply.images,
                usage: reply.usage,
            };
        }
        Err(err) => err,
    };
    // A failure of the provider's (not of the request) counts against the
    // endpoint: one that keeps failing is left alone for a while and the
    // retry goes to the next.
    if !matches!(err, ProviderError::Fatal { .. }) {
        endpoints.failed(at);
    }
    metrics::counter!(m::PROVIDER_ERRORS_TOTAL, "provider" => provider, "kind" => err.kind())
        .increment(1);
    match err {
        ProviderError::Retryable {
            reason,
            retry_after,
        } if attempt < turn.max_attempts => {
            let delay = questboard_core::jobs::backoff(attempt as u32, ctx.backoff_base)
                .max(retry_after.unwrap_or_default());
            tracing::info!(turn_id = %turn.id, attempt, ?delay, reason, "turn will be retried");
            Settle::Retrying { reason, delay }
        }
        ProviderError::Limited {
            reason,
            retry_after,
        } if attempt < turn.max_attempts => Settle::Retrying {
            reason,
            delay: retry_after,
        },
        ProviderError::Retryable { reason, .. } | ProviderError::Limited { reason, .. } => {
            Settle::Failed {
                reason: format!("{reason} (gave up after {attempt} attempts)"),
            }
        }
        ProviderError::Fatal { reason } => Settle::Failed { reason },
    }
}

/// Counts a settle once it is recorded; `started` is when the run began.
pub fn settled(turn: &Pending, settle: &Settle, started: Instant) {
    let (counter, outcome) = match settle {
        Settle::Completed { .. } => (m::JOBS_SUCCEEDED_TOTAL, "succeeded"),
        Settle::Failed { reason } => {
            tracing::warn!(turn_id = %turn.id, reason, "turn failed");
            (m::JOBS_FAILED_TOTAL, "failed")
        }
        Settle::Retrying { .. } => (m::JOBS_RETRIED_TOTAL, "retried"),
        Settle::HandedBack => (m::JOBS_HANDED_BACK_TOTAL, "handed_back"),
    };
    metrics::counter!(counter, "kind" => KIND).increment(1);
    if !matches!(settle, Settle::HandedBack) {
        metrics::histogram!(m::JOB_RUN_SECONDS, "kind" => KIND, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Collect(Arc<Mutex<Vec<(u32, String)>>>);
    impl ChunkSink for Collect {
        fn chunk(&mut self, index: u32, text: &str) {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((index, text.to_owned()));
        }
    }

    #[test]
    fn a_gate_holds_chunks_until_it_opens_then_keeps_their_order() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let gate = Gate::new(Box::new(Collect(seen.clone())));
        let mut sink = gate.sink();
        sink.chunk(0, "a");
        sink.chunk(1, "b");
        assert!(seen.lock().map(|s| s.is_empty()).unwrap_or(false));
        gate.open(1, 7);
        sink.chunk(2, "c");
        let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        assert_eq!(seen, [(0, "a".into()), (1, "b".into()), (2, "c".into())]);
    }

    #[test]
    fn a_closed_gate_drops_what_it_held() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let gate = Gate::new(Box::new(Collect(seen.clone())));
        gate.sink().chunk(0, "never shown");
        drop(gate);
        assert!(seen.lock().map(|s| s.is_empty()).unwrap_or(false));
    }
}
