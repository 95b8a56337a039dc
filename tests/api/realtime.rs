//! Realtime delivery end to end: the durable event log, the Redis bridge
//! between API processes, session-scoped WebSockets that resume without
//! gaps, a Redis restart, and removal of a member's socket. What one API
//! process can show runs twice ([`on_both_buses`]): on Redis and on the
//! in-process bus of `questboard dev`.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::helpers::{TestApp, WsItem, free_port};

const WAIT: Duration = Duration::from_secs(30);

/// Tests `$name::redis` and `$name::in_process`: the async fn `$name`
/// (taking the app) run on an app whose bus is Redis, then on one whose bus
/// is inside the test process (`REDIS_URL` unset, as under `questboard dev`).
macro_rules! on_both_buses {
    ($name:ident) => {
        mod $name {
            use crate::helpers::TestApp;

            #[tokio::test]
            async fn redis() {
                super::$name(TestApp::spawn().await).await;
            }

            #[tokio::test]
            async fn in_process() {
                let app = TestApp::spawn_with(|c| c.redis_url = None).await;
                assert_eq!(app.bus.kind(), "in-process");
                super::$name(app).await;
            }
        }
    };
}

on_both_buses!(a_member_sees_turns_live_with_deltas_and_idle_workers_wake_at_once);
on_both_buses!(reconnecting_with_after_seq_gets_exactly_the_missed_events_then_live_ones);
on_both_buses!(a_removed_members_socket_is_closed_at_once);
on_both_buses!(a_client_that_cannot_keep_up_is_closed_with_4008);
on_both_buses!(a_client_reconnecting_every_second_or_two_assembles_the_whole_log);

/// One API process, one worker that polls only once a minute: the turns
/// start at once only if the wake-up reaches it over the bus, and the
/// socket sees every event and the streamed chunks over the bus.
async fn a_member_sees_turns_live_with_deltas_and_idle_workers_wake_at_once(app: TestApp) {
    let session = app.session_with("alice", &["bob"]).await;
    let worker = app
        .worker(|c| {
            c.scripted_latency_ms = 20;
            c.worker_poll_ms = 60_000;
        })
        .await;
    let mut socket = app.ws("alice", &session, None).await.expect("socket");
    // The worker subscribes, then polls once at start: let it, so the
    // turns below can only be found through their wake-ups.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..2 {
        let resp = app.submit("bob", &session, &format!("turn {i}")).await;
        assert_eq!(resp.status, 202, "{}", resp.text);
    }
    let received = socket
        .collect_until(WAIT, |m| completed_turns(m) == 2)
        .await;
    let events = durable(&received);
    assert_gap_free(&events, 1);
    assert_chunks_spell_the_replies(&received, &events);
    assert_eq!(app.events("alice", &session, 0).await, events);
    worker.stop().await;
}

fn durable(messages: &[Value]) -> Vec<Value> {
    messages
        .iter()
        .filter(|m| m.get("seq").is_some())
        .cloned()
        .collect()
}

fn completed_turns(messages: &[Value]) -> usize {
    messages
        .iter()
        .filter(|m| m["type"] == "turn.completed")
        .count()
}

/// Each completed turn among `events` streamed several chunks in
/// `received`, which joined by index spell its recorded reply.
fn assert_chunks_spell_the_replies(received: &[Value], events: &[Value]) {
    for done in events.iter().filter(|e| e["type"] == "turn.completed") {
        let id = &done["data"]["turn_id"];
        let mut deltas: Vec<&Value> = received
            .iter()
            .filter(|m| m["type"] == "turn.delta" && &m["turn_id"] == id)
            .collect();
        assert!(deltas.len() > 1, "expected several chunks for turn {id}");
        deltas.sort_by_key(|d| d["index"].as_u64());
        let text: String = deltas.iter().filter_map(|d| d["text"].as_str()).collect();
        assert_eq!(Some(text.as_str()), done["data"]["output"].as_str());
    }
}

/// Every durable event is the next seq: no gap, no duplicate.
fn assert_gap_free(events: &[Value], first: i64) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e["seq"].as_i64(),
            Some(first + i as i64),
            "gap or duplicate at {i}: {events:#?}"
        );
    }
}

