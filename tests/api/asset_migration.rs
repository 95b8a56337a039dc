//! Asset migration end to end, on the local filesystem and on S3 (moto),
//! with real `questboard` processes: a source database built here holds
//! 1,000 maps and notes in binary columns, 8 of them bad (oversized,
//! mistyped, corrupt, not valid UTF-8, of an unmapped campaign). A dry run
//! (through `questboard admin migrate-assets`) validates them all and
//! changes nothing; the real run's worker is killed mid-run and another
//! finishes it, with every good asset migrated exactly once and verified
//! and every bad one reported with why; members then get the migrated
//! files from the API, strangers a 404; a rollback puts every blob back
//! byte for byte. A source with 2 % bad assets aborts its run.

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::TryStreamExt as _;
use questboard_core::storage::Storage;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{TestApp, TestDb, redis_url, s3_location, s3_test_storage};
use crate::media::png;

/// The map limit the workers run with (small, so oversized is cheap).
const MAP_LIMIT: usize = 20_000;

/// Where the objects live, as processes are told.
pub(crate) struct Place {
    pub(crate) storage: Storage,
    pub(crate) env: Vec<(String, String)>,
}

impl Place {
    pub(crate) fn local(dir: &std::path::Path) -> Self {
        let url = format!("file://{}", dir.display());
        Self {
            storage: Storage::from_url(&url).expect("storage"),
            env: vec![("QB_STORAGE_URL".into(), url)],
        }
    }

