//! One-time invite tokens that admit a user to a campaign session.
//!
//! A token is 256 random bits, shown once to the owner who created it and
//! stored only as its SHA-256, so neither a database dump nor a log line can
//! admit anyone. Accepting locks the invite row, so a single-use invite
//! accepted by many users at the same instant admits exactly one of them.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use rand::RngExt as _;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::events::{self, Event};
use crate::identity::UserId;
use crate::sessions::{self, Role, SessionStatus};

/// Prefix of every invite token, so a leaked one is recognisable (secret
/// scanners key on such prefixes).
pub const TOKEN_PREFIX: &str = "qbi_";
/// Default lifetime of an invite.
pub const DEFAULT_TTL: Duration = Duration::days(7);
/// Longest lifetime an invite may be given.
pub const MAX_TTL: Duration = Duration::days(90);
/// Most uses one invite may allow.
pub const MAX_USES: i32 = 1000;

/// What an owner asks for when creating an invite.
#[derive(Debug, Clone, Copy)]
pub struct NewInvite {
    /// Role granted to whoever accepts (`gm` or `player`).
    pub role: Role,
    /// How long the invite stays valid.
    pub ttl: Duration,
    /// How many users it may admit.
    pub max_uses: i32,
}

impl NewInvite {
    /// Checks the bounds; the owner role cannot be handed out.
    pub fn validate(self) -> Result<Self> {
        if self.role == Role::Owner {
            return Err(Error::Invalid(
                "an invite cannot grant the owner role".into(),
            ));
        }
        if self.ttl < Duration::seconds(1) || self.ttl > MAX_TTL {
            return Err(Error::Invalid(format!(
                "ttl_seconds must be between 1 and {}",
                MAX_TTL.num_seconds()
            )));
        }
        if !(1..=MAX_USES).contains(&self.max_uses) {
            return Err(Error::Invalid(format!(
                "max_uses must be between 1 and {MAX_USES}"
            )));
        }
        Ok(self)
    }
}

impl Default for NewInvite {
    fn default() -> Self {
        Self {
            role: Role::Player,
            ttl: DEFAULT_TTL,
            max_uses: 1,
        }
    }
}

/// A freshly created invite, with the only copy of its token.
#[derive(Debug)]
pub struct CreatedInvite {
    /// The invite id (used to revoke it).
    pub id: Uuid,
    /// The secret token; not recoverable later.
    pub token: String,
    /// The role it grants.
    pub role: Role,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
    /// How many users it may admit.
    pub max_uses: i32,
}

/// An invite as its session's owner sees it (never with the token).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Invite {
    /// The invite id.
    pub id: Uuid,
    /// The role it grants.
    pub role: Role,
    /// Who created it.
    pub created_by: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
    /// How many users it may admit.
    pub max_uses: i32,
    /// How many it has admitted.
    pub uses: i32,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The result of accepting an invite.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The session joined.
    pub session_id: Uuid,
    /// The caller's role in it (their existing role if they were a member).
    pub role: Role,
    /// True if the caller was already a member; nothing was changed.
    pub already_member: bool,
    /// The `member.joined` event, to publish after commit (None if nothing changed).
    pub event: Option<Event>,
}

/// Why an invite no longer admits anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoneReason {
    /// Every use has been taken.
    UsedUp,
    /// Past its expiry.
    Expired,
    /// Revoked by the owner.
    Revoked,
    /// Its session was archived.
    SessionArchived,
}

impl GoneReason {
    /// A short machine-readable name.
    pub fn as_str(self) -> &'static str {
        match self {
            GoneReason::UsedUp => "invite_used_up",
            GoneReason::Expired => "invite_expired",
            GoneReason::Revoked => "invite_revoked",
            GoneReason::SessionArchived => "session_archived",
        }
    }
}

