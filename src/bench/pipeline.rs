//! Pipeline scenarios: enqueue rate, end-to-end throughput with per-session
//! ordering, the hot session, and idle pickup latency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use questboard_core::db;
use questboard_core::identity::UserId;
use questboard_core::jobs::JobKind;
use questboard_core::sessions::{self, SessionName};
use questboard_core::turns::{self, NewTurn};
use questboard_core::wakeups::Publisher;
use sqlx::PgPool;
use tokio::sync::{Semaphore, oneshot};

use super::{BenchArgs, Figure, Scratch, runs};
use crate::app;
use crate::config::Config;

/// Runs every pipeline scenario and prints a table.
pub async fn run(config: &Config, args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let (turns_many, turns_ten, turns_hot, pickups) = if args.quick {
        (200, 100, 50, 10)
    } else {
        (20_000, 10_000, 5_000, 200)
    };
    let runs = runs(args);
    let mut figures = Vec::new();
    for sessions in args.sessions.iter().copied() {
        let total = match sessions {
            1 => turns_hot,
            2..=100 => turns_ten,
            _ => turns_many,
        };
        let sessions = if args.quick {
            sessions.min(100)
        } else {
            sessions
        };
        let mut enqueue = Figure {
            name: format!("enqueue (library, 32 clients), {sessions} sessions"),
            unit: "turns/s",
            values: Vec::new(),
        };
        let mut process = Figure {
            name: format!(
                "end to end, {sessions} session(s), {} workers x {}",
                args.workers, args.concurrency
            ),
            unit: "turns/s",
            values: Vec::new(),
        };
        for _ in 0..runs {
            let scratch = Scratch::create(config).await?;
            let (enq, done) = throughput(&scratch, config, args, sessions, total).await?;
            enqueue.values.push(enq);
            process.values.push(done);
            scratch.drop_db().await;
        }
        enqueue.print();
        process.print();
        figures.push(enqueue);
        figures.push(process);
    }
    let mut http = Figure::new(
        "enqueue via HTTP API (keep-alive, 32 clients), 100 sessions",
        "turns/s",
    );
    for _ in 0..runs {
        let scratch = Scratch::create(config).await?;
        http.values
            .push(http_enqueue(&scratch, config, if args.quick { 200 } else { 5_000 }).await?);
        scratch.drop_db().await;
    }
    http.print();
    figures.push(http);
    let mut p50 = Figure {
        name: "idle pickup p50 (enqueue -> start)".into(),
        unit: "ms",
        values: Vec::new(),
    };
    let mut p99 = Figure {
        name: "idle pickup p99".into(),
        unit: "ms",
        values: Vec::new(),
    };
    for _ in 0..runs {
        let scratch = Scratch::create(config).await?;
        let (a, b) = pickup(&scratch, config, pickups).await?;
        p50.values.push(a);
        p99.values.push(b);
        scratch.drop_db().await;
    }
    p50.print();
    p99.print();
    figures.push(p50);
    figures.push(p99);
    Ok(figures)
}

