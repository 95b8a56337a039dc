//! The sockets-per-user quota across API processes: a row per open socket
//! in `live_sockets`, so a user's sockets are counted wherever they are
//! held.
//!
//! Opening counts the user's live rows under a transaction-scoped advisory
//! lock on the user (two opens at once cannot both take the last place)
//! and inserts one; the [`Slot`] deletes it when the socket ends. Each
//! process touches its rows every [`TOUCH`]; a row not touched for
//! [`STALE`] belongs to a process that died without closing its sockets
//! and no longer counts (and is deleted by the next process to sweep).

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::{Quota, Refusal};

/// How often a process marks its sockets as still open.
pub const TOUCH: Duration = Duration::from_secs(30);
/// How long a socket row counts without being touched.
pub const STALE: Duration = Duration::from_secs(90);

/// This process's open sockets, as the quota counts them. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Sockets {
    pool: PgPool,
    process: String,
}

impl Sockets {
    /// Starts touching this process's rows (inside a Tokio runtime; the
    /// task ends with the runtime).
    pub fn start(pool: PgPool) -> Self {
        let process = Uuid::now_v7().to_string();
        let sockets = Sockets { pool, process };
        let touching = sockets.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TOUCH);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(err) = touching.touch().await {
                    tracing::warn!(error = %err, "live sockets could not be touched");
                }
            }
        });
        sockets
    }

    async fn touch(&self) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE live_sockets SET seen_at = now() WHERE process = $1")
            .bind(&self.process)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM live_sockets WHERE seen_at < now() - make_interval(secs => $1)")
            .bind(STALE.as_secs_f64())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Takes a place for one more socket of `user` under `limit` (None: not
    /// counted at all); the refusal when they hold `limit` already.
    pub async fn open(
        &self,
        user: &str,
        limit: Option<u64>,
    ) -> Result<Result<Option<Slot>, Refusal>, sqlx::Error> {
        let Some(limit) = limit else {
            return Ok(Ok(None));
        };
        let mut tx = self.pool.begin().await?;
        let (open,): (i64,) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM live_sockets
                     WHERE user_id = $1 AND seen_at > now() - make_interval(secs => $2))
             FROM (SELECT pg_advisory_xact_lock(hashtextextended('live_sockets:' || $1, 0))) l",
        )
        .bind(user)
        .bind(STALE.as_secs_f64())
        .fetch_one(&mut *tx)
        .await?;
        if open >= i64::try_from(limit).unwrap_or(i64::MAX) {
            return Ok(Err(Refusal::new(
                Quota::UserMaxSockets,
                limit,
                super::SOCKETS_RETRY,
            )));
        }
        let id = Uuid::now_v7();
        sqlx::query("INSERT INTO live_sockets (id, user_id, process) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(user)
            .bind(&self.process)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Ok(Some(Slot {
            pool: self.pool.clone(),
            id,
        })))
    }
}

/// One open socket's place; gives it back when dropped.
#[derive(Debug)]
pub struct Slot {
    pool: PgPool,
    id: Uuid,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (pool, id) = (self.pool.clone(), self.id);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(err) = sqlx::query("DELETE FROM live_sockets WHERE id = $1")
                    .bind(id)
                    .execute(&pool)
                    .await
                {
                    tracing::warn!(error = %err, "a closed socket's row stays until it is stale");
                }
            });
        }
    }
}
