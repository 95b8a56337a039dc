//! The game state end to end: reads with ETags, game-master updates against
//! the version, their `state.updated` events on members' sockets, races,
//! idempotent resends, refusals that leave the state untouched, and a
//! player who reconnects and converges by the documented client algorithm.

use std::time::Duration;

use questboard_core::state::ops::{self, Operation, deep_equal};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Resp, TestApp, WsItem};

const WAIT: Duration = Duration::from_secs(20);

async fn state(app: &TestApp, user: &str, session: &str) -> Resp {
    app.get(user, &format!("/api/sessions/{session}/state"))
        .await
}

async fn update(app: &TestApp, user: &str, session: &str, body: Value) -> Resp {
    app.post(
        user,
        &format!("/api/sessions/{session}/state/updates"),
        body,
    )
    .await
}

/// Pushes `value` onto `items` as `user`, against `version`.
async fn push_item(app: &TestApp, user: &str, session: &str, version: i64, value: Value) -> Resp {
    update(
        app,
        user,
        session,
        json!({"version": version, "operations": [{"path": "items", "operation": "push", "value": value}]}),
    )
    .await
}

/// A session owned by `gm-alice` with `bob` as a player and `carol` as a gm.
async fn table(app: &TestApp) -> String {
    let session = app.session_with("gm-alice", &["bob"]).await;
    let (_, token) = app
        .invite("gm-alice", &session, json!({ "role": "gm" }))
        .await;
    assert_eq!(app.accept("carol", &token).await.status, StatusCode::OK);
    session
}

/// The stored keys of a state document (without the server-owned ones).
fn stored(document: &Value) -> Value {
    let mut copy = document.clone();
    if let Value::Object(map) = &mut copy {
        map.remove("stateVersion");
        map.remove("lastUpdated");
    }
    copy
}

#[tokio::test]
async fn a_new_session_has_an_empty_state_at_version_0_with_an_etag() {
    let app = TestApp::spawn().await;
    let session = table(&app).await;
    let resp = state(&app, "bob", &session).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
    assert_eq!(resp.body["session_id"], json!(session));
    assert_eq!(resp.body["version"], json!(0));
    assert_eq!(
        stored(&resp.body["state"]),
        json!({"characters": [], "actors": [], "items": [], "currentEncounter": null, "pluginData": {}})
    );
    assert_eq!(resp.body["state"]["stateVersion"], json!(0));
    assert!(resp.body["state"]["lastUpdated"].is_string());
    assert_eq!(resp.headers["etag"], "\"0\"");

    // If-None-Match with the current tag: 304 without a body; stale: 200.
    for (tag, status) in [
        ("\"0\"", 304),
        ("W/\"0\"", 304),
        ("\"7\", \"0\"", 304),
        ("*", 304),
        ("\"1\"", 200),
    ] {
        let resp = app
            .client
            .get(app.url(&format!("/api/sessions/{session}/state")))
            .bearer_auth(app.token("bob"))
            .header("if-none-match", tag)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status().as_u16(), status, "{tag}");
        assert_eq!(resp.headers()["etag"], "\"0\"");
    }

    // Non-members and strangers learn nothing.
    state(&app, "mallory", &session)
        .await
        .assert_error(404, "not_found");
    let missing = uuid::Uuid::now_v7().to_string();
    state(&app, "bob", &missing)
        .await
        .assert_error(404, "not_found");
    app.call(
        Method::GET,
        &format!("/api/sessions/{session}/state"),
        None,
        None,
    )
    .await
    .assert_error(401, "unauthorized");
}

