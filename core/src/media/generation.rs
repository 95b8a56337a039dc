//! Asking for generated media: the `media` job's payload (the worker's
//! handler generates and stores the item) and the pending items a game
//! master's reply asks for.
//!
//! The payload lives here, next to the rows it names, so every place that
//! asks for a generation (an upload-free `POST .../media/generate`, a
//! reply's images when its turn is recorded, an approved proposal's images)
//! enqueues the same job the same way, in the transaction that records the
//! pending item.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Error, Result, ask_for_turn, turn_prompt};
use crate::events::Event;
use crate::jobs::{self, Backoff, Job, JobSpec};

/// The most images one reply may ask for; more are dropped (logged).
pub const MAX_IMAGES_PER_REPLY: usize = 4;

/// The `media` job's payload: which pending item to generate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateMedia {
    /// The pending item.
    pub media_id: Uuid,
    /// Its session.
    pub session_id: Uuid,
}

impl Job for GenerateMedia {
    const SPEC: JobSpec = JobSpec {
        kind: "media",
        queue: "questboard.media",
        max_attempts: 5,
        backoff: Backoff::exponential(Duration::from_secs(2)),
        timeout: Duration::from_secs(300),
        concurrency: 4,
        ..JobSpec::DEFAULTS
    };

    fn session(&self) -> Option<Uuid> {
        Some(self.session_id)
    }
}

/// Records, in `tx`, a pending image and its `media` job for each of the
/// `prompts` the reply to `turn_id` asked for (at most
/// [`MAX_IMAGES_PER_REPLY`], empty prompts dropped), each with its
/// `media.requested` event. Returns the events, in order.
pub async fn ask_for_turn_images(
    tx: &mut sqlx::PgConnection,
    session_id: Uuid,
    turn_id: Uuid,
    prompts: &[String],
) -> Result<Vec<Event>> {
    if prompts.len() > MAX_IMAGES_PER_REPLY {
        tracing::info!(%turn_id, asked = prompts.len(), kept = MAX_IMAGES_PER_REPLY,
            "the reply asked for more images than a reply may; the rest are dropped");
    }
    let mut events = Vec::new();
    for prompt in prompts.iter().take(MAX_IMAGES_PER_REPLY) {
        let Some(prompt) = turn_prompt(prompt) else {
            tracing::info!(%turn_id, "an image prompt of the reply was empty; dropped");
            continue;
        };
        let job = GenerateMedia {
            media_id: Uuid::now_v7(),
            session_id,
        };
        let enqueued = jobs::enqueue(&mut *tx, &job, &jobs::Options::default())
            .await
            .map_err(|e| match e {
                jobs::Error::Database(e) => Error::Database(e),
                other => Error::Invalid(other.to_string()),
            })?;
        let (_, event) = ask_for_turn(
            &mut *tx,
            job.media_id,
            session_id,
            turn_id,
            &prompt,
            &enqueued.id,
        )
        .await?;
        events.push(event);
    }
    Ok(events)
}
