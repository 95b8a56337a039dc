//! The `turn` job: ask the game master, record the reply exactly once.
//!
//! Runs only while the worker holds the turn's session lease. Each write
//! (started, completed, retry scheduled, failed) is fenced by that lease,
//! so a worker that lost the lease mid-turn cannot record anything.

use std::collections::VecDeque;
use std::time::Instant;

use questboard_core::leases::{self, Lease};
use questboard_core::metrics as m;
use questboard_core::turns::{self, Exchange, NextTurn, Turn};

use super::JobContext;
use crate::providers::{Prompt, ProviderError};

/// What the drain loop should do after a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Go on with the session's next turn.
    Continue,
    /// Stop draining this session (the turn waits for a retry, or the lease is gone).
    Stop,
}

/// Why a run could not be carried out at all.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed.
    #[error(transparent)]
    Turns(#[from] turns::Error),
}

const KIND: &str = "turn";

/// Runs one attempt of the session's next turn under `lease`. The job's
/// attempt budget bounds retries; an archived session fails the turn at
/// once. `interrupted` completes when the worker must stop now (the run is
/// handed back).
///
/// `history` holds the session's recent completed exchanges: loaded from the
/// database on the drain's first turn, then kept up to date here, so a
/// drain reads history once rather than once per turn. (The lease
/// guarantees nobody else completes turns of this session meanwhile.)
pub async fn run(
    ctx: &JobContext,
    next: &NextTurn,
    lease: &Lease,
    history: &mut Option<VecDeque<Exchange>>,
    interrupted: impl Future<Output = ()>,
) -> Result<Next, Error> {
    let turn = &next.turn;
    let max_attempts = next.max_attempts;
    let started = Instant::now();
    if next.attempts >= max_attempts {
        // Every allowed run has started and none finished: the workers
        // running it died (a turn that crashes its worker must not loop).
        let reason = format!(
            "the worker running it stopped responding (gave up after {} attempts)",
            next.attempts
        );
        return finish_failed(ctx, turn, lease, &reason, started).await;
    }
    let attempt = match turns::start(&ctx.pool, turn, lease).await {
        Ok((attempt, event)) => {
            ctx.events.events(event);
            attempt
        }
        Err(err) => return fenced_or(err, turn),
    };
    metrics::counter!(m::JOBS_STARTED_TOTAL, "kind" => KIND).increment(1);
    if attempt == 1 {
        let waited = (chrono::Utc::now() - turn.created_at)
            .to_std()
            .unwrap_or_default();
        metrics::histogram!(m::JOB_QUEUE_WAIT_SECONDS, "kind" => KIND).record(waited.as_secs_f64());
    }

    if next.session_archived {
        return finish_failed(ctx, turn, lease, "the session was archived", started).await;
    }

    let history = match history {
        Some(history) => history,
        None => {
            let mut conn = ctx.pool.acquire().await.map_err(turns::Error::from)?;
            let loaded =
                turns::history(&mut conn, turn.session_id, turn.seq, ctx.history_window).await?;
            history.insert(loaded.into())
        }
    };
    let prompt = Prompt::for_turn(
        &ctx.system_prompt,
        history
            .iter()
            .map(|e| (e.input.as_str(), e.output.as_str())),
        &turn.input,
    );
    let mut sink = ctx.sinks.sink(turn.session_id, turn.id);
    let asked = Instant::now();
    let provider = ctx.provider.name();
    let result = tokio::select! {
        result = ctx.provider.complete(&prompt, sink.as_mut()) => result,
        () = interrupted => {
            tracing::info!(turn_id = %turn.id, "worker stopping: handing the turn back");
            match turns::hand_back(&ctx.pool, turn, lease).await {
                Ok(event) => ctx.events.events(event),
                Err(err) => return fenced_or(err, turn),
            }
            metrics::counter!(m::JOBS_HANDED_BACK_TOTAL, "kind" => KIND).increment(1);
            return Ok(Next::Stop);
        }
    };
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.kind(),
    };
    metrics::histogram!(m::PROVIDER_REQUEST_SECONDS, "provider" => provider, "outcome" => outcome)
        .record(asked.elapsed().as_secs_f64());

    match result {
        Ok(reply) => {
            match turns::complete(&ctx.pool, turn, lease, &reply).await {
                Ok((true, event)) => {
                    ctx.events.events(event);
                    history.push_back(Exchange {
                        seq: turn.seq,
                        input: turn.input.clone(),
                        output: reply,
                    });
                    while history.len() as i64 > ctx.history_window {
                        history.pop_front();
                    }
                    metrics::counter!(m::JOBS_SUCCEEDED_TOTAL, "kind" => KIND).increment(1);
                    metrics::histogram!(m::JOB_RUN_SECONDS, "kind" => KIND, "outcome" => "succeeded")
                        .record(started.elapsed().as_secs_f64());
                }
                Ok((false, _)) => {
                    tracing::warn!(turn_id = %turn.id, "turn was already finished; reply not recorded twice");
                }
                Err(err) => return fenced_or(err, turn),
            }
            Ok(Next::Continue)
        }
        Err(err) => {
            metrics::counter!(m::PROVIDER_ERRORS_TOTAL, "provider" => provider, "kind" => err.kind())
                .increment(1);
            match err {
                ProviderError::Retryable {
                    reason,
                    retry_after,
                } if attempt < max_attempts => {
                    let delay = questboard_core::jobs::backoff(attempt as u32, ctx.backoff_base)
                        .max(retry_after.unwrap_or_default());
                    tracing::info!(turn_id = %turn.id, attempt, ?delay, reason, "turn will be retried");
                    if let Err(err) =
                        turns::retry_later(&ctx.pool, turn, lease, &reason, delay).await
                    {
                        return fenced_or(err, turn);
                    }
                    metrics::counter!(m::JOBS_RETRIED_TOTAL, "kind" => KIND).increment(1);
                    metrics::histogram!(m::JOB_RUN_SECONDS, "kind" => KIND, "outcome" => "retried")
                        .record(started.elapsed().as_secs_f64());
                    // Later turns of the session wait: order is strict.
                    Ok(Next::Stop)
                }
                ProviderError::Retryable { reason, .. } => {
                    let reason = format!("{reason} (gave up after {attempt} attempts)");
                    finish_failed(ctx, turn, lease, &reason, started).await
                }
                ProviderError::Fatal { reason } => {
                    finish_failed(ctx, turn, lease, &reason, started).await
                }
            }
        }
    }
}

