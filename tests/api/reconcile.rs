//! Reconciling metadata with storage, on the local filesystem and on S3
//! (moto), run by the real `questboard work` binary: planted orphans,
//! missing manifests and stray objects are reported; `repair` deletes
//! orphans past the grace period and writes missing manifests, and never
//! touches anything else. Media rows are checked against their objects
//! both ways (untracked objects deleted past the grace period, missing
//! objects reported), and a generation whose job vanished is failed.

use std::time::Duration;

use questboard_core::identity::UserId;
use questboard_core::jobs;
use questboard_core::sessions::{self, SessionName};
use questboard_core::storage::Storage;
use questboard_core::storage::manifest;
use questboard_workers::jobs::reconcile::Reconcile;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{TestDb, redis_url};

/// Where the objects live, and how to reach them around questboard.
enum Backend {
    Local(std::path::PathBuf),
    S3 { endpoint: String, bucket: String },
    Gcs { endpoint: String, bucket: String },
}

impl Backend {
    fn storage_url(&self) -> String {
        match self {
            Backend::Local(dir) => format!("file://{}", dir.display()),
            Backend::S3 { bucket, .. } => format!("s3://{bucket}/tenant"),
            Backend::Gcs { bucket, .. } => format!("gs://{bucket}/tenant"),
        }
    }

    fn storage(&self) -> Storage {
        match self {
            Backend::Local(_) => Storage::from_url(&self.storage_url()).expect("storage"),
            Backend::S3 { endpoint, .. } => {
                Storage::from_url_with(&self.storage_url(), s3_options(endpoint)).expect("s3")
            }
            Backend::Gcs { endpoint, .. } => {
                Storage::from_url_with(&self.storage_url(), crate::helpers::gcs_options(endpoint))
                    .expect("gcs")
            }
        }
    }

    /// Environment for a worker process using this storage.
    fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![("QB_STORAGE_URL".to_owned(), self.storage_url())];
        if let Backend::S3 { endpoint, .. } = self {
            for (k, v) in s3_options(endpoint) {
                env.push((k.to_ascii_uppercase(), v.to_owned()));
            }
        }
        if let Backend::Gcs { endpoint, .. } = self {
            for (k, v) in crate::helpers::gcs_options(endpoint) {
                env.push((k.to_ascii_uppercase(), v));
            }
        }
        env
    }

    async fn put(&self, key: &str, body: &'static [u8]) {
        match self {
            Backend::Local(dir) => {
                let path = dir.join(key);
                std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
                std::fs::write(path, body).expect("write");
            }
            Backend::S3 { endpoint, bucket } => {
                let resp = reqwest::Client::new()
                    .put(format!("{endpoint}/{bucket}/tenant/{key}"))
                    .body(body)
                    .send()
                    .await
                    .expect("put");
                assert!(resp.status().is_success(), "{}", resp.status());
            }
            Backend::Gcs { endpoint, bucket } => {
                let name = format!("tenant/{key}");
                let url = reqwest::Url::parse_with_params(
                    &format!("{endpoint}/upload/storage/v1/b/{bucket}/o"),
                    [("uploadType", "media"), ("name", name.as_str())],
                )
                .expect("url");
                let resp = reqwest::Client::new()
                    .post(url)
                    .header("content-type", "application/octet-stream")
                    .body(body)
                    .send()
                    .await
                    .expect("put");
                assert!(resp.status().is_success(), "{}", resp.status());
            }
        }
    }

    async fn delete(&self, key: &str) {
        // Unsigned deletes are refused by S3; go through the store.
        self.storage()
            .delete_objects(vec![key.to_owned()])
            .await
            .expect("delete");
    }

    async fn exists(&self, key: &str) -> bool {
        match self.storage().get_object(key).await {
            Ok(_) => true,
            Err(questboard_core::storage::Error::NotFound) => false,
            Err(e) => panic!("{key}: {e}"),
        }
    }
}

