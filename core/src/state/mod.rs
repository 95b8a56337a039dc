//! The game state: one versioned JSON document per session (characters,
//! actors, items, the current encounter, plugin data) that only its game
//! master changes, through small [`ops`] checked against the version.
//!
//! Every applied update bumps `version` by one and appends a
//! `state.updated` event to the session's log in the same transaction, so it
//! reaches every member's socket in order through the one event path, and
//! the event history and resume work for it unchanged. A client applies an
//! event when its `version` is one more than what it holds, and refetches
//! otherwise. The state's row (`game_states`) is created with its session
//! (a trigger), so every session has one, at version 0.

pub mod ops;
pub mod proposal;
pub mod recent;
pub mod review;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::events::Event;
use crate::identity::UserId;
use crate::sessions::{self, Role, SessionStatus};
pub use ops::Operation;
pub use proposal::{Proposal, Refusal, Resolved, StateChange};
pub use recent::Recent;

/// The most operations one update may carry.
pub const MAX_OPERATIONS: usize = 500;
/// The default of [`Limits::max_update_bytes`].
pub const DEFAULT_MAX_UPDATE_BYTES: usize = 64 * 1024;

/// How large a state and one change to it may be (`QB_STATE_MAX_BYTES`,
/// `QB_STATE_MAX_UPDATE_BYTES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest the state may be after a change, in bytes of JSON.
    pub max_bytes: usize,
    /// The largest one update's operations may be, in bytes of JSON (as
    /// compact JSON, the way they are stored and sent to every member in
    /// the update's `state.updated` event).
    pub max_update_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 1024 * 1024,
            max_update_bytes: DEFAULT_MAX_UPDATE_BYTES,
        }
    }
}
/// The longest client-chosen update id, in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// A session's state at one version.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Snapshot {
    /// The session.
    pub session_id: Uuid,
    /// How many updates were applied to it.
    pub version: i64,
    /// When the last one was.
    pub updated_at: DateTime<Utc>,
    /// The stored document (without the server-owned keys).
    pub state: Value,
}

impl Snapshot {
    /// The document as clients see it: the stored keys plus the
    /// server-owned `stateVersion` and `lastUpdated`.
    pub fn document(&self) -> Value {
        let mut document = self.state.clone();
        if let Value::Object(map) = &mut document {
            map.insert("stateVersion".into(), json!(self.version));
            map.insert("lastUpdated".into(), json!(self.updated_at));
        }
        document
    }
}

/// Who made an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A game master (the owner or a `gm` member), through the API.
    Gm,
    /// Questboard itself (a turn's reply).
    System,
}

/// An update as a game master sends it.
#[derive(Debug, Clone, Copy)]
pub struct Update<'a> {
    /// The client's id for it, which makes it idempotent.
    pub request_id: Option<&'a str>,
    /// The version the operations were made against.
    pub version: i64,
    /// What to change, validated.
    pub operations: &'a [Operation],
    /// The largest the state may be afterwards, in bytes of JSON.
    pub max_bytes: usize,
}

/// What an update did.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The state's version after it.
    pub new_version: i64,
    /// The update's id (in its `state.updated` event).
    pub update_id: Uuid,
    /// The event to publish; None when this was a replay of an update
    /// already applied under the same request id.
    pub event: Option<Event>,
}

