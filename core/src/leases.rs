//! Leases: time-bounded, fenced ownership of a key (a campaign session, a
//! singleton like the cron scheduler) shared by any number of processes.
//!
//! A lease is a row in `leases`, acquired, renewed and released with SQL on
//! the database's clock (`clock_timestamp()`, not the frozen `now()`), so no
//! process's clock matters. Every acquisition draws a new **fencing token**
//! from a sequence that only grows. Whoever writes state guarded by a lease
//! calls [`check_fence`] in the same transaction first: a holder that lost
//! its lease (paused, partitioned, slow) has an old token and its write is
//! refused, however sure it is that it still holds the lease. Correctness
//! rests on that check, not on timing.
//!
//! Release expires the row instead of deleting it, and a crashed holder's
//! lease is simply taken over once it expires. Tokens come from one
//! sequence for every lease, so they only grow even where a row is deleted
//! (job leases end with their run; `prune` removes rows expired for a day).
//!
//! Three kinds of holder use this one helper: worker slots hold **session**
//! leases while they drain a session's turns; plain-lane runs hold **job**
//! leases ([`JOB_SCOPE`]); and singleton roles, the cron scheduler and the
//! event relay, hold a lease through [`Leadership`], which keeps it alive
//! and tells its owner the moment it may no longer act.

use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

/// The scope of per-campaign-session leases.
pub const SESSION_SCOPE: &str = "session";

/// The scope of the leases plain-lane runs hold (the key is the job id).
pub const JOB_SCOPE: &str = "job";

/// A held lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// What kind of thing is leased (`session`, `scheduler`, ...).
    pub scope: String,
    /// Which one.
    pub key: String,
    /// Who holds it.
    pub holder: String,
    /// The fencing token of this acquisition.
    pub token: i64,
    /// When it lapses unless renewed (database clock).
    pub expires_at: DateTime<Utc>,
}

/// How an acquisition came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquisition {
    /// The key was free (never leased, or released cleanly).
    Acquired,
    /// The previous holder let it expire without releasing it (it crashed,
    /// hung or was partitioned): this is a takeover.
    TakenOver,
}

impl Acquisition {
    /// A label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Acquisition::Acquired => "acquired",
            Acquisition::TakenOver => "taken_over",
        }
    }
}

/// What can go wrong with leases.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller's token is no longer the current, unexpired one: someone
    /// else holds the lease now (or it lapsed). The guarded write must not happen.
    #[error("lease {scope}/{key} is no longer held with token {token}")]
    Fenced {
        /// Scope.
        scope: String,
        /// Key.
        key: String,
        /// The stale token.
        token: i64,
    },
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn millis(ttl: Duration) -> f64 {
    ttl.as_secs_f64() * 1000.0
}

/// SQL that takes the lease of `scope` on each key of `keys` (a subquery
/// with a `key` column) for `holder` during `ttl_ms` milliseconds, where
/// the key was never leased or its lease has expired; every acquisition
/// draws a new token. All four are SQL expressions. Returns `key, token,
/// expires_at, prev_holder` per acquired key; `prev_holder` is set only
/// when an expired lease was taken over (a clean release clears `holder`).
pub fn acquire_each(scope: &str, keys: &str, holder: &str, ttl_ms: &str) -> String {
    format!(
        "INSERT INTO leases AS l (scope, key, holder, prev_holder, token, acquired_at, renewed_at,
                                 expires_at)
         SELECT {scope}, k.key, {holder}, NULL, nextval('lease_tokens'), clock_timestamp(),
                clock_timestamp(), clock_timestamp() + make_interval(secs => {ttl_ms} / 1000.0)
         FROM {keys} AS k
         ON CONFLICT (scope, key) DO UPDATE
         SET holder = EXCLUDED.holder,
             prev_holder = l.holder,
             token = EXCLUDED.token,
             acquired_at = EXCLUDED.acquired_at,
             renewed_at = EXCLUDED.renewed_at,
             expires_at = EXCLUDED.expires_at
         WHERE l.expires_at <= clock_timestamp()
         RETURNING l.key, l.token, l.expires_at, l.prev_holder"
    )
}

