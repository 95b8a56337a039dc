//! Operators' source URLs: only sources in `QB_MIGRATION_SOURCES` (when
//! set), no `host=` redirection inside a URL, a connection that must be
//! made within a timeout (a port that is not Postgres cannot hold the
//! kind's slot), and errors that reach operators as stable codes, with the
//! driver's and cloud client's text in the server log only.

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::TestApp;

fn mapping(session: &str) -> Vec<Value> {
    vec![json!({ "campaign_id": "1", "session_id": session })]
}

/// A TCP port that accepts connections and never says a word.
async fn silent_port() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (port, task)
}

#[tokio::test]
async fn only_allowed_sources_are_used_and_a_url_cannot_redirect_itself() {
    let allowed = "postgres://127.0.0.1:5432/old_campaigns";
    let app = TestApp::spawn_with(|c| {
        c.migration_sources = vec![allowed.into(), "file:///srv/legacy".into()];
    })
    .await;
    let session = app.create_session("alice", "Old").await;
    for (source, code) in [
        (
            "postgres://postgres@127.0.0.1:5432/postgres",
            "source_not_allowed",
        ),
        (
            "postgres://postgres@10.0.0.9:5432/old_campaigns",
            "source_not_allowed",
        ),
        (
            "postgres://postgres@127.0.0.1:5432/old_campaigns?host=/var/run/postgresql",
            "source_refused",
        ),
        (
            "postgres://postgres@127.0.0.1:5432/old_campaigns?dbname=postgres",
            "source_refused",
        ),
    ] {
        let resp = app
            .op(
                Method::POST,
                "/api/admin/migrations/assets",
                Some(json!({ "source_url": source, "mapping": mapping(&session) })),
            )
            .await;
        resp.assert_error(422, code);
        assert!(!resp.text.contains("postgres@"), "{}", resp.text);
    }
    for source in ["file:///etc", "s3://any-bucket/", "gs://any-bucket/x"] {
        let resp = app
            .op(
                Method::POST,
                "/api/admin/imports/legacy",
                Some(json!({ "source_url": source, "mapping": {} })),
            )
            .await;
        resp.assert_error(422, "source_not_allowed");
    }
    let count: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM asset_migration_runs) + (SELECT count(*) FROM legacy_import_runs)",
    )
    .fetch_one(&app.db.pool)
    .await
    .expect("count");
    assert_eq!(count, 0, "nothing was recorded");

    // A run recorded while a source was allowed is refused by the worker
    // once it is not (the list narrowed), for good.
    let narrowed =
        TestApp::spawn_with(|c| c.migration_sources = vec!["file:///srv/legacy".into()]).await;
    // On purpose: the run from a source no longer allowed fails for good.
    narrowed.db.expect_failed_jobs();
    let session = narrowed.create_session("alice", "Old").await;
    let started = {
        let mut tx = narrowed.db.pool.begin().await.expect("tx");
        let run = questboard_core::asset_migration::create_run(
            &mut tx,
            &questboard_core::sources::Allowlist::any(),
            allowed,
            &questboard_core::asset_migration::Options::default(),
            false,
            &[("1".into(), session.parse().expect("uuid"))],
            "ops",
        )
        .await
        .expect("run");
        let job = questboard_core::asset_migration::MigrateAssets {
            run_id: run.id,
            rollback: false,
        };
        let enqueued = questboard_core::jobs::enqueue(&mut tx, &job, &Default::default())
            .await
            .expect("enqueue");
        tx.commit().await.expect("commit");
        enqueued.id
    };
    let _worker = narrowed
        .jobs_worker(|c| c.migration_sources = vec!["file:///srv/legacy".into()])
        .await;
    let job = narrowed
        .wait_job(&started, "the refused run", |j| j["status"] == "failed")
        .await;
    assert!(
        job["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("source_not_allowed")),
        "{job:#}"
    );
}

#[tokio::test]
async fn a_source_that_does_not_answer_or_refuses_us_gives_a_stable_code_not_its_text() {
    let (port, _silent) = silent_port().await;
    let app = TestApp::spawn().await;
    let _worker = app.jobs_worker(|_| {}).await;
    let session = app.create_session("alice", "Old").await;
    let start = |source: String| {
        let app = &app;
        let session = session.clone();
        async move {
            let resp = app
                .op(
                    Method::POST,
                    "/api/admin/migrations/assets",
                    Some(json!({ "source_url": source, "mapping": mapping(&session) })),
                )
                .await;
            assert_eq!(resp.status, 202, "{}", resp.text);
            resp.body["job_id"].as_str().expect("job id").to_owned()
        }
    };
    for (source, code) in [
        // Accepts, then never answers the startup message.
        (
            format!("postgres://postgres@127.0.0.1:{port}/old"),
            "source_unreachable",
        ),
        // A role that does not exist (the probe saw the driver's text).
        (
            format!(
                "postgres://no_such_role_{}@127.0.0.1:5432/postgres",
                Uuid::new_v4().simple()
            ),
            "source_auth_failed",
        ),
        // A database that does not exist.
        (
            "postgres://postgres@127.0.0.1:5432/no_such_database_here".to_owned(),
            "source_not_found",
        ),
    ] {
        let job = start(source.clone()).await;
        let seen = app
            .wait_job(&job, "the first attempt's error", |j| {
                j["last_error"].as_str().is_some_and(|e| !e.is_empty())
            })
            .await;
        let error = seen["last_error"].as_str().unwrap_or_default();
        assert!(error.starts_with(code), "{source}: {error}");
        for leak in [
            "role",
            "no_such",
            "127.0.0.1",
            "database \"",
            "password",
            "at line",
        ] {
            assert!(!error.contains(leak), "{source}: {error} shows {leak:?}");
        }
        // The operator stops it (it would retry: a source may recover).
        app.op(Method::POST, &format!("/api/admin/jobs/{job}/cancel"), None)
            .await;
    }
}

#[tokio::test]
async fn a_legacy_bucket_that_cannot_be_read_gives_a_stable_code() {
    let app = TestApp::spawn().await;
    let _worker = app.jobs_worker(|_| {}).await;
    let resp = app
        .op(
            Method::POST,
            "/api/admin/imports/legacy",
            Some(json!({
                "source_url": format!("s3://qb-no-such-bucket-{}/old", Uuid::new_v4().simple()),
                "mapping": {},
            })),
        )
        .await;
    assert_eq!(resp.status, 202, "{}", resp.text);
    let job = resp.body["job_id"].as_str().expect("job id").to_owned();
    let seen = app
        .wait_job(&job, "the failing import", |j| {
            j["last_error"].as_str().is_some_and(|e| !e.is_empty())
        })
        .await;
    let error = seen["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("source_"), "{error}");
    for leak in [
        "169.254",
        "http",
        "metadata",
        "credential",
        "qb-no-such-bucket",
    ] {
        assert!(
            !error.to_lowercase().contains(leak),
            "{error} shows {leak:?}"
        );
    }
    app.op(Method::POST, &format!("/api/admin/jobs/{job}/cancel"), None)
        .await;
}
