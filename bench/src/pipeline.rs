//! Pipeline scenarios: end-to-end turns per second with per-session
//! ordering, against raw apalis-postgres in the same run; the hot session;
//! idle pickup latency.
//!
//! Turns are committed first (`turns::submit_many`), then `W` worker
//! processes start and run them with the scripted game master at zero
//! latency. The rate is measured on the database clock, from the first turn
//! started to the last one completed, so process start-up and polling do
//! not count (for raw apalis alike: first fetch to last completion). The
//! tables are analyzed after loading, for both (see [`super::analyze`]).

use std::time::Duration;

use questboard_core::identity::UserId;
use questboard_core::sessions::{self, SessionName};
use questboard_core::turns::{self, NewTurn};
use questboard_core::wakeups::Publisher;
use sqlx::PgPool;

use super::processes::{Processes, WorkerOptions};
use super::{
    BenchArgs, CpuMeter, CpuUse, Figure, Scratch, cpu_figures, percentile, runs, wait_for,
};
use questboard::config::Config;

/// Runs the pipeline scenarios and prints their rows.
pub async fn run(config: &Config, args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let (w, k) = (args.workers, args.concurrency);
    for (index, &sessions) in args.sessions.iter().enumerate() {
        let sessions = if args.quick {
            sessions.min(100)
        } else {
            sessions
        };
        let total = turns_for(sessions, args.quick);
        let mut ours = Figure::new(
            format!(
                "end to end, {sessions} session(s), {total} turns, {w} worker processes x {k}{}",
                config
                    .llm_requests_per_minute
                    .map(|rpm| format!(", limit {rpm} requests/min"))
                    .unwrap_or_default()
            ),
            "turns/s",
        );
        let mut cpu = cpu_figures("turns");
        // The largest session count is compared with raw apalis-postgres,
        // each run against the same run's baselines.
        let compare = index == 0;
        let mut raw: Vec<Figure> = args
            .apalis_batches
            .iter()
            .map(|b| {
                Figure::new(
                    format!(
                        "raw apalis-postgres noop, {total} jobs, batch {b}, {w} processes x {k}"
                    ),
                    "jobs/s",
                )
            })
            .collect();
        let mut raw_cpu = cpu_figures("apalis jobs (best batch)");
        let mut ratio = Figure::new(
            format!("ratio: {sessions} sessions / raw apalis at its best batch, same run"),
            "x",
        );
        for _ in 0..runs(args) {
            let mut best: Option<(f64, CpuUse)> = None;
            if compare {
                for (figure, batch) in raw.iter_mut().zip(&args.apalis_batches) {
                    let (rate, used) = Scratch::scoped(config, async |scratch| {
                        super::baseline::raw_apalis(scratch, config, args, total, *batch).await
                    })
                    .await?;
                    figure.values.push(rate);
                    if best.is_none_or(|(b, _)| rate > b) {
                        best = Some((rate, used));
                    }
                }
            }
            let (rate, used) = Scratch::scoped(config, async |scratch| {
                throughput(scratch, config, args, sessions, total).await
            })
            .await?;
            ours.values.push(rate);
            used.record(total, &mut cpu);
            if let Some((best, best_cpu)) = best {
                ratio.values.push(rate / best);
                best_cpu.record(total, &mut raw_cpu);
            }
        }
        let mut group = vec![ours];
        group.extend(cpu);
        if compare {
            group.extend(raw);
            group.extend(raw_cpu);
            group.push(ratio);
        }
        for f in &group {
            f.print();
        }
        figures.extend(group);
    }

    let samples = if args.quick { 10 } else { 200 };
    let mut p50 = Figure::new("idle pickup p50 (commit -> started, database clock)", "ms");
    let mut p99 = Figure::new("idle pickup p99", "ms");
    for _ in 0..runs(args) {
        let (a, b) = Scratch::scoped(config, async |scratch| {
            pickup(scratch, config, samples).await
        })
        .await?;
        p50.values.push(a);
        p99.values.push(b);
    }
    for f in [p50, p99] {
        f.print();
        figures.push(f);
    }
    Ok(figures)
}

