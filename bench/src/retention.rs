//! Pruning at scale: a million finished job rows, and turns submitted the
//! whole time. The `prune` job (jobs only, as the daily schedule runs it)
//! runs in a `questboard work` process serving only `prune`; meanwhile 8
//! tasks submit turns one by one (`turns::submit`), timing each, and one
//! connection samples `pg_locks` every 5 ms for the longest lock wait in
//! progress. Reported: rows deleted per second (the job's run time on the
//! database clock), the longest lock wait seen while it ran, and the
//! submissions' p99 and maximum latency before and during the prune.
//!
//! [`events`] prunes a session event table of 10 million old rows
//! (`--prune-event-rows`) the same way, with the events category, while
//! a turn worker runs the submitted turns (each writing its events into
//! the table being pruned); it adds the turns' commit -> completed p99
//! (database clock) before and during the prune.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use questboard_core::identity::UserId;
use questboard_core::jobs::{self, Job as _};
use questboard_core::turns::{self, NewTurn};
use questboard_workers::jobs::prune::{Category, Prune};
use tokio::sync::Mutex;

use super::pipeline::make_sessions;
use super::processes::{Processes, WorkerOptions};
use super::{BenchArgs, Figure, Scratch, percentile, runs, wait_for};
use questboard::config::Config;

/// Submitting tasks.
const SUBMITTERS: usize = 8;

struct Outcome {
    rate: f64,
    seconds: f64,
    lock_wait_ms: f64,
    /// The same, before the prune started.
    lock_wait_before_ms: f64,
    before: (f64, f64),
    during: (f64, f64),
    /// Turns' commit -> completed p99 before and during (events only).
    turns: (f64, f64),
}

/// What is pruned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Jobs,
    Events,
}

impl Target {
    fn category(self) -> Category {
        match self {
            Target::Jobs => Category::Jobs,
            Target::Events => Category::Events,
        }
    }

    /// The prune report's count of it.
    fn field(self) -> &'static str {
        match self {
            Target::Jobs => "jobs",
            Target::Events => "events",
        }
    }
}

/// Runs the scenario and prints its rows.
pub async fn run(config: &Config, args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let rows = if args.quick { 20_000 } else { args.prune_rows };
    scenario(config, args, Target::Jobs, rows).await
}

/// Pruning `--prune-event-rows` old session events while turns run.
pub async fn events(config: &Config, args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let rows = if args.quick {
        20_000
    } else {
        args.prune_event_rows
    };
    scenario(config, args, Target::Events, rows).await
}

async fn scenario(
    config: &Config,
    args: &BenchArgs,
    target: Target,
    rows: usize,
) -> anyhow::Result<Vec<Figure>> {
    let mut rate = Figure::new(
        match target {
            Target::Jobs => format!("prune: {rows} finished job rows, turns submitted meanwhile"),
            Target::Events => format!("prune: {rows} session events, turns running meanwhile"),
        },
        "rows/s",
    );
    let mut seconds = Figure::new("  ... prune run time", "s");
    let mut lock = Figure::new(
        "  ... longest lock wait seen while it ran (pg_locks, 5 ms samples)",
        "ms",
    );
    let mut lock_before = Figure::new("  ... longest lock wait seen before it started", "ms");
    let mut before99 = Figure::new("  ... turn submission p99 before the prune", "ms");
    let mut before_max = Figure::new("  ... turn submission max before the prune", "ms");
    let mut during99 = Figure::new("  ... turn submission p99 during the prune", "ms");
    let mut during_max = Figure::new("  ... turn submission max during the prune", "ms");
    let mut turns_before = Figure::new(
        "  ... turn commit -> completed p99 before the prune (database clock)",
        "ms",
    );
    let mut turns_during = Figure::new("  ... turn commit -> completed p99 during the prune", "ms");
    for _ in 0..runs(args) {
        let o = Scratch::scoped(config, async |scratch| {
            measure(scratch, config, target, rows).await
        })
        .await?;
        rate.values.push(o.rate);
        seconds.values.push(o.seconds);
        lock.values.push(o.lock_wait_ms);
        lock_before.values.push(o.lock_wait_before_ms);
        before99.values.push(o.before.0);
        before_max.values.push(o.before.1);
        during99.values.push(o.during.0);
        during_max.values.push(o.during.1);
        turns_before.values.push(o.turns.0);
        turns_during.values.push(o.turns.1);
    }
    let mut figures = vec![
        rate,
        seconds,
        lock,
        lock_before,
        before99,
        before_max,
        during99,
        during_max,
    ];
    if target == Target::Events {
        figures.extend([turns_before, turns_during]);
    }
    for f in &figures {
        f.print();
    }
    Ok(figures)
}

/// Finished job rows, nine days old (past the seven days succeeded jobs
/// are kept), with ids of their time; and a tenth as many recent ones that
/// must stay.
async fn load(scratch: &Scratch, rows: usize) -> anyhow::Result<()> {
    let nine_days_ago = Utc::now() - chrono::TimeDelta::days(9);
    let recent = Utc::now() - chrono::TimeDelta::hours(1);
    for (count, base) in [(rows, nine_days_ago), (rows / 10, recent)] {
        finished_jobs(&scratch.pool, count, |i| {
            base + chrono::TimeDelta::milliseconds((i / 10) as i64)
        })
        .await?;
    }
    Ok(())
}

