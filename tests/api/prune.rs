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

#[tokio::test]
async fn prune_removes_exactly_what_is_past_retention() {
    let dir = std::env::temp_dir().join(format!("qb-prune-{}", Uuid::new_v4()));
    let url = format!("file://{}", dir.display());
    let app = TestApp::spawn_with(|c| c.storage_url = url.clone()).await;
    let pool = app.db.pool.clone();

    // Sessions: one in play (with old events), one idle for 100 days, one
    // archived 400 days ago with turns, jobs, events, members, invites and
    // files, one archived 10 days ago.
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
    let storage = questboard_core::storage::Storage::from_url(&url).expect("storage");
    let doomed_prefix = format!("sessions/{doomed}");
    let kept_prefix = format!("sessions/{kept}");
    for prefix in [&doomed_prefix, &kept_prefix] {
        storage
            .session(prefix)
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
    assert_eq!(count_objects(&dir, &doomed_prefix), 2, "manifest and log");
    // Media: a map of the live session in three versions (the first
    // replaced 40 days ago, the second a day ago), and a map of the doomed
    // session.
    let send = |method: reqwest::Method, path: String| {
        let app = &app;
        async move {
            let resp = app
                .client
                .request(method, app.url(&path))
                .bearer_auth(app.token("alice"))
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
    };
    let map = send(
        reqwest::Method::POST,
        format!("/api/sessions/{live}/assets?kind=map&name=keep.png"),
    )
    .await;
    let map_id = map["media_id"].as_str().expect("id").to_owned();
    for _ in 0..2 {
        send(
            reqwest::Method::PUT,
            format!("/api/sessions/{live}/assets/{map_id}"),
        )
        .await;
    }
    send(
        reqwest::Method::POST,
        format!("/api/sessions/{doomed}/assets?kind=map&name=doomed.png"),
    )
    .await;
    exec(&pool, &format!("UPDATE campaign_media_versions SET replaced_at = now() - interval '40 days' WHERE media_id = '{map_id}' AND version = 1")).await;
    exec(&pool, &format!("UPDATE campaign_media_versions SET replaced_at = now() - interval '1 day' WHERE media_id = '{map_id}' AND version = 2")).await;
    let map_objects = |dir: &std::path::Path| {
        let mut names: Vec<String> =
            std::fs::read_dir(dir.join(format!("sessions/{live}/media/maps")))
                .map(|d| {
                    d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                        .collect()
                })
                .unwrap_or_default();
        names.sort();
        names
    };
    assert_eq!(
        map_objects(&dir),
        [
            format!("{map_id}-v2.png"),
            format!("{map_id}-v3.png"),
            format!("{map_id}.png")
        ]
    );
    for session in [&doomed, &kept] {
        app.delete("alice", &format!("/api/sessions/{session}"))
            .await;
    }
    exec(&pool, &format!("UPDATE campaign_sessions SET updated_at = now() - interval '400 days' WHERE id = '{doomed}'")).await;
    // Its jobs: its turns' (reached through the turn rows) and any other
    // that names it.
    let doomed_jobs = ids(
        &pool,
        &format!(
            "SELECT job_id FROM turns WHERE session_id = '{doomed}'
             UNION SELECT id FROM apalis.jobs WHERE metadata -> 'session_id' = '{doomed}'"
        ),
    )
    .await;
    assert_eq!(doomed_jobs.len(), 2, "its two turns' jobs: {doomed_jobs:?}");
    exec(&pool, &format!("UPDATE campaign_sessions SET updated_at = now() - interval '10 days' WHERE id = '{kept}'")).await;
    exec(&pool, &format!("UPDATE campaign_sessions SET last_active_at = now() - interval '100 days' WHERE id = '{idle}'")).await;

    // Invites of the live session, old and new, in every dead state.
    let invite = |body: Value| {
        let app = &app;
        let live = live.clone();
        async move { app.invite("alice", &live, body).await }
    };
    let (expired_old, _) = invite(json!({})).await;
    let (expired_new, _) = invite(json!({})).await;
    let (revoked_old, _) = invite(json!({})).await;
    let (revoked_new, _) = invite(json!({})).await;
    let (used_old, used_old_token) = invite(json!({})).await;
    let (used_new, used_new_token) = invite(json!({})).await;
    let (alive, _) = invite(json!({})).await;
    for id in [&revoked_old, &revoked_new] {
        app.delete("alice", &format!("/api/sessions/{live}/invites/{id}"))
            .await;
    }
    app.accept("dave", &used_old_token).await;
    app.accept("erin", &used_new_token).await;
    exec(&pool, &format!("UPDATE campaign_session_invites SET expires_at = now() - interval '8 days' WHERE id = '{expired_old}'")).await;
    exec(&pool, &format!("UPDATE campaign_session_invites SET expires_at = now() - interval '1 day' WHERE id = '{expired_new}'")).await;
    exec(&pool, &format!("UPDATE campaign_session_invites SET revoked_at = now() - interval '8 days' WHERE id = '{revoked_old}'")).await;
    exec(&pool, &format!("UPDATE campaign_session_invites SET last_used_at = now() - interval '8 days' WHERE id = '{used_old}'")).await;
    // The live session's first two events (bob and dave joining) are 40 days old.
    exec(&pool, &format!("UPDATE session_events SET at = now() - interval '40 days' WHERE session_id = '{live}' AND seq <= 2")).await;

    // Job rows: finished long ago and lately, and one never finished.
    let done_old = job_row(&pool, 9, "Done", Some(8), false).await;
    let done_new = job_row(&pool, 9, "Done", Some(1), false).await;
    let failed_old = job_row(&pool, 40, "Killed", Some(31), false).await;
    let failed_new = job_row(&pool, 40, "Killed", Some(10), false).await;
    let cancelled_old = job_row(&pool, 40, "Killed", Some(31), true).await;
    let waiting_old = job_row(&pool, 40, "Pending", None, false).await;

    // Leases: expired two days ago (released, and abandoned), lately, live.
    exec(&pool, "INSERT INTO leases (scope, key, holder, token, acquired_at, renewed_at, expires_at) VALUES
        ('test', 'released-old', NULL, nextval('lease_tokens'), now(), now(), now() - interval '2 days'),
        ('test', 'abandoned-old', 'dead', nextval('lease_tokens'), now(), now(), now() - interval '2 days'),
        ('test', 'released-new', NULL, nextval('lease_tokens'), now(), now(), now() - interval '1 hour'),
        ('test', 'live', 'me', nextval('lease_tokens'), now(), now(), now() + interval '1 hour')").await;

    // Client ids of game-state updates: a week old and a day old.
    exec(&pool, &format!("INSERT INTO game_state_requests (session_id, request_id, request_hash, update_id, new_version, created_at) VALUES
        ('{live}', 'old', '\\x00', gen_random_uuid(), 1, now() - interval '8 days'),
        ('{live}', 'new', '\\x00', gen_random_uuid(), 2, now() - interval '1 day')")).await;

    // Proposals held for review: decided long ago, decided lately, and
    // one still waiting for as long.
    exec(&pool, &format!("INSERT INTO state_proposals (id, session_id, turn_id, proposed_for, operations, status, decided_at) VALUES
        ('00000000-0000-7000-8000-000000000001', '{live}', gen_random_uuid(), 'bob', '[]', 'rejected', now() - interval '40 days'),
        ('00000000-0000-7000-8000-000000000002', '{live}', gen_random_uuid(), 'bob', '[]', 'approved', now() - interval '1 day'),
        ('00000000-0000-7000-8000-000000000003', '{live}', gen_random_uuid(), 'bob', '[]', 'pending', NULL)")).await;
    exec(
        &pool,
        "UPDATE state_proposals SET created_at = now() - interval '50 days'",
    )
    .await;

    let prune = app
        .jobs_worker(|c| c.worker_kinds = Some(vec!["prune".into()]))
        .await;

    // A dry run says what would go and changes nothing.
    let before = census(&pool).await;
    let objects_before = count_objects(&dir, "sessions");
    let dry = run_prune(&app, true).await;
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
    let mut after = census(&pool).await;
    after[5] -= 1;
    assert_eq!(after, before, "a dry run changed something");
    assert_eq!(count_objects(&dir, "sessions"), objects_before);

    // The real run.
    let report = run_prune(&app, false).await;
    assert_eq!(report["dry_run"], false);
    assert_eq!(report["invites"], 3, "{report:#}");
    assert_eq!(report["leases"], 2, "{report:#}");
    assert_eq!(report["state_requests"], 1, "{report:#}");
    assert_eq!(report["proposals"], 1, "{report:#}");
    let proposals = ids(&pool, "SELECT id::text FROM state_proposals ORDER BY id").await;
    assert_eq!(
        proposals.len(),
        2,
        "the old decided one went, the new and the waiting one stayed: {proposals:?}"
    );
    assert!(!proposals.contains("00000000-0000-7000-8000-000000000001"));
    assert_eq!(report["media_versions"], 1, "{report:#}");
    assert_eq!(report["sessions_archived"], 1, "{report:#}");
    assert_eq!(report["sessions_deleted"], 1, "{report:#}");
    assert_eq!(report["turns_deleted"], 2, "{report:#}");
    // The doomed session's manifest, log and map, and the old version.
    assert_eq!(report["objects_deleted"], 4, "{report:#}");
    prune.stop().await;

    let invites = ids(&pool, "SELECT id::text FROM campaign_session_invites").await;
    for gone in [&expired_old, &revoked_old, &used_old] {
        assert!(!invites.contains(gone.as_str()), "{gone} should be gone");
    }
    for stays in [&expired_new, &revoked_new, &used_new, &alive] {
        assert!(invites.contains(stays.as_str()), "{stays} should stay");
    }
    let jobs = ids(&pool, "SELECT id FROM apalis.jobs").await;
    for gone in [&done_old, &failed_old, &cancelled_old] {
        assert!(!jobs.contains(gone.as_str()), "job {gone} should be gone");
    }
    for stays in [&done_new, &failed_new, &waiting_old] {
        assert!(jobs.contains(stays.as_str()), "job {stays} should stay");
    }
    assert_eq!(
        map_objects(&dir),
        [format!("{map_id}-v2.png"), format!("{map_id}-v3.png")],
        "the version replaced 40 days ago is gone, the later ones stay"
    );
    let versions = ids(
        &pool,
        &format!("SELECT version::text FROM campaign_media_versions WHERE media_id = '{map_id}'"),
    )
    .await;
    assert_eq!(versions, ["2", "3"].into_iter().map(String::from).collect());
    let current = app
        .get("alice", &format!("/api/sessions/{live}/media/{map_id}"))
        .await;
    assert_eq!(current.body["version"], 3, "{}", current.text);
    let doomed_media: i64 =
        sqlx::query_scalar("SELECT count(*) FROM campaign_media WHERE session_id = $1::uuid")
            .bind(&doomed)
            .fetch_one(&pool)
            .await
            .expect("count");
    assert_eq!(doomed_media, 0, "the deleted session's media rows are gone");
    let requests = ids(&pool, "SELECT request_id FROM game_state_requests").await;
    assert_eq!(requests, ["new".to_owned()].into_iter().collect());
    let leases = ids(&pool, "SELECT key FROM leases WHERE scope = 'test'").await;
    assert_eq!(
        leases,
        ["live", "released-new"]
            .into_iter()
            .map(String::from)
            .collect()
    );

    // The idle session is archived, and its members were told why.
    let session = app.get("alice", &format!("/api/sessions/{idle}")).await;
    assert_eq!(session.body["status"], "archived", "{}", session.text);
    let last = app.events("alice", &idle, 0).await;
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
    ] {
        let left: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {table} = '{doomed}'"
        )))
        .fetch_one(&pool)
        .await
        .expect("count");
        assert_eq!(left, 0, "{table} still has rows of the deleted session");
    }
    let jobs_left = ids(&pool, "SELECT id FROM apalis.jobs").await;
    assert!(
        doomed_jobs.is_disjoint(&jobs_left),
        "the deleted session's jobs are gone"
    );
    assert_eq!(count_objects(&dir, &doomed_prefix), 0, "its files are gone");
    assert_eq!(count_objects(&dir, &kept_prefix), 2);
    app.get("alice", &format!("/api/sessions/{kept}"))
        .await
        .body
        .get("session_id")
        .expect("kept session still there");

    // Events: the live session's two old ones are gone; resuming from
    // before them is a reset, never a silent gap.
    let remaining = app.events("alice", &live, 2).await;
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
    let mut socket = app.ws("bob", &live, Some(1)).await.expect("socket");
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
    let mut socket = app.ws("bob", &live, Some(2)).await.expect("socket");
    let replay = socket
        .collect_until(Duration::from_secs(5), |seen| !seen.is_empty())
        .await;
    assert_eq!(replay[0]["seq"], 3);

    let _ = std::fs::remove_dir_all(&dir);
}
