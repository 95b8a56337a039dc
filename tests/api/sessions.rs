//! Campaign sessions: creation, listing with cursors, reading, renaming,
//! archiving, member removal, and 404 for non-members everywhere.

use std::collections::HashSet;

use reqwest::Method;
use serde_json::json;

use crate::helpers::TestApp;

#[tokio::test]
async fn owner_creates_reads_renames_and_archives_a_session() {
    let app = TestApp::spawn().await;
    let resp = app
        .post(
            "alice",
            "/api/sessions",
            json!({ "name": "  The Sunken Keep  " }),
        )
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text);
    let s = &resp.body;
    assert_eq!(s["name"], "The Sunken Keep");
    assert_eq!(s["owner_user_id"], "alice");
    assert_eq!(s["role"], "owner");
    assert_eq!(s["status"], "active");
    for field in ["created_at", "updated_at", "last_active_at"] {
        assert!(s[field].is_string(), "{field} missing: {s}");
    }
    let id = s["session_id"].as_str().expect("id");

    // Stored with its prefix, and the owner is a member with role owner.
    let (prefix, owner_role): (String, String) = sqlx::query_as(
        "SELECT s.storage_prefix, m.role FROM campaign_sessions s
         JOIN campaign_session_members m ON m.session_id = s.id AND m.user_id = s.owner_user_id
         WHERE s.id = $1::uuid",
    )
    .bind(id)
    .fetch_one(&app.db.pool)
    .await
    .expect("row");
    assert_eq!(prefix, format!("sessions/{id}"));
    assert_eq!(owner_role, "owner");

    let got = app.get("alice", &format!("/api/sessions/{id}")).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(
        got.body["members"],
        json!([{
            "user_id": "alice", "role": "owner", "joined_at": got.body["members"][0]["joined_at"]
        }])
    );

    let renamed = app
        .patch(
            "alice",
            &format!("/api/sessions/{id}"),
            json!({ "name": "The Risen Keep" }),
        )
        .await;
    assert_eq!(renamed.status, 200, "{}", renamed.text);
    assert_eq!(renamed.body["name"], "The Risen Keep");
    assert!(renamed.body["updated_at"].as_str() > s["updated_at"].as_str());

    let archived = app.delete("alice", &format!("/api/sessions/{id}")).await;
    assert_eq!(archived.status, 200, "{}", archived.text);
    assert_eq!(archived.body["status"], "archived");
    // Archiving again is harmless; renaming an archived session conflicts.
    assert_eq!(
        app.delete("alice", &format!("/api/sessions/{id}"))
            .await
            .status,
        200
    );
    app.patch(
        "alice",
        &format!("/api/sessions/{id}"),
        json!({ "name": "x" }),
    )
    .await
    .assert_error(409, "conflict");
    let got = app.get("alice", &format!("/api/sessions/{id}")).await;
    assert_eq!(got.body["status"], "archived");
    assert_eq!(got.body["name"], "The Risen Keep");
}

#[tokio::test]
async fn the_list_pages_through_my_sessions_most_recent_first() {
    let app = TestApp::spawn().await;
    let mut mine = Vec::new();
    for i in 0..5 {
        mine.push(app.create_session("alice", &format!("Campaign {i}")).await);
    }
    let _theirs = app.create_session("bob", "Bob's campaign").await;
    // Alice joins one of Bob's sessions: it is hers to see now, and it is the
    // most recently active.
    let joined = app.session_with("bob", &["alice"]).await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/sessions?limit=2&cursor={c}"),
            None => "/api/sessions?limit=2".to_owned(),
        };
        let page = app.get("alice", &path).await;
        assert_eq!(page.status, 200, "{}", page.text);
        let items = page.body["sessions"].as_array().expect("sessions");
        assert!(items.len() <= 2);
        seen.extend(
            items
                .iter()
                .map(|s| s["session_id"].as_str().expect("id").to_owned()),
        );
        pages += 1;
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 6);
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        6,
        "duplicates across pages"
    );
    assert_eq!(seen[0], joined);
    let expected_tail: Vec<String> = mine.iter().rev().cloned().collect();
    assert_eq!(&seen[1..], &expected_tail[..]);

    // Bob sees only his two.
    let bobs = app.get("bob", "/api/sessions").await;
    assert_eq!(bobs.body["sessions"].as_array().map(Vec::len), Some(2));

    for bad in [
        "limit=0",
        "limit=101",
        "limit=abc",
        "cursor=garbage",
        "limit=-1",
    ] {
        app.get("alice", &format!("/api/sessions?{bad}"))
            .await
            .assert_error(400, "invalid_query");
    }
}

