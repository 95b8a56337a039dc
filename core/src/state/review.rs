//! Proposals held for a game master's review.
//!
//! In a session whose `ai_authority` is `propose` (the default), what the
//! AI game master's reply to a *player's* turn asks for (state operations,
//! images) is not applied: it is held as a proposal (`state_proposals`),
//! recorded with the reply ([`record`], in the reply's transaction) and
//! announced as `state.proposed`. The owner or a `gm` then decides, once:
//!
//! - [`approve`] applies the operations against the state as it then is,
//!   as the approver's own update made against the `version` they send
//!   (a state that moved on is the usual 409 `VERSION_CONFLICT`: refetch,
//!   look again, approve again), under the update id `proposal:<id>`, so
//!   an approval retried after a failure never applies twice; then it asks
//!   for the images and marks the proposal `approved`
//!   (`state.proposal.approved`).
//! - [`reject`] marks it `rejected` (`state.proposal.rejected`), with an
//!   optional reason.
//!
//! A session holds at most [`MAX_PENDING`] undecided proposals; a reply
//! asking for more while they wait is refused (`TOO_MANY_PROPOSALS`, on
//! the turn), so a player typing changes cannot grow the table without
//! bound. Decided proposals are pruned with the event retention.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Applied, Error, Limits, Recent, Result, Update, parse_operations, update_as_gm};
use crate::events::{self, Event};
use crate::identity::UserId;
use crate::sessions::{self, Role, SessionStatus};

/// The most undecided proposals one session holds.
pub const MAX_PENDING: i64 = 100;
/// The longest reason a rejection may give, in characters.
pub const MAX_REASON_CHARS: usize = 500;

/// Where a proposal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for a game master.
    Pending,
    /// Applied (and its images asked for).
    Approved,
    /// Turned down.
    Rejected,
}

impl Status {
    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Rejected => "rejected",
        }
    }
}

impl std::str::FromStr for Status {
    type Err = sessions::UnknownValue;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "pending" => Ok(Status::Pending),
            "approved" => Ok(Status::Approved),
            "rejected" => Ok(Status::Rejected),
            other => Err(sessions::UnknownValue::new(other)),
        }
    }
}
crate::text_column!(Status);

/// A held proposal (its HTTP view is `ProposalView`).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Held {
    /// Its id.
    pub id: Uuid,
    /// The session.
    pub session_id: Uuid,
    /// The turn whose reply asked for it.
    pub turn_id: Uuid,
    /// The player who played that turn.
    pub proposed_for: String,
    /// The state operations, as the model gave them (checked for shape;
    /// checked against the state when approved).
    pub operations: Value,
    /// The prompts of the images it asks for.
    pub images: Value,
    /// Where it is.
    pub status: Status,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// Who decided.
    pub decided_by: Option<String>,
    /// When.
    pub decided_at: Option<DateTime<Utc>>,
    /// A rejection's reason.
    pub reason: Option<String>,
    /// The update an approval made (when it had operations).
    pub update_id: Option<Uuid>,
    /// The state's version after that update.
    pub version: Option<i64>,
}

/// What an approval did.
#[derive(Debug)]
pub struct Approved {
    /// The proposal, now approved.
    pub held: Held,
    /// The update its operations made (None: it had none).
    pub applied: Option<Applied>,
    /// Events to publish, in order (the images' `media.requested`, then
    /// `state.proposal.approved`), after the update's own event.
    pub events: Vec<Event>,
    /// How many images were asked for.
    pub images: usize,
}

/// How many proposals of the session wait, in `tx` (the reply's: its
/// session's turns settle one at a time).
pub async fn pending(tx: &mut sqlx::PgConnection, session_id: Uuid) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM state_proposals WHERE session_id = $1 AND status = 'pending'",
    )
    .bind(session_id)
    .fetch_one(&mut *tx)
    .await
}

/// What a reply asks to be held.
#[derive(Debug, Clone, Copy)]
pub struct NewHeld<'a> {
    /// The id chosen for it (already recorded on the turn).
    pub id: Uuid,
    /// The session.
    pub session_id: Uuid,
    /// The turn whose reply asked for it.
    pub turn_id: Uuid,
    /// Its operations (possibly none).
    pub operations: &'a [Value],
    /// Its images' prompts (possibly none).
    pub images: &'a [String],
}

