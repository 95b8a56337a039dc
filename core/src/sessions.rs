//! Campaign sessions and their members.
//!
//! A campaign session is what players share: it has one owner (who is also
//! its game master), any number of members with a role, a storage prefix for
//! its files, and a lifecycle (`active`, then `archived`). Every read here is
//! scoped by membership: a caller who is not a member gets
//! [`Error::NotFound`], exactly as if the session did not exist.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::events::{self, Event};
use crate::identity::UserId;

/// The longest session name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// What a member may do in a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Created the session; manages members and invites; is the game master.
    Owner,
    /// A co-game-master.
    Gm,
    /// A player.
    Player,
}

impl Role {
    /// The role's stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Gm => "gm",
            Role::Player => "player",
        }
    }
}

impl FromStr for Role {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "owner" => Ok(Role::Owner),
            "gm" => Ok(Role::Gm),
            "player" => Ok(Role::Player),
            other => Err(UnknownValue(other.to_owned())),
        }
    }
}
crate::text_column!(Role);

/// Where a session is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    /// In play.
    Active,
    /// Closed by its owner: readable by members, no longer changed.
    Archived,
}

impl SessionStatus {
    /// The status's stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Active => "active",
            SessionStatus::Archived => "archived",
        }
    }
}

impl FromStr for SessionStatus {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(SessionStatus::Active),
            "archived" => Ok(SessionStatus::Archived),
            other => Err(UnknownValue(other.to_owned())),
        }
    }
}
crate::text_column!(SessionStatus);

/// What the AI game master may change on its own in a session (its
/// replies' state changes and images), set by the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AiAuthority {
    /// The AI is the game master: what its replies ask for applies,
    /// whoever's turn they answered.
    Apply,
    /// The default: what it asks for in reply to a player's turn is held
    /// as a proposal an owner or `gm` approves or rejects; in reply to an
    /// owner's or gm's turn it applies.
    Propose,
    /// Its replies change nothing (what they ask for is refused; the reply
    /// stands).
    Off,
}

impl AiAuthority {
    /// The stored and serialized name.
    pub fn as_str(self) -> &'static str {
        match self {
            AiAuthority::Apply => "apply",
            AiAuthority::Propose => "propose",
            AiAuthority::Off => "off",
        }
    }

    /// What a reply to a turn by a member of role `author` (None: no longer
    /// a member) may do with what it asks for.
    pub fn for_turn_by(self, author: Option<Role>) -> AiVerdict {
        let game_master = matches!(author, Some(Role::Owner | Role::Gm));
        match self {
            AiAuthority::Off => AiVerdict::Refuse,
            AiAuthority::Apply => AiVerdict::Apply,
            AiAuthority::Propose if game_master => AiVerdict::Apply,
            AiAuthority::Propose => AiVerdict::Hold,
        }
    }
}

impl FromStr for AiAuthority {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "apply" => Ok(AiAuthority::Apply),
            "propose" => Ok(AiAuthority::Propose),
            "off" => Ok(AiAuthority::Off),
            other => Err(UnknownValue(other.to_owned())),
        }
    }
}
crate::text_column!(AiAuthority);

/// What becomes of the state changes and images one reply asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AiVerdict {
    /// They apply now.
    Apply,
    /// They are held as a proposal for a game master's review.
    Hold,
    /// They are refused.
    Refuse,
}

/// A stored value that no variant matches (only possible if the schema and
/// code disagree).
#[derive(Debug, thiserror::Error)]
#[error("unknown value {0:?}")]
pub struct UnknownValue(String);

impl UnknownValue {
    /// Wraps the unrecognised text.
    pub fn new(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// A campaign session as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Session {
    /// The session id.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// The user who created it.
    pub owner_user_id: String,
    /// Prefix of the session's files inside the object store.
    pub storage_prefix: String,
    /// Lifecycle state.
    pub status: SessionStatus,
    /// What the AI game master may change on its own.
    pub ai_authority: AiAuthority,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its metadata last changed.
    pub updated_at: DateTime<Utc>,
    /// When anything last happened in it (orders the session list).
    pub last_active_at: DateTime<Utc>,
}

/// A session seen by one of its members, with that member's role.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Membership {
    /// The session.
    #[sqlx(flatten)]
    pub session: Session,
    /// The caller's role in it.
    pub role: Role,
}

/// One member of a session.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Member {
    /// The member's user id.
    pub user_id: String,
    /// The member's role.
    pub role: Role,
    /// When they joined.
    pub joined_at: DateTime<Utc>,
}

