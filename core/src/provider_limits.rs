//! Provider limits shared by every worker: requests and tokens per minute
//! against one provider, and pauses the provider asked for
//! (`provider_limits`).
//!
//! Providers limit a key, not a process: two workers that each stay under
//! the limit together exceed it. So the limit is kept in Postgres, one row
//! per provider, as a generic cell rate algorithm (GCRA, the token bucket
//! written as one timestamp): a call is allowed while the row's theoretical
//! arrival time is at most the burst tolerance ahead of the database's
//! clock, and moves it on by the call's cost, in one `UPDATE` that locks
//! the row for its few microseconds; a refused caller is told how long to
//! wait and asks again then. The burst is [`BURST_SECONDS`] worth of the
//! limit (at least one request). Tokens are charged by an estimate before
//! the call and corrected by what the provider counted after it. Within a
//! process, callers wait in line, first come first served; across
//! processes, the head of each line asks Postgres. A session runs one turn
//! at a time, so a session with thirty queued turns has one caller in line,
//! like a session with one: waiting turns are served session by session.
//!
//! A provider that answers 429 (or 503) with a time to wait is paused for
//! everyone until then: the pause is written to the row and published on
//! the bus, and every worker's [`Limiter`] holds its calls until it ends.
//! The bus is at most once: a worker that missed the message reads pauses
//! from the row when its subscription restarts, and otherwise meets the
//! provider's own 429 once and pauses then. With no limit set, a call
//! costs no statement: only the pause, known in memory, is checked.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use tokio::time::Instant;

use crate::bus::Bus;

/// How much of a limit may be spent at once: this many seconds' worth.
pub const BURST_SECONDS: f64 = 2.0;

/// The longest a refused caller sleeps before asking again.
const LONGEST_NAP: Duration = Duration::from_secs(5);

/// What one provider is allowed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// Requests per minute, across every worker (None: unlimited).
    pub requests_per_minute: Option<u32>,
    /// Tokens per minute (prompt and reply), across every worker.
    pub tokens_per_minute: Option<u32>,
}

impl Limits {
    fn any(&self) -> bool {
        self.requests_per_minute.is_some() || self.tokens_per_minute.is_some()
    }

    /// Seconds one unit costs and the tolerance, per limit (0, 0: none).
    fn cell(per_minute: Option<u32>) -> (f64, f64) {
        match per_minute {
            Some(n) if n > 0 => {
                let per_unit = 60.0 / f64::from(n);
                let burst = (f64::from(n) / 60.0 * BURST_SECONDS).max(1.0);
                (per_unit, (burst - 1.0).max(0.0) * per_unit)
            }
            _ => (0.0, f64::INFINITY),
        }
    }
}

/// Why the limiter could not answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Postgres failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// One provider's limiter in one process (cheap to share behind an `Arc`).
#[derive(Debug)]
pub struct Limiter {
    pool: PgPool,
    provider: String,
    limits: Limits,
    /// Until when the provider is paused, as this process knows it.
    paused_until: Mutex<Option<Instant>>,
    bus: Option<Bus>,
    /// The row exists and its pause was read (once, at first use).
    ready: tokio::sync::OnceCell<()>,
    /// This process's callers wait for the limit one behind the other, in
    /// the order they came (Tokio's mutex is fair): a session's next turn
    /// queues behind the turns of other sessions that were already waiting.
    line: tokio::sync::Mutex<()>,
    /// Callers waiting behind the head of the line.
    waiting: std::sync::atomic::AtomicUsize,
    /// Calls the head of the line paid for on behalf of those behind it.
    prepaid: Mutex<Prepaid>,
}

/// Calls paid for in one statement by the head of the line for the callers
/// behind it: at most a burst's worth, usable for [`PREPAID_FOR`]; what is
/// not used by then is lost (charged, never spent: the limit holds).
#[derive(Debug, Default)]
struct Prepaid {
    calls: u64,
    tokens: u64,
    until: Option<Instant>,
}

/// How long a prepaid call stays usable.
const PREPAID_FOR: Duration = Duration::from_millis(100);
/// The most calls one statement pays for.
const MOST_PREPAID: u64 = 256;

/// The bus channel a provider's pauses are published on.
pub fn channel(provider: &str) -> String {
    format!("questboard:provider:{provider}:paused")
}

impl Limiter {
    /// The limiter of `provider` (its row is created at first use); with
    /// a bus, and inside a Tokio runtime, it learns of other workers'
    /// pauses as they happen (a task that lives as long as the limiter).
    pub fn new(pool: PgPool, bus: Option<Bus>, provider: &str, limits: Limits) -> Arc<Self> {
        let limiter = Arc::new(Self {
            pool,
            provider: provider.to_owned(),
            limits,
            paused_until: Mutex::new(None),
            bus: bus.clone(),
            ready: tokio::sync::OnceCell::new(),
            line: tokio::sync::Mutex::new(()),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            prepaid: Mutex::new(Prepaid::default()),
        });
        if let (Some(bus), Ok(runtime)) = (bus, tokio::runtime::Handle::try_current()) {
            runtime.spawn(listen(Arc::downgrade(&limiter), bus));
        }
        limiter
    }

