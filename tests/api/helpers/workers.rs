//! Workers of a test app (in-process runtimes and child processes) and the
//! turns they run: submitting, listing, waiting until finished.

use super::*;

/// An in-process worker runtime on a test app's database.
pub struct TestWorker {
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl TestWorker {
    /// Asks the worker to stop and waits until it has.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Worker settings for tests: fast retries, short leases, quick scripted replies.
pub fn fast_worker(config: &mut Config) {
    config.scripted_latency_ms = 10;
    config.job_backoff_ms = 50;
    config.lease_ttl_ms = 2000;
    config.worker_poll_ms = 50;
    config.shutdown_grace_ms = 2000;
    config.worker_concurrency = 4;
}

impl TestApp {
    /// Starts a worker runtime in this process with the app's configuration
    /// after [`fast_worker`] and then `adjust`, serving the production kinds.
    pub async fn worker(&self, adjust: impl FnOnce(&mut Config)) -> TestWorker {
        self.spawn_worker(adjust, questboard_workers::jobs::registry())
            .await
    }

    /// Like [`TestApp::worker`], also serving the test kinds
    /// (`kinds::test_registry`).
    pub async fn jobs_worker(&self, adjust: impl FnOnce(&mut Config)) -> TestWorker {
        self.spawn_worker(adjust, crate::kinds::test_registry())
            .await
    }

    async fn spawn_worker(
        &self,
        adjust: impl FnOnce(&mut Config),
        registry: questboard_workers::jobs::Registry,
    ) -> TestWorker {
        let mut config = self.config.clone();
        fast_worker(&mut config);
        adjust(&mut config);
        let pool = questboard_core::db::connect(&self.db.url, 10)
            .await
            .expect("worker pool");
        let worker = app::worker_with(&config, pool, &self.bus, registry).expect("worker");
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            worker
                .run(async move {
                    let _ = rx.await;
                })
                .await
                .expect("worker run");
        });
        TestWorker {
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    /// Starts a worker that serves the test kinds as a separate process
    /// (this test binary, re-run as `kinds::child_worker_entry_point`), so
    /// it can be killed; logs to a file whose path is returned.
    pub fn child_worker(&self, env: &[(&str, &str)]) -> (std::process::Child, std::path::PathBuf) {
        let log = std::env::temp_dir().join(format!("qb-child-{}.log", uuid::Uuid::new_v4()));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = std::process::Command::new(std::env::current_exe().expect("test binary"));
        cmd.args([
            "--exact",
            "kinds::child_worker_entry_point",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(crate::kinds::CHILD_ENV, "1")
        .env("DATABASE_URL", &self.db.url)
        .env("REDIS_URL", redis_url())
        .env("QB_JWT_SECRET", TEST_SECRET)
        .env("QB_STORAGE_URL", "memory://")
        .env("QB_METRICS_ADDR", "127.0.0.1:0")
        .env("QB_WORKER_POLL_MS", "50")
        .env("QB_LEASE_TTL_MS", "1500")
        .env("RUST_LOG", "info")
        .stdout(file.try_clone().expect("log"))
        .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        (cmd.spawn().expect("spawn child worker"), log)
    }

    /// Starts `questboard work` as a separate process (so it can be killed
    /// or paused), logging to a file whose path is returned.
    pub fn worker_process(
        &self,
        env: &[(&str, &str)],
    ) -> (std::process::Child, std::path::PathBuf) {
        let log = std::env::temp_dir().join(format!("qb-worker-{}.log", uuid::Uuid::new_v4()));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_questboard"));
        cmd.arg("work")
            .env("DATABASE_URL", &self.db.url)
            .env("REDIS_URL", redis_url())
            .env("QB_METRICS_ADDR", "127.0.0.1:0")
            .env("QB_DB_MAX_CONNECTIONS", "5")
            .env("QB_WORKER_POLL_MS", "50")
            .env("QB_JOB_BACKOFF_MS", "50")
            .env("QB_LLM_PROVIDER", "scripted")
            .env("RUST_LOG", "info")
            .env("QB_LOG_FORMAT", "text")
            .stdout(std::process::Stdio::null())
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        (cmd.spawn().expect("spawn worker process"), log)
    }

    /// Starts `questboard work` as a process whose scripted model takes
    /// `latency_ms` per reply, with leases of `ttl_ms`, and waits until it
    /// runs the session's first turn (so a test can kill or freeze it
    /// mid-turn).
    pub async fn worker_running_first_turn(
        &self,
        user: &str,
        session: &str,
        latency_ms: u64,
        ttl_ms: u64,
    ) -> (std::process::Child, std::path::PathBuf) {
        let (latency, ttl) = (latency_ms.to_string(), ttl_ms.to_string());
        let started = self.worker_process(&[
            ("QB_SCRIPTED_LATENCY_MS", latency.as_str()),
            ("QB_LEASE_TTL_MS", ttl.as_str()),
        ]);
        self.wait_turns(user, session, "the turn to start", |t| {
            t[0]["status"] == "running"
        })
        .await;
        started
    }

    /// Submits a turn as `user`.
    pub async fn submit(&self, user: &str, session: &str, text: &str) -> Resp {
        self.post(
            user,
            &format!("/api/sessions/{session}/turns"),
            serde_json::json!({ "text": text }),
        )
        .await
    }

    /// All turns of a session, as `user`.
    pub async fn turns(&self, user: &str, session: &str) -> Vec<Value> {
        let resp = self
            .get(user, &format!("/api/sessions/{session}/turns?limit=500"))
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text);
        resp.body["turns"].as_array().expect("turns").clone()
    }

    /// Waits until every turn of the session is finished (completed or failed).
    pub async fn wait_finished(&self, user: &str, session: &str, count: usize) -> Vec<Value> {
        self.wait_finished_within(user, session, count, Duration::from_secs(60))
            .await
    }

    /// Like [`TestApp::wait_finished`], failing after `wait`.
    pub async fn wait_finished_within(
        &self,
        user: &str,
        session: &str,
        count: usize,
        wait: Duration,
    ) -> Vec<Value> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let turns = self.turns(user, session).await;
            let finished = turns
                .iter()
                .filter(|t| t["status"] == "completed" || t["status"] == "failed")
                .count();
            if turns.len() == count && finished == count {
                return turns;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "turns not finished: {turns:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `check` holds for the session's turns.
    pub async fn wait_turns(
        &self,
        user: &str,
        session: &str,
        what: &str,
        check: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let turns = self.turns(user, session).await;
            if check(&turns) {
                return turns;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}: {turns:#?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}
