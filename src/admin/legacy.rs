//! `questboard admin import-legacy`: legacy layout imports from the
//! command line, as `POST /api/admin/imports/legacy` starts them
//! (`docs/runbooks/legacy-import.md`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use questboard_core::jobs::{Job as _, JobStatus};
use questboard_core::legacy_import as li;
use questboard_core::wakeups::Publisher;
use questboard_workers::jobs::Registry;
use serde_json::json;
use sqlx::PgPool;

use super::{operator, wait};
use crate::config::Config;

/// `admin import-legacy ...`.
#[derive(Debug, clap::Subcommand)]
pub enum ImportCommand {
    /// Start a run and wait for a worker to finish it.
    Run(ImportArgs),
    /// Delete the sessions a run made (their files, media and records;
    /// the legacy tree is never changed). Sessions played in since are
    /// kept unless `--force`.
    Rollback {
        /// The run.
        #[arg(long)]
        run: uuid::Uuid,
        /// Delete sessions with turns too.
        #[arg(long)]
        force: bool,
    },
    /// A run: status, counts so far, report.
    Show {
        /// The run.
        #[arg(long)]
        run: uuid::Uuid,
    },
}

/// `admin import-legacy run ...`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The legacy tree's root, which holds `campaigns/` (file:///...,
    /// s3://bucket/prefix, gs://bucket/prefix).
    #[arg(long, env = "QB_LEGACY_SOURCE_URL")]
    source: String,
    /// The folder -> owner mapping: CSV (`folder,owner[,members[,gms]]`)
    /// or JSON (`{"<env>/<folder>": "owner" | {owner, members, gms, skip}}`).
    #[arg(long)]
    mapping: PathBuf,
    /// Read and check everything, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Largest file copied (at most 1 GiB); larger ones are reported.
    #[arg(long, default_value_t = li::DEFAULT_MAX_FILE_BYTES)]
    max_file_bytes: u64,
    /// Exit with status 2 when the run reports any problem.
    #[arg(long)]
    strict: bool,
    /// Also write the report to this file.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Print the run and job ids and return without waiting.
    #[arg(long)]
    no_wait: bool,
}

/// Runs one `import-legacy` command.
pub async fn run(
    config: &Config,
    pool: &PgPool,
    registry: &Registry,
    wake: &Publisher,
    command: ImportCommand,
) -> anyhow::Result<()> {
    let args = match command {
        ImportCommand::Rollback { run, force } => return rollback(config, pool, run, force).await,
        ImportCommand::Show { run } => {
            let record = li::get_run(pool, run).await?;
            let (_, problems) = li::problems(pool, run, 0).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "run_id": record.id,
                    "status": record.status,
                    "source": record.source_url,
                    "dry_run": record.dry_run,
                    "mapped_folders": record.mapping.0.len(),
                    "options": record.options.0,
                    "imported": li::imported_by(pool, run).await?,
                    "problem_counts": problems,
                    "job_id": record.job_id,
                    "created_by": record.created_by,
                    "created_at": record.created_at,
                    "finished_at": record.finished_at,
                    "report_key": record.report_key,
                }))?
            );
            return Ok(());
        }
        ImportCommand::Run(args) => args,
    };
    let text = std::fs::read_to_string(&args.mapping)
        .with_context(|| format!("reading {}", args.mapping.display()))?;
    let mapping = li::parse_mapping(&text).with_context(|| args.mapping.display().to_string())?;
    let options = li::Options {
        max_file_bytes: args.max_file_bytes,
    };
    let started = li::start(
        pool,
        &config.source_allowlist()?,
        &args.source,
        &mapping,
        options,
        args.dry_run,
        &operator(),
    )
    .await?;
    wake.announce(li::ImportLegacy::SPEC.kind);
    let (run_id, job_id) = (started.run.id, started.job_id);
    if args.no_wait {
        println!("{run_id} {job_id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        return Ok(());
    }
    eprintln!(
        "legacy import run {run_id} ({} folders mapped{}), job {job_id}",
        mapping.len(),
        if args.dry_run { ", dry run" } else { "" }
    );
    let job = wait(pool, registry, &job_id).await?;
    let report = match job.client_status() {
        JobStatus::Succeeded => job.result.unwrap_or_default(),
        status => bail!(
            "legacy_import job {job_id} {}: {}",
            status.as_str(),
            job.last_error.unwrap_or_default()
        ),
    };
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.output {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    println!("{text}");
    if report["outcome"] != "completed" {
        bail!("run {run_id} did not complete; see the report");
    }
    let problems: u64 = report["problem_counts"]
        .as_object()
        .map(|counts| counts.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0);
    eprintln!(
        "imported {} folders ({} files, {} bytes); {problems} problems to reconcile",
        report["imported"].as_array().map_or(0, Vec::len),
        report["files"],
        report["bytes"]
    );
    if args.strict && problems > 0 {
        std::process::exit(2);
    }
    Ok(())
}

/// Deletes what run `run` imported: per session, its objects, then its
/// rows. Prints what went and what stayed; exits with status 2 when a
/// session was kept.
async fn rollback(
    config: &Config,
    pool: &PgPool,
    run: uuid::Uuid,
    force: bool,
) -> anyhow::Result<()> {
    let record = li::get_run(pool, run).await?;
    if record.status == "running" {
        bail!("run {run} is still running; cancel its job first (questboard admin jobs cancel)");
    }
    let storage = questboard_core::storage::Storage::from_url(&config.storage_url)
        .context("QB_STORAGE_URL")?;
    let (mut deleted, mut kept, mut objects) = (Vec::new(), Vec::new(), 0u64);
    for made in li::made_by(pool, run).await? {
        if made.turns > 0 && !force {
            kept.push(json!({ "path": made.path, "session_id": made.session_id,
                "turns": made.turns, "reason": "played in since; --force deletes it" }));
            continue;
        }
        objects += storage.session(&made.storage_prefix)?.delete_all().await?;
        if li::forget(pool, made.session_id).await? {
            deleted.push(json!({ "path": made.path, "session_id": made.session_id }));
        }
    }
    tracing::info!(%run, deleted = deleted.len(), kept = kept.len(), "legacy import rolled back");
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "run_id": run, "deleted": deleted, "kept": kept, "objects_deleted": objects,
        }))?
    );
    if !kept.is_empty() {
        std::process::exit(2);
    }
    Ok(())
}
