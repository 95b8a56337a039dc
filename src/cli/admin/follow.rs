//! Following jobs from the command line: a progress bar until a job ends
//! ([`wait`]), enqueue-then-wait for maintenance jobs ([`start_and_wait`]),
//! and what every operator run shares (a run's report, followed to its
//! end and printed; a run shown with its kind's own counts).

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use questboard_core::jobs::{self, JobRecord, JobStatus};
use questboard_core::operator_run::Summary;
use questboard_core::wakeups::Publisher;
use questboard_workers::jobs::Registry;
use serde_json::Value;
use sqlx::PgPool;

use super::jobs::find;
use super::operator;

/// Waits for operator run job `job_id` (of `kind`) to succeed and prints
/// its report (also to `output`); fails if the job failed.
pub(super) async fn follow_run(
    pool: &PgPool,
    registry: &Registry,
    kind: &str,
    job_id: &str,
    output: Option<&Path>,
) -> anyhow::Result<Value> {
    let job = wait(pool, registry, job_id).await?;
    let report = match job.client_status() {
        JobStatus::Succeeded => job.result.unwrap_or_default(),
        status => bail!(
            "{kind} job {job_id} {}: {}",
            status.as_str(),
            job.last_error.unwrap_or_default()
        ),
    };
    print_report(&report, output)?;
    Ok(report)
}

/// Prints `report` as JSON, and writes it to `output` too.
pub(super) fn print_report(report: &Value, output: Option<&Path>) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    if let Some(path) = output {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    println!("{text}");
    Ok(())
}

/// Prints a run: what every run shows, then its kind's own fields.
pub(super) fn show_run(summary: Summary, own: Value) -> anyhow::Result<()> {
    let mut shown = serde_json::to_value(summary)?;
    if let (Some(shown), Value::Object(own)) = (shown.as_object_mut(), own) {
        shown.extend(own);
    }
    println!("{}", serde_json::to_string_pretty(&shown)?);
    Ok(())
}

/// Enqueues `job`, then (unless `no_wait`) shows its progress until it
/// ends; returns its report, or fails if it failed.
pub(super) async fn start_and_wait<J: questboard_workers::jobs::Handler>(
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
pub(super) async fn wait(
    pool: &PgPool,
    registry: &Registry,
    id: &str,
) -> anyhow::Result<JobRecord> {
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
