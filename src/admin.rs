//! `questboard admin`: what the `/api/admin` routes do, from the command
//! line, against the database in `DATABASE_URL`.
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
//!   imports ([`legacy`]; `docs/runbooks/legacy-import.md`).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use questboard_core::db;
use questboard_core::jobs::control::{self, Cancellation, ListFilter, Retry};
use questboard_core::jobs::{self, JobRecord, JobStatus};
use questboard_core::wakeups::Publisher;
use questboard_workers::jobs::{Registry, prune, reconcile, registry};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::config::Config;

pub mod legacy;

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

/// `admin migrate-assets ...`.
#[derive(Debug, clap::Subcommand)]
pub enum MigrateCommand {
    /// Start a run and wait for a worker to finish it.
    Run(Box<MigrateArgs>),
    /// Put back into the source everything a run moved, byte for byte.
    Rollback {
        /// The run.
        #[arg(long)]
        run: uuid::Uuid,
        /// Print the job id and return without waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// Enqueue a still-running run's job again (after it failed for good,
    /// say while the source was down); it resumes where it was.
    Resume {
        /// The run.
        #[arg(long)]
        run: uuid::Uuid,
        /// Print the job id and return without waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// A run: status, checkpoint, counts, report.
    Show {
        /// The run.
        #[arg(long)]
        run: uuid::Uuid,
    },
}

/// `admin migrate-assets run ...`.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The old service's database (postgres://...).
    #[arg(long, env = "QB_MIGRATION_SOURCE_URL", hide_env_values = true)]
    source: String,
    /// CSV file of `campaign_id,session_id` lines.
    #[arg(long, conflicts_with = "session_column")]
    mapping: Option<PathBuf>,
    /// A column of the source rows holding their session's id (instead of
    /// a mapping file).
    #[arg(long)]
    session_column: Option<String>,
    /// The maps table (`""`: none).
    #[arg(long, default_value = "campaign_maps")]
    maps_table: String,
    /// The notes table (`""`: none).
    #[arg(long, default_value = "campaign_notes")]
    notes_table: String,
    /// JSON file of the tables and their columns, overriding
    /// `--maps-table`/`--notes-table`: `[{"table", "kind": "map"|"note",
    /// "id", "campaign", "name", "content_type", "data"}]`.
    #[arg(long)]
    tables: Option<PathBuf>,
    /// Check everything, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Leave the blobs in the source rows (only write the references).
    #[arg(long)]
    keep_source: bool,
    /// Abort when more than this percentage of the assets so far failed.
    #[arg(long, default_value_t = 1.0)]
    max_failure_percent: f64,
    /// Assets to see before the threshold can abort the run.
    #[arg(long, default_value_t = 100)]
    min_sample: u64,
    /// Source rows read per page.
    #[arg(long, default_value_t = 100)]
    batch: i64,
    /// Also write the report to this file.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Print the run and job ids and return without waiting.
    #[arg(long)]
    no_wait: bool,
}

/// `admin jobs ...`.
#[derive(Debug, clap::Subcommand)]
pub enum JobsCommand {
    /// Jobs, newest first.
    List {
        /// Only this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Only this status: queued, running, succeeded, failed, retrying, cancelled.
        #[arg(long)]
        status: Option<String>,
        /// Only this session's jobs.
        #[arg(long)]
        session: Option<uuid::Uuid>,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// One job in full, as JSON.
    Show {
        /// The job id.
        id: String,
    },
    /// Queue a failed or cancelled job again, attempts reset.
    Retry {
        /// The job id.
        id: String,
    },
    /// Cancel a queued job, or ask a running one to stop.
    Cancel {
        /// The job id.
        id: String,
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

/// Runs an admin command.
pub async fn run(config: &Config, command: AdminCommand) -> anyhow::Result<()> {
    let pool = db::connect(config.database_url.expose(), 2)
        .await
        .context("connecting to Postgres (DATABASE_URL)")?;
    let wake = match redis::Client::open(config.redis_url.expose()) {
        Ok(client) => Publisher::new(client),
        Err(_) => Publisher::disabled(),
    };
    let registry = registry();
    match command {
        AdminCommand::Jobs(command) => jobs_command(&pool, &registry, &wake, command).await,
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
            migrate(config, &pool, &registry, &wake, command).await
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
                let text = serde_json::to_string_pretty(&report)?;
                if let Some(path) = output {
                    std::fs::write(&path, &text)
                        .with_context(|| format!("writing {}", path.display()))?;
                    eprintln!("report written to {}", path.display());
                }
                println!("{text}");
            }
            Ok(())
        }
    }
}

async fn jobs_command(
    pool: &PgPool,
    registry: &Registry,
    wake: &Publisher,
    command: JobsCommand,
) -> anyhow::Result<()> {
    let kind_of = |record: &JobRecord| {
        registry
            .by_queue(&record.job_type)
            .map_or_else(|| record.job_type.clone(), |k| k.spec.kind.to_owned())
    };
    match command {
        JobsCommand::List {
            kind,
            status,
            session,
            limit,
        } => {
            let queue = match kind {
                Some(kind) => Some(
                    registry
                        .get(&kind)
                        .with_context(|| format!("unknown job kind {kind:?}"))?
                        .spec
                        .queue
                        .to_owned(),
                ),
                None => None,
            };
            let status = match status {
                Some(s) => Some(JobStatus::parse(&s).with_context(|| {
                    format!("unknown status {s:?} (queued, running, succeeded, failed, retrying, cancelled)")
                })?),
                None => None,
            };
            let (records, _) = control::list(
                pool,
                &ListFilter {
                    queue,
                    status,
                    session,
                    before: None,
                    limit: limit.clamp(1, 500),
                },
            )
            .await?;
            println!(
                "{:<26} {:<10} {:<9} {:>8} {:<25} last error",
                "id", "kind", "status", "attempts", "run at"
            );
            for r in &records {
                println!(
                    "{:<26} {:<10} {:<9} {:>8} {:<25} {}",
                    r.id,
                    kind_of(r),
                    r.client_status().as_str(),
                    format!("{}/{}", r.attempts, r.max_attempts),
                    r.run_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    r.last_error.as_deref().unwrap_or("")
                );
            }
            Ok(())
        }
        JobsCommand::Show { id } => {
            let record = find(pool, &id).await?;
            let payload = jobs::payload(pool, &id).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "job_id": record.id,
                    "kind": kind_of(&record),
                    "status": record.client_status(),
                    "attempts": record.attempts,
                    "max_attempts": record.max_attempts,
                    "run_at": record.run_at,
                    "started_at": record.lock_at,
                    "finished_at": record.done_at,
                    "session_id": record.session(),
                    "last_error": record.last_error,
                    "result": record.result,
                    "progress": record.progress(),
                    "errors": record.errors,
                    "unique_key": record.unique_key,
                    "lease_holder": record.lease_holder,
                    "cancel_requested_at": record.cancel_requested_at,
                    "metadata": record.metadata,
                    "payload": payload,
                }))?
            );
            Ok(())
        }
        JobsCommand::Retry { id } => {
            let record = find(pool, &id).await?;
            refuse_turns(registry, &record)?;
            match control::retry(pool, &id).await? {
                None => bail!("no job {id}"),
                Some(Retry::Queued) => {
                    wake.announce(&kind_of(&record));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    println!("{id} queued again");
                    Ok(())
                }
                Some(Retry::NotRetryable(status)) => bail!(
                    "only failed or cancelled jobs can be retried; {id} is {}",
                    status.as_str()
                ),
                Some(Retry::KeyTaken(holder)) => {
                    bail!(
                        "its unique key is held by job {holder}; retrying would run the work twice"
                    )
                }
            }
        }
        JobsCommand::Cancel { id } => {
            let record = find(pool, &id).await?;
            refuse_turns(registry, &record)?;
            match control::cancel(pool, &id, &operator()).await? {
                None => bail!("no job {id}"),
                Some(Cancellation::Cancelled) => {
                    println!("{id} cancelled");
                    Ok(())
                }
                Some(Cancellation::Requested) => {
                    wake.cancel(&id);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    println!("{id} is running: asked to stop at its next safe point");
                    Ok(())
                }
                Some(Cancellation::AlreadyFinished(status)) => {
                    bail!("{id} already ended: {}", status.as_str())
                }
            }
        }
    }
}

