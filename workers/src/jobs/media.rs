//! The `media` job: generates one pending image or narration of a session
//! with the configured [`MediaProvider`](crate::providers::media::MediaProvider),
//! checks that the bytes are what they claim, stores them under the
//! session's prefix and records them (`media.ready`). A retryable provider
//! failure (429, 5xx, a timeout) runs again after the kind's backoff or
//! the provider's `Retry-After`; on the last attempt, or on a fatal failure
//! (a refused request, a reply that is not the type it claims), the item is
//! marked `failed`
//! with a reason safe to show (`media.failed`). An operator's cancel stops
//! waiting for the provider at once and fails the item the same way. A run that finds the item
//! gone or no longer pending does nothing.

use std::time::Instant;

use bytes::Bytes;
pub use questboard_core::media::GenerateMedia;
use questboard_core::media::{self, MediaKind, MediaStatus};
use questboard_core::metrics as m;
use serde_json::{Value, json};

use super::{Handler, JobContext, JobError, JobRun};
use crate::providers::ProviderError;
use crate::providers::media::{ImageAsk, SpeechAsk};

impl Handler for GenerateMedia {
    async fn run(self, ctx: &JobContext, run: &JobRun) -> Result<Value, JobError> {
        let found = media::find(
            &ctx.pool,
            self.media_id,
            Some(self.session_id),
            media::Viewer::Authorised,
        );
        let item = match found.await {
            Ok(item) => item,
            Err(media::Error::NotFound) => return Ok(json!({ "skipped": "the item was deleted" })),
            Err(err) => return Err(JobError::retryable(err)),
        };
        if item.status != MediaStatus::Pending {
            return Ok(
                json!({ "skipped": format!("the item is already {:?}", item.status).to_lowercase() }),
            );
        }
        let kind = item.kind;
        let prompt = item.prompt.clone().unwrap_or_default();
        let option = |name: &str, default: &'static str| {
            item.options[name]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| default.to_owned())
        };
        let started = Instant::now();
        let generate = || async {
            match kind {
                MediaKind::Image => {
                    let size = option("size", "1024x1024");
                    ctx.media
                        .image(ImageAsk {
                            prompt: &prompt,
                            size: &size,
                        })
                        .await
                }
                MediaKind::Audio => {
                    let voice = option("voice", "alloy");
                    ctx.media
                        .speech(SpeechAsk {
                            text: &prompt,
                            voice: &voice,
                        })
                        .await
                }
                MediaKind::Map | MediaKind::Note => Err(ProviderError::Fatal {
                    reason: "maps and notes are uploaded, not generated".into(),
                }),
            }
        };
        // Within the media provider's limits, shared by every worker; a
        // provider that asks everyone to wait is paused for all and asked
        // again after, within this run.
        let generating = async {
            loop {
                if let Err(err) = ctx.media_limiter.acquire(0).await {
                    break Err(ProviderError::Retryable {
                        reason: format!("the provider limits could not be read: {err}"),
                        retry_after: None,
                    });
                }
                match generate().await {
                    Err(ProviderError::Limited {
                        reason,
                        retry_after,
                    }) => {
                        tracing::info!(?retry_after, reason, "media provider paused");
                        if let Err(err) = ctx.media_limiter.pause(retry_after, &reason).await {
                            tracing::warn!(error = %err, "the pause could not be recorded");
                            tokio::time::sleep(retry_after).await;
                        }
                    }
                    other => break other,
                }
            }
        };
        // A provider call may hang for minutes: an operator's cancel stops
        // waiting for it (nothing is written before the reply arrives).
        let generated = tokio::select! {
            generated = generating => generated,
            () = run.cancelled() => {
                // The item fails with the job, so its members stop waiting.
                let err = ProviderError::Fatal { reason: "cancelled by an operator".into() };
                return Err(failed(&self, ctx, run, kind, err).await);
            }
        };
        let outcome = match &generated {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        };
        metrics::histogram!(m::MEDIA_PROVIDER_SECONDS, "kind" => kind.as_str(),
            "provider" => ctx.media.name(), "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
        let generated = match generated {
            Ok(generated) => generated,
            Err(err) => return Err(failed(&self, ctx, run, kind, err).await),
        };
        run.checkpoint()?;
        let prefix = questboard_core::sessions::prefixes_of(&ctx.pool, &[self.session_id])
            .await
            .map_err(JobError::retryable)?
            .into_iter()
            .next()
            .map(|(_, prefix)| prefix)
            .ok_or_else(|| JobError::fatal("the session was deleted"))?;
        let files = ctx.storage.session(&prefix).map_err(JobError::fatal)?;
        // The one ingest path: the bytes must be what they claim, of a
        // type the kind keeps. A provider that answers with something else
        // is broken, not busy: asking again would cost as much for the same.
        let ingest = media::Ingest {
            files: &files,
            kind,
            id: item.id,
            version: 1,
            content_type: &generated.content_type,
            limit: u64::MAX,
        };
        let model = generated.model;
        let object = match ingest.store_bytes(Bytes::from(generated.bytes)).await {
            Ok(object) => object,
            Err(media::ingest::Error::Refused(_)) => {
                let err = ProviderError::Fatal {
                    reason: format!("the provider's reply is not a valid {}", kind.as_str()),
                };
                return Err(failed(&self, ctx, run, kind, err).await);
            }
            Err(err) => return Err(JobError::retryable(err)),
        };
        let size = object.byte_size;
        run.checkpoint()?;
        match media::record_generated(&ctx.pool, item.id, ctx.media.name(), &model, &object).await {
            Ok(Some((_, event))) => {
                ctx.events.events([event]);
                let (unit, amount) = match kind {
                    MediaKind::Audio => ("speech_characters", prompt.chars().count() as u64),
                    _ => ("images", 1),
                };
                metrics::counter!(m::MEDIA_UNITS_TOTAL, "provider" => ctx.media.name(),
                    "model" => model.clone(), "unit" => unit)
                .increment(amount);
                metrics::counter!(m::MEDIA_JOBS_TOTAL, "kind" => kind.as_str(), "outcome" => "ready").increment(1);
            }
            Ok(None) => {}
            Err(err) => return Err(JobError::retryable(err)),
        }
        Ok(json!({
            "media_id": item.id,
            "kind": kind,
            "content_type": object.content_type,
            "byte_size": size,
            "storage_key": object.storage_key,
        }))
    }
}

