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

use sqlx::PgPool;

use super::{Error, Media, MediaKind, Result, with_turn};
use crate::events::{self, Event};
use crate::identity::UserId;
use crate::jobs::{self, Backoff, Job, JobSpec};
use crate::sessions::{self, SessionStatus};

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
/// `media.requested` event. Each is charged to the turn's author's
/// `media_per_hour` quota (None: not limited); once it is spent the rest
/// are not asked for and one `media.skipped` event says so (the reply goes
/// on in text). Returns the events, in order.
pub async fn ask_for_turn_images(
    tx: &mut sqlx::PgConnection,
    session_id: Uuid,
    turn_id: Uuid,
    prompts: &[String],
    media_per_hour: Option<u64>,
) -> Result<Vec<Event>> {
    if prompts.len() > MAX_IMAGES_PER_REPLY {
        tracing::info!(%turn_id, asked = prompts.len(), kept = MAX_IMAGES_PER_REPLY,
            "the reply asked for more images than a reply may; the rest are dropped");
    }
    let mut events = Vec::new();
    let wanted: Vec<String> = prompts
        .iter()
        .take(MAX_IMAGES_PER_REPLY)
        .filter_map(|p| {
            let kept = turn_prompt(p);
            if kept.is_none() {
                tracing::info!(%turn_id, "an image prompt of the reply was empty; dropped");
            }
            kept
        })
        .collect();
    let author: Option<String> = match (media_per_hour, wanted.is_empty()) {
        (Some(_), false) => {
            sqlx::query_scalar("SELECT author_user_id FROM turns WHERE id = $1")
                .bind(turn_id)
                .fetch_optional(&mut *tx)
                .await?
        }
        _ => None,
    };
    for (n, prompt) in wanted.iter().enumerate() {
        if let (Some(limit), Some(author)) = (media_per_hour, &author)
            && let Err(refusal) = crate::quotas::take(
                &mut *tx,
                crate::quotas::Quota::UserMediaPerHour,
                limit,
                author,
            )
            .await?
        {
            let skipped = wanted.len() - n;
            metrics::counter!(crate::metrics::MEDIA_SKIPPED_TOTAL).increment(skipped as u64);
            tracing::info!(%turn_id, skipped, "the author's media quota is spent: the reply goes on in text");
            events.push(
                events::append(
                    &mut *tx,
                    session_id,
                    "media.skipped",
                    serde_json::json!({
                        "turn_id": turn_id,
                        "skipped": skipped,
                        "quota": refusal.quota,
                        "retry_after": refusal.retry_after_secs(),
                        "message": format!(
                            "Images are off for this reply: {}.", refusal.message
                        ),
                    }),
                )
                .await?,
            );
            break;
        }
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
            prompt,
            &enqueued.id,
        )
        .await?;
        events.push(event);
    }
    Ok(events)
}

/// The prompt a game master's reply asked an image for, made fit to ask:
/// control characters become spaces, it is cut to [`MAX_PROMPT_CHARS`];
/// None if nothing is left.
pub fn turn_prompt(raw: &str) -> Option<String> {
    let cleaned: String = raw
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_PROMPT_CHARS)
        .collect();
    let cleaned = cleaned.trim();
    crate::text::is_text(cleaned).then(|| cleaned.to_owned())
}

/// Records, in `tx`, a pending image asked for by the reply to `turn_id`
/// (generated by job `job_id`, already enqueued in `tx`), created by the
/// turn's author, and appends `media.requested`. `prompt` comes from
/// [`turn_prompt`].
pub async fn ask_for_turn(
    tx: &mut sqlx::PgConnection,
    media_id: Uuid,
    session_id: Uuid,
    turn_id: Uuid,
    prompt: &str,
    job_id: &str,
) -> Result<(Media, Event)> {
    let media = sqlx::query_as::<_, Media>(
        r#"
        INSERT INTO campaign_media
            (id, session_id, kind, source, status, prompt, options, job_id, created_by)
        SELECT $1, t.session_id, 'image', 'generated', 'pending', $4,
               jsonb_build_object('turn_id', t.id), $5, t.author_user_id
        FROM turns t WHERE t.id = $3 AND t.session_id = $2
        RETURNING *
        "#,
    )
    .bind(media_id)
    .bind(session_id)
    .bind(turn_id)
    .bind(prompt)
    .bind(job_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(Error::NotFound)?;
    let event = requested_event(tx, &media).await?;
    Ok((media, event))
}

/// Appends `media.requested` for a pending generated item, in `tx` (the
/// one that recorded it): members see it coming before it is ready.
pub async fn requested_event(tx: &mut sqlx::PgConnection, media: &Media) -> Result<Event> {
    Ok(events::append(
        tx,
        media.session_id,
        "media.requested",
        with_turn(
            media,
            serde_json::json!({
                "media_id": media.id,
                "kind": media.kind,
                "prompt": media.prompt,
                "by": media.created_by,
            }),
        ),
    )
    .await?)
}

/// Longest prompt of a generation, in characters.
pub const MAX_PROMPT_CHARS: usize = 4000;

/// A generation asked for by a member.
#[derive(Debug, Clone)]
pub struct NewGeneration<'a> {
    /// `image` or `audio`.
    pub kind: MediaKind,
    /// What to draw or say.
    pub prompt: &'a str,
    /// `size` or `voice`.
    pub options: serde_json::Value,
    /// The client's Idempotency-Key, if it sent one.
    pub idempotency_key: Option<&'a str>,
}