    pub(crate) async fn s3() -> Self {
        let storage = s3_test_storage("tenant").await;
        let (endpoint, bucket) = s3_location(&storage);
        let mut env = vec![("QB_STORAGE_URL".to_owned(), format!("s3://{bucket}/tenant"))];
        for (k, v) in [
            ("AWS_ENDPOINT", endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false"),
        ] {
            env.push((k.to_owned(), v.to_owned()));
        }
        Self { storage, env }
    }

    /// Every media object's key.
    async fn media_objects(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .storage
            .list_objects("sessions")
            .map_ok(|o| o.key)
            .try_collect()
            .await
            .expect("list");
        keys.retain(|k| k.contains("/media/"));
        keys.sort();
        keys
    }
}

/// A `questboard` process against `db` and `place`, whose workers run
/// `kinds`.
pub(crate) fn questboard(db: &TestDb, place: &Place, kinds: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_questboard"));
    cmd.args(args)
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", redis_url())
        .env("QB_METRICS_ADDR", "127.0.0.1:0")
        .env("QB_WORKER_KINDS", kinds)
        .env("QB_WORKER_POLL_MS", "50")
        .env("QB_LEASE_TTL_MS", "1500")
        .env("QB_MEDIA_MAP_MAX_BYTES", MAP_LIMIT.to_string())
        .env("RUST_LOG", "warn");
    for (k, v) in &place.env {
        cmd.env(k, v);
    }
    cmd
}

fn command(db: &TestDb, place: &Place, args: &[&str]) -> Command {
    questboard(db, place, "asset_migration", args)
}

fn worker(db: &TestDb, place: &Place) -> Child {
    command(db, place, &["work"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("questboard work")
}

/// Runs `questboard admin migrate-assets <args>`; returns its exit status
/// and what it printed (the report).
async fn admin(db: &TestDb, place: &Place, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["admin", "migrate-assets"];
    all.extend_from_slice(args);
    let mut cmd = command(db, place, &all);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("questboard admin"))
        .await
        .expect("join");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What the source holds and what should become of it.
/// The source's rows by (table, id): the blob, and the media it points at.
type SourceRows = BTreeMap<(String, i64), (Option<Vec<u8>>, Option<Uuid>)>;

/// Migrated media by id: its sha-256, key and session.
type Migrated = HashMap<Uuid, (Vec<u8>, String, Uuid)>;

struct Source {
    db: TestDb,
    /// (table, id) -> the original bytes.
    originals: BTreeMap<(String, i64), Vec<u8>>,
    /// (table, id) -> a word the failure's reason must contain.
    bad: BTreeMap<(String, i64), &'static str>,
}

/// Builds the old service's tables: `maps` maps and `notes` notes over
/// campaigns 1..=5 (6 is mapped to no session), with bad assets at the
/// given ids.
async fn build_source(maps: i64, notes: i64, bad_maps: &[i64], bad_notes: &[i64]) -> Source {
    let db = TestDb::create().await;
    for table in ["campaign_maps", "campaign_notes"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, campaign_id bigint NOT NULL,
                 name text, content_type text, data bytea, created_at timestamptz DEFAULT now())"
        )))
        .execute(&db.pool)
        .await
        .expect("table");
    }
    let mut originals = BTreeMap::new();
    let mut bad = BTreeMap::new();
    let kinds_of_bad_map: [(&str, &str); 5] = [
        ("oversized", "limit"),
        ("mistyped", "cannot be"),
        ("corrupt", "bytes are not"),
        ("unmapped", "no session"),
        ("oversized", "limit"),
    ];
    let kinds_of_bad_note: [(&str, &str); 3] = [
        ("not utf-8", "bytes are not"),
        ("mistyped", "cannot be"),
        ("corrupt pdf", "bytes are not"),
    ];
    for id in 1..=maps {
        let mut campaign = id % 5 + 1;
        let mut bytes = png(600 + (id as usize * 7) % 1500);
        bytes.extend_from_slice(format!("map {id}").as_bytes());
        let mut content_type = "image/png";
        if let Some(at) = bad_maps.iter().position(|b| *b == id) {
            let (what, why) = kinds_of_bad_map[at % kinds_of_bad_map.len()];
            match what {
                "oversized" => bytes = png(MAP_LIMIT + 5_000),
                "mistyped" => content_type = "image/gif",
                "corrupt" => bytes = b"GIF89a not a png at all".to_vec(),
                _ => campaign = 6,
            }
            bad.insert(("campaign_maps".to_owned(), id), why);
        }
        insert(
            &db.pool,
            "campaign_maps",
            id,
            campaign,
            &format!("Level {id}.png"),
            content_type,
            &bytes,
        )
        .await;
        originals.insert(("campaign_maps".to_owned(), id), bytes);
    }
    for id in 1..=notes {
        let mut bytes = format!("# Session {id}\n\nThe party met at the inn.\n").into_bytes();
        let mut content_type = "text/markdown";
        if let Some(at) = bad_notes.iter().position(|b| *b == id) {
            let (what, why) = kinds_of_bad_note[at % kinds_of_bad_note.len()];
            match what {
                "not utf-8" => bytes = vec![b'#', b' ', 0xff, 0xfe, b'x'],
                "mistyped" => content_type = "text/html",
                _ => content_type = "application/pdf",
            }
            bad.insert(("campaign_notes".to_owned(), id), why);
        }
        insert(
            &db.pool,
            "campaign_notes",
            id,
            id % 5 + 1,
            &format!("../notes/{id}.md"),
            content_type,
            &bytes,
        )
        .await;
        originals.insert(("campaign_notes".to_owned(), id), bytes);
    }
    Source { db, originals, bad }
}

async fn insert(
    pool: &PgPool,
    table: &str,
    id: i64,
    campaign: i64,
    name: &str,
    ty: &str,
    bytes: &[u8],
) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (id, campaign_id, name, content_type, data) VALUES ($1, $2, $3, $4, $5)"
    )))
    .bind(id)
    .bind(campaign)
    .bind(name)
    .bind(ty)
    .bind(bytes)
    .execute(pool)
    .await
    .expect("insert");
}

