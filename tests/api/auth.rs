//! Bearer token checks: every way a token can be wrong gets a JSON 401, on
//! every `/api` route, in both HS256 and JWKS (RS256) modes.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TEST_SECRET, TestApp};

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn hs(alg: Algorithm, secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

fn rs(kid: &str, pem: &[u8], claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(pem).expect("pem"),
    )
    .expect("encode")
}

const RSA1: &[u8] = include_bytes!("fixtures/rsa1.pem");
const RSA2: &[u8] = include_bytes!("fixtures/rsa2.pem");
const RSA1_PUB: &[u8] = include_bytes!("fixtures/rsa1.pub.pem");
const JWK1: &str = include_str!("fixtures/jwk1.json");
const JWK2: &str = include_str!("fixtures/jwk2.json");

/// Every `/api` route with a method (ids need not exist: auth comes first).
fn api_routes() -> Vec<(Method, String)> {
    let s = "0195f1a6-0000-7000-8000-000000000000";
    vec![
        (Method::POST, "/api/sessions".into()),
        (Method::GET, "/api/sessions".into()),
        (Method::GET, format!("/api/sessions/{s}")),
        (Method::PATCH, format!("/api/sessions/{s}")),
        (Method::DELETE, format!("/api/sessions/{s}")),
        (Method::POST, format!("/api/sessions/{s}/invites")),
        (Method::GET, format!("/api/sessions/{s}/invites")),
        (Method::DELETE, format!("/api/sessions/{s}/invites/{s}")),
        (Method::DELETE, format!("/api/sessions/{s}/members/bob")),
        (Method::POST, "/api/invites/accept".into()),
        (Method::POST, format!("/api/sessions/{s}/turns")),
        (Method::GET, format!("/api/sessions/{s}/turns")),
        (Method::GET, "/api/jobs/01M83ZZNBQ8FJJ8BY91YHXQJKR".into()),
        (Method::GET, format!("/api/sessions/{s}/events")),
        (Method::GET, format!("/api/sessions/{s}/state")),
        (Method::POST, format!("/api/sessions/{s}/state/updates")),
    ]
}

#[tokio::test]
async fn every_api_route_refuses_missing_and_bad_tokens() {
    let app = TestApp::spawn().await;
    let claims = json!({ "sub": "alice", "exp": now() + 600 });
    let expired = json!({ "sub": "alice", "exp": now() - 3600 });
    let bad_headers = [
        "Basic YWxpY2U6cGFzcw==".to_owned(),
        "Bearer".to_owned(),
        "Bearer not-a-jwt".to_owned(),
        format!(
            "Bearer {}",
            hs(
                Algorithm::HS256,
                "another-secret-another-secret-0123456",
                &claims
            )
        ),
        format!("Bearer {}", hs(Algorithm::HS256, TEST_SECRET, &expired)),
        format!("Bearer {}", hs(Algorithm::HS512, TEST_SECRET, &claims)),
        format!("Bearer {}", rs("test-key-1", RSA1, &claims)),
    ];
    for (method, path) in api_routes() {
        let resp = app.call(method.clone(), &path, None, None).await;
        resp.assert_error(401, "unauthorized");
        assert_eq!(
            resp.headers
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer")
        );
        for header in &bad_headers {
            let resp = app.call_with_auth(method.clone(), &path, header).await;
            resp.assert_error(401, "unauthorized");
        }
    }
}

#[tokio::test]
async fn alg_none_and_tampered_tokens_are_refused() {
    let app = TestApp::spawn().await;
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(json!({ "sub": "alice", "exp": now() + 600 }).to_string());
    for token in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}"),
    ] {
        let resp = app
            .call_with_auth(Method::GET, "/api/sessions", &format!("Bearer {token}"))
            .await;
        resp.assert_error(401, "unauthorized");
    }

    // Same signature, payload swapped to another user.
    let good = app.token("alice");
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged =
        URL_SAFE_NO_PAD.encode(json!({ "sub": "mallory", "exp": now() + 600 }).to_string());
    parts[1] = &forged;
    let resp = app
        .call_with_auth(
            Method::GET,
            "/api/sessions",
            &format!("Bearer {}", parts.join(".")),
        )
        .await;
    resp.assert_error(401, "unauthorized");

    // Missing, empty, blank or disguised `sub`, missing `exp`.
    for claims in [
        json!({ "exp": now() + 600 }),
        json!({ "sub": "", "exp": now() + 600 }),
        json!({ "sub": "   ", "exp": now() + 600 }),
        json!({ "sub": "\u{202e}nimda", "exp": now() + 600 }),
        json!({ "sub": "al\u{200b}ice", "exp": now() + 600 }),
        json!({ "sub": "alice" }),
    ] {
        let token = hs(Algorithm::HS256, TEST_SECRET, &claims);
        let resp = app
            .call_with_auth(Method::GET, "/api/sessions", &format!("Bearer {token}"))
            .await;
        resp.assert_error(401, "unauthorized");
    }

    // The valid token works, and the scheme is case-insensitive.
    let resp = app
        .call_with_auth(Method::GET, "/api/sessions", &format!("bearer {good}"))
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text);
}