/// What asking for a generation did.
#[derive(Debug)]
pub enum Asked {
    /// A new pending item: enqueue its job in the same transaction.
    New(Media),
    /// The same key asked the same before: that item (and its job).
    Earlier(Media),
}

/// Records a pending generated item in `tx` (members may ask; the session
/// must be active). A repeated Idempotency-Key with the same request gets
/// the earlier item; with another request, [`sessions::Error::Conflict`].
pub async fn ask_generation(
    tx: &mut sqlx::PgConnection,
    session_id: Uuid,
    user: &UserId,
    ask: &NewGeneration<'_>,
) -> Result<Asked> {
    let membership = sessions::require_member(&mut *tx, session_id, user).await?;
    if !matches!(ask.kind, MediaKind::Image | MediaKind::Audio) {
        return Err(Error::Invalid("type must be image or audio".into()));
    }
    if !crate::text::is_text(ask.prompt) || ask.prompt.chars().count() > MAX_PROMPT_CHARS {
        return Err(Error::Invalid(format!(
            "prompt must be 1 to {MAX_PROMPT_CHARS} characters, not blank, without control characters"
        )));
    }
    if membership.session.status == SessionStatus::Archived {
        return Err(sessions::Error::Conflict("the session is archived").into());
    }
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(
        serde_json::to_vec(&(ask.kind, ask.prompt, &ask.options)).unwrap_or_default(),
    )
    .to_vec();
    if let Some(key) = ask.idempotency_key {
        let earlier = sqlx::query_as::<_, Media>(
            "SELECT * FROM campaign_media
             WHERE session_id = $1 AND created_by = $2 AND idempotency_key = $3",
        )
        .bind(session_id)
        .bind(user.as_str())
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(earlier) = earlier {
            if earlier.request_hash.as_deref() != Some(hash.as_slice()) {
                return Err(sessions::Error::Conflict(
                    "this Idempotency-Key was used for another request",
                )
                .into());
            }
            return Ok(Asked::Earlier(earlier));
        }
    }
    let media = sqlx::query_as::<_, Media>(
        r#"
        INSERT INTO campaign_media
            (id, session_id, kind, source, status, prompt, options, idempotency_key,
             request_hash, created_by)
        VALUES ($1, $2, $3, 'generated', 'pending', $4, $5, $6, $7, $8)
        RETURNING *
        "#,
    )
    .bind(Uuid::now_v7())
    .bind(session_id)
    .bind(ask.kind)
    .bind(ask.prompt)
    .bind(&ask.options)
    .bind(ask.idempotency_key)
    .bind(hash)
    .bind(user.as_str())
    .fetch_one(&mut *tx)
    .await?;
    Ok(Asked::New(media))
}

/// Notes the job that generates `id`.
pub async fn set_job(tx: &mut sqlx::PgConnection, id: Uuid, job_id: &str) -> Result<()> {
    sqlx::query("UPDATE campaign_media SET job_id = $2 WHERE id = $1")
        .bind(id)
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Marks a pending generated item failed for good, with a reason safe to
/// show, and appends `media.failed`; None if it was not pending.
pub async fn record_failure(pool: &PgPool, id: Uuid, reason: &str) -> Result<Option<Event>> {
    let mut tx = pool.begin().await?;
    let media = sqlx::query_as::<_, Media>(
        "UPDATE campaign_media SET status = 'failed', failure = $2, updated_at = now()
         WHERE id = $1 AND status = 'pending' RETURNING *",
    )
    .bind(id)
    .bind(reason)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(media) = media else {
        return Ok(None);
    };
    let event = events::append(
        &mut tx,
        media.session_id,
        "media.failed",
        with_turn(
            &media,
            serde_json::json!({ "media_id": media.id, "kind": media.kind, "reason": reason }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Some(event))
}

/// Generated items still `pending` whose job will never record them: it
/// is gone, or finished (succeeded, cancelled, failed for good) without
/// doing so, say because its last attempt died with its worker. Up to
/// `limit`, oldest first.
pub async fn stalled(pool: &PgPool, limit: i64) -> Result<Vec<Media>> {
    Ok(sqlx::query_as::<_, Media>(
        r#"
        SELECT c.* FROM campaign_media c
        LEFT JOIN apalis.jobs j ON j.id = c.job_id
        WHERE c.status = 'pending' AND c.updated_at < now() - interval '1 minute'
          AND (j.id IS NULL OR j.status IN ('Done', 'Killed')
               OR (j.status = 'Failed' AND j.attempts >= j.max_attempts))
        ORDER BY c.id
        LIMIT $1
        "#,
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}