/// Every source row: (table, id) -> (bytes, storage_asset_id).
async fn source_rows(pool: &PgPool) -> SourceRows {
    let mut rows = BTreeMap::new();
    for table in ["campaign_maps", "campaign_notes"] {
        let has_refs: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns
                            WHERE table_name = $1 AND column_name = 'storage_asset_id')",
        )
        .bind(table)
        .fetch_one(pool)
        .await
        .expect("columns");
        let sql = if has_refs {
            format!("SELECT id, data, storage_asset_id FROM {table}")
        } else {
            format!("SELECT id, data, NULL::uuid FROM {table}")
        };
        let found: Vec<(i64, Option<Vec<u8>>, Option<Uuid>)> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_all(pool)
                .await
                .expect("rows");
        for (id, data, asset) in found {
            rows.insert((table.to_owned(), id), (data, asset));
        }
    }
    rows
}

pub(crate) async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

pub(crate) fn report_of(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("report {e}: {stdout}"))
}

/// `GET /api/assets/{table}/{id}` as `user`: status, `ETag` (storage sets
/// one, the source does not), bytes.
async fn old_asset(
    app: &TestApp,
    user: Option<&str>,
    path: &str,
) -> (u16, Option<String>, Vec<u8>) {
    let mut req = app.client.get(app.url(&format!("/api/assets/{path}")));
    if let Some(user) = user {
        req = req.bearer_auth(app.token(user));
    }
    let resp = req.send().await.expect("get");
    let status = resp.status().as_u16();
    let etag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, etag, resp.bytes().await.expect("bytes").to_vec())
}

/// A migration's setting: an app on `place` with five sessions owned by
/// alice (bob a member of the first), the mapping of the old campaigns to
/// them, and an old database of 600 maps and 400 notes, 8 of them bad.
/// The stories below run in order on each backend.
struct Migration {
    app: TestApp,
    place: Place,
    source: Source,
    mapping: String,
}

/// Every migration story on `place`, in order.
async fn exercise(place: Place) {
    // Questboard: five sessions owned by alice, bob a member of the first.
    let app = TestApp::spawn_with_storage(place.storage.clone(), |c| {
        c.media_map_max_bytes = MAP_LIMIT as u64;
    })
    .await;
    let mut sessions = Vec::new();
    sessions.push(app.session_with("alice", &["bob"]).await);
    for n in 2..=5 {
        sessions.push(app.create_session("alice", &format!("Campaign {n}")).await);
    }
    let mapping = std::env::temp_dir().join(format!("qb-mapping-{}.csv", Uuid::new_v4()));
    let mut csv = String::from("campaign_id,session_id\n");
    for (n, session) in sessions.iter().enumerate() {
        csv.push_str(&format!("{},{session}\n", n + 1));
    }
    std::fs::write(&mapping, csv).expect("mapping");
    let mapping = mapping.to_string_lossy().into_owned();

    let source = build_source(600, 400, &[100, 220, 340, 460, 580], &[100, 200, 300]).await;
    assert_eq!(source.originals.len(), 1000);
    assert_eq!(source.bad.len(), 8);
    let x = Migration {
        app,
        place,
        source,
        mapping,
    };
    a_dry_run_checks_everything_and_changes_nothing(&x).await;
    let (run_id, mut second) = a_run_whose_worker_is_killed_is_finished_by_another(&x).await;
    let (media, after) = every_good_asset_is_stored_once_and_its_row_points_at_it(&x, run_id).await;
    members_get_a_migrated_map_and_strangers_a_404(&x, &media, &after).await;
    a_second_run_finds_only_the_bad_ones(&x).await;
    a_rollback_restores_every_blob_and_removes_the_copies(&x, run_id).await;
    too_many_bad_assets_abort_a_run(&x).await;
    let _ = second.kill();
    let _ = second.wait();
}

