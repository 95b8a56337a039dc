//! Baselines measured on the same database in the same run, so the
//! pipeline's figures can be read as ratios:
//! - **raw apalis-postgres**: noop jobs pushed in bulk, then run by apalis's
//!   own workers (no leases, no events, no ordering);
//! - **the Postgres ceiling**: the bare minimum a queue needs: single-row
//!   inserts, and claim + complete with `FOR UPDATE SKIP LOCKED`, one and
//!   ten rows per transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_postgres::PostgresStorage;
use questboard_core::db;

use super::{BenchArgs, Figure, Scratch, runs, wait_for};
use crate::config::Config;

/// Clients used by the ceiling scenarios.
const CLIENTS: usize = 16;

/// Runs the baselines and prints their rows.
pub async fn run(config: &Config, args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let jobs = if args.quick { 500 } else { 20_000 };
    let seconds = if args.quick { 1.0 } else { 5.0 };
    let mut figures = Vec::new();
    for batch in [10usize, 100] {
        let mut f = Figure::new(
            format!(
                "raw apalis-postgres noop, batch {batch}, {} workers x {}",
                args.workers, args.concurrency
            ),
            "jobs/s",
        );
        for _ in 0..runs(args) {
            let scratch = Scratch::create(config).await?;
            f.values
                .push(raw_apalis(&scratch, args, jobs, batch).await?);
            scratch.drop_db().await;
        }
        f.print();
        figures.push(f);
    }
    let mut insert = Figure::new(
        format!("Postgres ceiling: single-row insert, {CLIENTS} clients"),
        "rows/s",
    );
    let mut claim1 = Figure::new(
        format!("Postgres ceiling: claim+complete 1 per tx, {CLIENTS} clients"),
        "jobs/s",
    );
    let mut claim10 = Figure::new(
        format!("Postgres ceiling: claim+complete 10 per tx, {CLIENTS} clients"),
        "jobs/s",
    );
    for _ in 0..runs(args) {
        let scratch = Scratch::create(config).await?;
        insert.values.push(ceiling_insert(&scratch, seconds).await?);
        claim1
            .values
            .push(ceiling_claim(&scratch, seconds, 1).await?);
        claim10
            .values
            .push(ceiling_claim(&scratch, seconds, 10).await?);
        scratch.drop_db().await;
    }
    for f in [insert, claim1, claim10] {
        f.print();
        figures.push(f);
    }
    Ok(figures)
}

async fn noop(_job: u64) -> Result<(), BoxDynError> {
    Ok(())
}

async fn raw_apalis(
    scratch: &Scratch,
    args: &BenchArgs,
    jobs: usize,
    batch: usize,
) -> anyhow::Result<f64> {
    let queue = "bench.noop";
    let mut pusher = PostgresStorage::<u64>::new(&scratch.pool)
        .with_config(apalis_postgres::Config::default().queue(queue));
    for chunk in (0..jobs as u64).collect::<Vec<_>>().chunks(1000) {
        let mut tasks = futures::stream::iter(chunk.iter().map(|i| TaskBuilder::new(*i).build()));
        pusher.push_all(&mut tasks).await?;
    }
    let mut workers = Vec::new();
    let started = Instant::now();
    for w in 0..args.workers {
        let pool = db::connect(&scratch.url, 8).await?;
        let config = apalis_postgres::Config::default()
            .queue(queue)
            .batch_size(batch)
            .heartbeat_interval(Duration::from_millis(100));
        let backend = PostgresStorage::<u64>::new(&pool).with_config(config);
        let worker = WorkerBuilder::new(format!("bench-noop-{w}"))
            .backend(backend)
            .concurrency(args.concurrency as usize)
            .build(noop);
        workers.push(tokio::spawn(async move {
            let _ = worker.run().await;
        }));
    }
    let pool = scratch.pool.clone();
    wait_for(Duration::from_secs(600), || {
        let pool = pool.clone();
        async move {
            let done: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM apalis.jobs WHERE job_type = $1 AND status = 'Done'",
            )
            .bind(queue)
            .fetch_one(&pool)
            .await?;
            Ok(done as usize >= jobs)
        }
    })
    .await?;
    let rate = jobs as f64 / started.elapsed().as_secs_f64();
    for worker in workers {
        worker.abort();
    }
    Ok(rate)
}

async fn ceiling_table(scratch: &Scratch) -> anyhow::Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS bench_ceiling (
             id bigserial PRIMARY KEY, status smallint NOT NULL DEFAULT 0, payload text NOT NULL)",
    )
    .execute(&scratch.pool)
    .await?;
    sqlx::query(
        "CREATE INDEX IF NOT EXISTS bench_ceiling_pending ON bench_ceiling (id) WHERE status = 0",
    )
    .execute(&scratch.pool)
    .await?;
    Ok(())
}

/// Runs `CLIENTS` loops of `step` for `seconds`; returns units per second.
async fn clients<F, Fut>(seconds: f64, step: F) -> anyhow::Result<f64>
where
    F: Fn() -> Fut + Send + Sync + 'static + Clone,
    Fut: Future<Output = anyhow::Result<u64>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (stop, done, step) = (stop.clone(), done.clone(), step.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                done.fetch_add(step().await?, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

async fn ceiling_insert(scratch: &Scratch, seconds: f64) -> anyhow::Result<f64> {
    ceiling_table(scratch).await?;
    let pool = db::connect(&scratch.url, CLIENTS as u32).await?;
    clients(seconds, move || {
        let pool = pool.clone();
        async move {
            sqlx::query("INSERT INTO bench_ceiling (payload) VALUES ('x')")
                .execute(&pool)
                .await?;
            Ok(1)
        }
    })
    .await
}

async fn ceiling_claim(scratch: &Scratch, seconds: f64, per_tx: i64) -> anyhow::Result<f64> {
    ceiling_table(scratch).await?;
    // Enough pending rows that the clients never run dry.
    sqlx::query("INSERT INTO bench_ceiling (payload) SELECT 'x' FROM generate_series(1, 300000)")
        .execute(&scratch.pool)
        .await?;
    sqlx::query("ANALYZE bench_ceiling")
        .execute(&scratch.pool)
        .await?;
    let pool = db::connect(&scratch.url, CLIENTS as u32).await?;
    clients(seconds, move || {
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await?;
            let ids: Vec<i64> = sqlx::query_scalar(
                "SELECT id FROM bench_ceiling WHERE status = 0 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
            )
            .bind(per_tx)
            .fetch_all(&mut *tx)
            .await?;
            sqlx::query("UPDATE bench_ceiling SET status = 2 WHERE id = ANY($1)")
                .bind(&ids)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(ids.len() as u64)
        }
    })
    .await
}