/// What can go wrong with invites.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such invite (or session, for a non-member).
    #[error("not found")]
    NotFound,
    /// The invite exists but no longer admits anyone.
    #[error("the invite can no longer be used ({})", .0.as_str())]
    Gone(GoneReason),
    /// A session-level refusal (not a member, not the owner, archived).
    #[error(transparent)]
    Session(#[from] sessions::Error),
    /// The input is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The session's invite quota refused it.
    #[error(transparent)]
    Quota(#[from] crate::quotas::Refusal),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Makes a new token: [`TOKEN_PREFIX`] followed by 32 random bytes in
/// URL-safe base64 (43 characters).
pub fn generate_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The stored form of a token.
pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Creates an invite to `session_id`; owner only, active sessions only.
pub async fn create(
    pool: &PgPool,
    session_id: Uuid,
    actor: &UserId,
    new: NewInvite,
    max_live: Option<u64>,
) -> Result<CreatedInvite> {
    // Who may act, then what they asked for, then what the session allows.
    let membership =
        sessions::require_owner(pool, session_id, actor, "only the owner can invite").await?;
    let new = new.validate()?;
    if membership.session.status == SessionStatus::Archived {
        return Err(sessions::Error::Conflict("the session is archived").into());
    }
    let id = Uuid::now_v7();
    let token = generate_token();
    // Counted and written under the session row's lock: two owners'
    // requests at once cannot both take the last place.
    let mut tx = pool.begin().await?;
    // The session's quota of live invites (`QB_SESSION_MAX_INVITES`); a
    // refusal's wait is until the first of them expires.
    let (live, first_expiry): (i64, f64) = sqlx::query_as(
        r#"
        WITH locked AS (SELECT id FROM campaign_sessions WHERE id = $1 FOR NO KEY UPDATE)
        SELECT count(*),
               coalesce(extract(epoch FROM min(i.expires_at) - now()), 0)::float8
        FROM campaign_session_invites i, locked
        WHERE i.session_id = locked.id AND i.revoked_at IS NULL
          AND i.expires_at > now() AND i.uses < i.max_uses
        "#,
    )
    .bind(session_id)
    .fetch_one(&mut *tx)
    .await?;
    if let Some(max) = max_live
        && live >= i64::try_from(max).unwrap_or(i64::MAX)
    {
        let wait = std::time::Duration::from_secs_f64(first_expiry.max(1.0));
        return Err(crate::quotas::Refusal::new(
            crate::quotas::Quota::SessionMaxInvites,
            max,
            wait,
        )
        .into());
    }
    let expires_at: DateTime<Utc> = sqlx::query_scalar(
        r#"
        INSERT INTO campaign_session_invites
            (id, session_id, token_hash, role, created_by, expires_at, max_uses)
        VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6), $7)
        RETURNING expires_at
        "#,
    )
    .bind(id)
    .bind(session_id)
    .bind(hash_token(&token))
    .bind(new.role)
    .bind(actor.as_str())
    .bind(new.ttl.num_seconds() as f64)
    .bind(new.max_uses)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(CreatedInvite {
        id,
        token,
        role: new.role,
        expires_at,
        max_uses: new.max_uses,
    })
}

/// A page of a session's invites, newest first (ids are UUIDv7: that is
/// id order), with ids below `before` (the last of the previous page);
/// owner only. Returns where the next page starts, if there is one.
pub async fn list(
    pool: &PgPool,
    session_id: Uuid,
    actor: &UserId,
    limit: i64,
    before: Option<Uuid>,
) -> Result<(Vec<Invite>, Option<Uuid>)> {
    sessions::require_owner(pool, session_id, actor, "only the owner can list invites").await?;
    let mut invites = sqlx::query_as::<_, Invite>(
        r#"
        SELECT id, role, created_by, created_at, expires_at, max_uses, uses, revoked_at
        FROM campaign_session_invites
        WHERE session_id = $1 AND ($2::uuid IS NULL OR id < $2)
        ORDER BY id DESC
        LIMIT $3
        "#,
    )
    .bind(session_id)
    .bind(before)
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    let next = if invites.len() as i64 > limit {
        invites.truncate(limit as usize);
        invites.last().map(|i| i.id)
    } else {
        None
    };
    Ok((invites, next))
}

