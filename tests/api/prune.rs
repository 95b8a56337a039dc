//! Retention end to end: a fixture with rows of every category, old and
//! new; a dry run changes nothing and says what would go; a real run
//! removes exactly the old ones (a deleted session with everything it
//! owns, its objects and media in storage too; media versions replaced
//! long ago, objects and rows); clients resuming from pruned events are
//! told to reset.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{TestApp, WsItem};

async fn ids(pool: &PgPool, sql: &str) -> BTreeSet<String> {
    sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_all(pool)
        .await
        .expect("ids")
        .into_iter()
        .collect()
}

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A job row created `created_days` ago, in `status`, finished
/// `done_days` ago (None: unfinished).
async fn job_row(
    pool: &PgPool,
    created_days: i64,
    status: &str,
    done_days: Option<i64>,
    cancelled: bool,
) -> String {
    let created = chrono::Utc::now() - chrono::TimeDelta::days(created_days);
    let id = ulid::Ulid::from_parts(created.timestamp_millis() as u64, rand_low()).to_string();
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at,
                                  done_at, priority, metadata)
         VALUES ($1, 'test.sleepy', '\\x7b7d', $2, 1, 3, $3,
                 CASE WHEN $4::bigint IS NULL THEN NULL ELSE now() - make_interval(days => $4::int) END,
                 0, CASE WHEN $5 THEN hstore('cancelled_at', now()::text) ELSE ''::hstore END)",
    )
    .bind(&id)
    .bind(status)
    .bind(created)
    .bind(done_days)
    .bind(cancelled)
    .execute(pool)
    .await
    .expect("job row");
    id
}

fn rand_low() -> u128 {
    u128::from_le_bytes(*Uuid::new_v4().as_bytes()) >> 48
}

fn count_objects(dir: &std::path::Path, prefix: &str) -> usize {
    let root = dir.join(prefix);
    fn walk(path: &std::path::Path) -> usize {
        match std::fs::read_dir(path) {
            Ok(entries) => entries
                .flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() { walk(&p) } else { 1 }
                })
                .sum(),
            Err(_) => 0,
        }
    }
    walk(&root)
}

async fn run_prune(app: &TestApp, dry_run: bool) -> Value {
    let id = app.start_job("prune", json!({ "dry_run": dry_run })).await;
    let job = app
        .wait_job(&id, "the prune to finish", |j| {
            matches!(j["status"].as_str(), Some("succeeded" | "failed"))
        })
        .await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    job["result"].clone()
}

/// Row counts of everything prune may touch, to compare before and after.
async fn census(pool: &PgPool) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in [
        "campaign_sessions",
        "campaign_session_members",
        "campaign_session_invites",
        "turns",
        "session_events",
        "apalis.jobs",
        "leases",
        "game_state_requests",
        "campaign_media_versions",
        "state_proposals",
    ] {
        counts.push(
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM {table}"
            )))
            .fetch_one(pool)
            .await
            .expect("count"),
        );
    }
    counts.push(
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM campaign_sessions WHERE status = 'archived'",
        )
        .fetch_one(pool)
        .await
        .expect("archived"),
    );
    counts
}