#[tokio::test]
async fn sockets_are_refused_before_the_upgrade() {
    let app = TestApp::spawn().await;
    let session = app.create_session("alice", "Sockets").await;
    assert_eq!(
        app.ws("mallory", &session, None).await.err(),
        Some(404),
        "non-member"
    );
    let missing = uuid::Uuid::now_v7().to_string();
    assert_eq!(
        app.ws("alice", &missing, None).await.err(),
        Some(404),
        "no such session"
    );

    let url = format!("ws://{}/ws/sessions/{session}", app.addr);
    let no_token = url.clone().into_client_request().expect("request");
    assert_eq!(app.ws_request(no_token).await.err(), Some(401));
    let mut bad = url.clone().into_client_request().expect("request");
    bad.headers_mut().insert(
        "authorization",
        "Bearer not-a-token".parse().expect("header"),
    );
    assert_eq!(app.ws_request(bad).await.err(), Some(401));
    let bad_query = format!("{url}?access_token=not-a-token")
        .into_client_request()
        .expect("request");
    assert_eq!(app.ws_request(bad_query).await.err(), Some(401));
    let bad_id = format!("ws://{}/ws/sessions/not-a-uuid", app.addr)
        .into_client_request()
        .expect("request");
    assert_eq!(app.ws_request(bad_id).await.err(), Some(400));

    // Browsers pass the token in the query string.
    let browser = format!("{url}?access_token={}", app.token("alice"))
        .into_client_request()
        .expect("request");
    assert!(app.ws_request(browser).await.is_ok());
    // ...or, better, as a subprotocol after `questboard.bearer` (a header:
    // not in any URL), and the server answers with that protocol.
    let offer = |token: &str| {
        let mut request = url.clone().into_client_request().expect("request");
        request.headers_mut().insert(
            "sec-websocket-protocol",
            format!("questboard.bearer, {token}")
                .parse()
                .expect("header"),
        );
        request
    };
    let (_, accepted) = tokio_tungstenite::connect_async(offer(&app.token("alice")))
        .await
        .expect("the subprotocol token is accepted");
    assert_eq!(
        accepted.headers()["sec-websocket-protocol"],
        "questboard.bearer"
    );
    assert_eq!(app.ws_request(offer("not-a-token")).await.err(), Some(401));
    assert_eq!(
        app.ws_request(offer(&app.token("mallory"))).await.err(),
        Some(404),
        "a non-member's subprotocol token opens nothing"
    );
    // A plain GET with a good token is told to upgrade.
    app.get("alice", &format!("/ws/sessions/{session}"))
        .await
        .assert_error(400, "websocket_required");

    // With an Origin allow-list, other sites cannot open sockets.
    let strict = app
        .another_api(|c| c.ws_allowed_origins = Some(vec!["https://play.example".into()]))
        .await;
    let mut evil = format!("ws://{}/ws/sessions/{session}", strict.addr)
        .into_client_request()
        .expect("request");
    evil.headers_mut().insert(
        "authorization",
        format!("Bearer {}", app.token("alice"))
            .parse()
            .expect("header"),
    );
    evil.headers_mut()
        .insert("origin", "https://evil.example".parse().expect("header"));
    assert_eq!(strict.ws_request(evil).await.err(), Some(403));
    let mut good = format!("ws://{}/ws/sessions/{session}", strict.addr)
        .into_client_request()
        .expect("request");
    good.headers_mut().insert(
        "authorization",
        format!("Bearer {}", app.token("alice"))
            .parse()
            .expect("header"),
    );
    good.headers_mut()
        .insert("origin", "https://play.example".parse().expect("header"));
    assert!(strict.ws_request(good).await.is_ok());
}