    /// What it enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Creates the row if needed and reads its pause, once.
    async fn ready(&self) -> Result<(), Error> {
        self.ready
            .get_or_try_init(|| async {
                sqlx::query(
                    "INSERT INTO provider_limits (provider) VALUES ($1) ON CONFLICT DO NOTHING",
                )
                .bind(&self.provider)
                .execute(&self.pool)
                .await?;
                self.read_pause().await
            })
            .await?;
        Ok(())
    }

    /// The provider's name.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// How much longer the provider is paused, as this process knows it
    /// (None: not paused).
    pub fn paused_for(&self) -> Option<Duration> {
        self.paused()
    }

    fn paused(&self) -> Option<Duration> {
        let until = (*self.paused_until.lock().unwrap_or_else(|p| p.into_inner()))?;
        until.checked_duration_since(Instant::now())
    }

    fn hold_until(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut paused = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        if paused.is_none_or(|p| p < until) {
            *paused = Some(until);
        }
    }

    /// Reads the row's pause (after a restart, or a lost subscription).
    async fn read_pause(&self) -> Result<(), Error> {
        let left: Option<f64> = sqlx::query_scalar(
            "SELECT extract(epoch FROM paused_until - now())::float8 FROM provider_limits
             WHERE provider = $1 AND paused_until > now()",
        )
        .bind(&self.provider)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(left) = left.filter(|s| s.is_finite() && *s > 0.0) {
            self.hold_until(Duration::from_secs_f64(left.min(86_400.0)));
        }
        Ok(())
    }

    /// Waits until a call that may cost `tokens` is allowed, and charges
    /// it; returns how long it waited. Cancel-safe: dropped while waiting,
    /// nothing was charged.
    pub async fn acquire(&self, tokens: u64) -> Result<Duration, Error> {
        let started = Instant::now();
        self.ready().await?;
        let _turn = if self.limits.any() {
            use std::sync::atomic::Ordering;
            self.waiting.fetch_add(1, Ordering::Relaxed);
            let turn = self.line.lock().await;
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            Some(turn)
        } else {
            None
        };
        loop {
            if let Some(wait) = self.paused() {
                tokio::time::sleep(wait).await;
                continue;
            }
            if !self.limits.any() || self.use_prepaid(tokens) {
                return Ok(started.elapsed());
            }
            // The head of the line pays for those behind it too, in one
            // statement, when they all fit (a limit far above the rate
            // then costs one statement per group, not per call); else
            // for itself alone.
            let behind = (self.waiting.load(std::sync::atomic::Ordering::Relaxed) as u64)
                .min(self.burst_calls().saturating_sub(1))
                .min(MOST_PREPAID);
            if behind > 0 && self.try_take(tokens, behind).await? <= 0.0 {
                let mut prepaid = self.prepaid.lock().unwrap_or_else(|p| p.into_inner());
                *prepaid = Prepaid {
                    calls: behind,
                    tokens: tokens * behind,
                    until: Some(Instant::now() + PREPAID_FOR),
                };
                return Ok(started.elapsed());
            }
            let wait = self.try_take(tokens, 0).await?;
            if wait <= 0.0 {
                return Ok(started.elapsed());
            }
            // A little spread, so refused callers do not all ask at once.
            let jitter = 1.0 + f64::from(rand_percent()) / 400.0;
            let nap = Duration::from_secs_f64((wait * jitter).min(LONGEST_NAP.as_secs_f64()));
            tokio::time::sleep(nap).await;
        }
    }

    /// Takes one of the calls paid for by an earlier head of the line, if
    /// one is left, still usable, with tokens enough.
    fn use_prepaid(&self, tokens: u64) -> bool {
        let mut prepaid = self.prepaid.lock().unwrap_or_else(|p| p.into_inner());
        let usable = prepaid.calls > 0
            && prepaid.tokens >= tokens
            && prepaid.until.is_some_and(|t| t > Instant::now());
        if usable {
            prepaid.calls -= 1;
            prepaid.tokens -= tokens;
        }
        usable
    }

    /// The calls one burst of the request limit holds (a great many when
    /// only tokens are limited).
    fn burst_calls(&self) -> u64 {
        match self.limits.requests_per_minute {
            Some(n) if n > 0 => (f64::from(n) / 60.0 * BURST_SECONDS).max(1.0) as u64,
            _ => MOST_PREPAID + 1,
        }
    }

