//! Turns under a provider limit shared by every worker: 600 requests a
//! minute (`QB_LLM_REQUESTS_PER_MINUTE`) over 100 sessions, with the
//! benchmark's two worker processes. What comes out is the limit itself
//! (turns per second, first start to last completion: 10 plus the burst
//! spread over the run) and what the turns waited for it (each turn's
//! `usage.limiter_wait_ms`, p50 and p99), which says how long a player
//! waits when the provider, not questboard, is the bottleneck.

use super::pipeline;
use super::{BenchArgs, Figure, Scratch, percentile, runs};
use questboard::config::Config;

/// Sessions the turns are spread over.
const SESSIONS: usize = 100;
/// The limit.
const REQUESTS_PER_MINUTE: u32 = 600;

/// Runs the scenario and prints its rows.
pub async fn run(config: &Config, args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let total = if args.quick { 30 } else { 400 };
    let label = format!(
        "{total} turns over {SESSIONS} sessions, limit {REQUESTS_PER_MINUTE} requests/min, {} worker processes",
        args.workers
    );
    let mut rate = Figure::new(format!("{label}: turns/s"), "turns/s");
    let mut p50 = Figure::new(format!("{label}: limiter wait p50"), "ms");
    let mut p99 = Figure::new(format!("{label}: limiter wait p99"), "ms");
    let mut limited = config.clone();
    limited.llm_requests_per_minute = Some(REQUESTS_PER_MINUTE);
    for _ in 0..runs(args) {
        let (turns_per_s, waits) = Scratch::scoped(config, async |scratch| {
            let (r, _) = pipeline::throughput(scratch, &limited, args, SESSIONS, total).await?;
            let mut waits: Vec<f64> = sqlx::query_scalar(
                "SELECT coalesce((usage ->> 'limiter_wait_ms')::float8, 0) FROM turns
                 WHERE status = 'completed'",
            )
            .fetch_all(&scratch.pool)
            .await?;
            waits.sort_by(f64::total_cmp);
            Ok((r, waits))
        })
        .await?;
        rate.values.push(turns_per_s);
        p50.values.push(percentile(&waits, 0.5));
        p99.values.push(percentile(&waits, 0.99));
    }
    let figures = vec![rate, p50, p99];
    for f in &figures {
        f.print();
    }
    Ok(figures)
}
