//! `questboard admin import-legacy`: legacy layout imports from the
//! command line, as `POST /api/admin/imports/legacy` starts them
//! (`docs/runbooks/legacy-import.md`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use questboard_core::jobs::Job as _;
use questboard_core::legacy_import as li;
use questboard_core::wakeups::Publisher;
use questboard_workers::jobs::Registry;
use serde_json::json;
use sqlx::PgPool;

use super::follow::{follow_run, show_run};
use super::operator;
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
    pub(super) dry_run: bool,
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
            let summary = li::RUNS.summary(pool, run).await?;
            let (_, problems) = li::problems(pool, run, 0).await?;
            return show_run(
                summary,
                json!({
                    "source": record.source_url,
                    "mapped_folders": record.mapping.0.len(),
                    "options": record.options.0,
                    "imported": li::imported_by(pool, run).await?,
                    "problem_counts": problems,
                }),
            );
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
    let report = follow_run(
        pool,
        registry,
        "legacy_import",
        &job_id,
        args.output.as_deref(),
    )
    .await?;
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
    let storage = questboard_core::storage::Storage::from_url(&config.storage_url)
        .context("QB_STORAGE_URL")?;
    let done = li::roll_back(pool, &storage, run, force).await?;
    println!("{}", serde_json::to_string_pretty(&done)?);
    if !done.kept.is_empty() {
        std::process::exit(2);
    }
    Ok(())
}
