//! Uploaded maps and notes, end to end on the local filesystem and on the
//! S3-compatible server: limits (declared and as a chunked body arrives),
//! disguised types, path tricks in names, serving with ETag, 304 and
//! ranges, versions, deletion, events, and a stranger who sees 404 on
//! every media route.

use futures::StreamExt as _;
use questboard_core::storage::Storage;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::helpers::{Resp, TestApp, into_resp, s3_test_storage};

/// Limits small enough to test at and over.
const MAP_LIMIT: u64 = 200_000;
const NOTE_LIMIT: u64 = 50_000;

/// A real (tiny) PNG, padded with an ancillary chunk to `len` bytes.
pub(crate) fn png(len: usize) -> Vec<u8> {
    let mut bytes =
        b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89".to_vec();
    bytes.resize(len.max(bytes.len()), b'x');
    bytes
}

async fn upload(
    app: &TestApp,
    user: &str,
    session: &str,
    query: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Resp {
    let resp = app
        .client
        .post(app.url(&format!("/api/sessions/{session}/assets?{query}")))
        .bearer_auth(app.token(user))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("upload");
    into_resp(resp).await
}

/// A body sent chunked (no Content-Length), in pieces of `piece` bytes.
async fn upload_chunked(
    app: &TestApp,
    session: &str,
    query: &str,
    content_type: &str,
    body: Vec<u8>,
    piece: usize,
) -> Resp {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(piece).map(|c| Ok(c.to_vec())).collect();
    let resp = app
        .client
        .post(app.url(&format!("/api/sessions/{session}/assets?{query}")))
        .bearer_auth(app.token("alice"))
        .header("content-type", content_type)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .expect("upload");
    into_resp(resp).await
}

async fn fetch(
    app: &TestApp,
    user: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = app.client.get(app.url(url)).bearer_auth(app.token(user));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.expect("fetch");
    let status = resp.status();
    let headers = resp.headers().clone();
    (status, headers, resp.bytes().await.expect("bytes").to_vec())
}

/// Every object under the session's prefix.
async fn objects(storage: &Storage, session: &str) -> Vec<String> {
    let mut listing = storage.list_objects(&format!("sessions/{session}"));
    let mut keys = Vec::new();
    while let Some(object) = listing.next().await {
        keys.push(object.expect("list").key);
    }
    keys.retain(|k| k.contains("/media/"));
    keys.sort();
    keys
}

fn sha_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An app on one storage backend with a session (alice owns it, bob
/// plays), for the media stories below, which run in order on each backend.
struct Media {
    app: TestApp,
    storage: Storage,
    session: String,
}

/// Every media story on `storage`, in order: each leaves what the next
/// one starts from.
async fn exercise(storage: Storage) {
    let app = TestApp::spawn_with_storage(storage.clone(), |c| {
        c.media_map_max_bytes = MAP_LIMIT;
        c.media_note_max_bytes = NOTE_LIMIT;
    })
    .await;
    let session = app.session_with("alice", &["bob"]).await;
    let m = Media {
        app,
        storage,
        session,
    };
    let (media_id, url, map) = a_map_at_the_limit_is_stored_and_members_told(&m).await;
    members_read_it_whole_by_etag_and_by_range(&m, &url, &map).await;
    refused_uploads_leave_nothing(&m).await;
    let notes = notes_are_served_as_attachments_and_pdfs_as_themselves(&m).await;
    let url_v2 = a_new_version_moves_the_url_on(&m, &media_id, &url).await;
    strangers_learn_nothing(&m, &media_id, &url_v2, &notes.0).await;
    deleting_takes_every_version(&m, &media_id, &url_v2, &notes).await;
}

async fn a_map_at_the_limit_is_stored_and_members_told(m: &Media) -> (String, String, Vec<u8>) {
    let (app, session, storage) = (&m.app, m.session.as_str(), &m.storage);
    // A map at the limit: stored, described, and an event tells members.
    let map = png(MAP_LIMIT as usize);
    let resp = upload(
        app,
        "alice",
        session,
        "kind=map&name=..%2F..%2Fetc%2Fdungeon.png",
        "image/png",
        map.clone(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text);
    let item = resp.body.clone();
    let media_id = item["media_id"].as_str().expect("id").to_owned();
    assert_eq!(item["kind"], "map");
    assert_eq!(item["source"], "uploaded");
    assert_eq!(item["status"], "ready");
    assert_eq!(item["byte_size"], MAP_LIMIT);
    assert_eq!(item["sha256"], sha_hex(&map));
    // The path trick is display only: the key is ours.
    assert_eq!(item["original_name"], "dungeon.png");
    let url = item["url"].as_str().expect("url").to_owned();
    assert_eq!(url, format!("/api/media/{session}/maps/{media_id}.png"));
    assert_eq!(
        objects(storage, session).await,
        vec![format!("sessions/{session}/media/maps/{media_id}.png")]
    );
    let events = app.events("alice", session, 0).await;
    let ready: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "media.ready")
        .collect();
    assert_eq!(ready.len(), 1);
    assert_eq!(ready[0]["data"]["url"], url.as_str());

    (media_id, url, map)
}

async fn members_read_it_whole_by_etag_and_by_range(m: &Media, url: &str, map: &[u8]) {
    let app = &m.app;
    // Members read it, whole, with the headers a browser needs.
    let (status, headers, bytes) = fetch(app, "bob", url, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, map);
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(
        headers["cache-control"]
            .to_str()
            .unwrap_or_default()
            .contains("private")
    );
    assert!(
        headers["content-disposition"]
            .to_str()
            .unwrap_or_default()
            .starts_with("inline")
    );
    let etag = headers["etag"].to_str().expect("etag").to_owned();
    assert_eq!(etag, format!("\"{}\"", sha_hex(map)));
    let (status, _, bytes) = fetch(app, "bob", url, &[("if-none-match", &etag)]).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(bytes.is_empty());
    // Ranges: a slice, the tail, past the end.
    let (status, headers, bytes) = fetch(app, "bob", url, &[("range", "bytes=8-15")]).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(bytes, map[8..16]);
    assert_eq!(headers["content-range"], format!("bytes 8-15/{MAP_LIMIT}"));
    let (status, _, bytes) = fetch(app, "bob", url, &[("range", "bytes=-4")]).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(bytes, map[map.len() - 4..]);
    let (status, headers, _) = fetch(
        app,
        "bob",
        url,
        &[("range", &format!("bytes={MAP_LIMIT}-"))],
    )
    .await;
    assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(headers["content-range"], format!("bytes */{MAP_LIMIT}"));
}

/// Too big (declared or chunked), disguised or refused types, hostile
/// names, unknown kinds, players: refused, and nothing stored.
async fn refused_uploads_leave_nothing(m: &Media) {
    let (app, session, storage) = (&m.app, m.session.as_str(), &m.storage);
    // One byte over the limit, declared: 413 before the body; chunked: cut
    // off when it passes the limit. Neither leaves an object or a row.
    let over = png(MAP_LIMIT as usize + 1);
    let resp = upload(
        app,
        "alice",
        session,
        "kind=map&name=big.png",
        "image/png",
        over.clone(),
    )
    .await;
    resp.assert_error(413, "payload_too_large");
    let resp = upload_chunked(
        app,
        session,
        "kind=map&name=big.png",
        "image/png",
        over,
        16 * 1024,
    )
    .await;
    resp.assert_error(413, "payload_too_large");
    // Disguised and refused types.
    let resp = upload(
        app,
        "alice",
        session,
        "kind=map&name=x.jpg",
        "image/jpeg",
        png(100),
    )
    .await;
    resp.assert_error(422, "validation_failed");
    let resp = upload(
        app,
        "alice",
        session,
        "kind=map&name=x.png",
        "image/png",
        b"MZ\x90\0 not an image at all, an executable".to_vec(),
    )
    .await;
    resp.assert_error(422, "validation_failed");
    let resp = upload(
        app,
        "alice",
        session,
        "kind=map&name=x.html",
        "text/html",
        b"<script>".to_vec(),
    )
    .await;
    resp.assert_error(415, "unsupported_media_type");
    let resp = upload(
        app,
        "alice",
        session,
        "kind=note&name=x.md",
        "text/markdown",
        png(100),
    )
    .await;
    resp.assert_error(422, "validation_failed");
    let resp = upload_chunked(
        app,
        session,
        "kind=note&name=x.md",
        "text/markdown",
        [b"# fine so far\n".repeat(100), b"\xff".to_vec()].concat(),
        100,
    )
    .await;
    resp.assert_error(422, "validation_failed");
    let resp = upload(
        app,
        "alice",
        session,
        "kind=note&name=%E2%80%AEevil.md",
        "text/markdown",
        b"# x".to_vec(),
    )
    .await;
    resp.assert_error(422, "validation_failed");
    let resp = upload(
        app,
        "alice",
        session,
        "kind=image&name=x.png",
        "image/png",
        png(100),
    )
    .await;
    resp.assert_error(400, "invalid_query");
    // Only the owner and game masters upload.
    let resp = upload(
        app,
        "bob",
        session,
        "kind=map&name=b.png",
        "image/png",
        png(100),
    )
    .await;
    resp.assert_error(403, "forbidden");
    assert_eq!(
        objects(storage, session).await.len(),
        1,
        "refused uploads leave nothing"
    );
    let listed = app
        .get("alice", &format!("/api/sessions/{session}/media"))
        .await;
    assert_eq!(
        listed.body["media"].as_array().map(Vec::len),
        Some(1),
        "{}",
        listed.text
    );
}

/// A note (chunked, at its limit) and a PDF note. Returns the note's URL
/// and id and the PDF's id.
async fn notes_are_served_as_attachments_and_pdfs_as_themselves(
    m: &Media,
) -> (String, String, String) {
    let (app, session) = (&m.app, m.session.as_str());
    // A note at its limit, served as an attachment.
    let note = "# Session 12\n\nThe party rested. \u{1f409}\n".repeat(2000);
    let note = note.as_bytes()[..NOTE_LIMIT as usize - 3].to_vec();
    let note = [note, b"end".to_vec()].concat();
    let resp = upload_chunked(
        app,
        session,
        "kind=note&name=notes.md",
        "text/markdown; charset=utf-8",
        note.clone(),
        7_000,
    )
    .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text);
    let note_url = resp.body["url"].as_str().expect("url").to_owned();
    let note_id = resp.body["media_id"].as_str().expect("id").to_owned();
    let (status, headers, bytes) = fetch(app, "bob", &note_url, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, note);
    assert!(
        headers["content-disposition"]
            .to_str()
            .unwrap_or_default()
            .starts_with("attachment")
    );

    // A PDF note.
    let pdf = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n".to_vec();
    let resp = upload(
        app,
        "alice",
        session,
        "kind=note&name=handout.pdf",
        "application/pdf",
        pdf.clone(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text);
    let pdf_url = resp.body["url"].as_str().expect("url").to_owned();
    let pdf_id = resp.body["media_id"].as_str().expect("id").to_owned();
    assert!(pdf_url.ends_with(".pdf"), "{pdf_url}");
    let (status, headers, bytes) = fetch(app, "bob", &pdf_url, &[]).await;
    assert_eq!((status, bytes), (StatusCode::OK, pdf));
    assert_eq!(headers["content-type"], "application/pdf");

    (note_url, note_id, pdf_id)
}

/// Returns the new version's URL.
async fn a_new_version_moves_the_url_on(m: &Media, media_id: &str, url: &str) -> String {
    let (app, session, storage) = (&m.app, m.session.as_str(), &m.storage);
    // A new version: the URL moves on, the old object stays until pruned.
    let v2 = png(5_000);
    let resp = app
        .client
        .put(app.url(&format!(
            "/api/sessions/{session}/assets/{media_id}?name=dungeon-v2.png"
        )))
        .bearer_auth(app.token("alice"))
        .header("content-type", "image/png")
        .body(v2.clone())
        .send()
        .await
        .expect("put");
    let resp = into_resp(resp).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text);
    assert_eq!(resp.body["version"], 2);
    let url_v2 = resp.body["url"].as_str().expect("url").to_owned();
    assert_eq!(
        url_v2,
        format!("/api/media/{session}/maps/{media_id}-v2.png")
    );
    assert_eq!(fetch(app, "bob", &url_v2, &[]).await.2, v2);
    assert_eq!(fetch(app, "bob", url, &[]).await.0, StatusCode::NOT_FOUND);
    assert_eq!(objects(storage, session).await.len(), 4);

    url_v2
}

async fn strangers_learn_nothing(m: &Media, media_id: &str, url_v2: &str, note_url: &str) {
    let (app, session) = (&m.app, m.session.as_str());
    // A stranger learns nothing: 404 everywhere, as for a missing file.
    let missing = format!("/api/media/{session}/maps/{}.png", uuid::Uuid::now_v7());
    let (status, _, missing_body) = fetch(app, "alice", &missing, &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for path in [url_v2, note_url, missing.as_str()] {
        let (status, _, body) = fetch(app, "mallory", path, &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body, missing_body, "the same answer as a missing file");
    }
    for (method, path) in [
        (Method::GET, format!("/api/sessions/{session}/media")),
        (
            Method::GET,
            format!("/api/sessions/{session}/media/{media_id}"),
        ),
        (
            Method::DELETE,
            format!("/api/sessions/{session}/media/{media_id}"),
        ),
    ] {
        app.call(method, &path, Some("mallory"), None)
            .await
            .assert_error(404, "not_found");
    }
    let resp = upload(
        app,
        "mallory",
        session,
        "kind=map&name=m.png",
        "image/png",
        png(100),
    )
    .await;
    resp.assert_error(404, "not_found");
    // Another session's id does not reach this session's media.
    let other = app.create_session("mallory", "Elsewhere").await;
    let (status, _, _) = fetch(app, "mallory", &url_v2.replace(session, &other), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn deleting_takes_every_version(
    m: &Media,
    media_id: &str,
    url_v2: &str,
    (_, note_id, pdf_id): &(String, String, String),
) {
    let (app, session, storage) = (&m.app, m.session.as_str(), &m.storage);
    // Deleting: not by a player who did not add it; by the owner, with
    // every version's object.
    app.delete("bob", &format!("/api/sessions/{session}/media/{media_id}"))
        .await
        .assert_error(403, "forbidden");
    let resp = app
        .delete(
            "alice",
            &format!("/api/sessions/{session}/media/{media_id}"),
        )
        .await;
    assert_eq!(resp.status, StatusCode::NO_CONTENT, "{}", resp.text);
    assert_eq!(
        fetch(app, "bob", url_v2, &[]).await.0,
        StatusCode::NOT_FOUND
    );
    let mut left = vec![
        format!("sessions/{session}/media/notes/{note_id}.md"),
        format!("sessions/{session}/media/notes/{pdf_id}.pdf"),
    ];
    left.sort();
    assert_eq!(objects(storage, session).await, left);
    let events = app.events("alice", session, 0).await;
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "media.deleted" && e["data"]["media_id"] == media_id)
    );
}

#[tokio::test]
async fn uploads_and_serving_on_the_local_filesystem() {
    let dir = std::env::temp_dir().join(format!("qb-media-{}", uuid::Uuid::new_v4().simple()));
    let storage = Storage::from_url(dir.to_str().expect("utf-8 path")).expect("local storage");
    exercise(storage).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn uploads_and_serving_on_s3() {
    exercise(s3_test_storage("media").await).await;
}

/// On Google Cloud Storage (the GCS emulator, `QB_TEST_GCS_ENDPOINT`):
/// uploads, versions, ranges and serving through the API. Signed links are
/// not tried here: GCS signs with a service account's key, which no
/// emulator has (they are HMAC links elsewhere, tested above).
#[tokio::test]
async fn uploads_and_serving_on_gcs() {
    exercise(crate::helpers::gcs_test_storage("media").await).await;
}

/// An app on `storage` with one map uploaded by alice (bob is a player).
async fn app_with_map(storage: Storage, link_ttl: u64) -> (TestApp, String, String, Vec<u8>) {
    let app = TestApp::spawn_with_storage(storage, |c| c.media_link_ttl_seconds = link_ttl).await;
    let session = app.session_with("alice", &["bob"]).await;
    let map = png(3_000);
    let resp = upload(
        &app,
        "alice",
        &session,
        "kind=map&name=keep.png",
        "image/png",
        map.clone(),
    )
    .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text);
    let media_id = resp.body["media_id"].as_str().expect("id").to_owned();
    (app, session, media_id, map)
}

#[tokio::test]
async fn signed_links_work_for_one_object_until_they_expire() {
    let dir = std::env::temp_dir().join(format!("qb-links-{}", uuid::Uuid::new_v4().simple()));
    let storage = Storage::from_url(dir.to_str().expect("utf-8 path")).expect("local storage");
    let (app, session, media_id, map) = app_with_map(storage, 2).await;
    let link_path = format!("/api/sessions/{session}/media/{media_id}/url");
    app.get("mallory", &link_path)
        .await
        .assert_error(404, "not_found");
    let link = app.get("bob", &link_path).await;
    assert_eq!(link.status, StatusCode::OK, "{}", link.text);
    let url = link.body["url"].as_str().expect("url").to_owned();
    assert!(
        url.starts_with(&format!(
            "/api/media/{session}/maps/{media_id}.png?expires="
        )),
        "{url}"
    );
    // No token needed: the link stands for a member.
    let plain = reqwest::Client::new();
    let get = |url: String| {
        let (plain, full) = (plain.clone(), app.url(&url));
        async move { plain.get(full).send().await.expect("get") }
    };
    let resp = get(url.clone()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.expect("bytes").to_vec(), map);
    // Tampered: the signature, the expiry, or another object's path.
    let (base, query) = url.split_once('?').expect("query");
    let signature = query.split("signature=").nth(1).expect("signature");
    let flipped = format!(
        "{}{}",
        if signature.starts_with('0') { "1" } else { "0" },
        &signature[1..]
    );
    let expires: i64 = query
        .split('&')
        .find_map(|p| p.strip_prefix("expires="))
        .and_then(|v| v.parse().ok())
        .expect("expires");
    for bad in [
        format!("{base}?expires={expires}&signature={flipped}"),
        format!("{base}?expires={}&signature={signature}", expires + 3600),
        format!(
            "/api/media/{session}/maps/{}.png?{query}",
            uuid::Uuid::now_v7()
        ),
        // The same link written another way: one link, one spelling.
        format!(
            "{base}?expires={expires}&signature={}",
            signature.to_uppercase()
        ),
        format!("{base}?expires=%2B{expires}&signature={signature}"),
        format!("{base}?expires=0{expires}&signature={signature}"),
    ] {
        let resp = into_resp(get(bad.clone()).await).await;
        resp.assert_error(403, "forbidden");
    }
    // Each hex byte below 0x10 written `+x` (what `from_str_radix` took).
    let plussed: String = signature
        .as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [b'0', low] => format!("%2B{}", *low as char),
            other => String::from_utf8_lossy(other).into_owned(),
        })
        .collect();
    if plussed != signature {
        let resp =
            into_resp(get(format!("{base}?expires={expires}&signature={plussed}")).await).await;
        resp.assert_error(403, "forbidden");
    }
    // Half a link is no link, and without a token that is 401.
    into_resp(get(format!("{base}?expires={expires}")).await)
        .await
        .assert_error(401, "unauthorized");
    into_resp(get(base.to_owned()).await)
        .await
        .assert_error(401, "unauthorized");
    // Expired.
    tokio::time::sleep(std::time::Duration::from_millis(3_100)).await;
    into_resp(get(url).await)
        .await
        .assert_error(403, "forbidden");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn signed_links_on_s3_are_presigned_urls_of_the_store() {
    let storage = s3_test_storage("links").await;
    let (app, session, media_id, map) = app_with_map(storage, 60).await;
    let link = app
        .get(
            "bob",
            &format!("/api/sessions/{session}/media/{media_id}/url"),
        )
        .await;
    assert_eq!(link.status, StatusCode::OK, "{}", link.text);
    let url = link.body["url"].as_str().expect("url");
    assert!(
        url.contains("X-Amz-Signature=") && url.contains("X-Amz-Expires=60"),
        "{url}"
    );
    assert!(
        url.contains(&format!(
            "links/sessions/{session}/media/maps/{media_id}.png"
        )),
        "{url}"
    );
    let resp = reqwest::Client::new()
        .get(url)
        .send()
        .await
        .expect("presigned get");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.expect("bytes").to_vec(), map);
}

