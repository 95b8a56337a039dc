//! `questboard admin jobs`: listing, showing, retrying and cancelling
//! jobs, as the `/api/admin/jobs` routes do.

use std::time::Duration;

use anyhow::{Context as _, bail};
use questboard_core::jobs::control::{self, Cancellation, ListFilter, Retry};
use questboard_core::jobs::{self, JobRecord, JobStatus};
use questboard_core::wakeups::Publisher;
use questboard_workers::jobs::Registry;
use serde_json::json;
use sqlx::PgPool;

use super::operator;

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

pub(super) async fn run(
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
                    limit: limit.clamp(1, 500),
                    ..ListFilter::default()
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

pub(super) async fn find(pool: &PgPool, id: &str) -> anyhow::Result<JobRecord> {
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
