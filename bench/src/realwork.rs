//! Turns with real work in them: 5,000 turns over 200 sessions, one worker
//! process of 10 slots, the scripted game master answering in 5 ms. With
//! ten slots busy all the time the limit is 10 x 1,000 / 5 = 2,000 turns/s;
//! the rate shows how much of each slot's time goes to anything but the
//! reply. Besides the rate: the mean time a slot spends per turn, from the
//! step that starts it to the step that records it (database clock; a
//! session's next turn starts in that same step), and how much of it is
//! not the reply: what a slot waits for between turns (the start step's
//! commit, handing the reply to the committer, the next batch).

use std::time::Duration;

use super::pipeline::{make_sessions, preload};
use super::processes::{Processes, WorkerOptions, free_port, histogram_mean};
use super::{BenchArgs, CpuMeter, Figure, Scratch, cpu_figures, runs};
use questboard::config::Config;

/// Sessions, turns, slots and the scripted reply's latency.
const SHAPE: (usize, usize, u32, u64) = (200, 5_000, 10, 5);

/// Runs the scenario and prints its rows.
pub async fn run(config: &Config, args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let (sessions, total, slots, latency) = if args.quick {
        (20, 200, SHAPE.2, SHAPE.3)
    } else {
        SHAPE
    };
    let limit = f64::from(slots) * 1000.0 / latency as f64;
    let mut rate = Figure::new(
        format!(
            "real work: {total} turns, {sessions} sessions, 1 worker x {slots}, scripted {latency} ms (limit {limit:.0}/s)"
        ),
        "turns/s",
    );
    let mut share = Figure::new("  ... share of the limit", "%");
    let mut ran = Figure::new("  ... started -> completed per turn (mean)", "ms");
    let mut gap = Figure::new("  ... of which not the reply (mean - latency)", "ms");
    let mut reply = Figure::new("  ... the reply, as the worker timed it (mean)", "ms");
    let mut commit = Figure::new("  ... one group-commit statement (mean)", "ms");
    let mut batch = Figure::new("  ... steps per group-commit statement (mean)", "steps");
    let mut cpu = cpu_figures("turns (real work)");
    for _ in 0..runs(args) {
        let result = Scratch::scoped(config, async |scratch| {
            let ids = make_sessions(&scratch.pool, sessions).await?;
            preload(&scratch.pool, &ids, total).await?;
            super::analyze(&scratch.pool).await?;
            let port = free_port()?;
            let worker = Processes::workers(
                scratch,
                config,
                &WorkerOptions {
                    count: 1,
                    concurrency: slots,
                    latency_ms: latency,
                    metrics_port: Some(port),
                    ..WorkerOptions::turns(1, slots)
                },
            )?;
            let meter = CpuMeter::start(&worker.pids());
            super::pipeline::until_drained(&scratch.pool, Duration::from_secs(600)).await?;
            let used = meter.stop();
            let timings = (
                histogram_mean(port, "questboard_provider_request_seconds").await? * 1000.0,
                histogram_mean(port, "questboard_commit_seconds").await? * 1000.0,
                histogram_mean(port, "questboard_commit_batch_steps").await?,
            );
            worker.stop();
            let (completed, span, mean_ran): (i64, f64, f64) = sqlx::query_as(
                "SELECT count(*),
                        coalesce(extract(epoch FROM max(completed_at) - min(started_at))::float8, 0),
                        coalesce(avg(extract(epoch FROM completed_at - started_at))::float8, 0) * 1000
                 FROM turns WHERE status = 'completed'",
            )
            .fetch_one(&scratch.pool)
            .await?;
            anyhow::ensure!(
                completed as usize == total,
                "{completed} of {total} turns completed"
            );
            Ok((
                total as f64 / span.max(1e-6),
                mean_ran,
                mean_ran - latency as f64,
                used,
                timings,
            ))
        })
        .await?;
        rate.values.push(result.0);
        share.values.push(100.0 * result.0 / limit);
        ran.values.push(result.1);
        gap.values.push(result.2);
        result.3.record(total, &mut cpu);
        reply.values.push(result.4.0);
        commit.values.push(result.4.1);
        batch.values.push(result.4.2);
    }
    let mut figures = vec![rate, share, ran, gap, reply, commit, batch];
    figures.extend(cpu);
    for f in &figures {
        f.print();
    }
    Ok(figures)
}
