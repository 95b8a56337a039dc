//! The bus: how questboard's processes tell each other things at once.
//!
//! Everything questboard publishes is a hint on top of Postgres, which
//! holds the truth: session events and streamed deltas (subscribers detect
//! gaps by `seq` and read what they missed, and the outbox relay publishes
//! what a writer could not), wake-ups of idle workers (they also poll) and
//! cancellations of running jobs (also read from `job_runs` when a job's
//! lease is renewed). So the bus is at-most-once by contract, and one
//! interface serves two transports:
//!
//! - [`Bus::redis`]: Redis pub/sub, for production, where the API, workers
//!   and scheduler are separate processes on separate machines.
//! - [`Bus::in_process`]: a broadcast channel inside one process, for
//!   `questboard dev` (API, worker and scheduler in one process), so a
//!   laptop needs no Redis. Oban ships the same pair (its PG and Redis
//!   notifiers next to an in-process one).
//!
//! A [`Subscriber`] ends its stream ([`Subscriber::next`] gives `None`)
//! when its transport lost messages (the Redis connection dropped, or an
//! in-process subscriber fell more than [`IN_PROCESS_BUFFER`] messages
//! behind); its owner then subscribes again and reads from Postgres
//! whatever it may have missed, exactly as after a Redis restart.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use tokio::sync::broadcast;

/// Messages an in-process subscriber may fall behind by before its stream
/// ends (and it resubscribes and reads what it missed from Postgres).
pub const IN_PROCESS_BUFFER: usize = 16_384;

/// A message on the bus.
#[derive(Debug, Clone)]
pub struct Published {
    /// The channel it was published on.
    pub channel: Arc<str>,
    /// Its bytes (JSON for session channels, a kind or a job id otherwise).
    pub payload: Bytes,
}

/// Why the bus could not do something (always worth only a log line:
/// callers fall back to Postgres).
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Redis refused or is unreachable.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// The process's bus. Cheap to clone: clones share the connection (Redis)
/// or the channel (in-process).
#[derive(Clone)]
pub struct Bus {
    transport: Transport,
}

#[derive(Clone)]
enum Transport {
    Redis {
        client: redis::Client,
        conn: ConnectionManager,
    },
    InProcess(broadcast::Sender<Published>),
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").field("kind", &self.kind()).finish()
    }
}