#[tokio::test]
async fn the_old_images_route_resolves_through_the_metadata_for_members() {
    let (app, session, media_id, map) = app_with_map(Storage::in_memory(), 60).await;
    let old = format!("/api/images/{media_id}.png");
    let (status, headers, bytes) = fetch(&app, "bob", &old, &[]).await;
    assert_eq!((status, bytes), (StatusCode::OK, map));
    assert_eq!(headers["content-type"], "image/png");
    let (status, _, _) = fetch(&app, "bob", &old, &[("range", "bytes=0-7")]).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    for (user, path) in [
        ("mallory", old.clone()),
        ("bob", format!("/api/images/{}.png", uuid::Uuid::now_v7())),
        ("bob", format!("/api/images/{media_id}.jpg")),
        ("bob", "/api/images/..%2F..%2Fetc%2Fpasswd".to_owned()),
    ] {
        let (status, _, _) = fetch(&app, user, &path, &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{user} {path}");
    }
    // Notes are not images.
    let resp = upload(
        &app,
        "alice",
        &session,
        "kind=note&name=n.md",
        "text/markdown",
        b"# n".to_vec(),
    )
    .await;
    let note = resp.body["media_id"].as_str().expect("id").to_owned();
    assert_eq!(
        fetch(&app, "bob", &format!("/api/images/{note}.md"), &[])
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}
