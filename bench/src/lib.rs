//! `questboard-bench`: reproducible measurements against the Postgres and
//! Redis given by `DATABASE_URL` and `REDIS_URL`.
//!
//! Its own binary, so the production `questboard` binary carries no bench
//! code. Each measurement creates its own scratch database
//! (`qb_bench_<time>`), applies the migrations, measures, and drops it,
//! also when the measurement fails; scratch databases of killed runs (older
//! than six hours) are dropped when the next run starts. Workers and the API
//! run as separate processes of the `questboard` binary (`questboard work`,
//! `questboard serve`; `--questboard PATH` picks which build), as in
//! production; this process only drives them, and plays the raw
//! apalis-postgres workers and the workers of its no-op job kind. Every
//! scenario runs several times and is reported as median with min and max,
//! because the machine is shared and noisy; comparisons are ratios measured
//! in the same run, and the CPU each process kind spent per 1,000 turns is
//! reported next to the rates (it moves much less than they do). `--quick`
//! uses tiny sizes: a smoke test for CI, not a measurement.
//!
//! - [`baseline`]: raw apalis-postgres noop jobs (its own workers, several
//!   batch sizes) and the bare Postgres ceiling.
//! - [`enqueue`]: turns accepted per second through the HTTP API and
//!   through the library, one by one and batched.
//! - [`pipeline`]: end-to-end turns per second over 1,000, 10 and 1
//!   sessions against raw apalis-postgres in the same run; idle pickup.
//! - [`limited`]: turns under a provider limit shared by the workers
//!   (600 requests a minute over 100 sessions): turns per second and the
//!   time turns waited for the limiter.
//! - [`plain`]: the plain lane: a no-op kind registered only here
//!   ([`noop`]) against raw apalis-postgres at batch 100, same run.
//! - [`realwork`]: turns with a real (5 ms) scripted reply, 200 sessions,
//!   one worker of 10 slots: how close to the 2,000 turns/s limit.
//! - [`retention`]: pruning a million finished job rows while turns are
//!   submitted: rows per second and the longest lock wait it caused.
//! - [`realtime`]: POST-to-WebSocket latency at half the measured maximum,
//!   and fan-out to many sockets of one API process with its memory per
//!   socket.
//! - [`media`]: uploading a 20 MB map and fetching a 1 MB image through
//!   one API process, on the local filesystem and on S3 (moto), and the
//!   API's memory while it receives a 25 MB upload.
//! - [`migration`]: an asset migration out of a source database into
//!   storage (MB/s of 1 MB maps, assets/s of small notes), on the local
//!   filesystem and on S3 (moto).
//! - [`console`]: the operators' console's reads (overview, job list with
//!   its filters) over a million job rows, p50 and p95, with the plans.
//! - [`history`]: the turn path's rate and latency on 0, 1 million and 10
//!   million rows of history (turns, events, finished jobs), and beside
//!   100,000 idle sessions.
//! - [`workers`]: 1, 2, 4 and 8 worker processes on one database, with
//!   what Postgres' busy backends wait on.
//! - [`resume`]: a socket resuming after 1,000 and 100,000 missed events.
//! - [`sockets`]: 20,000 sockets over two API processes, fan-out to them,
//!   and one process restarting under half of them.
//! - [`retention::events`]: pruning 10 million old session events while
//!   turns run.
//! - [`processes`]: starting and stopping the processes measured.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use questboard_core::db;
use sqlx::PgPool;

use questboard::config::Config;

pub mod baseline;
pub mod console;
pub mod enqueue;
pub mod history;
pub mod limited;
pub mod media;
pub mod migration;
pub mod noop;
pub mod pipeline;
pub mod plain;
pub mod processes;
pub mod realtime;
pub mod realwork;
pub mod resume;
pub mod retention;
pub mod sockets;
pub mod state;
pub mod workers;

/// The benchmark's command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "questboard-bench",
    version,
    about = "Measures questboard (see BENCHMARKS.md)"
)]
pub struct Cli {
    /// Settings of the measured processes (each also read from its
    /// environment variable: DATABASE_URL, REDIS_URL, ...).
    #[command(flatten)]
    pub config: Config,
    /// What to measure.
    #[command(flatten)]
    pub args: BenchArgs,
}

