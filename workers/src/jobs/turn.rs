//! The `turn` job: ask the game master, decide how the run ends.
//!
//! Runs only while the worker holds the turn's session lease, between the
//! step that started the turn and the step that settles it (see
//! `runtime`): this file decides *what* is recorded (the reply, a retry
//! with backoff, a final failure, a hand-back at shutdown); the fenced,
//! batched write records it exactly once.

use std::collections::VecDeque;
use std::time::Instant;

use questboard_core::metrics as m;
use questboard_core::turns::{Exchange, Pending, Settle};
use uuid::Uuid;

use super::JobContext;
use crate::providers::{Prompt, ProviderError};

const KIND: &str = "turn";

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

/// Counts a started run (and, for a first attempt, how long the turn waited).
pub fn started(turn: &Pending, attempt: i32) {
    metrics::counter!(m::JOBS_STARTED_TOTAL, "kind" => KIND).increment(1);
    if attempt == 1 {
        let waited = (chrono::Utc::now() - turn.created_at)
            .to_std()
            .unwrap_or_default();
        metrics::histogram!(m::JOB_QUEUE_WAIT_SECONDS, "kind" => KIND).record(waited.as_secs_f64());
    }
}

/// Runs attempt `attempt` of `turn` in session `session_id`: asks the model
/// with the session's recent `history` (oldest first) and streams its reply
/// to the session's sink. `interrupted` completes when the worker must stop
/// now: the run is then handed back.
pub async fn run(
    ctx: &JobContext,
    session_id: Uuid,
    turn: &Pending,
    attempt: i32,
    history: &VecDeque<Exchange>,
    interrupted: impl Future<Output = ()>,
) -> Settle {
    let prompt = Prompt::for_turn(
        &ctx.system_prompt,
        history
            .iter()
            .map(|e| (e.input.as_str(), e.output.as_str())),
        &turn.input,
    );
    let mut sink = ctx.sinks.sink(session_id, turn.id);
    let asked = Instant::now();
    let provider = ctx.provider.name();
    let result = tokio::select! {
        result = ctx.provider.complete(&prompt, sink.as_mut()) => result,
        () = interrupted => {
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
    let err = match result {
        Ok(output) => return Settle::Completed { output },
        Err(err) => err,
    };
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
        ProviderError::Retryable { reason, .. } => Settle::Failed {
            reason: format!("{reason} (gave up after {attempt} attempts)"),
        },
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