/// A validated session name: it follows [`crate::text::NAME_PATTERN`] and
/// has at most [`MAX_NAME_CHARS`] characters as sent; it is stored trimmed
/// and in Unicode normal form C (so names that look the same are the same).
#[derive(Debug, Clone)]
pub struct SessionName(String);

impl SessionName {
    /// Validates `raw` and returns it trimmed and normalised.
    pub fn parse(raw: &str) -> Result<Self, Error> {
        use unicode_normalization::UnicodeNormalization as _;
        if raw.chars().count() > MAX_NAME_CHARS {
            return Err(Error::Invalid(format!(
                "name must be at most {MAX_NAME_CHARS} characters"
            )));
        }
        if let Some(reason) = crate::text::name_refusal(raw) {
            return Err(Error::Invalid(format!("name {reason}")));
        }
        Ok(Self(raw.trim().nfc().collect()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where the next page of a session list starts: the sort key of the last
/// session on the previous page. Opaque to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    last_active_at: DateTime<Utc>,
    id: Uuid,
}

impl Cursor {
    /// What every cursor looks like (and every string like it is one): the
    /// last session's activity time in microseconds since 1970 (14 hex
    /// digits) and its id (32 hex digits).
    pub const PATTERN: &'static str = "^[0-9a-f]{46}$";

    /// Encodes the cursor as text of [`Cursor::PATTERN`].
    pub fn encode(&self) -> String {
        let micros = self
            .last_active_at
            .timestamp_micros()
            .clamp(0, (1 << 56) - 1);
        format!("{micros:014x}{}", self.id.simple())
    }

    /// Decodes a cursor: any text of [`Cursor::PATTERN`].
    pub fn decode(text: &str) -> Result<Self, Error> {
        let invalid = || Error::Invalid("cursor is not valid".into());
        if text.len() != 46 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(invalid());
        }
        let micros = i64::from_str_radix(&text[..14], 16).map_err(|_| invalid())?;
        Ok(Self {
            last_active_at: DateTime::from_timestamp_micros(micros).ok_or_else(invalid)?,
            id: Uuid::try_parse(&text[14..]).map_err(|_| invalid())?,
        })
    }
}

/// A page of sessions.
#[derive(Debug)]
pub struct Page {
    /// The sessions, most recently active first.
    pub items: Vec<Membership>,
    /// Where the next page starts, if there is one.
    pub next: Option<Cursor>,
}

/// What can go wrong with sessions and members.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such session, or the caller is not a member (indistinguishable on purpose).
    #[error("not found")]
    NotFound,
    /// The session exists for the caller but the named user is not a member.
    #[error("no such member")]
    NoSuchMember,
    /// The caller is a member but their role does not allow this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The request conflicts with the session's state.
    #[error("{0}")]
    Conflict(&'static str),
    /// The input is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// A member's quota refused it.
    #[error(transparent)]
    Quota(#[from] crate::quotas::Refusal),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The object-store prefix under which a session's files live.
pub fn storage_prefix_for(id: Uuid) -> String {
    format!("sessions/{id}")
}

/// Creates a session owned by `owner`, who becomes its first member with role
/// `owner`. Session and membership are written by one statement, so neither
/// exists without the other.
pub async fn create(pool: &PgPool, owner: &UserId, name: &SessionName) -> Result<Membership> {
    create_within(pool, owner, name, None).await
}

/// [`create`], charged to the owner's sessions-per-day quota (`per_day`,
/// None: no limit) in the same transaction: a refused creation writes
/// nothing, a failed one costs nothing.
pub async fn create_within(
    pool: &PgPool,
    owner: &UserId,
    name: &SessionName,
    per_day: Option<u64>,
) -> Result<Membership> {
    let mut tx = pool.begin().await?;
    if let Some(limit) = per_day {
        crate::quotas::take(
            &mut tx,
            crate::quotas::Quota::UserSessionsPerDay,
            limit,
            owner.as_str(),
        )
        .await??;
    }
    let id = Uuid::now_v7();
    let membership = sqlx::query_as::<_, Membership>(
        r#"
        WITH s AS (
            INSERT INTO campaign_sessions (id, name, owner_user_id, storage_prefix)
            VALUES ($1, $2, $3, $4)
            RETURNING *
        ), m AS (
            INSERT INTO campaign_session_members (session_id, user_id, role)
            SELECT id, owner_user_id, 'owner' FROM s
            RETURNING role
        )
        SELECT s.*, m.role FROM s, m
        "#,
    )
    .bind(id)
    .bind(name.as_str())
    .bind(owner.as_str())
    .bind(storage_prefix_for(id))
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(membership)
}

/// The session as seen by `user`, or [`Error::NotFound`] if they are not a member.
pub async fn require_member<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
    user: &UserId,
) -> Result<Membership> {
    Ok(require_member_at_seq(db, id, user).await?.0)
}

/// Like [`require_member`], with the seq of the session's newest event
/// read in the same snapshot: whatever ends the membership later has a
/// higher seq (what a socket resuming past the log's end starts from).
pub async fn require_member_at_seq<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
    user: &UserId,
) -> Result<(Membership, i64)> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        membership: Membership,
        last_seq: i64,
    }
    let row = sqlx::query_as::<_, Row>(
        r#"
        SELECT s.*, m.role, s.next_event_seq - 1 AS last_seq
        FROM campaign_session_members m
        JOIN campaign_sessions s ON s.id = m.session_id
        WHERE m.session_id = $1 AND m.user_id = $2
        "#,
    )
    .bind(id)
    .bind(user.as_str())
    .fetch_optional(db)
    .await?
    .ok_or(Error::NotFound)?;
    Ok((row.membership, row.last_seq))
}