/// A join condition that admits the lease row `alias` only while it is
/// live with `token` (SQL expressions for scope, key and token). Writers
/// guarded by a lease join it and lock it `FOR SHARE OF {alias}`, as
/// [`check_fence`] does, in the statement that writes.
pub fn live(alias: &str, scope: &str, key: &str, token: &str) -> String {
    format!(
        "{alias}.scope = {scope} AND {alias}.key = {key} AND {alias}.token = {token}
         AND {alias}.holder IS NOT NULL AND {alias}.expires_at > clock_timestamp()"
    )
}

/// Tries to take the lease on `scope`/`key` for `ttl`. Returns `None` when
/// another holder's lease is still live.
pub async fn try_acquire<'e>(
    db: impl PgExecutor<'e>,
    scope: &str,
    key: &str,
    holder: &str,
    ttl: Duration,
) -> Result<Option<(Lease, Acquisition)>> {
    static SQL: LazyLock<String> =
        LazyLock::new(|| acquire_each("$1", "(SELECT $2::text AS key)", "$3", "$4"));
    let row: Option<(String, i64, DateTime<Utc>, Option<String>)> =
        sqlx::query_as(sqlx::AssertSqlSafe(SQL.as_str()))
            .bind(scope)
            .bind(key)
            .bind(holder)
            .bind(millis(ttl))
            .fetch_optional(db)
            .await?;
    Ok(row.map(|(key, token, expires_at, prev_holder)| {
        let how = if prev_holder.is_some() {
            Acquisition::TakenOver
        } else {
            Acquisition::Acquired
        };
        (
            Lease {
                scope: scope.to_owned(),
                key,
                holder: holder.to_owned(),
                token,
                expires_at,
            },
            how,
        )
    }))
}

/// Extends a live lease by `ttl` from now. Returns false if it is no longer
/// held with this token (expired, taken over or released).
pub async fn renew<'e>(db: impl PgExecutor<'e>, lease: &Lease, ttl: Duration) -> Result<bool> {
    let renewed = sqlx::query(
        r#"
        UPDATE leases
        SET renewed_at = clock_timestamp(),
            expires_at = clock_timestamp() + make_interval(secs => $4 / 1000.0)
        WHERE scope = $1 AND key = $2 AND token = $3
          AND holder IS NOT NULL AND expires_at > clock_timestamp()
        "#,
    )
    .bind(&lease.scope)
    .bind(&lease.key)
    .bind(lease.token)
    .bind(millis(ttl))
    .execute(db)
    .await?
    .rows_affected();
    Ok(renewed == 1)
}

/// Extends every live lease of `scope` among `held` (key, token) by `ttl`
/// from now, in one statement. Returns the keys renewed with their new
/// expiry; the others are no longer held with that token (expired, taken
/// over or released).
pub async fn renew_all<'e>(
    db: impl PgExecutor<'e>,
    scope: &str,
    held: &[(String, i64)],
    ttl: Duration,
) -> Result<Vec<(String, DateTime<Utc>)>> {
    let (keys, tokens): (Vec<&str>, Vec<i64>) = held.iter().map(|(k, t)| (k.as_str(), *t)).unzip();
    // Locks are taken in key order, as every statement that locks several
    // leases does (writers fencing a batch of sessions), so none of them
    // can deadlock with a renewal.
    Ok(sqlx::query_as(
        r#"
        WITH held AS (
            SELECT l.scope, l.key FROM leases l
            JOIN unnest($2::text[], $3::bigint[]) AS h(key, token)
              ON l.scope = $1 AND l.key = h.key AND l.token = h.token
            WHERE l.holder IS NOT NULL AND l.expires_at > clock_timestamp()
            ORDER BY l.key
            FOR NO KEY UPDATE OF l
        )
        UPDATE leases l
        SET renewed_at = clock_timestamp(),
            expires_at = clock_timestamp() + make_interval(secs => $4 / 1000.0)
        FROM held
        WHERE l.scope = held.scope AND l.key = held.key
          AND l.expires_at > clock_timestamp()
        RETURNING l.key, l.expires_at
        "#,
    )
    .bind(scope)
    .bind(keys)
    .bind(tokens)
    .bind(millis(ttl))
    .fetch_all(db)
    .await?)
}

