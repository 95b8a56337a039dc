//! Moving maps and notes out of the old campaign service's database.
//!
//! The old service keeps assets in binary columns (`campaign_maps(id,
//! campaign_id, name, content_type, data)` and `campaign_notes` alike). A
//! migration **run** reads them from that database (the [`Source`]), and
//! for each asset checks it as every upload is checked (its kind's types
//! and size limit, the bytes against the declared type), stores it under
//! its session's prefix, reads the object back and compares its SHA-256,
//! records a media row of source `migrated`, and only then writes the
//! references back into the source row (`storage_asset_id`,
//! `storage_version_id`, `storage_metadata`) and clears the blob (unless
//! the run keeps the source).
//!
//! Everything a run did is in Postgres (`asset_migration_runs`,
//! `asset_migration_items`, `asset_migration_campaigns`): the page it got
//! to, and every asset's outcome with the media id chosen for it before
//! its upload started. A run that is started again (its worker was killed)
//! skips what is done, finishes what was half done with the same media id
//! and key, and so migrates nothing twice. A rollback uses the same rows to
//! put every blob back byte for byte.
//!
//! The source is never trusted: table and column names are checked
//! identifiers, quoted; blobs are fetched one at a time (their size is read
//! first, so an oversized one is never fetched).
//!
//! By concern: `options` (what a run is told, the checks every asset
//! passes), `runs` (a run, its progress and counts), `items` (each
//! asset's record), `source` (the old database), `start` (the job and the
//! ways to start, roll back and resume it). The worker's handler does the
//! moving.

use crate::operator_run;

mod items;
mod options;
mod runs;
mod source;
mod start;

pub use items::{
    Item, Target, Verified, claim, forget, items, moved, record_outcome, record_stored, set_status,
    stored, targets, to_roll_back,
};
pub use options::{
    MAX_MAPPING, Options, SourceTable, check, parse_mapping, quoted, redacted, sniff,
};
pub use runs::{
    Counts, Run, begin_rollback, counts, create_run, failures, get_run, latest_run_for,
    set_checkpoint, set_total,
};
pub use source::{Source, SourceAsset, Sources, Table};
pub use start::{MigrateAssets, Started, resume, start, start_rollback};

/// Why a migration call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request or the source's shape is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// No such run.
    #[error("no such migration run")]
    NotFound,
    /// The run is not in a state that allows it.
    #[error("{0}")]
    Conflict(String),
    /// Enqueueing its job failed.
    #[error(transparent)]
    Job(#[from] crate::jobs::Error),
    /// Our database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The source could not be used (a stable code; the cause is logged).
    #[error(transparent)]
    Source(#[from] crate::sources::SourceError),
}

impl Error {
    /// A failure on the source database, as operators see it.
    fn source(err: sqlx::Error) -> Self {
        Error::Source(crate::sources::pg_error(&err))
    }
}

impl From<operator_run::Error> for Error {
    fn from(err: operator_run::Error) -> Self {
        match err {
            operator_run::Error::NotFound => Error::NotFound,
            operator_run::Error::Job(e) => Error::Job(e),
            operator_run::Error::Database(e) => Error::Database(e),
        }
    }
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Asset migration runs (`asset_migration_runs`; reports under
/// `reports/asset-migration/`).
pub const RUNS: operator_run::Kind = operator_run::Kind {
    table: "asset_migration_runs",
    reports: "asset-migration",
    ends_metric: crate::metrics::MIGRATION_RUNS_TOTAL,
};