fn s3_options(endpoint: &str) -> [(&'static str, String); 6] {
    [
        ("aws_endpoint", endpoint.to_owned()),
        ("aws_allow_http", "true".into()),
        ("aws_access_key_id", "test".into()),
        ("aws_secret_access_key", "test".into()),
        ("aws_region", "us-east-1".into()),
        ("aws_virtual_hosted_style_request", "false".into()),
    ]
}

/// Runs one reconcile in a fresh `questboard work` process (serving only
/// `reconcile`, with the given grace); returns its report.
async fn reconcile(db: &TestDb, backend: &Backend, repair: bool, grace_hours: u64) -> Value {
    let id = {
        let mut conn = db.pool.acquire().await.expect("conn");
        jobs::enqueue(&mut conn, &Reconcile { repair }, &jobs::Options::default())
            .await
            .expect("enqueue")
            .id
    };
    let log = std::env::temp_dir().join(format!("qb-reconcile-{}.log", Uuid::new_v4()));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_questboard"));
    cmd.arg("work")
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", redis_url())
        .env("QB_METRICS_ADDR", "127.0.0.1:0")
        .env("QB_WORKER_KINDS", "reconcile")
        .env("QB_WORKER_POLL_MS", "50")
        .env("QB_RECONCILE_GRACE_HOURS", grace_hours.to_string())
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).expect("log"));
    for (k, v) in backend.env() {
        cmd.env(k, v);
    }
    let mut worker = cmd.spawn().expect("questboard work");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let record = loop {
        let record = jobs::fetch(&db.pool, &id)
            .await
            .expect("fetch")
            .expect("job");
        if matches!(record.status.as_str(), "Done" | "Killed") {
            break record;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reconcile did not finish: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(record.status, "Done", "{:?}", record.last_error);
    record.result.expect("report")
}

fn keys(category: &Value) -> Vec<String> {
    let mut keys: Vec<String> = category["keys"]
        .as_array()
        .or(category["prefixes"].as_array())
        .expect("keys")
        .iter()
        .filter_map(|k| k.as_str().map(String::from))
        .collect();
    keys.sort();
    keys
}

async fn exercise(backend: Backend) {
    let db = TestDb::create().await;
    let storage = backend.storage();
    let owner = UserId::parse("alice").expect("user");
    let name = SessionName::parse("Keep").expect("name");
    // Two sessions with their manifests (as the API writes them) and
    // files in known areas; one loses its manifest.
    let mut prefixes = Vec::new();
    for _ in 0..2 {
        let s = sessions::create(&db.pool, &owner, &name)
            .await
            .expect("session");
        let files = storage.session(&s.session.storage_prefix).expect("files");
        files
            .put_manifest(&manifest(s.session.id, s.session.created_at))
            .await
            .expect("manifest");
        prefixes.push(s.session.storage_prefix);
    }
    let (whole, bare) = (prefixes[0].clone(), prefixes[1].clone());
    backend
        .put(&format!("{whole}/logs/transcript.json"), b"[]")
        .await;
    backend
        .put(&format!("{whole}/media/images/scene.png"), b"png")
        .await;
    backend.delete(&format!("{bare}/session.json")).await;
    // Planted: orphans of sessions that do not exist, strays in and out of
    // session prefixes, and what questboard keeps outside them.
    let ghost = format!("sessions/{}", Uuid::now_v7());
    let orphans = [
        format!("{ghost}/logs/old.json"),
        format!("{ghost}/media/audio/old.wav"),
        "sessions/not-a-session/data/x.json".to_owned(),
    ];
    for key in &orphans {
        backend.put(key, b"orphan").await;
    }
    let strays = [format!("{whole}/stray.bin"), "junk/readme.txt".to_owned()];
    for key in &strays {
        backend.put(key, b"stray").await;
    }
    backend.put("reports/earlier.json", b"{}").await;
    // Media: one version stored and recorded, one recorded whose object is
    // gone, a generation whose job vanished (`scene.png` above is an
    // object no version records).
    let whole_id: Uuid = whole
        .strip_prefix("sessions/")
        .and_then(|id| id.parse().ok())
        .expect("session id");
    let kept_key = format!("{whole}/media/maps/{}.png", Uuid::now_v7());
    let lost_key = format!("{whole}/media/maps/{}.png", Uuid::now_v7());
    backend.put(&kept_key, b"map").await;
    for key in [&kept_key, &lost_key] {
        sqlx::query(
            "WITH m AS (
                 INSERT INTO campaign_media (id, session_id, kind, source, status, content_type,
                     byte_size, sha256, storage_key, created_by)
                 VALUES ($1, $2, 'map', 'uploaded', 'ready', 'image/png', 3, $3, $4, 'alice')
                 RETURNING id)
             INSERT INTO campaign_media_versions (media_id, version, content_type, byte_size,
                 sha256, storage_key, created_by)
             SELECT id, 1, 'image/png', 3, $3, $4, 'alice' FROM m",
        )
        .bind(Uuid::now_v7())
        .bind(whole_id)
        .bind(vec![7u8; 32])
        .bind(key)
        .execute(&db.pool)
        .await
        .expect("media row");
    }
    let stalled = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO campaign_media (id, session_id, kind, source, status, prompt, job_id,
             created_by, updated_at)
         VALUES ($1, $2, 'image', 'generated', 'pending', 'a lost picture', 'no-such-job',
             'alice', now() - interval '1 hour')",
    )
    .bind(stalled)
    .bind(whole_id)
    .execute(&db.pool)
    .await
    .expect("stalled row");
    let untracked = format!("{whole}/media/images/scene.png");
    let status_of = |id: Uuid| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT status FROM campaign_media WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .expect("status")
        }
    };

    // Report only: nothing changes.
    let report = reconcile(&db, &backend, false, 0).await;
    assert_eq!(report["orphans"]["count"], 3, "{report:#}");
    let mut expected_orphans: Vec<String> = orphans.to_vec();
    expected_orphans.sort();
    assert_eq!(keys(&report["orphans"]), expected_orphans);
    assert_eq!(report["orphans"]["deleted"], 0);
    assert_eq!(report["missing_prefixes"]["count"], 1, "{report:#}");
    assert_eq!(
        keys(&report["missing_prefixes"]),
        std::slice::from_ref(&bare)
    );
    assert_eq!(report["outside_areas"]["count"], 2, "{report:#}");
    let mut expected_strays: Vec<String> = strays.to_vec();
    expected_strays.sort();
    assert_eq!(keys(&report["outside_areas"]), expected_strays);
    assert_eq!(report["sessions_scanned"], 2);
    assert_eq!(report["media_versions_scanned"], 2, "{report:#}");
    assert_eq!(
        keys(&report["untracked_media"]),
        std::slice::from_ref(&untracked)
    );
    assert_eq!(
        keys(&report["missing_media"]),
        std::slice::from_ref(&lost_key)
    );
    assert_eq!(report["missing_media"]["current"], 1);
    assert_eq!(report["stalled_generations"]["count"], 1);
    assert_eq!(
        report["stalled_generations"]["media_ids"][0],
        stalled.to_string()
    );
    assert_eq!(report["stalled_generations"]["failed"], 0);
    assert_eq!(status_of(stalled).await, "pending");
    for key in orphans.iter().chain(&strays).chain([&untracked, &kept_key]) {
        assert!(
            backend.exists(key).await,
            "{key} was touched by a report-only run"
        );
    }
    // The report is stored too.
    let stored = report["report_key"].as_str().expect("report key");
    assert!(stored.starts_with("reports/reconcile/"), "{stored}");
    let body: Value =
        serde_json::from_slice(&storage.get_object(stored).await.expect("report")).expect("json");
    assert_eq!(body["orphans"]["count"], 3);

    // Repair inside the grace period: manifests are written, young orphans kept.
    let report = reconcile(&db, &backend, true, 24).await;
    assert_eq!(report["orphans"]["within_grace"], 3, "{report:#}");
    assert_eq!(report["orphans"]["deleted"], 0);
    assert_eq!(report["missing_prefixes"]["manifests_written"], 1);
    assert!(backend.exists(&format!("{bare}/session.json")).await);
    assert_eq!(report["untracked_media"]["within_grace"], 1);
    assert_eq!(report["stalled_generations"]["failed"], 1, "{report:#}");
    assert_eq!(status_of(stalled).await, "failed");
    let failed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM session_events WHERE session_id = $1 AND type = 'media.failed'
           AND data->>'media_id' = $2",
    )
    .bind(whole_id)
    .bind(stalled.to_string())
    .fetch_one(&db.pool)
    .await
    .expect("events");
    assert_eq!(failed, 1, "members hear that it failed");
    for key in orphans.iter().chain([&untracked]) {
        assert!(
            backend.exists(key).await,
            "{key} deleted within the grace period"
        );
    }

    // Repair past the grace period: orphans go; strays and live files stay.
    let report = reconcile(&db, &backend, true, 0).await;
    assert_eq!(report["orphans"]["deleted"], 3, "{report:#}");
    assert_eq!(report["untracked_media"]["deleted"], 1);
    assert_eq!(report["missing_prefixes"]["count"], 0);
    assert_eq!(report["stalled_generations"]["count"], 0);
    assert_eq!(
        report["missing_media"]["count"], 1,
        "missing bytes are only reported"
    );
    for key in orphans.iter().chain([&untracked]) {
        assert!(!backend.exists(key).await, "{key} survived the repair");
    }
    for key in strays.iter().chain([
        &format!("{whole}/logs/transcript.json"),
        &format!("{whole}/session.json"),
        &kept_key,
    ]) {
        assert!(backend.exists(key).await, "{key} must never be deleted");
    }
    let report = reconcile(&db, &backend, false, 0).await;
    assert_eq!(report["orphans"]["count"], 0, "{report:#}");
    assert_eq!(report["missing_prefixes"]["count"], 0);
    assert_eq!(report["outside_areas"]["count"], 2);
}