/// Rows of every category, old and new, over four sessions: `live` (in
/// play, with old events, a map in three versions and invites in every
/// dead state), `idle` (idle for 100 days), `doomed` (archived 400 days
/// ago with turns, jobs, events, members, invites, files and a map) and
/// `kept` (archived 10 days ago); job rows, leases, state-update client
/// ids and proposals old and new. Then a worker that serves `prune`.
struct Fixture {
    /// First, so it stops before the app and its database go.
    _prune: crate::helpers::TestWorker,
    app: TestApp,
    dir: std::path::PathBuf,
    pool: PgPool,
    live: String,
    idle: String,
    doomed: String,
    kept: String,
    map_id: String,
    /// The doomed session's jobs.
    doomed_jobs: BTreeSet<String>,
    /// Invites that go (expired, revoked or used 8 days ago) and stay.
    invites_gone: Vec<String>,
    invites_kept: Vec<String>,
    /// Job rows that go (finished past retention) and stay.
    jobs_gone: Vec<String>,
    jobs_kept: Vec<String>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Fixture {
    async fn build() -> Fixture {
        let dir = std::env::temp_dir().join(format!("qb-prune-{}", Uuid::new_v4()));
        let url = format!("file://{}", dir.display());
        let app = TestApp::spawn_with(|c| c.storage_url = url.clone()).await;
        // Failed job rows of every age are part of the fixture.
        app.db.expect_failed_jobs();
        let pool = app.db.pool.clone();
        let live = app.session_with("alice", &["bob"]).await;
        let idle = app.create_session("alice", "Idle").await;
        let doomed = app.session_with("alice", &["carol"]).await;
        let kept = app.create_session("alice", "Archived lately").await;
        let worker = app.worker(|_| {}).await;
        for text in ["one", "two"] {
            app.submit("carol", &doomed, text).await;
        }
        app.wait_finished("alice", &doomed, 2).await;
        worker.stop().await;
        let mut fixture = Fixture {
            _prune: app
                .jobs_worker(|c| c.worker_kinds = Some(vec!["prune".into()]))
                .await,
            app,
            dir,
            pool,
            live,
            idle,
            doomed,
            kept,
            map_id: String::new(),
            doomed_jobs: BTreeSet::new(),
            invites_gone: Vec::new(),
            invites_kept: Vec::new(),
            jobs_gone: Vec::new(),
            jobs_kept: Vec::new(),
        };
        fixture.files(&url).await;
        fixture.media().await;
        fixture.sessions().await;
        fixture.invites().await;
        fixture.rows().await;
        fixture
    }

    /// A log file in the doomed and the lately archived session.
    async fn files(&self, url: &str) {
        let storage = questboard_core::storage::Storage::from_url(url).expect("storage");
        for session in [&self.doomed, &self.kept] {
            storage
                .session(&format!("sessions/{session}"))
                .expect("files")
                .put(
                    questboard_core::storage::Area::Logs,
                    "transcript.json",
                    bytes::Bytes::from_static(b"[]"),
                    "application/json",
                )
                .await
                .expect("put");
        }
        assert_eq!(
            count_objects(&self.dir, &format!("sessions/{}", self.doomed)),
            2,
            "manifest and log"
        );
    }

    /// A map of the live session in three versions (the first replaced 40
    /// days ago, the second a day ago), and a map of the doomed session.
    async fn media(&mut self) {
        let (live, doomed) = (self.live.clone(), self.doomed.clone());
        let map = self
            .upload(
                reqwest::Method::POST,
                format!("/api/sessions/{live}/assets?kind=map&name=keep.png"),
            )
            .await;
        let map_id = map["media_id"].as_str().expect("id").to_owned();
        for _ in 0..2 {
            self.upload(
                reqwest::Method::PUT,
                format!("/api/sessions/{live}/assets/{map_id}"),
            )
            .await;
        }
        self.upload(
            reqwest::Method::POST,
            format!("/api/sessions/{doomed}/assets?kind=map&name=doomed.png"),
        )
        .await;
        exec(&self.pool, &format!("UPDATE campaign_media_versions SET replaced_at = now() - interval '40 days' WHERE media_id = '{map_id}' AND version = 1")).await;
        exec(&self.pool, &format!("UPDATE campaign_media_versions SET replaced_at = now() - interval '1 day' WHERE media_id = '{map_id}' AND version = 2")).await;
        self.map_id = map_id;
        assert_eq!(
            self.map_objects(),
            [
                format!("{}-v2.png", self.map_id),
                format!("{}-v3.png", self.map_id),
                format!("{}.png", self.map_id)
            ]
        );
    }

    async fn upload(&self, method: reqwest::Method, path: String) -> Value {
        let resp = self
            .app
            .client
            .request(method, self.app.url(&path))
            .bearer_auth(self.app.token("alice"))
            .header("content-type", "image/png")
            .body(crate::media::png(500))
            .send()
            .await
            .expect("upload");
        let status = resp.status();
        let body: Value = resp.json().await.expect("json");
        assert!(status.is_success(), "{status} {body}");
        body
    }

    /// The live session's map objects.
    fn map_objects(&self) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(self.dir.join(format!("sessions/{}/media/maps", self.live)))
                .map(|d| {
                    d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                        .collect()
                })
                .unwrap_or_default();
        names.sort();
        names
    }

