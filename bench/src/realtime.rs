//! Realtime scenarios: POST-to-WebSocket latency under a steady offered
//! load, and fan-out of one session's events to many sockets of one API
//! process, with that process's resident memory per socket.
//!
//! Latency runs one API process and `W` worker processes (`K` sessions
//! each) on 100 sessions, with one socket per session in this process.
//! First `C` clients POST as fast as they can (closed loop): the rate at
//! which turns then complete, POST to `turn.completed` on a socket, is the
//! measured maximum. Then turns are POSTed at half that rate on a fixed
//! schedule (open loop: a slow answer does not slow the next POST down),
//! and each turn's latency runs from just before its POST to its
//! `turn.completed` arriving on the socket.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use super::pipeline::make_sessions;
use super::processes::{Processes, WorkerOptions};
use super::{BenchArgs, Figure, Scratch, percentile, runs, token, wait_for};
use questboard::config::Config;

/// Sessions of the latency scenario (one socket each).
const SESSIONS: usize = 100;

/// Runs the realtime scenarios and prints their rows.
pub async fn run(config: &Config, args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let (closed, seconds) = if args.quick {
        (100, 2.0)
    } else {
        (5_000, 10.0)
    };
    let mut max = Figure::new(
        format!(
            "POST -> turn.completed on a socket, closed loop ({} clients): maximum",
            args.clients
        ),
        "turns/s",
    );
    let mut offered = Figure::new("open loop at half of it: offered", "turns/s");
    let mut p50 = Figure::new("  ... POST -> turn.completed p50", "ms");
    let mut p95 = Figure::new("  ... p95", "ms");
    let mut p99 = Figure::new("  ... p99", "ms");
    let mut queued50 = Figure::new(
        "  ... of which commit -> started p50 (database clock)",
        "ms",
    );
    let mut queued99 = Figure::new("  ... commit -> started p99", "ms");
    let mut ran50 = Figure::new("  ... started -> completed p50", "ms");
    let mut ran99 = Figure::new("  ... started -> completed p99", "ms");
    let mut cores = [
        "questboard processes",
        "Postgres",
        "Redis",
        "bench (load, sockets)",
        "others",
    ]
    .map(|who| {
        Figure::new(
            format!("  ... cores busy during the open loop: {who}"),
            "cores",
        )
    });
    for _ in 0..runs(args) {
        let result = Scratch::scoped(config, async |scratch| {
            latency(scratch, config, args, closed, seconds).await
        })
        .await?;
        max.values.push(result.max);
        offered.values.push(result.rate);
        p50.values.push(result.p50);
        p95.values.push(result.p95);
        p99.values.push(result.p99);
        queued50.values.push(result.waits.0);
        queued99.values.push(result.waits.1);
        ran50.values.push(result.waits.2);
        ran99.values.push(result.waits.3);
        for (figure, value) in cores.iter_mut().zip(result.cores) {
            figure.values.push(value);
        }
    }
    for f in [
        max, offered, p50, p95, p99, queued50, queued99, ran50, ran99,
    ]
    .into_iter()
    .chain(cores)
    {
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
            format!("fan-out: events delivered/s to {clients} sockets of one API process"),
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

pub(crate) async fn connect(
    addr: SocketAddr,
    session: uuid::Uuid,
    token: &str,
) -> anyhow::Result<Socket> {
    let mut request = format!("ws://{addr}/ws/sessions/{session}").into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(tokio_tungstenite::connect_async(request).await?.0)
}

pub(crate) struct Latency {
    pub(crate) max: f64,
    pub(crate) rate: f64,
    pub(crate) p50: f64,
    pub(crate) p95: f64,
    pub(crate) p99: f64,
    /// p50 and p99 of commit -> started and started -> completed (database clock).
    pub(crate) waits: (f64, f64, f64, f64),
    /// Cores busy during the open loop: questboard processes, Postgres,
    /// Redis, this process, everything else.
    cores: [f64; 5],
}

/// Turn ids and when something happened to them.
type Times = Arc<Mutex<HashMap<String, Instant>>>;

async fn post(
    client: &reqwest::Client,
    addr: SocketAddr,
    session: uuid::Uuid,
    token: &str,
    sent: &Times,
) -> anyhow::Result<()> {
    let at = Instant::now();
    let response = client
        .post(format!("http://{addr}/api/sessions/{session}/turns"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "text": "I listen at the door." }))
        .send()
        .await?;
    anyhow::ensure!(response.status().as_u16() == 202, "{}", response.status());
    let body: serde_json::Value = response.json().await?;
    let id = body["turn_id"].as_str().context("no turn_id")?.to_owned();
    sent.lock().await.insert(id, at);
    Ok(())
}

/// The closed-loop maximum, then the open loop at `args.rate` (or half the
/// maximum), on [`SESSIONS`] fresh sessions of `scratch`.
pub(crate) async fn latency(
    scratch: &Scratch,
    config: &Config,
    args: &BenchArgs,
    closed: usize,
    seconds: f64,
) -> anyhow::Result<Latency> {
    let (api, addr) = Processes::api(scratch, config).await?;
    let workers = Processes::workers(
        scratch,
        config,
        &WorkerOptions::turns(args.workers, args.concurrency),
    )?;
    let sessions = Arc::new(make_sessions(&scratch.pool, SESSIONS).await?);
    let token = token(config, "bench")?;

    let (completed, readers) = listen(addr, &sessions, &token).await?;
    // Let the workers connect before the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = reqwest::Client::new();

    // Closed loop: the maximum.
    let max = closed_loop(
        addr,
        &client,
        &sessions,
        &token,
        &completed,
        args.clients,
        closed,
    )
    .await?;

    // Open loop at half the maximum (or --rate).
    let rate = args.rate.unwrap_or(max / 2.0).max(1.0);
    let total = (rate * seconds).max(1.0) as usize;
    let sent: Times = Arc::default();
    let mut children = api.pids();
    children.extend(workers.pids());
    let cpu = super::CpuMeter::start(&children);
    let started = Instant::now();
    let mut posts = Vec::with_capacity(total);
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let (client, sent, token) = (client.clone(), sent.clone(), token.clone());
        let session = sessions[i % sessions.len()];
        posts.push(tokio::spawn(async move {
            post(&client, addr, session, &token, &sent).await
        }));
    }
    for p in posts {
        p.await??;
    }
    wait_for(Duration::from_secs(120), Duration::from_millis(10), || {
        let (sent, completed) = (sent.clone(), completed.clone());
        async move {
            let sent = sent.lock().await;
            let completed = completed.lock().await;
            Ok(sent.keys().all(|id| completed.contains_key(id)))
        }
    })
    .await
    .context("not every turn.completed of the open loop reached a socket")?;
    let busy = cpu.stop();
    let elapsed = started.elapsed().as_secs_f64();
    let cores = [
        busy.questboard,
        busy.postgres,
        busy.redis,
        busy.bench,
        busy.others,
    ]
    .map(|seconds| seconds / elapsed);
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
    let ids: Vec<uuid::Uuid> = sent.keys().filter_map(|id| id.parse().ok()).collect();
    let (queued, ran) = phases(&scratch.pool, &ids).await?;
    for reader in readers {
        reader.abort();
    }
    workers.stop();
    api.stop();
    Ok(Latency {
        max,
        rate,
        p50: percentile(&latencies, 0.5),
        p95: percentile(&latencies, 0.95),
        p99: percentile(&latencies, 0.99),
        waits: (
            percentile(&queued, 0.5),
            percentile(&queued, 0.99),
            percentile(&ran, 0.5),
            percentile(&ran, 0.99),
        ),
        cores,
    })
}