/// In-process worker runtimes on a scratch database.
pub struct Workers {
    stops: Vec<oneshot::Sender<()>>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` runtimes with the scripted provider at zero latency.
    pub async fn start(
        scratch: &Scratch,
        config: &Config,
        count: usize,
        concurrency: u32,
    ) -> anyhow::Result<Self> {
        let mut config = config.clone();
        config.scripted_latency_ms = 0;
        config.worker_concurrency = concurrency;
        config.lease_ttl_ms = 30_000;
        let mut stops = Vec::new();
        let mut handles = Vec::new();
        for _ in 0..count {
            // A slot uses a connection only for single statements: a pool
            // smaller than the slot count keeps several runtimes under
            // Postgres's default 100 connections.
            let pool = db::connect(&scratch.url, (concurrency / 2 + 2).min(16)).await?;
            let worker = app::worker(&config, pool)?;
            let (tx, rx) = oneshot::channel::<()>();
            stops.push(tx);
            handles.push(tokio::spawn(async move {
                let _ = worker
                    .run(async move {
                        let _ = rx.await;
                    })
                    .await;
            }));
        }
        Ok(Self { stops, handles })
    }

    /// Stops them all.
    pub async fn stop(self) {
        for tx in self.stops {
            let _ = tx.send(());
        }
        for handle in self.handles {
            let _ = handle.await;
        }
    }
}

/// Creates `count` sessions owned by `bench`.
pub async fn make_sessions(pool: &PgPool, count: usize) -> anyhow::Result<Vec<uuid::Uuid>> {
    let owner = UserId::parse("bench").map_err(anyhow::Error::msg)?;
    let name = SessionName::parse("bench").map_err(anyhow::Error::msg)?;
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        ids.push(sessions::create(pool, &owner, &name).await?.session.id);
    }
    Ok(ids)
}

/// Enqueues `total` turns over `sessions` sessions, then processes them.
/// Returns (enqueue rate, processing rate) in turns per second.
async fn throughput(
    scratch: &Scratch,
    config: &Config,
    args: &BenchArgs,
    sessions: usize,
    total: usize,
) -> anyhow::Result<(f64, f64)> {
    let ids = Arc::new(make_sessions(&scratch.pool, sessions).await?);
    let author = UserId::parse("bench").map_err(anyhow::Error::msg)?;
    let gate = Arc::new(Semaphore::new(32));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let permit = gate.clone().acquire_owned().await?;
        let pool = scratch.pool.clone();
        let ids = ids.clone();
        let author = author.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            turns::submit(
                &pool,
                NewTurn {
                    session_id: ids[i % ids.len()],
                    author: &author,
                    input: "I search the room.",
                    idempotency_key: None,
                    max_attempts: 5,
                },
            )
            .await
            .map(|_| ())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let enqueue_rate = total as f64 / started.elapsed().as_secs_f64();

    let workers = Workers::start(scratch, config, args.workers, args.concurrency).await?;
    let started = Instant::now();
    let cpu = super::CpuMeter::start();
    // Every turn is finished once no session is runnable (the scripted
    // provider never fails): a cheap check, where counting finished turns
    // would scan the whole table every poll and slow Postgres down.
    loop {
        let runnable: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM session_queue)")
            .fetch_one(&scratch.pool)
            .await?;
        if !runnable {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("turns still unfinished after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    let cpu = cpu.stop();
    let per = |s: f64| s * 1e6 / total as f64;
    eprintln!(
        "cpu per 1000 turns: questboard {:.0} ms, postgres {:.0} ms, redis {:.0} ms, others {:.0} ms; {rate:.0} turns/s",
        per(cpu.own),
        per(cpu.postgres),
        per(cpu.redis),
        per(cpu.others)
    );
    workers.stop().await;
    let completed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM turns WHERE status = 'completed'")
            .fetch_one(&scratch.pool)
            .await?;
    anyhow::ensure!(
        completed as usize == total,
        "{completed} of {total} turns completed"
    );
    Ok((enqueue_rate, rate))
}

/// Submits turns one at a time to an idle worker; returns the p50 and p99
/// of enqueue-to-start in milliseconds (database clock on both ends).
async fn pickup(scratch: &Scratch, config: &Config, samples: usize) -> anyhow::Result<(f64, f64)> {
    let ids = make_sessions(&scratch.pool, 1).await?;
    let author = UserId::parse("bench").map_err(anyhow::Error::msg)?;
    let workers = Workers::start(scratch, config, 1, 8).await?;
    let wake = Publisher::new(redis::Client::open(config.redis_url.expose())?);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut waits = Vec::with_capacity(samples);
    for _ in 0..samples {
        let turn = turns::submit(
            &scratch.pool,
            NewTurn {
                session_id: ids[0],
                author: &author,
                input: "ping",
                idempotency_key: None,
                max_attempts: 5,
            },
        )
        .await?
        .turn;
        wake.announce(JobKind::Turn);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let wait: Option<f64> = sqlx::query_scalar(
                "SELECT extract(epoch FROM started_at - created_at)::float8 * 1000 FROM turns
                 WHERE id = $1 AND status = 'completed'",
            )
            .bind(turn.id)
            .fetch_optional(&scratch.pool)
            .await?
            .flatten();
            if let Some(ms) = wait {
                waits.push(ms);
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "turn not picked up within 10 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Let the worker go idle again.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    workers.stop().await;
    waits.sort_by(f64::total_cmp);
    let at = |q: f64| waits[((waits.len() - 1) as f64 * q).round() as usize];
    Ok((at(0.5), at(0.99)))
}

/// Turns accepted per second through the HTTP API by 32 keep-alive clients.
async fn http_enqueue(scratch: &Scratch, config: &Config, total: usize) -> anyhow::Result<f64> {
    let config = super::bench_config(config, scratch);
    let state = app::api_state(&config).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app::serve_http(listener, state, async move {
        let _ = stop_rx.await;
    }));
    let sessions = Arc::new(make_sessions(&scratch.pool, 100).await?);
    let token = super::token(&config, "bench")?;
    let client = reqwest::Client::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (client, next, sessions, token) = (
            client.clone(),
            next.clone(),
            sessions.clone(),
            token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
    let _ = stop_tx.send(());
    let _ = server.await;
    Ok(rate)
}
