//! The operators' console on a big job table: a million job rows
//! (`--console-rows`), generated in bulk with realistic shapes (a month of
//! jobs, six in ten turns, three media, the rest maintenance; one in a
//! hundred failed, a few cancelled, some waiting in the last hour; errors
//! on the failed ones, sessions on the media ones), then the console's
//! reads through one API process, one request at a time: the overview
//! (`/api/admin/queues`, `/api/admin/activity`) and the job list with the
//! filters operators use most, first page and deep. Reported as p50 and
//! p95 per route; the query plans are printed after the table.

use std::time::Instant;

use chrono::{TimeDelta, Utc};
use questboard_core::jobs::JobStatus;
use questboard_core::jobs::control::{self, ListFilter};
use uuid::Uuid;

use super::processes::Processes;
use super::{BenchArgs, Figure, Scratch, percentile, runs};
use questboard::config::Config;

/// Requests per route and run.
const REQUESTS: usize = 100;

/// Runs the scenario and prints its rows, then the plans.
pub async fn run(config: &Config, args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let rows = if args.quick {
        20_000
    } else {
        args.console_rows
    };
    let routes = routes();
    let mut figures: Vec<(Figure, Figure)> = routes
        .iter()
        .map(|(name, _)| {
            (
                Figure::new(format!("console, {rows} job rows: {name} p50"), "ms"),
                Figure::new("  ... p95", "ms"),
            )
        })
        .collect();
    let mut plans = String::new();
    for run in 0..runs(args) {
        let measured = Scratch::scoped(config, async |scratch| {
            let sessions = load(scratch, rows).await?;
            super::analyze(&scratch.pool).await?;
            let timings = measure(scratch, config, &routes, sessions[0]).await?;
            if run == 0 {
                plans = explain(scratch, sessions[0], &timings.1).await?;
            }
            Ok(timings.0)
        })
        .await?;
        for ((p50, p95), times) in figures.iter_mut().zip(measured) {
            p50.values.push(percentile(&times, 0.5));
            p95.values.push(percentile(&times, 0.95));
        }
    }
    let figures: Vec<Figure> = figures.into_iter().flat_map(|(a, b)| [a, b]).collect();
    for f in &figures {
        f.print();
    }
    println!("\nQuery plans ({rows} job rows):\n\n```\n{plans}```");
    Ok(figures)
}

/// What the console asks, by name.
fn routes() -> Vec<(&'static str, String)> {
    vec![
        (
            "overview: GET /api/admin/queues",
            "/api/admin/queues".into(),
        ),
        (
            "overview: GET /api/admin/activity",
            "/api/admin/activity".into(),
        ),
        ("jobs: first page", "/api/admin/jobs".into()),
        ("jobs: kind=media", "/api/admin/jobs?kind=media".into()),
        (
            "jobs: kind=reconcile (5 in 100)",
            "/api/admin/jobs?kind=reconcile".into(),
        ),
        (
            "jobs: kind=legacy_import (no rows)",
            "/api/admin/jobs?kind=legacy_import".into(),
        ),
        (
            "jobs: status=failed",
            "/api/admin/jobs?status=failed".into(),
        ),
        (
            "jobs: kind=media&status=failed",
            "/api/admin/jobs?kind=media&status=failed".into(),
        ),
        (
            "jobs: session_id=<one session>",
            "/api/admin/jobs?session_id={session}".into(),
        ),
        (
            "jobs: a page 15 days back",
            "/api/admin/jobs?cursor={middle}".into(),
        ),
        (
            "jobs: created in one hour 10 days back",
            "/api/admin/jobs?from={ten_days}&to={ten_days_hour}".into(),
        ),
        (
            "jobs: unique_key=<none holds it>",
            "/api/admin/jobs?unique_key=nightly-0".into(),
        ),
        (
            "jobs: q=<text in no payload or error>",
            "/api/admin/jobs?q=no%20such%20text".into(),
        ),
        (
            "jobs: status=failed&q=<text in the error>",
            "/api/admin/jobs?status=failed&q=rate%20limited".into(),
        ),
    ]
}