/// What a failed attempt becomes: another run while attempts remain
/// and the failure may pass; otherwise the item is marked failed.
async fn failed(
    job: &GenerateMedia,
    ctx: &JobContext,
    run: &JobRun,
    kind: MediaKind,
    err: ProviderError,
) -> JobError {
    let last = run.attempt() >= run.max_attempts();
    let retry_after = err.retry_after();
    match err {
        ProviderError::Retryable { reason, .. } | ProviderError::Limited { reason, .. }
            if !last =>
        {
            metrics::counter!(m::MEDIA_JOBS_TOTAL, "kind" => kind.as_str(), "outcome" => "retried")
                .increment(1);
            JobError::Retryable {
                reason,
                retry_after,
            }
        }
        ProviderError::Retryable { reason, .. }
        | ProviderError::Limited { reason, .. }
        | ProviderError::Fatal { reason } => {
            metrics::counter!(m::MEDIA_JOBS_TOTAL, "kind" => kind.as_str(), "outcome" => "failed")
                .increment(1);
            match media::record_failure(&ctx.pool, job.media_id, &reason).await {
                Ok(Some(event)) => ctx.events.events([event]),
                Ok(None) => {}
                Err(e) => return JobError::retryable(e),
            }
            JobError::Fatal { reason }
        }
    }
}
