//! `TestApp`: a running questboard API on its own fresh database.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use questboard::config::{Config, Secret};
use questboard::{app, auth, telemetry};
use questboard_core::identity::UserId;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The HS256 secret every test app uses.
pub const TEST_SECRET: &str = "test-secret-test-secret-test-secret-0123";

/// Postgres server URL for tests: `QB_TEST_DATABASE_URL`, else
/// `DATABASE_URL`, else the local default. The database in it is only used
/// to create and drop per-test databases.
pub fn admin_url() -> String {
    std::env::var("QB_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Redis URL for tests.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A fresh database with migrations applied; dropped when this is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
    /// The server's maintenance database, to drop this one.
    admin: String,
    /// Set by tests that mean to leave jobs failed or stuck.
    failures_expected: std::sync::atomic::AtomicBool,
}

impl TestDb {
    pub async fn create() -> TestDb {
        Self::create_on(&admin_url()).await
    }

    /// A fresh database on the server of `admin` (a URL of a database
    /// there that the test may create databases from).
    pub async fn create_on(admin_url: &str) -> TestDb {
        let admin: PgConnectOptions = admin_url.parse().expect("admin url");
        let mut conn = PgConnection::connect_with(&admin)
            .await
            .expect("connect to Postgres for tests");
        drop_stale_databases(&mut conn).await;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let name = format!("qbt_{now}_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let mut url = url::Url::parse(admin_url).expect("admin url");
        url.set_path(&name);
        let url = url.to_string();
        let pool = questboard_core::db::connect(&url, 5)
            .await
            .expect("connect test db");
        questboard_core::db::migrate(&pool)
            .await
            .expect("migrate test db");
        TestDb {
            name,
            url,
            pool,
            admin: admin_url.to_owned(),
            failures_expected: Default::default(),
        }
    }

    /// Says this test leaves jobs failed for good or stuck on purpose;
    /// otherwise dropping the database fails the test when any are left
    /// (see [`left_behind`]).
    pub fn expect_failed_jobs(&self) {
        self.failures_expected
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Jobs a test left failed for good (not cancelled), or running with no
/// live lease (nobody works on them and nobody took them over): what a
/// test that passed by accident would leave.
async fn left_behind(url: &str) -> Vec<String> {
    let Ok(mut conn) = PgConnection::connect(url).await else {
        return Vec::new();
    };
    sqlx::query_scalar(
        "SELECT format('%s %s %s: %s', j.job_type, j.id,
                       CASE WHEN j.status = 'Killed' THEN 'failed' ELSE 'stuck running' END,
                       coalesce(j.last_result ->> 'Err', ''))
         FROM apalis.jobs j
         WHERE (j.status = 'Killed' AND NOT coalesce(j.metadata ? 'cancelled_at', false))
            OR (j.status = 'Running' AND NOT EXISTS (
                    SELECT 1 FROM leases l
                    WHERE l.scope = 'job' AND l.key = j.id AND l.expires_at > now()))
         ORDER BY j.id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap_or_default()
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin_url = self.admin.clone();
        let check = !std::thread::panicking()
            && !self
                .failures_expected
                .load(std::sync::atomic::Ordering::Relaxed);
        let url = self.url.clone();
        // Dropping needs async I/O, which Drop cannot await; a short-lived
        // thread with its own runtime does it.
        let left = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return Vec::new();
            };
            rt.block_on(async move {
                let left = if check {
                    left_behind(&url).await
                } else {
                    Vec::new()
                };
                let Ok(admin) = admin_url.parse::<PgConnectOptions>() else {
                    return left;
                };
                if let Ok(mut conn) = PgConnection::connect_with(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
                left
            })
        })
        .join()
        .unwrap_or_default();
        assert!(
            left.is_empty(),
            "jobs were left failed or stuck (a test that means to leave them calls \
             `db.expect_failed_jobs()`):\n{}",
            left.join("\n")
        );
    }
}

/// Databases left behind by a crashed run (older than an hour) are dropped
/// once per test process.
async fn drop_stale_databases(conn: &mut PgConnection) {
    static ONCE: OnceLock<()> = OnceLock::new();
    if ONCE.set(()).is_err() {
        return;
    }
    let cutoff = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        - 3600;
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'qbt\\_%'")
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_default();
    for name in names {
        let created: Option<u64> = name.split('_').nth(1).and_then(|t| t.parse().ok());
        if created.is_some_and(|t| t < cutoff) {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut *conn)
            .await;
        }
    }
}

