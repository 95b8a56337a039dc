//! The invite lifecycle: create, accept, replay, expiry, revocation,
//! max_uses, the single-use race, and tokens never stored in clear.

use std::time::Duration;

use serde_json::json;

use crate::helpers::TestApp;

#[tokio::test]
async fn an_invite_admits_once_and_replays_are_gone() {
    let app = TestApp::spawn().await;
    let session = app.create_session("alice", "Keep").await;
    let resp = app
        .post(
            "alice",
            &format!("/api/sessions/{session}/invites"),
            json!({}),
        )
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text);
    assert_eq!(resp.body["role"], "player");
    assert_eq!(resp.body["max_uses"], 1);
    let token = resp.body["token"].as_str().expect("token").to_owned();
    assert!(
        token.starts_with("qbi_") && token.len() >= 4 + 43,
        "token: {token}"
    );
    let expires: chrono::DateTime<chrono::Utc> = resp.body["expires_at"]
        .as_str()
        .expect("expires_at")
        .parse()
        .expect("timestamp");
    let days = (expires - chrono::Utc::now()).num_hours() as f64 / 24.0;
    assert!(
        (6.9..=7.0).contains(&days),
        "default lifetime is 7 days, got {days}"
    );

    let accepted = app.accept("bob", &token).await;
    assert_eq!(accepted.status, 200, "{}", accepted.text);
    assert_eq!(
        accepted.body,
        json!({ "session_id": session, "role": "player", "already_member": false })
    );
    assert_eq!(
        app.get("bob", &format!("/api/sessions/{session}"))
            .await
            .status,
        200
    );

    // Bob accepting again is harmless; Carol replaying the used token is refused.
    let again = app.accept("bob", &token).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["already_member"], true);
    app.accept("carol", &token)
        .await
        .assert_error(410, "invite_used_up");
    app.get("carol", &format!("/api/sessions/{session}"))
        .await
        .assert_error(404, "not_found");

    // The owner accepting their own invite keeps the owner role.
    let (_, other) = app.invite("alice", &session, json!({ "role": "gm" })).await;
    let own = app.accept("alice", &other).await;
    assert_eq!(own.body["role"], "owner");
    assert_eq!(own.body["already_member"], true);

    // The list shows the uses and never a token.
    let list = app
        .get("alice", &format!("/api/sessions/{session}/invites"))
        .await;
    assert_eq!(list.status, 200, "{}", list.text);
    let invites = list.body["invites"].as_array().expect("invites");
    assert_eq!(invites.len(), 2);
    assert_eq!(invites[1]["uses"], 1);
    assert_eq!(invites[0]["uses"], 0);
    assert!(!list.text.contains(&token) && !list.text.contains("token"));
}

#[tokio::test]
async fn unknown_tokens_are_404() {
    let app = TestApp::spawn().await;
    for token in [
        "",
        "qbi_",
        "qbi_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "../../etc/passwd",
        &"x".repeat(10_000),
    ] {
        app.accept("bob", token)
            .await
            .assert_error(404, "not_found");
    }
    app.post("bob", "/api/invites/accept", json!({}))
        .await
        .assert_error(422, "validation_failed");
}

#[tokio::test]
async fn expired_invites_are_gone() {
    let app = TestApp::spawn().await;
    let session = app.create_session("alice", "Keep").await;
    let (_, token) = app
        .invite("alice", &session, json!({ "ttl_seconds": 1 }))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.accept("bob", &token)
        .await
        .assert_error(410, "invite_expired");
    app.get("bob", &format!("/api/sessions/{session}"))
        .await
        .assert_error(404, "not_found");
}

