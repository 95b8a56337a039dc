//! Operator runs: the long operations an operator starts from the command
//! line or the admin API and follows to a report (asset migrations,
//! legacy imports).
//!
//! Each kind keeps its runs in a table of its own, with its own columns
//! (options, mapping, checkpoint) next to the ones every run has: `id`,
//! `source_url`, `dry_run`, `status`, `report`, `report_key`, `job_id`,
//! `created_by`, `created_at`, `finished_at`. A [`Kind`] names that table,
//! and is the one place those common columns are read and written: a run
//! is recorded and its job enqueued in one transaction, with a unique key
//! per run and direction so asking again returns the job already queued
//! or running ([`Kind::enqueue`]); the worker ends it with its report
//! ([`Kind::finish`], stored under `reports/<kind>/<run>.json`); operators
//! read it back ([`Kind::get`], [`Kind::summary`]). Mapping files (which
//! campaign or folder goes to whom) are CSV, read by one reader
//! ([`csv_lines`]).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::jobs::{self, Job};

/// What can go wrong with a run's common columns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such run.
    #[error("no such run")]
    NotFound,
    /// Enqueueing its job failed.
    #[error(transparent)]
    Job(#[from] jobs::Error),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A kind of operator run.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    /// Its runs' table.
    pub table: &'static str,
    /// Where its reports go, below `reports/`.
    pub reports: &'static str,
    /// The counter of its runs' ends, by `outcome`.
    pub ends_metric: &'static str,
}

/// A started run (or rollback): the run and the job that does it.
#[derive(Debug, Clone)]
pub struct Started<R> {
    /// The run.
    pub run: R,
    /// Its job (an earlier one still queued or running, when asked again).
    pub job_id: String,
}

/// What every run shows operators, whatever its kind.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Summary {
    /// The run.
    #[sqlx(rename = "id")]
    pub run_id: Uuid,
    /// Where it is (`running`, `completed`, `failed`, ...).
    pub status: String,
    /// It checks only, changing nothing.
    pub dry_run: bool,
    /// Its latest job.
    pub job_id: Option<String>,
    /// Who started it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Where its report is stored.
    pub report_key: Option<String>,
}

impl Kind {
    /// Run `id`, as the kind's row type.
    pub async fn get<'e, R>(&self, db: impl PgExecutor<'e>, id: Uuid) -> Result<R>
    where
        R: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin,
    {
        sqlx::query_as::<_, R>(sqlx::AssertSqlSafe(format!(
            "SELECT * FROM {} WHERE id = $1",
            self.table
        )))
        .bind(id)
        .fetch_optional(db)
        .await?
        .ok_or(Error::NotFound)
    }

    /// Run `id`, locked for the rest of `tx`.
    pub async fn lock<R>(&self, tx: &mut PgConnection, id: Uuid) -> Result<R>
    where
        R: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin,
    {
        sqlx::query_as::<_, R>(sqlx::AssertSqlSafe(format!(
            "SELECT * FROM {} WHERE id = $1 FOR UPDATE",
            self.table
        )))
        .bind(id)
        .fetch_optional(tx)
        .await?
        .ok_or(Error::NotFound)
    }

    /// Moves run `id` to `status`; the row after.
    pub async fn set_status<R>(&self, tx: &mut PgConnection, id: Uuid, status: &str) -> Result<R>
    where
        R: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin,
    {
        sqlx::query_as::<_, R>(sqlx::AssertSqlSafe(format!(
            "UPDATE {} SET status = $2 WHERE id = $1 RETURNING *",
            self.table
        )))
        .bind(id)
        .bind(status)
        .fetch_optional(tx)
        .await?
        .ok_or(Error::NotFound)
    }

    /// What operators see of run `id`.
    pub async fn summary<'e>(&self, db: impl PgExecutor<'e>, id: Uuid) -> Result<Summary> {
        self.get(db, id).await
    }

    /// Enqueues `job` for `run` (whose id is `id`) in `tx` and notes it on
    /// the run. One job per run and `direction` (`run`, `rollback`) at a
    /// time: while one is queued or running (or waits to be rescued),
    /// asking again returns it.
    pub async fn enqueue<J: Job, R>(
        &self,
        tx: &mut PgConnection,
        run: R,
        id: Uuid,
        job: &J,
        direction: &str,
        by: &str,
    ) -> Result<Started<R>> {
        let options = jobs::Options {
            unique_key: Some(format!("{direction}:{id}")),
            metadata: vec![("enqueued_by".into(), by.to_owned())],
            ..jobs::Options::default()
        };
        let enqueued = jobs::enqueue(&mut *tx, job, &options).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {} SET job_id = $2 WHERE id = $1",
            self.table
        )))
        .bind(id)
        .bind(&enqueued.id)
        .execute(&mut *tx)
        .await?;
        Ok(Started {
            run,
            job_id: enqueued.id,
        })
    }

    /// Ends run `id` as `status`, with its report (stored at `report_key`
    /// when it was stored).
    pub async fn finish<'e>(
        &self,
        db: impl PgExecutor<'e>,
        id: Uuid,
        status: &str,
        report: &Value,
        report_key: Option<&str>,
    ) -> Result<()> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {} SET status = $2, report = $3, report_key = $4, finished_at = now()
             WHERE id = $1",
            self.table
        )))
        .bind(id)
        .bind(status)
        .bind(report)
        .bind(report_key)
        .execute(db)
        .await?;
        Ok(())
    }

    /// The name of run `id`'s report below `reports/`.
    pub fn report_name(&self, id: Uuid) -> String {
        format!("{}/{id}.json", self.reports)
    }
}

