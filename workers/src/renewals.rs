//! Keeping a worker's session leases alive: one statement renews them all.
//!
//! A worker may hold hundreds of session leases at once. Each is renewed
//! every third of its TTL, as before, but by one `UPDATE` for all of them
//! ([`questboard_core::leases::renew_all`]) rather than one per lease; a
//! second one moves the renewed sessions' place in the runnable index to
//! their new expiry ([`questboard_core::turns::postpone`]), so claims keep
//! passing them by. A lease the database refused to renew (expired, taken
//! over) is marked lost at once; if renewing keeps failing (Postgres
//! unreachable), every lease not renewed for two thirds of its TTL is
//! marked lost too, since someone else may take it once it expires. A
//! drain checks its mark before each turn; the fence refuses anything it
//! still tries to write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use questboard_core::leases::{self, Lease, SESSION_SCOPE};
use questboard_core::turns;
use sqlx::PgPool;
use uuid::Uuid;

struct Held {
    token: i64,
    renewed: Instant,
    lost: Arc<AtomicBool>,
}

type Registry = Arc<Mutex<HashMap<String, Held>>>;

/// The session leases one worker holds, renewed in the background.
#[derive(Clone)]
pub struct Renewals {
    held: Registry,
}

impl Renewals {
    /// Starts renewing session leases for `ttl` every `ttl / 3` (inside a
    /// Tokio runtime); stops when the last clone and hold are dropped.
    pub fn start(pool: PgPool, ttl: Duration) -> Self {
        let held: Registry = Arc::default();
        tokio::spawn(run(pool, ttl, Arc::downgrade(&held)));
        Self { held }
    }

    /// Keeps the session lease `lease` alive until the returned [`Hold`] is
    /// dropped.
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
}

impl Drop for Hold {
    fn drop(&mut self) {
        lock(&self.held).remove(&self.key);
    }
}

fn lock(held: &Registry) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
    held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn run(pool: PgPool, ttl: Duration, held: std::sync::Weak<Mutex<HashMap<String, Held>>>) {
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
        match leases::renew_all(&pool, SESSION_SCOPE, &batch, ttl).await {
            Ok(renewed) => {
                let parked: Vec<(Uuid, DateTime<Utc>)> = renewed
                    .iter()
                    .filter_map(|(key, until)| Some((key.parse().ok()?, *until)))
                    .collect();
                if let Err(err) = turns::postpone(&pool, &parked).await {
                    tracing::debug!(error = %err, "moving renewed sessions along the runnable index failed");
                }
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
                        tracing::warn!(key = %key, token, "lease lost: renewal refused");
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, leases = batch.len(), "renewing leases failed");
                for (key, h) in lock(&held).iter() {
                    if h.renewed.elapsed() >= ttl * 2 / 3 && !h.lost.swap(true, Ordering::SeqCst) {
                        tracing::warn!(key = %key, "lease given up: not renewed for two thirds of its TTL");
                    }
                }
            }
        }
    }
}
