//! The legacy layout import end to end, on the local filesystem and on S3
//! (moto), with real `questboard` processes: a tree in the old app's
//! layout (`campaigns/<env>/campaign_<n> - <Name>/...`) holds owned,
//! unowned, duplicate and odd-named folders and files that are unreadable,
//! oversized or collide once their names are made safe. A dry run (through
//! `questboard admin import-legacy`) changes nothing; the real run makes
//! the right sessions (owners, members, legacy paths) and files, and
//! reports every folder and file it could not decide; a re-run imports
//! only what is new; the `/api/legacy/...` shim serves the files to
//! members only and counts its use.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;
use std::sync::Arc;

use futures::TryStreamExt as _;
use object_store::ObjectStoreExt as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::asset_migration::{Place, count, questboard, report_of};
use crate::helpers::{TestApp, TestDb, s3_location, s3_test_storage};
use crate::media::png;

/// Where the legacy tree lives.
enum Tree {
    Local(std::path::PathBuf),
    S3(Arc<dyn object_store::ObjectStore>, String),
}

impl Tree {
    fn url(&self) -> String {
        match self {
            Tree::Local(dir) => format!("file://{}", dir.display()),
            Tree::S3(_, url) => url.clone(),
        }
    }

    /// Writes `bytes` at `path` (below the root) as the old app would have.
    async fn put(&self, path: &str, bytes: &[u8]) {
        match self {
            Tree::Local(dir) => {
                let file = dir.join(path);
                std::fs::create_dir_all(file.parent().expect("parent")).expect("dir");
                std::fs::write(file, bytes).expect("write");
            }
            Tree::S3(store, url) => {
                let prefix = url.splitn(4, '/').nth(3).unwrap_or_default();
                let location =
                    object_store::path::Path::from_iter(prefix.split('/').chain(path.split('/')));
                store
                    .put(&location, bytes.to_vec().into())
                    .await
                    .expect("put");
            }
        }
    }
}

fn mp3() -> Vec<u8> {
    let mut bytes = b"ID3\x03\x00\x00\x00\x00\x00\x00".to_vec();
    bytes.resize(400, 0);
    bytes
}

fn jpeg() -> Vec<u8> {
    let mut bytes = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00".to_vec();
    bytes.resize(300, 0);
    bytes
}