#[tokio::test]
async fn revoked_invites_are_gone() {
    let app = TestApp::spawn().await;
    let session = app.create_session("alice", "Keep").await;
    let (invite_id, token) = app
        .invite("alice", &session, json!({ "max_uses": 5 }))
        .await;
    let path = format!("/api/sessions/{session}/invites/{invite_id}");
    assert_eq!(app.delete("alice", &path).await.status, 204);
    assert_eq!(
        app.delete("alice", &path).await.status,
        204,
        "revoking twice is harmless"
    );
    app.accept("bob", &token)
        .await
        .assert_error(410, "invite_revoked");
    let unknown = uuid::Uuid::now_v7();
    app.delete(
        "alice",
        &format!("/api/sessions/{session}/invites/{unknown}"),
    )
    .await
    .assert_error(404, "not_found");
    // An invite id from another session cannot be revoked through this one.
    let other = app.create_session("alice", "Other").await;
    let (other_invite, other_token) = app.invite("alice", &other, json!({})).await;
    app.delete(
        "alice",
        &format!("/api/sessions/{session}/invites/{other_invite}"),
    )
    .await
    .assert_error(404, "not_found");
    assert_eq!(app.accept("bob", &other_token).await.status, 200);
}

#[tokio::test]
async fn max_uses_admits_that_many_with_the_granted_role() {
    let app = TestApp::spawn().await;
    let session = app.create_session("alice", "Keep").await;
    let (_, token) = app
        .invite("alice", &session, json!({ "max_uses": 3, "role": "gm" }))
        .await;
    for user in ["bob", "carol", "dave"] {
        let resp = app.accept(user, &token).await;
        assert_eq!(resp.status, 200, "{}", resp.text);
        assert_eq!(resp.body["role"], "gm");
    }
    app.accept("erin", &token)
        .await
        .assert_error(410, "invite_used_up");
    let got = app.get("alice", &format!("/api/sessions/{session}")).await;
    assert_eq!(got.body["members"].as_array().map(Vec::len), Some(4));
}

#[tokio::test]
async fn invite_options_are_validated() {
    let app = TestApp::spawn().await;
    let session = app.create_session("alice", "Keep").await;
    let path = format!("/api/sessions/{session}/invites");
    for body in [
        json!({ "role": "owner" }),
        json!({ "role": "admin" }),
        json!({ "ttl_seconds": 0 }),
        json!({ "ttl_seconds": -5 }),
        json!({ "ttl_seconds": 9_000_000_000_i64 }),
        json!({ "ttl_seconds": i64::MAX }),
        json!({ "max_uses": 0 }),
        json!({ "max_uses": 1_000_001 }),
        json!({ "max_uses": "many" }),
        json!({ "max_uses": 2.5 }),
        json!({ "ttl_seconds": 82.5 }),
        json!({ "ttl_seconds": 1e300 }),
        json!({ "uses": 0 }),
    ] {
        app.post("alice", &path, body)
            .await
            .assert_error(422, "validation_failed");
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM campaign_session_invites")
        .fetch_one(&app.db.pool)
        .await
        .expect("count");
    assert_eq!(count, 0);
    // Whole numbers written as JSON floats are the integers the
    // description's `integer` admits.
    let resp = app
        .post(
            "alice",
            &path,
            json!({ "ttl_seconds": 82.0, "max_uses": 2.0 }),
        )
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text);
    assert_eq!(resp.body["max_uses"], 2, "{}", resp.text);
}

#[tokio::test]
async fn archived_sessions_take_no_new_members() {
    let app = TestApp::spawn().await;
    let session = app.create_session("alice", "Keep").await;
    let (_, token) = app.invite("alice", &session, json!({})).await;
    assert_eq!(
        app.delete("alice", &format!("/api/sessions/{session}"))
            .await
            .status,
        200
    );
    app.accept("bob", &token)
        .await
        .assert_error(410, "session_archived");
    app.post(
        "alice",
        &format!("/api/sessions/{session}/invites"),
        json!({}),
    )
    .await
    .assert_error(409, "conflict");
}