/// A response: status, headers and the body parsed as JSON (Null if empty).
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Resp {
    /// The error code of a JSON error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"]
            .as_str()
            .unwrap_or("<no error code>")
    }

    /// Asserts the status and that the body is our JSON error shape.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text);
        assert_eq!(self.code(), code, "body: {}", self.text);
        assert!(
            self.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "error without message: {}",
            self.text
        );
    }
}

/// A running API.
pub struct TestApp {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub config: Config,
    pub db: std::sync::Arc<TestDb>,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    /// Starts an app after `adjust` has changed its configuration.
    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
        let db = std::sync::Arc::new(TestDb::create().await);
        Self::spawn_on(db, adjust).await
    }

    /// Starts a second API process-equivalent on this app's database (its
    /// own pools, Redis connections, bridge and listener).
    pub async fn another_api(&self, adjust: impl FnOnce(&mut Config)) -> TestApp {
        let base = self.config.clone();
        Self::spawn_on(self.db.clone(), move |c| {
            *c = base;
            adjust(c);
        })
        .await
    }

    /// Starts an app on `db` after `adjust` has changed its configuration.
    pub async fn spawn_on(db: std::sync::Arc<TestDb>, adjust: impl FnOnce(&mut Config)) -> TestApp {
        Self::spawn_full(db, adjust, None).await
    }

    /// Starts an app whose campaign files go to `storage` (a local
    /// directory, or an S3-compatible server's bucket).
    pub async fn spawn_with_storage(
        storage: questboard_core::storage::Storage,
        adjust: impl FnOnce(&mut Config),
    ) -> TestApp {
        let db = std::sync::Arc::new(TestDb::create().await);
        Self::spawn_full(db, adjust, Some(storage)).await
    }

    async fn spawn_full(
        db: std::sync::Arc<TestDb>,
        adjust: impl FnOnce(&mut Config),
        storage: Option<questboard_core::storage::Storage>,
    ) -> TestApp {
        let mut config = Config::from_env().expect("config from env");
        config.database_url = Secret::new(db.url.clone());
        config.redis_url = Secret::new(redis_url());
        config.jwt_secret = Some(Secret::new(TEST_SECRET));
        config.jwks_url = None;
        config.jwt_issuer = None;
        config.jwt_audience = None;
        config.storage_url = "memory://".into();
        config.max_body_bytes = 1024 * 1024;
        config.db_max_connections = 10;
        config.relay_interval_ms = 200;
        adjust(&mut config);

        let metrics_addr = telemetry::serve_metrics("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("metrics listener");
        let mut state = app::api_state_with(&config, crate::kinds::test_registry())
            .await
            .expect("api state");
        if let Some(storage) = storage {
            state.storage = storage;
        }
        app::spawn_relay(
            &config,
            state.pool.clone(),
            format!("test-api-{}", uuid::Uuid::new_v4()),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = app::serve_http(listener, state, async move {
                let _ = rx.await;
            })
            .await;
        });
        TestApp {
            addr,
            metrics_addr,
            config,
            db,
            // Idle connections are dropped well before the server's
            // keep-alive limit (QB_HTTP_HEADER_TIMEOUT_MS, 10 s), so a
            // request never races the server closing its connection.
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .pool_idle_timeout(Duration::from_secs(5))
                .build()
                .expect("client"),
            shutdown: Some(tx),
        }
    }

    /// Starts the API's graceful shutdown (as SIGTERM would): requests in
    /// flight are finished, new connections refused.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A valid token for `user` with the `questboard:operator` permission.
    pub fn operator_token(&self, user: &str) -> String {
        auth::mint_with(
            &self.config,
            &UserId::parse(user).expect("user id"),
            Duration::from_secs(600),
            true,
        )
        .expect("mint")
    }

    /// Sends a request as the operator `ops`.
    pub async fn op(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        let mut req = self
            .client
            .request(method, self.url(path))
            .bearer_auth(self.operator_token("ops"));
        if let Some(body) = body {
            req = req.json(&body);
        }
        into_resp(req.send().await.expect("request")).await
    }

    /// Starts a job through the operators' route; returns its id.
    pub async fn start_job(&self, kind: &str, payload: Value) -> String {
        let resp = self
            .op(
                Method::POST,
                "/api/admin/jobs",
                Some(serde_json::json!({ "kind": kind, "payload": payload })),
            )
            .await;
        assert_eq!(resp.status, 201, "{}", resp.text);
        resp.body["job_id"].as_str().expect("job_id").to_owned()
    }

    /// A job as operators see it.
    pub async fn job_detail(&self, id: &str) -> Value {
        let resp = self
            .op(Method::GET, &format!("/api/admin/jobs/{id}"), None)
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text);
        resp.body
    }

    /// Waits until `check` holds for the job (as operators see it).
    pub async fn wait_job(&self, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let job = self.job_detail(id).await;
            if check(&job) {
                return job;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}: {job:#}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A valid token for `user`.
    pub fn token(&self, user: &str) -> String {
        self.token_for(user, Duration::from_secs(600))
    }

    /// A token for `user` that expires after `ttl`.
    pub fn token_for(&self, user: &str, ttl: Duration) -> String {
        auth::mint(&self.config, &UserId::parse(user).expect("user id"), ttl).expect("mint")
    }

    /// Sends a request as `user` (None: no Authorization header).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        user: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let mut req = self.client.request(method, self.url(path));
        if let Some(user) = user {
            req = req.bearer_auth(self.token(user));
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        into_resp(req.send().await.expect("request")).await
    }

    /// Sends a request with a raw Authorization header value.
    pub async fn call_with_auth(&self, method: Method, path: &str, authorization: &str) -> Resp {
        let req = self
            .client
            .request(method, self.url(path))
            .header("authorization", authorization);
        into_resp(req.send().await.expect("request")).await
    }

    pub async fn get(&self, user: &str, path: &str) -> Resp {
        self.call(Method::GET, path, Some(user), None).await
    }

    pub async fn post(&self, user: &str, path: &str, body: Value) -> Resp {
        self.call(Method::POST, path, Some(user), Some(body)).await
    }

    pub async fn patch(&self, user: &str, path: &str, body: Value) -> Resp {
        self.call(Method::PATCH, path, Some(user), Some(body)).await
    }

    pub async fn delete(&self, user: &str, path: &str) -> Resp {
        self.call(Method::DELETE, path, Some(user), None).await
    }

    /// Creates a session owned by `owner` and returns its id.
    pub async fn create_session(&self, owner: &str, name: &str) -> String {
        let resp = self
            .post(owner, "/api/sessions", serde_json::json!({ "name": name }))
            .await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text);
        resp.body["session_id"]
            .as_str()
            .expect("session_id")
            .to_owned()
    }

    /// Creates an invite and returns `(invite_id, token)`.
    pub async fn invite(&self, owner: &str, session: &str, body: Value) -> (String, String) {
        let resp = self
            .post(owner, &format!("/api/sessions/{session}/invites"), body)
            .await;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text);
        (
            resp.body["invite_id"]
                .as_str()
                .expect("invite_id")
                .to_owned(),
            resp.body["token"].as_str().expect("token").to_owned(),
        )
    }

    pub async fn accept(&self, user: &str, token: &str) -> Resp {
        self.post(
            user,
            "/api/invites/accept",
            serde_json::json!({ "token": token }),
        )
        .await
    }

    /// Creates a session with `members` joined as players.
    pub async fn session_with(&self, owner: &str, members: &[&str]) -> String {
        let session = self.create_session(owner, "Shared").await;
        for member in members {
            let (_, token) = self.invite(owner, &session, serde_json::json!({})).await;
            let resp = self.accept(member, &token).await;
            assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
        }
        session
    }

    /// Sets what the AI game master may change on its own in `session`
    /// (`apply`, `propose` or `off`), as its owner.
    pub async fn set_ai_authority(&self, owner: &str, session: &str, authority: &str) {
        let resp = self
            .patch(
                owner,
                &format!("/api/sessions/{session}"),
                serde_json::json!({ "ai_authority": authority }),
            )
            .await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
        assert_eq!(resp.body["ai_authority"], authority);
    }

    /// A session with `members` as players where the AI is the game
    /// master: what its replies ask for applies, whoever's turn it was.
    pub async fn ai_gm_session(&self, owner: &str, members: &[&str]) -> String {
        let session = self.session_with(owner, members).await;
        self.set_ai_authority(owner, &session, "apply").await;
        session
    }

    /// The Prometheus text of this process.
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("http://{}/metrics", self.metrics_addr))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }
}