async fn find(pool: &PgPool, id: &str) -> anyhow::Result<JobRecord> {
    if !jobs::is_job_id(id) {
        bail!("{id:?} is not a job id");
    }
    jobs::fetch(pool, id)
        .await?
        .with_context(|| format!("no job {id}"))
}

fn refuse_turns(registry: &Registry, record: &JobRecord) -> anyhow::Result<()> {
    if registry
        .by_queue(&record.job_type)
        .is_some_and(|k| k.spec.session_serial)
    {
        bail!("turn jobs follow their session's order; they are not retried or cancelled by hand");
    }
    Ok(())
}

async fn migrate(
    config: &Config,
    pool: &PgPool,
    registry: &Registry,
    wake: &Publisher,
    command: MigrateCommand,
) -> anyhow::Result<()> {
    use questboard_core::asset_migration as am;
    use questboard_core::jobs::Job as _;
    let (run_id, job_id, rollback, no_wait, output) = match command {
        MigrateCommand::Show { run } => {
            let record = am::get_run(pool, run).await?;
            let counts = am::counts(pool, run).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "run_id": record.id,
                    "status": record.status,
                    "dry_run": record.dry_run,
                    "options": record.options,
                    "checkpoint": record.checkpoint,
                    "total": record.total,
                    "counts": counts,
                    "job_id": record.job_id,
                    "created_by": record.created_by,
                    "created_at": record.created_at,
                    "finished_at": record.finished_at,
                    "report_key": record.report_key,
                }))?
            );
            return Ok(());
        }
        MigrateCommand::Run(args) => {
            let args = *args;
            let mapping = match &args.mapping {
                Some(path) => am::parse_mapping(
                    &std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?,
                )?,
                None => Vec::new(),
            };
            let tables = match &args.tables {
                Some(path) => serde_json::from_str(
                    &std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?,
                )
                .with_context(|| format!("{}: not a JSON array of tables", path.display()))?,
                None => [
                    (&args.maps_table, questboard_core::media::MediaKind::Map),
                    (&args.notes_table, questboard_core::media::MediaKind::Note),
                ]
                .into_iter()
                .filter(|(t, _)| !t.is_empty())
                .map(|(t, kind)| am::SourceTable::named(t, kind))
                .collect(),
            };
            let options = am::Options {
                tables,
                session_column: args.session_column.clone(),
                keep_source: args.keep_source,
                max_failure_percent: args.max_failure_percent,
                min_sample: args.min_sample,
                batch: args.batch,
            };
            let started = am::start(
                pool,
                &config.source_allowlist()?,
                &args.source,
                &options,
                args.dry_run,
                &mapping,
                &operator(),
            )
            .await?;
            let record = started.run;
            eprintln!(
                "asset migration run {} ({} campaigns mapped{})",
                record.id,
                mapping.len(),
                if args.dry_run { ", dry run" } else { "" }
            );
            (record.id, started.job_id, false, args.no_wait, args.output)
        }
        MigrateCommand::Rollback { run, no_wait } => {
            let started = am::start_rollback(pool, run, &operator()).await?;
            (run, started.job_id, true, no_wait, None)
        }
        MigrateCommand::Resume { run, no_wait } => {
            let started = am::resume(pool, run, &operator()).await?;
            let rollback = started.run.status == "rolling_back";
            (run, started.job_id, rollback, no_wait, None)
        }
    };
    wake.announce(am::MigrateAssets::SPEC.kind);
    if no_wait {
        println!("{run_id} {job_id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        return Ok(());
    }
    eprintln!("asset_migration job {job_id}");
    let job = wait(pool, registry, &job_id).await?;
    let report = match job.client_status() {
        JobStatus::Succeeded => job.result.unwrap_or_default(),
        status => bail!(
            "asset_migration job {job_id} {}: {}",
            status.as_str(),
            job.last_error.unwrap_or_default()
        ),
    };
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(path) = output {
        std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    println!("{text}");
    let expected = if rollback { "rolled_back" } else { "completed" };
    match report["outcome"].as_str() {
        Some(outcome) if outcome == expected => Ok(()),
        other => bail!(
            "run {run_id} ended {}: {}",
            other.unwrap_or("without an outcome"),
            report["aborted"]["reason"]
                .as_str()
                .unwrap_or("see the report")
        ),
    }
}

/// Enqueues `job`, then (unless `no_wait`) shows its progress until it
/// ends; returns its report, or fails if it failed.
async fn start_and_wait<J: questboard_workers::jobs::Handler>(
    pool: &PgPool,
    registry: &Registry,
    wake: &Publisher,
    job: &J,
    no_wait: bool,
) -> anyhow::Result<Option<Value>> {
    let mut conn = pool.acquire().await?;
    let enqueued = jobs::enqueue(
        &mut conn,
        job,
        &jobs::Options {
            metadata: vec![("enqueued_by".into(), operator())],
            ..jobs::Options::default()
        },
    )
    .await?;
    drop(conn);
    wake.announce(J::SPEC.kind);
    if no_wait {
        println!("{}", enqueued.id);
        return Ok(None);
    }
    eprintln!("{} job {}", J::SPEC.kind, enqueued.id);
    let record = wait(pool, registry, &enqueued.id).await?;
    match record.client_status() {
        JobStatus::Succeeded => Ok(record.result),
        status => bail!(
            "{} job {} {}: {}",
            J::SPEC.kind,
            record.id,
            status.as_str(),
            record.last_error.unwrap_or_default()
        ),
    }
}

/// Shows a job's progress until it ends.
async fn wait(pool: &PgPool, registry: &Registry, id: &str) -> anyhow::Result<JobRecord> {
    use indicatif::{ProgressBar, ProgressStyle};
    let bar = ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(120));
    let counting = ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let bounded =
        ProgressStyle::with_template("{spinner} {elapsed_precise} [{wide_bar}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(counting.clone());
    loop {
        let record = find(pool, id).await?;
        match record.client_status() {
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled => {
                bar.finish_and_clear();
                let _ = std::io::stderr().flush();
                return Ok(record);
            }
            JobStatus::Queued => {
                let kind = registry
                    .by_queue(&record.job_type)
                    .map_or("its kind", |k| k.spec.kind);
                bar.set_message(format!("queued: waiting for a worker serving {kind}"));
            }
            JobStatus::Retrying => bar.set_message(format!(
                "retrying ({}/{}): {}",
                record.attempts,
                record.max_attempts,
                record.last_error.as_deref().unwrap_or("")
            )),
            JobStatus::Running => match record.progress() {
                Some(p) => {
                    match p.total {
                        Some(total) if total > 0 => {
                            bar.set_style(bounded.clone());
                            bar.set_length(total as u64);
                            bar.set_position(p.done.max(0) as u64);
                        }
                        _ => {
                            bar.set_style(counting.clone());
                            bar.set_position(p.done.max(0) as u64);
                        }
                    }
                    bar.set_message(format!(
                        "{} done: {}",
                        p.done,
                        p.message.unwrap_or_default()
                    ));
                }
                None => bar.set_message("running"),
            },
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
