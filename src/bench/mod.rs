//! `questboard bench`: reproducible measurements against the Postgres and
//! Redis given by `DATABASE_URL` and `REDIS_URL`.
//!
//! Each scenario creates its own scratch database (`qb_bench_<time>`),
//! applies the migrations, measures, and drops it. Every scenario runs
//! several times and is reported as median with min and max, because the
//! machine is shared and noisy; comparisons are ratios measured in the same
//! run. `--quick` uses tiny sizes: a smoke test for CI, not a measurement.
//!
//! - [`baseline`]: raw apalis-postgres noop jobs and the bare Postgres
//!   ceiling, measured on the same database in the same run.
//! - [`pipeline`]: enqueue rate, end-to-end turns per second over 1, 10 and
//!   1,000 sessions, idle pickup latency.
//! - [`realtime`]: POST-to-WebSocket latency at a steady offered rate, and
//!   fan-out to many sockets of one API process with its memory per socket.

use std::time::Duration;

use anyhow::Context as _;
use questboard_core::db;
use sqlx::PgPool;

use crate::config::Config;

pub mod baseline;
pub mod pipeline;
pub mod realtime;

/// What to measure.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Small sizes (seconds, for CI smoke runs); figures are not meaningful.
    #[arg(long)]
    pub quick: bool,
    /// Runs per scenario.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Worker runtimes.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Sessions each worker runtime processes at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: u32,
    /// Only scenarios whose group matches: `baseline`, `pipeline`, `realtime` (default: all).
    #[arg(long)]
    pub only: Option<String>,
    /// WebSocket clients for the fan-out scenario (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
    pub fanout: Vec<usize>,
    /// Offered load for the latency scenario, turns/s (default: half the
    /// measured 10-session throughput of this run, else 300).
    #[arg(long)]
    pub rate: Option<f64>,
}

/// One measured figure over several runs.
#[derive(Debug, Clone)]
pub struct Figure {
    /// What was measured.
    pub name: String,
    /// The unit.
    pub unit: &'static str,
    /// One value per run.
    pub values: Vec<f64>,
}

impl Figure {
    /// A figure with no values yet.
    pub fn new(name: impl Into<String>, unit: &'static str) -> Self {
        Self {
            name: name.into(),
            unit,
            values: Vec::new(),
        }
    }

    /// The median of the runs.
    pub fn median(&self) -> f64 {
        let mut v = self.values.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    }

    /// Prints the figure as a Markdown table row.
    pub fn print(&self) {
        let min = self.values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self
            .values
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        println!(
            "| {:<62} | {:>10.1} {:<7} | {:>10.1} .. {:<10.1} | {} |",
            self.name,
            self.median(),
            self.unit,
            min,
            max,
            self.values.len()
        );
    }
}

/// Runs the selected scenarios and prints a table.
pub async fn run(config: &Config, args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    println!("| scenario | median | min .. max | runs |");
    println!("|---|---|---|---|");
    let wanted = |group: &str| args.only.as_deref().is_none_or(|o| o == group);
    let mut figures = Vec::new();
    if wanted("baseline") {
        figures.extend(baseline::run(config, args).await?);
    }
    if wanted("pipeline") {
        figures.extend(pipeline::run(config, args).await?);
    }
    let raw = figures
        .iter()
        .find(|f| f.name.starts_with("raw apalis-postgres noop, batch 100"))
        .map(Figure::median);
    let ours = figures
        .iter()
        .find(|f| f.name.starts_with("end to end, 1000 session"))
        .map(Figure::median);
    if let (Some(raw), Some(ours)) = (raw, ours) {
        println!(
            "| ratio: questboard over 1000 sessions / raw apalis-postgres batch 100 (same run) | {:>10.2} x       | | |",
            ours / raw
        );
    }
    if wanted("realtime") {
        let measured = figures
            .iter()
            .find(|f| f.name.starts_with("end to end, 10 session"))
            .map(|f| f.median() / 2.0);
        let rate = args.rate.or(measured).unwrap_or(300.0);
        figures.extend(realtime::run(config, args, rate).await?);
    }
    Ok(figures)
}

/// The number of runs for `args`.
pub fn runs(args: &BenchArgs) -> usize {
    if args.quick { 1 } else { args.runs.max(1) }
}

/// A scratch database with migrations applied, dropped by [`Scratch::drop_db`].
pub struct Scratch {
    name: String,
    admin_url: String,
    /// Its connection string.
    pub url: String,
    /// A pool on it.
    pub pool: PgPool,
}

impl Scratch {
    /// Creates and migrates a scratch database.
    pub async fn create(config: &Config) -> anyhow::Result<Self> {
        let admin_url = config.database_url.expose().to_owned();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let name = format!("qb_bench_{stamp}");
        let mut url = url::Url::parse(&admin_url).context("DATABASE_URL")?;
        url.set_path(&name);
        let url = url.to_string();
        db::create_database_if_missing(&url).await?;
        let pool = db::connect(&url, 20).await?;
        db::migrate(&pool).await?;
        Ok(Self {
            name,
            admin_url,
            url,
            pool,
        })
    }

    /// Drops the database.
    pub async fn drop_db(self) {
        self.pool.close().await;
        if let Ok(pool) = db::connect(&self.admin_url, 1).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .execute(&pool)
            .await;
        }
    }
}

/// The JWT secret of APIs the benchmark starts.
pub const SECRET: &str = "bench-secret-bench-secret-bench-secret!";

/// An API configuration on a scratch database, with the bench secret.
pub fn bench_config(config: &Config, scratch: &Scratch) -> Config {
    let mut config = config.clone();
    config.database_url = crate::config::Secret::new(scratch.url.clone());
    config.jwt_secret = Some(crate::config::Secret::new(SECRET));
    config.jwks_url = None;
    config.jwt_issuer = None;
    config.jwt_audience = None;
    config.storage_url = "memory://".into();
    config.db_max_connections = 16;
    config
}

/// A bearer token for `user` under [`bench_config`].
pub fn token(config: &Config, user: &str) -> anyhow::Result<String> {
    let user = questboard_core::identity::UserId::parse(user).map_err(anyhow::Error::msg)?;
    Ok(crate::auth::mint(config, &user, Duration::from_secs(3600))?)
}

/// Polls `check` every 20 ms until it holds or `limit` passes.
pub async fn wait_for<F, Fut>(limit: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = std::time::Instant::now() + limit;
    while !check().await? {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "timed out after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
