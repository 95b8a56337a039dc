//! The batched pipeline primitives against real Postgres and Redis: a
//! submission batch refuses items one by one and numbers the rest in order;
//! a batch of worker steps applies the live ones and writes nothing for a
//! step whose lease is gone; a release that races a submission keeps the
//! session in line; committed events left in the outbox are published by
//! the relay and cleared, and so are events the publisher sent.

use std::time::Duration;

use futures::StreamExt as _;
use questboard_core::events::{self, EventPublisher};
use questboard_core::identity::UserId;
use questboard_core::leases;
use questboard_core::sessions::{self, SessionName};
use questboard_core::turns::{self, NewTurn, Release, Settle, Step, TurnStatus};
use questboard_core::usage::TokenUsage;
use uuid::Uuid;

use crate::helpers::{TestDb, redis_url};

fn user(name: &str) -> UserId {
    UserId::parse(name).expect("user")
}

async fn session(db: &TestDb, owner: &UserId) -> Uuid {
    let name = SessionName::parse("Batch").expect("name");
    sessions::create(&db.pool, owner, &name)
        .await
        .expect("session")
        .session
        .id
}

fn new<'a>(session_id: Uuid, author: &'a UserId, input: &'a str) -> NewTurn<'a> {
    NewTurn {
        session_id,
        author,
        input,
        idempotency_key: None,
        max_attempts: 3,
    }
}

async fn status(db: &TestDb, turn: Uuid) -> String {
    sqlx::query_scalar("SELECT status FROM turns WHERE id = $1")
        .bind(turn)
        .fetch_one(&db.pool)
        .await
        .expect("turn")
}

#[tokio::test]
async fn a_submission_batch_refuses_items_one_by_one_and_numbers_the_rest_in_order() {
    let db = TestDb::create().await;
    let (alice, mallory) = (user("alice"), user("mallory"));
    let open = session(&db, &alice).await;
    let archived = session(&db, &alice).await;
    sessions::archive(&db.pool, archived, &alice)
        .await
        .expect("archive");

    let keyed = |input: &'static str, key: &'static str| NewTurn {
        idempotency_key: Some(key),
        ..new(open, &alice, input)
    };
    let batch = vec![
        new(open, &alice, "first"),
        keyed("second", "k"),
        new(open, &mallory, "not a member"),
        keyed("second", "k"),
        new(archived, &alice, "too late"),
        keyed("something else", "k"),
        new(Uuid::new_v4(), &alice, "no such session"),
        new(open, &alice, "third"),
    ];
    let outcomes = turns::submit_many(&db.pool, &batch, Default::default())
        .await
        .expect("batch");
    assert_eq!(outcomes.len(), batch.len());

    let accepted = |i: usize| outcomes[i].as_ref().expect("accepted");
    assert_eq!(
        (
            accepted(0).turn.seq,
            accepted(1).turn.seq,
            accepted(7).turn.seq
        ),
        (1, 2, 3),
        "accepted turns of one session are numbered in batch order"
    );
    assert!(accepted(0).created && accepted(1).created && accepted(7).created);
    assert!(
        accepted(0).event.is_some(),
        "a new turn has its turn.queued"
    );
    // The same key and text later in the batch is a replay of the same turn.
    assert!(!accepted(3).created);
    assert_eq!(accepted(3).turn.id, accepted(1).turn.id);
    assert!(accepted(3).event.is_none());
    assert!(matches!(outcomes[5], Err(turns::Error::KeyReused)));
    for refused in [2, 4, 6] {
        assert!(
            matches!(outcomes[refused], Err(turns::Error::Session(_))),
            "item {refused}: {:?}",
            outcomes[refused].as_ref().map(|s| s.turn.seq)
        );
    }

    // Exactly the accepted turns were written, with one turn.queued each,
    // and the session counters moved by exactly that much.
    let stored: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, input FROM turns WHERE session_id = $1 ORDER BY seq")
            .bind(open)
            .fetch_all(&db.pool)
            .await
            .expect("turns");
    assert_eq!(
        stored,
        vec![
            (1, "first".to_owned()),
            (2, "second".to_owned()),
            (3, "third".to_owned())
        ]
    );
    let queued: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM session_events WHERE session_id = $1 AND type = 'turn.queued'",
    )
    .bind(open)
    .fetch_one(&db.pool)
    .await
    .expect("events");
    assert_eq!(queued, 3);
    let untouched: i64 = sqlx::query_scalar("SELECT count(*) FROM turns WHERE session_id = $1")
        .bind(archived)
        .fetch_one(&db.pool)
        .await
        .expect("turns");
    assert_eq!(untouched, 0);

    // Replaying the whole batch creates nothing new.
    let again = turns::submit_many(&db.pool, &batch[1..2], Default::default())
        .await
        .expect("batch");
    let replay = again[0].as_ref().expect("replay");
    assert!(!replay.created);
    assert_eq!(replay.turn.id, accepted(1).turn.id);
}