/// Records a held proposal in `tx` (the one recording the reply) and
/// appends `state.proposed`.
pub async fn record(tx: &mut sqlx::PgConnection, new: NewHeld<'_>) -> Result<Event> {
    let held = sqlx::query_as::<_, Held>(
        "INSERT INTO state_proposals (id, session_id, turn_id, proposed_for, operations, images)
         SELECT $1, t.session_id, t.id, t.author_user_id, $4, $5
         FROM turns t WHERE t.id = $3 AND t.session_id = $2
         RETURNING *",
    )
    .bind(new.id)
    .bind(new.session_id)
    .bind(new.turn_id)
    .bind(json!(new.operations))
    .bind(json!(new.images))
    .fetch_one(&mut *tx)
    .await?;
    Ok(events::append(
        tx,
        new.session_id,
        "state.proposed",
        json!({
            "proposal_id": held.id,
            "turn_id": held.turn_id,
            "proposed_for": held.proposed_for,
            "operations": held.operations,
            "images": held.images,
        }),
    )
    .await?)
}

/// A page of a session's proposals, newest first (ids are UUIDv7, so
/// that is id order): `status` (None: all), with ids below `before` (the
/// last one of the previous page). Members only.
pub async fn list(
    pool: &PgPool,
    session_id: Uuid,
    user: &UserId,
    status: Option<Status>,
    limit: i64,
    before: Option<Uuid>,
) -> Result<(Vec<Held>, Option<Uuid>)> {
    sessions::require_member(pool, session_id, user).await?;
    let mut items = sqlx::query_as::<_, Held>(
        "SELECT * FROM state_proposals
         WHERE session_id = $1 AND ($2::text IS NULL OR status = $2)
           AND ($3::uuid IS NULL OR id < $3)
         ORDER BY id DESC LIMIT $4",
    )
    .bind(session_id)
    .bind(status.map(Status::as_str))
    .bind(before)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    let next = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|h| h.id)
    } else {
        None
    };
    Ok((items, next))
}

/// The proposal `id` of the session, for a game master `actor` of an
/// active session: 404 for non-members and unknown ids, 403 for players,
/// 409 when archived or already decided.
async fn decidable(pool: &PgPool, session_id: Uuid, actor: &UserId, id: Uuid) -> Result<Held> {
    let membership = sessions::require_member(pool, session_id, actor).await?;
    if !matches!(membership.role, Role::Owner | Role::Gm) {
        return Err(Error::NotGameMaster);
    }
    let held = sqlx::query_as::<_, Held>(
        "SELECT * FROM state_proposals WHERE id = $1 AND session_id = $2",
    )
    .bind(id)
    .bind(session_id)
    .fetch_optional(pool)
    .await?
    .ok_or(Error::NoSuchProposal)?;
    if membership.session.status == SessionStatus::Archived {
        return Err(Error::Archived);
    }
    if held.status != Status::Pending {
        return Err(Error::Decided(held.status.as_str()));
    }
    Ok(held)
}

/// Approves a proposal (see the module docs). `version` is the state's
/// What approving a proposal may spend: the game state's size limits, and
/// the turn author's media quota for the images the reply asked for.
#[derive(Debug, Clone, Copy)]
pub struct Allowance {
    /// The game state's size limits.
    pub state: Limits,
    /// Images per hour of the turn's author (None: not limited).
    pub media_per_hour: Option<u64>,
}

