//! Waking idle workers the moment work is enqueued, through the bus
//! ([`crate::bus`]: Redis pub/sub, or in process under `questboard dev`).
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
//! down, worker reconnecting, no bus at all for the admin CLI) only means the worker finds the job on its
//! next poll (`QB_WORKER_POLL_MS`).
//!
//! The same way, [`CANCEL_CHANNEL`] tells workers at once that an operator
//! asked a running job to stop; the request itself is durable (in
//! `job_runs`), and workers also read it when they renew their job leases.

use crate::bus::Bus;

/// The channel announcing that jobs were enqueued; the message is the
/// job kind's name.
pub const CHANNEL: &str = "questboard:jobs:enqueued";

/// The channel asking workers to stop a running job; the message is
/// the job id.
pub const CANCEL_CHANNEL: &str = "questboard:jobs:cancel";

/// Publishes wake-ups. Cheap to clone; never blocks or fails its caller.
#[derive(Clone, Debug)]
pub struct Publisher {
    bus: Option<Bus>,
}

impl Publisher {
    /// A publisher on `bus`.
    pub fn new(bus: Bus) -> Self {
        Self { bus: Some(bus) }
    }

    /// A publisher that publishes nothing (workers rely on polling).
    pub fn disabled() -> Self {
        Self { bus: None }
    }

    /// Announces, in the background, that jobs of `kind` were enqueued.
    pub fn announce(&self, kind: &str) {
        if let Some(bus) = &self.bus {
            bus.publish_later(CHANNEL, kind.to_owned());
        }
    }

    /// Tells workers, in the background, that an operator asked job
    /// `job_id` to stop.
    pub fn cancel(&self, job_id: &str) {
        if let Some(bus) = &self.bus {
            bus.publish_later(CANCEL_CHANNEL, job_id.to_owned());
        }
    }
}
