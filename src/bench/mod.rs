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
    /// Session counts of the end-to-end throughput scenario (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1000,10,1")]
    pub sessions: Vec<usize>,
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

/// CPU time used while something ran: by this process, by Postgres and
/// Redis server processes, and by everything else on the machine, read
/// from `/proc` (Linux only; zeros elsewhere).
#[derive(Debug, Clone)]
pub struct CpuMeter {
    own: f64,
    all: f64,
    servers: std::collections::HashMap<u32, (Server, f64)>,
}

/// CPU seconds spent between a [`CpuMeter::start`] and its
/// [`CpuMeter::stop`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    /// By this process.
    pub own: f64,
    /// By Postgres server processes.
    pub postgres: f64,
    /// By Redis server processes.
    pub redis: f64,
    /// By everything else.
    pub others: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Postgres,
    Redis,
}

impl CpuMeter {
    /// Starts measuring.
    pub fn start() -> Self {
        Self {
            own: pid_cpu_seconds("self").unwrap_or(0.0),
            all: machine_cpu_seconds(),
            servers: servers(),
        }
    }

    /// What was used since [`CpuMeter::start`]. Server processes that
    /// exited meanwhile are not counted (stop before closing pools).
    pub fn stop(self) -> CpuUse {
        let own = pid_cpu_seconds("self").unwrap_or(0.0) - self.own;
        let all = machine_cpu_seconds() - self.all;
        let (mut postgres, mut redis) = (0.0, 0.0);
        for (pid, (server, now)) in servers() {
            let before = self.servers.get(&pid).map_or(0.0, |(_, t)| *t);
            match server {
                Server::Postgres => postgres += now - before,
                Server::Redis => redis += now - before,
            }
        }
        CpuUse {
            own,
            postgres,
            redis,
            others: (all - own - postgres - redis).max(0.0),
        }
    }
}

/// Clock ticks per second of `/proc` counters (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

fn servers() -> std::collections::HashMap<u32, (Server, f64)> {
    let mut found = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let server = match comm.trim() {
            "postgres" => Server::Postgres,
            "redis-server" => Server::Redis,
            _ => continue,
        };
        if let Some(t) = pid_cpu_seconds(&pid.to_string()) {
            found.insert(pid, (server, t));
        }
    }
    found
}

fn pid_cpu_seconds(pid: &str) -> Option<f64> {
    // Fields 14 and 15 of /proc/<pid>/stat: utime and stime, after the
    // parenthesised command name.
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1.to_owned();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS)
}

fn machine_cpu_seconds() -> f64 {
    // The first line of /proc/stat: user nice system idle iowait irq
    // softirq steal ...; busy is everything but idle and iowait.
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.to_owned();
            let v: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let busy: f64 = v.iter().take(8).sum::<f64>() - v.get(3)? - v.get(4)?;
            Some(busy / TICKS)
        })
        .unwrap_or(0.0)
}
