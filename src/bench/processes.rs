//! The processes the benchmark measures: worker processes (`questboard
//! work`), API processes (`questboard serve`) and raw apalis-postgres noop
//! workers (`questboard bench --apalis-worker B`), all this same binary,
//! pointed at a scratch database.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

use super::{SECRET, Scratch, wait_for};
use crate::config::Config;

/// Started processes; killed when stopped or dropped.
pub struct Processes {
    children: Vec<Child>,
}

impl Processes {
    fn base(scratch: &Scratch, config: &Config) -> anyhow::Result<Command> {
        let mut command = Command::new(std::env::current_exe().context("current_exe")?);
        command
            .env("DATABASE_URL", &scratch.url)
            .env("REDIS_URL", config.redis_url.expose())
            .env("QB_METRICS_ADDR", "127.0.0.1:0")
            .env("QB_JWT_SECRET", SECRET)
            .env_remove("QB_JWKS_URL")
            .env("QB_STORAGE_URL", "memory://")
            .env("QB_SCRIPTED_LATENCY_MS", "0")
            .env("QB_LLM_PROVIDER", "scripted")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        Ok(command)
    }

    /// `count` worker processes running `concurrency` sessions each, with
    /// the scripted game master at zero latency.
    pub fn workers(
        scratch: &Scratch,
        config: &Config,
        count: usize,
        concurrency: u32,
    ) -> anyhow::Result<Self> {
        let mut children = Vec::new();
        for _ in 0..count.max(1) {
            let mut command = Self::base(scratch, config)?;
            command
                .arg("work")
                .env("QB_WORKER_CONCURRENCY", concurrency.to_string())
                .env("QB_DB_MAX_CONNECTIONS", "12")
                .env("QB_LEASE_TTL_MS", "30000");
            children.push(command.spawn().context("starting questboard work")?);
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
        let mut children = Vec::new();
        for _ in 0..count.max(1) {
            let mut command = Self::base(scratch, config)?;
            command.args([
                "bench",
                "--apalis-worker",
                &batch.to_string(),
                "--concurrency",
                &concurrency.to_string(),
            ]);
            children.push(command.spawn().context("starting an apalis worker")?);
        }
        Ok(Self { children })
    }

    /// One API process; returns once it answers `/healthz`.
    pub async fn api(scratch: &Scratch, config: &Config) -> anyhow::Result<(Self, SocketAddr)> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut command = Self::base(scratch, config)?;
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
        Ok((processes, addr))
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
