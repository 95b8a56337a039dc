//! `questboard admin migrate-assets`: asset migrations from the command
//! line, as `POST /api/admin/migrations/assets` starts them
//! (`docs/runbooks/asset-migration.md`): `run` and `rollback` follow the
//! run to its end and exit non-zero unless it completed (or was rolled
//! back).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use questboard_core::asset_migration as am;
use questboard_core::jobs::Job as _;
use questboard_core::wakeups::Publisher;
use questboard_workers::jobs::Registry;
use serde_json::json;
use sqlx::PgPool;

use super::follow::{follow_run, show_run};
use super::operator;
use crate::config::Config;

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
    pub(super) dry_run: bool,
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

pub(super) async fn run(
    config: &Config,
    pool: &PgPool,
    registry: &Registry,
    wake: &Publisher,
    command: MigrateCommand,
) -> anyhow::Result<()> {
    let (run_id, job_id, rollback, no_wait, output) = match command {
        MigrateCommand::Show { run } => {
            let record = am::get_run(pool, run).await?;
            let summary = am::RUNS.summary(pool, run).await?;
            let counts = am::counts(pool, run).await?;
            return show_run(
                summary,
                json!({
                    "options": record.options,
                    "checkpoint": record.checkpoint,
                    "total": record.total,
                    "counts": counts,
                }),
            );
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
    let report = follow_run(
        pool,
        registry,
        "asset_migration",
        &job_id,
        output.as_deref(),
    )
    .await?;
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