async fn a_dry_run_checks_everything_and_changes_nothing(x: &Migration) {
    let (app, place, source, mapping) = (&x.app, &x.place, &x.source, &x.mapping);
    let before = source_rows(&source.db.pool).await;

    // A dry run checks everything and changes nothing.
    let mut helper = worker(&app.db, place);
    let (ok, out, err) = admin(
        &app.db,
        place,
        &[
            "run",
            "--source",
            &source.db.url,
            "--mapping",
            mapping,
            "--dry-run",
        ],
    )
    .await;
    assert!(ok, "dry run failed: {err}\n{out}");
    let dry = report_of(&out);
    assert_eq!(dry["outcome"], "completed", "{dry:#}");
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["validated"], 992, "{dry:#}");
    assert_eq!(dry["failed"], 8);
    assert_eq!(dry["migrated"], 0);
    assert_eq!(
        source_rows(&source.db.pool).await,
        before,
        "a dry run changed the source"
    );
    assert_eq!(
        count(&app.db.pool, "SELECT count(*) FROM campaign_media").await,
        0
    );
    assert!(place.media_objects().await.is_empty());
    let _ = helper.kill();
    let _ = helper.wait();
}

/// Returns the run and the worker that finished it.
async fn a_run_whose_worker_is_killed_is_finished_by_another(x: &Migration) -> (Uuid, Child) {
    let (app, place, source, mapping) = (&x.app, &x.place, &x.source, &x.mapping);
    // The real run; its worker is killed mid-run and another finishes it.
    let mut first = worker(&app.db, place);
    let (ok, out, err) = admin(
        &app.db,
        place,
        &[
            "run",
            "--source",
            &source.db.url,
            "--mapping",
            mapping,
            "--batch",
            "50",
            "--no-wait",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let run_id: Uuid = out
        .split_whitespace()
        .next()
        .and_then(|r| r.parse().ok())
        .expect("run id");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let migrated = count(
            &app.db.pool,
            &format!("SELECT count(*) FROM asset_migration_items WHERE run_id = '{run_id}' AND status = 'migrated'"),
        )
        .await;
        if migrated >= 250 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not get going ({migrated})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().expect("kill");
    let _ = first.wait();
    let killed_at = count(
        &app.db.pool,
        &format!("SELECT count(*) FROM asset_migration_items WHERE run_id = '{run_id}' AND status = 'migrated'"),
    )
    .await;
    assert!(killed_at < 992, "the run finished before it was killed");
    let second = worker(&app.db, place);
    let (ok, out, err) = admin(&app.db, place, &["resume", "--run", &run_id.to_string()]).await;
    // `resume` enqueues another job; the first one is rescued too: both
    // end, and the run is the same.
    assert!(ok, "{err}");
    let report = report_of(&out);
    assert_eq!(report["outcome"], "completed", "{report:#}");
    assert_eq!(report["migrated"], 992, "{report:#}");
    assert_eq!(report["failed"], 8);
    let failures = report["failures"].as_array().expect("failures");
    assert_eq!(failures.len(), 8);
    for failure in failures {
        let key = (
            failure["table"].as_str().expect("table").to_owned(),
            failure["asset_id"]
                .as_str()
                .and_then(|i| i.parse().ok())
                .expect("id"),
        );
        let why = source
            .bad
            .get(&key)
            .unwrap_or_else(|| panic!("{key:?} failed: {failure}"));
        assert!(
            failure["reason"].as_str().is_some_and(|r| r.contains(why)),
            "{failure} should say {why:?}"
        );
    }
    let stored = report["report_key"].as_str().expect("report key");
    let kept: Value = serde_json::from_slice(
        &place
            .storage
            .get_object(stored)
            .await
            .expect("stored report"),
    )
    .expect("json");
    assert_eq!(kept["migrated"], 992);

    (run_id, second)
}

/// Returns the migrated media (id: sha-256, key, session) and the source
/// rows after the run.
async fn every_good_asset_is_stored_once_and_its_row_points_at_it(
    x: &Migration,
    run_id: Uuid,
) -> (Migrated, SourceRows) {
    let (app, place, source) = (&x.app, &x.place, &x.source);
    // Nothing twice: one media row, one object per good asset.
    assert_eq!(
        count(
            &app.db.pool,
            "SELECT count(*) FROM campaign_media WHERE source = 'migrated'"
        )
        .await,
        992
    );
    assert_eq!(
        place.media_objects().await.len(),
        992,
        "an asset was stored twice"
    );
    assert_eq!(
        count(&app.db.pool, &format!("SELECT count(*) FROM asset_migration_items WHERE run_id = '{run_id}' AND status IN ('pending', 'stored')")).await,
        0
    );
    // Every good row points at its verified copy and lost its blob; the
    // bad ones are as they were.
    let media: Migrated = sqlx::query_as::<_, (Uuid, Vec<u8>, String, Uuid)>(
        "SELECT id, sha256, storage_key, session_id FROM campaign_media WHERE source = 'migrated'",
    )
    .fetch_all(&app.db.pool)
    .await
    .expect("media")
    .into_iter()
    .map(|(id, sha, key, session)| (id, (sha, key, session)))
    .collect();
    let after = source_rows(&source.db.pool).await;
    for (key, original) in &source.originals {
        let (data, asset) = &after[key];
        if source.bad.contains_key(key) {
            assert_eq!(
                data.as_ref(),
                Some(original),
                "{key:?} bad, must be untouched"
            );
            assert_eq!(*asset, None);
            continue;
        }
        assert_eq!(*data, None, "{key:?}: its blob is cleared");
        let asset = asset.unwrap_or_else(|| panic!("{key:?} points nowhere"));
        let (sha, object, _) = &media[&asset];
        assert_eq!(
            sha.as_slice(),
            Sha256::digest(original).as_slice(),
            "{key:?}"
        );
        let bytes = place.storage.get_object(object).await.expect("object");
        assert_eq!(bytes.as_ref(), original.as_slice(), "{key:?}");
    }

    (media, after)
}

async fn members_get_a_migrated_map_and_strangers_a_404(
    x: &Migration,
    media: &Migrated,
    after: &SourceRows,
) {
    let (app, source) = (&x.app, &x.source);
    // Members get a migrated map from the API; strangers a 404. (Map 5 is
    // of campaign 1: bob's session.)
    let map_id = after[&("campaign_maps".to_owned(), 5)].1.expect("map 5");
    let (_, _, session) = &media[&map_id];
    let item = app
        .get("bob", &format!("/api/sessions/{session}/media/{map_id}"))
        .await;
    assert_eq!(item.status, 200, "{}", item.text);
    assert_eq!(item.body["source"], "migrated");
    assert_eq!(item.body["original_name"], "Level 5.png");
    let url = item.body["url"].as_str().expect("url").to_owned();
    let served = app
        .client
        .get(app.url(&url))
        .bearer_auth(app.token("bob"))
        .send()
        .await
        .expect("get");
    assert_eq!(served.status(), 200);
    assert_eq!(
        served.bytes().await.expect("bytes").as_ref(),
        source.originals[&("campaign_maps".to_owned(), 5)].as_slice()
    );
    let stranger = app
        .client
        .get(app.url(&url))
        .bearer_auth(app.token("mallory"))
        .send()
        .await
        .expect("get");
    assert_eq!(stranger.status(), 404);
}

async fn a_second_run_finds_only_the_bad_ones(x: &Migration) {
    let (app, place, source, mapping) = (&x.app, &x.place, &x.source, &x.mapping);
    // A second run finds nothing left but the bad ones.
    let (ok, out, err) = admin(
        &app.db,
        place,
        &["run", "--source", &source.db.url, "--mapping", mapping],
    )
    .await;
    assert!(ok, "{err}");
    let again = report_of(&out);
    assert_eq!(again["migrated"], 0, "{again:#}");
    assert_eq!(again["failed"], 8);
}

async fn a_rollback_restores_every_blob_and_removes_the_copies(x: &Migration, run_id: Uuid) {
    let (app, place, source) = (&x.app, &x.place, &x.source);
    // Rollback: every blob back byte for byte, references cleared, the
    // run's objects and rows gone.
    let (ok, out, err) = admin(&app.db, place, &["rollback", "--run", &run_id.to_string()]).await;
    assert!(ok, "rollback failed: {err}");
    let rolled = report_of(&out);
    assert_eq!(rolled["outcome"], "rolled_back", "{rolled:#}");
    assert_eq!(rolled["restored"], 992);
    let restored = source_rows(&source.db.pool).await;
    for (key, original) in &source.originals {
        let (data, asset) = &restored[key];
        assert_eq!(
            data.as_ref(),
            Some(original),
            "{key:?} not restored byte for byte"
        );
        assert_eq!(*asset, None, "{key:?} still points at storage");
    }
    assert_eq!(
        count(&app.db.pool, "SELECT count(*) FROM campaign_media").await,
        0
    );
    assert!(
        place.media_objects().await.is_empty(),
        "the run's objects are gone"
    );
    let (ok, _, err) = admin(&app.db, place, &["rollback", "--run", &run_id.to_string()]).await;
    assert!(!ok, "a run is rolled back once");
    assert!(err.contains("rolled_back"), "{err}");
}

/// 2 % bad: the run aborts by itself.
async fn too_many_bad_assets_abort_a_run(x: &Migration) {
    let (app, place, mapping) = (&x.app, &x.place, &x.mapping);
    // 2 % bad: the run aborts by itself, with a report, and exits non-zero.
    let risky = build_source(200, 0, &[10, 60, 110, 160], &[]).await;
    let (ok, out, _) = admin(
        &app.db,
        place,
        &[
            "run",
            "--source",
            &risky.db.url,
            "--mapping",
            mapping,
            "--notes-table",
            "",
        ],
    )
    .await;
    assert!(!ok, "an aborted run exits non-zero");
    let aborted = report_of(&out);
    assert_eq!(aborted["outcome"], "aborted", "{aborted:#}");
    assert!(
        aborted["aborted"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("over the threshold")),
        "{aborted:#}"
    );
    assert!(aborted["migrated"].as_i64() < Some(196), "{aborted:#}");
    assert_eq!(aborted["failed"], 2);
}

#[tokio::test]
async fn asset_migration_on_the_local_filesystem() {
    let dir = std::env::temp_dir().join(format!("qb-migrate-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    exercise(Place::local(&dir)).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn asset_migration_on_s3() {
    let place = Place::s3().await;
    exercise(place).await;
}

#[tokio::test]
async fn operators_start_follow_and_roll_back_runs_over_the_admin_api() {
    use reqwest::Method;
    let dir = std::env::temp_dir().join(format!("qb-migrate-api-{}", Uuid::new_v4()));
    let path = dir.to_string_lossy().into_owned();
    let configure = move |c: &mut questboard::config::Config| c.storage_url = path.clone();
    let app = TestApp::spawn_with(configure.clone()).await;
    let _worker = app.jobs_worker(configure).await;
    let session = app.session_with("alice", &["bob"]).await;
    let source = build_source(20, 0, &[], &[]).await;
    let mapping: Vec<Value> = (1..=5)
        .map(|c| serde_json::json!({ "campaign_id": c.to_string(), "session_id": session }))
        .collect();
    let body = serde_json::json!({
        "source_url": source.db.url,
        "mapping": mapping,
        "tables": [{ "table": "campaign_maps", "kind": "map" }],
    });

    // Operators only; bad requests are refused before anything is recorded.
    let player = app
        .post("bob", "/api/admin/migrations/assets", body.clone())
        .await;
    assert_eq!(player.status, 403, "{}", player.text);
    for (bad, why) in [
        (
            serde_json::json!({ "source_url": "mysql://x", "mapping": mapping }),
            "postgres",
        ),
        (
            serde_json::json!({ "source_url": source.db.url, "mapping": mapping,
                                "tables": [{ "table": "maps; drop table x", "kind": "map" }] }),
            "plain SQL name",
        ),
        (
            serde_json::json!({ "source_url": source.db.url, "mapping": mapping,
                                "tables": [{ "table": "maps", "kind": "image" }] }),
            "only maps and notes",
        ),
        (
            serde_json::json!({ "source_url": source.db.url }),
            "mapping",
        ),
        (
            serde_json::json!({ "source_url": source.db.url, "mapping": [mapping[0], mapping[0]] }),
            "twice",
        ),
        (
            serde_json::json!({ "source_url": source.db.url, "mapping": mapping,
                                "min_sample": 9_223_372_036_854_775_808_u64 }),
            "out of range",
        ),
        (
            serde_json::json!({ "source_url": source.db.url, "mapping": mapping,
                                "min_sample": 2_000_000_000 }),
            "at most 1,000,000,000",
        ),
        (
            serde_json::json!({ "source_url": source.db.url, "mapping": mapping,
                                "batch": 2.5 }),
            "whole number",
        ),
    ] {
        let resp = app
            .op(Method::POST, "/api/admin/migrations/assets", Some(bad))
            .await;
        assert_eq!(resp.status, 422, "{}", resp.text);
        assert!(resp.text.contains(why), "{} should say {why}", resp.text);
    }
    assert_eq!(
        count(&app.db.pool, "SELECT count(*) FROM asset_migration_runs").await,
        0
    );
    let original = |id: i64| source.originals[&("campaign_maps".to_owned(), id)].clone();
    // No run names the table yet: the API does not know where it is.
    assert_eq!(old_asset(&app, Some("bob"), "campaign_maps/4").await.0, 404);

    // A dry run tells the API where the old assets are; they are served
    // from the source rows, to members of their session only.
    let mut dry = body.clone();
    dry["dry_run"] = serde_json::json!(true);
    let started = app
        .op(Method::POST, "/api/admin/migrations/assets", Some(dry))
        .await;
    assert_eq!(started.status, 202, "{}", started.text);
    let dry_path = format!(
        "/api/admin/migrations/assets/{}",
        started.body["run_id"].as_str().expect("run id")
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.op(Method::GET, &dry_path, None).await.body["status"] != "completed" {
        assert!(Instant::now() < deadline, "the dry run did not end");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, etag, bytes) = old_asset(&app, Some("bob"), "campaign_maps/4").await;
    assert_eq!((status, etag), (200, None));
    assert_eq!(bytes, original(4));
    for (user, path, want) in [
        (Some("mallory"), "campaign_maps/4", 404),
        (None, "campaign_maps/4", 401),
        (Some("bob"), "campaign_maps/999", 404),
        (Some("bob"), "campaign_maps/four", 404),
        (Some("bob"), "campaign_maps/1%3B%20drop", 404),
        (Some("bob"), "campaign_notes/4", 404),
        (Some("bob"), "pg_user/1", 404),
        (Some("bob"), "campaign%20maps/1", 404),
    ] {
        assert_eq!(old_asset(&app, user, path).await.0, want, "{user:?} {path}");
    }

    let started = app
        .op(Method::POST, "/api/admin/migrations/assets", Some(body))
        .await;
    assert_eq!(started.status, 202, "{}", started.text);
    let run_id = started.body["run_id"].as_str().expect("run id").to_owned();
    assert!(started.body["job_id"].is_string());
    let path = format!("/api/admin/migrations/assets/{run_id}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let resp = app.op(Method::GET, &path, None).await;
        assert_eq!(resp.status, 200, "{}", resp.text);
        if resp.body["status"] == "completed" {
            break resp.body;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not end: {}",
            resp.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done["counts"]["migrated"], 20, "{done:#}");
    assert_eq!(done["report"]["outcome"], "completed");
    // The console's runs list shows both runs, newest first; an ended run
    // does not resume.
    let runs = app.op(Method::GET, "/api/admin/runs", None).await;
    assert_eq!(runs.status, 200, "{}", runs.text);
    let listed: Vec<(&str, &str, bool)> = runs.body["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| {
            (
                r["run_id"].as_str().unwrap_or_default(),
                r["kind"].as_str().unwrap_or_default(),
                r["dry_run"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(listed.len(), 2, "{}", runs.text);
    assert_eq!(listed[0], (run_id.as_str(), "asset_migration", false));
    assert!(listed[1].2, "the dry run is the older one");
    app.op(Method::POST, &format!("{path}/resume"), None)
        .await
        .assert_error(409, "conflict");
    app.op(Method::GET, "/api/admin/runs?limit=0", None)
        .await
        .assert_error(400, "invalid_query");
    assert!(!done["source"].as_str().unwrap_or_default().is_empty());
    let listed = app
        .get("bob", &format!("/api/sessions/{session}/media?kind=map"))
        .await;
    assert_eq!(listed.body["media"].as_array().map(Vec::len), Some(20));
    // Moved: the source row is empty now, the same bytes come from storage.
    let (status, etag, bytes) = old_asset(&app, Some("bob"), "campaign_maps/4").await;
    assert_eq!(status, 200);
    assert!(etag.is_some(), "served from storage");
    assert_eq!(bytes, original(4));
    assert_eq!(
        old_asset(&app, Some("mallory"), "campaign_maps/4").await.0,
        404
    );
    assert_eq!(
        count(
            &source.db.pool,
            "SELECT count(*) FROM campaign_maps WHERE data IS NOT NULL"
        )
        .await,
        0
    );

    // A worker that died between pointing a source row at its copy and
    // marking the item migrated: a rerun finishes the item, stores nothing
    // again.
    let run_uuid: Uuid = run_id.parse().expect("uuid");
    sqlx::query(
        "UPDATE asset_migration_items SET status = 'stored' WHERE run_id = $1 AND source_id = '3'",
    )
    .bind(run_uuid)
    .execute(&app.db.pool)
    .await
    .expect("stored");
    sqlx::query("UPDATE asset_migration_runs SET status = 'running' WHERE id = $1")
        .bind(run_uuid)
        .execute(&app.db.pool)
        .await
        .expect("running");
    {
        let mut conn = app.db.pool.acquire().await.expect("conn");
        let job = questboard_core::asset_migration::MigrateAssets {
            run_id: run_uuid,
            rollback: false,
        };
        questboard_core::jobs::enqueue(&mut conn, &job, &Default::default())
            .await
            .expect("enqueue");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let rerun = loop {
        let resp = app.op(Method::GET, &path, None).await;
        if resp.body["status"] == "completed" {
            break resp.body;
        }
        assert!(
            Instant::now() < deadline,
            "the rerun did not end: {}",
            resp.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(rerun["counts"]["migrated"], 20, "{rerun:#}");
    assert_eq!(rerun["counts"]["stored"], 0, "{rerun:#}");
    assert_eq!(
        count(&app.db.pool, "SELECT count(*) FROM campaign_media").await,
        20
    );

    let rollback = format!("/api/admin/migrations/assets/{run_id}/rollback");
    let resp = app.op(Method::POST, &rollback, None).await;
    assert_eq!(resp.status, 202, "{}", resp.text);
    assert_eq!(resp.body["status"], "rolling_back");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let resp = app.op(Method::GET, &path, None).await;
        if resp.body["status"] == "rolled_back" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rollback did not end: {}",
            resp.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows = source_rows(&source.db.pool).await;
    for (key, original) in &source.originals {
        assert_eq!(rows[key].0.as_ref(), Some(original), "{key:?}");
    }
    // Rolled back: from the source again; bytes that are not what their
    // type says are not served.
    let (status, etag, bytes) = old_asset(&app, Some("bob"), "campaign_maps/4").await;
    assert_eq!((status, etag), (200, None));
    assert_eq!(bytes, original(4));
    sqlx::query("UPDATE campaign_maps SET data = 'GIF89a, not a png' WHERE id = 5")
        .execute(&source.db.pool)
        .await
        .expect("corrupt");
    assert_eq!(old_asset(&app, Some("bob"), "campaign_maps/5").await.0, 404);
    let again = app.op(Method::POST, &rollback, None).await;
    assert_eq!(again.status, 409, "{}", again.text);
    let unknown = app
        .op(
            Method::GET,
            &format!("/api/admin/migrations/assets/{}", Uuid::now_v7()),
            None,
        )
        .await;
    assert_eq!(unknown.status, 404);
    let _ = std::fs::remove_dir_all(dir);
}