#[tokio::test]
async fn a_member_on_one_api_sees_turns_submitted_through_another_in_order_with_deltas() {
    let api1 = TestApp::spawn().await;
    let api2 = api1.another_api(|_| {}).await;
    let watched = api1.session_with("alice", &["bob"]).await;
    let other = api1.session_with("alice", &["bob"]).await;
    let worker = api1.worker(|c| c.scripted_latency_ms = 60).await;

    let mut socket = api1.ws("alice", &watched, None).await.expect("socket");
    for i in 0..3 {
        assert_eq!(
            api2.submit("bob", &watched, &format!("watched turn {i}"))
                .await
                .status,
            202
        );
        assert_eq!(
            api2.submit("bob", &other, &format!("other turn {i}"))
                .await
                .status,
            202
        );
    }
    let received = socket
        .collect_until(WAIT, |m| completed_turns(m) == 3)
        .await;

    // Nothing from the other session.
    assert!(
        received.iter().all(|m| m["session_id"] == watched.as_str()),
        "{received:#?}"
    );
    // Durable events: gap-free from 1, in order, each turn queued -> started -> completed.
    let events = durable(&received);
    assert_gap_free(&events, 1);
    assert_eq!(events[0]["type"], "member.joined");
    for turn in received.iter().filter(|m| m["type"] == "turn.queued") {
        let id = &turn["data"]["turn_id"];
        let kinds: Vec<&str> = events
            .iter()
            .filter(|e| &e["data"]["turn_id"] == id)
            .filter_map(|e| e["type"].as_str())
            .collect();
        assert_eq!(
            kinds,
            ["turn.queued", "turn.started", "turn.completed"],
            "turn {id}"
        );
    }
    // A turn's chunks come after its turn.started: a reply is asked for
    // while that step commits, but nothing of it shows before.
    for (at, message) in received.iter().enumerate() {
        if message["type"] == "turn.delta" {
            let started = received.iter().position(|m| {
                m["type"] == "turn.started" && m["data"]["turn_id"] == message["turn_id"]
            });
            assert!(
                started.is_some_and(|s| s < at),
                "a chunk before its turn started: {received:#?}"
            );
        }
    }
    // Streamed chunks arrived too, and spell out the recorded replies.
    assert_chunks_spell_the_replies(&received, &events);
    // The REST replay matches what the socket delivered.
    let replay = api2.events("alice", &watched, 0).await;
    assert_eq!(replay[..events.len()], events[..]);

    let metrics = api1.metrics().await;
    for needle in [
        "questboard_ws_connections",
        "questboard_events_delivered_total",
        "questboard_event_delivery_lag_seconds_bucket",
        "questboard_events_published_total",
    ] {
        assert!(metrics.contains(needle), "{needle} missing");
    }
    worker.stop().await;
}

async fn reconnecting_with_after_seq_gets_exactly_the_missed_events_then_live_ones(app: TestApp) {
    let session = app.create_session("alice", "Resume").await;
    let worker = app.worker(|_| {}).await;
    let mut socket = app.ws("alice", &session, None).await.expect("socket");
    app.submit("alice", &session, "first").await;
    let first = socket
        .collect_until(WAIT, |m| completed_turns(m) == 1)
        .await;
    let last_seen = durable(&first)
        .last()
        .and_then(|e| e["seq"].as_i64())
        .expect("seq");
    drop(socket);

    // While disconnected, two more turns complete.
    app.submit("alice", &session, "second").await;
    app.submit("alice", &session, "third").await;
    app.wait_finished("alice", &session, 3).await;
    let stored = app.events("alice", &session, 0).await;
    let missed: Vec<Value> = stored
        .iter()
        .filter(|e| e["seq"].as_i64() > Some(last_seen))
        .cloned()
        .collect();
    assert_eq!(missed.len(), 6);

    let mut socket = app
        .ws("alice", &session, Some(last_seen))
        .await
        .expect("socket");
    let resumed = socket
        .collect_until(WAIT, |m| durable(m).len() == missed.len())
        .await;
    assert_eq!(
        durable(&resumed),
        missed,
        "exactly the missed events, in order"
    );

    // Then live events continue from there.
    app.submit("alice", &session, "fourth").await;
    let live = socket
        .collect_until(WAIT, |m| completed_turns(m) == 1)
        .await;
    let live = durable(&live);
    assert_gap_free(&live, last_seen + missed.len() as i64 + 1);
    worker.stop().await;
}

/// A Redis server of this test's own, so restarting it disturbs no other test.
struct PrivateRedis {
    port: u16,
    child: std::process::Child,
}

impl PrivateRedis {
    fn start(port: u16) -> PrivateRedis {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (installed by scripts/services)");
        PrivateRedis { port, child }
    }

