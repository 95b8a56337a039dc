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
//!
//! [`idle`] runs the same measurements on an empty database, then beside
//! 100,000 idle sessions of ten finished turns each (`--idle-sessions`):
//! what a platform with many dormant campaigns and a thousand active ones
//! asks of the turn path.

use chrono::Utc;

use super::{BenchArgs, Figure, Scratch, runs};
use questboard::config::Config;

/// Offered load of the latency measurement when `--rate` is not given:
/// low enough for every size to carry it.
const DEFAULT_RATE: f64 = 400.0;

/// How the history is spread over sessions.
#[derive(Debug, Clone, Copy)]
struct Shape {
    /// Long campaigns (ten at most) and the turns of each.
    long: (i64, i64),
    /// Other sessions and the turns of each.
    short: (i64, i64),
}

impl Shape {
    /// `rows` turns: a tenth in ten long campaigns, the rest 100 each.
    fn history(rows: usize) -> Self {
        let rows = rows as i64;
        if rows == 0 {
            return Self {
                long: (0, 0),
                short: (0, 0),
            };
        }
        let long = (rows / 100).max(1);
        Self {
            long: (10, long),
            short: (((rows - 10 * long) / 100).max(0), 100),
        }
    }

    /// `sessions` idle sessions of ten turns each.
    fn idle(sessions: usize) -> Self {
        Self {
            long: (0, 0),
            short: (sessions as i64, 10),
        }
    }

    fn rows(&self) -> usize {
        (self.long.0 * self.long.1 + self.short.0 * self.short.1) as usize
    }
}

/// Runs the scenario and prints its rows.
pub async fn run(config: &Config, args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let sizes: Vec<usize> = if args.quick {
        vec![0, 20_000]
    } else {
        args.history_rows.clone()
    };
    let cases = sizes
        .into_iter()
        .map(|rows| (format!("history {rows} rows"), Shape::history(rows)))
        .collect();
    measure(config, args, cases).await
}

/// The same measurements beside `--idle-sessions` idle sessions.
pub async fn idle(config: &Config, args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let idle = if args.quick {
        2_000
    } else {
        args.idle_sessions
    };
    let shape = Shape::idle(idle);
    // The empty database first: the comparison is within one run of the
    // benchmark, as the machine's speed drifts between hours.
    let cases = vec![
        ("no idle sessions".to_owned(), Shape::idle(0)),
        (
            format!("{idle} idle sessions ({} turns)", shape.rows()),
            shape,
        ),
    ];
    measure(config, args, cases).await
}

async fn measure(
    config: &Config,
    args: &BenchArgs,
    cases: Vec<(String, Shape)>,
) -> anyhow::Result<Vec<Figure>> {
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
    for (label, shape) in cases {
        let mut load_time = Figure::new(format!("{label}: loading it"), "s");
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
            load(scratch, shape).await?;
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

/// Writes the shape's turns, as many events and as many finished jobs.
async fn load(scratch: &Scratch, shape: Shape) -> anyhow::Result<()> {
    let rows = shape.rows();
    if rows == 0 {
        return Ok(());
    }
    let mut tx = scratch.pool.begin().await?;
    sqlx::query(
        "CREATE TEMP TABLE history ON COMMIT DROP AS
         SELECT n, gen_random_uuid() AS id,
                CASE WHEN n <= $1 THEN $2 ELSE $4 END::bigint AS turns
         FROM generate_series(1, $1 + $3) AS n",
    )
    .bind(shape.long.0)
    .bind(shape.long.1)
    .bind(shape.short.0)
    .bind(shape.short.1)
    .execute(&mut *tx)
    .await?;
    insert_sessions(
        &mut tx,
        "history",
        "'60 days'",
        "'1 day'",
        ("turns + 1", "turns + 1"),
    )
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
    jobs(scratch, rows).await
}

/// Inserts a session for every row `(n, id, ...)` of the temporary table
/// `rows`, named after it, created `created` ago and last active `active`
/// ago (SQL intervals), with its next turn and event seqs (SQL over the
/// table's columns); owned by one of 5,000 players, who is its member.
/// Every argument is a literal of this crate, never outside input.
pub(crate) async fn insert_sessions(
    tx: &mut sqlx::PgConnection,
    rows: &str,
    created: &str,
    active: &str,
    (next_turn, next_event): (&str, &str),
) -> anyhow::Result<()> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO campaign_sessions (id, name, owner_user_id, storage_prefix, created_at,
                                        updated_at, last_active_at, next_turn_seq, next_event_seq)
         SELECT id, '{rows} ' || n, 'player' || (n % 5000), 'sessions/' || id,
                now() - interval {created}, now() - interval {active},
                now() - interval {active}, {next_turn}, {next_event}
         FROM {rows}",
    )))
    .execute(&mut *tx)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO campaign_session_members (session_id, user_id, role)
         SELECT id, 'player' || (n % 5000), 'owner' FROM {rows}",
    )))
    .execute(&mut *tx)
    .await?;
    Ok(())
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
