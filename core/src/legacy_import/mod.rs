//! Importing campaigns from the old app's folder layout.
//!
//! The old app kept every campaign as a folder,
//! `campaigns/<env>/campaign_<n> - <Name>/...` (on a local disk or under
//! an object-store prefix), with human-readable names in paths and no
//! owner. An import **run** scans such a tree and, for every folder the
//! operator's [`Mapping`] gives an owner, creates a session (named from
//! the folder, with that owner and members, the legacy path recorded in
//! `legacy_campaigns`) and copies the folder's files into the session's
//! areas by [`place`]'s rules:
//!
//! | legacy file | goes to |
//! |---|---|
//! | history and logs (`.txt`, `.log`, `.md`, `.json`, `.jsonl` under a `history`/`log`/`transcript` name) | `logs/` |
//! | other `.json` (must parse) | `data/` |
//! | images (`.png`, `.jpg`, `.jpeg`, `.webp`) | `media/images/`, as media items of source `migrated` |
//! | audio (`.wav`, `.mp3`, `.ogg`, `.opus`, `.flac`) | `media/audio/`, likewise |
//! | anything else | `data/legacy/` |
//!
//! Names are made safe component by component ([`safe_name`]), then
//! validated as every storage write is; types are checked against their
//! bytes where questboard knows the type. What a run cannot decide is
//! recorded as a **problem** (`legacy_import_problems`), never guessed: a
//! folder without an owner in the mapping, two folders claiming the same
//! campaign number, a folder that is not named as a campaign, a file that
//! cannot be read or is not what its name says, an oversized file, and
//! two files whose names collide once made safe.
//!
//! A run is idempotent: a folder already imported is skipped, one whose
//! import was interrupted is finished (every file's key and media id are
//! chosen before its copy starts, so a repeated copy overwrites the same
//! object), and new folders are picked up. A dry run reads and checks
//! everything and changes nothing but its own run's records.
//!
//! By concern: `mapping` (who gets which folder), `placement` (the rules
//! above), `runs` (a run and its problems), `campaigns` (folders made
//! sessions), `files` (each file's record), `start` (the job and the one
//! way to start it). The worker's handler does the reading and copying.

use serde::{Deserialize, Serialize};

use crate::operator_run;

mod campaigns;
mod files;
mod mapping;
mod placement;
mod runs;
mod start;

pub use campaigns::{
    Campaign, Imported, Made, NewCampaign, RolledBack, begin_campaign, campaigns, finish_campaign,
    forget, imported, imported_by, made_by, roll_back,
};
pub use files::{LegacyFile, claim_file, files_of, record_copied, resolve};
pub use mapping::{Mapping, Owners, parse_mapping, validate_mapping};
pub use placement::{Placement, check_bytes, parse_folder, place, safe_name, session_name};
pub use runs::{Problem, Run, check_source, create_run, get_run, problems, record_problem};
pub use start::{ImportLegacy, Started, start};

/// Why an import call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// No such run.
    #[error("no such import run")]
    NotFound,
    /// The run is not in a state that allows it.
    #[error("{0}")]
    Conflict(String),
    /// Storage failed.
    #[error(transparent)]
    Storage(crate::storage::Error),
    /// Enqueueing its job failed.
    #[error(transparent)]
    Job(#[from] crate::jobs::Error),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The source may not be used (not allowed, or not usable).
    #[error(transparent)]
    Source(#[from] crate::sources::SourceError),
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

/// Legacy import runs (`legacy_import_runs`; reports under
/// `reports/legacy-import/`).
pub const RUNS: operator_run::Kind = operator_run::Kind {
    table: "legacy_import_runs",
    reports: "legacy-import",
    ends_metric: crate::metrics::LEGACY_IMPORT_RUNS_TOTAL,
};

/// Most folders one mapping names.
pub const MAX_MAPPING: usize = 100_000;
/// Most members (players and game masters) one folder's mapping names.
pub const MAX_MEMBERS: usize = 100;
/// The default largest file a run copies (the largest upload, a map).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 25 * 1000 * 1000;
/// The largest `max_file_bytes` a run may ask for (a file is held in
/// memory while it is checked and copied).
pub const MAX_FILE_BYTES_CEILING: u64 = 1 << 30;
/// Where campaigns live below the tree's root.
pub const CAMPAIGNS: &str = "campaigns";

/// A run's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// Largest file copied; larger ones are reported as oversized.
    pub max_file_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        }
    }
}