/// Inserts `count` finished turn jobs, the `i`-th done at `at(i)`, with
/// ids of their time, 20,000 per statement.
pub(crate) async fn finished_jobs(
    pool: &sqlx::PgPool,
    count: usize,
    at: impl Fn(usize) -> chrono::DateTime<Utc>,
) -> anyhow::Result<()> {
    for first in (0..count).step_by(20_000) {
        let n = (first + 20_000).min(count) - first;
        let mut ids = Vec::with_capacity(n);
        let mut times = Vec::with_capacity(n);
        for i in first..first + n {
            let at = at(i);
            ids.push(
                ulid::Ulid::from_parts(at.timestamp_millis() as u64, rand_bits(i)).to_string(),
            );
            times.push(at);
        }
        sqlx::query(
            "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at,
                                      lock_at, done_at, priority, last_result)
             SELECT i.id, 'questboard.turn', '\\x7b7d'::bytea, 'Done', 1, 5, i.at, i.at,
                    i.at + interval '1 second', 0, '{\"Ok\": {}}'::jsonb
             FROM unnest($1::text[], $2::timestamptz[]) AS i(id, at)",
        )
        .bind(&ids)
        .bind(&times)
        .execute(pool)
        .await?;
    }
    Ok(())
}

fn rand_bits(i: usize) -> u128 {
    // Distinct, well spread low bits; ids only need to be unique.
    (i as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835) >> 48
}