pub async fn into_resp(resp: reqwest::Response) -> Resp {
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::Null)
    };
    Resp {
        status,
        headers,
        body,
        text,
    }
}

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
        let worker = app::worker_with(&config, pool, registry).expect("worker");
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
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
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

/// A WebSocket client of a session.
pub struct WsClient {
    stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

/// What a socket yielded.
#[derive(Debug)]
pub enum WsItem {
    Json(Value),
    Closed(Option<u16>),
}

impl WsClient {
    /// Sends a text message.
    pub async fn send_text(&mut self, text: String) {
        use futures::SinkExt as _;
        self.stream
            .send(tokio_tungstenite::tungstenite::Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// Sends any message, raw frames included (a client breaking the rules).
    pub async fn send_raw(&mut self, message: tokio_tungstenite::tungstenite::Message) {
        use futures::SinkExt as _;
        self.stream.send(message).await.expect("send");
    }

    /// Sends a JSON message and waits for the `reply` to `request_id`,
    /// skipping events in between.
    pub async fn request(&mut self, message: Value, wait: Duration) -> Value {
        let request_id = message["request_id"].clone();
        self.send_text(message.to_string()).await;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(WsItem::Json(value))
                    if value["type"] == "reply" && value["request_id"] == request_id =>
                {
                    return value;
                }
                Some(WsItem::Json(_)) => continue,
                other => panic!("no reply to {request_id}: {other:?}"),
            }
        }
    }