/// Revokes an invite; owner only. Revoking twice is harmless.
pub async fn revoke(
    pool: &PgPool,
    session_id: Uuid,
    actor: &UserId,
    invite_id: Uuid,
) -> Result<()> {
    sessions::require_owner(pool, session_id, actor, "only the owner can revoke invites").await?;
    let found = sqlx::query(
        r#"
        UPDATE campaign_session_invites
        SET revoked_at = coalesce(revoked_at, now())
        WHERE id = $1 AND session_id = $2
        "#,
    )
    .bind(invite_id)
    .bind(session_id)
    .execute(pool)
    .await?
    .rows_affected();
    if found == 0 {
        return Err(Error::NotFound);
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct LockedInvite {
    id: Uuid,
    session_id: Uuid,
    role: Role,
    max_uses: i32,
    uses: i32,
    revoked: bool,
    expired: bool,
    session_status: SessionStatus,
}

/// Accepts an invite for `user`.
///
/// An existing member gets their current role back and uses nothing up.
/// Otherwise the invite row is locked (`FOR UPDATE`), checked, its use
/// counted and the membership inserted in one transaction, so concurrent
/// accepts of a single-use invite admit exactly one user.
pub async fn accept(pool: &PgPool, token: &str, user: &UserId) -> Result<Accepted> {
    if !token.starts_with(TOKEN_PREFIX) || token.len() > 128 {
        return Err(Error::NotFound);
    }
    let mut tx = pool.begin().await?;
    let invite = sqlx::query_as::<_, LockedInvite>(
        r#"
        SELECT i.id, i.session_id, i.role, i.max_uses, i.uses,
               i.revoked_at IS NOT NULL AS revoked,
               i.expires_at <= now() AS expired,
               s.status AS session_status
        FROM campaign_session_invites i
        JOIN campaign_sessions s ON s.id = i.session_id
        WHERE i.token_hash = $1
        FOR UPDATE OF i
        "#,
    )
    .bind(hash_token(token))
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(Error::NotFound)?;

    if let Ok(existing) = sessions::require_member(&mut *tx, invite.session_id, user).await {
        return Ok(Accepted {
            session_id: invite.session_id,
            role: existing.role,
            already_member: true,
            event: None,
        });
    }
    let gone = if invite.revoked {
        Some(GoneReason::Revoked)
    } else if invite.session_status == SessionStatus::Archived {
        Some(GoneReason::SessionArchived)
    } else if invite.expired {
        Some(GoneReason::Expired)
    } else if invite.uses >= invite.max_uses {
        Some(GoneReason::UsedUp)
    } else {
        None
    };
    if let Some(reason) = gone {
        return Err(Error::Gone(reason));
    }

    let inserted = sqlx::query(
        r#"
        INSERT INTO campaign_session_members (session_id, user_id, role)
        VALUES ($1, $2, $3)
        ON CONFLICT (session_id, user_id) DO NOTHING
        "#,
    )
    .bind(invite.session_id)
    .bind(user.as_str())
    .bind(invite.role)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        // The same user joined through another invite a moment ago.
        tx.rollback().await?;
        let existing = sessions::require_member(pool, invite.session_id, user).await?;
        return Ok(Accepted {
            session_id: invite.session_id,
            role: existing.role,
            already_member: true,
            event: None,
        });
    }
    sqlx::query(
        "UPDATE campaign_session_invites SET uses = uses + 1, last_used_at = now() WHERE id = $1",
    )
    .bind(invite.id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE campaign_sessions SET last_active_at = now() WHERE id = $1")
        .bind(invite.session_id)
        .execute(&mut *tx)
        .await?;
    let event = events::append(
        &mut tx,
        invite.session_id,
        "member.joined",
        serde_json::json!({ "user_id": user.as_str(), "role": invite.role }),
    )
    .await?;
    tx.commit().await?;
    Ok(Accepted {
        session_id: invite.session_id,
        role: invite.role,
        already_member: false,
        event: Some(event),
    })
}

/// Deletes (or with `dry_run` counts) up to `limit` invites after id
/// `after` (in id order) that expired, were revoked, or were used up more
/// than `older_than` ago: tokens that can never admit anyone again, kept a
/// while so owners still see them listed. Returns (looked at, deleted,
/// where to go on; None once a batch came back short).
pub async fn prune(
    pool: &PgPool,
    after: Uuid,
    older_than: std::time::Duration,
    limit: i64,
    dry_run: bool,
) -> Result<(u64, u64, Option<Uuid>)> {
    let (scanned, deleted, last): (i64, i64, Option<Uuid>) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH batch AS (
                 SELECT id, expires_at, revoked_at, uses, max_uses,
                        coalesce(last_used_at, created_at) AS last_used_at
                 FROM campaign_session_invites WHERE id > $1 ORDER BY id LIMIT $2
             ),
             doomed AS (
                 SELECT id FROM batch
                 WHERE expires_at < now() - make_interval(secs => $3)
                    OR revoked_at < now() - make_interval(secs => $3)
                    OR (uses >= max_uses AND last_used_at < now() - make_interval(secs => $3))
             ),
             gone AS ({delete})
             SELECT (SELECT count(*) FROM batch), (SELECT count(*) FROM gone),
                    (SELECT id FROM batch ORDER BY id DESC LIMIT 1)",
            delete = if dry_run {
                "SELECT id FROM doomed"
            } else {
                "DELETE FROM campaign_session_invites i USING doomed d WHERE i.id = d.id
                 RETURNING i.id"
            }
        )))
        .bind(after)
        .bind(limit)
        .bind(older_than.as_secs_f64())
        .fetch_one(pool)
        .await?;
    Ok((
        scanned as u64,
        deleted as u64,
        if scanned < limit { None } else { last },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_url_safe() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 43);
        assert!(
            a[TOKEN_PREFIX.len()..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_eq!(hash_token(&a).len(), 32);
        assert_ne!(hash_token(&a), hash_token(&b));
    }

    #[test]
    fn owner_role_and_bounds_are_refused() {
        let owner = NewInvite {
            role: Role::Owner,
            ..NewInvite::default()
        };
        assert!(owner.validate().is_err());
        let short = NewInvite {
            ttl: Duration::seconds(0),
            ..NewInvite::default()
        };
        assert!(short.validate().is_err());
        let many = NewInvite {
            max_uses: 0,
            ..NewInvite::default()
        };
        assert!(many.validate().is_err());
        assert!(NewInvite::default().validate().is_ok());
    }
}
