//! The command line: one binary, one subcommand per role.
//!
//! - `migrate`: create the database if needed and apply migrations (the
//!   Procfile's release phase).
//! - `serve`: the HTTP API, plus `/metrics` on its own listener.
//! - `work`: a worker: runs durable jobs of every kind (or `QB_WORKER_KINDS`).
//! - `schedule`: the cron scheduler (one leader at a time fires ticks).
//! - `dev`: migrate, then API, worker and scheduler in one process, for
//!   local use; on a private Postgres and the in-process bus when
//!   `DATABASE_URL` and `REDIS_URL` are unset.
//! - `admin`: operators' commands against the database (jobs, queues,
//!   prune, reconcile, migrations, imports): [`admin`].
//! - `token`: print a development JWT signed with `QB_JWT_SECRET`
//!   (`--operator` or `--viewer` for the operators' routes).
//!
//! The benchmark is its own binary (`questboard-bench`, in `bench/`), so
//! this one carries no bench code.

pub mod admin;

use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use questboard_core::db;
use questboard_core::identity::UserId;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::{app, auth, telemetry};

/// questboard: durable background processing for AI game-master campaigns.
#[derive(Debug, Parser)]
#[command(name = "questboard", version, about)]
pub struct Cli {
    /// Settings (each also read from its environment variable).
    #[command(flatten)]
    pub config: Config,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The roles the binary can run.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database if missing and apply all migrations.
    Migrate,
    /// Serve the HTTP API.
    Serve,
    /// Run a worker: process durable jobs until SIGTERM or Ctrl-C.
    Work,
    /// Run the cron scheduler until SIGTERM or Ctrl-C.
    Schedule,
    /// Migrate, then run the API, a worker and the scheduler in one process (local use).
    Dev,
    /// Operators' commands, against the database.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Print a development bearer token signed with QB_JWT_SECRET.
    Token {
        /// The user id (`sub` claim).
        #[arg(long)]
        user: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 24 * 3600)]
        ttl: u64,
        /// Grant the `questboard:operator` permission (the admin routes).
        #[arg(long, conflicts_with = "viewer")]
        operator: bool,
        /// Grant the `questboard:viewer` permission (read the admin routes, act on nothing).
        #[arg(long)]
        viewer: bool,
    },
}

/// Runs the chosen subcommand to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config;
    match cli.command {
        Command::Migrate => {
            telemetry::init_logging(config.log_format);
            migrate(&config).await
        }
        Command::Serve => {
            telemetry::init_logging(config.log_format);
            serve(&config).await
        }
        Command::Work => {
            telemetry::init_logging(config.log_format);
            work(&config).await
        }
        Command::Schedule => {
            telemetry::init_logging(config.log_format);
            schedule(&config).await
        }
        Command::Dev => {
            telemetry::init_logging(config.log_format);
            dev(&config).await
        }
        Command::Admin(command) => {
            telemetry::init_logging(config.log_format);
            admin::run(&config, command).await
        }
        Command::Token {
            user,
            ttl,
            operator,
            viewer,
        } => {
            let user = UserId::parse(&user).context("--user")?;
            let access = match (operator, viewer) {
                (true, _) => auth::Access::Operator,
                (false, true) => auth::Access::Viewer,
                (false, false) => auth::Access::None,
            };
            let token = auth::mint_with(&config, &user, Duration::from_secs(ttl), access)?;
            println!("{token}");
            Ok(())
        }
    }
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    let url = config.database_url();
    db::create_database_if_missing(url)
        .await
        .context("creating the database")?;
    let pool = db::connect(url, 2).await?;
    db::migrate(&pool).await?;
    tracing::info!("migrations applied");
    Ok(())
}

async fn serve(config: &Config) -> anyhow::Result<()> {
    telemetry::serve_metrics(config.metrics_addr)
        .await
        .context("binding QB_METRICS_ADDR")?;
    let bus = config.shared_bus()?;
    let state = app::api_state(config, &bus).await?;
    app::spawn_relay(
        config,
        state.pool.clone(),
        &bus,
        format!("api-{}", std::process::id()),
    );
    let listener = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding QB_HTTP_ADDR {}", config.http_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "serving the API");
    app::serve_http(listener, state, app::shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn work(config: &Config) -> anyhow::Result<()> {
    telemetry::serve_metrics(config.metrics_addr)
        .await
        .context("binding QB_METRICS_ADDR")?;
    let bus = config.shared_bus()?;
    let pool = db::connect(config.database_url(), config.db_max_connections)
        .await
        .context("connecting to Postgres (DATABASE_URL)")?;
    let worker = app::worker(config, pool.clone(), &bus)?;
    app::spawn_relay(config, pool, &bus, worker.id().to_owned());
    worker.run(app::shutdown_signal()).await?;
    Ok(())
}

async fn schedule(config: &Config) -> anyhow::Result<()> {
    telemetry::serve_metrics(config.metrics_addr)
        .await
        .context("binding QB_METRICS_ADDR")?;
    let registry = questboard_workers::jobs::registry();
    let entries = std::sync::Arc::new(app::schedule(config, &registry)?);
    let bus = config.shared_bus()?;
    let pool = db::connect(config.database_url(), 4)
        .await
        .context("connecting to Postgres (DATABASE_URL)")?;
    app::scheduler(config, pool, &bus, entries)
        .run(app::shutdown_signal())
        .await;
    Ok(())
}

/// `dev`: without `DATABASE_URL`, on a private Postgres of its own
/// (started first, stopped last, see [`crate::private_postgres`]);
/// without `REDIS_URL`, on the in-process bus.
async fn dev(config: &Config) -> anyhow::Result<()> {
    use crate::private_postgres::{Places, PrivatePostgres};
    if config.database_url.is_some() {
        return run_dev(config).await;
    }
    let server = PrivatePostgres::start(&Places::from_env()?).await?;
    let mut config = config.clone();
    config.database_url = Some(crate::config::Secret::new(server.url.clone()));
    let result = run_dev(&config).await;
    server.stop().await;
    result
}

async fn run_dev(config: &Config) -> anyhow::Result<()> {
    migrate(config).await?;
    telemetry::serve_metrics(config.metrics_addr)
        .await
        .context("binding QB_METRICS_ADDR")?;
    let bus = config.dev_bus()?;
    let mut state = app::api_state(config, &bus).await?;
    match crate::http::dev::DevTokens::new(config) {
        Ok(tokens) => {
            state.dev_tokens = Some(tokens);
            state.pages = state.pages.with_dev_sign_in();
            tracing::info!("the table offers sign-in by name (POST /dev/token; dev only)");
        }
        Err(err) => tracing::warn!(error = %err, "no sign-in by name on the table"),
    }
    let worker = app::worker(config, state.pool.clone(), &bus)?;
    let scheduler = app::scheduler(config, state.pool.clone(), &bus, state.schedule.clone());
    app::spawn_relay(config, state.pool.clone(), &bus, worker.id().to_owned());
    let listener = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding QB_HTTP_ADDR {}", config.http_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "serving the API (dev: with an embedded worker)");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        app::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let (served, worked, ()) = tokio::join!(
        app::serve_http(listener, state, stopped(stop_rx.clone())),
        worker.run(stopped(stop_rx.clone())),
        scheduler.run(stopped(stop_rx)),
    );
    served?;
    worked?;
    tracing::info!("stopped");
    Ok(())
}