/// What to measure.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The `questboard` binary to measure (default: next to this one).
    #[arg(long)]
    pub questboard: Option<std::path::PathBuf>,
    /// Small sizes (seconds, for CI smoke runs); figures are not meaningful.
    #[arg(long)]
    pub quick: bool,
    /// Runs per scenario.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Worker processes (W).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Sessions each worker process runs at once (K).
    #[arg(long, default_value_t = 256)]
    pub concurrency: u32,
    /// Concurrent clients of the enqueue and latency scenarios (C).
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Turns per call of the batched library enqueue.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Only these groups (comma-separated): `baseline`, `enqueue`,
    /// `pipeline`, `limited`, `plain`, `realwork`, `retention`, `realtime`,
    /// `state`, `media`, `migration`, `console`, `history`, `idle`,
    /// `workers`, `resume`, `sockets`, `prune-events` (default: all).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Session counts of the end-to-end throughput scenario (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1000,10,1")]
    pub sessions: Vec<usize>,
    /// apalis-postgres batch sizes compared against (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    pub apalis_batches: Vec<usize>,
    /// WebSocket clients for the fan-out scenario (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
    pub fanout: Vec<usize>,
    /// Offered load of the latency scenario, turns/s (default: half the
    /// maximum measured just before, in the same setup).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Finished job rows of the retention scenario.
    #[arg(long, default_value_t = 1_000_000)]
    pub prune_rows: usize,
    /// Job rows of the console scenario.
    #[arg(long, default_value_t = 1_000_000)]
    pub console_rows: usize,
    /// Rows of history (in each of turns, events and finished jobs) of the
    /// history scenario (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0,1000000,10000000")]
    pub history_rows: Vec<usize>,
    /// Idle sessions (ten finished turns each) of the idle scenario.
    #[arg(long, default_value_t = 100_000)]
    pub idle_sessions: usize,
    /// Worker process counts of the workers scenario (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub worker_counts: Vec<usize>,
    /// Missed events a socket resumes after (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1000,100000")]
    pub resume_events: Vec<usize>,
    /// Sockets of the two-API-process scenario.
    #[arg(long, default_value_t = 20_000)]
    pub sockets: usize,
    /// Old session events of the event-pruning scenario.
    #[arg(long, default_value_t = 10_000_000)]
    pub prune_event_rows: usize,
    /// Internal: run as a raw apalis-postgres noop worker with this batch
    /// size against DATABASE_URL until killed (the baseline starts these).
    #[arg(long, hide = true)]
    pub apalis_worker: Option<usize>,
    /// Internal: run as a process of socket clients for the sockets
    /// scenario (its sockets as a JSON line on stdin).
    #[arg(long, hide = true)]
    pub socket_clients: bool,
    /// Internal: run as a questboard worker serving only the no-op kind
    /// against DATABASE_URL until killed (the plain scenario starts these).
    #[arg(long, hide = true)]
    pub noop_worker: bool,
}

impl BenchArgs {
    fn wants(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == group)
    }
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
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    /// Prints the figure as a Markdown table row.
    pub fn print(&self) {
        let min = self.values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self
            .values
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        // Ratios need two decimals; rates and times read fine with one.
        let digits = if self.unit == "x" { 2 } else { 1 };
        println!(
            "| {:<70} | {:>10.digits$} {:<7} | {:>10.digits$} .. {:<10.digits$} | {} |",
            self.name,
            self.median(),
            self.unit,
            min,
            max,
            self.values.len()
        );
    }
}