/// Like [`require_member`], but also requires the owner role.
pub async fn require_owner<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
    user: &UserId,
    action: &'static str,
) -> Result<Membership> {
    let membership = require_member(db, id, user).await?;
    if membership.role != Role::Owner {
        return Err(Error::Forbidden(action));
    }
    Ok(membership)
}

/// The sessions `user` is a member of, most recently active first.
pub async fn list_for_member(
    pool: &PgPool,
    user: &UserId,
    limit: u32,
    after: Option<Cursor>,
) -> Result<Page> {
    let limit = i64::from(limit.max(1));
    let mut items = sqlx::query_as::<_, Membership>(
        r#"
        SELECT s.*, m.role
        FROM campaign_session_members m
        JOIN campaign_sessions s ON s.id = m.session_id
        WHERE m.user_id = $1
          AND ($2::timestamptz IS NULL OR (s.last_active_at, s.id) < ($2, $3))
        ORDER BY s.last_active_at DESC, s.id DESC
        LIMIT $4
        "#,
    )
    .bind(user.as_str())
    .bind(after.map(|c| c.last_active_at))
    .bind(after.map(|c| c.id))
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    let next = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|m| Cursor {
            last_active_at: m.session.last_active_at,
            id: m.session.id,
        })
    } else {
        None
    };
    Ok(Page { items, next })
}

/// The members of a session, in the order they joined.
pub async fn members<'e>(db: impl PgExecutor<'e>, id: Uuid) -> Result<Vec<Member>> {
    Ok(sqlx::query_as::<_, Member>(
        r#"
        SELECT user_id, role, joined_at
        FROM campaign_session_members
        WHERE session_id = $1
        ORDER BY joined_at, user_id
        "#,
    )
    .bind(id)
    .fetch_all(db)
    .await?)
}

/// What an owner changes about a session (`None`: leave as is).
#[derive(Debug, Clone, Copy, Default)]
pub struct Changes<'a> {
    /// A new name (validated as [`SessionName`]).
    pub name: Option<&'a str>,
    /// What the AI game master may change on its own.
    pub ai_authority: Option<AiAuthority>,
}

/// Changes an active session's name and settings; owner only. Appends
/// `session.updated` with the session's name and AI authority. Who may act
/// is checked before the values, and the values before the session's state.
pub async fn update(
    pool: &PgPool,
    id: Uuid,
    actor: &UserId,
    changes: Changes<'_>,
) -> Result<(Membership, Event)> {
    let mut tx = pool.begin().await?;
    let current = require_owner(&mut *tx, id, actor, "only the owner can change a session").await?;
    let name = changes.name.map(SessionName::parse).transpose()?;
    if name.is_none() && changes.ai_authority.is_none() {
        return Err(Error::Invalid(
            "nothing to change: send `name` and/or `ai_authority`".into(),
        ));
    }
    if current.session.status == SessionStatus::Archived {
        return Err(Error::Conflict("the session is archived"));
    }
    let session = sqlx::query_as::<_, Session>(
        r#"
        UPDATE campaign_sessions
        SET name = coalesce($2, name), ai_authority = coalesce($3, ai_authority),
            updated_at = now()
        WHERE id = $1 AND status = 'active'
        RETURNING *
        "#,
    )
    .bind(id)
    .bind(name.as_ref().map(SessionName::as_str))
    .bind(changes.ai_authority.map(AiAuthority::as_str))
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(Error::Conflict("the session is archived"))?;
    let event = events::append(
        &mut tx,
        id,
        "session.updated",
        serde_json::json!({
            "name": session.name,
            "ai_authority": session.ai_authority,
            "by": actor.as_str(),
        }),
    )
    .await?;
    tx.commit().await?;
    Ok((
        Membership {
            session,
            role: current.role,
        },
        event,
    ))
}

