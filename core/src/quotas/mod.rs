//! Members' quotas and budgets: what one player, or one session, may ask
//! of the platform (and so of the paid providers behind it), checked where
//! the request is written.
//!
//! Each [`Quota`] has a default from the environment (generous; 0 turns it
//! off) that operators may override at run time (`quota_settings`, through
//! `/api/admin/quotas`, audited). Every process reads the overrides at
//! start and again every [`REFRESH`]; the process that made a change uses
//! it at once.
//!
//! Three shapes of limit:
//! - **rates** (turns per user per minute, media per user per hour,
//!   sessions per user per day): a generic cell rate algorithm per user
//!   and quota, one timestamp in `quota_buckets` (the same algorithm as
//!   [`crate::provider_limits`], with the whole period as the burst: a
//!   player may take ten turns at once under a limit of ten a minute, then
//!   one every six seconds). The bucket is moved in the transaction that
//!   writes what it pays for, so a refused or failed request costs nothing
//!   and a replayed one is not charged again.
//! - **counts** (queued turns per session, live invites per session,
//!   sockets per user): counted under the lock that serialises such
//!   writes.
//! - **daily token budgets** (per session, per user): what `usage_daily`
//!   says was spent this UTC day; a turn is refused once the budget is
//!   spent. A turn accepted before that still runs, so a budget can be
//!   passed by the turns queued when it ran out.
//!
//! A refusal is a [`Refusal`]: which quota, its limit and when asking
//! again may succeed (the API answers 429 with `Retry-After`).

pub mod sockets;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;

/// How often a process reads the operators' overrides again.
pub const REFRESH: Duration = Duration::from_secs(5);

/// `Retry-After` of a full queue: a turn of the session will likely have
/// finished by then.
pub const QUEUE_FULL_RETRY: Duration = Duration::from_secs(5);

/// `Retry-After` of a socket refused for too many: about as long as a
/// closed socket's row takes to be forgotten when its process died.
pub const SOCKETS_RETRY: Duration = Duration::from_secs(30);

/// What a member may ask of the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Quota {
    /// Turns one user may submit per minute, across sessions.
    UserTurnsPerMinute,
    /// Turns waiting or running in one session.
    SessionMaxQueuedTurns,
    /// Generated media one user may ask for per hour (by request, or by
    /// the images a reply to their turn asks for).
    UserMediaPerHour,
    /// Sessions one user may create per day.
    UserSessionsPerDay,
    /// Invites of one session not yet used, revoked or expired.
    SessionMaxInvites,
    /// Session sockets one user may hold open at once.
    UserMaxSockets,
    /// Tokens one session may spend per UTC day.
    SessionDailyTokens,
    /// Tokens one user's turns may spend per UTC day.
    UserDailyTokens,
}

impl Quota {
    /// Every quota, in the order operators see them.
    pub const ALL: [Quota; 8] = [
        Quota::UserTurnsPerMinute,
        Quota::SessionMaxQueuedTurns,
        Quota::UserMediaPerHour,
        Quota::UserSessionsPerDay,
        Quota::SessionMaxInvites,
        Quota::UserMaxSockets,
        Quota::SessionDailyTokens,
        Quota::UserDailyTokens,
    ];