#[tokio::test]
async fn a_batch_of_steps_applies_the_live_ones_and_nothing_of_a_fenced_out_one() {
    let db = TestDb::create().await;
    let alice = user("alice");
    let (a, b) = (session(&db, &alice).await, session(&db, &alice).await);
    let ta = turns::submit(&db.pool, new(a, &alice, "in A"))
        .await
        .expect("submit")
        .turn;
    let tb = turns::submit(&db.pool, new(b, &alice, "in B"))
        .await
        .expect("submit")
        .turn;

    let claimed = turns::claim(&db.pool, "w1", Duration::from_secs(30), 10, 10, 5)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 2, "both sessions are runnable");
    let lease = |s: Uuid| {
        claimed
            .iter()
            .find(|(c, _)| c.session_id == s)
            .expect("claimed")
            .0
            .lease
            .clone()
    };
    let (la, lb) = (lease(a), lease(b));
    // A's lease is lost (released here; a takeover looks the same to it).
    assert!(leases::release(&db.pool, &la).await.expect("release"));

    let steps = vec![
        Step {
            start: Some((ta.id, ta.job_id.clone())),
            ..Step::new(a, &la)
        },
        Step {
            start: Some((tb.id, tb.job_id.clone())),
            ..Step::new(b, &lb)
        },
    ];
    let outcomes = turns::advance(&db.pool, &steps).await.expect("advance");
    assert!(!outcomes[0].fenced_in, "A's holder lost its lease");
    assert_eq!(outcomes[0].attempt, None);
    assert!(outcomes[0].events.is_empty());
    assert!(outcomes[1].fenced_in);
    assert_eq!(outcomes[1].attempt, Some(1));
    assert_eq!(
        outcomes[1]
            .events
            .iter()
            .map(|e| e.kind.as_str())
            .collect::<Vec<_>>(),
        ["turn.started"]
    );
    assert_eq!(status(&db, ta.id).await, "queued");
    assert_eq!(status(&db, tb.id).await, "running");
    let a_events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM session_events WHERE session_id = $1 AND type <> 'turn.queued'",
    )
    .bind(a)
    .fetch_one(&db.pool)
    .await
    .expect("events");
    assert_eq!(a_events, 0, "the fenced-out step appended nothing");

    // Settling the same turn twice records the reply once.
    let settle = |output: &str| Step {
        settle: Some((
            tb.id,
            tb.job_id.clone(),
            Settle::Completed {
                output: output.to_owned(),
                state: None,
                images: Vec::new(),
                usage: Some(TokenUsage {
                    provider: "openai".into(),
                    model: "m".into(),
                    prompt_tokens: 120,
                    completion_tokens: 30,
                    limiter_wait_ms: 0,
                    estimated: false,
                }),
            },
        )),
        ..Step::new(b, &lb)
    };
    let first = turns::advance(&db.pool, &[settle("the reply")])
        .await
        .expect("advance");
    assert!(first[0].settled);
    let second = turns::advance(&db.pool, &[settle("a second reply")])
        .await
        .expect("advance");
    assert!(second[0].fenced_in && !second[0].settled);
    assert!(second[0].events.is_empty());
    let output: Option<String> = sqlx::query_scalar("SELECT output FROM turns WHERE id = $1")
        .bind(tb.id)
        .fetch_one(&db.pool)
        .await
        .expect("turn");
    assert_eq!(output.as_deref(), Some("the reply"));
    // Its usage is on the turn and counted once in the day's sums, under
    // the turn's author.
    let usage: Option<serde_json::Value> =
        sqlx::query_scalar("SELECT usage FROM turns WHERE id = $1")
            .bind(tb.id)
            .fetch_one(&db.pool)
            .await
            .expect("turn");
    assert_eq!(
        usage,
        Some(serde_json::json!({"provider": "openai", "model": "m",
                                "prompt_tokens": 120, "completion_tokens": 30}))
    );
    let counted: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT u.user_id, u.turns, u.prompt_tokens, u.completion_tokens
         FROM usage_daily u WHERE u.session_id = $1",
    )
    .bind(b)
    .fetch_all(&db.pool)
    .await
    .expect("usage");
    let author: String = sqlx::query_scalar("SELECT author_user_id FROM turns WHERE id = $1")
        .bind(tb.id)
        .fetch_one(&db.pool)
        .await
        .expect("author");
    assert_eq!(counted, [(author, 1, 120, 30)]);
    let job: String = sqlx::query_scalar("SELECT status FROM apalis.jobs WHERE id = $1")
        .bind(&tb.job_id)
        .fetch_one(&db.pool)
        .await
        .expect("job");
    assert_eq!(job, "Done");
}