/// Gives the lease up so the next claimant need not wait for expiry.
/// Releasing a lease that was already lost is harmless.
pub async fn release<'e>(db: impl PgExecutor<'e>, lease: &Lease) -> Result<bool> {
    let released = sqlx::query(
        r#"
        UPDATE leases
        SET holder = NULL, expires_at = clock_timestamp()
        WHERE scope = $1 AND key = $2 AND token = $3 AND holder IS NOT NULL
        "#,
    )
    .bind(&lease.scope)
    .bind(&lease.key)
    .bind(lease.token)
    .execute(db)
    .await?
    .rows_affected();
    Ok(released == 1)
}

/// The fence: succeeds only if `token` is still the live token of
/// `scope`/`key`. Call it inside the transaction that writes guarded state,
/// before the write. The row is read `FOR SHARE`, so a takeover that starts
/// meanwhile waits for this transaction to commit.
pub async fn check_fence(
    conn: &mut PgConnection,
    scope: &str,
    key: &str,
    token: i64,
) -> Result<()> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT l.token FROM leases l WHERE {} FOR SHARE",
            live("l", "$1", "$2", "$3")
        )
    });
    let live: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(SQL.as_str()))
        .bind(scope)
        .bind(key)
        .bind(token)
        .fetch_optional(&mut *conn)
        .await?;
    match live {
        Some(_) => Ok(()),
        None => Err(Error::Fenced {
            scope: scope.to_owned(),
            key: key.to_owned(),
            token,
        }),
    }
}

/// Deletes lease rows that expired more than `older_than` ago (released,
/// or abandoned by a holder that died), at most `limit`, after key
/// (`after_scope`, `after_key`) in key order. Returns how many were looked
/// at, how many went (or would, with `dry_run`), and where to go on (None
/// once a batch came back short). A deleted row is simply inserted again
/// by its next acquisition, with a new, larger token.
pub async fn prune_expired(
    pool: &sqlx::PgPool,
    after: (&str, &str),
    older_than: Duration,
    limit: i64,
    dry_run: bool,
) -> Result<(u64, u64, Option<(String, String)>)> {
    let (scanned, deleted, last_scope, last_key): (i64, i64, Option<String>, Option<String>) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "WITH batch AS (
                 SELECT scope, key, expires_at FROM leases
                 WHERE (scope, key) > ($1, $2) ORDER BY scope, key LIMIT $3
             ),
             doomed AS (
                 SELECT scope, key FROM batch
                 WHERE expires_at < clock_timestamp() - make_interval(secs => $4)
             ),
             gone AS ({delete})
             SELECT (SELECT count(*) FROM batch), (SELECT count(*) FROM gone),
                    (SELECT scope FROM batch ORDER BY scope DESC, key DESC LIMIT 1),
                    (SELECT key FROM batch ORDER BY scope DESC, key DESC LIMIT 1)",
            delete = if dry_run {
                "SELECT scope FROM doomed"
            } else {
                "DELETE FROM leases l USING doomed d
                 WHERE l.scope = d.scope AND l.key = d.key
                   AND l.expires_at < clock_timestamp() - make_interval(secs => $4)
                 RETURNING l.scope"
            }
        )))
        .bind(after.0)
        .bind(after.1)
        .bind(limit)
        .bind(older_than.as_secs_f64())
        .fetch_one(pool)
        .await?;
    let next = match (last_scope, last_key) {
        (Some(scope), Some(key)) if scanned >= limit => Some((scope, key)),
        _ => None,
    };
    Ok((scanned as u64, deleted as u64, next))
}