/// Runs the selected scenarios (or the internal apalis worker) and prints a
/// table.
pub async fn run(config: &Config, args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    if let Some(batch) = args.apalis_worker {
        baseline::serve_noop_worker(config, batch, args.concurrency as usize).await?;
        return Ok(Vec::new());
    }
    if args.noop_worker {
        noop::serve(config).await?;
        return Ok(Vec::new());
    }
    if args.socket_clients {
        sockets::serve_clients().await?;
        return Ok(Vec::new());
    }
    processes::use_questboard(args.questboard.clone())?;
    Scratch::drop_stale(config).await;
    println!("| scenario | median | min .. max | runs |");
    println!("|---|---|---|---|");
    let mut figures = Vec::new();
    if args.wants("baseline") {
        figures.extend(baseline::run(config, args).await?);
    }
    if args.wants("enqueue") {
        figures.extend(enqueue::run(config, args).await?);
    }
    if args.wants("pipeline") {
        figures.extend(pipeline::run(config, args).await?);
    }
    if args.wants("limited") {
        figures.extend(limited::run(config, args).await?);
    }
    if args.wants("plain") {
        figures.extend(plain::run(config, args).await?);
    }
    if args.wants("realwork") {
        figures.extend(realwork::run(config, args).await?);
    }
    if args.wants("retention") {
        figures.extend(retention::run(config, args).await?);
    }
    if args.wants("realtime") {
        figures.extend(realtime::run(config, args).await?);
    }
    if args.wants("state") {
        figures.extend(state::run(config, args).await?);
    }
    if args.wants("media") {
        figures.extend(media::run(config, args).await?);
    }
    if args.wants("migration") {
        figures.extend(migration::run(config, args).await?);
    }
    if args.wants("console") {
        figures.extend(console::run(config, args).await?);
    }
    if args.wants("history") {
        figures.extend(history::run(config, args).await?);
    }
    if args.wants("idle") {
        figures.extend(history::idle(config, args).await?);
    }
    if args.wants("workers") {
        figures.extend(workers::run(config, args).await?);
    }
    if args.wants("resume") {
        figures.extend(resume::run(config, args).await?);
    }
    if args.wants("sockets") {
        figures.extend(sockets::run(config, args).await?);
    }
    if args.wants("prune-events") {
        figures.extend(retention::events(config, args).await?);
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
        let admin_url = config.database_url().to_owned();
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

    /// Runs `measure` on a fresh scratch database, then drops the database
    /// whether `measure` succeeded or not.
    pub async fn scoped<T>(
        config: &Config,
        measure: impl AsyncFnOnce(&Scratch) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let scratch = Scratch::create(config).await?;
        let result = measure(&scratch).await;
        scratch.drop_db().await;
        result
    }

    /// Drops scratch databases left behind by runs that were killed (older
    /// than six hours, so a run going on in parallel keeps its own).
    pub async fn drop_stale(config: &Config) {
        let Ok(pool) = db::connect(config.database_url(), 1).await else {
            return;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let cutoff = now.saturating_sub(6 * 3600 * 1000);
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT datname FROM pg_database WHERE datname LIKE 'qb\\_bench\\_%'",
        )
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
        for name in names {
            let stamp = name
                .strip_prefix("qb_bench_")
                .and_then(|t| t.parse::<u128>().ok());
            if stamp.is_some_and(|t| t < cutoff) {
                tracing::info!(database = %name, "dropping a stale scratch database");
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&pool)
                .await;
            }
        }
        pool.close().await;
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

/// Refreshes the planner's statistics after a bulk load, as autovacuum's
/// analyze would soon after in production (it is off on some benchmark
/// machines, and plans made on stale statistics can be much slower).
pub async fn analyze(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("ANALYZE").execute(pool).await?;
    Ok(())
}

/// The JWT secret of APIs the benchmark starts.
pub const SECRET: &str = "bench-secret-bench-secret-bench-secret!";

/// A bearer token for `user`, signed with [`SECRET`].
pub fn token(config: &Config, user: &str) -> anyhow::Result<String> {
    minted(config, user, questboard::auth::Access::None)
}

/// An operator's token for `user` for APIs the benchmark starts.
pub fn operator_token(config: &Config, user: &str) -> anyhow::Result<String> {
    minted(config, user, questboard::auth::Access::Operator)
}

fn minted(config: &Config, user: &str, access: questboard::auth::Access) -> anyhow::Result<String> {
    let mut config = config.clone();
    config.jwt_secret = Some(questboard::config::Secret::new(SECRET));
    config.jwks_url = None;
    let user = questboard_core::identity::UserId::parse(user).map_err(anyhow::Error::msg)?;
    Ok(questboard::auth::mint_with(
        &config,
        &user,
        Duration::from_secs(3600),
        access,
    )?)
}

/// Polls `check` every `every` until it holds or `limit` passes.
pub async fn wait_for<F, Fut>(limit: Duration, every: Duration, mut check: F) -> anyhow::Result<()>
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
        tokio::time::sleep(every).await;
    }
    Ok(())
}

