//! Enqueue scenarios: how fast turns become durable jobs.
//!
//! - through the HTTP API: `C` keep-alive clients POSTing turns to one API
//!   process (which commits concurrent requests together, see
//!   `questboard_core::turns::Intake`);
//! - through the library, without HTTP: `C` tasks calling
//!   `turns::submit` (one statement and one commit per turn), and
//!   `turns::submit_many` with `--batch` turns per call.
//!
//! All three spread turns over 100 sessions; nothing processes them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use questboard_core::identity::UserId;
use questboard_core::turns::{self, NewTurn};

use super::processes::Processes;
use super::{BenchArgs, CpuMeter, Figure, Scratch, cpu_figures, runs, token};
use crate::pipeline::make_sessions;
use questboard::config::Config;

/// Sessions the turns are spread over.
const SESSIONS: usize = 100;

/// Runs the enqueue scenarios and prints their rows.
pub async fn run(config: &Config, args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let total = if args.quick { 200 } else { 10_000 };
    let c = args.clients.max(1);
    let mut http = Figure::new(
        format!("enqueue via HTTP, one API process, {c} keep-alive clients"),
        "turns/s",
    );
    let mut http_cpu = cpu_figures("turns accepted over HTTP");
    let mut single = Figure::new(
        format!("enqueue via the library, turns::submit, {c} tasks"),
        "turns/s",
    );
    let mut batched = Figure::new(
        format!(
            "enqueue via the library, turns::submit_many, {} per call, 4 tasks",
            args.batch
        ),
        "turns/s",
    );
    for _ in 0..runs(args) {
        let (rate, cpu, one, many) = Scratch::scoped(config, async |scratch| {
            let sessions = Arc::new(make_sessions(&scratch.pool, SESSIONS).await?);
            let (rate, cpu) = over_http(scratch, config, &sessions, total, c).await?;
            let one = library_single(scratch, &sessions, total, c).await?;
            let many = library_batched(scratch, &sessions, total, args.batch).await?;
            Ok((rate, cpu, one, many))
        })
        .await?;
        http.values.push(rate);
        cpu.record(total, &mut http_cpu);
        single.values.push(one);
        batched.values.push(many);
    }
    let mut figures = vec![http];
    figures.extend(http_cpu);
    figures.push(single);
    figures.push(batched);
    for f in &figures {
        f.print();
    }
    Ok(figures)
}

/// `total` turns POSTed by `clients` keep-alive clients to one API process.
async fn over_http(
    scratch: &Scratch,
    config: &Config,
    sessions: &Arc<Vec<uuid::Uuid>>,
    total: usize,
    clients: usize,
) -> anyhow::Result<(f64, super::CpuUse)> {
    let (api, addr) = Processes::api(scratch, config).await?;
    let token = token(config, "bench")?;
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let cpu = CpuMeter::start(&api.pids());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, next, sessions, token) = (
            client.clone(),
            next.clone(),
            sessions.clone(),
            token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return anyhow::Ok(());
                }
                let response = client
                    .post(format!(
                        "http://{addr}/api/sessions/{}/turns",
                        sessions[i % sessions.len()]
                    ))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({ "text": "I search the room." }))
                    .send()
                    .await?;
                anyhow::ensure!(
                    response.status().as_u16() == 202,
                    "submit failed: {}",
                    response.status()
                );
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    let cpu = cpu.stop();
    api.stop();
    Ok((rate, cpu))
}

/// `total` turns submitted one by one by `tasks` concurrent tasks.
async fn library_single(
    scratch: &Scratch,
    sessions: &Arc<Vec<uuid::Uuid>>,
    total: usize,
    tasks: usize,
) -> anyhow::Result<f64> {
    let author = UserId::parse("bench").map_err(anyhow::Error::msg)?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut running = Vec::new();
    for _ in 0..tasks {
        let (pool, next, sessions, author) = (
            scratch.pool.clone(),
            next.clone(),
            sessions.clone(),
            author.clone(),
        );
        running.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return anyhow::Ok(());
                }
                turns::submit(
                    &pool,
                    NewTurn {
                        session_id: sessions[i % sessions.len()],
                        author: &author,
                        input: "I search the room.",
                        idempotency_key: None,
                        max_attempts: 5,
                    },
                )
                .await?;
            }
        }));
    }
    for task in running {
        task.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// `total` turns submitted `batch` at a time by 4 concurrent tasks.
async fn library_batched(
    scratch: &Scratch,
    sessions: &Arc<Vec<uuid::Uuid>>,
    total: usize,
    batch: usize,
) -> anyhow::Result<f64> {
    let batch = batch.max(1);
    let author = UserId::parse("bench").map_err(anyhow::Error::msg)?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut running = Vec::new();
    for _ in 0..4 {
        let (pool, next, sessions, author) = (
            scratch.pool.clone(),
            next.clone(),
            sessions.clone(),
            author.clone(),
        );
        running.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= total {
                    return anyhow::Ok(());
                }
                super::pipeline::submit_batch(
                    &pool,
                    &sessions,
                    &author,
                    first..(first + batch).min(total),
                )
                .await?;
            }
        }));
    }
    for task in running {
        task.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}