#[tokio::test]
async fn issuer_and_audience_are_enforced_when_configured() {
    let app = TestApp::spawn_with(|c| {
        c.jwt_issuer = Some("https://issuer.test/".into());
        c.jwt_audience = Some("questboard".into());
    })
    .await;
    // Minted tokens carry the configured claims.
    assert_eq!(app.get("alice", "/api/sessions").await.status, 200);
    for claims in [
        json!({ "sub": "alice", "exp": now() + 600, "iss": "https://evil.test/", "aud": "questboard" }),
        json!({ "sub": "alice", "exp": now() + 600, "iss": "https://issuer.test/", "aud": "other" }),
        json!({ "sub": "alice", "exp": now() + 600 }),
    ] {
        let token = hs(Algorithm::HS256, TEST_SECRET, &claims);
        let resp = app
            .call_with_auth(Method::GET, "/api/sessions", &format!("Bearer {token}"))
            .await;
        resp.assert_error(401, "unauthorized");
    }
}

/// A JWKS endpoint on 127.0.0.1:0 whose key set the test can swap.
async fn jwks_server(keys: Arc<Mutex<Vec<Value>>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = Router::new().route(
        "/.well-known/jwks.json",
        get(move || {
            let keys = keys.lock().expect("lock").clone();
            async move { axum::Json(json!({ "keys": keys })) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/.well-known/jwks.json")
}

#[tokio::test]
async fn jwks_mode_verifies_rs256_and_follows_key_rotation() {
    let jwk1: Value = serde_json::from_str(JWK1).expect("jwk1");
    let jwk2: Value = serde_json::from_str(JWK2).expect("jwk2");
    let keys = Arc::new(Mutex::new(vec![jwk1]));
    let url = jwks_server(keys.clone()).await;
    let app = TestApp::spawn_with(|c| {
        c.jwt_secret = None;
        c.jwks_url = Some(url.parse().expect("url"));
        c.jwt_issuer = Some("https://tenant.auth0.test/".into());
        c.jwt_audience = Some("https://api.questboard.test".into());
    })
    .await;
    let claims = json!({
        "sub": "auth0|alice", "exp": now() + 600,
        "iss": "https://tenant.auth0.test/", "aud": "https://api.questboard.test"
    });
    let bearer = |t: String| format!("Bearer {t}");

    let resp = app
        .call_with_auth(
            Method::GET,
            "/api/sessions",
            &bearer(rs("test-key-1", RSA1, &claims)),
        )
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text);

    // Wrong audience, wrong issuer, expired.
    for bad in [
        json!({ "sub": "auth0|alice", "exp": now() + 600, "iss": "https://tenant.auth0.test/", "aud": "nope" }),
        json!({ "sub": "auth0|alice", "exp": now() + 600, "iss": "https://evil.test/", "aud": "https://api.questboard.test" }),
        json!({ "sub": "auth0|alice", "exp": now() - 600, "iss": "https://tenant.auth0.test/", "aud": "https://api.questboard.test" }),
    ] {
        let resp = app
            .call_with_auth(
                Method::GET,
                "/api/sessions",
                &bearer(rs("test-key-1", RSA1, &bad)),
            )
            .await;
        resp.assert_error(401, "unauthorized");
    }
    // Key confusion: HS256 signed with the public key as the secret.
    let confused = jsonwebtoken::encode(
        &Header {
            kid: Some("test-key-1".into()),
            ..Header::new(Algorithm::HS256)
        },
        &claims,
        &EncodingKey::from_secret(RSA1_PUB),
    )
    .expect("encode");
    app.call_with_auth(Method::GET, "/api/sessions", &bearer(confused))
        .await
        .assert_error(401, "unauthorized");
    // Signed by a key the JWKS does not publish (yet).
    let rotated = rs("test-key-2", RSA2, &claims);
    app.call_with_auth(Method::GET, "/api/sessions", &bearer(rotated.clone()))
        .await
        .assert_error(401, "unauthorized");
    // Right kid, wrong key.
    app.call_with_auth(
        Method::GET,
        "/api/sessions",
        &bearer(rs("test-key-1", RSA2, &claims)),
    )
    .await
    .assert_error(401, "unauthorized");

    // The issuer rotates keys; after the refetch guard interval the unknown
    // kid triggers a fetch and the new key is accepted without a restart.
    keys.lock().expect("lock").push(jwk2);
    tokio::time::sleep(questboard::auth::JWKS_MIN_REFETCH + std::time::Duration::from_millis(300))
        .await;
    let resp = app
        .call_with_auth(Method::GET, "/api/sessions", &bearer(rotated))
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text);
}

#[tokio::test]
async fn tokens_not_yet_valid_or_with_critical_extensions_are_refused() {
    let app = TestApp::spawn().await;
    let get = async |token: &str| {
        app.call_with_auth(Method::GET, "/api/sessions", &format!("Bearer {token}"))
            .await
    };
    // `nbf` half an hour ahead: refused; within the leeway or past: fine.
    let later = hs(
        Algorithm::HS256,
        TEST_SECRET,
        &json!({ "sub": "alice", "exp": now() + 7200, "nbf": now() + 1800 }),
    );
    get(&later).await.assert_error(401, "unauthorized");
    for nbf in [now() + 2, now() - 60] {
        let ok = hs(
            Algorithm::HS256,
            TEST_SECRET,
            &json!({ "sub": "alice", "exp": now() + 600, "nbf": nbf }),
        );
        assert_eq!(get(&ok).await.status, 200, "nbf {nbf}");
    }
    // A `crit` header parameter (RFC 7515 4.1.11): refused, correctly signed or not.
    let mut header = Header::new(Algorithm::HS256);
    header.crit = Some(vec!["exp-v2".into()]);
    let critical = jsonwebtoken::encode(
        &header,
        &json!({ "sub": "alice", "exp": now() + 600 }),
        &EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .expect("encode");
    get(&critical).await.assert_error(401, "unauthorized");
}

#[tokio::test]
async fn two_authorization_headers_are_refused_in_either_order() {
    let app = TestApp::spawn().await;
    let session = app.create_session("alice", "Mine").await;
    let (alice, bob) = (app.token("alice"), app.token("bob"));
    for (first, second) in [(&alice, &bob), (&bob, &alice), (&alice, &alice)] {
        let resp = app
            .client
            .get(app.url(&format!("/api/sessions/{session}")))
            .header("authorization", format!("Bearer {first}"))
            .header("authorization", format!("Bearer {second}"))
            .send()
            .await
            .expect("request");
        let resp = crate::helpers::into_resp(resp).await;
        resp.assert_error(400, "duplicate_authorization");

        // The WebSocket upgrade too.
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let mut request = format!("ws://{}/ws/sessions/{session}", app.addr)
            .into_client_request()
            .expect("request");
        request.headers_mut().append(
            "authorization",
            format!("Bearer {first}").parse().expect("header"),
        );
        request.headers_mut().append(
            "authorization",
            format!("Bearer {second}").parse().expect("header"),
        );
        assert_eq!(app.ws_request(request).await.err(), Some(400));
    }
}

/// The value of one series in a Prometheus text exposition (0 if absent).
fn series_value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A request without a token is a refused caller like any other: counted
/// in `auth_failures_total{reason="missing"}` (it was not).
#[tokio::test]
async fn a_missing_token_is_counted_as_an_auth_failure() {
    let app = TestApp::spawn().await;
    let series = "questboard_auth_failures_total{reason=\"missing\"}";
    let before = series_value(&app.metrics().await, series);
    let resp = app.call(Method::GET, "/api/sessions", None, None).await;
    assert_eq!(resp.status, 401);
    let after = series_value(&app.metrics().await, series);
    assert!(after > before, "{series}: {before} -> {after}");
}
