//! Waking idle workers the moment work is enqueued, through Redis pub/sub.
//!
//! Why not Postgres `LISTEN/NOTIFY` (apalis-postgres's insert trigger)? A
//! transaction that notifies takes a cluster-wide lock at commit, held
//! through the commit's WAL flush, so every enqueue serialises behind every
//! other: on our 2-core machine a plain insert dropped from ~15,500 to
//! ~4,300 commits/s with such a trigger (pgbench, 16 clients; see
//! BENCHMARKS.md). Migration `..._wakeups` drops that trigger; the enqueuer
//! instead publishes a tiny message on [`CHANNEL`] after its commit.
//!
//! Wake-ups are hints, never the source of truth: a lost message (Redis
//! down, worker reconnecting) only means the worker finds the job on its
//! next poll (`QB_WORKER_POLL_MS`).
//!
//! The same way, [`CANCEL_CHANNEL`] tells workers at once that an operator
//! asked a running job to stop; the request itself is durable (in
//! `job_runs`), and workers also read it when they renew their job leases.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// The Redis channel announcing that jobs were enqueued; the message is the
/// job kind's name.
pub const CHANNEL: &str = "questboard:jobs:enqueued";

/// The Redis channel asking workers to stop a running job; the message is
/// the job id.
pub const CANCEL_CHANNEL: &str = "questboard:jobs:cancel";

/// Publishes wake-ups. Cheap to clone; connects lazily and reconnects by
/// itself; never blocks or fails its caller.
#[derive(Clone)]
pub struct Publisher {
    conn: Option<ConnectionManager>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl Publisher {
    /// A publisher on `client` (must be called inside a Tokio runtime).
    pub fn new(client: redis::Client) -> Self {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(2);
        let conn = match ConnectionManager::new_lazy_with_config(client, config) {
            Ok(conn) => Some(conn),
            Err(err) => {
                tracing::warn!(error = %err, "wake-ups disabled: workers will poll");
                None
            }
        };
        Self { conn }
    }

    /// A publisher that publishes nothing (workers rely on polling).
    pub fn disabled() -> Self {
        Self { conn: None }
    }

    /// Announces, in the background, that jobs of `kind` were enqueued.
    pub fn announce(&self, kind: &str) {
        self.publish(CHANNEL, kind.to_owned());
    }

    /// Tells workers, in the background, that an operator asked job
    /// `job_id` to stop.
    pub fn cancel(&self, job_id: &str) {
        self.publish(CANCEL_CHANNEL, job_id.to_owned());
    }

    fn publish(&self, channel: &'static str, message: String) {
        let Some(mut conn) = self.conn.clone() else {
            return;
        };
        tokio::spawn(async move {
            let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                .arg(channel)
                .arg(message)
                .query_async(&mut conn)
                .await;
            if let Err(err) = sent {
                tracing::debug!(error = %err, channel, "message not published; workers will poll");
            }
        });
    }
}