/// Percent-encodes a path for a URL (every byte but unreserved ones and `/`).
fn url_path(path: &str) -> String {
    path.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The first campaign's files: path in the folder -> bytes.
fn lost_mine() -> BTreeMap<&'static str, Vec<u8>> {
    BTreeMap::from([
        (
            "history.txt",
            b"Turn 1: the party enters the mine.\n".to_vec(),
        ),
        ("logs/Session 1.log", b"[20:01] alice: hello\n".to_vec()),
        ("state.json", br#"{"hp": {"Thorin": 12}}"#.to_vec()),
        ("characters/Thorin.json", br#"{"name": "Thorin"}"#.to_vec()),
        ("art/Map of Phandalin.png", png(2_000)),
        ("theme.mp3", mp3()),
        ("notes/todo.md", b"# To do\n- find the forge\n".to_vec()),
        (
            "Dragon's Lair (draft).html",
            b"<script>alert(1)</script>".to_vec(),
        ),
        ("weird #1 ?.txt", b"odd name\n".to_vec()),
        // Unreadable: not what their names say.
        ("broken.png", b"GIF89a not a png".to_vec()),
        ("bad.json", b"{not json".to_vec()),
        // Oversized (the runs allow 50,000 bytes).
        ("huge.bin", vec![7; 60_000]),
        // Collide once made safe (both `data/legacy/Day_1.txt`).
        ("Day 1.txt", b"one\n".to_vec()),
        ("Day_1.txt", b"two\n".to_vec()),
    ])
}

async fn build_tree(tree: &Tree, prod: &str) {
    for (path, bytes) in lost_mine() {
        tree.put(
            &format!("campaigns/{prod}/campaign_1 - The Lost Mine/{path}"),
            &bytes,
        )
        .await;
    }
    let other: [(&str, Vec<u8>); 9] = [
        (
            "campaign_2 - Château d'If/history.md",
            b"# The island\n".to_vec(),
        ),
        ("campaign_2 - Château d'If/portrait.jpg", jpeg()),
        ("campaign_3 - Frost/history.txt", b"cold\n".to_vec()),
        ("campaign_3 - Frost (old)/history.txt", b"colder\n".to_vec()),
        ("campaign_4 - Nobody's/history.txt", b"whose?\n".to_vec()),
        ("campaign_5/state.json", b"{}".to_vec()),
        ("scratch/notes.txt", b"not a campaign\n".to_vec()),
        ("campaign_x - Typo/history.txt", b"typo\n".to_vec()),
        ("campaign_7 -  Spaces  /log.txt", b"spaces\n".to_vec()),
    ];
    for (path, bytes) in other {
        tree.put(&format!("campaigns/{prod}/{path}"), &bytes).await;
    }
    tree.put(
        "campaigns/staging/campaign_1 - Sandbox/history.txt",
        b"staging\n",
    )
    .await;
    tree.put("campaigns/README.txt", b"old app\n").await;
}

fn mapping(prod: &str) -> String {
    // CSV, with quoted folders (one holds a comma-free apostrophe).
    format!(
        "folder,owner,members,gms\n\
         \"{prod}/campaign_1 - The Lost Mine\",alice,bob,carol\n\
         \"{prod}/campaign_2 - Château d'If\",dave,,\n\
         \"{prod}/campaign_3 - Frost\",erin\n\
         \"{prod}/campaign_3 - Frost (old)\",erin\n\
         {prod}/campaign_5,frank\n\
         \"{prod}/campaign_7 -  Spaces  \",gina\n\
         staging/campaign_1 - Sandbox,alice\n"
    )
}

fn worker(db: &TestDb, place: &Place) -> Child {
    questboard(db, place, "legacy_import", &["work"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("questboard work")
}

/// `questboard admin import-legacy <args>`: success, stdout, stderr.
async fn import(db: &TestDb, place: &Place, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["admin", "import-legacy"];
    all.extend_from_slice(args);
    let mut cmd = questboard(db, place, "legacy_import", &all);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("questboard admin"))
        .await
        .expect("join");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn paths(report: &Value, kind: &str) -> BTreeSet<String> {
    report["problems"][kind]
        .as_array()
        .unwrap_or_else(|| panic!("no {kind} in {report:#}"))
        .iter()
        .map(|p| p["path"].as_str().expect("path").to_owned())
        .collect()
}

fn set(items: &[String]) -> BTreeSet<String> {
    items.iter().cloned().collect()
}

async fn sessions_of(pool: &PgPool) -> BTreeMap<String, (Uuid, String, String)> {
    let rows: Vec<(String, String, Uuid, String, String)> = sqlx::query_as(
        "SELECT c.env, c.folder, s.id, s.name, s.owner_user_id
         FROM legacy_campaigns c JOIN campaign_sessions s ON s.id = c.session_id",
    )
    .fetch_all(pool)
    .await
    .expect("sessions");
    rows.into_iter()
        .map(|(env, folder, id, name, owner)| (format!("{env}/{folder}"), (id, name, owner)))
        .collect()
}

async fn objects(place: &Place) -> Vec<String> {
    let mut keys: Vec<String> = place
        .storage
        .list_objects("sessions")
        .map_ok(|o| o.key)
        .try_collect()
        .await
        .expect("list");
    keys.sort();
    keys
}

/// An import's setting: an app on `place`, a legacy `tree` for env `prod`
/// with its mapping file, and a worker process serving imports. The stories
/// below run in order on each backend: each starts where the last ended.
struct Import {
    app: TestApp,
    place: Place,
    tree: Tree,
    prod: String,
    source: String,
    mapping_file: String,
    /// The campaign most stories look into.
    mine: String,
    worker: Child,
}

impl Drop for Import {
    fn drop(&mut self) {
        let _ = self.worker.kill();
        let _ = self.worker.wait();
    }
}

impl Import {
    /// The arguments of a run with the mapping file.
    fn base(&self) -> Vec<&str> {
        vec![
            "run",
            "--source",
            self.source.as_str(),
            "--mapping",
            self.mapping_file.as_str(),
            "--max-file-bytes",
            "50000",
        ]
    }
}

/// Every import story on `place`, from `tree`, in order.
async fn exercise(place: Place, tree: Tree, prod: &str) {
    let app = TestApp::spawn_with_storage(place.storage.clone(), |_| {}).await;
    build_tree(&tree, prod).await;
    let mapping_file = std::env::temp_dir().join(format!("qb-legacy-{}.csv", Uuid::new_v4()));
    std::fs::write(&mapping_file, mapping(prod)).expect("mapping");
    let x = Import {
        worker: worker(&app.db, &place),
        app,
        place,
        source: tree.url(),
        tree,
        prod: prod.to_owned(),
        mapping_file: mapping_file.to_string_lossy().into_owned(),
        mine: format!("{prod}/campaign_1 - The Lost Mine"),
    };
    let expected_imports = a_dry_run_checks_everything_and_changes_nothing(&x).await;
    a_strict_run_imports_and_reports_every_problem(&x, &expected_imports).await;
    let (sessions, mine_id) = sessions_get_names_owners_and_members_from_the_mapping(&x).await;
    files_go_where_the_rules_put_them(&x, mine_id).await;
    the_shim_serves_members_byte_for_byte_and_no_one_else(&x).await;
    a_rerun_skips_what_is_imported_and_picks_up_what_is_new(&x, &sessions, mine_id).await;
    copied_files_hold_what_the_legacy_files_held(&x, mine_id).await;
}

/// Returns the folders it would import.
async fn a_dry_run_checks_everything_and_changes_nothing(x: &Import) -> BTreeSet<String> {
    let (app, place, prod, mine) = (&x.app, &x.place, x.prod.as_str(), x.mine.clone());
    // A dry run reads and checks everything and changes nothing.
    let mut args = x.base();
    args.push("--dry-run");
    let (ok, out, err) = import(&app.db, place, &args).await;
    assert!(ok, "dry run failed: {err}\n{out}");
    let dry = report_of(&out);
    assert_eq!(dry["outcome"], "completed", "{dry:#}");
    assert_eq!(dry["dry_run"], true);
    let would: BTreeSet<String> = dry["would_import"]
        .as_array()
        .expect("would_import")
        .iter()
        .map(|f| f["path"].as_str().expect("path").to_owned())
        .collect();
    let expected_imports = set(&[
        mine.to_owned(),
        format!("{prod}/campaign_2 - Château d'If"),
        format!("{prod}/campaign_5"),
        format!("{prod}/campaign_7 -  Spaces  "),
        "staging/campaign_1 - Sandbox".to_owned(),
    ]);
    assert_eq!(would, expected_imports, "{dry:#}");
    let mine_checked = dry["would_import"]
        .as_array()
        .expect("would_import")
        .iter()
        .find(|f| f["path"] == mine.as_str())
        .expect("the lost mine");
    // 14 files: 2 unreadable, 1 oversized, 2 colliding.
    assert_eq!(mine_checked["files"], 9, "{mine_checked}");
    assert_eq!(mine_checked["owner"], "alice");
    assert_eq!(
        count(&app.db.pool, "SELECT count(*) FROM campaign_sessions").await,
        0,
        "a dry run made sessions"
    );
    assert_eq!(
        count(&app.db.pool, "SELECT count(*) FROM campaign_media").await,
        0
    );
    assert!(objects(place).await.is_empty(), "a dry run stored files");

    expected_imports
}

async fn a_strict_run_imports_and_reports_every_problem(
    x: &Import,
    expected_imports: &BTreeSet<String>,
) {
    let (app, place, prod, mine) = (&x.app, &x.place, x.prod.as_str(), x.mine.clone());
    // The real run, with --strict: it reports problems, so it exits 2.
    let mut args = x.base();
    args.push("--strict");
    let (ok, out, err) = import(&app.db, place, &args).await;
    assert!(!ok, "--strict should fail on problems: {err}");
    let report = report_of(&out);
    assert_eq!(report["outcome"], "completed", "{report:#}");
    assert_eq!(report["dry_run"], false);
    let imported: BTreeSet<String> = report["imported"]
        .as_array()
        .expect("imported")
        .iter()
        .map(|f| f["path"].as_str().expect("path").to_owned())
        .collect();
    assert_eq!(&imported, expected_imports, "{report:#}");

    // Every folder and file it could not decide, reported.
    assert_eq!(
        paths(&report, "unowned"),
        set(&[format!("{prod}/campaign_4 - Nobody's")])
    );
    assert_eq!(
        paths(&report, "duplicate"),
        set(&[
            format!("{prod}/campaign_3 - Frost"),
            format!("{prod}/campaign_3 - Frost (old)"),
        ])
    );
    assert_eq!(
        paths(&report, "not_campaign"),
        set(&[
            "README.txt".to_owned(),
            format!("{prod}/scratch"),
            format!("{prod}/campaign_x - Typo"),
        ])
    );
    assert_eq!(
        paths(&report, "unreadable"),
        set(&[format!("{mine}/bad.json"), format!("{mine}/broken.png")])
    );
    assert_eq!(
        paths(&report, "oversized"),
        set(&[format!("{mine}/huge.bin")])
    );
    assert_eq!(
        paths(&report, "collision"),
        set(&[format!("{mine}/Day 1.txt"), format!("{mine}/Day_1.txt")])
    );
    let stored = report["report_key"].as_str().expect("report key");
    let kept: Value = serde_json::from_slice(
        &place
            .storage
            .get_object(stored)
            .await
            .expect("stored report"),
    )
    .expect("json");
    assert_eq!(kept["imported"], report["imported"]);
}

/// Returns the sessions by legacy path, and the lost mine's id.
async fn sessions_get_names_owners_and_members_from_the_mapping(
    x: &Import,
) -> (BTreeMap<String, (Uuid, String, String)>, Uuid) {
    let (app, prod, mine) = (&x.app, x.prod.as_str(), x.mine.clone());
    // The right sessions: names from the folders, owners and members from
    // the mapping, the legacy path recorded.
    let sessions = sessions_of(&app.db.pool).await;
    assert_eq!(sessions.len(), 5, "{sessions:?}");
    let (mine_id, name, owner) = &sessions[&mine];
    assert_eq!((name.as_str(), owner.as_str()), ("The Lost Mine", "alice"));
    assert_eq!(
        sessions[&format!("{prod}/campaign_2 - Château d'If")].1,
        "Château d'If"
    );
    assert_eq!(sessions[&format!("{prod}/campaign_5")].1, "Campaign 5");
    assert_eq!(
        sessions[&format!("{prod}/campaign_7 -  Spaces  ")].1,
        "Spaces"
    );
    let roles: BTreeMap<String, String> =
        sqlx::query_as("SELECT user_id, role FROM campaign_session_members WHERE session_id = $1")
            .bind(mine_id)
            .fetch_all(&app.db.pool)
            .await
            .expect("members")
            .into_iter()
            .collect();
    assert_eq!(
        roles,
        BTreeMap::from([
            ("alice".to_owned(), "owner".to_owned()),
            ("bob".to_owned(), "player".to_owned()),
            ("carol".to_owned(), "gm".to_owned()),
        ])
    );

    let mine_id = *mine_id;
    (sessions, mine_id)
}

async fn files_go_where_the_rules_put_them(x: &Import, mine_id: Uuid) {
    let (app, place) = (&x.app, &x.place);
    // The right files, where the rules put them.
    let prefix = format!("sessions/{mine_id}/");
    let mine_objects: Vec<String> = objects(place)
        .await
        .into_iter()
        .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
        .collect();
    let media: Vec<(Uuid, String, String, String)> = sqlx::query_as(
        "SELECT id, kind, source, original_name FROM campaign_media WHERE session_id = $1
         ORDER BY kind",
    )
    .bind(mine_id)
    .fetch_all(&app.db.pool)
    .await
    .expect("media");
    assert_eq!(media.len(), 2, "{media:?}");
    assert_eq!(
        (
            media[0].1.as_str(),
            media[0].2.as_str(),
            media[0].3.as_str()
        ),
        ("audio", "migrated", "theme.mp3")
    );
    assert_eq!(
        (
            media[1].1.as_str(),
            media[1].2.as_str(),
            media[1].3.as_str()
        ),
        ("image", "migrated", "Map of Phandalin.png")
    );
    let mut expected_objects = vec![
        "data/characters/Thorin.json".to_owned(),
        "data/legacy/Dragon_s_Lair_draft_.html".to_owned(),
        "data/legacy/notes/todo.md".to_owned(),
        "data/legacy/weird_1_.txt".to_owned(),
        "data/state.json".to_owned(),
        "logs/Session_1.log".to_owned(),
        "logs/history.txt".to_owned(),
        format!("media/audio/{}.mp3", media[0].0),
        format!("media/images/{}.png", media[1].0),
        "session.json".to_owned(),
    ];
    expected_objects.sort();
    assert_eq!(mine_objects, expected_objects);
}

async fn the_shim_serves_members_byte_for_byte_and_no_one_else(x: &Import) {
    let (app, prod, mine) = (&x.app, x.prod.as_str(), x.mine.clone());
    let originals = lost_mine();
    // The shim serves the files to members, byte for byte, and counts it.
    for (user, file) in [
        ("alice", "art/Map of Phandalin.png"),
        ("bob", "history.txt"),
        ("carol", "weird #1 ?.txt"),
        ("bob", "Dragon's Lair (draft).html"),
        ("alice", "theme.mp3"),
    ] {
        let path = url_path(&format!("/api/legacy/{mine}/{file}"));
        let resp = app
            .client
            .get(app.url(&path))
            .bearer_auth(app.token(user))
            .send()
            .await
            .expect("shim");
        assert_eq!(resp.status(), StatusCode::OK, "{user} {file}");
        let headers = resp.headers().clone();
        let body = resp.bytes().await.expect("body");
        assert_eq!(body.as_ref(), originals[file].as_slice(), "{file}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{file}");
        if file.ends_with(".html") {
            // Never served as a page.
            assert_eq!(headers["content-type"], "application/octet-stream");
            assert!(
                headers["content-disposition"]
                    .to_str()
                    .is_ok_and(|d| d.starts_with("attachment")),
                "{headers:?}"
            );
        }
    }
    // Strangers, files that were not imported and folders never imported: 404.
    for (user, path) in [
        ("mallory", format!("{mine}/history.txt")),
        ("dave", format!("{mine}/history.txt")),
        ("alice", format!("{mine}/broken.png")),
        ("alice", format!("{mine}/Day 1.txt")),
        // A NUL is in no name (and no Postgres text): counted as unknown.
        ("alice", format!("{mine}\0/history.txt")),
        ("alice", format!("{mine}/history.txt\0")),
        ("alice", format!("{prod}/campaign_4 - Nobody's/history.txt")),
        (
            "alice",
            format!("{mine}/../campaign_2 - Château d'If/history.md"),
        ),
    ] {
        let resp = app
            .client
            .get(app.url(&url_path(&format!("/api/legacy/{path}"))))
            .bearer_auth(app.token(user))
            .send()
            .await
            .expect("shim");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{user} {path}");
    }
    let resp = app
        .client
        .get(app.url(&url_path(&format!("/api/legacy/{mine}/history.txt"))))
        .send()
        .await
        .expect("shim");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let metrics = app.metrics().await;
    let served =
        format!("questboard_legacy_shim_requests_total{{env=\"{prod}\",outcome=\"served\"}} 5");
    assert!(metrics.contains(&served), "{served} not in metrics");
    let missed =
        format!("questboard_legacy_shim_requests_total{{env=\"{prod}\",outcome=\"not_found\"}} 5");
    assert!(metrics.contains(&missed), "{missed} not in metrics");
}

async fn a_rerun_skips_what_is_imported_and_picks_up_what_is_new(
    x: &Import,
    sessions: &BTreeMap<String, (Uuid, String, String)>,
    mine_id: Uuid,
) {
    let (app, place, prod) = (&x.app, &x.place, x.prod.as_str());
    let (tree, source) = (&x.tree, &x.source);
    // A re-run skips what is imported and picks up what is new: a new
    // folder, and the duplicate settled by skipping the old copy.
    tree.put(
        &format!("campaigns/{prod}/campaign_8 - Late/history.txt"),
        b"late\n",
    )
    .await;
    let mut csv = mapping(prod);
    csv = csv.replace(&format!("\"{prod}/campaign_3 - Frost (old)\",erin\n"), "");
    let mut json_mapping = serde_json::Map::new();
    for line in csv.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        json_mapping.insert(
            fields[0].trim_matches('"').to_owned(),
            json!({ "owner": fields[1] }),
        );
    }
    json_mapping.insert(format!("{prod}/campaign_8 - Late"), json!("hank"));
    json_mapping.insert(
        format!("{prod}/campaign_3 - Frost (old)"),
        json!({ "skip": true }),
    );
    let json_file = std::env::temp_dir().join(format!("qb-legacy-{}.json", Uuid::new_v4()));
    std::fs::write(&json_file, Value::Object(json_mapping).to_string()).expect("mapping");
    let json_file = json_file.to_string_lossy().into_owned();
    let (ok, out, err) = import(
        &app.db,
        place,
        &[
            "run",
            "--source",
            source,
            "--mapping",
            &json_file,
            "--max-file-bytes",
            "50000",
        ],
    )
    .await;
    assert!(ok, "re-run failed: {err}\n{out}");
    let again = report_of(&out);
    let imported: BTreeSet<String> = again["imported"]
        .as_array()
        .expect("imported")
        .iter()
        .map(|f| f["path"].as_str().expect("path").to_owned())
        .collect();
    assert_eq!(
        imported,
        set(&[
            format!("{prod}/campaign_3 - Frost"),
            format!("{prod}/campaign_8 - Late"),
        ]),
        "{again:#}"
    );
    assert_eq!(again["already_imported"], 5);
    assert_eq!(
        paths(&again, "skipped"),
        set(&[format!("{prod}/campaign_3 - Frost (old)")])
    );
    assert!(paths(&again, "duplicate").is_empty(), "{again:#}");
    let after = sessions_of(&app.db.pool).await;
    assert_eq!(after.len(), 7);
    for (path, session) in sessions {
        assert_eq!(&after[path], session, "{path} was imported again");
    }
    assert_eq!(
        count(
            &app.db.pool,
            &format!("SELECT count(*) FROM campaign_media WHERE session_id = '{mine_id}'")
        )
        .await,
        2,
        "media imported twice"
    );
    assert_eq!(
        count(
            &app.db.pool,
            &format!(
                "SELECT count(*) FROM legacy_files WHERE session_id = '{mine_id}' AND status = 'copied'"
            )
        )
        .await,
        9
    );
}

async fn copied_files_hold_what_the_legacy_files_held(x: &Import, mine_id: Uuid) {
    let (app, place) = (&x.app, &x.place);
    // Each copied file holds what the legacy file held.
    let records: Vec<(String, String, Vec<u8>)> = sqlx::query_as(
        "SELECT legacy_path, storage_key, sha256 FROM legacy_files WHERE session_id = $1",
    )
    .bind(mine_id)
    .fetch_all(&app.db.pool)
    .await
    .expect("records");
    for (path, key, sha) in records {
        let bytes = place.storage.get_object(&key).await.expect("object");
        assert_eq!(
            bytes.as_ref(),
            lost_mine()[path.as_str()].as_slice(),
            "{path}"
        );
        assert_eq!(Sha256::digest(&bytes).as_slice(), sha.as_slice(), "{path}");
    }
}

#[tokio::test]
async fn legacy_import_on_the_local_filesystem() {
    let root = std::env::temp_dir().join(format!("qb-legacy-{}", Uuid::new_v4()));
    let dir = root.join("questboard");
    std::fs::create_dir_all(&dir).expect("dir");
    let tree = root.join("old-app");
    exercise(Place::local(&dir), Tree::Local(tree), "prod").await;
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test]
async fn legacy_import_on_s3() {
    let place = Place::s3().await;
    let legacy = s3_test_storage("old-app").await;
    let (endpoint, bucket) = s3_location(&legacy);
    let store = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(&bucket)
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_region("us-east-1")
        .build()
        .expect("s3");
    let tree = Tree::S3(Arc::new(store), format!("s3://{bucket}/old-app"));
    exercise(place, tree, "live").await;
}

/// (Its env is `old`: the shim's counts of `prod` and `live` belong to
/// the tests above, in the same process.)
#[tokio::test]
async fn operators_start_and_follow_imports_over_the_admin_api() {
    use reqwest::Method;
    let root = std::env::temp_dir().join(format!("qb-legacy-api-{}", Uuid::new_v4()));
    let storage = root.join("questboard").to_string_lossy().into_owned();
    let configure = move |c: &mut questboard::config::Config| c.storage_url = storage.clone();
    let app = TestApp::spawn_with(configure.clone()).await;
    // On purpose: an import from a root that is not there fails for good.
    app.db.expect_failed_jobs();
    let tree = Tree::Local(root.join("old-app"));
    tree.put("campaigns/old/campaign_1 - One/history.txt", b"one\n")
        .await;
    tree.put("campaigns/old/campaign_2 - Two/history.txt", b"two\n")
        .await;
    let source = tree.url();

    // Players may not; bad bodies are refused with why.
    let resp = app
        .post(
            "alice",
            "/api/admin/imports/legacy",
            json!({ "source_url": source, "mapping": {} }),
        )
        .await;
    resp.assert_error(403, "forbidden");
    for (body, why) in [
        (
            json!({ "source_url": "memory://", "mapping": {} }),
            "source",
        ),
        (json!({ "source_url": "/etc", "mapping": {} }), "source"),
        (
            json!({ "source_url": "file:///srv/../etc", "mapping": {} }),
            "source",
        ),
        (
            json!({ "source_url": source, "mapping": { "no-env": "alice" } }),
            "<env>/<folder>",
        ),
        (
            json!({ "source_url": source, "mapping": { "old/campaign_1 - One": "\u{202e}x" } }),
            "user id",
        ),
        (
            json!({ "source_url": source, "mapping": { "old/campaign_1 - One": 7 } }),
            "mapping of",
        ),
        (
            json!({ "source_url": source, "mapping": {}, "max_file_bytes": 0 }),
            "max_file_bytes",
        ),
    ] {
        let resp = app
            .op(
                Method::POST,
                "/api/admin/imports/legacy",
                Some(body.clone()),
            )
            .await;
        resp.assert_error(422, "validation_failed");
        assert!(resp.text.contains(why), "{body}: {}", resp.text);
    }

    let resp = app
        .op(
            Method::POST,
            "/api/admin/imports/legacy",
            Some(json!({
                "source_url": source,
                "mapping": { "old/campaign_1 - One": { "owner": "alice", "members": ["bob"] } },
            })),
        )
        .await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text);
    let run_id = resp.body["run_id"].as_str().expect("run id").to_owned();
    let job_id = resp.body["job_id"].as_str().expect("job id").to_owned();
    let _worker = app.jobs_worker(configure).await;
    let job = app
        .wait_job(&job_id, "the import", |j| j["status"] == "succeeded")
        .await;
    assert_eq!(job["result"]["outcome"], "completed", "{job:#}");
    let view = app
        .op(
            Method::GET,
            &format!("/api/admin/imports/legacy/{run_id}"),
            None,
        )
        .await;
    assert_eq!(view.status, StatusCode::OK, "{}", view.text);
    assert_eq!(view.body["status"], "completed");
    assert_eq!(view.body["imported"], 1);
    assert_eq!(view.body["problem_counts"]["unowned"], 1);
    assert_eq!(
        view.body["report"]["problems"]["unowned"][0]["path"],
        "old/campaign_2 - Two"
    );
    let resp = app
        .get(
            "bob",
            &url_path("/api/legacy/old/campaign_1 - One/history.txt"),
        )
        .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
    assert_eq!(resp.text, "one\n");
    // A rollback deletes the sessions the run made, except those played
    // in since, unless forced.
    let session: Uuid = sqlx::query_scalar("SELECT session_id FROM legacy_campaigns")
        .fetch_one(&app.db.pool)
        .await
        .expect("session");
    let resp = app
        .submit("alice", &session.to_string(), "I light a torch")
        .await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text);
    let place = Place::local(&root.join("questboard"));
    let rollback = |force: bool| {
        let mut args = vec![
            "admin",
            "import-legacy",
            "rollback",
            "--run",
            run_id.as_str(),
        ];
        if force {
            args.push("--force");
        }
        let mut cmd = questboard(&app.db, &place, "legacy_import", &args);
        let out = cmd.output().expect("rollback");
        (
            out.status.code(),
            report_of(&String::from_utf8_lossy(&out.stdout)),
        )
    };
    let (code, kept) = rollback(false);
    assert_eq!(code, Some(2), "{kept:#}");
    assert_eq!(kept["kept"][0]["turns"], 1, "{kept:#}");
    assert_eq!(
        count(&app.db.pool, "SELECT count(*) FROM campaign_sessions").await,
        1
    );
    let (code, gone) = rollback(true);
    assert_eq!(code, Some(0), "{gone:#}");
    assert_eq!(gone["deleted"][0]["session_id"], session.to_string());
    assert!(
        gone["objects_deleted"].as_u64().is_some_and(|n| n >= 2),
        "{gone:#}"
    );
    assert_eq!(
        count(&app.db.pool, "SELECT count(*) FROM campaign_sessions").await,
        0
    );
    assert!(
        !root
            .join("questboard")
            .join(format!("sessions/{session}"))
            .join("logs")
            .exists()
    );
    let resp = app
        .get(
            "bob",
            &url_path("/api/legacy/old/campaign_1 - One/history.txt"),
        )
        .await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);

    // A root that is not there fails the run (and is not created).
    let gone = root.join("not-there");
    let resp = app
        .op(
            Method::POST,
            "/api/admin/imports/legacy",
            Some(json!({ "source_url": format!("file://{}", gone.display()), "mapping": {} })),
        )
        .await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text);
    let failed_run = resp.body["run_id"].as_str().expect("run id").to_owned();
    let job_id = resp.body["job_id"].as_str().expect("job id").to_owned();
    let job = app
        .wait_job(&job_id, "the failing import", |j| j["status"] == "failed")
        .await;
    assert!(
        job["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("source_not_found")),
        "{job:#}"
    );
    assert!(!gone.exists(), "the missing root was created");
    let view = app
        .op(
            Method::GET,
            &format!("/api/admin/imports/legacy/{failed_run}"),
            None,
        )
        .await;
    assert_eq!(view.body["status"], "failed", "{}", view.text);

    let missing = app
        .op(
            Method::GET,
            &format!("/api/admin/imports/legacy/{}", Uuid::new_v4()),
            None,
        )
        .await;
    missing.assert_error(404, "not_found");
    let _ = std::fs::remove_dir_all(root);
}