/// Archives a session; owner only. Archiving an archived session is a
/// no-op; otherwise appends `session.archived`.
pub async fn archive(
    pool: &PgPool,
    id: Uuid,
    actor: &UserId,
) -> Result<(Membership, Option<Event>)> {
    let mut tx = pool.begin().await?;
    let current =
        require_owner(&mut *tx, id, actor, "only the owner can archive a session").await?;
    if current.session.status == SessionStatus::Archived {
        return Ok((current, None));
    }
    let session = sqlx::query_as::<_, Session>(
        r#"
        UPDATE campaign_sessions
        SET status = 'archived', updated_at = now()
        WHERE id = $1
        RETURNING *
        "#,
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    let event = events::append(
        &mut tx,
        id,
        "session.archived",
        serde_json::json!({ "by": actor.as_str() }),
    )
    .await?;
    tx.commit().await?;
    Ok((
        Membership {
            session,
            role: current.role,
        },
        Some(event),
    ))
}

/// Removes `target` from a session. The owner may remove anyone but
/// themself; any other member may remove only themself. Appends
/// `member.removed` (by the owner) or `member.left` (by themself).
pub async fn remove_member(pool: &PgPool, id: Uuid, actor: &UserId, target: &str) -> Result<Event> {
    let mut tx = pool.begin().await?;
    let membership = require_member(&mut *tx, id, actor).await?;
    // A string that is not a valid user id cannot name a member (and NUL
    // bytes would not even reach Postgres).
    let target = UserId::parse(target).map_err(|_| Error::NoSuchMember)?;
    let target = target.as_str();
    // Who may act comes before what the session allows: a player asking
    // to remove the owner is refused for asking, not for the owner.
    if membership.role != Role::Owner && target != actor.as_str() {
        return Err(Error::Forbidden("only the owner can remove other members"));
    }
    if target == membership.session.owner_user_id {
        return Err(Error::Conflict(
            "the owner cannot be removed from their session",
        ));
    }
    let removed = sqlx::query(
        r#"
        DELETE FROM campaign_session_members
        WHERE session_id = $1 AND user_id = $2 AND role <> 'owner'
        "#,
    )
    .bind(id)
    .bind(target)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if removed == 0 {
        return Err(Error::NoSuchMember);
    }
    let (kind, data) = if target == actor.as_str() {
        ("member.left", serde_json::json!({ "user_id": target }))
    } else {
        (
            "member.removed",
            serde_json::json!({ "user_id": target, "by": actor.as_str() }),
        )
    };
    let event = events::append(&mut tx, id, kind, data).await?;
    tx.commit().await?;
    Ok(event)
}

/// The ids of up to `limit` sessions after `after`, in id order: the pages
/// retention walks.
pub async fn page_ids(pool: &PgPool, after: Uuid, limit: i64) -> Result<Vec<Uuid>> {
    Ok(
        sqlx::query_scalar("SELECT id FROM campaign_sessions WHERE id > $1 ORDER BY id LIMIT $2")
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?,
    )
}

/// Archives those of `ids` that are active and had no activity for
/// `idle_for`, appending `session.archived` with reason `idle` to each, in
/// one statement (with `dry_run`, only counts them). Sessions being written
/// this instant are skipped: they are not idle. Returns the events (empty
/// for a dry run) and how many.
pub async fn archive_idle(
    pool: &PgPool,
    ids: &[Uuid],
    idle_for: std::time::Duration,
    dry_run: bool,
) -> Result<(Vec<Event>, u64)> {
    if dry_run {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM campaign_sessions
             WHERE id = ANY($1) AND status = 'active'
               AND last_active_at < now() - make_interval(secs => $2)",
        )
        .bind(ids)
        .bind(idle_for.as_secs_f64())
        .fetch_one(pool)
        .await?;
        return Ok((Vec::new(), count as u64));
    }
    let events: Vec<Event> = sqlx::query_as(
        "WITH idle AS (
             SELECT id FROM campaign_sessions
             WHERE id = ANY($1) AND status = 'active'
               AND last_active_at < now() - make_interval(secs => $2)
             ORDER BY id
             FOR NO KEY UPDATE SKIP LOCKED
         ),
         archived AS (
             UPDATE campaign_sessions c
             SET status = 'archived', updated_at = now(), next_event_seq = c.next_event_seq + 1
             FROM idle i WHERE c.id = i.id
             RETURNING c.id, c.next_event_seq - 1 AS seq
         )
         INSERT INTO session_events (session_id, seq, type, data)
         SELECT id, seq, 'session.archived',
                jsonb_build_object('reason', 'idle', 'by', 'questboard')
         FROM archived
         RETURNING seq, type, session_id, at, data",
    )
    .bind(ids)
    .bind(idle_for.as_secs_f64())
    .fetch_all(pool)
    .await?;
    let count = events.len() as u64;
    Ok((events, count))
}

