//! `TestDb`: a fresh database per test with migrations applied, dropped
//! afterwards, and the check that no job was left failed or stuck.

use super::*;

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