impl Bus {
    /// A bus on Redis at `client`, connecting lazily and reconnecting by
    /// itself (must be called inside a Tokio runtime).
    pub fn redis(client: redis::Client) -> Result<Self, BusError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        Ok(Self {
            transport: Transport::Redis { client, conn },
        })
    }

    /// A bus inside this process only.
    pub fn in_process() -> Self {
        Self {
            transport: Transport::InProcess(broadcast::channel(IN_PROCESS_BUFFER).0),
        }
    }

    /// `redis` or `in-process` (logs, readiness).
    pub fn kind(&self) -> &'static str {
        match self.transport {
            Transport::Redis { .. } => "redis",
            Transport::InProcess(_) => "in-process",
        }
    }

    /// Publishes `messages` (channel, payload) in order: one round trip on
    /// Redis.
    pub async fn publish(&self, messages: &[(String, Bytes)]) -> Result<(), BusError> {
        match &self.transport {
            Transport::Redis { conn, .. } => {
                let mut pipe = redis::pipe();
                for (channel, payload) in messages {
                    pipe.cmd("PUBLISH")
                        .arg(channel)
                        .arg(payload.as_ref())
                        .ignore();
                }
                let mut conn = conn.clone();
                pipe.query_async::<()>(&mut conn).await?;
            }
            Transport::InProcess(tx) => {
                for (channel, payload) in messages {
                    // No subscriber is not an error: nobody listens yet.
                    let _ = tx.send(Published {
                        channel: channel.as_str().into(),
                        payload: payload.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Publishes one message in the background; a failure is logged at
    /// debug level (every message on the bus is a hint).
    pub fn publish_later(&self, channel: &str, payload: impl Into<Bytes>) {
        let bus = self.clone();
        let message = [(channel.to_owned(), payload.into())];
        tokio::spawn(async move {
            if let Err(err) = bus.publish(&message).await {
                tracing::debug!(error = %err, channel = %message[0].0, "message not published; receivers fall back to polling");
            }
        });
    }

    /// A new subscriber, subscribed to nothing yet.
    pub async fn subscriber(&self) -> Result<Subscriber, BusError> {
        Ok(match &self.transport {
            Transport::Redis { client, .. } => {
                let (sink, stream) = client.get_async_pubsub().await?.split();
                Subscriber {
                    inner: SubscriberInner::Redis { sink, stream },
                }
            }
            Transport::InProcess(tx) => Subscriber {
                inner: SubscriberInner::InProcess {
                    rx: tx.subscribe(),
                    channels: HashSet::new(),
                },
            },
        })
    }

    /// Checks that the bus works (Redis answers PING; in process, always).
    pub async fn ping(&self) -> Result<(), BusError> {
        if let Transport::Redis { conn, .. } = &self.transport {
            let mut conn = conn.clone();
            redis::cmd("PING").query_async::<String>(&mut conn).await?;
        }
        Ok(())
    }
}

/// Receives the messages of the channels it subscribed to.
pub struct Subscriber {
    inner: SubscriberInner,
}

enum SubscriberInner {
    Redis {
        sink: PubSubSink,
        stream: PubSubStream,
    },
    InProcess {
        rx: broadcast::Receiver<Published>,
        channels: HashSet<String>,
    },
}

impl Subscriber {
    /// Receives `channel`'s messages from now on.
    pub async fn subscribe(&mut self, channel: &str) -> Result<(), BusError> {
        match &mut self.inner {
            SubscriberInner::Redis { sink, .. } => sink.subscribe(channel).await?,
            SubscriberInner::InProcess { channels, .. } => {
                channels.insert(channel.to_owned());
            }
        }
        Ok(())
    }

    /// Stops receiving `channel`'s messages.
    pub async fn unsubscribe(&mut self, channel: &str) -> Result<(), BusError> {
        match &mut self.inner {
            SubscriberInner::Redis { sink, .. } => sink.unsubscribe(channel).await?,
            SubscriberInner::InProcess { channels, .. } => {
                channels.remove(channel);
            }
        }
        Ok(())
    }

    /// The next message on a subscribed channel; `None` when the transport
    /// lost messages (connection dropped, fell behind): subscribe again.
    pub async fn next(&mut self) -> Option<Published> {
        match &mut self.inner {
            SubscriberInner::Redis { stream, .. } => {
                let message = stream.next().await?;
                Some(Published {
                    channel: message.get_channel_name().into(),
                    payload: Bytes::copy_from_slice(message.get_payload_bytes()),
                })
            }
            SubscriberInner::InProcess { rx, channels } => loop {
                match rx.recv().await {
                    Ok(message) if channels.contains(&*message.channel) => return Some(message),
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(
                            missed,
                            "an in-process subscriber fell behind; it resubscribes and reads what it missed"
                        );
                        return None;
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use super::*;

    #[tokio::test]
    async fn in_process_subscribers_get_their_channels_in_order_and_only_those() {
        let bus = Bus::in_process();
        let mut a = bus.subscriber().await.expect("subscriber");
        a.subscribe("one").await.expect("subscribe");
        let mut b = bus.subscriber().await.expect("subscriber");
        b.subscribe("two").await.expect("subscribe");
        bus.publish(&[
            ("one".into(), Bytes::from_static(b"1")),
            ("two".into(), Bytes::from_static(b"2")),
            ("one".into(), Bytes::from_static(b"3")),
        ])
        .await
        .expect("publish");
        let got: Vec<Bytes> = vec![
            a.next().await.expect("message").payload,
            a.next().await.expect("message").payload,
        ];
        assert_eq!(
            got,
            vec![Bytes::from_static(b"1"), Bytes::from_static(b"3")]
        );
        assert_eq!(&*b.next().await.expect("message").channel, "two");
        a.unsubscribe("one").await.expect("unsubscribe");
        a.subscribe("two").await.expect("subscribe");
        bus.publish(&[
            ("one".into(), Bytes::from_static(b"4")),
            ("two".into(), Bytes::from_static(b"5")),
        ])
        .await
        .expect("publish");
        assert_eq!(
            a.next().await.expect("message").payload,
            Bytes::from_static(b"5")
        );
    }

    #[tokio::test]
    async fn an_in_process_subscriber_that_falls_behind_is_told_to_resubscribe() {
        let bus = Bus::in_process();
        let mut slow = bus.subscriber().await.expect("subscriber");
        slow.subscribe("c").await.expect("subscribe");
        let flood: Vec<(String, Bytes)> = (0..IN_PROCESS_BUFFER + 1)
            .map(|i| ("c".to_owned(), Bytes::from(i.to_string())))
            .collect();
        bus.publish(&flood).await.expect("publish");
        assert!(slow.next().await.is_none());
    }
}
