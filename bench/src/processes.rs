//! The processes the benchmark measures, pointed at a scratch database:
//! questboard's own worker and API processes (`questboard work`,
//! `questboard serve`, the production binary), raw apalis-postgres noop
//! workers and plain-lane workers with the benchmark's no-op kind (both
//! this binary, `--apalis-worker B` and `--noop-worker`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context as _;
use questboard::config::Config;

use super::{SECRET, Scratch, wait_for};

static QUESTBOARD: OnceLock<PathBuf> = OnceLock::new();

/// Uses `path` as the `questboard` binary (default: next to this one).
pub fn use_questboard(path: Option<PathBuf>) -> anyhow::Result<()> {
    let path = match path {
        Some(path) => path,
        None => std::env::current_exe()
            .context("current_exe")?
            .with_file_name("questboard"),
    };
    anyhow::ensure!(
        path.is_file(),
        "{} not found: build it first (`cargo build --release --bin questboard`) or pass --questboard",
        path.display()
    );
    let _ = QUESTBOARD.set(path);
    Ok(())
}

fn questboard() -> anyhow::Result<PathBuf> {
    QUESTBOARD
        .get()
        .cloned()
        .context("the questboard binary was not chosen")
}

/// How to start worker processes.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// How many processes.
    pub count: usize,
    /// Sessions each drains at once (`QB_WORKER_CONCURRENCY`).
    pub concurrency: u32,
    /// The scripted game master's latency.
    pub latency_ms: u64,
    /// `QB_WORKER_KINDS` (None: all).
    pub kinds: Option<&'static str>,
    /// Serve `/metrics` on this port (None: any free one, unknown).
    pub metrics_port: Option<u16>,
    /// `QB_LLM_REQUESTS_PER_MINUTE` (None: unset, no limit).
    pub llm_requests_per_minute: Option<u32>,
    /// `QB_DB_MAX_CONNECTIONS` of each process.
    pub db_connections: u32,
}

impl WorkerOptions {
    /// `count` processes of `concurrency` sessions, scripted replies at once.
    pub fn turns(count: usize, concurrency: u32) -> Self {
        Self {
            count,
            concurrency,
            latency_ms: 0,
            kinds: None,
            metrics_port: None,
            llm_requests_per_minute: None,
            db_connections: 12,
        }
    }
}

/// Started processes; killed when stopped or dropped.
pub struct Processes {
    children: Vec<Child>,
}

impl Processes {
    fn base(program: PathBuf, scratch: &Scratch, config: &Config) -> Command {
        let mut command = Command::new(program);
        command
            .env("DATABASE_URL", &scratch.url)
            .env(
                "REDIS_URL",
                config.redis_url.as_ref().map_or("", |url| url.expose()),
            )
            .env("QB_METRICS_ADDR", "127.0.0.1:0")
            .env("QB_JWT_SECRET", SECRET)
            .env_remove("QB_JWKS_URL")
            .env("QB_STORAGE_URL", "memory://")
            .env("QB_SCRIPTED_LATENCY_MS", "0")
            .env("QB_LLM_PROVIDER", "scripted")
            // Members' quotas on (their checks are part of what is
            // measured) but far above what a benchmark's users ask for.
            .env("QB_USER_TURNS_PER_MINUTE", "100000000")
            .env("QB_SESSION_MAX_QUEUED_TURNS", "100000000")
            .env("QB_USER_MEDIA_PER_HOUR", "100000000")
            .env("QB_USER_SESSIONS_PER_DAY", "100000000")
            .env("QB_SESSION_MAX_INVITES", "100000000")
            .env("QB_USER_MAX_SOCKETS", "100000000")
            .env("QB_SESSION_DAILY_TOKENS", "1000000000000")
            .env("QB_USER_DAILY_TOKENS", "1000000000000")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        command
    }

    /// `questboard work` processes.
    pub fn workers(
        scratch: &Scratch,
        config: &Config,
        options: &WorkerOptions,
    ) -> anyhow::Result<Self> {
        let mut children = Vec::new();
        for _ in 0..options.count.max(1) {
            let mut command = Self::base(questboard()?, scratch, config);
            command
                .arg("work")
                .env("QB_WORKER_CONCURRENCY", options.concurrency.to_string())
                .env("QB_SCRIPTED_LATENCY_MS", options.latency_ms.to_string())
                .env("QB_DB_MAX_CONNECTIONS", options.db_connections.to_string())
                .env("QB_LEASE_TTL_MS", "30000");
            if let Some(kinds) = options.kinds {
                command.env("QB_WORKER_KINDS", kinds);
            }
            if let Some(rpm) = options.llm_requests_per_minute {
                command.env("QB_LLM_REQUESTS_PER_MINUTE", rpm.to_string());
            }
            if let Some(port) = options.metrics_port {
                command.env("QB_METRICS_ADDR", format!("127.0.0.1:{port}"));
            }
            children.push(command.spawn().context("starting questboard work")?);
        }
        Ok(Self { children })
    }

