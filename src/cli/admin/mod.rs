//! `questboard admin`: what the `/api/admin` routes do, from the command
//! line, against the database in `DATABASE_URL`. Every command that acts
//! is recorded in the operators' audit log as `cli:$USER`.
//!
//! - `admin jobs list [--kind K] [--status S] [--session ID] [--limit N]`,
//!   `admin jobs show ID`, `admin jobs retry ID`, `admin jobs cancel ID`;
//! - `admin queues` (statistics), `admin queues pause KIND`, `admin queues
//!   resume KIND`; `admin schedule`;
//! - `admin prune [--dry-run] [--only invites,jobs,...]` and `admin
//!   reconcile [--repair] [--output FILE]` enqueue the job, show a progress
//!   bar until a worker has run it, print its report and exit non-zero if
//!   it failed (`--no-wait` prints the job id and returns);
//! - `admin migrate-assets run --source URL (--mapping FILE.csv |
//!   --session-column COL) [--dry-run] [--keep-source] ...`, `admin
//!   migrate-assets rollback --run ID`, `resume --run ID`, `show --run ID`:
//!   asset migrations (see `docs/runbooks/asset-migration.md`); `run` and
//!   `rollback` show a progress bar until done and exit non-zero unless the
//!   run completed (or was rolled back);
//! - `admin import-legacy run --source URL --mapping FILE [--dry-run]
//!   [--strict]`, `rollback --run ID [--force]`, `show --run ID`: legacy layout
//!   imports ([`legacy`]; `docs/runbooks/legacy-import.md`);
//! - `admin quotas`, `admin quotas set NAME VALUE`, `admin quotas reset
//!   NAME`: members' quotas and budgets ([`quotas`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use questboard_core::jobs::control;
use questboard_core::wakeups::Publisher;
use questboard_core::{audit, db};
use questboard_workers::jobs::{prune, reconcile, registry};
use serde_json::json;

use self::follow::{print_report, start_and_wait};
use crate::config::Config;

mod follow;
mod jobs;
pub mod legacy;
mod migrate;
mod quotas;

pub use jobs::JobsCommand;
pub use migrate::{MigrateArgs, MigrateCommand};
pub use quotas::QuotasCommand;

/// The operators' commands.
#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Jobs: list, show, retry, cancel.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Per-kind queue statistics; or pause and resume a kind.
    Queues {
        /// Pause or resume a kind (none: show statistics).
        #[command(subcommand)]
        action: Option<QueuesCommand>,
    },
    /// The schedule: entries, next fire times, last ticks, the leader.
    Schedule,
    /// Members' quotas and budgets; or override one, or reset it.
    Quotas {
        /// Set or reset a quota (none: list them).
        #[command(subcommand)]
        action: Option<QuotasCommand>,
    },
    /// Prune now: enqueue a `prune` job and wait for a worker to run it.
    Prune {
        /// Report what would go; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Only these categories (invites, jobs, events, leases,
        /// idle_sessions, archived_sessions).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Print the job id and return without waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// Asset migrations out of the old campaign service's database.
    #[command(name = "migrate-assets", subcommand)]
    MigrateAssets(MigrateCommand),
    /// Campaigns from the old app's folder layout, imported as sessions.
    #[command(name = "import-legacy", subcommand)]
    ImportLegacy(legacy::ImportCommand),
    /// Reconcile metadata with storage now: enqueue a `reconcile` job and
    /// wait for a worker to run it.
    Reconcile {
        /// Delete orphans past the grace period and write missing manifests.
        #[arg(long)]
        repair: bool,
        /// Also write the report to this file.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Print the job id and return without waiting.
        #[arg(long)]
        no_wait: bool,
    },
}

/// `admin queues pause|resume`.
#[derive(Debug, clap::Subcommand)]
pub enum QueuesCommand {
    /// No worker claims the kind's jobs until it is resumed.
    Pause {
        /// The kind.
        kind: String,
    },
    /// Claim the kind's jobs again.
    Resume {
        /// The kind.
        kind: String,
    },
}

/// Who the command line acts as, in logs and job metadata.
fn operator() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

/// The audit record of a command that acts (`None`: it only reads):
/// action, target and detail, named as the HTTP routes name them.
fn audit_record(command: &AdminCommand) -> Option<(&'static str, String, serde_json::Value)> {
    let none = || json!({});
    Some(match command {
        AdminCommand::Jobs(JobsCommand::Retry { id }) => ("job.retry", id.clone(), none()),
        AdminCommand::Jobs(JobsCommand::Cancel { id }) => ("job.cancel", id.clone(), none()),
        AdminCommand::Jobs(_) | AdminCommand::Schedule => return None,
        AdminCommand::Quotas { action: None } => return None,
        AdminCommand::Quotas {
            action: Some(QuotasCommand::Set { name, value }),
        } => ("quota.set", name.clone(), json!({ "value": value })),
        AdminCommand::Quotas {
            action: Some(QuotasCommand::Reset { name }),
        } => ("quota.reset", name.clone(), none()),
        AdminCommand::Queues { action: None } => return None,
        AdminCommand::Queues {
            action: Some(QueuesCommand::Pause { kind }),
        } => ("queue.pause", kind.clone(), none()),
        AdminCommand::Queues {
            action: Some(QueuesCommand::Resume { kind }),
        } => ("queue.resume", kind.clone(), none()),
        AdminCommand::Prune { dry_run, only, .. } => (
            "job.start",
            "prune".into(),
            json!({ "payload": { "dry_run": dry_run, "only": only } }),
        ),
        AdminCommand::Reconcile { repair, .. } => (
            "job.start",
            "reconcile".into(),
            json!({ "payload": { "repair": repair } }),
        ),
        AdminCommand::MigrateAssets(MigrateCommand::Run(args)) => (
            "migration.start",
            "asset_migration".into(),
            json!({ "dry_run": args.dry_run }),
        ),
        AdminCommand::MigrateAssets(MigrateCommand::Rollback { run, .. }) => {
            ("migration.rollback", run.to_string(), none())
        }
        AdminCommand::MigrateAssets(MigrateCommand::Resume { run, .. }) => {
            ("migration.resume", run.to_string(), none())
        }
        AdminCommand::MigrateAssets(MigrateCommand::Show { .. }) => return None,
        AdminCommand::ImportLegacy(legacy::ImportCommand::Run(args)) => (
            "import.start",
            "legacy_import".into(),
            json!({ "dry_run": args.dry_run }),
        ),
        AdminCommand::ImportLegacy(legacy::ImportCommand::Rollback { run, force }) => (
            "import.rollback",
            run.to_string(),
            json!({ "force": force }),
        ),
        AdminCommand::ImportLegacy(legacy::ImportCommand::Show { .. }) => return None,
    })
}