    /// The name in the API, the settings table and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Quota::UserTurnsPerMinute => "user_turns_per_minute",
            Quota::SessionMaxQueuedTurns => "session_max_queued_turns",
            Quota::UserMediaPerHour => "user_media_per_hour",
            Quota::UserSessionsPerDay => "user_sessions_per_day",
            Quota::SessionMaxInvites => "session_max_invites",
            Quota::UserMaxSockets => "user_max_sockets",
            Quota::SessionDailyTokens => "session_daily_tokens",
            Quota::UserDailyTokens => "user_daily_tokens",
        }
    }

    /// The quota of a name.
    pub fn parse(name: &str) -> Option<Quota> {
        Quota::ALL.into_iter().find(|q| q.name() == name)
    }

    /// The environment variable of its default.
    pub fn env(self) -> &'static str {
        match self {
            Quota::UserTurnsPerMinute => "QB_USER_TURNS_PER_MINUTE",
            Quota::SessionMaxQueuedTurns => "QB_SESSION_MAX_QUEUED_TURNS",
            Quota::UserMediaPerHour => "QB_USER_MEDIA_PER_HOUR",
            Quota::UserSessionsPerDay => "QB_USER_SESSIONS_PER_DAY",
            Quota::SessionMaxInvites => "QB_SESSION_MAX_INVITES",
            Quota::UserMaxSockets => "QB_USER_MAX_SOCKETS",
            Quota::SessionDailyTokens => "QB_SESSION_DAILY_TOKENS",
            Quota::UserDailyTokens => "QB_USER_DAILY_TOKENS",
        }
    }

    /// The built-in default: generous, for a person playing.
    pub fn built_in(self) -> u64 {
        match self {
            Quota::UserTurnsPerMinute => 60,
            Quota::SessionMaxQueuedTurns => 100,
            Quota::UserMediaPerHour => 120,
            Quota::UserSessionsPerDay => 50,
            Quota::SessionMaxInvites => 100,
            Quota::UserMaxSockets => 20,
            Quota::SessionDailyTokens => 2_000_000,
            Quota::UserDailyTokens => 5_000_000,
        }
    }

    /// The error code of a refusal.
    pub fn code(self) -> &'static str {
        match self {
            Quota::UserTurnsPerMinute | Quota::UserMediaPerHour | Quota::UserSessionsPerDay => {
                "rate_limited"
            }
            Quota::SessionMaxQueuedTurns => "queue_full",
            Quota::SessionMaxInvites | Quota::UserMaxSockets => "limit_reached",
            Quota::SessionDailyTokens | Quota::UserDailyTokens => "budget_exhausted",
        }
    }

    /// For rates: the period the limit is counted over.
    pub fn period(self) -> Option<Duration> {
        match self {
            Quota::UserTurnsPerMinute => Some(Duration::from_secs(60)),
            Quota::UserMediaPerHour => Some(Duration::from_secs(3600)),
            Quota::UserSessionsPerDay => Some(Duration::from_secs(86_400)),
            _ => None,
        }
    }

    /// What it limits, for people.
    pub fn describe(self) -> &'static str {
        match self {
            Quota::UserTurnsPerMinute => "turns one user may submit per minute, across sessions",
            Quota::SessionMaxQueuedTurns => "turns waiting or running in one session",
            Quota::UserMediaPerHour => {
                "generated images and narrations one user may ask for per hour"
            }
            Quota::UserSessionsPerDay => "sessions one user may create per day",
            Quota::SessionMaxInvites => "invites of one session not yet used or expired",
            Quota::UserMaxSockets => "session sockets one user may hold open at once",
            Quota::SessionDailyTokens => "model tokens one session may spend per UTC day",
            Quota::UserDailyTokens => "model tokens one user's turns may spend per UTC day",
        }
    }

    fn index(self) -> usize {
        Quota::ALL.iter().position(|q| *q == self).unwrap_or(0)
    }
}

/// The largest value an operator may set a quota to (0 turns it off).
pub const MAX_VALUE: u64 = 1_000_000_000_000;

/// A value for every quota (0: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Values([u64; 8]);

impl Default for Values {
    fn default() -> Self {
        Values(Quota::ALL.map(Quota::built_in))
    }
}

impl Values {
    /// Every quota off.
    pub fn unlimited() -> Self {
        Values([0; 8])
    }

    /// The limit of `quota`, None when off.
    pub fn limit(&self, quota: Quota) -> Option<u64> {
        Some(self.0[quota.index()]).filter(|v| *v > 0)
    }

    /// Sets `quota` (0: off).
    pub fn set(&mut self, quota: Quota, value: u64) {
        self.0[quota.index()] = value;
    }

    /// The limits a turn submission checks.
    pub fn turns(&self) -> TurnQuotas {
        TurnQuotas {
            per_minute: self.limit(Quota::UserTurnsPerMinute),
            queued: self.limit(Quota::SessionMaxQueuedTurns),
            session_tokens: self.limit(Quota::SessionDailyTokens),
            user_tokens: self.limit(Quota::UserDailyTokens),
        }
    }
}

/// The limits a turn submission checks (None: off).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TurnQuotas {
    /// Turns per user per minute.
    pub per_minute: Option<u64>,
    /// Turns waiting or running per session.
    pub queued: Option<u64>,
    /// Tokens per session per UTC day.
    pub session_tokens: Option<u64>,
    /// Tokens per user per UTC day.
    pub user_tokens: Option<u64>,
}