    /// Archives the doomed (400 days ago) and the kept (10 days ago)
    /// session; the idle one was last active 100 days ago.
    async fn sessions(&mut self) {
        let (pool, doomed, kept, idle) = (&self.pool, &self.doomed, &self.kept, &self.idle);
        for session in [doomed, kept] {
            self.app
                .delete("alice", &format!("/api/sessions/{session}"))
                .await;
        }
        exec(pool, &format!("UPDATE campaign_sessions SET updated_at = now() - interval '400 days' WHERE id = '{doomed}'")).await;
        // Its jobs: its turns' (reached through the turn rows) and any other
        // that names it.
        self.doomed_jobs = ids(
            pool,
            &format!(
                "SELECT job_id FROM turns WHERE session_id = '{doomed}'
                 UNION SELECT id FROM apalis.jobs WHERE metadata -> 'session_id' = '{doomed}'"
            ),
        )
        .await;
        assert_eq!(
            self.doomed_jobs.len(),
            2,
            "its two turns' jobs: {:?}",
            self.doomed_jobs
        );
        exec(pool, &format!("UPDATE campaign_sessions SET updated_at = now() - interval '10 days' WHERE id = '{kept}'")).await;
        exec(pool, &format!("UPDATE campaign_sessions SET last_active_at = now() - interval '100 days' WHERE id = '{idle}'")).await;
    }

    /// Invites of the live session, old and new, in every dead state; its
    /// first two events (bob and dave joining) made 40 days old.
    async fn invites(&mut self) {
        let (app, live, pool) = (&self.app, &self.live, &self.pool);
        let mut invite = Vec::new();
        for _ in 0..7 {
            invite.push(app.invite("alice", live, json!({})).await);
        }
        let [
            expired_old,
            expired_new,
            revoked_old,
            revoked_new,
            used_old,
            used_new,
            alive,
        ] = <[(String, String); 7]>::try_from(invite).expect("seven");
        for (id, _) in [&revoked_old, &revoked_new] {
            app.delete("alice", &format!("/api/sessions/{live}/invites/{id}"))
                .await;
        }
        app.accept("dave", &used_old.1).await;
        app.accept("erin", &used_new.1).await;
        exec(pool, &format!("UPDATE campaign_session_invites SET expires_at = now() - interval '8 days' WHERE id = '{}'", expired_old.0)).await;
        exec(pool, &format!("UPDATE campaign_session_invites SET expires_at = now() - interval '1 day' WHERE id = '{}'", expired_new.0)).await;
        exec(pool, &format!("UPDATE campaign_session_invites SET revoked_at = now() - interval '8 days' WHERE id = '{}'", revoked_old.0)).await;
        exec(pool, &format!("UPDATE campaign_session_invites SET last_used_at = now() - interval '8 days' WHERE id = '{}'", used_old.0)).await;
        exec(pool, &format!("UPDATE session_events SET at = now() - interval '40 days' WHERE session_id = '{live}' AND seq <= 2")).await;
        self.invites_gone = vec![expired_old.0, revoked_old.0, used_old.0];
        self.invites_kept = vec![expired_new.0, revoked_new.0, used_new.0, alive.0];
    }