    /// One try: charges the call (and `behind` more like it, all or none)
    /// and returns 0, or returns the seconds to wait (including the
    /// provider's pause as the row knows it).
    async fn try_take(&self, tokens: u64, behind: u64) -> Result<f64, Error> {
        let (per_request, request_tolerance) = Limits::cell(self.limits.requests_per_minute);
        let (per_token, token_tolerance) = Limits::cell(self.limits.tokens_per_minute);
        let calls = (behind + 1) as f64;
        let wait: Option<f64> = sqlx::query_scalar(
            "WITH cur AS (
                 SELECT provider, greatest(requests_tat, now()) AS rt,
                        greatest(tokens_tat, now()) AS tt, paused_until
                 FROM provider_limits WHERE provider = $1 FOR UPDATE
             ),
             verdict AS (
                 SELECT cur.*, greatest(
                     extract(epoch FROM greatest(paused_until, now()) - now())::float8,
                     extract(epoch FROM rt - now())::float8 + $7 - $3,
                     extract(epoch FROM tt - now())::float8 + $8 - $5,
                     0) AS wait
                 FROM cur
             )
             UPDATE provider_limits p
             SET requests_tat = CASE WHEN v.wait = 0
                                     THEN v.rt + make_interval(secs => $2) ELSE p.requests_tat END,
                 tokens_tat = CASE WHEN v.wait = 0
                                   THEN v.tt + make_interval(secs => $4 * $6) ELSE p.tokens_tat END
             FROM verdict v WHERE p.provider = v.provider
             RETURNING v.wait",
        )
        .bind(&self.provider)
        .bind(per_request * calls)
        .bind(finite(request_tolerance))
        .bind(per_token)
        .bind(finite(token_tolerance))
        .bind(tokens as f64 * calls)
        // The last of the calls must fit: the bucket is checked that far
        // ahead.
        .bind(per_request * (calls - 1.0))
        .bind(per_token * tokens as f64 * (calls - 1.0))
        .fetch_optional(&self.pool)
        .await?;
        Ok(wait.unwrap_or(0.0))
    }

    /// Corrects the tokens charged for a call (`estimated`) by what the
    /// provider counted (`actual`).
    pub async fn correct(&self, estimated: u64, actual: u64) -> Result<(), Error> {
        if self.limits.tokens_per_minute.is_none() || estimated == actual {
            return Ok(());
        }
        self.ready().await?;
        let (per_token, _) = Limits::cell(self.limits.tokens_per_minute);
        sqlx::query(
            "UPDATE provider_limits
             SET tokens_tat = tokens_tat + make_interval(secs => $2)
             WHERE provider = $1",
        )
        .bind(&self.provider)
        .bind((actual as f64 - estimated as f64) * per_token)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Pauses the provider for every worker for `wait` (it answered 429
    /// or 503 with that time to wait), saying `reason`.
    pub async fn pause(&self, wait: Duration, reason: &str) -> Result<(), Error> {
        let wait = wait.min(Duration::from_secs(3600));
        self.hold_until(wait);
        self.ready().await?;
        sqlx::query(
            "UPDATE provider_limits
             SET paused_until = greatest(paused_until, now() + make_interval(secs => $2)),
                 pause_reason = $3
             WHERE provider = $1",
        )
        .bind(&self.provider)
        .bind(wait.as_secs_f64())
        .bind(reason)
        .execute(&self.pool)
        .await?;
        if let Some(bus) = &self.bus {
            bus.publish_later(&channel(&self.provider), wait.as_millis().to_string());
        }
        Ok(())
    }
}

fn finite(x: f64) -> f64 {
    if x.is_finite() { x } else { 1e12 }
}

/// 0..100, from the clock's nanoseconds (spread enough for naps).
fn rand_percent() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() % 100)
}

/// Holds the limiter's calls while another worker's pause lasts: each
/// message says a pause was written, and the row is read. A lost
/// subscription is renewed and the row read again.
async fn listen(limiter: std::sync::Weak<Limiter>, bus: Bus) {
    loop {
        let Some(channel) = limiter.upgrade().map(|l| channel(&l.provider)) else {
            return;
        };
        let mut subscriber = match bus.subscriber().await {
            Ok(s) => s,
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if subscriber.subscribe(&channel).await.is_err() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        if let Some(limiter) = limiter.upgrade() {
            let _ = limiter.read_pause().await;
        }
        loop {
            let message = tokio::select! {
                message = subscriber.next() => message,
                () = tokio::time::sleep(Duration::from_secs(30)) => {
                    if limiter.strong_count() == 0 {
                        return;
                    }
                    continue;
                }
            };
            let Some(message) = message else { break };
            let Some(limiter) = limiter.upgrade() else {
                return;
            };
            // The message is a hint: the pause is read from this
            // deployment's own row (another deployment sharing the Redis
            // may pause a provider of the same name; its message then only
            // costs a read).
            let _ = message;
            if let Err(err) = limiter.read_pause().await {
                tracing::warn!(error = %err, "a provider's pause could not be read");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_becomes_a_cost_per_unit_and_a_bounded_burst() {
        let (per, tolerance) = Limits::cell(Some(600));
        assert!((per - 0.1).abs() < 1e-9);
        // 600/min for 2 s is 20 requests: 19 beyond the first.
        assert!((tolerance - 1.9).abs() < 1e-9);
        let (per, tolerance) = Limits::cell(Some(6));
        assert!((per - 10.0).abs() < 1e-9);
        assert_eq!(tolerance, 0.0, "at least one request, no more");
        assert_eq!(Limits::cell(None).0, 0.0);
        assert!(Limits::cell(None).1.is_infinite());
    }
}
