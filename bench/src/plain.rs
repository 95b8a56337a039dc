//! The plain lane against raw apalis-postgres: `N` no-op jobs committed
//! first, then run by `W` worker processes of `K` slots each, questboard's
//! runtime serving only the benchmark's no-op kind (claim under a job
//! lease, run, fenced settle; group-committed) and apalis-postgres's own
//! workers at batch 100, in the same run. The rate is measured on the
//! database clock, from the first job started to the last one finished.

use std::time::Duration;

use questboard_core::jobs::{self, Job as _};

use super::noop::Noop;
use super::processes::Processes;
use super::{BenchArgs, CpuMeter, CpuUse, Figure, Scratch, cpu_figures, runs};
use questboard::config::Config;

/// The apalis batch size compared against.
const APALIS_BATCH: usize = 100;

/// Runs the scenario and prints its rows.
pub async fn run(config: &Config, args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let total = if args.quick { 500 } else { 20_000 };
    let (w, k) = (args.workers, args.concurrency);
    let mut ours = Figure::new(
        format!("plain lane, no-op kind, {total} jobs, {w} worker processes x {k}"),
        "jobs/s",
    );
    let mut cpu = cpu_figures("plain jobs");
    let mut raw = Figure::new(
        format!(
            "raw apalis-postgres noop, {total} jobs, batch {APALIS_BATCH}, {w} processes x {k}"
        ),
        "jobs/s",
    );
    let mut raw_cpu = cpu_figures("apalis jobs (batch 100)");
    let mut ratio = Figure::new(
        format!("ratio: plain lane / raw apalis at batch {APALIS_BATCH}, same run"),
        "x",
    );
    for _ in 0..runs(args) {
        let (apalis, apalis_cpu) = Scratch::scoped(config, async |scratch| {
            super::baseline::raw_apalis(scratch, config, args, total, APALIS_BATCH).await
        })
        .await?;
        let (rate, used) = Scratch::scoped(config, async |scratch| {
            plain(scratch, config, args, total).await
        })
        .await?;
        raw.values.push(apalis);
        apalis_cpu.record(total, &mut raw_cpu);
        ours.values.push(rate);
        used.record(total, &mut cpu);
        ratio.values.push(rate / apalis);
    }
    let mut figures = vec![ours];
    figures.extend(cpu);
    figures.push(raw);
    figures.extend(raw_cpu);
    figures.push(ratio);
    for f in &figures {
        f.print();
    }
    Ok(figures)
}

async fn plain(
    scratch: &Scratch,
    config: &Config,
    args: &BenchArgs,
    total: usize,
) -> anyhow::Result<(f64, CpuUse)> {
    let queue = Noop::SPEC.queue;
    for first in (0..total).step_by(5000) {
        let items: Vec<(Vec<u8>, Option<uuid::Uuid>)> = (first..(first + 5000).min(total))
            .map(|n| Ok((jobs::encode(&Noop { n: n as u64 })?, None)))
            .collect::<anyhow::Result<_>>()?;
        let mut conn = scratch.pool.acquire().await?;
        jobs::enqueue_batch(&mut conn, &Noop::SPEC, &items).await?;
    }
    super::analyze(&scratch.pool).await?;
    let workers = Processes::noop(scratch, config, args.workers, args.concurrency)?;
    let cpu = CpuMeter::start(&workers.pids());
    super::baseline::drained(&scratch.pool, queue, Duration::from_millis(50)).await?;
    let cpu = cpu.stop();
    workers.stop();
    let (done, span): (i64, f64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'Done'),
                coalesce(extract(epoch FROM max(done_at) - min(lock_at))::float8, 0)
         FROM apalis.jobs WHERE job_type = $1",
    )
    .bind(queue)
    .fetch_one(&scratch.pool)
    .await?;
    anyhow::ensure!(
        done as usize == total,
        "{done} of {total} no-op jobs succeeded"
    );
    Ok((total as f64 / span.max(1e-6), cpu))
}
