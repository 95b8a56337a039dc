//! The listener's limits against slow, silent and greedy clients, with raw
//! TCP: request heads and bodies must arrive in time, idle keep-alive
//! connections are closed, a declared body over the limit is refused
//! before it is read, and past the connection cap new connections are
//! closed at accept, while normal clients keep being served.

use std::time::Duration;

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::TestApp;

/// Reads until the server closes the connection; what it sent, or None if
/// it was still open after `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> Option<String> {
    let mut seen = Vec::new();
    let read = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&seen).into_owned())
}

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.addr).await.expect("connect")
}

/// Connects and sends the head of `POST /api/sessions` as alice declaring
/// `length` bytes of body, and the first bytes of it.
async fn post_session_head(app: &TestApp, length: usize, body_start: &str) -> TcpStream {
    let mut stream = connect(app).await;
    let head = format!(
        "POST /api/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n{body_start}",
        app.token("alice")
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    stream
}

#[tokio::test]
async fn slow_silent_and_idle_clients_are_disconnected_while_others_are_served() {
    let app = TestApp::spawn_with(|c| c.http_header_timeout_ms = 500).await;
    let mut silent = Vec::new();
    let mut slow = Vec::new();
    for _ in 0..10 {
        silent.push(connect(&app).await);
        let mut stream = connect(&app).await;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHo")
            .await
            .expect("write");
        slow.push(stream);
    }
    // A client that finished one request and then idles on keep-alive.
    let mut idle = connect(&app).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.expect("response");
    assert_eq!(&first, b"HTTP/1.1 200");

    // Normal clients are served meanwhile (on fresh connections: a pooled
    // one idle past the 0.5 s limit here may be closed as it is reused).
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let healthz = || async {
        fresh
            .get(app.url("/healthz"))
            .send()
            .await
            .expect("request")
            .status()
    };
    for _ in 0..5 {
        assert_eq!(healthz().await, StatusCode::OK);
    }
    // The slow ones trickle a byte now and then: not enough.
    for stream in &mut slow {
        let _ = stream.write_all(b"s").await;
    }
    for (i, stream) in silent.iter_mut().chain(slow.iter_mut()).enumerate() {
        assert!(
            closed_within(stream, Duration::from_secs(5))
                .await
                .is_some(),
            "connection {i} still open"
        );
    }
    assert!(
        closed_within(&mut idle, Duration::from_secs(5))
            .await
            .is_some()
    );
    assert_eq!(healthz().await, StatusCode::OK);
}

#[tokio::test]
async fn a_declared_body_over_the_limit_is_413_before_it_is_sent() {
    // Bodies may take 30 s: a 413 that came later would be the timeout.
    let app = TestApp::spawn_with(|c| c.http_body_timeout_ms = 30_000).await;
    let mut stream = post_session_head(&app, 2_000_000, "{\"na").await;
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("answered before the body")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_408() {
    let app = TestApp::spawn_with(|c| c.http_body_timeout_ms = 500).await;
    let mut stream = post_session_head(&app, 100, "{\"name\": ").await;
    let answer = closed_within(&mut stream, Duration::from_secs(10))
        .await
        .unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
    // Nothing was created.
    let resp = app.get("alice", "/api/sessions").await;
    assert_eq!(
        resp.body["sessions"].as_array().map(Vec::len),
        Some(0),
        "{}",
        resp.text
    );
}

#[tokio::test]
async fn past_the_connection_cap_new_connections_are_closed_at_accept() {
    let app = TestApp::spawn_with(|c| c.http_max_connections = 4).await;
    // Hold connections open (idle, under the header timeout) until one is
    // closed at once: the cap (the test client may hold one of its own).
    let mut held = Vec::new();
    let refused = loop {
        let mut stream = connect(&app).await;
        if closed_within(&mut stream, Duration::from_millis(300))
            .await
            .is_some()
        {
            break held.len();
        }
        held.push(stream);
        assert!(held.len() <= 4, "more than 4 connections were accepted");
    };
    assert!((3..=4).contains(&refused), "refused after {refused}");
    let metrics = app.metrics().await;
    assert!(metrics.contains("questboard_http_connections_refused_total"));
    // Freed slots serve again.
    held.clear();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut stream = connect(&app).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let answer = closed_within(&mut stream, Duration::from_secs(5))
        .await
        .unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// A request framed both by `Content-Length` and by chunked encoding (how
/// requests are smuggled past a proxy that reads the other framing): hyper
/// drops `Content-Length` in either order before the router sees the
/// request (so it cannot be answered 400 from here, see docs), reads the
/// chunked body, and closes the connection after the one answer, so
/// nothing after the body is read as another request.
#[tokio::test]
async fn a_request_with_both_content_length_and_chunked_is_not_smuggled() {
    let app = TestApp::spawn().await;
    let body = "{\"name\":\"Framed\"}";
    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    let smuggled = "DELETE /api/sessions/x HTTP/1.1\r\nHost: x\r\n\r\n";
    let length = format!("Content-Length: {}", chunked.len() + smuggled.len());
    let te = "Transfer-Encoding: chunked".to_owned();
    for (first, second) in [(length.clone(), te.clone()), (te, length)] {
        let mut stream = connect(&app).await;
        let request = format!(
            "POST /api/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\n{first}\r\n{second}\r\n\r\n{chunked}{smuggled}",
            app.token("alice")
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let answer = closed_within(&mut stream, Duration::from_secs(10))
            .await
            .expect("the connection is closed after one answer");
        assert_eq!(
            answer.matches("HTTP/1.1 ").count(),
            1,
            "one answer: {answer}"
        );
        assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    }
    let listed = app.get("alice", "/api/sessions").await;
    assert_eq!(
        listed.body["sessions"].as_array().map(Vec::len),
        Some(2),
        "{}",
        listed.text
    );
}