/// What can go wrong with the state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The session, or the membership in it, does not exist.
    #[error(transparent)]
    Session(#[from] sessions::Error),
    /// A member whose role may not change the state.
    #[error("only the game master (the owner or a gm member) can change the game state")]
    NotGameMaster,
    /// The session is archived: its state is read-only.
    #[error("the session is archived; its game state can no longer change")]
    Archived,
    /// The update was made against another version.
    #[error("the state is at version {current_version}, not {sent}; fetch it and retry")]
    VersionConflict {
        /// The state's version now.
        current_version: i64,
        /// The version the update was made against.
        sent: i64,
    },
    /// An operation (by index) or the update as a whole is not acceptable.
    #[error("{}", match .index { Some(i) => format!("operation {i}: {message}"), None => message.clone() })]
    Invalid {
        /// Which operation, if one is to blame.
        index: Option<usize>,
        /// Why.
        message: String,
    },
    /// The state would be larger than allowed.
    #[error("the state would be {bytes} bytes, over the limit of {limit}")]
    TooLarge {
        /// Its size after the update.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The request id was used before for a different update.
    #[error("this update id was already used for a different update")]
    IdReused,
    /// No such proposal in the session.
    #[error("no such proposal")]
    NoSuchProposal,
    /// The proposal was decided already (`approved`, `rejected`).
    #[error("the proposal was already {0}")]
    Decided(&'static str),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether `actor` may update the state of `session_id` at all: a member
/// who is not a game master is [`Error::NotGameMaster`], anyone else not a
/// member [`sessions::Error::NotFound`]. Used to answer a malformed update
/// for who sent it before what they sent.
pub async fn require_game_master(pool: &PgPool, session_id: Uuid, actor: &UserId) -> Result<()> {
    let membership = sessions::require_member(pool, session_id, actor).await?;
    if !matches!(membership.role, Role::Owner | Role::Gm) {
        return Err(Error::NotGameMaster);
    }
    Ok(())
}

/// Validates the operations of an update as sent (before anything is
/// read): how many, how large together (at most `max_update_bytes` of
/// compact JSON), and each one's shape.
pub fn parse_operations(raw: &[Value], max_update_bytes: usize) -> Result<Vec<Operation>> {
    if raw.is_empty() {
        return Err(Error::Invalid {
            index: None,
            message: "an update needs at least one operation".into(),
        });
    }
    if raw.len() > MAX_OPERATIONS {
        return Err(Error::Invalid {
            index: None,
            message: format!("an update carries at most {MAX_OPERATIONS} operations"),
        });
    }
    let bytes = json_len(raw);
    if bytes > max_update_bytes {
        return Err(Error::Invalid {
            index: None,
            message: format!(
                "the operations are {bytes} bytes of JSON, over the limit of {max_update_bytes} for one update: send them as several updates"
            ),
        });
    }
    raw.iter()
        .enumerate()
        .map(|(i, op)| {
            Operation::parse(op).map_err(|message| Error::Invalid {
                index: Some(i),
                message,
            })
        })
        .collect()
}

/// The length of `value` as compact JSON, counted without building it.
fn json_len(value: &(impl Serialize + ?Sized)) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Validates a client-chosen update id: 1 to [`MAX_REQUEST_ID_BYTES`]
/// printable ASCII characters.
pub fn check_request_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_REQUEST_ID_BYTES || !id.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(Error::Invalid {
            index: None,
            message: format!(
                "`id` must be 1 to {MAX_REQUEST_ID_BYTES} printable ASCII characters without spaces"
            ),
        });
    }
    Ok(())
}

/// The state of a session (for a worker building a prompt: no membership
/// check).
pub async fn read(pool: &PgPool, session_id: Uuid) -> Result<Option<Snapshot>> {
    Ok(sqlx::query_as::<_, Snapshot>(
        "SELECT session_id, version, updated_at, state FROM game_states WHERE session_id = $1",
    )
    .bind(session_id)
    .fetch_optional(pool)
    .await?)
}

/// The state of a session as seen by `user`: [`sessions::Error::NotFound`]
/// unless they are a member.
pub async fn read_as_member(pool: &PgPool, session_id: Uuid, user: &UserId) -> Result<Snapshot> {
    sqlx::query_as::<_, Snapshot>(
        "SELECT g.session_id, g.version, g.updated_at, g.state
         FROM game_states g
         JOIN campaign_session_members m ON m.session_id = g.session_id
         WHERE g.session_id = $1 AND m.user_id = $2",
    )
    .bind(session_id)
    .bind(user.as_str())
    .fetch_optional(pool)
    .await?
    .ok_or(Error::Session(sessions::Error::NotFound))
}

/// Applies a game master's update: who may act first (members only, then
/// owner and `gm`), then a replayed request id (answered as the first time,
/// nothing applied), then the lifecycle and the version, then the
/// operations, all or none.
///
/// Usually one statement: when `recent` remembers the state at the
/// update's version (this process wrote it last), the operations are
/// applied to that and the write below checks everything else. Otherwise,
/// or if that write applies nothing, two statements, no transaction: one
/// reads what the checks need (role,
/// lifecycle, state, an earlier use of the request id), then the
/// operations are applied here, then one statement writes the new state,
/// its `state.updated` event and the request id together, only if the
/// state is still at the version read and the caller still may write it.
/// If something changed in between (another update, a role, the
/// lifecycle), nothing is written and the update is checked again from the
/// start, which then refuses it with the precise reason (409 with the
/// current version for a lost race) or answers a resend that won it.
pub async fn update_as_gm(
    pool: &PgPool,
    recent: &Recent,
    session_id: Uuid,
    actor: &UserId,
    update: Update<'_>,
) -> Result<Applied> {
    let wire: Vec<ops::StateOperation> = update.operations.iter().map(Operation::wire).collect();
    // A client id comes with the hash of what it asked, to tell a resend
    // from another update reusing the id.
    let request: Option<(&str, Vec<u8>)> = update.request_id.map(|id| {
        let asked = serde_json::to_vec(&(update.version, &wire)).unwrap_or_default();
        (id, Sha256::digest(asked).to_vec())
    });
    let change = Change {
        base_version: update.version,
        operations: update.operations,
        wire: &wire,
        source: Source::Gm,
        by: actor.as_str(),
        max_bytes: update.max_bytes,
        request: request.as_ref().map(|(id, hash)| (*id, hash.as_slice())),
    };
    if let Some(document) = recent.at(session_id, update.version) {
        // A refusal here (an invalid operation) may not be the caller's
        // answer: who may act is checked first, by the path that reads.
        if let Ok(prepared) = prepare((update.version, document), &change, None)
            && let Some(applied) =
                written(pool, recent, session_id, actor, &change, prepared).await?
        {
            return Ok(applied);
        }
    }
    // Each round that writes nothing saw a change that the next one's
    // checks refuse; a third is only needed under a storm of role changes.
    let mut rounds = 0;
    loop {
        rounds += 1;
        let current = checked(pool, session_id, actor, &change).await?;
        let (version, state) = match current {
            Checked::Replay(applied) => return Ok(applied),
            Checked::Current(version, state) => (version, state),
        };
        let prepared = prepare((version, state), &change, None)?;
        match written(pool, recent, session_id, actor, &change, prepared).await? {
            Some(applied) => return Ok(applied),
            None if rounds >= 3 => {
                return Err(Error::VersionConflict {
                    current_version: version,
                    sent: change.base_version,
                });
            }
            None => {}
        }
    }
}

/// One change to apply to a state.
struct Change<'a> {
    base_version: i64,
    operations: &'a [Operation],
    wire: &'a [ops::StateOperation],
    source: Source,
    by: &'a str,
    max_bytes: usize,
    /// The client's id for the update and the hash of what it asked.
    request: Option<(&'a str, &'a [u8])>,
}