/// Turns run over `sessions` sessions (20 per session, at least 5,000).
fn turns_for(sessions: usize, quick: bool) -> usize {
    if quick {
        return (sessions * 2).max(50);
    }
    match sessions {
        1 => 5_000,
        2..=100 => 10_000,
        n => n * 20,
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

/// Commits `total` turns over `sessions` sessions, 1,000 per transaction.
pub async fn preload(pool: &PgPool, sessions: &[uuid::Uuid], total: usize) -> anyhow::Result<()> {
    let author = UserId::parse("bench").map_err(anyhow::Error::msg)?;
    for first in (0..total).step_by(1000) {
        submit_batch(pool, sessions, &author, first..(first + 1000).min(total)).await?;
    }
    Ok(())
}

/// Submits turns number `range` (turn `i` goes to session `i` modulo the
/// session count) with one [`turns::submit_many`] call.
pub async fn submit_batch(
    pool: &PgPool,
    sessions: &[uuid::Uuid],
    author: &UserId,
    range: std::ops::Range<usize>,
) -> anyhow::Result<()> {
    let news: Vec<NewTurn<'_>> = range
        .map(|i| NewTurn {
            session_id: sessions[i % sessions.len()],
            author,
            input: "I search the room.",
            idempotency_key: None,
            max_attempts: 5,
        })
        .collect();
    for outcome in turns::submit_many(pool, &news, Default::default()).await? {
        outcome?;
    }
    Ok(())
}

/// Commits `total` turns over `sessions` sessions, then runs them with
/// `args.workers` worker processes. Returns turns per second (first start
/// to last completion, database clock) and the CPU spent meanwhile.
pub(crate) async fn throughput(
    scratch: &Scratch,
    config: &Config,
    args: &BenchArgs,
    sessions: usize,
    total: usize,
) -> anyhow::Result<(f64, CpuUse)> {
    let ids = make_sessions(&scratch.pool, sessions).await?;
    preload(&scratch.pool, &ids, total).await?;
    super::analyze(&scratch.pool).await?;
    drain(
        scratch,
        config,
        &WorkerOptions {
            // The workers' shared limit: `--llm-requests-per-minute`
            // (`QB_LLM_REQUESTS_PER_MINUTE`) of this command.
            llm_requests_per_minute: config.llm_requests_per_minute,
            ..WorkerOptions::turns(args.workers, args.concurrency)
        },
        &ids,
        total,
    )
    .await
}

/// Waits until every committed turn is finished: no session is runnable
/// (the scripted game master never fails). A cheap check, where counting
/// finished turns would scan the table on every poll.
pub(crate) async fn until_drained(pool: &PgPool, limit: Duration) -> anyhow::Result<()> {
    wait_for(limit, Duration::from_millis(50), || {
        let pool = pool.clone();
        async move {
            let runnable: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM session_queue)")
                .fetch_one(&pool)
                .await?;
            Ok(!runnable)
        }
    })
    .await
}

/// Runs the `total` turns committed on sessions `ids` with worker
/// processes started as `options` says; returns as [`throughput`].
pub(crate) async fn drain(
    scratch: &Scratch,
    config: &Config,
    options: &WorkerOptions,
    ids: &[uuid::Uuid],
    total: usize,
) -> anyhow::Result<(f64, CpuUse)> {
    let workers = Processes::workers(scratch, config, options)?;
    let cpu = CpuMeter::start(&workers.pids());
    until_drained(&scratch.pool, Duration::from_secs(600)).await?;
    let cpu = cpu.stop();
    workers.stop();
    // Only these sessions' turns: the database may hold history (the
    // `history` scenario).
    let (completed, span): (i64, f64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'completed'),
                coalesce(extract(epoch FROM max(completed_at) - min(started_at))::float8, 0)
         FROM turns WHERE session_id = ANY($1)",
    )
    .bind(ids)
    .fetch_one(&scratch.pool)
    .await?;
    anyhow::ensure!(
        completed as usize == total,
        "{completed} of {total} turns completed"
    );
    Ok((total as f64 / span.max(1e-6), cpu))
}

/// Submits turns one at a time to an idle worker process; returns the p50
/// and p99 of commit-to-start in milliseconds (database clock on both ends).
async fn pickup(scratch: &Scratch, config: &Config, samples: usize) -> anyhow::Result<(f64, f64)> {
    let ids = make_sessions(&scratch.pool, 1).await?;
    let author = UserId::parse("bench").map_err(anyhow::Error::msg)?;
    let worker = Processes::workers(scratch, config, &WorkerOptions::turns(1, 8))?;
    let wake = Publisher::new(config.shared_bus()?);
    // Let the worker connect and subscribe to wake-ups.
    tokio::time::sleep(Duration::from_secs(1)).await;
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
        wake.announce("turn");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let wait = loop {
            let wait: Option<f64> = sqlx::query_scalar(
                "SELECT extract(epoch FROM started_at - created_at)::float8 * 1000 FROM turns
                 WHERE id = $1 AND status = 'completed'",
            )
            .bind(turn.id)
            .fetch_optional(&scratch.pool)
            .await?
            .flatten();
            if wait.is_some() {
                break wait;
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "turn not picked up within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        waits.extend(wait);
        // Let the worker go idle again.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.stop();
    waits.sort_by(f64::total_cmp);
    Ok((percentile(&waits, 0.5), percentile(&waits, 0.99)))
}