#[tokio::test]
async fn a_release_racing_a_submission_keeps_the_session_in_line() {
    let db = TestDb::create().await;
    // On purpose: its second turn is settled as failed.
    db.expect_failed_jobs();
    let alice = user("alice");
    let s = session(&db, &alice).await;
    let first = turns::submit(&db.pool, new(s, &alice, "one"))
        .await
        .expect("submit")
        .turn;
    let ttl = Duration::from_secs(30);
    let claimed = turns::claim(&db.pool, "w1", ttl, 10, 10, 5)
        .await
        .expect("claim");
    let (claim, backlog) = &claimed[0];
    assert_eq!(backlog.turns.len(), 1);
    let lease = claim.lease.clone();
    turns::advance(
        &db.pool,
        &[Step {
            start: Some((first.id, first.job_id.clone())),
            ..Step::new(s, &lease)
        }],
    )
    .await
    .expect("start");

    // While the worker runs turn 1 (and believes it is the last), a player
    // submits turn 2.
    let second = turns::submit(&db.pool, new(s, &alice, "two"))
        .await
        .expect("submit")
        .turn;
    assert_eq!(second.seq, 2);

    let done = turns::advance(
        &db.pool,
        &[Step {
            settle: Some((
                first.id,
                first.job_id.clone(),
                Settle::Completed {
                    output: "answer".to_owned(),
                    state: None,
                    images: Vec::new(),
                    usage: None,
                },
            )),
            release: Some(Release {
                done_through: first.seq,
                ready_at: None,
            }),
            ..Step::new(s, &lease)
        }],
    )
    .await
    .expect("settle and release");
    assert!(done[0].settled);
    assert!(
        !done[0].retired,
        "turn 2 arrived: the session stays in line"
    );

    // Another worker picks the session up again, from turn 2.
    let next = turns::claim(&db.pool, "w2", ttl, 10, 10, 5)
        .await
        .expect("claim");
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].0.from_seq, 2);
    assert_eq!(
        next[0].1.turns.iter().map(|t| t.seq).collect::<Vec<_>>(),
        [2]
    );
    assert_eq!(
        next[0]
            .1
            .history
            .iter()
            .map(|e| e.output.as_str())
            .collect::<Vec<_>>(),
        ["answer"]
    );

    // Without a new submission, the release takes the session out of line.
    let lease = next[0].0.lease.clone();
    let finished = turns::advance(
        &db.pool,
        &[Step {
            start: Some((second.id, second.job_id.clone())),
            ..Step::new(s, &lease)
        }],
    )
    .await
    .expect("start");
    assert_eq!(finished[0].attempt, Some(1));
    let finished = turns::advance(
        &db.pool,
        &[Step {
            settle: Some((
                second.id,
                second.job_id.clone(),
                Settle::Failed {
                    reason: "no".to_owned(),
                },
            )),
            release: Some(Release {
                done_through: second.seq,
                ready_at: None,
            }),
            ..Step::new(s, &lease)
        }],
    )
    .await
    .expect("settle and release");
    assert!(finished[0].retired);
    let in_line: i64 = sqlx::query_scalar("SELECT count(*) FROM session_queue")
        .fetch_one(&db.pool)
        .await
        .expect("queue");
    assert_eq!(in_line, 0);
    assert_eq!(
        turns::list(&db.pool, s, 0, 10)
            .await
            .expect("list")
            .into_iter()
            .map(|t| t.status)
            .collect::<Vec<_>>(),
        [TurnStatus::Completed, TurnStatus::Failed]
    );
}