#[tokio::test]
async fn a_game_masters_update_reaches_a_players_socket_with_the_new_version() {
    let app = TestApp::spawn().await;
    let session = table(&app).await;
    let mut socket = app.ws("bob", &session, None).await.expect("socket");
    let ops = json!([
        {"path": "characters", "operation": "push", "value": {"name": "Ada", "pluginData": {"hitPoints": 10}}},
        {"path": "characters.0.pluginData.hitPoints", "operation": "inc", "value": -3},
        {"path": "pluginData.dice.lastRoll", "operation": "set", "value": 17}
    ]);
    let resp = update(
        &app,
        "gm-alice",
        &session,
        json!({"version": 0, "operations": ops}),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
    assert_eq!(resp.body["new_version"], json!(1));
    let update_id = resp.body["update_id"]
        .as_str()
        .expect("update_id")
        .to_owned();

    let seen = socket
        .collect_until(WAIT, |m| m.iter().any(|e| e["type"] == "state.updated"))
        .await;
    let event = seen
        .iter()
        .find(|e| e["type"] == "state.updated")
        .expect("event");
    assert_eq!(event["data"]["version"], json!(1));
    assert_eq!(event["data"]["base_version"], json!(0));
    assert_eq!(event["data"]["update_id"], json!(update_id));
    assert_eq!(event["data"]["source"], json!("gm"));
    assert_eq!(event["data"]["by"], json!("gm-alice"));
    assert_eq!(event["data"]["operations"], ops);

    let now = state(&app, "bob", &session).await;
    assert_eq!(now.body["version"], json!(1));
    assert_eq!(now.headers["etag"], "\"1\"");
    assert_eq!(
        now.body["state"]["characters"],
        json!([{"name": "Ada", "pluginData": {"hitPoints": 7}}])
    );
    assert_eq!(
        now.body["state"]["pluginData"],
        json!({"dice": {"lastRoll": 17}})
    );

    // A gm member may change it too; a player may not.
    let resp = push_item(&app, "carol", &session, 1, json!("rope")).await;
    assert_eq!(resp.body["new_version"], json!(2), "{}", resp.text);
    push_item(&app, "bob", &session, 2, json!("sword"))
        .await
        .assert_error(403, "forbidden");
    // A non-member gets 404, never 403 or 409.
    push_item(&app, "mallory", &session, 2, json!(1))
        .await
        .assert_error(404, "not_found");
    assert_eq!(state(&app, "bob", &session).await.body["version"], json!(2));
}

#[tokio::test]
async fn two_game_masters_racing_on_one_version_one_wins_the_other_gets_409() {
    let app = TestApp::spawn().await;
    let session = table(&app).await;
    for round in 0..5 {
        let body = |who: &str| json!({"version": round, "operations": [{"path": "items", "operation": "push", "value": who}]});
        let (a, c) = tokio::join!(
            update(&app, "gm-alice", &session, body("alice")),
            update(&app, "carol", &session, body("carol")),
        );
        let (won, lost) = if a.status == StatusCode::OK {
            (a, c)
        } else {
            (c, a)
        };
        assert_eq!(won.status, StatusCode::OK, "{}", won.text);
        assert_eq!(won.body["new_version"], json!(round + 1));
        lost.assert_error(409, "VERSION_CONFLICT");
        assert_eq!(lost.body["error"]["current_version"], json!(round + 1));
    }
    let now = state(&app, "bob", &session).await;
    assert_eq!(now.body["version"], json!(5));
    assert_eq!(now.body["state"]["items"].as_array().map(Vec::len), Some(5));
    let events = app.events("bob", &session, 0).await;
    let updates: Vec<i64> = events
        .iter()
        .filter(|e| e["type"] == "state.updated")
        .filter_map(|e| e["data"]["version"].as_i64())
        .collect();
    assert_eq!(updates, vec![1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn an_update_resent_with_its_id_is_answered_again_and_applied_once() {
    let app = TestApp::spawn().await;
    let session = table(&app).await;
    let body = json!({"id": "gm-client-42", "version": 0,
        "operations": [{"path": "pluginData.gold", "operation": "inc", "value": 5}]});
    let first = update(&app, "gm-alice", &session, body.clone()).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let again = update(&app, "gm-alice", &session, body.clone()).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.body, first.body);
    let now = state(&app, "bob", &session).await;
    assert_eq!(now.body["version"], json!(1));
    assert_eq!(now.body["state"]["pluginData"]["gold"], json!(5));
    let applied = app
        .events("bob", &session, 0)
        .await
        .iter()
        .filter(|e| e["type"] == "state.updated")
        .count();
    assert_eq!(applied, 1);

    // The same id for a different update is refused; a new id applies.
    let mut other = body.clone();
    other["operations"][0]["value"] = json!(6);
    update(&app, "gm-alice", &session, other)
        .await
        .assert_error(409, "conflict");
    let mut next = body;
    next["id"] = json!("gm-client-43");
    next["version"] = json!(1);
    assert_eq!(
        update(&app, "gm-alice", &session, next).await.body["new_version"],
        json!(2)
    );
    // Reused against the current version (which this process remembers,
    // so the one-statement path is tried first): still refused.
    let reused = json!({"id": "gm-client-42", "version": 2,
        "operations": [{"path": "pluginData.gold", "operation": "inc", "value": 7}]});
    update(&app, "gm-alice", &session, reused)
        .await
        .assert_error(409, "conflict");
    assert_eq!(state(&app, "bob", &session).await.body["version"], json!(2));
    // Ids are checked.
    for bad in [
        json!(""),
        json!("has space"),
        json!("x".repeat(129)),
        json!("\u{202e}"),
    ] {
        update(
            &app,
            "gm-alice",
            &session,
            json!({"id": bad, "version": 2, "operations": [{"path": "items", "operation": "push", "value": 1}]}),
        )
        .await
        .assert_error(422, "VALIDATION_ERROR");
    }
}

#[tokio::test]
async fn resends_racing_each_other_get_one_answer_and_apply_once() {
    // A GM client that resends over several connections at once: every
    // copy is answered with the one update that applied.
    let app = TestApp::spawn().await;
    let session = table(&app).await;
    let body = json!({"id": "burst-1", "version": 0,
        "operations": [{"path": "pluginData.gold", "operation": "inc", "value": 5}]});
    let answers =
        futures::future::join_all((0..8).map(|_| update(&app, "gm-alice", &session, body.clone())))
            .await;
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        assert_eq!(answer.body, answers[0].body);
    }
    let now = state(&app, "bob", &session).await;
    assert_eq!(now.body["version"], json!(1));
    assert_eq!(now.body["state"]["pluginData"]["gold"], json!(5));
}

#[tokio::test]
async fn refused_updates_name_the_operation_and_change_nothing() {
    let app = TestApp::spawn_with(|c| c.state_max_bytes = 4096).await;
    let session = table(&app).await;
    let ok = push_item(&app, "gm-alice", &session, 0, json!("rope")).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    let before = state(&app, "bob", &session).await.body;

    let cases = [
        // (operations, refused operation index)
        (
            json!([{"path": "items", "operation": "push", "value": 1}, {"path": "stateVersion", "operation": "set", "value": 9}]),
            Some(1),
        ),
        (
            json!([{"path": "items", "operation": "push", "value": 1}, {"path": "items.5", "operation": "set", "value": 9}]),
            Some(1),
        ),
        (
            json!([{"path": "items.0", "operation": "inc", "value": 1}]),
            Some(0),
        ),
        (
            json!([{"path": "pluginData.x", "operation": "set", "value": 1}, {"path": "pluginData.x", "operation": "push", "value": 1}]),
            Some(1),
        ),
        (
            json!([{"path": "../../etc/passwd", "operation": "set", "value": 1}]),
            Some(0),
        ),
        (
            json!([{"path": "items", "operation": "$where", "value": 1}]),
            Some(0),
        ),
        (json!([{"path": "items", "operation": "push"}]), Some(0)),
        (
            json!([{"path": "characters", "operation": "set", "value": "not an array"}]),
            None,
        ),
        (json!([]), None),
    ];
    for (operations, index) in cases {
        let resp = update(
            &app,
            "gm-alice",
            &session,
            json!({"version": 1, "operations": operations}),
        )
        .await;
        resp.assert_error(422, "VALIDATION_ERROR");
        assert_eq!(
            resp.body["error"].get("operation").cloned(),
            index.map(|i| json!(i)),
            "{operations}: {}",
            resp.text
        );
    }
    let too_many: Vec<Value> = (0..501)
        .map(|_| json!({"path": "items", "operation": "push", "value": 1}))
        .collect();
    update(
        &app,
        "gm-alice",
        &session,
        json!({"version": 1, "operations": too_many}),
    )
    .await
    .assert_error(422, "VALIDATION_ERROR");
    // Over the state's size limit (4 KiB here): refused whole.
    let big = "x".repeat(5000);
    let resp = update(
        &app,
        "gm-alice",
        &session,
        json!({"version": 1, "operations": [{"path": "pluginData.blob", "operation": "set", "value": big}]}),
    )
    .await;
    resp.assert_error(422, "STATE_TOO_LARGE");
    // A stale version: 409 with the current one.
    let resp = push_item(&app, "gm-alice", &session, 0, json!(1)).await;
    resp.assert_error(409, "VERSION_CONFLICT");
    assert_eq!(resp.body["error"]["current_version"], json!(1));
    // Malformed bodies.
    for body in [
        json!({"operations": []}),
        json!({"version": "1", "operations": []}),
        json!({"version": 1, "operations": "set"}),
    ] {
        let resp = update(&app, "gm-alice", &session, body).await;
        assert_eq!(resp.status.as_u16(), 422, "{}", resp.text);
    }
    assert_eq!(state(&app, "bob", &session).await.body, before);

    // An archived session's state is read-only.
    assert_eq!(
        app.delete("gm-alice", &format!("/api/sessions/{session}"))
            .await
            .status,
        StatusCode::OK
    );
    push_item(&app, "gm-alice", &session, 1, json!(1))
        .await
        .assert_error(409, "conflict");
}

#[tokio::test]
async fn a_player_who_reconnects_with_a_stale_version_converges() {
    let app = TestApp::spawn().await;
    let session = table(&app).await;
    // The player's copy at version 0, and the last event seq it saw.
    let first = state(&app, "bob", &session).await.body;
    let mine = stored(&first["state"]);
    let version = first["version"].as_i64().expect("version");
    let last_seq = app
        .events("bob", &session, 0)
        .await
        .last()
        .and_then(|e| e["seq"].as_i64())
        .unwrap_or(0);

    // While it is away, three updates.
    let steps = [
        json!([{"path": "characters", "operation": "push", "value": {"name": "Ada", "hp": 10}}]),
        json!([{"path": "characters.0.hp", "operation": "inc", "value": -4},
               {"path": "currentEncounter", "operation": "set", "value": {"encounter": "ambush", "map": null, "tokens": []}}]),
        json!([{"path": "currentEncounter.tokens", "operation": "push", "value": {"id": "t1", "x": 3}},
               {"path": "characters.0", "operation": "unset"}]),
    ];
    for (i, ops) in steps.iter().enumerate() {
        let resp = update(
            &app,
            "gm-alice",
            &session,
            json!({"version": i, "operations": ops}),
        )
        .await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
    }

    // Reconnect from the last seq seen; apply each update whose version is
    // one more than ours, refetch otherwise (the documented algorithm).
    let mut socket = app
        .ws("bob", &session, Some(last_seq))
        .await
        .expect("socket");
    let seen = socket
        .collect_until(WAIT, |m| {
            m.iter().filter(|e| e["type"] == "state.updated").count() == 3
        })
        .await;
    let updates: Vec<Value> = seen
        .into_iter()
        .filter(|e| e["type"] == "state.updated")
        .collect();
    let (mine_now, version_now, refetched) =
        follow(&app, &session, mine.clone(), version, &updates).await;
    let server = state(&app, "bob", &session).await.body;
    assert_eq!((version_now, refetched), (3, false));
    assert!(
        deep_equal(&mine_now, &stored(&server["state"])),
        "client {mine_now}\nserver {}",
        server["state"]
    );

    // A client that missed an update (it holds version 0 and sees only the
    // third) refetches instead of applying out of order, and converges.
    let (skipped, at, refetched) = follow(&app, &session, mine, version, &updates[2..]).await;
    assert_eq!((at, refetched), (3, true));
    assert!(deep_equal(&skipped, &stored(&server["state"])));
}

/// The client algorithm of docs/architecture.md: apply a `state.updated`
/// whose version is one more than the copy's, refetch on anything else.
/// Returns the copy, its version, and whether it refetched.
async fn follow(
    app: &TestApp,
    session: &str,
    mut mine: Value,
    mut version: i64,
    updates: &[Value],
) -> (Value, i64, bool) {
    let mut refetched = false;
    for event in updates {
        let data = &event["data"];
        if data["version"].as_i64() != Some(version + 1) {
            if data["version"].as_i64().is_some_and(|v| v <= version) {
                continue;
            }
            let fresh = state(app, "bob", session).await.body;
            mine = stored(&fresh["state"]);
            version = fresh["version"].as_i64().expect("version");
            refetched = true;
            continue;
        }
        let operations: Vec<Operation> = data["operations"]
            .as_array()
            .expect("operations")
            .iter()
            .map(|op| Operation::parse(op).expect("recorded operations parse"))
            .collect();
        ops::apply_all(&mut mine, &operations).expect("recorded operations apply");
        version += 1;
    }
    (mine, version, refetched)
}

#[tokio::test]
async fn the_socket_reads_and_changes_the_state_with_the_same_rules() {
    let app = TestApp::spawn().await;
    let session = table(&app).await;
    let mut gm = app.ws("gm-alice", &session, None).await.expect("gm socket");
    let mut player = app.ws("bob", &session, None).await.expect("player socket");

    let got = player
        .request(json!({"type": "state.get", "request_id": "g1"}), WAIT)
        .await;
    assert_eq!(got["ok"], json!(true), "{got}");
    assert_eq!(got["version"], json!(0));
    assert_eq!(got["state"]["stateVersion"], json!(0));

    // A player's update is refused, with the code REST gives.
    let refused = player
        .request(
            json!({"type": "state.update", "request_id": 7, "version": 0,
                   "operations": [{"path": "items", "operation": "push", "value": "sword"}]}),
            WAIT,
        )
        .await;
    assert_eq!(refused["ok"], json!(false), "{refused}");
    assert_eq!(refused["error"]["code"], json!("forbidden"));

    // The game master's update is applied; both sockets get the event.
    let done = gm
        .request(
            json!({"type": "state.update", "request_id": "u1", "id": "sock-1", "version": 0,
                   "operations": [{"path": "items", "operation": "push", "value": "rope"}]}),
            WAIT,
        )
        .await;
    assert_eq!(done["ok"], json!(true), "{done}");
    assert_eq!(done["new_version"], json!(1));
    let seen = player
        .collect_until(WAIT, |m| m.iter().any(|e| e["type"] == "state.updated"))
        .await;
    let event = seen
        .iter()
        .find(|e| e["type"] == "state.updated")
        .expect("event");
    assert_eq!(event["data"]["update_id"], done["update_id"]);

    // Same errors as REST: a stale version, a bad operation, a resend.
    let stale = gm
        .request(
            json!({"type": "state.update", "request_id": "u2", "version": 0,
                   "operations": [{"path": "items", "operation": "push", "value": 1}]}),
            WAIT,
        )
        .await;
    assert_eq!(stale["error"]["code"], json!("VERSION_CONFLICT"), "{stale}");
    assert_eq!(stale["error"]["current_version"], json!(1));
    let invalid = gm
        .request(
            json!({"type": "state.update", "request_id": "u3", "version": 1,
                   "operations": [{"path": "lastUpdated", "operation": "set", "value": 1}]}),
            WAIT,
        )
        .await;
    assert_eq!(
        invalid["error"]["code"],
        json!("VALIDATION_ERROR"),
        "{invalid}"
    );
    assert_eq!(invalid["error"]["operation"], json!(0));
    let resent = gm
        .request(
            json!({"type": "state.update", "request_id": "u4", "id": "sock-1", "version": 0,
                   "operations": [{"path": "items", "operation": "push", "value": "rope"}]}),
            WAIT,
        )
        .await;
    assert_eq!(resent["new_version"], json!(1), "{resent}");
    assert_eq!(resent["update_id"], done["update_id"]);

    // Malformed messages get an error reply and the socket stays open.
    for (text, request_id) in [
        ("not json".to_owned(), Value::Null),
        (json!({"type": "state.get"}).to_string(), Value::Null),
        (
            json!({"type": "state.get", "request_id": {"a": 1}}).to_string(),
            Value::Null,
        ),
        (
            json!({"type": "state.delete", "request_id": "x"}).to_string(),
            json!("x"),
        ),
    ] {
        gm.send_text(text.clone()).await;
        let reply = loop {
            match gm.next(WAIT).await {
                Some(WsItem::Json(v)) if v["type"] == "reply" => break v,
                Some(WsItem::Json(_)) => continue,
                other => panic!("{text}: {other:?}"),
            }
        };
        assert_eq!(reply["ok"], json!(false), "{text}");
        assert_eq!(reply["error"]["code"], json!("bad_message"), "{text}");
        assert_eq!(reply["request_id"], request_id, "{text}");
    }
    let shapeless = gm
        .request(
            json!({"type": "state.update", "request_id": "u5", "operations": []}),
            WAIT,
        )
        .await;
    assert_eq!(
        shapeless["error"]["code"],
        json!("validation_failed"),
        "{shapeless}"
    );
    let still = gm
        .request(json!({"type": "state.get", "request_id": "g2"}), WAIT)
        .await;
    assert_eq!(still["version"], json!(1));

    // A message over the socket's limit ends the connection with 1009.
    gm.send_text("x".repeat(70 * 1024)).await;
    let ended = loop {
        match gm.next(WAIT).await {
            Some(WsItem::Closed(code)) => break code,
            Some(WsItem::Json(_)) => continue,
            None => panic!("the oversized message did not end the socket"),
        }
    };
    assert_eq!(ended, Some(1009), "Message Too Big");
}

/// One update's operations are capped (`QB_STATE_MAX_UPDATE_BYTES`): a game
/// master cannot push ~900 KB through one update to every member's socket.
#[tokio::test]
async fn one_updates_operations_are_capped_in_size() {
    let app = TestApp::spawn_with(|c| c.state_max_update_bytes = 8 * 1024).await;
    let session = app.create_session("alice", "Capped").await;
    let path = format!("/api/sessions/{session}/state/updates");
    let big = json!({"version": 0, "operations": [
        {"path": "pluginData.blob", "operation": "set", "value": "x".repeat(9 * 1024)}]});
    let resp = app.post("alice", &path, big).await;
    resp.assert_error(422, "VALIDATION_ERROR");
    assert!(resp.text.contains("over the limit"), "{}", resp.text);
    // Split in two, each under the cap, it goes through.
    for (version, half) in [(0, "a"), (1, "b")] {
        let resp = app
            .post(
                "alice",
                &path,
                json!({"version": version, "operations": [
                    {"path": format!("pluginData.{half}"), "operation": "set", "value": "x".repeat(4 * 1024)}]}),
            )
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text);
    }
    // The default is 64 KiB: a 900 KB rewrite is refused without the setting.
    let default = TestApp::spawn().await;
    let session = default.create_session("alice", "Default").await;
    let resp = default
        .post(
            "alice",
            &format!("/api/sessions/{session}/state/updates"),
            json!({"version": 0, "operations": [
                {"path": "pluginData.blob", "operation": "set", "value": "x".repeat(900 * 1000)}]}),
        )
        .await;
    resp.assert_error(422, "VALIDATION_ERROR");
}

/// Paths through `__proto__`, `constructor` or `prototype` are refused (a
/// JavaScript client following the documented algorithm with
/// `obj[segment]` would pollute `Object.prototype`), and the published
/// description says so.
#[tokio::test]
async fn prototype_segments_are_refused_and_published() {
    let app = TestApp::spawn().await;
    let session = app.create_session("alice", "Prototypes").await;
    for path in [
        "pluginData.__proto__.polluted",
        "pluginData.constructor.prototype.polluted",
        "characters.0.__proto__",
        "pluginData.x.prototype",
    ] {
        let resp = app
            .post(
                "alice",
                &format!("/api/sessions/{session}/state/updates"),
                json!({"version": 0, "operations": [{"path": path, "operation": "set", "value": true}]}),
            )
            .await;
        resp.assert_error(422, "VALIDATION_ERROR");
        assert_eq!(resp.body["error"]["operation"], 0, "{path}: {}", resp.text);
    }
    let events = app.events("alice", &session, 0).await;
    assert!(events.iter().all(|e| e["type"] != "state.updated"));
    let doc = app.call(Method::GET, "/api/openapi.json", None, None).await;
    let path = &doc.body["components"]["schemas"]["StateOperation"]["properties"]["path"];
    assert!(
        path["not"]["pattern"]
            .as_str()
            .is_some_and(|p| p.contains("__proto__")),
        "{path}"
    );
}