    /// Job rows finished long ago and lately (and one never finished),
    /// leases, state-update client ids and proposals.
    async fn rows(&mut self) {
        let (pool, live) = (&self.pool, &self.live);
        self.jobs_gone = vec![
            job_row(pool, 9, "Done", Some(8), false).await,
            job_row(pool, 40, "Killed", Some(31), false).await,
            job_row(pool, 40, "Killed", Some(31), true).await,
        ];
        self.jobs_kept = vec![
            job_row(pool, 9, "Done", Some(1), false).await,
            job_row(pool, 40, "Killed", Some(10), false).await,
            job_row(pool, 40, "Pending", None, false).await,
        ];
        // Leases: expired two days ago (released, and abandoned), lately, live.
        exec(pool, "INSERT INTO leases (scope, key, holder, token, acquired_at, renewed_at, expires_at) VALUES
            ('test', 'released-old', NULL, nextval('lease_tokens'), now(), now(), now() - interval '2 days'),
            ('test', 'abandoned-old', 'dead', nextval('lease_tokens'), now(), now(), now() - interval '2 days'),
            ('test', 'released-new', NULL, nextval('lease_tokens'), now(), now(), now() - interval '1 hour'),
            ('test', 'live', 'me', nextval('lease_tokens'), now(), now(), now() + interval '1 hour')").await;
        // Client ids of game-state updates: a week old and a day old.
        exec(pool, &format!("INSERT INTO game_state_requests (session_id, request_id, request_hash, update_id, new_version, created_at) VALUES
            ('{live}', 'old', '\\x00', gen_random_uuid(), 1, now() - interval '8 days'),
            ('{live}', 'new', '\\x00', gen_random_uuid(), 2, now() - interval '1 day')")).await;
        // Proposals held for review: decided long ago, decided lately, and
        // one still waiting for as long.
        exec(pool, &format!("INSERT INTO state_proposals (id, session_id, turn_id, proposed_for, operations, status, decided_at) VALUES
            ('00000000-0000-7000-8000-000000000001', '{live}', gen_random_uuid(), 'bob', '[]', 'rejected', now() - interval '40 days'),
            ('00000000-0000-7000-8000-000000000002', '{live}', gen_random_uuid(), 'bob', '[]', 'approved', now() - interval '1 day'),
            ('00000000-0000-7000-8000-000000000003', '{live}', gen_random_uuid(), 'bob', '[]', 'pending', NULL)")).await;
        exec(
            pool,
            "UPDATE state_proposals SET created_at = now() - interval '50 days'",
        )
        .await;
        // The operators' audit log: two entries past a year, one of last week.
        exec(pool, "INSERT INTO operator_audit (id, at, actor, action, target, outcome) VALUES
            ('00000000-0000-7000-8000-0000000000a1', now() - interval '400 days', 'ops', 'queue.pause', 'turn', 'ok'),
            ('00000000-0000-7000-8000-0000000000a2', now() - interval '370 days', 'ops', 'queue.resume', 'turn', 'ok'),
            ('00000000-0000-7000-8000-0000000000a3', now() - interval '7 days', 'ops', 'job.retry', 'x', 'refused')").await;
    }

    async fn prune(&self, dry_run: bool) -> Value {
        run_prune(&self.app, dry_run).await
    }
}

#[tokio::test]
async fn a_dry_run_says_what_would_go_and_changes_nothing() {
    let f = Fixture::build().await;
    let before = census(&f.pool).await;
    let objects_before = count_objects(&f.dir, "sessions");
    let dry = f.prune(true).await;
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["invites"], 3, "{dry:#}");
    assert_eq!(dry["jobs"], 3, "{dry:#}");
    assert_eq!(dry["events"], 2, "{dry:#}");
    assert_eq!(dry["leases"], 2, "{dry:#}");
    assert_eq!(dry["state_requests"], 1, "{dry:#}");
    assert_eq!(dry["proposals"], 1, "{dry:#}");
    assert_eq!(dry["media_versions"], 1, "{dry:#}");
    assert_eq!(dry["media_bytes"], 500, "{dry:#}");
    assert_eq!(dry["sessions_archived"], 1, "{dry:#}");
    assert_eq!(dry["sessions_deleted"], 1, "{dry:#}");
    // (The dry run's own job row is the one difference.)
    let mut after = census(&f.pool).await;
    after[5] -= 1;
    assert_eq!(after, before, "a dry run changed something");
    assert_eq!(count_objects(&f.dir, "sessions"), objects_before);
}

#[tokio::test]
async fn rows_past_retention_go_and_newer_ones_stay() {
    let f = Fixture::build().await;
    let report = f.prune(false).await;
    assert_eq!(report["dry_run"], false);
    assert_eq!(report["invites"], 3, "{report:#}");
    assert_eq!(report["leases"], 2, "{report:#}");
    assert_eq!(report["state_requests"], 1, "{report:#}");
    assert_eq!(report["proposals"], 1, "{report:#}");
    assert_eq!(report["audit"], 2, "{report:#}");
    let audit = ids(&f.pool, "SELECT id::text FROM operator_audit").await;
    assert!(
        audit.contains("00000000-0000-7000-8000-0000000000a3"),
        "{audit:?}"
    );
    assert!(!audit.contains("00000000-0000-7000-8000-0000000000a1"));
    assert!(!audit.contains("00000000-0000-7000-8000-0000000000a2"));
    let proposals = ids(&f.pool, "SELECT id::text FROM state_proposals ORDER BY id").await;
    assert_eq!(
        proposals.len(),
        2,
        "the old decided one went, the new and the waiting one stayed: {proposals:?}"
    );
    assert!(!proposals.contains("00000000-0000-7000-8000-000000000001"));
    let invites = ids(&f.pool, "SELECT id::text FROM campaign_session_invites").await;
    for gone in &f.invites_gone {
        assert!(!invites.contains(gone.as_str()), "{gone} should be gone");
    }
    for stays in &f.invites_kept {
        assert!(invites.contains(stays.as_str()), "{stays} should stay");
    }
    let jobs = ids(&f.pool, "SELECT id FROM apalis.jobs").await;
    for gone in &f.jobs_gone {
        assert!(!jobs.contains(gone.as_str()), "job {gone} should be gone");
    }
    for stays in &f.jobs_kept {
        assert!(jobs.contains(stays.as_str()), "job {stays} should stay");
    }
    let requests = ids(&f.pool, "SELECT request_id FROM game_state_requests").await;
    assert_eq!(requests, ["new".to_owned()].into_iter().collect());
    let leases = ids(&f.pool, "SELECT key FROM leases WHERE scope = 'test'").await;
    assert_eq!(
        leases,
        ["live", "released-new"]
            .into_iter()
            .map(String::from)
            .collect()
    );
}

#[tokio::test]
async fn media_versions_replaced_long_ago_go_with_their_objects() {
    let f = Fixture::build().await;
    let report = f.prune(false).await;
    assert_eq!(report["media_versions"], 1, "{report:#}");
    let map_id = &f.map_id;
    assert_eq!(
        f.map_objects(),
        [format!("{map_id}-v2.png"), format!("{map_id}-v3.png")],
        "the version replaced 40 days ago is gone, the later ones stay"
    );
    let versions = ids(
        &f.pool,
        &format!("SELECT version::text FROM campaign_media_versions WHERE media_id = '{map_id}'"),
    )
    .await;
    assert_eq!(versions, ["2", "3"].into_iter().map(String::from).collect());
    let current = f
        .app
        .get("alice", &format!("/api/sessions/{}/media/{map_id}", f.live))
        .await;
    assert_eq!(current.body["version"], 3, "{}", current.text);
}

#[tokio::test]
async fn idle_sessions_are_archived_and_long_archived_ones_deleted_with_all_they_own() {
    let f = Fixture::build().await;
    let (app, pool, doomed) = (&f.app, &f.pool, &f.doomed);
    let report = f.prune(false).await;
    assert_eq!(report["sessions_archived"], 1, "{report:#}");
    assert_eq!(report["sessions_deleted"], 1, "{report:#}");
    assert_eq!(report["turns_deleted"], 2, "{report:#}");
    // The doomed session's manifest, log and map, and the old version.
    assert_eq!(report["objects_deleted"], 4, "{report:#}");

    // The idle session is archived, and its members were told why.
    let session = app.get("alice", &format!("/api/sessions/{}", f.idle)).await;
    assert_eq!(session.body["status"], "archived", "{}", session.text);
    let last = app.events("alice", &f.idle, 0).await;
    let archived = last.last().expect("event");
    assert_eq!(archived["type"], "session.archived");
    assert_eq!(archived["data"]["reason"], "idle");

    // The doomed session is gone with everything it owned; the lately
    // archived one and its files stay.
    for table in [
        "campaign_sessions WHERE id",
        "campaign_session_members WHERE session_id",
        "campaign_session_invites WHERE session_id",
        "turns WHERE session_id",
        "session_events WHERE session_id",
        "session_queue WHERE session_id",
        "event_outbox WHERE session_id",
        "campaign_media WHERE session_id",
    ] {
        let left: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} = '{doomed}'"
        )))
        .fetch_one(pool)
        .await
        .expect("count");
        assert_eq!(left, 0, "{table} still has rows of the deleted session");
    }
    let jobs_left = ids(pool, "SELECT id FROM apalis.jobs").await;
    assert!(
        f.doomed_jobs.is_disjoint(&jobs_left),
        "the deleted session's jobs are gone"
    );
    assert_eq!(
        count_objects(&f.dir, &format!("sessions/{doomed}")),
        0,
        "its files are gone"
    );
    assert_eq!(count_objects(&f.dir, &format!("sessions/{}", f.kept)), 2);
    app.get("alice", &format!("/api/sessions/{}", f.kept))
        .await
        .body
        .get("session_id")
        .expect("kept session still there");
}

#[tokio::test]
async fn clients_resuming_from_pruned_events_are_told_to_reset() {
    let f = Fixture::build().await;
    let (app, live) = (&f.app, &f.live);
    f.prune(false).await;
    // The live session's two old events are gone; resuming from before
    // them is a reset, never a silent gap.
    let remaining = app.events("alice", live, 2).await;
    assert!(
        remaining.first().is_some_and(|e| e["seq"] == 3),
        "{remaining:#?}"
    );
    let resp = app
        .get("alice", &format!("/api/sessions/{live}/events?after_seq=0"))
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text);
    assert_eq!(resp.body["events"], json!([]));
    assert_eq!(resp.body["reset"]["reason"], "events_pruned");
    assert_eq!(resp.body["reset"]["pruned_through"], 2);
    let newest = resp.body["reset"]["seq"].as_i64().expect("seq");
    assert_eq!(
        newest,
        remaining
            .last()
            .and_then(|e| e["seq"].as_i64())
            .expect("last")
    );
    let mut socket = app.ws("bob", live, Some(1)).await.expect("socket");
    match socket.next(Duration::from_secs(5)).await {
        Some(WsItem::Json(reset)) => {
            assert_eq!(reset["type"], "reset", "{reset}");
            assert_eq!(reset["seq"], newest);
            assert_eq!(reset["pruned_through"], 2);
        }
        other => panic!("expected a reset, got {other:?}"),
    }
    // ...then it goes on with live events after that seq.
    app.patch(
        "alice",
        &format!("/api/sessions/{live}"),
        json!({ "name": "Renamed" }),
    )
    .await;
    let next = socket
        .collect_until(Duration::from_secs(5), |seen| !seen.is_empty())
        .await;
    assert_eq!(next[0]["seq"], newest + 1);
    assert_eq!(next[0]["type"], "session.updated");
    // A resume from after the pruned ones is not a reset.
    let mut socket = app.ws("bob", live, Some(2)).await.expect("socket");
    let replay = socket
        .collect_until(Duration::from_secs(5), |seen| !seen.is_empty())
        .await;
    assert_eq!(replay[0]["seq"], 3);
}

