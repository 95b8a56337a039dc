//! Turns on a database with months of history: the same measurements at
//! 0, 1 million and 10 million rows (`--history-rows`) in each of `turns`,
//! `session_events` and the finished jobs of `apalis.jobs`, to see whether
//! a claim, a submission or a reply's writes bend as the tables grow.
//!
//! The history is generated in bulk inside Postgres, in realistic shapes:
//! a tenth of the turns in ten very long campaigns, the rest in sessions of
//! 100 turns (90,000 sessions at 10 million), spread over the last thirty
//! days; one `turn.completed` event per turn; finished turn jobs over the
//! last seven days (what retention keeps). Then, on the same database, for
//! each run: the end-to-end rate of 20,000 turns over 1,000 fresh sessions
//! (workers only, as `pipeline`), and the HTTP closed-loop maximum and the
//! POST -> `turn.completed` latency at a fixed offered load (`--rate`,
//! default 400 turns/s) on 100 fresh sessions (as `realtime`). The load is
//! done once per size; the runs share it.

use chrono::Utc;

use super::{BenchArgs, Figure, Scratch, runs};
use questboard::config::Config;

/// Offered load of the latency measurement when `--rate` is not given:
/// low enough for every size to carry it.
const DEFAULT_RATE: f64 = 400.0;

/// Runs the scenario and prints its rows.
pub async fn run(config: &Config, args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let sizes: Vec<usize> = if args.quick {
        vec![0, 20_000]
    } else {
        args.history_rows.clone()
    };
    let (sessions, total) = if args.quick {
        (50, 500)
    } else {
        (1000, 20_000)
    };
    let (closed, seconds) = if args.quick {
        (100, 2.0)
    } else {
        (5_000, 10.0)
    };
    let mut fixed = args.clone();
    fixed.rate = Some(args.rate.unwrap_or(DEFAULT_RATE));
    let mut figures = Vec::new();
    for rows in sizes {
        let mut load_time = Figure::new(format!("history {rows} rows: loading it"), "s");
        let mut rate = Figure::new(
            format!("  ... end to end, {sessions} fresh sessions, {total} turns (workers)"),
            "turns/s",
        );
        let mut max = Figure::new(
            "  ... POST -> turn.completed, closed loop: maximum",
            "turns/s",
        );
        let mut p50 = Figure::new(
            format!(
                "  ... at {} turns/s: POST -> turn.completed p50",
                fixed.rate.unwrap_or_default()
            ),
            "ms",
        );
        let mut p99 = Figure::new("  ... p99", "ms");
        let mut claim99 = Figure::new("  ... commit -> started p99 (database clock)", "ms");
        let mut wal = Figure::new(
            "  ... WAL per turn, submitted and run (whole cluster)",
            "bytes",
        );
        Scratch::scoped(config, async |scratch| {
            let began = std::time::Instant::now();
            load(scratch, rows).await?;
            super::analyze(&scratch.pool).await?;
            load_time.values.push(began.elapsed().as_secs_f64());
            for _ in 0..runs(args) {
                let before = wal_position(scratch).await?;
                let (r, _) =
                    super::pipeline::throughput(scratch, config, args, sessions, total).await?;
                rate.values.push(r);
                wal.values
                    .push((wal_position(scratch).await? - before) / total as f64);
                let l = super::realtime::latency(scratch, config, &fixed, closed, seconds).await?;
                max.values.push(l.max);
                p50.values.push(l.p50);
                p99.values.push(l.p99);
                claim99.values.push(l.waits.1);
            }
            Ok(())
        })
        .await?;
        for f in [load_time, rate, wal, max, p50, p99, claim99] {
            f.print();
            figures.push(f);
        }
    }
    Ok(figures)
}

/// Where the write-ahead log is, in bytes (the whole cluster's: keep the
/// machine otherwise quiet).
async fn wal_position(scratch: &Scratch) -> anyhow::Result<f64> {
    Ok(
        sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8")
            .fetch_one(&scratch.pool)
            .await?,
    )
}

/// Writes `rows` turns, `rows` events and `rows` finished jobs of history.
async fn load(scratch: &Scratch, rows: usize) -> anyhow::Result<()> {
    if rows == 0 {
        return Ok(());
    }
    let rows = rows as i64;
    // Ten long campaigns with a tenth of the turns; the rest 100 each.
    let long = (rows / 100).max(1);
    let short = ((rows - 10 * long) / 100).max(0);
    let mut tx = scratch.pool.begin().await?;
    sqlx::query(
        "CREATE TEMP TABLE history ON COMMIT DROP AS
         SELECT n, gen_random_uuid() AS id,
                CASE WHEN n <= 10 THEN $1 ELSE 100 END::bigint AS turns
         FROM generate_series(1, 10 + $2) AS n",
    )
    .bind(long)
    .bind(short)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO campaign_sessions (id, name, owner_user_id, storage_prefix, created_at,
                                        updated_at, last_active_at, next_turn_seq, next_event_seq)
         SELECT id, 'history ' || n, 'player' || (n % 5000), 'sessions/' || id,
                now() - interval '60 days', now() - interval '1 day', now() - interval '1 day',
                turns + 1, turns + 1
         FROM history",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO campaign_session_members (session_id, user_id, role)
         SELECT id, 'player' || (n % 5000), 'owner' FROM history",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO turns (id, session_id, seq, author_user_id, input, status, output, job_id,
                            created_at, started_at, completed_at, attempts, run_at, usage)
         SELECT gen_random_uuid(), h.id, g, 'player' || (h.n % 5000),
                'I search the room for hidden doors and listen at the walls.', 'completed',
                'You find a narrow passage behind the tapestry; cold air flows from it, and \
                 somewhere below, water drips. What do you do next?',
                'history-' || h.n || '-' || g, t, t, t + interval '800 milliseconds', 1, t,
                '{\"provider\": \"openai\", \"model\": \"gpt\", \"prompt_tokens\": 900, \
                  \"completion_tokens\": 60}'::jsonb
         FROM history h, generate_series(1, h.turns) AS g,
              LATERAL (SELECT now() - interval '30 days'
                              + (g::float8 / h.turns) * interval '30 days' AS t) AS at",
    )
    .execute(&mut *tx)
    .await?;
    // Published long ago: not the outbox's business.
    sqlx::query("ALTER TABLE session_events DISABLE TRIGGER session_events_outbox")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO session_events (session_id, seq, type, at, data)
         SELECT h.id, g, 'turn.completed', now() - interval '30 days'
                                           + (g::float8 / h.turns) * interval '30 days',
                jsonb_build_object('seq', g, 'output',
                    'You find a narrow passage behind the tapestry; cold air flows from it.')
         FROM history h, generate_series(1, h.turns) AS g",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query("ALTER TABLE session_events ENABLE TRIGGER session_events_outbox")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    jobs(scratch, rows as usize).await
}

/// Finished turn jobs over the last seven days, ids of their time.
async fn jobs(scratch: &Scratch, rows: usize) -> anyhow::Result<()> {
    let week_ms = chrono::TimeDelta::days(7).num_milliseconds() as f64;
    let start = Utc::now() - chrono::TimeDelta::days(7);
    super::retention::finished_jobs(&scratch.pool, rows, |i| {
        start + chrono::TimeDelta::milliseconds((i as f64 / rows as f64 * week_ms) as i64)
    })
    .await
}