/// Writes `prepared` ([`write`]) and, if it applied, remembers the new
/// document in `recent`.
async fn written(
    pool: &PgPool,
    recent: &Recent,
    session_id: Uuid,
    actor: &UserId,
    change: &Change<'_>,
    prepared: Prepared,
) -> Result<Option<Applied>> {
    let Some(event) = write(pool, session_id, actor, change, &prepared).await? else {
        return Ok(None);
    };
    let bytes = prepared.document.len();
    recent.remember(session_id, prepared.new_version, prepared.state, bytes);
    Ok(Some(Applied {
        new_version: prepared.new_version,
        update_id: prepared.update_id,
        event: Some(event),
    }))
}

/// What the checks before an update found.
enum Checked {
    /// The request id was used before for this same update: its answer.
    Replay(Applied),
    /// The caller may write; the state's version and document.
    Current(i64, Value),
}

/// The checks of an update, on one read: membership (404), role (403), an
/// earlier use of the request id (replay, or 409 if it asked something
/// else), lifecycle (409 archived). The version is checked by [`prepare`].
async fn checked(
    pool: &PgPool,
    session_id: Uuid,
    actor: &UserId,
    change: &Change<'_>,
) -> Result<Checked> {
    #[allow(clippy::type_complexity)]
    let row: Option<(
        Role,
        SessionStatus,
        i64,
        Value,
        Option<Vec<u8>>,
        Option<Uuid>,
        Option<i64>,
    )> = sqlx::query_as(
        "SELECT m.role, s.status, g.version, g.state,
                    r.request_hash, r.update_id, r.new_version
             FROM campaign_session_members m
             JOIN campaign_sessions s ON s.id = m.session_id
             JOIN game_states g ON g.session_id = m.session_id
             LEFT JOIN game_state_requests r
                    ON r.session_id = m.session_id AND r.request_id = $3
             WHERE m.session_id = $1 AND m.user_id = $2",
    )
    .bind(session_id)
    .bind(actor.as_str())
    .bind(change.request.map(|(id, _)| id))
    .fetch_optional(pool)
    .await?;
    // A non-member has no row: 404 as for a session that does not exist.
    let Some((role, status, version, state, earlier_hash, earlier_id, earlier_version)) = row
    else {
        return Err(Error::Session(sessions::Error::NotFound));
    };
    if !matches!(role, Role::Owner | Role::Gm) {
        return Err(Error::NotGameMaster);
    }
    if let (Some((_, hash)), Some(earlier), Some(update_id), Some(new_version)) =
        (change.request, earlier_hash, earlier_id, earlier_version)
    {
        if earlier != hash {
            return Err(Error::IdReused);
        }
        return Ok(Checked::Replay(Applied {
            new_version,
            update_id,
            event: None,
        }));
    }
    if status == SessionStatus::Archived {
        return Err(Error::Archived);
    }
    Ok(Checked::Current(version, state))
}

/// A change checked and applied to a copy of the state, ready to write.
struct Prepared {
    /// The new document, as JSON text.
    document: String,
    /// The update's id.
    update_id: Uuid,
    /// The version it makes.
    new_version: i64,
    /// The `state.updated` event's data.
    data: Value,
    /// The new document.
    state: Value,
}

