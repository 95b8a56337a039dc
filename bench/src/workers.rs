//! Worker processes on one database: the end-to-end rate of 20,000 turns
//! over 1,000 sessions with 1, 2, 4 and 8 `questboard work` processes
//! (`--worker-counts`), each of `--concurrency` sessions, and why adding
//! one stops helping.
//!
//! Every process keeps the per-process pool of production (12
//! connections) while they fit Postgres' `max_connections` next to this
//! benchmark's own pool; past that each gets an equal share of 72. While
//! the workers run, one connection samples `pg_stat_activity` every 20 ms:
//! how many of the database's backends are busy, and what the busy ones
//! wait for (nothing: on the CPU; `Lock`: a row or table lock held by
//! another transaction; `LWLock`: Postgres' internal locks, such as the WAL
//! insertion lock; `IO`; `IPC`, such as waiting for the WAL flush of a
//! group commit). With the CPU each kind of process spent per 1,000 turns,
//! that says whether the limit is locks, connections or the machine.
//!
//! Each run also counts what a turn writes (rows inserted, updated and
//! deleted in the scratch database, from `pg_stat_user_tables`, submission
//! included) and asks of Redis (`PUBLISH` calls and all commands, from
//! `INFO commandstats`; keep Redis otherwise quiet): the per-turn costs of
//! `docs/capacity.md`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::pipeline::{drain, make_sessions, preload};
use super::processes::WorkerOptions;
use super::{BenchArgs, Figure, Scratch, cpu_figures, runs};
use questboard::config::Config;

/// Connections shared by the worker processes once 12 each do not fit.
const SHARED_CONNECTIONS: u32 = 72;

/// Runs the scenario and prints its rows.
pub async fn run(config: &Config, args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let (sessions, total) = if args.quick {
        (50, 500)
    } else {
        (1000, 20_000)
    };
    let mut figures = Vec::new();
    for &count in &args.worker_counts {
        let connections = (SHARED_CONNECTIONS / count.max(1) as u32).clamp(1, 12);
        let mut rate = Figure::new(
            format!(
                "{count} worker process(es) x {} sessions, {connections} connections each: \
                 {total} turns over {sessions} sessions",
                args.concurrency
            ),
            "turns/s",
        );
        let mut cpu = cpu_figures("turns");
        let mut busy = Figure::new("  ... busy backends (mean of 20 ms samples)", "backends");
        let mut footprint: Vec<Figure> = [
            "  ... rows inserted per turn",
            "  ... rows updated per turn",
            "  ... rows deleted per turn",
            "  ... Redis PUBLISH per turn",
            "  ... Redis commands per turn",
        ]
        .into_iter()
        .map(|name| Figure::new(name, ""))
        .collect();
        let mut waits: Vec<Figure> = WAITS
            .iter()
            .map(|w| Figure::new(format!("  ... of them waiting on {w}"), "%"))
            .collect();
        for _ in 0..runs(args) {
            let (r, used, sample, spent) = Scratch::scoped(config, async |scratch| {
                let ids = make_sessions(&scratch.pool, sessions).await?;
                let before = Footprint::read(scratch, config).await?;
                preload(&scratch.pool, &ids, total).await?;
                super::analyze(&scratch.pool).await?;
                let stop = Arc::new(AtomicBool::new(false));
                let sampler = tokio::spawn(sample_waits(scratch.url.clone(), stop.clone()));
                let options = WorkerOptions {
                    db_connections: connections,
                    ..WorkerOptions::turns(count, args.concurrency)
                };
                let outcome = drain(scratch, config, &options, &ids, total).await;
                stop.store(true, Ordering::Relaxed);
                let sample = sampler.await??;
                let (r, used) = outcome?;
                // Exited backends have flushed their statistics.
                tokio::time::sleep(Duration::from_secs(1)).await;
                let spent = Footprint::read(scratch, config).await?.since(&before);
                Ok((r, used, sample, spent))
            })
            .await?;
            rate.values.push(r);
            used.record(total, &mut cpu);
            busy.values.push(sample.busy());
            for (figure, n) in footprint.iter_mut().zip(spent) {
                figure.values.push(n / total as f64);
            }
            for (figure, share) in waits.iter_mut().zip(sample.shares()) {
                figure.values.push(share);
            }
        }
        let mut group = vec![rate];
        group.extend(cpu);
        group.extend(footprint);
        group.push(busy);
        group.extend(waits);
        for f in &group {
            f.print();
        }
        figures.extend(group);
    }
    Ok(figures)
}

/// The wait kinds reported, `CPU` meaning none.
const WAITS: [&str; 5] = ["CPU", "Lock", "LWLock", "IPC", "IO"];

/// Busy backends counted by what they wait on, over all samples.
#[derive(Default)]
struct Sample {
    samples: u64,
    by_wait: [u64; WAITS.len() + 1],
}

impl Sample {
    fn busy(&self) -> f64 {
        self.by_wait.iter().sum::<u64>() as f64 / self.samples.max(1) as f64
    }

    /// Each of [`WAITS`] in percent of the busy backends.
    fn shares(&self) -> Vec<f64> {
        let all = self.by_wait.iter().sum::<u64>().max(1) as f64;
        self.by_wait[..WAITS.len()]
            .iter()
            .map(|&n| n as f64 * 100.0 / all)
            .collect()
    }
}

/// Samples the scratch database's busy backends (but its own) until `stop`.
async fn sample_waits(url: String, stop: Arc<AtomicBool>) -> anyhow::Result<Sample> {
    let pool = questboard_core::db::connect(&url, 1).await?;
    let mut sample = Sample::default();
    while !stop.load(Ordering::Relaxed) {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT coalesce(wait_event_type, 'CPU'), count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND state = 'active'
               AND pid <> pg_backend_pid() AND backend_type = 'client backend'
             GROUP BY 1",
        )
        .fetch_all(&pool)
        .await?;
        sample.samples += 1;
        for (wait, n) in rows {
            let i = WAITS.iter().position(|w| *w == wait).unwrap_or(WAITS.len());
            sample.by_wait[i] += n as u64;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(sample)
}

/// Rows written in the scratch database and Redis commands so far.
struct Footprint([f64; 5]);

impl Footprint {
    async fn read(scratch: &Scratch, config: &Config) -> anyhow::Result<Self> {
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&scratch.pool)
            .await?;
        let (ins, upd, del): (f64, f64, f64) = sqlx::query_as(
            "SELECT coalesce(sum(n_tup_ins), 0)::float8, coalesce(sum(n_tup_upd), 0)::float8,
                    coalesce(sum(n_tup_del), 0)::float8
             FROM pg_stat_user_tables",
        )
        .fetch_one(&scratch.pool)
        .await?;
        let url = config
            .redis_url
            .as_ref()
            .map_or("redis://127.0.0.1:6379", |u| u.expose());
        let mut redis = redis::Client::open(url)?
            .get_multiplexed_async_connection()
            .await?;
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut redis)
            .await?;
        let (mut publish, mut commands) = (0.0, 0.0);
        for line in stats.lines() {
            let Some((name, rest)) = line.split_once(':') else {
                continue;
            };
            let calls: f64 = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0.0);
            if name == "cmdstat_publish" || name == "cmdstat_spublish" {
                publish += calls;
            }
            if name.starts_with("cmdstat_") {
                commands += calls;
            }
        }
        Ok(Self([ins, upd, del, publish, commands]))
    }

    /// What was spent since `before`.
    fn since(&self, before: &Self) -> [f64; 5] {
        std::array::from_fn(|i| self.0[i] - before.0[i])
    }
}
