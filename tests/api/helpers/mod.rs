//! The test harness: `TestApp`, a running questboard API on its own fresh
//! database ([`db`]), with in-process workers ([`workers`]), socket clients
//! ([`ws`]), child processes ([`processes`]) and cloud storage test servers
//! ([`cloud`]).

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

mod cloud;
mod db;
mod processes;
mod workers;
mod ws;

pub use cloud::*;
pub use db::*;
pub use processes::*;
pub use workers::*;
pub use ws::*;

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

    /// A header's value ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
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
    /// The bus of this app and of its in-process workers: Redis, or (with
    /// `redis_url` set to None) one inside the test process.
    pub bus: questboard_core::bus::Bus,
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
        config.database_url = Some(Secret::new(db.url.clone()));
        config.redis_url = Some(Secret::new(redis_url()));
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
        let bus = config.dev_bus().expect("bus");
        let mut state = app::api_state_with(&config, &bus, crate::kinds::test_registry())
            .await
            .expect("api state");
        if let Some(storage) = storage {
            let frames = config.table_frame_ancestors().expect("frame ancestors");
            state.pages = questboard::http::pages::Pages::for_storage(&storage, &frames).await;
            state.storage = storage;
        }
        app::spawn_relay(
            &config,
            state.pool.clone(),
            &bus,
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
            bus,
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
        self.token_with(user, auth::Access::Operator)
    }

    /// A valid token for `user` with the permission of `access`.
    pub fn token_with(&self, user: &str, access: auth::Access) -> String {
        auth::mint_with(
            &self.config,
            &UserId::parse(user).expect("user id"),
            Duration::from_secs(600),
            access,
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