/// A folder whose import was cut off (its session made, one file's key
/// and media id chosen, nothing stored) is finished by the next run with
/// what was chosen: one session, one media item, no second object.
#[tokio::test]
async fn an_interrupted_folder_is_finished_with_the_keys_chosen_before() {
    use questboard_core::legacy_import as li;
    use reqwest::Method;
    let root = std::env::temp_dir().join(format!("qb-legacy-resume-{}", Uuid::new_v4()));
    let storage = root.join("questboard").to_string_lossy().into_owned();
    let configure = move |c: &mut questboard::config::Config| c.storage_url = storage.clone();
    let app = TestApp::spawn_with(configure.clone()).await;
    let tree = Tree::Local(root.join("old-app"));
    let folder = "campaign_1 - Cut Off";
    tree.put(&format!("campaigns/old/{folder}/map.png"), &png(500))
        .await;
    tree.put(&format!("campaigns/old/{folder}/history.txt"), b"cut\n")
        .await;
    let mapping = li::parse_mapping(&format!("\"old/{folder}\",alice\n")).expect("mapping");

    // What a worker killed mid-folder leaves behind.
    let mut tx = app.db.pool.begin().await.expect("tx");
    let earlier = li::create_run(
        &mut tx,
        &questboard_core::sources::Allowlist::any(),
        &tree.url(),
        &mapping,
        li::Options::default(),
        false,
        "test",
    )
    .await
    .expect("run");
    tx.commit().await.expect("commit");
    let name = li::session_name(1, "Cut Off").expect("name");
    let campaign = li::begin_campaign(
        &app.db.pool,
        earlier.id,
        &li::NewCampaign {
            env: "old",
            folder,
            number: 1,
            name: &name,
            owners: &mapping[&format!("old/{folder}")],
        },
    )
    .await
    .expect("begin")
    .expect("new campaign");
    let chosen = Uuid::now_v7();
    let key = format!("{}/media/images/{chosen}.png", campaign.storage_prefix);
    let placement = li::place("map.png").expect("placement");
    li::claim_file(
        &app.db.pool,
        campaign.session_id,
        "map.png",
        &placement,
        &format!("{chosen}.png"),
        &key,
        Some(chosen),
    )
    .await
    .expect("claim");

    let resp = app
        .op(
            Method::POST,
            "/api/admin/imports/legacy",
            Some(json!({ "source_url": tree.url(), "mapping": { format!("old/{folder}"): "alice" } })),
        )
        .await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text);
    let job_id = resp.body["job_id"].as_str().expect("job id").to_owned();
    let _worker = app.jobs_worker(configure).await;
    let job = app
        .wait_job(&job_id, "the import", |j| j["status"] == "succeeded")
        .await;
    assert_eq!(job["result"]["already_imported"], 0, "{job:#}");
    assert_eq!(
        job["result"]["imported"][0]["path"],
        format!("old/{folder}"),
        "{job:#}"
    );
    assert_eq!(job["result"]["files"], 2, "{job:#}");
    assert_eq!(
        count(&app.db.pool, "SELECT count(*) FROM campaign_sessions").await,
        1
    );
    let media: Vec<(Uuid, String)> = sqlx::query_as("SELECT id, storage_key FROM campaign_media")
        .fetch_all(&app.db.pool)
        .await
        .expect("media");
    assert_eq!(media, vec![(chosen, key.clone())]);
    let status: String =
        sqlx::query_scalar("SELECT status FROM legacy_campaigns WHERE session_id = $1")
            .bind(campaign.session_id)
            .fetch_one(&app.db.pool)
            .await
            .expect("campaign");
    assert_eq!(status, "imported");
    let images = std::fs::read_dir(
        root.join("questboard")
            .join(&campaign.storage_prefix)
            .join("media/images"),
    )
    .expect("images")
    .count();
    assert_eq!(images, 1, "a second object was stored");
    // The stopped run never wrote the session's manifest; the resumed one did.
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(
            root.join("questboard")
                .join(&campaign.storage_prefix)
                .join(questboard_core::storage::MANIFEST),
        )
        .expect("manifest"),
    )
    .expect("manifest json");
    assert_eq!(manifest["legacy_path"], format!("old/{folder}"));
    let resp = app
        .get(
            "alice",
            &url_path(&format!("/api/legacy/old/{folder}/map.png")),
        )
        .await;
    assert_eq!(resp.status, StatusCode::OK);
    let _ = std::fs::remove_dir_all(root);
}