/// Writes `rows` job rows over the last thirty days; returns the sessions
/// the media jobs belong to.
async fn load(scratch: &Scratch, rows: usize) -> anyhow::Result<Vec<Uuid>> {
    let sessions: Vec<Uuid> = (0..1000).map(|_| Uuid::now_v7()).collect();
    let now = Utc::now();
    let span_ms = TimeDelta::days(30).num_milliseconds();
    const BATCH: usize = 20_000;
    for first in (0..rows).step_by(BATCH) {
        let n = (first + BATCH).min(rows) - first;
        let mut ids = Vec::with_capacity(n);
        let mut types = Vec::with_capacity(n);
        let mut statuses = Vec::with_capacity(n);
        let mut attempts = Vec::with_capacity(n);
        let mut payloads: Vec<Vec<u8>> = Vec::with_capacity(n);
        let mut created = Vec::with_capacity(n);
        let mut results: Vec<serde_json::Value> = Vec::with_capacity(n);
        let mut session_ids: Vec<Option<String>> = Vec::with_capacity(n);
        let mut cancelled = Vec::with_capacity(n);
        for k in 0..n {
            let i = first + k;
            let at = now - TimeDelta::milliseconds(span_ms)
                + TimeDelta::milliseconds((i as i64 * span_ms) / rows as i64);
            ids.push(
                ulid::Ulid::from_parts(at.timestamp_millis() as u64, (i as u128) << 16 | 7)
                    .to_string(),
            );
            let session = sessions[i % sessions.len()];
            let (queue, payload, with_session) = match i % 100 {
                0..=59 => (
                    "questboard.turn",
                    format!(
                        r#"{{"turn_id":"{}","session_id":"{session}"}}"#,
                        Uuid::now_v7()
                    ),
                    false,
                ),
                60..=89 => (
                    "questboard.media",
                    format!(
                        r#"{{"version":1,"payload":{{"media_id":"{}","session_id":"{session}"}}}}"#,
                        Uuid::now_v7()
                    ),
                    true,
                ),
                90..=94 => (
                    "questboard.prune",
                    r#"{"version":1,"payload":{"dry_run":false,"only":[]}}"#.to_owned(),
                    false,
                ),
                _ => (
                    "questboard.reconcile",
                    r#"{"version":1,"payload":{"repair":false}}"#.to_owned(),
                    false,
                ),
            };
            let recent = now - at < TimeDelta::hours(1);
            // Spread over kinds: not a function of the kind's `i % 100`.
            let (status, tries, result, was_cancelled) = match (i * 7919) % 1000 {
                _ if recent && i % 10 == 0 => ("Pending", 0, serde_json::Value::Null, false),
                0..=9 => (
                    "Killed",
                    5,
                    serde_json::json!({ "Err": "the model provider answered HTTP 429: rate limited" }),
                    false,
                ),
                10..=12 => (
                    "Killed",
                    1,
                    serde_json::json!({ "Err": "cancelled by ops" }),
                    true,
                ),
                _ => ("Done", 1, serde_json::json!({ "Ok": {} }), false),
            };
            types.push(queue);
            statuses.push(status);
            attempts.push(tries);
            payloads.push(payload.into_bytes());
            created.push(at);
            results.push(result);
            session_ids.push(with_session.then(|| session.to_string()));
            cancelled.push(was_cancelled);
        }
        sqlx::query(
            "WITH input AS (
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::bytea[],
                                      $6::timestamptz[], $7::jsonb[], $8::text[], $9::bool[])
                     AS i(id, queue, status, attempts, job, at, result, session, cancelled)
             ),
             jobs AS (
                 INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts,
                                          run_at, lock_at, done_at, priority, last_result,
                                          metadata)
                 SELECT id, queue, job, status, attempts, 5, at,
                        CASE WHEN status = 'Pending' THEN NULL ELSE at END,
                        CASE WHEN status = 'Pending' THEN NULL ELSE at + interval '2 seconds' END,
                        0, CASE WHEN result = 'null'::jsonb THEN NULL ELSE result END,
                        coalesce(CASE WHEN session IS NOT NULL THEN hstore('session_id', session) END,
                                 ''::hstore)
                          || CASE WHEN cancelled THEN hstore('cancelled_at', at::text)
                                  ELSE ''::hstore END
                 FROM input
                 RETURNING id
             )
             INSERT INTO job_runs (job_id, errors)
             SELECT id, jsonb_build_array(jsonb_build_object('attempt', 5, 'at', at,
                        'error', result ->> 'Err', 'worker', 'bench-worker'))
             FROM input WHERE status = 'Killed' AND NOT cancelled",
        )
        .bind(&ids)
        .bind(&types)
        .bind(&statuses)
        .bind(&attempts)
        .bind(&payloads)
        .bind(&created)
        .bind(&results)
        .bind(&session_ids)
        .bind(&cancelled)
        .execute(&scratch.pool)
        .await?;
    }
    Ok(sessions)
}

