//! State written by turns: the scripted game master's `/state` lines and
//! the `openai` provider's streamed `update_game_state` tool calls change
//! the game state with the reply, against whatever version a game master
//! brought it to, recorded together with the reply and exactly once even
//! when the turn ran twice; what the state refuses is recorded on the turn
//! and the reply stands.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::fake_llm::{FakeLlm, Reply};
use crate::helpers::{TestApp, signal, wait_log};

const WAIT: Duration = Duration::from_secs(20);

async fn state(app: &TestApp, user: &str, session: &str) -> Value {
    let resp = app
        .get(user, &format!("/api/sessions/{session}/state"))
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
    resp.body
}

/// The session's `state.updated` events, over REST.
async fn state_events(app: &TestApp, user: &str, session: &str) -> Vec<Value> {
    app.events(user, session, 0)
        .await
        .into_iter()
        .filter(|e| e["type"] == "state.updated")
        .collect()
}

#[tokio::test]
async fn the_scripted_game_masters_turn_changes_the_state_with_its_reply() {
    let app = TestApp::spawn().await;
    let session = app.ai_gm_session("alice", &["bob"]).await;
    let mut socket = app.ws("bob", &session, None).await.expect("socket");
    let worker = app.worker(|_| {}).await;
    let text = "We meet Ayla at the gate.\n\
                /state push characters {\"name\": \"Ayla\", \"hitPoints\": 10}\n\
                /state inc characters.0.hitPoints -3\n\
                /state set currentEncounter {\"encounter\": \"gate\", \"map\": \"town\", \"tokens\": []}";
    let resp = app.submit("bob", &session, text).await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text);
    let turns = app.wait_finished("bob", &session, 1).await;
    let turn = &turns[0];
    assert_eq!(turn["status"], "completed", "{turn}");
    assert!(
        turn["output"]
            .as_str()
            .is_some_and(|o| o.contains("changes the game state (3 operations)")),
        "{turn}"
    );
    let change = &turn["state_change"];
    assert_eq!(change["applied"], true, "{turn}");
    assert_eq!(change["operations"], 3);
    assert_eq!(change["version"], 1);

    let now = state(&app, "bob", &session).await;
    assert_eq!(now["version"], 1);
    assert_eq!(
        now["state"]["characters"],
        json!([{"name": "Ayla", "hitPoints": 7}])
    );
    assert_eq!(now["state"]["currentEncounter"]["map"], "town");

    // The player's socket sees the change first, then the reply naming it.
    let seen = socket
        .collect_until(WAIT, |m| m.iter().any(|e| e["type"] == "turn.completed"))
        .await;
    let kinds: Vec<&str> = seen
        .iter()
        .filter_map(|e| e["type"].as_str())
        .filter(|t| *t != "turn.chunk")
        .collect();
    let at = |kind: &str| kinds.iter().position(|k| *k == kind).expect(kind);
    assert!(at("state.updated") < at("turn.completed"), "{kinds:?}");
    let updated = seen
        .iter()
        .find(|e| e["type"] == "state.updated")
        .expect("state.updated");
    let data = &updated["data"];
    assert_eq!(data["source"], "system");
    assert_eq!(data["version"], 1);
    assert_eq!(data["base_version"], 0);
    assert_eq!(data["turn_id"], turn["turn_id"]);
    assert_eq!(data["update_id"], change["update_id"]);
    assert_eq!(data["operations"].as_array().map(Vec::len), Some(3));
    let completed = seen
        .iter()
        .find(|e| e["type"] == "turn.completed")
        .expect("turn.completed");
    assert_eq!(completed["data"]["state_change"], *change);
    assert_eq!(
        completed["seq"].as_i64(),
        updated["seq"].as_i64().map(|s| s + 1)
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_turns_change_applies_against_the_version_a_game_master_made() {
    let app = TestApp::spawn().await;
    let session = app.ai_gm_session("alice", &["bob"]).await;
    for version in 0..2 {
        let resp = app
            .post(
                "alice",
                &format!("/api/sessions/{session}/state/updates"),
                json!({"version": version, "operations": [{"path": "items", "operation": "push", "value": version}]}),
            )
            .await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
    }
    let worker = app.worker(|_| {}).await;
    app.submit("bob", &session, "I grab it.\n/state push items \"torch\"")
        .await;
    let turns = app.wait_finished("bob", &session, 1).await;
    assert_eq!(turns[0]["state_change"]["version"], 3, "{}", turns[0]);
    let now = state(&app, "alice", &session).await;
    assert_eq!(now["state"]["items"], json!([0, 1, "torch"]));
    // And a game master who then updates against the turn's version wins.
    let resp = app
        .post(
            "alice",
            &format!("/api/sessions/{session}/state/updates"),
            json!({"version": 3, "operations": [{"path": "items", "operation": "pull", "value": "torch"}]}),
        )
        .await;
    assert_eq!(resp.body["new_version"], 4, "{}", resp.text);
    worker.stop().await;
}

#[tokio::test]
async fn operations_the_state_refuses_are_recorded_on_the_turn_and_the_reply_stands() {
    let app = TestApp::spawn_with(|c| c.state_max_bytes = 400).await;
    let session = app.ai_gm_session("alice", &["bob"]).await;
    let mut socket = app.ws("bob", &session, None).await.expect("socket");
    let worker = app.worker(|c| c.state_max_bytes = 400).await;
    // The second operation is refused: the first is not applied either.
    app.submit(
        "bob",
        &session,
        "I count my coins.\n/state push items \"coin\"\n/state inc items lots",
    )
    .await;
    app.submit("bob", &session, "/state explode items").await;
    app.submit(
        "bob",
        &session,
        &format!("/state set pluginData.blob \"{}\"", "x".repeat(500)),
    )
    .await;
    app.submit("bob", &session, "/state push items \"fits\"")
        .await;
    let turns = app.wait_finished("bob", &session, 4).await;
    for turn in &turns {
        assert_eq!(turn["status"], "completed", "{turn}");
        assert!(turn["output"].as_str().is_some_and(|o| !o.is_empty()));
    }
    let refusal = |i: usize| turns[i]["state_change"]["error"].clone();
    assert_eq!(turns[0]["state_change"]["applied"], false);
    assert_eq!(turns[0]["state_change"]["operations"], 2);
    assert_eq!(refusal(0)["code"], "VALIDATION_ERROR");
    assert_eq!(refusal(0)["operation"], 1);
    assert_eq!(refusal(1)["operation"], 0);
    assert_eq!(refusal(2)["code"], "STATE_TOO_LARGE");
    assert_eq!(turns[3]["state_change"]["applied"], true);
    assert_eq!(turns[3]["state_change"]["version"], 1);

    let now = state(&app, "bob", &session).await;
    assert_eq!(now["version"], 1);
    assert_eq!(now["state"]["items"], json!(["fits"]));
    assert_eq!(now["state"]["pluginData"], json!({}));
    assert_eq!(state_events(&app, "bob", &session).await.len(), 1);
    let seen = socket
        .collect_until(WAIT, |m| {
            m.iter().filter(|e| e["type"] == "turn.completed").count() == 4
        })
        .await;
    let first = seen
        .iter()
        .find(|e| e["type"] == "turn.completed")
        .expect("completed");
    assert_eq!(first["data"]["state_change"], turns[0]["state_change"]);
    worker.stop().await;
}

#[tokio::test]
async fn a_worker_killed_mid_turn_leaves_the_change_applied_once() {
    let app = TestApp::spawn().await;
    let session = app.ai_gm_session("alice", &["bob"]).await;
    app.submit("bob", &session, "I heal.\n/state inc pluginData.healed 1")
        .await;
    let (mut doomed, _log) = app
        .worker_running_first_turn("bob", &session, 30000, 1500)
        .await;
    doomed.kill().expect("kill -9");
    doomed.wait().expect("reap");

    let survivor = app.worker(|c| c.lease_ttl_ms = 1500).await;
    let turns = app.wait_finished("bob", &session, 1).await;
    assert_eq!(turns[0]["state_change"]["version"], 1, "{}", turns[0]);
    let now = state(&app, "bob", &session).await;
    assert_eq!(now["version"], 1);
    assert_eq!(now["state"]["pluginData"], json!({"healed": 1}));
    assert_eq!(state_events(&app, "bob", &session).await.len(), 1);
    survivor.stop().await;
}

#[tokio::test]
async fn a_paused_worker_that_lost_its_lease_writes_neither_its_reply_nor_its_change() {
    let app = TestApp::spawn().await;
    let session = app.ai_gm_session("alice", &["bob"]).await;
    app.submit("bob", &session, "I heal.\n/state inc pluginData.healed 1")
        .await;
    let (mut paused, log) = app
        .worker_running_first_turn("bob", &session, 1500, 900)
        .await;
    signal(&paused, "-STOP");
    // Another worker takes over and runs the turn (the model is asked twice).
    let other = app.worker(|c| c.lease_ttl_ms = 900).await;
    app.wait_finished("bob", &session, 1).await;
    other.stop().await;
    signal(&paused, "-CONT");
    let text = wait_log(&log, "write refused by the fencing check", WAIT).await;
    paused.kill().expect("kill");
    paused.wait().expect("reap");
    assert!(
        text.contains("write refused by the fencing check"),
        "stale worker log:\n{text}"
    );
    let now = state(&app, "bob", &session).await;
    assert_eq!(now["version"], 1);
    assert_eq!(now["state"]["pluginData"], json!({"healed": 1}));
    assert_eq!(state_events(&app, "bob", &session).await.len(), 1);
    let completed = app
        .events("bob", &session, 0)
        .await
        .into_iter()
        .filter(|e| e["type"] == "turn.completed")
        .count();
    assert_eq!(completed, 1);
}

/// A streamed `update_game_state` call, its arguments split in pieces.
fn tool_call(id: &str, arguments: &str) -> Vec<Value> {
    let (a, b) = arguments.split_at(arguments.len() / 2);
    vec![
        json!({"role": "assistant", "tool_calls": [{"index": 0, "id": id, "type": "function",
               "function": {"name": "update_game_state", "arguments": ""}}]}),
        json!({"tool_calls": [{"index": 0, "function": {"arguments": a}}]}),
        json!({"tool_calls": [{"index": 0, "function": {"arguments": b}}]}),
    ]
}

#[tokio::test]
async fn the_openai_game_master_changes_the_state_through_a_streamed_tool_call() {
    // First request: only the tool call. Second (after the tool result):
    // the narration. A turn saying "garbled" gets arguments that are not JSON.
    let fake = FakeLlm::start(|body, _| {
        if FakeLlm::tool_answered(body) {
            return Reply::Stream(vec!["The ogre ".into(), "staggers.".into()]);
        }
        let args = if FakeLlm::last_user_message(body).contains("garbled") {
            "{\"operations\": [{\"path\": \"items\"".to_owned()
        } else {
            json!({"operations": [
                {"path": "actors", "operation": "push", "value": {"name": "ogre", "hp": 30}},
                {"path": "actors.0.hp", "operation": "inc", "value": -8}
            ]})
            .to_string()
        };
        Reply::Deltas(tool_call("call_1", &args))
    })
    .await;
    let app = TestApp::spawn_with(fake.config()).await;
    let session = app.ai_gm_session("alice", &["bob"]).await;
    let worker = app.worker(fake.config()).await;
    app.submit("bob", &session, "I strike the ogre").await;
    let turns = app.wait_finished("bob", &session, 1).await;
    assert_eq!(turns[0]["output"], "The ogre staggers.", "{}", turns[0]);
    assert_eq!(turns[0]["state_change"]["applied"], true);
    let now = state(&app, "bob", &session).await;
    assert_eq!(now["state"]["actors"], json!([{"name": "ogre", "hp": 22}]));

    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    let first = &requests[0].body;
    assert_eq!(first["tools"][0]["function"]["name"], "update_game_state");
    // The model sees the state it is changing.
    assert!(
        first["messages"][1]["content"].as_str().is_some_and(|c| c
            .starts_with("The game state now (version 0)")
            && c.contains("\"actors\":[]")),
        "{first}"
    );
    assert_eq!(first["tool_choice"], "auto");
    let second = &requests[1].body;
    assert_eq!(second["tool_choice"], "none");
    let messages = second["messages"].as_array().expect("messages");
    let call = &messages[messages.len() - 2];
    assert_eq!(call["role"], "assistant");
    // An empty text, not null (which llama-cpp-python's server refuses).
    assert_eq!(call["content"], "");
    // Every request bounds the reply.
    assert!(
        requests.iter().all(|r| r.body["max_tokens"] == 1024),
        "{requests:?}"
    );
    assert_eq!(call["tool_calls"][0]["id"], "call_1");
    assert_eq!(
        call["tool_calls"][0]["function"]["name"],
        "update_game_state"
    );
    let arguments: Value = serde_json::from_str(
        call["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .expect("arguments"),
    )
    .expect("the arguments sent back are the whole call");
    assert_eq!(arguments["operations"].as_array().map(Vec::len), Some(2));
    assert_eq!(messages[messages.len() - 1]["tool_call_id"], "call_1");

    // Arguments that are not JSON: refused, recorded, the reply stands.
    app.submit("bob", &session, "garbled").await;
    let turns = app.wait_finished("bob", &session, 2).await;
    let third = &fake.requests()[2].body;
    assert!(
        third["messages"][1]["content"]
            .as_str()
            .is_some_and(|c| c.contains("(version 1)") && c.contains("\"hp\":22")),
        "{third}"
    );
    assert_eq!(turns[1]["status"], "completed");
    assert_eq!(turns[1]["output"], "The ogre staggers.");
    assert_eq!(turns[1]["state_change"]["applied"], false);
    assert!(
        turns[1]["state_change"]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not a JSON object")),
        "{}",
        turns[1]
    );
    assert_eq!(state(&app, "bob", &session).await["version"], 1);
    worker.stop().await;
}

#[tokio::test]
async fn replies_with_text_and_a_tool_call_need_one_request_and_tools_can_be_turned_off() {
    let fake = FakeLlm::start(|body, _| {
        let mut deltas = vec![json!({"content": "Done. "})];
        if body.get("tools").is_some() {
            deltas.extend(tool_call(
                "call_9",
                &json!({"operations": [{"path": "items", "operation": "push", "value": "gem"}]})
                    .to_string(),
            ));
        }
        Reply::Deltas(deltas)
    })
    .await;
    let app = TestApp::spawn_with(fake.config()).await;
    let session = app.ai_gm_session("alice", &["bob"]).await;
    let worker = app.worker(fake.config()).await;
    app.submit("bob", &session, "I take the gem").await;
    let turns = app.wait_finished("bob", &session, 1).await;
    assert_eq!(turns[0]["output"], "Done. ");
    assert_eq!(turns[0]["state_change"]["version"], 1);
    assert_eq!(fake.requests().len(), 1);
    worker.stop().await;

    let worker = app
        .worker(|c| {
            fake.config()(c);
            c.llm_tools = false;
        })
        .await;
    app.submit("bob", &session, "again").await;
    let turns = app.wait_finished("bob", &session, 2).await;
    assert!(turns[1].get("state_change").is_none(), "{}", turns[1]);
    let requests = fake.requests();
    assert!(requests[1].body.get("tools").is_none());
    // Without the tool the model is not shown the state either.
    assert_eq!(requests[1].body["messages"][1]["role"], "user");
    assert!(requests[1].body.get("tool_choice").is_none());
    worker.stop().await;
}