async fn finish_failed(
    ctx: &JobContext,
    turn: &Turn,
    lease: &Lease,
    reason: &str,
    started: Instant,
) -> Result<Next, Error> {
    tracing::warn!(turn_id = %turn.id, reason, "turn failed");
    match turns::fail(&ctx.pool, turn, lease, reason).await {
        Ok(event) => ctx.events.events(event),
        Err(err) => return fenced_or(err, turn),
    }
    metrics::counter!(m::JOBS_FAILED_TOTAL, "kind" => KIND).increment(1);
    metrics::histogram!(m::JOB_RUN_SECONDS, "kind" => KIND, "outcome" => "failed")
        .record(started.elapsed().as_secs_f64());
    Ok(Next::Continue)
}

/// A fencing rejection stops the drain (counted and logged); anything else
/// is an error.
fn fenced_or(err: turns::Error, turn: &Turn) -> Result<Next, Error> {
    match err {
        turns::Error::Fenced(leases::Error::Fenced { scope, key, token }) => {
            metrics::counter!(m::FENCING_REJECTIONS_TOTAL, "scope" => scope.clone()).increment(1);
            tracing::warn!(
                turn_id = %turn.id, %scope, %key, token,
                "write refused by the fencing check: this worker lost the session lease"
            );
            Ok(Next::Stop)
        }
        other => Err(other.into()),
    }
}