/// Times each route: one warm-up request, then [`REQUESTS`] one at a time.
async fn measure(
    scratch: &Scratch,
    config: &Config,
    routes: &[(&'static str, String)],
    session: Uuid,
) -> anyhow::Result<(Vec<Vec<f64>>, String)> {
    let (api, addr) = Processes::api(scratch, config).await?;
    let token = super::operator_token(config, "bench-ops")?;
    let middle: String =
        sqlx::query_scalar("SELECT id FROM apalis.jobs WHERE id < $1 ORDER BY id DESC LIMIT 1")
            .bind(
                ulid::Ulid::from_parts(
                    (Utc::now() - TimeDelta::days(15)).timestamp_millis() as u64,
                    0,
                )
                .to_string(),
            )
            .fetch_one(&scratch.pool)
            .await?;
    let client = reqwest::Client::new();
    let mut all = Vec::with_capacity(routes.len());
    for (name, path) in routes {
        let ten_days = Utc::now() - TimeDelta::days(10);
        let path = path
            .replace("{session}", &session.to_string())
            .replace("{middle}", &middle)
            .replace(
                "{ten_days}",
                &ten_days.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            )
            .replace(
                "{ten_days_hour}",
                &(ten_days + TimeDelta::hours(1))
                    .format("%Y-%m-%dT%H:%M:%SZ")
                    .to_string(),
            );
        let url = format!("http://{addr}{path}");
        let mut times = Vec::with_capacity(REQUESTS);
        for i in 0..=REQUESTS {
            let at = Instant::now();
            let resp = client.get(&url).bearer_auth(&token).send().await?;
            let status = resp.status();
            let body = resp.bytes().await?;
            anyhow::ensure!(
                status.is_success(),
                "{name}: {status} {}",
                String::from_utf8_lossy(&body)
            );
            if i > 0 {
                times.push(at.elapsed().as_secs_f64() * 1000.0);
            }
        }
        times.sort_by(f64::total_cmp);
        all.push(times);
    }
    api.stop();
    Ok((all, middle))
}

/// The plans of the overview's statements and of the job list's.
async fn explain(scratch: &Scratch, session: Uuid, middle: &str) -> anyhow::Result<String> {
    let middle = middle.to_owned();
    let pool = &scratch.pool;
    let mut out = String::new();
    let plain = |sql: &str| format!("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, SUMMARY ON) {sql}");
    for (name, sql) in [
        ("queues: waiting", control::STATS_WAITING_SQL),
        ("queues: running", control::STATS_RUNNING_SQL),
        ("queues: failed and cancelled", control::STATS_DEAD_SQL),
    ] {
        let lines: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(plain(sql)))
            .fetch_all(pool)
            .await?;
        out.push_str(&format!("-- {name}\n{}\n\n", lines.join("\n")));
    }
    let start = Utc::now() - TimeDelta::days(1);
    let lower = ulid::Ulid::from_parts((start - TimeDelta::days(1)).timestamp_millis() as u64, 0)
        .to_string();
    let lines: Vec<String> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(plain(control::THROUGHPUT_SQL)))
            .bind(&lower)
            .bind(start)
            .bind(300.0_f64)
            .bind(288_i32)
            .fetch_all(pool)
            .await?;
    out.push_str(&format!(
        "-- activity: throughput\n{}\n\n",
        lines.join("\n")
    ));
    for (name, filter) in [
        (
            "jobs: first page",
            ListFilter {
                limit: 50,
                ..ListFilter::default()
            },
        ),
        (
            "jobs: status=failed",
            ListFilter {
                status: Some(JobStatus::Failed),
                limit: 50,
                ..ListFilter::default()
            },
        ),
        (
            "jobs: kind=media&status=failed",
            ListFilter {
                queue: Some("questboard.media".into()),
                status: Some(JobStatus::Failed),
                limit: 50,
                ..ListFilter::default()
            },
        ),
        (
            "jobs: kind=legacy_import (no rows)",
            ListFilter {
                queue: Some("questboard.legacy_import".into()),
                limit: 50,
                ..ListFilter::default()
            },
        ),
        (
            "jobs: session_id=<one session>",
            ListFilter {
                session: Some(session),
                limit: 50,
                ..ListFilter::default()
            },
        ),
        (
            "jobs: a page 15 days back",
            ListFilter {
                before: Some(middle.clone()),
                limit: 50,
                ..ListFilter::default()
            },
        ),
        (
            "jobs: unique_key=<none holds it>",
            ListFilter {
                unique_key: Some("nightly-0".into()),
                limit: 50,
                ..ListFilter::default()
            },
        ),
        (
            "jobs: q=<text in no payload or error>",
            ListFilter {
                text: Some("no such text".into()),
                limit: 50,
                ..ListFilter::default()
            },
        ),
        (
            "jobs: status=failed&q=rate limited",
            ListFilter {
                status: Some(JobStatus::Failed),
                text: Some("rate limited".into()),
                limit: 50,
                ..ListFilter::default()
            },
        ),
    ] {
        out.push_str(&format!(
            "-- {name}\n{}\n\n",
            control::explain_list(pool, &filter).await?
        ));
    }
    Ok(out)
}