impl TurnQuotas {
    /// Whether any is on.
    pub fn any(&self) -> bool {
        *self != TurnQuotas::default()
    }
}

/// A request a quota refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// Which quota.
    pub quota: Quota,
    /// Its limit.
    pub limit: u64,
    /// When asking again may succeed.
    pub retry_after: Duration,
    /// What to tell the member.
    pub message: String,
}

impl Refusal {
    /// A refusal of `quota` at `limit`.
    pub fn new(quota: Quota, limit: u64, retry_after: Duration) -> Self {
        let message = match quota {
            Quota::UserTurnsPerMinute => {
                format!("you may submit {limit} turns a minute; wait before the next")
            }
            Quota::SessionMaxQueuedTurns => format!(
                "this session already has {limit} turns waiting; wait for the game master to catch up"
            ),
            Quota::UserMediaPerHour => {
                format!("you may ask for {limit} images or narrations an hour")
            }
            Quota::UserSessionsPerDay => format!("you may create {limit} sessions a day"),
            Quota::SessionMaxInvites => format!(
                "this session already has {limit} open invites; revoke one or wait for one to expire"
            ),
            Quota::UserMaxSockets => format!("you already have {limit} session sockets open"),
            Quota::SessionDailyTokens => format!(
                "this session has spent today's budget of {limit} model tokens; it renews at midnight UTC"
            ),
            Quota::UserDailyTokens => format!(
                "you have spent today's budget of {limit} model tokens; it renews at midnight UTC"
            ),
        };
        crate::metrics::quota_refused(quota.name());
        Refusal {
            quota,
            limit,
            retry_after: retry_after.max(Duration::from_secs(1)),
            message,
        }
    }

    /// Whole seconds for `Retry-After` (at least 1, rounded up).
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.retry_after;
        d.as_secs() + u64::from(d.subsec_nanos() > 0)
    }
}

/// The time left in the UTC day of `now`: when daily budgets renew.
pub fn until_midnight(now: DateTime<Utc>) -> Duration {
    let tomorrow = now
        .date_naive()
        .succ_opt()
        .and_then(|d| d.and_hms_opt(0, 0, 0));
    tomorrow
        .map(|t| t.and_utc() - now)
        .and_then(|d| d.to_std().ok())
        .unwrap_or(Duration::from_secs(1))
}

/// The fraction of a daily budget past which the spend is counted as near
/// exhaustion (`questboard_budget_warnings_total`).
pub const NEAR_EXHAUSTION: f64 = 0.8;

/// Whether `spent` of `budget` is past [`NEAR_EXHAUSTION`].
pub fn near_exhaustion(spent: i64, budget: u64) -> bool {
    budget > 0 && spent as f64 >= budget as f64 * NEAR_EXHAUSTION
}

/// The quotas in force in this process: the environment's defaults with
/// the operators' overrides. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Quotas {
    defaults: Values,
    current: Arc<RwLock<Values>>,
}

impl Quotas {
    /// Quotas with `defaults` and no overrides read yet.
    pub fn new(defaults: Values) -> Self {
        Quotas {
            defaults,
            current: Arc::new(RwLock::new(defaults)),
        }
    }

    /// Quotas read from the database now, then every [`REFRESH`] by a
    /// background task (inside a Tokio runtime) while a clone lives.
    pub async fn load(pool: &PgPool, defaults: Values) -> Result<Self, sqlx::Error> {
        let quotas = Quotas::new(defaults);
        quotas.refresh(pool).await?;
        quotas.keep_fresh(pool);
        Ok(quotas)
    }

    /// Quotas with `defaults`, the overrides read in the background at
    /// once and every [`REFRESH`] (for callers that cannot wait; needs a
    /// Tokio runtime, else the defaults stay).
    pub fn start(pool: &PgPool, defaults: Values) -> Self {
        let quotas = Quotas::new(defaults);
        quotas.keep_fresh(pool);
        quotas
    }