    /// The next JSON message or the close, waiting at most `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<WsItem> {
        use futures::StreamExt as _;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let message = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()?;
            match message {
                Some(Ok(Message::Text(text))) => {
                    return Some(WsItem::Json(
                        serde_json::from_str(&text).expect("json message"),
                    ));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Some(WsItem::Closed(frame.map(|f| u16::from(f.code))));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Some(WsItem::Closed(None)),
            }
        }
    }

    /// Collects messages until `done` holds for the list, failing after `wait`.
    pub async fn collect_until(
        &mut self,
        wait: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut seen = Vec::new();
        while !done(&seen) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(WsItem::Json(value)) => seen.push(value),
                other => panic!("socket ended early ({other:?}) after {seen:#?}"),
            }
        }
        seen
    }
}

impl TestApp {
    /// Opens `/ws/sessions/{session}` as `user`; `Err(status)` if refused.
    pub async fn ws(
        &self,
        user: &str,
        session: &str,
        after_seq: Option<i64>,
    ) -> Result<WsClient, u16> {
        self.ws_with_token(&self.token(user), session, after_seq)
            .await
    }

    /// Opens `/ws/sessions/{session}` with `token`; `Err(status)` if refused.
    pub async fn ws_with_token(
        &self,
        token: &str,
        session: &str,
        after_seq: Option<i64>,
    ) -> Result<WsClient, u16> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let query = after_seq
            .map(|s| format!("?after_seq={s}"))
            .unwrap_or_default();
        let mut request = format!("ws://{}/ws/sessions/{session}{query}", self.addr)
            .into_client_request()
            .expect("request");
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        self.ws_request(request).await
    }

    /// Opens a socket with a prepared request.
    pub async fn ws_request(
        &self,
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Result<WsClient, u16> {
        match tokio_tungstenite::connect_async(request).await {
            Ok((stream, response)) => {
                assert_eq!(response.status().as_u16(), 101);
                Ok(WsClient { stream })
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(other) => panic!("websocket connect failed: {other}"),
        }
    }

    /// The session's durable events over REST.
    pub async fn events(&self, user: &str, session: &str, after_seq: i64) -> Vec<Value> {
        let resp = self
            .get(
                user,
                &format!("/api/sessions/{session}/events?after_seq={after_seq}&limit=1000"),
            )
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text);
        resp.body["events"].as_array().expect("events").clone()
    }
}

