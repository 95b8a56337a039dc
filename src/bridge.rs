//! The bridge: delivers session channels of the bus (Redis pub/sub, or in
//! process under `questboard dev`) to this API process's WebSockets.
//!
//! One bus subscriber per process. A session's channel
//! (`questboard:session:<id>:events`) is subscribed while at least one
//! local socket watches that session (reference-counted) and unsubscribed
//! when the last one leaves. Messages fan out to the session's sockets
//! through a bounded broadcast channel; a socket that falls behind it is
//! told so (and closed by its handler).
//!
//! The bus is at-most-once: after every (re)subscription the bridge
//! sends each affected socket a [`Live::Resync`], and the socket reads
//! whatever it may have missed from Postgres, so a Redis restart or a
//! message published before the subscription took effect costs latency,
//! never an event. After a lost connection (or, in process, a subscriber
//! that fell behind) the resync says so
//! (`interrupted`), and the socket tells its client (a `resync` notice).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use questboard_core::bus::Bus;
use questboard_core::events::{self, Message};
use questboard_core::metrics as m;
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

/// Messages a session's sockets can fall behind by before being closed.
pub const SESSION_BUFFER: usize = 1024;

/// What a socket receives from the bridge.
#[derive(Debug, Clone)]
pub enum Live {
    /// A message from the session's channel.
    Message(Arc<Message>),
    /// The channel was (re)subscribed: read what may have been missed.
    Resync {
        /// The connection to Redis was lost and is back: the live feed
        /// had a gap (not just a first subscription).
        interrupted: bool,
    },
}

enum Command {
    Subscribe(Uuid),
    Unsubscribe(Uuid),
}

struct Topic {
    tx: broadcast::Sender<Live>,
    refs: usize,
}

struct Inner {
    topics: Mutex<HashMap<Uuid, Topic>>,
    commands: mpsc::UnboundedSender<Command>,
}

impl Inner {
    fn send(&self, session: Uuid, live: Live) {
        let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(topic) = topics.get(&session) {
            let _ = topic.tx.send(live);
        }
    }

    fn watched(&self) -> Vec<Uuid> {
        let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        topics.keys().copied().collect()
    }

    fn is_watched(&self, session: Uuid) -> bool {
        let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        topics.contains_key(&session)
    }
}

/// The bridge. Cheap to clone.
#[derive(Clone)]
pub struct Bridge {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge").finish_non_exhaustive()
    }
}

impl Bridge {
    /// Starts the bridge's subscriber task on `bus` (inside a Tokio runtime).
    pub fn start(bus: Bus) -> Self {
        let (commands, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            topics: Mutex::new(HashMap::new()),
            commands,
        });
        tokio::spawn(run(bus, inner.clone(), rx));
        Self { inner }
    }

    /// Watches a session's channel until the subscription is dropped.
    pub fn subscribe(&self, session: Uuid) -> Subscription {
        let mut topics = self.inner.topics.lock().unwrap_or_else(|p| p.into_inner());
        let topic = topics.entry(session).or_insert_with(|| {
            let _ = self.inner.commands.send(Command::Subscribe(session));
            Topic {
                tx: broadcast::channel(SESSION_BUFFER).0,
                refs: 0,
            }
        });
        topic.refs += 1;
        Subscription {
            session,
            rx: topic.tx.subscribe(),
            inner: self.inner.clone(),
        }
    }
}

/// One socket's view of a session channel.
pub struct Subscription {
    session: Uuid,
    rx: broadcast::Receiver<Live>,
    inner: Arc<Inner>,
}

impl Subscription {
    /// The next message; `Lagged` when this socket fell too far behind.
    pub async fn recv(&mut self) -> Result<Live, broadcast::error::RecvError> {
        self.rx.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut topics = self.inner.topics.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(topic) = topics.get_mut(&self.session) {
            topic.refs -= 1;
            if topic.refs == 0 {
                topics.remove(&self.session);
                let _ = self.inner.commands.send(Command::Unsubscribe(self.session));
            }
        }
    }
}

fn session_of(channel: &str) -> Option<Uuid> {
    channel
        .strip_prefix(events::CHANNEL_PREFIX)?
        .strip_suffix(":events")?
        .parse()
        .ok()
}

async fn run(bus: Bus, inner: Arc<Inner>, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut backoff = Duration::from_millis(100);
    let mut connected_before = false;
    loop {
        match bus.subscriber().await {
            Ok(mut subscriber) => {
                let watched = inner.watched();
                let mut subscribed = true;
                for session in &watched {
                    if subscriber
                        .subscribe(&events::channel(*session))
                        .await
                        .is_err()
                    {
                        subscribed = false;
                        break;
                    }
                }
                if subscribed {
                    let interrupted = connected_before;
                    if connected_before {
                        metrics::counter!(m::REDIS_RECONNECTS_TOTAL).increment(1);
                        tracing::info!(
                            sessions = watched.len(),
                            bus = bus.kind(),
                            "bridge subscribed again"
                        );
                    }
                    connected_before = true;
                    backoff = Duration::from_millis(100);
                    for session in watched {
                        inner.send(session, Live::Resync { interrupted });
                    }
                    loop {
                        tokio::select! {
                            command = commands.recv() => match command {
                                None => return,
                                Some(Command::Subscribe(session)) => {
                                    if subscriber.subscribe(&events::channel(session)).await.is_err() {
                                        break;
                                    }
                                    inner.send(session, Live::Resync { interrupted: false });
                                }
                                Some(Command::Unsubscribe(session)) => {
                                    if !inner.is_watched(session)
                                        && subscriber.unsubscribe(&events::channel(session)).await.is_err()
                                    {
                                        break;
                                    }
                                }
                            },
                            message = subscriber.next() => match message {
                                None => break,
                                Some(message) => {
                                    let Some(session) = session_of(&message.channel) else { continue };
                                    match serde_json::from_slice::<Message>(&message.payload) {
                                        Ok(parsed) => inner.send(session, Live::Message(Arc::new(parsed))),
                                        Err(err) => tracing::warn!(error = %err, "unreadable message on a session channel"),
                                    }
                                }
                            }
                        }
                    }
                }
                tracing::warn!(
                    bus = bus.kind(),
                    "bridge lost messages from the bus; subscribing again"
                );
            }
            Err(err) => tracing::warn!(error = %err, "bridge cannot reach the bus; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
        // Subscriptions asked for meanwhile are covered by the full
        // resubscribe on reconnect.
        while commands.try_recv().is_ok() {}
    }
}