    async fn wait_ready(&self) {
        let client = redis::Client::open(self.url()).expect("client");
        for _ in 0..100 {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("private redis did not start");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn every_durable_event_reaches_the_client_across_a_redis_restart() {
    let mut redis = PrivateRedis::start(free_port());
    redis.wait_ready().await;
    let url = redis.url();
    let app =
        TestApp::spawn_with(|c| c.redis_url = Some(questboard::config::Secret::new(url.clone())))
            .await;
    let session = app.create_session("alice", "Outage").await;
    let worker = app.worker(|c| c.scripted_latency_ms = 50).await;
    let mut socket = app.ws("alice", &session, None).await.expect("socket");

    app.submit("alice", &session, "before the outage").await;
    socket
        .collect_until(WAIT, |m| completed_turns(m) == 1)
        .await;

    // Redis goes away; turns are still accepted and processed (workers poll).
    redis.stop();
    for i in 0..3 {
        let resp = app
            .submit("alice", &session, &format!("during the outage {i}"))
            .await;
        assert_eq!(resp.status, 202, "{}", resp.text);
    }
    app.wait_finished("alice", &session, 4).await;

    // Redis comes back on the same port: the bridge resubscribes and fills
    // the gap from Postgres, the relay publishes what missed Redis.
    let redis = PrivateRedis::start(redis.port);
    redis.wait_ready().await;
    app.submit("alice", &session, "after the outage").await;
    let rest = socket
        .collect_until(WAIT, |m| completed_turns(m) == 4)
        .await;

    let stored = app.events("alice", &session, 0).await;
    let mut seen = HashSet::new();
    let delivered: Vec<i64> = durable(&rest)
        .iter()
        .filter_map(|e| e["seq"].as_i64())
        .collect();
    for seq in &delivered {
        assert!(seen.insert(*seq), "duplicate seq {seq}");
    }
    let first = delivered[0];
    assert_gap_free(&durable(&rest), first);
    assert_eq!(
        delivered.last().copied(),
        stored.last().and_then(|e| e["seq"].as_i64())
    );
    let unpublished: i64 = sqlx::query_scalar("SELECT count(*) FROM event_outbox")
        .fetch_one(&app.db.pool)
        .await
        .expect("count");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut unpublished = unpublished;
    while unpublished > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        unpublished = sqlx::query_scalar("SELECT count(*) FROM event_outbox")
            .fetch_one(&app.db.pool)
            .await
            .expect("count");
    }
    assert_eq!(
        unpublished, 0,
        "the relay published every event that missed Redis"
    );
    worker.stop().await;
}

async fn a_removed_members_socket_is_closed_at_once(app: TestApp) {
    let session = app.session_with("alice", &["bob"]).await;
    let mut bobs = app.ws("bob", &session, None).await.expect("socket");
    bobs.collect_until(WAIT, |m| !m.is_empty()).await;
    assert_eq!(
        app.delete("alice", &format!("/api/sessions/{session}/members/bob"))
            .await
            .status,
        204
    );
    let mut saw_removal = false;
    loop {
        match bobs.next(WAIT).await {
            Some(WsItem::Json(m)) => {
                if m["type"] == "member.removed" && m["data"]["user_id"] == "bob" {
                    saw_removal = true;
                }
            }
            Some(WsItem::Closed(code)) => {
                assert_eq!(code, Some(4003));
                break;
            }
            None => panic!("the removed member's socket stayed open"),
        }
    }
    assert!(saw_removal);
    // And cannot come back.
    assert_eq!(app.ws("bob", &session, None).await.err(), Some(404));
}

async fn a_client_that_cannot_keep_up_is_closed_with_4008(app: TestApp) {
    let session = app.create_session("alice", "Firehose").await;
    let mut slow = app.ws("alice", &session, None).await.expect("socket");
    // Let the bridge subscribe before flooding the channel.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Flood the session's channel with streamed chunks (as a worker would)
    // while the client reads nothing: the socket's buffer overflows.
    let session_id: uuid::Uuid = session.parse().expect("uuid");
    let chunk = "x".repeat(1024);
    for batch in 0..20 {
        let mut messages = Vec::new();
        for index in 0..1000u32 {
            let delta = serde_json::json!({
                "type": "turn.delta", "session_id": session_id, "turn_id": session_id,
                "attempt": 1, "started_seq": 0, "index": batch * 1000 + index, "text": chunk,
            });
            messages.push((
                questboard_core::events::channel(session_id),
                bytes::Bytes::from(delta.to_string()),
            ));
        }
        app.bus.publish(&messages).await.expect("publish");
        // Let the bridge take them off the bus (in process, the test's
        // own runtime runs it) so the socket, not the bridge, falls behind.
        tokio::task::yield_now().await;
    }

    // Reading now: whatever was buffered, then the close code.
    let mut delivered = 0;
    loop {
        match slow.next(WAIT).await {
            Some(WsItem::Json(_)) => delivered += 1,
            Some(WsItem::Closed(code)) => {
                assert_eq!(code, Some(4008), "after {delivered} messages");
                break;
            }
            None => panic!("the slow client was never closed ({delivered} messages)"),
        }
    }
    assert!(
        delivered < 20_000,
        "the client was closed before it got everything"
    );
    // It resumes with after_seq like any client.
    assert!(app.ws("alice", &session, Some(0)).await.is_ok());
}

/// Reads past events until the socket closes; the close code.
async fn close_code(socket: &mut crate::helpers::WsClient) -> Option<u16> {
    loop {
        match socket.next(Duration::from_secs(10)).await {
            Some(WsItem::Closed(code)) => return code,
            Some(WsItem::Json(_)) => continue,
            None => panic!("the socket did not close"),
        }
    }
}

#[tokio::test]
async fn a_socket_that_breaks_the_protocol_is_closed_with_the_standard_code() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
    let app = TestApp::spawn().await;
    let session = app.create_session("alice", "Rules").await;
    let open = || async { app.ws("alice", &session, None).await.expect("socket") };

    // Over 64 KiB: 1009 Message Too Big.
    let mut socket = open().await;
    socket.send_text("x".repeat(64 * 1024 + 1)).await;
    assert_eq!(close_code(&mut socket).await, Some(1009));
    // Binary: 1003 Unsupported Data.
    let mut socket = open().await;
    socket.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    assert_eq!(close_code(&mut socket).await, Some(1003));
    // A text frame that is not UTF-8: 1007 Invalid Payload.
    let mut socket = open().await;
    let frame = Frame::message(vec![0xff, 0xfe, 0x80], OpCode::Data(Data::Text), true);
    socket.send_raw(Message::Frame(frame)).await;
    assert_eq!(close_code(&mut socket).await, Some(1007));
    // A reserved bit set (no extension negotiated): 1002 Protocol Error.
    let mut socket = open().await;
    let mut frame = Frame::message(b"{}".to_vec(), OpCode::Data(Data::Text), true);
    frame.header_mut().rsv1 = true;
    socket.send_raw(Message::Frame(frame)).await;
    assert_eq!(close_code(&mut socket).await, Some(1002));
    // A client that closes normally gets its Close echoed.
    let mut socket = open().await;
    socket
        .send_raw(Message::Close(Some(CloseFrame {
            code: 1000.into(),
            reason: "bye".into(),
        })))
        .await;
    assert_eq!(close_code(&mut socket).await, Some(1000));

    // Each was counted by reason (the recorder is the test process's, so
    // other tests may have counted too: only presence is checked).
    let metrics = app.metrics().await;
    for reason in [
        "message_too_big",
        "unsupported_data",
        "invalid_payload",
        "protocol_error",
    ] {
        let needle = format!("questboard_ws_closed_by_server_total{{reason=\"{reason}\"}}");
        assert!(metrics.contains(&needle), "{needle} missing:\n{metrics}");
    }
}

async fn a_client_reconnecting_every_second_or_two_assembles_the_whole_log(app: TestApp) {
    const TURNS: usize = 40;
    let session = app.create_session("alice", "Flaky").await;
    let worker = app.worker(|c| c.scripted_latency_ms = 40).await;
    let submit = async {
        for i in 0..TURNS {
            let resp = app.submit("alice", &session, &format!("turn {i}")).await;
            assert_eq!(resp.status, reqwest::StatusCode::ACCEPTED, "{}", resp.text);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let follow = async {
        let mut log: Vec<Value> = Vec::new();
        let mut last = 0i64;
        let mut finished = 0;
        let mut connections = 0;
        // Connected for 1, 1.5 or 2 s at a time, resuming after the last
        // event seen.
        while finished < TURNS {
            connections += 1;
            let stay = Duration::from_millis(1000 + 500 * (connections % 3));
            let mut socket = app.ws("alice", &session, Some(last)).await.expect("socket");
            let until = tokio::time::Instant::now() + stay;
            while finished < TURNS {
                let left = until.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                match socket.next(left).await {
                    Some(WsItem::Json(message)) => {
                        let Some(seq) = message["seq"].as_i64() else {
                            continue; // a streamed chunk: not in the log
                        };
                        assert_eq!(seq, last + 1, "gap or repeat after {last}: {message}");
                        last = seq;
                        if matches!(
                            message["type"].as_str(),
                            Some("turn.completed" | "turn.failed")
                        ) {
                            finished += 1;
                        }
                        log.push(message);
                    }
                    Some(WsItem::Closed(code)) => panic!("closed by the server: {code:?}"),
                    None => break,
                }
            }
        }
        (log, connections)
    };
    let ((), (log, connections)) = tokio::join!(submit, follow);
    assert!(connections >= 3, "only {connections} connections");
    let rest = app.events("alice", &session, 0).await;
    assert_eq!(log.len(), rest.len());
    for (socket, stored) in log.iter().zip(&rest) {
        for field in ["seq", "type", "data"] {
            assert_eq!(
                socket[field], stored[field],
                "{field}: {socket} vs {stored}"
            );
        }
    }
    worker.stop().await;
}

/// Socket openings are admitted a few at a time (as many as the pool has
/// connections): with a pool of one, an opening whose first catch-up is
/// stuck (a client that does not read a backlog of 30 MB) holds the only
/// place; another opening is refused with 503 and `Retry-After` once it
/// has waited its turn, and no event is lost to it; when the stuck client
/// goes, openings are admitted again and the backlog replays in full.
#[tokio::test]
async fn socket_openings_wait_their_turn_and_are_refused_with_503_past_it() {
    let app = TestApp::spawn_with(|c| c.db_max_connections = 1).await;
    let session = app.create_session("alice", "Crowded").await;
    let id: uuid::Uuid = session.parse().expect("session id");
    let backlog: i64 = 60_000;
    let mut tx = app.db.pool.begin().await.expect("begin");
    for sql in [
        "ALTER TABLE session_events DISABLE TRIGGER session_events_outbox",
        "INSERT INTO session_events (session_id, seq, type, data)
         SELECT $1, s.next_event_seq - 1 + g, 'session.updated',
                jsonb_build_object('name', repeat('a long story ', 40))
         FROM campaign_sessions s, generate_series(1, $2::bigint) AS g WHERE s.id = $1",
        "UPDATE campaign_sessions SET next_event_seq = next_event_seq + $2 WHERE id = $1",
        "ALTER TABLE session_events ENABLE TRIGGER session_events_outbox",
    ] {
        sqlx::query(sql)
            .bind(id)
            .bind(backlog)
            .execute(&mut *tx)
            .await
            .expect(sql);
    }
    tx.commit().await.expect("commit");
    let newest: i64 =
        sqlx::query_scalar("SELECT next_event_seq - 1 FROM campaign_sessions WHERE id = $1")
            .bind(id)
            .fetch_one(&app.db.pool)
            .await
            .expect("newest");

    // Never read: the server's first catch-up blocks once the buffers fill.
    let stuck = app
        .ws("alice", &session, Some(0))
        .await
        .expect("first socket");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let refused = app.ws("alice", &session, Some(newest)).await;
    assert_eq!(
        refused.err(),
        Some(503),
        "the second opening must wait, then be refused"
    );
    let response = app
        .client
        .get(app.url(&format!("/ws/sessions/{session}")))
        .bearer_auth(app.token("alice"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .expect("plain upgrade request");
    assert_eq!(response.status(), 503);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: Value = response.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");

    drop(stuck);
    // The place comes back once the stuck socket's send fails.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut socket = loop {
        match app.ws("alice", &session, Some(newest - 2_000)).await {
            Ok(socket) => break socket,
            Err(503) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!("opening after the stuck socket went: {status}"),
        }
    };
    let mut last = newest - 2_000;
    while last < newest {
        match socket.next(WAIT).await {
            Some(WsItem::Json(event)) => {
                let seq = event["seq"].as_i64().expect("seq");
                assert_eq!(seq, last + 1, "replayed out of order");
                last = seq;
            }
            other => panic!("the replay ended early at {last}: {other:?}"),
        }
    }
}