#[tokio::test]
async fn a_single_use_invite_accepted_at_once_by_eight_users_admits_exactly_one() {
    let app = TestApp::spawn().await;
    for round in 0..5 {
        let session = app.create_session("alice", &format!("Race {round}")).await;
        let (_, token) = app.invite("alice", &session, json!({})).await;
        let users: Vec<String> = (0..8).map(|i| format!("racer-{round}-{i}")).collect();
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(users.len()));
        let results = futures::future::join_all(users.iter().map(|user| {
            let barrier = barrier.clone();
            let token = token.clone();
            let app = &app;
            async move {
                barrier.wait().await;
                app.accept(user, &token).await
            }
        }))
        .await;
        let ok = results.iter().filter(|r| r.status == 200).count();
        let gone = results
            .iter()
            .filter(|r| r.status == 410 && r.code() == "invite_used_up")
            .count();
        assert_eq!(
            (ok, gone),
            (1, 7),
            "round {round}: {:?}",
            results.iter().map(|r| r.status).collect::<Vec<_>>()
        );
        let (members, uses): (i64, i32) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM campaign_session_members WHERE session_id = $1::uuid),
                    (SELECT uses FROM campaign_session_invites WHERE session_id = $1::uuid)",
        )
        .bind(&session)
        .fetch_one(&app.db.pool)
        .await
        .expect("counts");
        assert_eq!((members, uses), (2, 1), "round {round}");
    }
}

#[tokio::test]
async fn invite_tokens_appear_nowhere_in_the_database_in_clear() {
    let app = TestApp::spawn().await;
    let session = app.create_session("alice", "Keep").await;
    let mut tokens = Vec::new();
    for body in [json!({}), json!({ "max_uses": 3 }), json!({ "role": "gm" })] {
        tokens.push(app.invite("alice", &session, body).await.1);
    }
    assert_eq!(app.accept("bob", &tokens[1]).await.status, 200);

    // Every row of every table, as text.
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name)
         FROM information_schema.tables
         WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE'",
    )
    .fetch_all(&app.db.pool)
    .await
    .expect("tables");
    assert!(
        tables
            .iter()
            .any(|t| t.ends_with("campaign_session_invites"))
    );
    let mut dump = String::new();
    for table in tables {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT row_to_json(t)::text FROM {table} t"
        )))
        .fetch_all(&app.db.pool)
        .await
        .expect("rows");
        dump.extend(rows);
    }
    assert!(
        dump.contains("token_hash"),
        "the dump should include the invites"
    );
    for token in &tokens {
        let secret = token.trim_start_matches("qbi_");
        assert!(!dump.contains(secret), "token stored in clear");
    }
}

/// The invite list is paged, and a session holds at most 100 live
/// invites by default (`session_max_invites`; the probe listed 3,000 in
/// one 651 KB body).
#[tokio::test]
async fn invites_are_paged_and_capped() {
    let app = TestApp::spawn().await;
    let session = app.create_session("alice", "Popular").await;
    let mut created = Vec::new();
    for _ in 0..100 {
        let (id, _) = app.invite("alice", &session, json!({})).await;
        created.push(id);
    }
    let path = format!("/api/sessions/{session}/invites");
    let refused = app.post("alice", &path, json!({})).await;
    refused.assert_error(429, "limit_reached");
    assert_eq!(refused.body["error"]["quota"], "session_max_invites");
    // Until the first of them expires (7 days).
    let wait: u64 = refused.header("retry-after").parse().expect("Retry-After");
    assert!((7 * 86_400 - 120..=7 * 86_400).contains(&wait), "{wait}");
    // Pages of 40, newest first, every invite once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &cursor {
            Some(c) => format!("{path}?limit=40&cursor={c}"),
            None => format!("{path}?limit=40"),
        };
        let page = app.get("alice", &query).await;
        assert_eq!(page.status, 200, "{}", page.text);
        let invites = page.body["invites"].as_array().expect("invites");
        assert!(invites.len() <= 40);
        seen.extend(
            invites
                .iter()
                .map(|i| i["invite_id"].as_str().expect("id").to_owned()),
        );
        pages += 1;
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let mut newest_first = created.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);
    app.get("alice", &format!("{path}?limit=0"))
        .await
        .assert_error(400, "invalid_query");
    // A revoked one frees a place.
    let resp = app.delete("alice", &format!("{path}/{}", created[0])).await;
    assert_eq!(resp.status, 204);
    app.invite("alice", &session, json!({})).await;
}