    /// `count` processes of this binary with `args` and `env`.
    fn this_binary(
        scratch: &Scratch,
        config: &Config,
        count: usize,
        args: &[String],
        env: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let mut children = Vec::new();
        for _ in 0..count.max(1) {
            let mut command = Self::base(
                std::env::current_exe().context("current_exe")?,
                scratch,
                config,
            );
            command.args(args);
            for (k, v) in env {
                command.env(k, v);
            }
            children.push(command.spawn().context("starting a benchmark worker")?);
        }
        Ok(Self { children })
    }

    /// `count` raw apalis-postgres noop workers fetching `batch` jobs at a
    /// time, `concurrency` at once each.
    pub fn apalis(
        scratch: &Scratch,
        config: &Config,
        count: usize,
        concurrency: u32,
        batch: usize,
    ) -> anyhow::Result<Self> {
        let args = [
            "--apalis-worker".to_owned(),
            batch.to_string(),
            "--concurrency".to_owned(),
            concurrency.to_string(),
        ];
        Self::this_binary(scratch, config, count, &args, &[])
    }

    /// `count` questboard worker runtimes serving only the benchmark's
    /// no-op kind, `concurrency` runs at once each.
    pub fn noop(
        scratch: &Scratch,
        config: &Config,
        count: usize,
        concurrency: u32,
    ) -> anyhow::Result<Self> {
        let env = [
            (
                "QB_JOBS_CONCURRENCY",
                format!("{}={concurrency}", super::noop::KIND),
            ),
            ("QB_WORKER_KINDS", super::noop::KIND.to_owned()),
            ("QB_DB_MAX_CONNECTIONS", "12".to_owned()),
            ("QB_LEASE_TTL_MS", "30000".to_owned()),
        ];
        Self::this_binary(scratch, config, count, &["--noop-worker".to_owned()], &env)
    }

    /// One API process; returns once it answers `/healthz`.
    pub async fn api(scratch: &Scratch, config: &Config) -> anyhow::Result<(Self, SocketAddr)> {
        Self::api_with(scratch, config, &[]).await
    }

    /// Like [`Processes::api`], with these environment variables on top
    /// (another storage, other limits).
    pub async fn api_with(
        scratch: &Scratch,
        config: &Config,
        env: &[(&str, &str)],
    ) -> anyhow::Result<(Self, SocketAddr)> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let processes = Self::api_on(scratch, config, port, env).await?;
        Ok((processes, ([127, 0, 0, 1], port).into()))
    }

    /// Like [`Processes::api_with`], on `port` (a restart on the same
    /// address).
    pub async fn api_on(
        scratch: &Scratch,
        config: &Config,
        port: u16,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut command = Self::base(questboard()?, scratch, config);
        command.envs(env.iter().copied());
        command
            .arg("serve")
            .env("QB_HTTP_ADDR", addr.to_string())
            .env("QB_DB_MAX_CONNECTIONS", "16");
        let processes = Self {
            children: vec![command.spawn().context("starting questboard serve")?],
        };
        let http = reqwest::Client::new();
        wait_for(Duration::from_secs(30), Duration::from_millis(20), || {
            let http = http.clone();
            async move {
                Ok(http
                    .get(format!("http://{addr}/healthz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success()))
            }
        })
        .await
        .context("the API process did not come up")?;
        Ok(processes)
    }

    /// One `questboard work` process serving only `kinds`, with these
    /// environment variables on top (another storage, other limits).
    pub fn worker_with(
        scratch: &Scratch,
        config: &Config,
        kinds: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut command = Self::base(questboard()?, scratch, config);
        command.envs(env.iter().copied());
        command
            .arg("work")
            .env("QB_WORKER_KINDS", kinds)
            .env("QB_WORKER_POLL_MS", "50")
            .env("QB_DB_MAX_CONNECTIONS", "8");
        Ok(Self {
            children: vec![command.spawn().context("starting questboard work")?],
        })
    }

    /// Their pids.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// The first one's pid.
    pub fn pid(&self) -> u32 {
        self.children.first().map_or(0, Child::id)
    }

    /// Kills them and reaps them.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The mean of histogram `name` (its `_sum` over its `_count`, all label
/// sets together) in the Prometheus text at `port`.
pub async fn histogram_mean(port: u16, name: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await?
        .text()
        .await?;
    let total = |suffix: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(suffix))
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Ok(total("_sum") / total("_count").max(1.0))
}