/// version the approver saw; needed when the proposal has operations.
pub async fn approve(
    pool: &PgPool,
    recent: &Recent,
    session_id: Uuid,
    actor: &UserId,
    id: Uuid,
    version: Option<i64>,
    allowance: Allowance,
) -> Result<Approved> {
    let Allowance {
        state: limits,
        media_per_hour,
    } = allowance;
    let held = decidable(pool, session_id, actor, id).await?;
    let operations: Vec<Value> =
        serde_json::from_value(held.operations.clone()).unwrap_or_default();
    let applied = if operations.is_empty() {
        None
    } else {
        let version = version.ok_or_else(|| Error::Invalid {
            index: None,
            message: "`version` is needed: the state's version you approve against".into(),
        })?;
        let parsed = parse_operations(&operations, limits.max_update_bytes)?;
        let request_id = format!("proposal:{id}");
        Some(
            update_as_gm(
                pool,
                recent,
                session_id,
                actor,
                Update {
                    request_id: Some(&request_id),
                    version,
                    operations: &parsed,
                    max_bytes: limits.max_bytes,
                },
            )
            .await?,
        )
    };
    let images: Vec<String> = serde_json::from_value(held.images.clone()).unwrap_or_default();
    let mut tx = pool.begin().await?;
    let held = sqlx::query_as::<_, Held>(
        "UPDATE state_proposals
         SET status = 'approved', decided_by = $3, decided_at = now(), update_id = $4, version = $5
         WHERE id = $1 AND session_id = $2 AND status = 'pending'
         RETURNING *",
    )
    .bind(id)
    .bind(session_id)
    .bind(actor.as_str())
    .bind(applied.as_ref().map(|a| a.update_id))
    .bind(applied.as_ref().map(|a| a.new_version))
    .fetch_optional(&mut *tx)
    .await?
    // Another game master decided meanwhile (an approval of theirs made
    // the same update, under the same id: nothing applied twice).
    .ok_or(Error::Decided("decided"))?;
    let mut events = crate::media::ask_for_turn_images(
        &mut tx,
        session_id,
        held.turn_id,
        &images,
        media_per_hour,
    )
    .await
    .map_err(|e| match e {
        crate::media::Error::Database(e) => Error::Database(e),
        other => Error::Invalid {
            index: None,
            message: other.to_string(),
        },
    })?;
    let asked = events
        .iter()
        .filter(|e| e.kind == "media.requested")
        .count();
    events.push(
        events::append(
            &mut tx,
            session_id,
            "state.proposal.approved",
            json!({
                "proposal_id": held.id,
                "turn_id": held.turn_id,
                "by": actor.as_str(),
                "update_id": held.update_id,
                "version": held.version,
                "images": asked,
            }),
        )
        .await?,
    );
    tx.commit().await?;
    Ok(Approved {
        held,
        applied,
        events,
        images: asked,
    })
}

/// Rejects a proposal, with an optional reason (at most
/// [`MAX_REASON_CHARS`] characters of text).
pub async fn reject(
    pool: &PgPool,
    session_id: Uuid,
    actor: &UserId,
    id: Uuid,
    reason: Option<&str>,
) -> Result<(Held, Event)> {
    decidable(pool, session_id, actor, id).await?;
    let reason = reason.map(str::trim).filter(|r| !r.is_empty());
    if let Some(reason) = reason
        && (reason.chars().count() > MAX_REASON_CHARS || !crate::text::is_text(reason))
    {
        return Err(Error::Invalid {
            index: None,
            message: format!(
                "`reason` is text of at most {MAX_REASON_CHARS} characters (no control characters)"
            ),
        });
    }
    let mut tx = pool.begin().await?;
    let held = sqlx::query_as::<_, Held>(
        "UPDATE state_proposals
         SET status = 'rejected', decided_by = $3, decided_at = now(), reason = $4
         WHERE id = $1 AND session_id = $2 AND status = 'pending'
         RETURNING *",
    )
    .bind(id)
    .bind(session_id)
    .bind(actor.as_str())
    .bind(reason)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(Error::Decided("decided"))?;
    let event = events::append(
        &mut tx,
        session_id,
        "state.proposal.rejected",
        json!({
            "proposal_id": held.id,
            "turn_id": held.turn_id,
            "by": actor.as_str(),
            "reason": held.reason,
        }),
    )
    .await?;
    tx.commit().await?;
    Ok((held, event))
}

/// Deletes (or with `dry_run` counts) up to `limit` proposals decided
/// before `before`. Returns how many.
pub async fn prune_decided(
    pool: &PgPool,
    before: DateTime<Utc>,
    limit: i64,
    dry_run: bool,
) -> Result<u64> {
    let sql = if dry_run {
        "SELECT count(*) FROM (SELECT 1 FROM state_proposals
          WHERE status <> 'pending' AND decided_at < $1 LIMIT $2) d"
    } else {
        "WITH gone AS (
             DELETE FROM state_proposals WHERE id IN (
                 SELECT id FROM state_proposals
                 WHERE status <> 'pending' AND decided_at < $1 LIMIT $2)
             RETURNING 1)
         SELECT count(*) FROM gone"
    };
    let count: i64 = sqlx::query_scalar(sql)
        .bind(before)
        .bind(limit)
        .fetch_one(pool)
        .await?;
    Ok(count as u64)
}