/// A socket per session, recording when each `turn.completed` arrives.
async fn listen(
    addr: std::net::SocketAddr,
    sessions: &[uuid::Uuid],
    token: &str,
) -> anyhow::Result<(Times, Vec<tokio::task::JoinHandle<()>>)> {
    let completed: Times = Arc::default();
    let mut readers = Vec::new();
    for session in sessions {
        let mut socket = connect(addr, *session, token).await?;
        let completed = completed.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(message)) = socket.next().await {
                if let tokio_tungstenite::tungstenite::Message::Text(text) = message
                    && text.contains("\"turn.completed\"")
                    && let Ok(value) = serde_json::from_str::<serde_json::Value>(&text)
                    && let Some(id) = value["data"]["turn_id"].as_str()
                {
                    completed.lock().await.insert(id.to_owned(), Instant::now());
                }
            }
        }));
    }
    Ok((completed, readers))
}

/// `closed` turns posted by `clients` clients as fast as they are
/// answered; turns a second until the last one's `turn.completed`.
async fn closed_loop(
    addr: std::net::SocketAddr,
    client: &reqwest::Client,
    sessions: &Arc<Vec<uuid::Uuid>>,
    token: &str,
    completed: &Times,
    clients: usize,
    closed: usize,
) -> anyhow::Result<f64> {
    let sent: Times = Arc::default();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (client, sent, next, sessions, token) = (
            client.clone(),
            sent.clone(),
            next.clone(),
            sessions.clone(),
            token.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= closed {
                    return anyhow::Ok(());
                }
                post(&client, addr, sessions[i % sessions.len()], &token, &sent).await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    wait_for(Duration::from_secs(300), Duration::from_millis(10), || {
        let completed = completed.clone();
        async move { Ok(completed.lock().await.len() >= closed) }
    })
    .await
    .context("not every turn.completed of the closed loop reached a socket")?;
    let last = completed
        .lock()
        .await
        .values()
        .copied()
        .max()
        .unwrap_or(started);
    Ok(closed as f64 / last.duration_since(started).as_secs_f64())
}

/// Of the turns `ids`: time queued and time running, each sorted, in ms.
async fn phases(pool: &sqlx::PgPool, ids: &[uuid::Uuid]) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let (mut queued, mut ran): (Vec<f64>, Vec<f64>) = sqlx::query_as::<_, (f64, f64)>(
        "SELECT extract(epoch FROM started_at - created_at)::float8 * 1000,
                extract(epoch FROM completed_at - started_at)::float8 * 1000
         FROM turns WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?
    .into_iter()
    .unzip();
    queued.sort_by(f64::total_cmp);
    ran.sort_by(f64::total_cmp);
    Ok((queued, ran))
}

pub(crate) fn resident_kib(pid: u32) -> anyhow::Result<f64> {
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

/// `clients` sockets on one session of an API process; `events` renames
/// sent one after another. Returns (messages delivered per second, resident
/// KiB per socket of that process).
async fn fanout(config: &Config, clients: usize, events: usize) -> anyhow::Result<(f64, f64)> {
    Scratch::scoped(config, async |scratch| {
        let (api, addr) = Processes::api(scratch, config).await?;
        let http = reqwest::Client::new();
        let session = make_sessions(&scratch.pool, 1).await?[0];
        let token = token(config, "bench")?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = resident_kib(api.pid())?;

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
        let after = resident_kib(api.pid())?;

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
        wait_for(Duration::from_secs(120), Duration::from_millis(10), || {
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
        api.stop();
        Ok((rate, (after - before) / clients as f64))
    })
    .await
}