/// `rows` session events 31 to 61 days old (past the 30 days events are
/// kept), in the shape of `history`: a tenth in ten long campaigns, the
/// rest 100 per session; and after each session's old events a tenth as
/// many from the last hour, which must stay.
async fn load_events(scratch: &Scratch, rows: usize) -> anyhow::Result<()> {
    let rows = rows as i64;
    let long = (rows / 100).max(1);
    let short = ((rows - 10 * long) / 100).max(0);
    let mut tx = scratch.pool.begin().await?;
    sqlx::query(
        "CREATE TEMP TABLE old ON COMMIT DROP AS
         SELECT n, gen_random_uuid() AS id,
                CASE WHEN n <= 10 THEN $1 ELSE 100 END::bigint AS events
         FROM generate_series(1, 10 + $2) AS n",
    )
    .bind(long)
    .bind(short)
    .execute(&mut *tx)
    .await?;
    super::history::insert_sessions(
        &mut tx,
        "old",
        "'90 days'",
        "'1 hour'",
        ("1", "events + events / 10 + 1"),
    )
    .await?;
    sqlx::query("ALTER TABLE session_events DISABLE TRIGGER session_events_outbox")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO session_events (session_id, seq, type, at, data)
         SELECT o.id, g, 'turn.completed',
                CASE WHEN g <= o.events
                     THEN now() - interval '61 days'
                          + (g::float8 / o.events) * interval '30 days'
                     ELSE now() - interval '1 hour' END,
                jsonb_build_object('seq', g, 'output',
                    'You find a narrow passage behind the tapestry; cold air flows from it.')
         FROM old o, generate_series(1, o.events + o.events / 10) AS g",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query("ALTER TABLE session_events ENABLE TRIGGER session_events_outbox")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

async fn measure(
    scratch: &Scratch,
    config: &Config,
    target: Target,
    rows: usize,
) -> anyhow::Result<Outcome> {
    match target {
        Target::Jobs => load(scratch, rows).await?,
        Target::Events => load_events(scratch, rows).await?,
    }
    let sessions = Arc::new(make_sessions(&scratch.pool, 100).await?);
    super::analyze(&scratch.pool).await?;
    // For events, the turns run too: their events go into the table pruned.
    let runner = match target {
        Target::Jobs => None,
        Target::Events => Some(Processes::workers(
            scratch,
            config,
            &WorkerOptions {
                kinds: Some(turns::TurnJob::SPEC.kind),
                ..WorkerOptions::turns(1, 64)
            },
        )?),
    };

    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<(Instant, f64)>>> = Arc::default();
    let mut tasks = Vec::new();
    for task in 0..SUBMITTERS {
        let (pool, stop, samples, sessions) = (
            scratch.pool.clone(),
            stop.clone(),
            samples.clone(),
            sessions.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let author = UserId::parse("bench").map_err(anyhow::Error::msg)?;
            let mut i = task;
            while !stop.load(Ordering::Relaxed) {
                let at = Instant::now();
                turns::submit(
                    &pool,
                    NewTurn {
                        session_id: sessions[i % sessions.len()],
                        author: &author,
                        input: "I wait.",
                        idempotency_key: None,
                        max_attempts: 5,
                    },
                )
                .await?;
                samples
                    .lock()
                    .await
                    .push((at, at.elapsed().as_secs_f64() * 1000.0));
                i += SUBMITTERS;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(())
        }));
    }
    let waits: Arc<Mutex<Vec<(Instant, f64)>>> = Arc::default();
    let sampler = {
        let (url, stop, waits) = (scratch.url.clone(), stop.clone(), waits.clone());
        tokio::spawn(async move {
            let pool = questboard_core::db::connect(&url, 1).await?;
            while !stop.load(Ordering::Relaxed) {
                let wait: f64 = sqlx::query_scalar(
                    "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - waitstart)), 0)::float8
                            * 1000
                     FROM pg_locks WHERE NOT granted AND waitstart IS NOT NULL",
                )
                .fetch_one(&pool)
                .await?;
                waits.lock().await.push((Instant::now(), wait));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(())
        })
    };

    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    let job = {
        let mut conn = scratch.pool.acquire().await?;
        jobs::enqueue(
            &mut conn,
            &Prune {
                only: vec![target.category()],
                dry_run: false,
            },
            &jobs::Options::default(),
        )
        .await?
        .id
    };
    let worker = Processes::workers(
        scratch,
        config,
        &WorkerOptions {
            count: 1,
            concurrency: 1,
            latency_ms: 0,
            kinds: Some(Prune::SPEC.kind),
            ..WorkerOptions::turns(1, 1)
        },
    )?;
    let pool = scratch.pool.clone();
    let id = job.clone();
    wait_for(
        Duration::from_secs(3600),
        Duration::from_millis(100),
        || {
            let (pool, id) = (pool.clone(), id.clone());
            async move {
                let status: String =
                    sqlx::query_scalar("SELECT status FROM apalis.jobs WHERE id = $1")
                        .bind(&id)
                        .fetch_one(&pool)
                        .await?;
                anyhow::ensure!(status != "Killed", "the prune job failed");
                Ok(status == "Done")
            }
        },
    )
    .await?;
    let ended = Instant::now();
    worker.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    sampler.await??;
    if let Some(runner) = runner {
        // Let it finish what was submitted last.
        super::pipeline::until_drained(&scratch.pool, Duration::from_secs(60)).await?;
        runner.stop();
    }

    let (deleted, run_seconds): (i64, f64) = sqlx::query_as(
        "SELECT (last_result -> 'Ok' ->> $2)::bigint,
                extract(epoch FROM done_at - lock_at)::float8
         FROM apalis.jobs WHERE id = $1",
    )
    .bind(&job)
    .bind(target.field())
    .fetch_one(&scratch.pool)
    .await?;
    anyhow::ensure!(deleted as usize == rows, "pruned {deleted} rows of {rows}");
    let kept: i64 = match target {
        Target::Jobs => sqlx::query_scalar(
            "SELECT count(*) FROM apalis.jobs
             WHERE status = 'Done' AND done_at > now() - interval '1 day'",
        ),
        Target::Events => sqlx::query_scalar(
            "SELECT count(*) FROM session_events WHERE at > now() - interval '1 day'",
        ),
    }
    .fetch_one(&scratch.pool)
    .await?;
    anyhow::ensure!(kept as usize >= rows / 10, "recent rows were pruned too");
    let turns = match target {
        Target::Jobs => (f64::NAN, f64::NAN),
        Target::Events => turn_latency(scratch, &sessions, &job).await?,
    };

    let stats = |all: &[(Instant, f64)], from: Instant, to: Instant| {
        let mut v: Vec<f64> = all
            .iter()
            .filter(|(at, _)| *at >= from && *at <= to)
            .map(|(_, ms)| *ms)
            .collect();
        v.sort_by(f64::total_cmp);
        (percentile(&v, 0.99), v.last().copied().unwrap_or(f64::NAN))
    };
    let samples = samples.lock().await;
    let waits = waits.lock().await;
    let first = samples.first().map_or(started, |s| s.0);
    Ok(Outcome {
        rate: deleted as f64 / run_seconds.max(1e-6),
        seconds: run_seconds,
        lock_wait_ms: stats(&waits, started, ended).1,
        lock_wait_before_ms: stats(&waits, first, started).1,
        before: stats(&samples, first, started),
        during: stats(&samples, started, ended),
        turns,
    })
}

/// The p99 of commit -> completed of the turns committed before the prune
/// job started and of those committed while it ran (database clock).
async fn turn_latency(
    scratch: &Scratch,
    sessions: &[uuid::Uuid],
    job: &str,
) -> anyhow::Result<(f64, f64)> {
    Ok(sqlx::query_as(
        "SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) FILTER (WHERE t.created_at < j.lock_at),
                percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)
                    FILTER (WHERE t.created_at BETWEEN j.lock_at AND j.done_at)
         FROM turns t, apalis.jobs j,
              LATERAL (SELECT extract(epoch FROM t.completed_at - t.created_at)::float8 * 1000
                       AS ms) AS l
         WHERE j.id = $2 AND t.session_id = ANY($1) AND t.status = 'completed'",
    )
    .bind(sessions)
    .bind(job)
    .fetch_one(&scratch.pool)
    .await?)
}