#[tokio::test]
async fn reconcile_on_the_local_filesystem() {
    let dir = std::env::temp_dir().join(format!("qb-reconcile-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    exercise(Backend::Local(dir.clone())).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// On Google Cloud Storage (the GCS emulator, `QB_TEST_GCS_ENDPOINT`).
#[tokio::test]
async fn reconcile_on_gcs() {
    let endpoint = crate::helpers::gcs_endpoint();
    let bucket = format!("qb-reconcile-{}", Uuid::new_v4().simple());
    let created = reqwest::Client::new()
        .post(format!("{endpoint}/storage/v1/b?project=questboard-test"))
        .json(&serde_json::json!({ "name": bucket }))
        .send()
        .await
        .expect("create bucket");
    assert!(created.status().is_success());
    exercise(Backend::Gcs { endpoint, bucket }).await;
}

#[tokio::test]
async fn reconcile_on_s3() {
    let endpoint = crate::helpers::s3_endpoint();
    let bucket = format!("qb-reconcile-{}", Uuid::new_v4().simple());
    let created = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .expect("create bucket");
    assert!(created.status().is_success());
    exercise(Backend::S3 { endpoint, bucket }).await;
}

/// Links planted in a local storage root (a file linked out, a directory
/// linked out, a whole ghost session prefix linked out) are reported and
/// never followed: a repair past the grace period deletes nothing they
/// point at, and reads through them find nothing.
#[tokio::test]
async fn reconcile_never_follows_links_on_a_local_root() {
    let root = std::env::temp_dir().join(format!("qb-reconcile-links-{}", Uuid::new_v4()));
    let dir = root.join("storage");
    let outside = root.join("outside");
    std::fs::create_dir_all(outside.join("data")).expect("dir");
    std::fs::write(outside.join("secret.txt"), "secret").expect("write");
    std::fs::write(outside.join("data/x.json"), "{}").expect("write");
    std::fs::create_dir_all(&dir).expect("dir");
    let backend = Backend::Local(dir.clone());
    let db = TestDb::create().await;
    let storage = backend.storage();
    let s = sessions::create(
        &db.pool,
        &UserId::parse("alice").expect("user"),
        &SessionName::parse("Keep").expect("name"),
    )
    .await
    .expect("session");
    let prefix = s.session.storage_prefix.clone();
    storage
        .session(&prefix)
        .expect("files")
        .put_manifest(&manifest(s.session.id, s.session.created_at))
        .await
        .expect("manifest");
    backend
        .put(&format!("{prefix}/logs/real.json"), b"[]")
        .await;
    std::fs::create_dir_all(dir.join(&prefix).join("media/images")).expect("dir");
    std::os::unix::fs::symlink(
        outside.join("secret.txt"),
        dir.join(&prefix).join("media/images/evil.png"),
    )
    .expect("link");
    std::os::unix::fs::symlink(&outside, dir.join(&prefix).join("data")).expect("link");
    let ghost = format!("sessions/{}", Uuid::now_v7());
    std::os::unix::fs::symlink(&outside, dir.join(&ghost)).expect("link");

    let report = reconcile(&db, &backend, true, 0).await;
    assert_eq!(report["symbolic_links"]["count"], 3, "{report:#}");
    let mut links: Vec<String> = report["symbolic_links"]["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k.as_str().expect("key").to_owned())
        .collect();
    links.sort();
    let mut expected = vec![
        format!("{prefix}/media/images/evil.png"),
        format!("{prefix}/data"),
        ghost.clone(),
    ];
    expected.sort();
    assert_eq!(links, expected);
    assert_eq!(report["orphans"]["count"], 0, "{report:#}");
    assert_eq!(report["untracked_media"]["count"], 0, "{report:#}");
    // Nothing outside was touched, and nothing reads through the links.
    assert!(outside.join("secret.txt").exists());
    assert!(outside.join("data/x.json").exists());
    for key in [
        format!("{prefix}/media/images/evil.png"),
        format!("{prefix}/data/x.json"),
        format!("{ghost}/data/x.json"),
    ] {
        assert!(!backend.exists(&key).await, "{key} was read through a link");
    }
    assert!(backend.exists(&format!("{prefix}/logs/real.json")).await);
    let _ = std::fs::remove_dir_all(root);
}