async fn outbox(db: &TestDb) -> Vec<(Uuid, i64, i64)> {
    sqlx::query_as("SELECT session_id, from_seq, to_seq FROM event_outbox ORDER BY session_id")
        .fetch_all(&db.pool)
        .await
        .expect("outbox")
}

#[tokio::test]
async fn committed_events_stay_in_the_outbox_until_published_then_are_cleared() {
    let db = TestDb::create().await;
    let alice = user("alice");
    let s = session(&db, &alice).await;
    let client = redis::Client::open(redis_url()).expect("redis url");
    let mut pubsub = client.get_async_pubsub().await.expect("redis");
    pubsub
        .subscribe(events::channel(s))
        .await
        .expect("subscribe");

    // Three turns in one batch: one statement, one outbox range.
    let author = alice.clone();
    let batch: Vec<NewTurn<'_>> = ["a", "b", "c"]
        .into_iter()
        .map(|input| new(s, &author, input))
        .collect();
    for outcome in turns::submit_many(&db.pool, &batch, Default::default())
        .await
        .expect("batch")
    {
        outcome.expect("accepted");
    }
    let pending = outbox(&db).await;
    assert_eq!(pending.len(), 1, "{pending:?}");
    let (_, from, to) = pending[0];
    assert_eq!(to - from, 2, "one range of three events");

    // Nobody published them (as if the API died after commit): the relay does.
    let bus = questboard_core::bus::Bus::redis(client.clone()).expect("redis");
    // The relay acts only under its leader lease, which fences its writes.
    let (lease, _) = questboard_core::leases::try_acquire(
        &db.pool,
        events::RELAY_LEASE.0,
        events::RELAY_LEASE.1,
        "test-relay",
        Duration::from_secs(30),
    )
    .await
    .expect("lease")
    .expect("free");
    let published = events::relay_once(&db.pool, &bus, &lease, Duration::ZERO, 100)
        .await
        .expect("relay");
    assert_eq!(published, 3);
    assert!(outbox(&db).await.is_empty(), "published ranges are cleared");
    let mut messages = pubsub.on_message();
    let mut seqs = Vec::new();
    for _ in 0..3 {
        let message = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("published in time")
            .expect("message");
        let payload: serde_json::Value =
            serde_json::from_str(&message.get_payload::<String>().expect("text")).expect("json");
        seqs.push(payload["seq"].as_i64().expect("seq"));
    }
    assert_eq!(seqs, [from, from + 1, to]);
    drop(messages);
    // Nothing left: a second relay pass publishes nothing.
    assert_eq!(
        events::relay_once(&db.pool, &bus, &lease, Duration::ZERO, 100)
            .await
            .expect("relay"),
        0
    );

    // Events the publisher sends after commit leave the outbox without the relay.
    let publisher = EventPublisher::start(bus, db.pool.clone());
    let submitted = turns::submit(&db.pool, new(s, &alice, "d"))
        .await
        .expect("submit");
    assert_eq!(outbox(&db).await.len(), 1);
    publisher.events(submitted.event);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !outbox(&db).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the publisher never cleared its range"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