/// Sends `signal` (`-STOP`, `-CONT`) to `child`.
pub fn signal(child: &std::process::Child, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal} failed");
}

/// Waits up to `wait` for the file at `log` to contain `needle`; returns
/// what it holds then.
pub async fn wait_log(log: &std::path::Path, needle: &str, wait: Duration) -> String {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) || std::time::Instant::now() >= deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The S3-compatible test server (`QB_TEST_S3_ENDPOINT`). A run without
/// one fails, saying how to start it: a storage test that returned early
/// would pass without testing anything.
pub fn s3_endpoint() -> String {
    std::env::var("QB_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "QB_TEST_S3_ENDPOINT is unset: start the S3-compatible test server with \
             `eval \"$(scripts/services s3 gcs)\"` (scripts/test does)"
        )
    })
}

/// The GCS emulator (`QB_TEST_GCS_ENDPOINT`); like [`s3_endpoint`].
pub fn gcs_endpoint() -> String {
    std::env::var("QB_TEST_GCS_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "QB_TEST_GCS_ENDPOINT is unset: start the GCS emulator with \
             `eval \"$(scripts/services s3 gcs)\"` (scripts/test does)"
        )
    })
}

/// A fresh bucket on the S3-compatible test server ([`s3_endpoint`]),
/// opened as storage under `prefix`.
pub async fn s3_test_storage(prefix: &str) -> questboard_core::storage::Storage {
    let endpoint = s3_endpoint();
    let bucket = format!("qb-{}", uuid::Uuid::new_v4().simple());
    // object_store cannot create buckets; moto accepts an unsigned PUT.
    let created = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .expect("create bucket");
    assert!(
        created.status().is_success(),
        "create bucket: {}",
        created.status()
    );
    let options = [
        ("aws_endpoint", endpoint.as_str()),
        ("aws_allow_http", "true"),
        ("aws_access_key_id", "test"),
        ("aws_secret_access_key", "test"),
        ("aws_region", "us-east-1"),
        ("aws_virtual_hosted_style_request", "false"),
    ];
    questboard_core::storage::Storage::from_url_with(&format!("s3://{bucket}/{prefix}"), options)
        .expect("s3 storage")
}

/// The endpoint and bucket of storage made by [`s3_test_storage`].
pub fn s3_location(storage: &questboard_core::storage::Storage) -> (String, String) {
    let endpoint = s3_endpoint();
    let bucket = storage
        .describe()
        .trim_start_matches("s3://")
        .split('/')
        .next()
        .expect("bucket")
        .to_owned();
    (endpoint, bucket)
}

/// A fresh bucket on the GCS emulator ([`gcs_endpoint`]: PyPI's
/// gcp-storage-emulator behind `scripts/gcs-emulator`), opened as storage
/// under `prefix` through `google_base_url` with a static bearer token
/// (the emulator checks none).
pub async fn gcs_test_storage(prefix: &str) -> questboard_core::storage::Storage {
    let endpoint = gcs_endpoint();
    let bucket = format!("qb-{}", uuid::Uuid::new_v4().simple());
    // object_store cannot create buckets; the JSON API's insert does.
    let created = reqwest::Client::new()
        .post(format!("{endpoint}/storage/v1/b?project=questboard-test"))
        .json(&serde_json::json!({ "name": bucket }))
        .send()
        .await
        .expect("create bucket");
    assert!(
        created.status().is_success(),
        "create bucket: {}",
        created.status()
    );
    questboard_core::storage::Storage::from_url_with(
        &format!("gs://{bucket}/{prefix}"),
        gcs_options(&endpoint),
    )
    .expect("gcs storage")
}

/// The object_store options that reach the GCS emulator at `endpoint`
/// (a static token: object_store 0.14 fetches one for uploads even with
/// `google_skip_signature`).
pub fn gcs_options(endpoint: &str) -> [(&'static str, String); 2] {
    [
        ("google_base_url", endpoint.to_owned()),
        ("google_bearer_token", "emulator".to_owned()),
    ]
}