#[tokio::test]
async fn non_members_get_404_on_every_session_route() {
    let app = TestApp::spawn().await;
    let session = app.session_with("alice", &["bob"]).await;
    let (invite_id, _) = app.invite("alice", &session, json!({})).await;
    let missing = uuid::Uuid::now_v7().to_string();
    for id in [session.as_str(), missing.as_str()] {
        let routes: Vec<(Method, String, Option<serde_json::Value>)> = vec![
            (Method::GET, format!("/api/sessions/{id}"), None),
            (
                Method::PATCH,
                format!("/api/sessions/{id}"),
                Some(json!({ "name": "mine now" })),
            ),
            (Method::DELETE, format!("/api/sessions/{id}"), None),
            (
                Method::POST,
                format!("/api/sessions/{id}/invites"),
                Some(json!({})),
            ),
            (Method::GET, format!("/api/sessions/{id}/invites"), None),
            (
                Method::DELETE,
                format!("/api/sessions/{id}/invites/{invite_id}"),
                None,
            ),
            (
                Method::DELETE,
                format!("/api/sessions/{id}/members/bob"),
                None,
            ),
            (
                Method::DELETE,
                format!("/api/sessions/{id}/members/mallory"),
                None,
            ),
            (Method::GET, format!("/api/sessions/{id}/state"), None),
            (
                Method::POST,
                format!("/api/sessions/{id}/state/updates"),
                Some(json!({ "version": 0, "operations": [
                    { "path": "items", "operation": "push", "value": "loot" }
                ] })),
            ),
        ];
        for (method, path, body) in routes {
            let resp = app.call(method.clone(), &path, Some("mallory"), body).await;
            resp.assert_error(404, "not_found");
            assert!(
                !resp.text.contains("alice") && !resp.text.contains("Shared"),
                "a 404 must not leak session details: {}",
                resp.text
            );
        }
    }
    // Nothing changed.
    let got = app.get("alice", &format!("/api/sessions/{session}")).await;
    assert_eq!(got.body["name"], "Shared");
    assert_eq!(got.body["status"], "active");
    assert_eq!(got.body["members"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn members_cannot_do_what_only_owners_may() {
    let app = TestApp::spawn().await;
    let session = app.session_with("alice", &["bob", "carol"]).await;
    let base = format!("/api/sessions/{session}");
    // Bob can read.
    let got = app.get("bob", &base).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body["role"], "player");
    // But not rename, archive, invite, list or revoke invites, or remove others.
    app.patch("bob", &base, json!({ "name": "Bob's" }))
        .await
        .assert_error(403, "forbidden");
    app.delete("bob", &base)
        .await
        .assert_error(403, "forbidden");
    app.post("bob", &format!("{base}/invites"), json!({}))
        .await
        .assert_error(403, "forbidden");
    app.get("bob", &format!("{base}/invites"))
        .await
        .assert_error(403, "forbidden");
    let (invite_id, _) = app.invite("alice", &session, json!({})).await;
    app.delete("bob", &format!("{base}/invites/{invite_id}"))
        .await
        .assert_error(403, "forbidden");
    app.delete("bob", &format!("{base}/members/carol"))
        .await
        .assert_error(403, "forbidden");
    assert_eq!(app.get("alice", &base).await.body["status"], "active");
}

#[tokio::test]
async fn members_are_removed_by_the_owner_or_leave_but_the_owner_stays() {
    let app = TestApp::spawn().await;
    let session = app.session_with("alice", &["bob", "carol"]).await;
    let base = format!("/api/sessions/{session}");

    // Nobody removes the owner: a player may not ask (403, before what
    // the session allows), and the owner cannot leave (409).
    app.delete("bob", &format!("{base}/members/alice"))
        .await
        .assert_error(403, "forbidden");
    app.delete("alice", &format!("{base}/members/alice"))
        .await
        .assert_error(409, "conflict");

    // The owner removes Bob; Bob loses access at once.
    let resp = app.delete("alice", &format!("{base}/members/bob")).await;
    assert_eq!(resp.status, 204, "{}", resp.text);
    app.get("bob", &base).await.assert_error(404, "not_found");
    // Removing him again: no such member.
    app.delete("alice", &format!("{base}/members/bob"))
        .await
        .assert_error(404, "not_found");

    // Carol leaves by herself.
    let resp = app.delete("carol", &format!("{base}/members/carol")).await;
    assert_eq!(resp.status, 204, "{}", resp.text);
    app.get("carol", &base).await.assert_error(404, "not_found");

    let got = app.get("alice", &base).await;
    let members: Vec<&str> = got.body["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["user_id"].as_str())
        .collect();
    assert_eq!(members, vec!["alice"]);
}

#[tokio::test]
async fn names_are_validated() {
    let app = TestApp::spawn().await;
    for body in [
        json!({ "name": "" }),
        json!({ "name": "    " }),
        json!({ "name": "x".repeat(101) }),
        json!({ "name": "x".repeat(100_000) }),
        json!({ "name": "bell\u{7}" }),
        json!({ "name": "\u{200b}\u{200b}" }),
        json!({ "name": " \u{feff}\u{2060} " }),
        json!({ "name": "\u{202e}evil" }),
        json!({ "name": "left\u{2067}right" }),
        json!({ "name": 42 }),
        json!({ "name": null }),
        json!({}),
        json!({ "name": "ok", "owner_user_id": "mallory" }),
    ] {
        app.post("alice", "/api/sessions", body.clone())
            .await
            .assert_error(422, "validation_failed");
    }
    // Names are stored in normal form C: "e" + combining acute is "é".
    let resp = app
        .post(
            "alice",
            "/api/sessions",
            json!({ "name": "  Caf\u{65}\u{301}  " }),
        )
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text);
    assert_eq!(resp.body["name"], "Caf\u{e9}");
    // 100 characters (multi-byte) are fine.
    let resp = app
        .post("alice", "/api/sessions", json!({ "name": "é".repeat(100) }))
        .await;
    assert_eq!(resp.status, 201, "{}", resp.text);
    let id = resp.body["session_id"].as_str().expect("id");
    app.patch(
        "alice",
        &format!("/api/sessions/{id}"),
        json!({ "name": "" }),
    )
    .await
    .assert_error(422, "validation_failed");
    // No session was half-created by the refused requests.
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM campaign_sessions")
        .fetch_one(&app.db.pool)
        .await
        .expect("count");
    assert_eq!(count, 2);
}
