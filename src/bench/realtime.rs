//! Realtime scenarios: POST-to-WebSocket latency under a steady offered
//! load, and fan-out of one session's events to many sockets of one API
//! process, with that process's resident memory per socket.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use super::pipeline::{Workers, make_sessions};
use super::{BenchArgs, Figure, SECRET, Scratch, bench_config, runs, token, wait_for};
use crate::app;
use crate::config::Config;

/// Runs the realtime scenarios; `rate` is the offered load in turns/s.
pub async fn run(config: &Config, args: &BenchArgs, rate: f64) -> anyhow::Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let seconds = if args.quick { 2.0 } else { 10.0 };
    let mut p50 = Figure::new(
        format!("POST turn -> turn.completed on socket p50 @ {rate:.0}/s"),
        "ms",
    );
    let mut p95 = Figure::new("  ... p95", "ms");
    let mut p99 = Figure::new("  ... p99", "ms");
    for _ in 0..runs(args) {
        let (a, b, c) = latency(config, args, rate, seconds).await?;
        p50.values.push(a);
        p95.values.push(b);
        p99.values.push(c);
    }
    for f in [p50, p95, p99] {
        f.print();
        figures.push(f);
    }
    let sizes: Vec<usize> = if args.quick {
        vec![20]
    } else {
        args.fanout.clone()
    };
    for clients in sizes {
        let mut rate = Figure::new(
            format!("fan-out: events delivered/s to {clients} sockets"),
            "msg/s",
        );
        let mut memory = Figure::new(
            format!("  ... API resident memory per socket ({clients})"),
            "KiB",
        );
        for _ in 0..runs(args) {
            let (r, m) = fanout(config, clients, if args.quick { 5 } else { 50 }).await?;
            rate.values.push(r);
            memory.values.push(m);
        }
        for f in [rate, memory] {
            f.print();
            figures.push(f);
        }
    }
    Ok(figures)
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(
    addr: std::net::SocketAddr,
    session: uuid::Uuid,
    token: &str,
) -> anyhow::Result<Socket> {
    let mut request = format!("ws://{addr}/ws/sessions/{session}").into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(tokio_tungstenite::connect_async(request).await?.0)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Open-loop load: turns POSTed at `rate` per second over 10 sessions for
/// `seconds`; latency from just before each POST to its `turn.completed`
/// arriving on a socket of that session.
async fn latency(
    config: &Config,
    args: &BenchArgs,
    rate: f64,
    seconds: f64,
) -> anyhow::Result<(f64, f64, f64)> {
    let scratch = Scratch::create(config).await?;
    let config = bench_config(config, &scratch);
    let state = app::api_state(&config).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app::serve_http(listener, state, async move {
        let _ = stop_rx.await;
    }));
    let workers = Workers::start(&scratch, &config, args.workers, args.concurrency).await?;
    let sessions = make_sessions(&scratch.pool, 10).await?;
    let token = token(&config, "bench")?;

    let completed: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut readers = Vec::new();
    for session in &sessions {
        let mut socket = connect(addr, *session, &token).await?;
        let completed = completed.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(message)) = socket.next().await {
                if let tokio_tungstenite::tungstenite::Message::Text(text) = message
                    && let Ok(value) = serde_json::from_str::<serde_json::Value>(&text)
                    && value["type"] == "turn.completed"
                    && let Some(id) = value["data"]["turn_id"].as_str()
                {
                    completed.lock().await.insert(id.to_owned(), Instant::now());
                }
            }
        }));
    }

    let client = reqwest::Client::new();
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let total = (rate * seconds).max(1.0) as usize;
    let started = Instant::now();
    let mut posts = Vec::with_capacity(total);
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let (client, sent, token) = (client.clone(), sent.clone(), token.clone());
        let url = format!(
            "http://{addr}/api/sessions/{}/turns",
            sessions[i % sessions.len()]
        );
        posts.push(tokio::spawn(async move {
            let at = Instant::now();
            let response = client
                .post(url)
                .bearer_auth(token)
                .json(&serde_json::json!({ "text": "I listen at the door." }))
                .send()
                .await?;
            let body: serde_json::Value = response.json().await?;
            let id = body["turn_id"].as_str().context("no turn_id")?.to_owned();
            sent.lock().await.insert(id, at);
            anyhow::Ok(())
        }));
    }
    for post in posts {
        post.await??;
    }
    wait_for(Duration::from_secs(120), || {
        let completed = completed.clone();
        async move { Ok(completed.lock().await.len() >= total) }
    })
    .await
    .context("not every turn.completed reached a socket")?;
    let sent = sent.lock().await;
    let completed = completed.lock().await;
    let mut latencies: Vec<f64> = sent
        .iter()
        .filter_map(|(id, at)| {
            completed
                .get(id)
                .map(|done| done.duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    for reader in readers {
        reader.abort();
    }
    workers.stop().await;
    let _ = stop_tx.send(());
    let _ = server.await;
    scratch.drop_db().await;
    Ok((
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.95),
        percentile(&latencies, 0.99),
    ))
}

fn resident_kib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

/// `clients` sockets on one session of a separate `questboard serve`
/// process; `events` renames sent one after another. Returns (messages
/// delivered per second, resident KiB per socket of that process).
async fn fanout(config: &Config, clients: usize, events: usize) -> anyhow::Result<(f64, f64)> {
    let scratch = Scratch::create(config).await?;
    let config = bench_config(config, &scratch);
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("serve")
        .env("DATABASE_URL", &scratch.url)
        .env("REDIS_URL", config.redis_url.expose())
        .env("QB_HTTP_ADDR", addr.to_string())
        .env("QB_METRICS_ADDR", "127.0.0.1:0")
        .env("QB_JWT_SECRET", SECRET)
        .env_remove("QB_JWKS_URL")
        .env("QB_STORAGE_URL", "memory://")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting questboard serve")?;
    let result = async {
        let http = reqwest::Client::new();
        wait_for(Duration::from_secs(20), || {
            let http = http.clone();
            async move {
                Ok(http
                    .get(format!("http://{addr}/healthz"))
                    .send()
                    .await
                    .is_ok())
            }
        })
        .await?;
        let session = make_sessions(&scratch.pool, 1).await?[0];
        let token = token(&config, "bench")?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = resident_kib(child.id())?;

        let received = Arc::new(AtomicUsize::new(0));
        let mut readers = Vec::with_capacity(clients);
        for chunk in 0..clients.div_ceil(200) {
            let batch = (chunk * 200..((chunk + 1) * 200).min(clients))
                .map(|_| connect(addr, session, &token));
            for socket in futures::future::try_join_all(batch).await? {
                let received = received.clone();
                let mut socket = socket;
                readers.push(tokio::spawn(async move {
                    while let Some(Ok(message)) = socket.next().await {
                        if matches!(message, tokio_tungstenite::tungstenite::Message::Text(_)) {
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = resident_kib(child.id())?;

        let started = Instant::now();
        for i in 0..events {
            let response = http
                .patch(format!("http://{addr}/api/sessions/{session}"))
                .bearer_auth(&token)
                .json(&serde_json::json!({ "name": format!("Fan-out {i}") }))
                .send()
                .await?;
            anyhow::ensure!(
                response.status().is_success(),
                "rename failed: {}",
                response.status()
            );
        }
        let expected = clients * events;
        wait_for(Duration::from_secs(120), || {
            let received = received.clone();
            async move { Ok(received.load(Ordering::Relaxed) >= expected) }
        })
        .await
        .with_context(|| {
            format!(
                "only {} of {expected} deliveries",
                received.load(Ordering::Relaxed)
            )
        })?;
        let rate = expected as f64 / started.elapsed().as_secs_f64();
        for reader in readers {
            reader.abort();
        }
        anyhow::Ok((rate, (after - before) / clients as f64))
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    scratch.drop_db().await;
    result
}
