//! The table as `questboard serve` answers it: the page and its assets
//! embedded in the binary, under a strict Content-Security-Policy, and no
//! sign-in by name (that route is `questboard dev`'s only; the browser
//! tests in `clients/web` drive the page itself against `questboard dev`).

use reqwest::Method;
use serde_json::json;

use crate::helpers::{TestApp, s3_endpoint, s3_test_storage};

fn header<'a>(resp: &'a crate::helpers::Resp, name: &str) -> &'a str {
    resp.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn the_table_is_served_under_a_strict_policy_without_dev_sign_in() {
    let app = TestApp::spawn().await;
    for path in ["/", "/join"] {
        let page = app.call(Method::GET, path, None, None).await;
        assert_eq!(page.status, 200, "{path}");
        assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
        let csp = header(&page, "content-security-policy");
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self';",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ] {
            assert!(csp.contains(directive), "{directive} in {csp}");
        }
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(header(&page, "referrer-policy"), "no-referrer");
        assert_eq!(header(&page, "x-frame-options"), "DENY");
        assert!(page.text.contains(r#"src="/assets/table.js""#));
        assert!(!page.text.contains("<script>"), "no inline script");
        assert!(
            page.text
                .contains(r#"<meta name="questboard-dev-sign-in" content="off" />"#),
            "serve offers no sign-in by name"
        );
    }
    // The dev route does not exist here, whatever is sent.
    let dev = app
        .call(
            Method::POST,
            "/dev/token",
            None,
            Some(json!({ "user": "alice" })),
        )
        .await;
    assert_eq!(dev.status, 404, "{}", dev.text);
    assert_eq!(dev.code(), "not_found");
}

#[tokio::test]
async fn the_assets_are_revalidated_by_their_hash() {
    let app = TestApp::spawn().await;
    for (path, kind) in [
        ("/assets/table.js", "text/javascript; charset=utf-8"),
        ("/assets/table.css", "text/css; charset=utf-8"),
        ("/assets/icon.svg", "image/svg+xml"),
    ] {
        let first = app.client.get(app.url(path)).send().await.expect("get");
        assert_eq!(first.status(), 200, "{path}");
        assert_eq!(first.headers()["content-type"], kind);
        assert_eq!(first.headers()["cache-control"], "no-cache");
        assert!(first.headers().contains_key("content-security-policy"));
        let etag = first.headers()["etag"].clone();
        assert!(!first.bytes().await.expect("body").is_empty());
        let again = app
            .client
            .get(app.url(path))
            .header("if-none-match", etag.clone())
            .send()
            .await
            .expect("get");
        assert_eq!(again.status(), 304, "{path}");
        assert_eq!(again.headers()["etag"], etag);
        let other = app
            .client
            .get(app.url(path))
            .header("if-none-match", "\"not-it\"")
            .send()
            .await
            .expect("get");
        assert_eq!(other.status(), 200);
    }
    let missing = app.call(Method::GET, "/assets/other.js", None, None).await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn a_presigning_store_adds_its_origin_for_media_only() {
    let storage = s3_test_storage("pages").await;
    let app = TestApp::spawn_with_storage(storage, |_| {}).await;
    let page = app.call(Method::GET, "/", None, None).await;
    let csp = header(&page, "content-security-policy");
    let origin = url::Url::parse(&s3_endpoint())
        .expect("endpoint")
        .origin()
        .ascii_serialization();
    assert!(csp.contains(&format!("img-src 'self' {origin};")), "{csp}");
    assert!(
        csp.contains(&format!("media-src 'self' {origin};")),
        "{csp}"
    );
    assert!(csp.contains("script-src 'self';"), "{csp}");
    assert!(csp.contains("connect-src 'self';"), "{csp}");
}

#[tokio::test]
async fn named_apps_may_frame_the_table_and_nothing_else_may() {
    let app = TestApp::spawn_with(|c| {
        c.table_frame_ancestors = vec![
            " https://app.example ".into(),
            "https://b.example:8443/".into(),
        ];
    })
    .await;
    let page = app.call(Method::GET, "/", None, None).await;
    let csp = header(&page, "content-security-policy");
    assert!(
        csp.ends_with("frame-ancestors https://app.example https://b.example:8443"),
        "{csp}"
    );
    assert!(page.headers.get("x-frame-options").is_none());

    // What is not an origin is refused at start, never put in the policy.
    for bad in [
        "https://app.example/path",
        "*",
        "app.example",
        "javascript:alert(1)",
        "https://a.example; script-src *",
    ] {
        let mut config = app.config.clone();
        config.table_frame_ancestors = vec![bad.into()];
        let refused = config.table_frame_ancestors();
        assert!(refused.is_err(), "{bad} was accepted");
    }
}
