//! Keeping a worker's leases alive: one statement renews all of a scope.
//!
//! A worker may hold hundreds of session leases (one per session it
//! drains) and a job lease per plain run. Each is renewed every third of
//! its TTL by one `UPDATE` for all leases of the scope
//! ([`questboard_core::leases::renew_all`]) rather than one per lease.
//! After a renewal:
//! - session leases: the renewed sessions' place in the runnable index
//!   moves to their new expiry ([`questboard_core::turns::postpone`]), so
//!   claims keep passing them by;
//! - job leases: the jobs an operator asked to stop are read
//!   ([`questboard_core::jobs::plain::cancel_requested`]) and reported to
//!   the plain lane (the Redis message is the fast path; this is the
//!   durable one).
//!
//! A lease the database refused to renew (expired, taken over) is marked
//! lost at once; if renewing keeps failing (Postgres unreachable), every
//! lease not renewed for two thirds of its TTL is marked lost too, since
//! someone else may take it once it expires. Holders check their mark at
//! safe points; the fence refuses anything they still try to write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use questboard_core::jobs::plain;
use questboard_core::leases::{self, JOB_SCOPE, Lease, SESSION_SCOPE};
use questboard_core::turns;
use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

struct Held {
    token: i64,
    renewed: Instant,
    lost: Arc<AtomicBool>,
}

type Registry = Arc<Mutex<HashMap<String, Held>>>;

/// The leases of one scope that one worker holds, renewed in the background.
#[derive(Clone)]
pub struct Renewals {
    held: Registry,
}

impl Renewals {
    /// Starts renewing session leases for `ttl` every `ttl / 3` (inside a
    /// Tokio runtime); stops when the last clone and hold are dropped.
    pub fn sessions(pool: PgPool, ttl: Duration) -> Self {
        Self::start(pool, SESSION_SCOPE, ttl, None)
    }

    /// Starts renewing job leases; the ids of held jobs an operator asked
    /// to stop are sent to `cancelled` after each renewal.
    pub fn jobs(pool: PgPool, ttl: Duration, cancelled: mpsc::UnboundedSender<String>) -> Self {
        Self::start(pool, JOB_SCOPE, ttl, Some(cancelled))
    }

    fn start(
        pool: PgPool,
        scope: &'static str,
        ttl: Duration,
        cancelled: Option<mpsc::UnboundedSender<String>>,
    ) -> Self {
        let held: Registry = Arc::default();
        tokio::spawn(run(pool, scope, ttl, Arc::downgrade(&held), cancelled));
        Self { held }
    }

    /// Keeps `lease` alive until the returned [`Hold`] is dropped.
    pub fn hold(&self, lease: &Lease) -> Hold {
        let lost = Arc::new(AtomicBool::new(false));
        lock(&self.held).insert(
            lease.key.clone(),
            Held {
                token: lease.token,
                renewed: Instant::now(),
                lost: lost.clone(),
            },
        );
        Hold {
            key: lease.key.clone(),
            held: self.held.clone(),
            lost,
        }
    }
}

/// One lease being kept alive.
pub struct Hold {
    key: String,
    held: Registry,
    lost: Arc<AtomicBool>,
}

impl Hold {
    /// True once the lease may belong to someone else: stop working under it.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// The flag behind [`Hold::lost`], for code that outlives a borrow.
    pub fn lost_flag(&self) -> Arc<AtomicBool> {
        self.lost.clone()
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        lock(&self.held).remove(&self.key);
    }
}

fn lock(held: &Registry) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
    held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn run(
    pool: PgPool,
    scope: &'static str,
    ttl: Duration,
    held: std::sync::Weak<Mutex<HashMap<String, Held>>>,
    cancelled: Option<mpsc::UnboundedSender<String>>,
) {
    loop {
        tokio::time::sleep(ttl / 3).await;
        let Some(held) = held.upgrade() else { return };
        let batch: Vec<(String, i64)> = lock(&held)
            .iter()
            .map(|(key, h)| (key.clone(), h.token))
            .collect();
        if batch.is_empty() {
            continue;
        }
        let asked = Instant::now();
        match leases::renew_all(&pool, scope, &batch, ttl).await {
            Ok(renewed) => {
                after_renewal(&pool, scope, &renewed, cancelled.as_ref()).await;
                let renewed: std::collections::HashSet<String> =
                    renewed.into_iter().map(|(key, _)| key).collect();
                let mut held = lock(&held);
                for (key, token) in &batch {
                    let Some(h) = held.get_mut(key).filter(|h| h.token == *token) else {
                        continue;
                    };
                    if renewed.contains(key) {
                        h.renewed = asked;
                    } else if !h.lost.swap(true, Ordering::SeqCst) {
                        tracing::warn!(scope, key = %key, token, "lease lost: renewal refused");
                    }
                }
            }
            Err(err) => {
                tracing::warn!(scope, error = %err, leases = batch.len(), "renewing leases failed");
                for (key, h) in lock(&held).iter() {
                    if h.renewed.elapsed() >= ttl * 2 / 3 && !h.lost.swap(true, Ordering::SeqCst) {
                        tracing::warn!(scope, key = %key, "lease given up: not renewed for two thirds of its TTL");
                    }
                }
            }
        }
    }
}

async fn after_renewal(
    pool: &PgPool,
    scope: &str,
    renewed: &[(String, DateTime<Utc>)],
    cancelled: Option<&mpsc::UnboundedSender<String>>,
) {
    if scope == SESSION_SCOPE {
        let parked: Vec<(Uuid, DateTime<Utc>)> = renewed
            .iter()
            .filter_map(|(key, until)| Some((key.parse().ok()?, *until)))
            .collect();
        if let Err(err) = turns::postpone(pool, &parked).await {
            tracing::debug!(error = %err, "moving renewed sessions along the runnable index failed");
        }
    }
    if let Some(cancelled) = cancelled {
        let ids: Vec<String> = renewed.iter().map(|(key, _)| key.clone()).collect();
        match plain::cancel_requested(pool, &ids).await {
            Ok(stop) => {
                for id in stop {
                    let _ = cancelled.send(id);
                }
            }
            Err(err) => {
                tracing::debug!(error = %err, "reading cancellation requests failed; will retry")
            }
        }
    }
}