/// Checks the version, applies the operations to the state `current` (its
/// version and document) and checks the result.
fn prepare(
    (current_version, mut state): (i64, Value),
    change: &Change<'_>,
    turn_id: Option<Uuid>,
) -> Result<Prepared> {
    if current_version != change.base_version {
        return Err(Error::VersionConflict {
            current_version,
            sent: change.base_version,
        });
    }
    ops::apply_all(&mut state, change.operations)
        .map_err(|(index, message)| Error::Invalid { index, message })?;
    let document = serde_json::to_string(&state).map_err(|err| Error::Invalid {
        index: None,
        message: err.to_string(),
    })?;
    if document.len() > change.max_bytes {
        return Err(Error::TooLarge {
            bytes: document.len(),
            limit: change.max_bytes,
        });
    }
    let update_id = Uuid::now_v7();
    // Made against `base_version`, this update makes the next.
    let new_version = change.base_version + 1;
    let mut data = json!({
        "update_id": update_id,
        "version": new_version,
        "base_version": change.base_version,
        "operations": change.wire,
        "source": change.source,
        "by": change.by,
    });
    if let (Some(turn_id), Value::Object(map)) = (turn_id, &mut data) {
        map.insert("turn_id".into(), json!(turn_id));
    }
    Ok(Prepared {
        document,
        update_id,
        new_version,
        data,
        state,
    })
}

/// Writes a prepared game master's update in one statement: the new state
/// (only if it is still at the version the update was made against, the
/// caller is still the owner or a `gm` of a session not archived and the
/// request id, if any, was never used; the
/// row lock the `UPDATE` takes makes that check and the write one step),
/// the session's next event seq (allocated as `events::append` does, under
/// the session row's lock) and activity time, the `state.updated` event,
/// and the request id. `None`: nothing was written.
async fn write(
    pool: &PgPool,
    session_id: Uuid,
    actor: &UserId,
    change: &Change<'_>,
    prepared: &Prepared,
) -> Result<Option<Event>> {
    Ok(sqlx::query_as::<_, Event>(
        "WITH g AS (
             UPDATE game_states SET version = $3, state = $2::jsonb, updated_at = now()
             WHERE session_id = $1 AND version = $3 - 1
               AND EXISTS (
                   SELECT 1 FROM campaign_session_members m
                   JOIN campaign_sessions c ON c.id = m.session_id
                   WHERE m.session_id = $1 AND m.user_id = $8
                     AND m.role IN ('owner', 'gm') AND c.status <> 'archived'
               )
               AND ($5::text IS NULL OR NOT EXISTS (
                   SELECT 1 FROM game_state_requests q
                   WHERE q.session_id = $1 AND q.request_id = $5
               ))
             RETURNING session_id
         ),
         s AS (
             UPDATE campaign_sessions c
             SET next_event_seq = c.next_event_seq + 1, last_active_at = now()
             FROM g WHERE c.id = g.session_id
             RETURNING c.next_event_seq - 1 AS seq
         ),
         r AS (
             INSERT INTO game_state_requests (session_id, request_id, request_hash, update_id, new_version)
             SELECT $1, $5, $6, $7, $3 FROM s WHERE $5::text IS NOT NULL
         )
         INSERT INTO session_events (session_id, seq, type, data)
         SELECT $1, seq, 'state.updated', $4 FROM s
         RETURNING seq, type, session_id, at, data",
    )
    .bind(session_id)
    .bind(&prepared.document)
    .bind(prepared.new_version)
    .bind(&prepared.data)
    .bind(change.request.map(|(id, _)| id))
    .bind(change.request.map(|(_, hash)| hash))
    .bind(prepared.update_id)
    .bind(actor.as_str())
    .fetch_optional(pool)
    .await?)
}

/// Deletes up to `limit` client update ids older than `older_than` (with
/// `dry_run`, counts all of them and deletes nothing). Returns how many.
pub async fn prune_requests(
    pool: &PgPool,
    older_than: std::time::Duration,
    limit: i64,
    dry_run: bool,
) -> sqlx::Result<u64> {
    let n: i64 = if dry_run {
        sqlx::query_scalar(
            "SELECT count(*) FROM game_state_requests
             WHERE created_at < now() - make_interval(secs => $1)",
        )
        .bind(older_than.as_secs_f64())
        .fetch_one(pool)
        .await?
    } else {
        sqlx::query_scalar(
            "WITH doomed AS (
                 SELECT ctid FROM game_state_requests
                 WHERE created_at < now() - make_interval(secs => $1)
                 LIMIT $2
             ),
             gone AS (
                 DELETE FROM game_state_requests r USING doomed d
                 WHERE r.ctid = d.ctid RETURNING 1
             )
             SELECT count(*) FROM gone",
        )
        .bind(older_than.as_secs_f64())
        .bind(limit)
        .fetch_one(pool)
        .await?
    };
    Ok(n as u64)
}
