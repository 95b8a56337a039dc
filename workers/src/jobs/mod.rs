//! Job handlers, one per file, and the registry that lists them.
//!
//! Every kind in `questboard_core::jobs::JobKind` has exactly one handler
//! here. Handlers are idempotent: a run may be repeated after a crash, and
//! whatever they record goes through a fenced write that applies once.

use std::sync::Arc;
use std::time::Duration;

use questboard_core::events::{Delta, EventPublisher};
use questboard_core::jobs::JobKind;
use sqlx::PgPool;

use crate::providers::{ChunkSink, ModelProvider};

pub mod turn;

/// Jobs whose runs must be serialised per campaign session, in order.
/// The runtime claims a session's lease before running any of them.
pub const SESSION_SERIAL: &[JobKind] = &[JobKind::Turn];

/// Makes the sink a turn's streamed reply flows into.
pub trait SinkFactory: Send + Sync {
    /// A sink for one turn's reply.
    fn sink(&self, session_id: uuid::Uuid, turn_id: uuid::Uuid) -> Box<dyn ChunkSink>;
}

/// Publishes each chunk as an ephemeral `turn.delta` on the session's
/// Redis channel, where the API's WebSocket bridge picks it up.
#[derive(Debug, Clone)]
pub struct PublishDeltas(pub EventPublisher);

impl SinkFactory for PublishDeltas {
    fn sink(&self, session_id: uuid::Uuid, turn_id: uuid::Uuid) -> Box<dyn ChunkSink> {
        struct Publish {
            publisher: EventPublisher,
            session_id: uuid::Uuid,
            turn_id: uuid::Uuid,
        }
        impl ChunkSink for Publish {
            fn chunk(&mut self, index: u32, text: &str) {
                metrics::counter!(questboard_core::metrics::TURN_CHUNKS_TOTAL).increment(1);
                self.publisher.delta(Delta {
                    kind: "turn.delta".into(),
                    session_id: self.session_id,
                    turn_id: self.turn_id,
                    index,
                    text: text.to_owned(),
                });
            }
        }
        Box::new(Publish {
            publisher: self.0.clone(),
            session_id,
            turn_id,
        })
    }
}

/// What every handler can use.
#[derive(Clone)]
pub struct JobContext {
    /// Postgres.
    pub pool: PgPool,
    /// The game master.
    pub provider: Arc<dyn ModelProvider>,
    /// Where streamed chunks go.
    pub sinks: Arc<dyn SinkFactory>,
    /// Publishes committed session events.
    pub events: EventPublisher,
    /// The system prompt for turns.
    pub system_prompt: Arc<str>,
    /// How many earlier exchanges a turn's prompt carries.
    pub history_window: i64,
    /// First retry delay; doubles per attempt, with jitter.
    pub backoff_base: Duration,
}