/// A legacy folder holding links planted to reach outside the tree (a
/// file linked to the system's password file, a directory linked to the
/// system's configuration, a link out of the campaigns root): nothing is
/// read through them, each is reported as skipped with why, the shim
/// serves none of it, and the folder's real files are imported as usual.
#[tokio::test]
async fn links_in_a_legacy_tree_are_reported_never_followed() {
    use reqwest::Method;
    let root = std::env::temp_dir().join(format!("qb-legacy-links-{}", Uuid::new_v4()));
    let storage = root.join("questboard").to_string_lossy().into_owned();
    let configure = move |c: &mut questboard::config::Config| c.storage_url = storage.clone();
    let app = TestApp::spawn_with(configure.clone()).await;
    let tree = Tree::Local(root.join("old-app"));
    let folder = "campaigns/links/campaign_1 - Trap";
    tree.put(&format!("{folder}/history.txt"), b"real\n").await;
    let Tree::Local(base) = &tree else {
        unreachable!()
    };
    // Outside the tree: a secret file and a directory of them.
    let outside = root.join("outside");
    std::fs::create_dir_all(outside.join("etc")).expect("dir");
    std::fs::write(outside.join("passwd"), "root:x:0:0\n").expect("write");
    std::fs::write(outside.join("etc/shadow"), "root:secret\n").expect("write");
    let campaign = base.join(folder);
    std::os::unix::fs::symlink(outside.join("passwd"), campaign.join("passwd.txt")).expect("link");
    std::os::unix::fs::symlink(outside.join("etc"), campaign.join("etcdir")).expect("link");
    // A whole env folder that is a link out of the tree.
    std::os::unix::fs::symlink(outside.join("etc"), base.join("campaigns/elsewhere"))
        .expect("link");
    // And the system's own, as the probe found them.
    std::os::unix::fs::symlink("/etc/passwd", campaign.join("system-passwd.txt")).expect("link");

    let resp = app
        .op(
            Method::POST,
            "/api/admin/imports/legacy",
            Some(json!({
                "source_url": tree.url(),
                "mapping": { "links/campaign_1 - Trap": { "owner": "alice" } },
            })),
        )
        .await;
    assert_eq!(resp.status, StatusCode::ACCEPTED, "{}", resp.text);
    let job_id = resp.body["job_id"].as_str().expect("job id").to_owned();
    let _worker = app.jobs_worker(configure).await;
    let job = app
        .wait_job(&job_id, "the import", |j| j["status"] == "succeeded")
        .await;
    let report = &job["result"];
    assert_eq!(report["outcome"], "completed", "{job:#}");
    let skipped = paths(report, "skipped");
    assert_eq!(
        skipped,
        set(&[
            "elsewhere".into(),
            "links/campaign_1 - Trap/etcdir".into(),
            "links/campaign_1 - Trap/passwd.txt".into(),
            "links/campaign_1 - Trap/system-passwd.txt".into(),
        ]),
        "{report:#}"
    );
    for problem in report["problems"]["skipped"].as_array().expect("skipped") {
        assert!(
            problem["reason"]
                .as_str()
                .is_some_and(|r| r.contains("symbolic link")),
            "{problem}"
        );
    }
    // Only the real file was copied.
    let files: Vec<(String,)> = sqlx::query_as("SELECT legacy_path FROM legacy_files ORDER BY 1")
        .fetch_all(&app.db.pool)
        .await
        .expect("files");
    assert_eq!(files, [("history.txt".to_owned(),)]);
    let stored = walk(&root.join("questboard"));
    assert!(
        stored
            .iter()
            .all(|p| !p.contains("shadow") && !p.contains("passwd")),
        "{stored:#?}"
    );
    // The shim serves the real file and nothing through the links.
    let ok = app
        .get(
            "alice",
            &url_path("/api/legacy/links/campaign_1 - Trap/history.txt"),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    for path in ["etcdir/shadow", "passwd.txt", "system-passwd.txt"] {
        let resp = app
            .get(
                "alice",
                &url_path(&format!("/api/legacy/links/campaign_1 - Trap/{path}")),
            )
            .await;
        assert_eq!(resp.status, StatusCode::NOT_FOUND, "{path}: {}", resp.text);
        assert!(!resp.text.contains("secret") && !resp.text.contains("root:"));
    }
    let _ = std::fs::remove_dir_all(root);
}

/// Every file below `dir`, as paths relative to it (links not followed).
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).into_iter().flatten().flatten() {
            let kind = entry.file_type().expect("type");
            if kind.is_dir() {
                stack.push(entry.path());
            } else {
                out.push(
                    entry
                        .path()
                        .strip_prefix(dir)
                        .expect("below")
                        .display()
                        .to_string(),
                );
            }
        }
    }
    out
}