/// Old events spread thin over many sessions go in a few steps, not one
/// step per session (each step pauses and writes progress): 40 sessions
/// with 3 old events each are pruned in at most 3 steps, every old event
/// goes, and the newer events of the same sessions stay.
#[tokio::test]
async fn events_of_many_sessions_are_pruned_in_few_steps() {
    let app = TestApp::spawn().await;
    let pool = &app.db.pool;
    let mut sessions = Vec::new();
    for n in 0..40 {
        sessions.push(app.create_session("alice", &format!("Thin {n}")).await);
    }
    let ids: Vec<uuid::Uuid> = sessions.iter().map(|s| s.parse().expect("uuid")).collect();
    let kept_before: i64 = sqlx::query_scalar("SELECT count(*) FROM session_events")
        .fetch_one(pool)
        .await
        .expect("count");
    // Three events of each session from 40 days ago, before its own.
    for sql in [
        "UPDATE session_events SET seq = seq + 1000000 WHERE session_id = ANY($1)",
        "UPDATE session_events SET seq = seq - 1000000 + 3 WHERE session_id = ANY($1)",
        "INSERT INTO session_events (session_id, seq, type, at, data)
         SELECT s, g, 'session.updated', now() - interval '40 days', '{}'
         FROM unnest($1::uuid[]) AS s, generate_series(1, 3) AS g",
        "UPDATE campaign_sessions SET next_event_seq = next_event_seq + 3 WHERE id = ANY($1)",
    ] {
        sqlx::query(sql).bind(&ids).execute(pool).await.expect(sql);
    }
    let _worker = app
        .jobs_worker(|c| c.worker_kinds = Some(vec!["prune".into()]))
        .await;
    let id = app.start_job("prune", json!({ "only": ["events"] })).await;
    let job = app
        .wait_job(&id, "the prune to finish", |j| {
            matches!(j["status"].as_str(), Some("succeeded" | "failed"))
        })
        .await;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let report = &job["result"];
    assert_eq!(report["events"], 120, "{report:#}");
    let steps = report["statements"].as_u64().expect("statements");
    assert!(steps <= 3, "{steps} steps for 40 thin sessions: {report:#}");
    let (old, kept): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE at < now() - interval '30 days'), count(*)
         FROM session_events",
    )
    .fetch_one(pool)
    .await
    .expect("count");
    assert_eq!((old, kept), (0, kept_before));
    let pruned: Vec<i64> = sqlx::query_scalar(
        "SELECT events_pruned_through FROM campaign_sessions WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await
    .expect("marks");
    assert!(pruned.iter().all(|&p| p == 3), "{pruned:?}");
}