    fn keep_fresh(&self, pool: &PgPool) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(&self.current);
        let (pool, defaults) = (pool.clone(), self.defaults);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            loop {
                tick.tick().await;
                let Some(current) = weak.upgrade() else {
                    return;
                };
                let this = Quotas { defaults, current };
                if let Err(err) = this.refresh(&pool).await {
                    tracing::warn!(error = %err, "quota settings could not be read; keeping the last");
                }
            }
        });
    }

    /// Reads the overrides again.
    pub async fn refresh(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT name, value FROM quota_settings")
            .fetch_all(pool)
            .await?;
        let mut values = self.defaults;
        for (name, value) in rows {
            if let Some(quota) = Quota::parse(&name) {
                values.set(quota, u64::try_from(value).unwrap_or(0));
            }
        }
        if let Ok(mut current) = self.current.write() {
            *current = values;
        }
        Ok(())
    }

    /// The values in force.
    pub fn values(&self) -> Values {
        self.current.read().map(|v| *v).unwrap_or(self.defaults)
    }

    /// The limit of `quota` in force, None when off.
    pub fn limit(&self, quota: Quota) -> Option<u64> {
        self.values().limit(quota)
    }

    /// Every quota as operators see it.
    pub async fn list(&self, pool: &PgPool) -> Result<Vec<Setting>, sqlx::Error> {
        let rows: Vec<(String, i64, String, DateTime<Utc>)> =
            sqlx::query_as("SELECT name, value, updated_by, updated_at FROM quota_settings")
                .fetch_all(pool)
                .await?;
        Ok(Quota::ALL
            .into_iter()
            .map(|quota| {
                let over = rows.iter().find(|r| r.0 == quota.name());
                let default = self.defaults.0[quota.index()];
                Setting {
                    name: quota,
                    value: over.map_or(default, |r| u64::try_from(r.1).unwrap_or(0)),
                    default,
                    env: quota.env(),
                    code: quota.code(),
                    description: quota.describe(),
                    overridden: over.is_some(),
                    updated_by: over.map(|r| r.2.clone()),
                    updated_at: over.map(|r| r.3),
                }
            })
            .collect())
    }

    /// Overrides `quota` with `value` (0: off), or goes back to the default
    /// (None); in force here at once, elsewhere within [`REFRESH`].
    pub async fn set(
        &self,
        pool: &PgPool,
        quota: Quota,
        value: Option<u64>,
        by: &str,
    ) -> Result<(), sqlx::Error> {
        match value {
            Some(value) => {
                sqlx::query(
                    "INSERT INTO quota_settings (name, value, updated_by) VALUES ($1, $2, $3)
                     ON CONFLICT (name) DO UPDATE
                     SET value = EXCLUDED.value, updated_by = EXCLUDED.updated_by,
                         updated_at = now()",
                )
                .bind(quota.name())
                .bind(i64::try_from(value).unwrap_or(i64::MAX))
                .bind(by)
                .execute(pool)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM quota_settings WHERE name = $1")
                    .bind(quota.name())
                    .execute(pool)
                    .await?;
            }
        }
        self.refresh(pool).await
    }
}

/// One quota as operators see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Setting {
    /// The quota.
    pub name: Quota,
    /// In force (0: no limit).
    pub value: u64,
    /// The default from the environment (or built in).
    pub default: u64,
    /// The variable that sets the default.
    pub env: &'static str,
    /// The error code of its refusals.
    pub code: &'static str,
    /// What it limits.
    pub description: &'static str,
    /// Whether an operator overrode the default.
    pub overridden: bool,
    /// Who overrode it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_by: Option<String>,
    /// When.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
}

/// The bucket key of a rate `quota` for `subject`.
pub fn bucket_key(quota: Quota, subject: &str) -> String {
    format!("{}:{subject}", quota.name())
}

/// One unit of a rate of `limit` per `period`, in seconds.
fn interval_secs(limit: u64, period: Duration) -> f64 {
    period.as_secs_f64() / limit as f64
}