/// One line of a CSV mapping file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvLine {
    /// Its line number, from 1.
    pub line: u64,
    /// Its fields: unquoted ones trimmed, a quoted first field as written
    /// (legacy folder names may end in spaces).
    pub fields: Vec<String>,
}

/// Reads a mapping file's CSV lines (RFC 4180: `"` quotes a field, `""`
/// inside one): lines starting with `#` and blank lines are skipped, and
/// so is a first line whose first field is `header` (any case). Err says
/// which line is not CSV.
pub fn csv_lines(text: &str, header: &str) -> std::result::Result<Vec<CsvLine>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'#'))
        .from_reader(text.as_bytes());
    let mut lines = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| format!("mapping: {e}"))?;
        // The reader's position is where it began reading the record,
        // before the comment and blank lines it skipped; step over those.
        let mut start = record.position().map_or(0, |at| at.byte() as usize);
        while let Some(rest) = text.get(start..) {
            let end = rest.find('\n').map_or(rest.len(), |i| i + 1);
            let skipped = &rest[..end];
            if end == 0 || !(skipped.trim().is_empty() || skipped.starts_with('#')) {
                break;
            }
            start += end;
        }
        let line = text
            .get(..start)
            .map_or(0, |before| before.matches('\n').count() as u64 + 1);
        let first_quoted = text.get(start..).is_some_and(|rest| rest.starts_with('"'));
        let fields: Vec<String> = record
            .iter()
            .enumerate()
            .map(|(i, field)| {
                if i == 0 && first_quoted {
                    field.to_owned()
                } else {
                    field.trim().to_owned()
                }
            })
            .collect();
        if fields.iter().all(String::is_empty) {
            continue;
        }
        if lines.is_empty()
            && !first_quoted
            && fields
                .first()
                .is_some_and(|f| f.eq_ignore_ascii_case(header))
        {
            continue;
        }
        lines.push(CsvLine { line, fields });
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn csv_lines_skip_headers_comments_and_blanks_and_keep_quoted_spaces() {
        let text = "folder,owner\n\
                    \"a, b  \", alice ,x;y\n\
                    # a comment\n\
                    \n\
                    plain , bob\n\
                    \"say \"\"hi\"\"\",carol\n";
        let lines = csv_lines(text, "folder").unwrap();
        let fields: Vec<Vec<&str>> = lines
            .iter()
            .map(|l| l.fields.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(
            fields,
            [
                vec!["a, b  ", "alice", "x;y"],
                vec!["plain", "bob"],
                vec!["say \"hi\"", "carol"],
            ]
        );
        assert_eq!(lines[0].line, 2);
        assert_eq!(lines[1].line, 5);
        // A header only counts first.
        let lines = csv_lines("a,b\nfolder,owner\n", "folder").unwrap();
        assert_eq!(lines.len(), 2);
    }
}
