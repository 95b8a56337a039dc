//! The model endpoints a turn may be answered by, in order: the primary
//! (`QB_LLM_PROVIDER`, `QB_LLM_BASE_URL`, ...), then the fallbacks of
//! `QB_LLM_FALLBACKS`, each an OpenAI-compatible server with its own base
//! URL, model, key and limits (its own `provider_limits` row,
//! `llm:<name>`).
//!
//! A call goes to the first endpoint that is fit to take it:
//! - one that **keeps failing** (`QB_LLM_FALLBACK_AFTER_FAILURES` failed
//!   attempts in a row: server errors, broken streams, timeouts) is left
//!   alone for `QB_LLM_FALLBACK_COOLDOWN_MS`; its failed attempt is
//!   retried as usual (the next attempt goes to the next endpoint), so
//!   clients drop the partial reply as they do for any retry;
//! - one **paused** (its provider answered 429 or 503 with a time to wait)
//!   for longer than `QB_LLM_FALLBACK_AFTER_PAUSE_MS` hands the call to
//!   the next at once, within the attempt (nothing was streamed yet).
//!
//! When every endpoint is unfit the primary is asked (a failing provider
//! may be back; a paused one is waited for). A failure that is the
//! request's own (a 400, a prompt too long) is not held against the
//! endpoint. Health is per process, like the in-memory half of the pauses:
//! each worker learns it from its own calls. The turn's `usage.provider`
//! names the endpoint that answered.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use questboard_core::provider_limits::Limiter;
use tokio::time::Instant;

use super::ModelProvider;

/// When to hand a call to the next endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FallbackSettings {
    /// Failed attempts in a row after which an endpoint is left alone.
    pub after_failures: u32,
    /// A pause longer than this hands the call to the next endpoint.
    pub after_pause: Duration,
    /// How long a failing endpoint is left alone.
    pub cooldown: Duration,
}

impl Default for FallbackSettings {
    fn default() -> Self {
        Self {
            after_failures: 3,
            after_pause: Duration::from_secs(10),
            cooldown: Duration::from_secs(60),
        }
    }
}

/// One endpoint: who answers and the limits shared by every worker.
pub struct Endpoint {
    /// The provider.
    pub provider: Arc<dyn ModelProvider>,
    /// Its limits and pauses.
    pub limiter: Arc<Limiter>,
    failures: AtomicU32,
    resting_until: Mutex<Option<Instant>>,
}

impl Endpoint {
    /// An endpoint of `provider` limited by `limiter`.
    pub fn new(provider: Arc<dyn ModelProvider>, limiter: Arc<Limiter>) -> Self {
        Self {
            provider,
            limiter,
            failures: AtomicU32::new(0),
            resting_until: Mutex::new(None),
        }
    }

    fn resting(&self) -> bool {
        let until = *self.resting_until.lock().unwrap_or_else(|p| p.into_inner());
        until.is_some_and(|t| t > Instant::now())
    }
}

/// The ordered endpoints.
pub struct Endpoints {
    list: Vec<Endpoint>,
    settings: FallbackSettings,
}

impl Endpoints {
    /// `primary`, then `fallbacks`, in order.
    pub fn new(primary: Endpoint, fallbacks: Vec<Endpoint>, settings: FallbackSettings) -> Self {
        let mut list = vec![primary];
        list.extend(fallbacks);
        Self { list, settings }
    }

    /// The primary endpoint.
    pub fn primary(&self) -> &Endpoint {
        &self.list[0]
    }

    /// Every endpoint, primary first.
    pub fn all(&self) -> &[Endpoint] {
        &self.list
    }

    /// Endpoint `index` (the primary when out of range).
    pub fn get(&self, index: usize) -> &Endpoint {
        self.list.get(index).unwrap_or(&self.list[0])
    }

    /// The endpoint to ask now, from `from` on: the first neither left
    /// alone for failing nor paused longer than the threshold; else `from`
    /// itself.
    pub fn choose(&self, from: usize) -> usize {
        (from..self.list.len())
            .find(|&i| self.fit(i))
            .unwrap_or(from.min(self.list.len() - 1))
    }

    fn fit(&self, index: usize) -> bool {
        let endpoint = &self.list[index];
        !endpoint.resting()
            && endpoint
                .limiter
                .paused_for()
                .is_none_or(|left| left <= self.settings.after_pause)
    }

    /// Whether a pause of `wait` on endpoint `index` hands the call on, and
    /// to which endpoint.
    pub fn after_pause(&self, index: usize, wait: Duration) -> Option<usize> {
        if wait <= self.settings.after_pause {
            return None;
        }
        let next = self.choose(index + 1);
        (next > index && self.fit(next)).then_some(next)
    }

    /// Records an answer from endpoint `index`.
    pub fn succeeded(&self, index: usize) {
        self.get(index).failures.store(0, Ordering::Relaxed);
    }

    /// Records a failed attempt on endpoint `index`; after the threshold in
    /// a row (and with an endpoint after it) it is left alone for the
    /// cooldown. Returns whether it now is.
    pub fn failed(&self, index: usize) -> bool {
        let endpoint = self.get(index);
        let failures = endpoint.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < self.settings.after_failures.max(1) || index + 1 >= self.list.len() {
            return false;
        }
        endpoint.failures.store(0, Ordering::Relaxed);
        *endpoint
            .resting_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + self.settings.cooldown);
        tracing::warn!(
            provider = endpoint.provider.name(),
            cooldown = ?self.settings.cooldown,
            "the model endpoint keeps failing: calls go to the next one meanwhile"
        );
        true
    }
}