/// Takes one unit of the rate `quota` (at `limit`) for `subject`, in the
/// caller's transaction (a rollback gives it back). Rates only.
pub async fn take(
    tx: &mut sqlx::PgConnection,
    quota: Quota,
    limit: u64,
    subject: &str,
) -> Result<Result<(), Refusal>, sqlx::Error> {
    let period = quota.period().unwrap_or(Duration::from_secs(60));
    let interval = interval_secs(limit, period);
    // The bucket allows a call while its theoretical arrival time, moved by
    // the call, stays within one period of now.
    let taken: Option<(f64,)> = sqlx::query_as(
        "INSERT INTO quota_buckets AS b (key, tat)
         VALUES ($1, now() + make_interval(secs => $2))
         ON CONFLICT (key) DO UPDATE
         SET tat = greatest(b.tat, now()) + make_interval(secs => $2)
         WHERE greatest(b.tat, now()) + make_interval(secs => $2) <= now() + make_interval(secs => $3)
         RETURNING 0::float8",
    )
    .bind(bucket_key(quota, subject))
    .bind(interval)
    .bind(period.as_secs_f64())
    .fetch_optional(&mut *tx)
    .await?;
    if taken.is_some() {
        return Ok(Ok(()));
    }
    let (wait,): (f64,) = sqlx::query_as(
        "SELECT greatest(extract(epoch FROM tat - now())::float8 + $2 - $3, 0)
         FROM quota_buckets WHERE key = $1",
    )
    .bind(bucket_key(quota, subject))
    .bind(interval)
    .bind(period.as_secs_f64())
    .fetch_one(&mut *tx)
    .await?;
    Ok(Err(Refusal::new(
        quota,
        limit,
        Duration::from_secs_f64(wait.clamp(0.0, period.as_secs_f64())),
    )))
}

/// Where a user's rate bucket stands, read (and locked) for a batch of
/// turn submissions.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    /// Its theoretical arrival time (None: never used).
    pub tat: Option<DateTime<Utc>>,
}

impl Bucket {
    /// Takes one unit at `now` if it fits; else how long until it would.
    pub fn take(
        &mut self,
        now: DateTime<Utc>,
        limit: u64,
        period: Duration,
    ) -> Result<(), Duration> {
        let interval =
            chrono::Duration::from_std(Duration::from_secs_f64(interval_secs(limit, period)))
                .unwrap_or(chrono::Duration::MAX);
        let period = chrono::Duration::from_std(period).unwrap_or(chrono::Duration::MAX);
        let next = self.tat.map_or(now, |tat| tat.max(now)) + interval;
        if next - now <= period {
            self.tat = Some(next);
            Ok(())
        } else {
            Err((next - period - now).to_std().unwrap_or(Duration::ZERO))
        }
    }
}

/// Whether `spent` tokens leave anything of a daily `budget`; else the
/// refusal (renewing at midnight UTC).
pub fn budget_left(
    quota: Quota,
    budget: u64,
    spent: i64,
    now: DateTime<Utc>,
) -> Result<(), Refusal> {
    if spent >= i64::try_from(budget).unwrap_or(i64::MAX) {
        Err(Refusal::new(quota, budget, until_midnight(now)))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_allows_its_whole_period_at_once_then_one_per_interval() {
        let now = Utc::now();
        let mut bucket = Bucket { tat: None };
        for _ in 0..10 {
            assert!(bucket.take(now, 10, Duration::from_secs(60)).is_ok());
        }
        let wait = bucket.take(now, 10, Duration::from_secs(60));
        assert_eq!(wait.map_err(|w| w.as_secs()), Err(6));
        let later = now + chrono::Duration::seconds(6);
        assert!(bucket.take(later, 10, Duration::from_secs(60)).is_ok());
        assert!(bucket.take(later, 10, Duration::from_secs(60)).is_err());
    }

    #[test]
    fn budgets_renew_at_midnight_utc() {
        let Ok(at) = "2026-12-07T23:59:30Z".parse::<DateTime<Utc>>() else {
            panic!("a time");
        };
        assert_eq!(until_midnight(at), Duration::from_secs(30));
        assert!(budget_left(Quota::UserDailyTokens, 100, 100, at).is_err());
        assert!(budget_left(Quota::UserDailyTokens, 100, 99, at).is_ok());
        assert!(near_exhaustion(80, 100) && !near_exhaustion(79, 100));
    }

    #[test]
    fn names_round_trip() {
        for quota in Quota::ALL {
            assert_eq!(Quota::parse(quota.name()), Some(quota));
            assert!(quota.env().starts_with("QB_"));
        }
        assert_eq!(Values::unlimited().limit(Quota::UserMaxSockets), None);
        assert_eq!(Values::default().limit(Quota::UserTurnsPerMinute), Some(60));
    }
}