/// Up to `limit` sessions archived more than `archived_for` ago, with their
/// storage prefixes, longest archived first: what retention deletes.
pub async fn archived_before(
    pool: &PgPool,
    archived_for: std::time::Duration,
    limit: i64,
) -> Result<Vec<(Uuid, String)>> {
    Ok(sqlx::query_as(
        "SELECT id, storage_prefix FROM campaign_sessions
         WHERE status = 'archived' AND updated_at < now() - make_interval(secs => $1)
         ORDER BY updated_at LIMIT $2",
    )
    .bind(archived_for.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// How many sessions were archived more than `archived_for` ago.
pub async fn count_archived_before(
    pool: &PgPool,
    archived_for: std::time::Duration,
) -> Result<u64> {
    let count: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM campaign_sessions
         WHERE status = 'archived' AND updated_at < now() - make_interval(secs => $1)",
    )
    .bind(archived_for.as_secs_f64())
    .fetch_one(pool)
    .await?;
    Ok(count as u64)
}

/// Deletes an archived session's row, which takes its members, invites and
/// runnable-index row with it, and its session lease. Its turns, events
/// and jobs go first, in bounded chunks (see `prune`). Returns false if it
/// was not there (or not archived).
pub async fn delete_archived(pool: &PgPool, id: Uuid) -> Result<bool> {
    let deleted: i64 = sqlx::query_scalar(
        "WITH gone AS (
             DELETE FROM campaign_sessions WHERE id = $1 AND status = 'archived' RETURNING id
         ),
         lease AS (
             DELETE FROM leases WHERE scope = 'session' AND key = $1::text
                                  AND EXISTS (SELECT 1 FROM gone)
         )
         SELECT count(*) FROM gone",
    )
    .bind(id)
    .fetch_one(pool)
    .await?;
    Ok(deleted == 1)
}

/// Which of `ids` are sessions, with their storage prefixes (for
/// reconciling storage with metadata).
pub async fn prefixes_of(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<(Uuid, String)>> {
    Ok(
        sqlx::query_as("SELECT id, storage_prefix FROM campaign_sessions WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(pool)
            .await?,
    )
}

/// Up to `limit` sessions after `after` in id order, with their storage
/// prefixes and creation times (for reconciling).
pub async fn page_prefixes(
    pool: &PgPool,
    after: Uuid,
    limit: i64,
) -> Result<Vec<(Uuid, String, DateTime<Utc>)>> {
    Ok(sqlx::query_as(
        "SELECT id, storage_prefix, created_at FROM campaign_sessions
         WHERE id > $1 ORDER BY id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let cursor = Cursor {
            last_active_at: DateTime::from_timestamp_micros(1_700_000_000_123_456)
                .unwrap_or_default(),
            id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()).ok(), Some(cursor));
        assert!(Cursor::decode("not a cursor").is_err());
        assert!(Cursor::decode(&cursor.encode().to_uppercase()).is_err());
        assert!(Cursor::decode(&"0".repeat(45)).is_err());
        // Every text of the pattern is a cursor, as the description says.
        for text in ["f".repeat(46), "0".repeat(46)] {
            assert!(Cursor::decode(&text).is_ok(), "{text}");
        }
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(
            SessionName::parse("  The Keep ").map(|n| n.0).ok(),
            Some("The Keep".into())
        );
        assert!(SessionName::parse("   ").is_err());
        assert!(SessionName::parse(&"x".repeat(MAX_NAME_CHARS + 1)).is_err());
        assert!(SessionName::parse("a\u{7}b").is_err());
    }
}
