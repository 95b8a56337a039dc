//! Baselines measured on the same Postgres in the same run, so the
//! pipeline's figures can be read as ratios:
//! - **raw apalis-postgres**: noop jobs inserted in bulk, then run by
//!   apalis's own workers in worker processes (no leases, no events, no
//!   ordering), at several batch sizes;
//! - **the Postgres ceiling**: the bare minimum a queue needs: single-row
//!   inserts, and claim + complete with `FOR UPDATE SKIP LOCKED`, one and
//!   ten rows per transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_postgres::PostgresStorage;
use questboard_core::db;

use super::processes::Processes;
use super::{BenchArgs, CpuUse, Figure, Scratch, runs, wait_for};
use questboard::config::Config;

/// Clients used by the ceiling scenarios.
const CLIENTS: usize = 16;
/// The apalis queue of the noop jobs.
const QUEUE: &str = "bench.noop";

/// Runs the Postgres ceiling scenarios and prints their rows (the raw
/// apalis comparison runs with the pipeline, see [`super::pipeline`]).
pub async fn run(config: &Config, args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let seconds = if args.quick { 1.0 } else { 5.0 };
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
        let (a, b, c) = Scratch::scoped(config, async |scratch| {
            Ok((
                ceiling_insert(scratch, seconds).await?,
                ceiling_claim(scratch, seconds, 1).await?,
                ceiling_claim(scratch, seconds, 10).await?,
            ))
        })
        .await?;
        insert.values.push(a);
        claim1.values.push(b);
        claim10.values.push(c);
    }
    let figures = vec![insert, claim1, claim10];
    for f in &figures {
        f.print();
    }
    Ok(figures)
}

async fn noop(_job: u64) -> Result<(), BoxDynError> {
    Ok(())
}

/// Runs an apalis-postgres worker for noop jobs on `DATABASE_URL`, fetching
/// `batch` at a time, `concurrency` at once, until the process is killed.
pub async fn serve_noop_worker(
    config: &Config,
    batch: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let pool = db::connect(config.database_url(), 8).await?;
    let backend = PostgresStorage::<u64>::new(&pool).with_config(
        apalis_postgres::Config::default()
            .queue(QUEUE)
            .batch_size(batch.max(1))
            .heartbeat_interval(Duration::from_millis(100)),
    );
    let worker = WorkerBuilder::new(format!("bench-noop-{}", std::process::id()))
        .backend(backend)
        .concurrency(concurrency.max(1))
        .build(noop);
    worker.run().await?;
    Ok(())
}

/// `jobs` noop jobs committed at once, then run by `args.workers` apalis
/// worker processes fetching `batch` at a time. Returns jobs per second over
/// the span from the first fetch to the last completion (database clock),
/// and the CPU spent meanwhile.
pub async fn raw_apalis(
    scratch: &Scratch,
    config: &Config,
    args: &BenchArgs,
    jobs: usize,
    batch: usize,
) -> anyhow::Result<(f64, CpuUse)> {
    let mut tx = scratch.pool.begin().await?;
    for chunk in (0..jobs as u64).collect::<Vec<_>>().chunks(1000) {
        let tasks = chunk
            .iter()
            .map(|i| TaskBuilder::new(serde_json::to_vec(i).unwrap_or_default()).build())
            .collect();
        apalis_postgres::queries::push_tasks(&mut *tx, QUEUE, tasks).await?;
    }
    tx.commit().await?;
    super::analyze(&scratch.pool).await?;
    let workers = Processes::apalis(scratch, config, args.workers, args.concurrency, batch)?;
    let cpu = super::CpuMeter::start(&workers.pids());
    drained(&scratch.pool, QUEUE, Duration::from_millis(200)).await?;
    let cpu = cpu.stop();
    workers.stop();
    let span: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM max(done_at) - min(lock_at))::float8
         FROM apalis.jobs WHERE job_type = $1",
    )
    .bind(QUEUE)
    .fetch_one(&scratch.pool)
    .await?;
    Ok((jobs as f64 / span.max(1e-6), cpu))
}

/// Waits (checking every `every`, ten minutes at most) until every job of
/// `queue` is done or dead.
pub async fn drained(pool: &sqlx::PgPool, queue: &str, every: Duration) -> anyhow::Result<()> {
    wait_for(Duration::from_secs(600), every, || {
        let pool = pool.clone();
        async move {
            let left: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM apalis.jobs
                                WHERE job_type = $1 AND status NOT IN ('Done', 'Killed'))",
            )
            .bind(queue)
            .fetch_one(&pool)
            .await?;
            Ok(!left)
        }
    })
    .await
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