/// The value at quantile `q` of sorted `values`.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// CPU time spent while something ran, by kind of process: this process,
/// the processes it started, Postgres, Redis, and everything else on the
/// machine. Read from `/proc` (Linux only; zeros elsewhere). Processes that
/// exit before [`CpuMeter::stop`] are not counted: stop it first.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    all: f64,
    before: HashMap<u32, (Kind, f64)>,
    children: Vec<u32>,
}

/// CPU seconds spent between [`CpuMeter::start`] and [`CpuMeter::stop`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    /// The questboard processes the benchmark started (workers, API).
    pub questboard: f64,
    /// This process (load generator, clients).
    pub bench: f64,
    /// Postgres server processes.
    pub postgres: f64,
    /// Redis server processes.
    pub redis: f64,
    /// Everything else.
    pub others: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bench,
    Child,
    Postgres,
    Redis,
}

impl CpuMeter {
    /// Starts measuring; `children` are the pids of the processes started.
    pub fn start(children: &[u32]) -> Self {
        Self {
            all: machine_cpu_seconds(),
            before: processes(children),
            children: children.to_vec(),
        }
    }

    /// What was used since [`CpuMeter::start`].
    pub fn stop(self) -> CpuUse {
        let all = machine_cpu_seconds() - self.all;
        let mut used = CpuUse::default();
        for (pid, (kind, now)) in processes(&self.children) {
            let spent = now - self.before.get(&pid).map_or(0.0, |(_, t)| *t);
            match kind {
                Kind::Bench => used.bench += spent,
                Kind::Child => used.questboard += spent,
                Kind::Postgres => used.postgres += spent,
                Kind::Redis => used.redis += spent,
            }
        }
        used.others = (all - used.bench - used.questboard - used.postgres - used.redis).max(0.0);
        used
    }
}

impl CpuUse {
    /// Adds this use, in milliseconds per 1,000 `units`, to `figures`
    /// (questboard processes, Postgres, Redis, this process).
    pub fn record(&self, units: usize, figures: &mut [Figure; 4]) {
        let per = |s: f64| s * 1e6 / units.max(1) as f64;
        for (figure, value) in
            figures
                .iter_mut()
                .zip([self.questboard, self.postgres, self.redis, self.bench])
        {
            figure.values.push(per(value));
        }
    }
}

/// The four CPU figures [`CpuUse::record`] fills, named after `what`.
pub fn cpu_figures(what: &str) -> [Figure; 4] {
    ["questboard processes", "Postgres", "Redis", "bench (load)"]
        .map(|who| Figure::new(format!("  ... CPU per 1,000 {what}: {who}"), "ms"))
}

/// Clock ticks per second of `/proc` counters (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

fn processes(children: &[u32]) -> HashMap<u32, (Kind, f64)> {
    let mut found = HashMap::new();
    let me = std::process::id();
    if let Some(t) = pid_cpu_seconds(me) {
        found.insert(me, (Kind::Bench, t));
    }
    for &pid in children {
        if let Some(t) = pid_cpu_seconds(pid) {
            found.insert(pid, (Kind::Child, t));
        }
    }
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
        let kind = match comm.trim() {
            "postgres" => Kind::Postgres,
            "redis-server" => Kind::Redis,
            _ => continue,
        };
        if let Some(t) = pid_cpu_seconds(pid) {
            found.insert(pid, (kind, t));
        }
    }
    found
}

fn pid_cpu_seconds(pid: u32) -> Option<f64> {
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
