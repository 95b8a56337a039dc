//! Postgres restarted under load: a private Postgres instance (initdb on a
//! free port, as the `postgres` user when the tests run as root), so the
//! shared server is never restarted, serves one API and two workers while
//! turns arrive at about 50 a second. It is restarted fast, then stopped
//! hard and started again. Every turn that got a 202 ends completed or
//! failed, exactly once, in order; the API and the workers recover by
//! themselves; `/readyz` reports the outage and the recovery.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{TestApp, TestDb, free_port};

/// A Postgres server of its own, in a temporary directory.
struct PrivatePostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// Who runs the server (`postgres` when the tests run as root, which
    /// initdb refuses).
    user: Option<String>,
}

impl PrivatePostgres {
    fn start() -> PrivatePostgres {
        let bin = postgres_bin_dir();
        let dir = std::env::temp_dir().join(format!("qb-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("data directory");
        let root = output(Command::new("id").arg("-u")).trim() == "0";
        let user = root.then(|| "postgres".to_owned());
        if let Some(user) = &user {
            run(Command::new("chown").arg(user).arg(&dir));
        }
        let pg = PrivatePostgres {
            bin,
            dir,
            port: free_port(),
            user,
        };
        pg.run_pg(
            "initdb",
            &[
                "-D",
                &pg.data().to_string_lossy(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "--no-instructions",
            ],
        );
        pg.ctl(&["start", "-w", "-t", "30"]);
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs `pg_ctl` with the server's options.
    fn ctl(&self, args: &[&str]) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off -c max_connections=100",
            self.port,
            self.dir.display()
        );
        let data = self.data().to_string_lossy().into_owned();
        let log = self.dir.join("server.log").to_string_lossy().into_owned();
        let mut all = vec!["-D", &data, "-l", &log, "-o", &options];
        all.extend_from_slice(args);
        self.run_pg("pg_ctl", &all);
    }

    fn run_pg(&self, program: &str, args: &[&str]) {
        run(self.command(program).args(args).current_dir(&self.dir));
    }

    /// `program` of the Postgres binaries, run as the server's user.
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        match &self.user {
            Some(user) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", user, "--"]).arg(&program);
                cmd
            }
            None => Command::new(&program),
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data().to_string_lossy().into_owned();
        let _ = self
            .command("pg_ctl")
            .args(["-D", &data, "stop", "-m", "immediate"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where `initdb` and `pg_ctl` are: `QB_PG_BIN`, `pg_config --bindir`, or
/// Debian's `/usr/lib/postgresql/<version>/bin` (newest first).
fn postgres_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("QB_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    debian.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    candidates.extend(debian.into_iter().rev());
    candidates
        .into_iter()
        .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
        .expect("initdb and pg_ctl (set QB_PG_BIN to their directory)")
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run a command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn output(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&cmd.output().expect("run a command").stdout).into_owned()
}

/// What the submitting client saw.
#[derive(Default)]
struct Submitted {
    /// Idempotency key -> the turn id its 202 named.
    accepted: HashMap<String, String>,
    /// Answers other than 202, by status.
    other: HashMap<u16, usize>,
}

#[tokio::test]
async fn a_postgres_restart_under_load_loses_and_duplicates_no_turn() {
    questboard::telemetry::init_logging(questboard::config::LogFormat::Text);
    let pg = PrivatePostgres::start();
    let db = Arc::new(TestDb::create_on(&pg.url()).await);
    let app = Arc::new(
        TestApp::spawn_on(db, |c| {
            c.db_acquire_timeout_ms = 1000;
            // One user submits 50 turns a second here: no per-user limit.
            c.user_turns_per_minute = 0;
        })
        .await,
    );
    let workers = [app.worker(|_| {}).await, app.worker(|_| {}).await];
    let mut sessions = Vec::new();
    for i in 0..5 {
        sessions.push(app.create_session("alice", &format!("Restart {i}")).await);
    }

    // /readyz, every 100 ms, until told to stop.
    let readiness: Arc<Mutex<Vec<(Instant, u16)>>> = Arc::default();
    let probing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let probe = {
        let (app, readiness, probing) = (app.clone(), readiness.clone(), probing.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("client");
            while probing.load(std::sync::atomic::Ordering::Relaxed) {
                let status = match client.get(app.url("/readyz")).send().await {
                    Ok(resp) => resp.status().as_u16(),
                    Err(_) => 0,
                };
                readiness
                    .lock()
                    .expect("lock")
                    .push((Instant::now(), status));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // About 50 submissions a second for 12 s, each retried with its
    // Idempotency-Key while the answer is 503 (as a client should).
    let submitted: Arc<Mutex<Submitted>> = Arc::default();
    let load = {
        let (app, sessions, submitted) = (app.clone(), sessions.clone(), submitted.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut tasks = Vec::new();
            for n in 0..600usize {
                tick.tick().await;
                let (app, submitted) = (app.clone(), submitted.clone());
                let session = sessions[n % sessions.len()].clone();
                tasks.push(tokio::spawn(async move {
                    let key = format!("restart-{n}");
                    let deadline = Instant::now() + Duration::from_secs(60);
                    loop {
                        let resp = app
                            .client
                            .post(app.url(&format!("/api/sessions/{session}/turns")))
                            .bearer_auth(app.token("alice"))
                            .header("Idempotency-Key", &key)
                            .json(&serde_json::json!({ "text": format!("turn {n}") }))
                            .send()
                            .await;
                        let status = resp.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
                        if status == 500 {
                            let text = resp.expect("response").text().await.unwrap_or_default();
                            panic!("submission {n} got 500: {text}");
                        }
                        if status == 202 {
                            let body: Value = resp.expect("response").json().await.expect("json");
                            let id = body["turn_id"].as_str().expect("turn_id").to_owned();
                            let mut seen = submitted.lock().expect("lock");
                            if let Some(earlier) = seen.accepted.insert(key.clone(), id.clone()) {
                                assert_eq!(earlier, id, "one key, two turns");
                            }
                            return;
                        }
                        *submitted
                            .lock()
                            .expect("lock")
                            .other
                            .entry(status)
                            .or_default() += 1;
                        assert!(
                            matches!(status, 0 | 503),
                            "submission {n} got {status}, not 202 or 503"
                        );
                        assert!(Instant::now() < deadline, "submission {n} never accepted");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }));
            }
            for task in tasks {
                task.await.expect("submission");
            }
        })
    };

    // A fast restart at 3 s, a hard stop at 7 s started again 1.5 s later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarted = Instant::now();
    pg.ctl(&["restart", "-m", "fast", "-w", "-t", "30"]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let stopped = Instant::now();
    pg.ctl(&["stop", "-m", "immediate", "-w"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pg.ctl(&["start", "-w", "-t", "30"]);
    let started = Instant::now();

    load.await.expect("load");
    // Recovery: every accepted turn finishes, each exactly once.
    let accepted = submitted.lock().expect("lock").accepted.clone();
    assert_eq!(
        accepted.len(),
        600,
        "every submission was accepted in the end"
    );
    let ids: HashSet<&String> = accepted.values().collect();
    assert_eq!(ids.len(), 600, "600 keys, 600 distinct turns");
    let mut finished = 0;
    for session in &sessions {
        let turns = wait_all_finished(&app, session, 120).await;
        finished += turns.len();
        for turn in &turns {
            assert!(
                ids.contains(&turn["turn_id"].as_str().unwrap_or_default().to_owned()),
                "a turn nobody was told about: {turn}"
            );
        }
        // The event log: seqs 1..=n with no gap or repeat, and each turn
        // completed or failed once, after it was queued.
        let mut events: Vec<Value> = Vec::new();
        loop {
            let after = events.last().and_then(|e| e["seq"].as_i64()).unwrap_or(0);
            let page = app.events("alice", session, after).await;
            if page.is_empty() {
                break;
            }
            events.extend(page);
        }
        let seqs: Vec<i64> = events.iter().filter_map(|e| e["seq"].as_i64()).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as i64).collect::<Vec<_>>(),
            "gapless seqs"
        );
        let mut outcomes: HashMap<String, usize> = HashMap::new();
        let mut queued: HashSet<String> = HashSet::new();
        for event in &events {
            let turn = event["data"]["turn_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            match event["type"].as_str() {
                Some("turn.queued") => {
                    assert!(queued.insert(turn.clone()), "queued twice: {turn}");
                }
                Some("turn.completed" | "turn.failed") => {
                    assert!(queued.contains(&turn), "finished before queued: {turn}");
                    *outcomes.entry(turn).or_default() += 1;
                }
                _ => {}
            }
        }
        assert_eq!(queued.len(), turns.len());
        assert!(
            outcomes.values().all(|n| *n == 1) && outcomes.len() == turns.len(),
            "each turn finished exactly once"
        );
    }
    assert_eq!(finished, 600);

    // New work after the outages goes through, without any restart of ours.
    let resp = app.submit("alice", &sessions[0], "after the storm").await;
    assert_eq!(resp.status, 202, "{}", resp.text);
    wait_all_finished(&app, &sessions[0], 60).await;

    probing.store(false, std::sync::atomic::Ordering::Relaxed);
    probe.await.expect("probe");
    let readiness = readiness.lock().expect("lock").clone();
    let during = |from: Instant, to: Instant| {
        readiness
            .iter()
            .filter(move |(at, _)| *at >= from && *at <= to)
            .map(|(_, s)| *s)
    };
    assert!(
        during(stopped, started).any(|s| s == 503),
        "/readyz did not report the hard stop: {:?}",
        during(stopped, started).collect::<Vec<_>>()
    );
    assert!(
        during(started, Instant::now()).any(|s| s == 200),
        "/readyz did not report the recovery"
    );
    assert!(
        readiness.iter().all(|(_, s)| matches!(s, 200 | 503)),
        "/readyz answered something else: {readiness:?}"
    );
    let other = submitted.lock().expect("lock").other.clone();
    eprintln!(
        "restart under load: 600 turns, answers other than 202 while down: {other:?}, \
         restart at {:?}",
        restarted.elapsed()
    );
    drop(workers);
}

/// Waits until every turn of the session is completed or failed.
async fn wait_all_finished(app: &TestApp, session: &str, seconds: u64) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let turns = app.turns("alice", session).await;
        if !turns.is_empty()
            && turns
                .iter()
                .all(|t| t["status"] == "completed" || t["status"] == "failed")
        {
            return turns;
        }
        assert!(Instant::now() < deadline, "turns not finished: {turns:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