/// Runs an admin command; one that acts is recorded in the operators'
/// audit log (as `cli:$USER`), before (if that fails, nothing is done) and
/// after, with its outcome, as the HTTP routes record theirs.
pub async fn run(config: &Config, command: AdminCommand) -> anyhow::Result<()> {
    let pool = db::connect(config.database_url(), 2)
        .await
        .context("connecting to Postgres (DATABASE_URL)")?;
    let Some((action, target, detail)) = audit_record(&command) else {
        return act(config, &pool, command).await;
    };
    let id = audit::begin(&pool, &operator(), action, &target, &detail)
        .await
        .context("the audit log cannot be written; nothing was done")?;
    let result = act(config, &pool, command).await;
    let (outcome, error) = match &result {
        Ok(()) => (audit::Outcome::Ok, None),
        Err(err) => (audit::Outcome::Failed, Some(format!("{err:#}"))),
    };
    if let Err(err) = audit::finish(&pool, id, outcome, error.as_deref(), None).await {
        eprintln!("warning: the audit record {id} could not be finished: {err}");
    }
    result
}

async fn act(config: &Config, pool: &sqlx::PgPool, command: AdminCommand) -> anyhow::Result<()> {
    let pool = pool.clone();
    // Without REDIS_URL (a `dev` setup) nothing is announced: workers
    // find the jobs on their next poll.
    let wake = match config.redis_url {
        Some(_) => Publisher::new(config.shared_bus()?),
        None => Publisher::disabled(),
    };
    let registry = registry();
    match command {
        AdminCommand::Jobs(command) => jobs::run(&pool, &registry, &wake, command).await,
        AdminCommand::Queues { action: None } => {
            let specs = registry.specs();
            let stats = control::queue_stats(&pool, &specs).await?;
            println!(
                "{:<12} {:>8} {:>8} {:>8} {:>8} {:>9} {:>12} {:>7}",
                "kind",
                "queued",
                "running",
                "retrying",
                "failed",
                "cancelled",
                "oldest wait",
                "paused"
            );
            for s in stats {
                println!(
                    "{:<12} {:>8} {:>8} {:>8} {:>8} {:>9} {:>12} {:>7}",
                    s.kind,
                    s.queued,
                    s.running,
                    s.retrying,
                    s.failed,
                    s.cancelled,
                    s.oldest_wait_seconds
                        .map_or_else(|| "-".to_owned(), |w| format!("{w:.1} s")),
                    if s.paused { "yes" } else { "no" }
                );
            }
            Ok(())
        }
        AdminCommand::Queues {
            action: Some(action),
        } => {
            let (kind, paused) = match &action {
                QueuesCommand::Pause { kind } => (kind, true),
                QueuesCommand::Resume { kind } => (kind, false),
            };
            let spec = registry
                .get(kind)
                .with_context(|| format!("unknown job kind {kind:?}"))?
                .spec;
            control::set_paused(&pool, spec.kind, paused, &operator()).await?;
            if !paused {
                wake.announce(spec.kind);
            }
            // Give the wake-up a moment to leave before the process exits.
            tokio::time::sleep(Duration::from_millis(100)).await;
            println!(
                "{} is {}",
                spec.kind,
                if paused { "paused" } else { "running" }
            );
            Ok(())
        }
        AdminCommand::Quotas { action } => {
            quotas::run(&pool, config.quota_defaults(), action).await
        }
        AdminCommand::Schedule => {
            let entries = crate::app::schedule(config, &registry)?;
            let view = questboard_workers::scheduler::describe(&pool, &entries).await?;
            println!("{}", serde_json::to_string_pretty(&view)?);
            Ok(())
        }
        AdminCommand::Prune {
            dry_run,
            only,
            no_wait,
        } => {
            let payload = json!({ "dry_run": dry_run, "only": only });
            let job: prune::Prune = serde_json::from_value(payload).context(
                "--only takes invites, jobs, events, leases, state_requests, proposals, media_versions, idle_sessions, archived_sessions",
            )?;
            let report = start_and_wait(&pool, &registry, &wake, &job, no_wait).await?;
            if let Some(report) = report {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
            Ok(())
        }
        AdminCommand::MigrateAssets(command) => {
            migrate::run(config, &pool, &registry, &wake, command).await
        }
        AdminCommand::ImportLegacy(command) => {
            legacy::run(config, &pool, &registry, &wake, command).await
        }
        AdminCommand::Reconcile {
            repair,
            output,
            no_wait,
        } => {
            let job = reconcile::Reconcile { repair };
            let report = start_and_wait(&pool, &registry, &wake, &job, no_wait).await?;
            if let Some(report) = report {
                print_report(&report, output.as_deref())?;
            }
            Ok(())
        }
    }
}