/// A singleton role (the cron scheduler, the event relay) that one process
/// at a time may play, under a lease of its own.
///
/// Every process that could play the role runs one: it tries to take the
/// lease every third of the TTL (and at most every second) while someone
/// else holds it, and renews it every third of the TTL while it holds it.
/// It stops leading when a renewal is refused (someone took over) or when
/// no renewal succeeded for two thirds of the TTL (Postgres unreachable:
/// another process may take the lease once it expires). Whatever the
/// leader writes on behalf of the role must be fenced by the token of
/// [`Leadership::current`] ([`check_fence`] in the writing transaction): a
/// leader that lost the lease without noticing yet is refused there.
#[derive(Debug)]
pub struct Leadership {
    current: tokio::sync::watch::Receiver<Option<Lease>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Leadership {
    /// Starts competing for `scope`/`key` as `holder` (inside a Tokio runtime).
    pub fn start(
        pool: sqlx::PgPool,
        scope: &'static str,
        key: &'static str,
        holder: String,
        ttl: Duration,
    ) -> Self {
        // From 0: the first change of leader is then an increase.
        metrics::counter!(crate::metrics::LEADER_CHANGES_TOTAL, "scope" => scope).increment(0);
        let (tx, rx) = tokio::sync::watch::channel(None);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(lead(pool, scope, key, holder, ttl, tx, stopped));
        Self {
            current: rx,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The lease while this process leads.
    pub fn current(&self) -> Option<Lease> {
        self.current.borrow().clone()
    }

    /// Changes of leadership (None: not leading).
    pub fn watch(&self) -> tokio::sync::watch::Receiver<Option<Lease>> {
        self.current.clone()
    }

    /// Stops competing and gives the lease up if held, so another process
    /// takes over at once instead of after the TTL.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn lead(
    pool: sqlx::PgPool,
    scope: &'static str,
    key: &'static str,
    holder: String,
    ttl: Duration,
    current: tokio::sync::watch::Sender<Option<Lease>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    use crate::metrics as m;
    let renew_every = ttl / 3;
    let try_every = renew_every.min(Duration::from_secs(1));
    let mut held: Option<(Lease, std::time::Instant)> = None;
    metrics::gauge!(m::LEADER, "scope" => scope).set(0.0);
    loop {
        let wait = if held.is_some() {
            renew_every
        } else {
            try_every
        };
        tokio::select! {
            _ = &mut stop => break,
            () = tokio::time::sleep(wait) => {}
        }
        let was_leading = held.is_some();
        held = match held.take() {
            Some((lease, renewed)) => match renew(&pool, &lease, ttl).await {
                Ok(true) => Some((lease, std::time::Instant::now())),
                Ok(false) => {
                    tracing::warn!(
                        scope,
                        key,
                        token = lease.token,
                        "leadership lost: renewal refused"
                    );
                    None
                }
                Err(err) if renewed.elapsed() < ttl * 2 / 3 => {
                    tracing::warn!(scope, key, error = %err, "renewing the leader lease failed; retrying");
                    Some((lease, renewed))
                }
                Err(err) => {
                    tracing::warn!(scope, key, error = %err, "leadership given up: not renewed for two thirds of its TTL");
                    None
                }
            },
            None => match try_acquire(&pool, scope, key, &holder, ttl).await {
                Ok(Some((lease, how))) => {
                    metrics::counter!(m::LEASE_ACQUISITIONS_TOTAL, "scope" => scope, "outcome" => how.as_str())
                        .increment(1);
                    tracing::info!(
                        scope,
                        key,
                        token = lease.token,
                        how = how.as_str(),
                        "leading"
                    );
                    Some((lease, std::time::Instant::now()))
                }
                Ok(None) => None,
                Err(err) => {
                    tracing::debug!(scope, key, error = %err, "trying to take the leader lease failed");
                    None
                }
            },
        };
        if held.is_some() != was_leading {
            metrics::counter!(m::LEADER_CHANGES_TOTAL, "scope" => scope).increment(1);
            metrics::gauge!(m::LEADER, "scope" => scope).set(if held.is_some() {
                1.0
            } else {
                0.0
            });
        }
        let lease = held.as_ref().map(|(lease, _)| lease.clone());
        current.send_if_modified(|now| {
            if now.as_ref().map(|l| l.token) != lease.as_ref().map(|l| l.token) {
                *now = lease;
                true
            } else {
                false
            }
        });
    }
    let _ = current.send(None);
    metrics::gauge!(m::LEADER, "scope" => scope).set(0.0);
    if let Some((lease, _)) = held {
        match release(&pool, &lease).await {
            Ok(_) => tracing::info!(scope, key, "leadership released"),
            Err(err) => {
                tracing::warn!(scope, key, error = %err, "releasing the leader lease failed; it expires by itself")
            }
        }
    }
}
