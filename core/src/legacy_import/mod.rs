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

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::identity::UserId;
use crate::media::{self, MediaKind};
use crate::sessions::{self, SessionName};
use crate::storage::{self, Area};

mod start;

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

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

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

/// Who a legacy folder belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Owners {
    /// The owner's user id (the JWT `sub`), who becomes the session's owner.
    #[serde(default)]
    pub owner: String,
    /// Players.
    #[serde(default)]
    pub members: Vec<String>,
    /// Game masters.
    #[serde(default)]
    pub gms: Vec<String>,
    /// Leave this folder out (reported as skipped): how an operator
    /// settles two folders claiming one campaign.
    #[serde(default)]
    pub skip: bool,
}

/// `"<env>/<folder>"` -> its owners.
pub type Mapping = BTreeMap<String, Owners>;

/// Reads a mapping: JSON (an object of `"<env>/<folder>"` to an owner's id
/// or to `{owner, members, gms, skip}`) or CSV (`folder,owner[,members[,gms]]`,
/// lists separated by `;`, an optional header line, `#` comments).
pub fn parse_mapping(text: &str) -> Result<Mapping> {
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    let mapping = if trimmed.starts_with('{') {
        let raw: BTreeMap<String, Value> = serde_json::from_str(trimmed)
            .map_err(|e| Error::Invalid(format!("the mapping is not a JSON object: {e}")))?;
        let mut mapping = Mapping::new();
        for (folder, value) in raw {
            let owners = match value {
                Value::String(owner) => Owners {
                    owner,
                    members: Vec::new(),
                    gms: Vec::new(),
                    skip: false,
                },
                other => serde_json::from_value(other)
                    .map_err(|e| Error::Invalid(format!("mapping of {folder:?}: {e}")))?,
            };
            mapping.insert(folder, owners);
        }
        mapping
    } else {
        parse_csv(trimmed)?
    };
    validate_mapping(&mapping)?;
    Ok(mapping)
}

fn parse_csv(text: &str) -> Result<Mapping> {
    let mut mapping = Mapping::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = split_csv_line(line)
            .ok_or_else(|| Error::Invalid(format!("mapping line {}: unclosed quote", index + 1)))?;
        if index == 0
            && fields
                .first()
                .is_some_and(|f| f.eq_ignore_ascii_case("folder"))
        {
            continue;
        }
        let list = |i: usize| -> Vec<String> {
            fields
                .get(i)
                .map(|f| {
                    f.split(';')
                        .map(str::trim)
                        .filter(|m| !m.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let (Some(folder), Some(owner)) = (fields.first(), fields.get(1)) else {
            return Err(Error::Invalid(format!(
                "mapping line {}: expected folder,owner[,members[,gms]]",
                index + 1
            )));
        };
        if fields.len() > 4 {
            return Err(Error::Invalid(format!(
                "mapping line {}: at most four fields (folder,owner,members,gms)",
                index + 1
            )));
        }
        let owners = Owners {
            owner: owner.clone(),
            members: list(2),
            gms: list(3),
            skip: false,
        };
        if mapping.insert(folder.clone(), owners).is_some() {
            return Err(Error::Invalid(format!(
                "mapping line {}: folder {folder:?} is mapped twice",
                index + 1
            )));
        }
    }
    Ok(mapping)
}

/// One CSV line's fields (`"` quotes, `""` inside them); None if a quote
/// is left open. Unquoted fields are trimmed; quoted ones are kept as they
/// are (legacy folder names may end in spaces).
fn split_csv_line(line: &str) -> Option<Vec<String>> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let (mut quoted, mut was_quoted) = (false, false);
    let mut chars = line.chars().peekable();
    let mut end = |field: &mut String, was_quoted: &mut bool| {
        let taken = std::mem::take(field);
        fields.push(if *was_quoted {
            taken
        } else {
            taken.trim().to_owned()
        });
        *was_quoted = false;
    };
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) => {
                // A quote opens a field only at its start.
                field.clear();
                quoted = true;
                was_quoted = true;
            }
            (',', false) => end(&mut field, &mut was_quoted),
            (c, false) if was_quoted && c.is_whitespace() => {}
            (c, _) => field.push(c),
        }
    }
    if quoted {
        return None;
    }
    end(&mut field, &mut was_quoted);
    Some(fields)
}

/// Checks every folder key and user id of a mapping.
pub fn validate_mapping(mapping: &Mapping) -> Result<()> {
    if mapping.len() > MAX_MAPPING {
        return Err(Error::Invalid(format!(
            "a mapping names at most {MAX_MAPPING} folders"
        )));
    }
    for (folder, owners) in mapping {
        let Some((env, name)) = folder.split_once('/') else {
            return Err(Error::Invalid(format!(
                "mapping key {folder:?}: expected \"<env>/<folder>\""
            )));
        };
        if env.is_empty()
            || name.is_empty()
            || name.contains('/')
            || folder.len() > 600
            || folder.chars().any(char::is_control)
        {
            return Err(Error::Invalid(format!(
                "mapping key {folder:?}: expected \"<env>/<folder>\", without control characters"
            )));
        }
        if owners.skip {
            continue;
        }
        let users = std::iter::once(&owners.owner)
            .chain(&owners.members)
            .chain(&owners.gms);
        for user in users {
            UserId::parse(user)
                .map_err(|e| Error::Invalid(format!("mapping of {folder:?}: {e}: {user:?}")))?;
        }
        if owners.members.len() + owners.gms.len() > MAX_MEMBERS {
            return Err(Error::Invalid(format!(
                "mapping of {folder:?}: at most {MAX_MEMBERS} members"
            )));
        }
    }
    Ok(())
}

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

/// What a folder's name says: `campaign_<n> - <Name>` (also `campaign_<n>`,
/// `campaign_<n>-<Name>`, `campaign_<n>_<Name>`; `campaign` in any case).
/// None for anything else.
pub fn parse_folder(folder: &str) -> Option<(i64, String)> {
    let lower = folder.get(..9)?.to_ascii_lowercase();
    if lower != "campaign_" {
        return None;
    }
    let rest = &folder[9..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 15 {
        return None;
    }
    let number: i64 = rest[..digits].parse().ok()?;
    let tail = &rest[digits..];
    let title = if tail.is_empty() {
        ""
    } else if let Some(t) = tail.trim_start().strip_prefix('-') {
        t
    } else {
        tail.strip_prefix('_')?
    };
    Some((number, title.trim().to_owned()))
}

/// The session name of folder `n` titled `title`: the title, or
/// `Campaign <n>` when it is empty or not a usable name.
pub fn session_name(number: i64, title: &str) -> Result<SessionName> {
    SessionName::parse(title)
        .or_else(|_| SessionName::parse(&format!("Campaign {number}")))
        .map_err(|e| Error::Invalid(e.to_string()))
}

/// A legacy file name made safe for storage, component by component:
/// letters, digits, `.`, `_` and `-` are kept, every run of anything
/// else becomes one `_`, a leading `.` becomes `_`, and a component longer
/// than [`storage::MAX_COMPONENT_BYTES`] is cut (its extension kept).
/// Refused when nothing usable is left or the path is too deep.
pub fn safe_name(rel: &str) -> Result<String, String> {
    let mut parts = Vec::new();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        let mut safe = String::with_capacity(part.len());
        for c in part.chars() {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                safe.push(c);
            } else if !safe.ends_with('_') {
                safe.push('_');
            }
        }
        if safe.starts_with('.') {
            safe.replace_range(..1, "_");
        }
        if safe.chars().all(|c| matches!(c, '_' | '.' | '-')) {
            return Err(format!("{part:?} has no usable characters"));
        }
        if safe.len() > storage::MAX_COMPONENT_BYTES {
            let ext = safe
                .rsplit_once('.')
                .map(|(_, e)| e)
                .filter(|e| e.len() <= 16)
                .map(|e| format!(".{e}"))
                .unwrap_or_default();
            safe.truncate(storage::MAX_COMPONENT_BYTES - ext.len());
            safe.push_str(&ext);
        }
        parts.push(safe);
    }
    let name = parts.join("/");
    storage::validated_path(&name).map_err(|e| e.to_string())?;
    Ok(name)
}

/// Where a legacy file goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// A file in an area, under a safe name.
    File {
        /// The area.
        area: Area,
        /// Its name in the area.
        name: String,
        /// Its content type (what its extension says).
        content_type: &'static str,
    },
    /// A media item (image or audio).
    Media {
        /// Image or audio.
        kind: MediaKind,
        /// Its content type.
        content_type: &'static str,
        /// The extension its object is stored under.
        ext: &'static str,
    },
}

impl Placement {
    /// The area it goes to.
    pub fn area(&self) -> Area {
        match self {
            Placement::File { area, .. } => *area,
            Placement::Media { kind, .. } => kind.area(),
        }
    }

    /// Its content type.
    pub fn content_type(&self) -> &'static str {
        match self {
            Placement::File { content_type, .. } | Placement::Media { content_type, .. } => {
                content_type
            }
        }
    }
}

const LOG_EXTENSIONS: [&str; 6] = ["txt", "log", "md", "json", "jsonl", "ndjson"];
/// A name part (split at anything not a letter or digit) that marks a log.
fn is_log_word(word: &str) -> bool {
    let word = word.to_ascii_lowercase();
    matches!(word.as_str(), "log" | "logs" | "chatlog" | "gamelog")
        || word.starts_with("histor")
        || word.starts_with("transcript")
}

/// Where the file at `rel` (relative to its folder) goes, by the rules in
/// the module docs; Err when its name cannot be made safe.
pub fn place(rel: &str) -> Result<Placement, String> {
    let file = rel.rsplit('/').next().unwrap_or(rel);
    let (stem, ext) = match file.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => (stem, ext.to_ascii_lowercase()),
        _ => (file, String::new()),
    };
    let dirs: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    let dirs = &dirs[..dirs.len().saturating_sub(1)];
    let is_log = LOG_EXTENSIONS.contains(&ext.as_str())
        && dirs
            .iter()
            .copied()
            .chain(std::iter::once(stem))
            .flat_map(|part| part.split(|c: char| !c.is_ascii_alphanumeric()))
            .any(is_log_word);
    for kind in [MediaKind::Image, MediaKind::Audio] {
        let found = kind.content_types().iter().find(|(ty, stored)| {
            *stored == ext || storage::content_type_for(&format!("x.{ext}")) == *ty
        });
        if let Some((content_type, stored)) = found {
            return Ok(Placement::Media {
                kind,
                content_type,
                ext: stored,
            });
        }
    }
    let (area, name) = if is_log {
        // `logs/history.txt` goes to `logs/history.txt`, not `logs/logs/...`.
        let trimmed = match rel.split_once('/') {
            Some((first, rest))
                if ["logs", "log", "history"].contains(&first.to_ascii_lowercase().as_str()) =>
            {
                rest
            }
            _ => rel,
        };
        (Area::Logs, safe_name(trimmed)?)
    } else if ext == "json" {
        (Area::Data, safe_name(rel)?)
    } else {
        (Area::Data, safe_name(&format!("legacy/{rel}"))?)
    };
    let content_type = storage::content_type_for(&name);
    Ok(Placement::File {
        area,
        name,
        content_type,
    })
}

/// Checks a file's bytes against what its placement says: images and
/// audio by their magic bytes, markdown, text and logs as UTF-8, JSON by
/// parsing. Err says why not.
pub fn check_bytes(placement: &Placement, bytes: &[u8]) -> Result<(), String> {
    let content_type = placement.content_type();
    match content_type {
        "application/json" => serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
            .map(|_| ())
            .map_err(|e| format!("not valid JSON: {e}")),
        "text/plain" | "application/x-ndjson" => std::str::from_utf8(bytes)
            .map(|_| ())
            .map_err(|_| "not UTF-8 text".to_owned()),
        other => match media::Sniffer::new(other) {
            Some(mut sniffer) => sniffer
                .feed(bytes)
                .and_then(|()| sniffer.finish())
                .map_err(|_| format!("the bytes are not {other}")),
            // No check for the type: it is stored as what its extension
            // says (unknown ones as application/octet-stream) and served
            // as an attachment.
            None => Ok(()),
        },
    }
}

/// A run.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Run {
    /// Its id.
    pub id: Uuid,
    /// The tree's root.
    pub source_url: String,
    /// Folder -> owners.
    pub mapping: sqlx::types::Json<Mapping>,
    /// Limits.
    pub options: sqlx::types::Json<Options>,
    /// Check only.
    pub dry_run: bool,
    /// `running`, `completed` or `failed`.
    pub status: String,
    /// Its report, once it ended.
    pub report: Option<Value>,
    /// Where the report is stored.
    pub report_key: Option<String>,
    /// Its latest job.
    pub job_id: Option<String>,
    /// Who started it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

/// Checks a tree's root URL: `file:///...`, `s3://...` or `gs://...`.
pub fn check_source(url: &str) -> Result<()> {
    let ok = (url.starts_with("file:///") || url.starts_with("s3://") || url.starts_with("gs://"))
        && url.len() <= 2000
        && !url.chars().any(char::is_control)
        && !url.split('/').any(|p| p == "..");
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(
            "the source is the legacy tree's root: file:///<absolute path>, s3://<bucket>/<prefix> or gs://<bucket>/<prefix>"
                .into(),
        ))
    }
}

/// Records a run (its source and mapping checked).
pub async fn create_run(
    tx: &mut sqlx::PgConnection,
    allowlist: &crate::sources::Allowlist,
    source_url: &str,
    mapping: &Mapping,
    options: Options,
    dry_run: bool,
    created_by: &str,
) -> Result<Run> {
    check_source(source_url)?;
    allowlist.check(source_url)?;
    validate_mapping(mapping)?;
    if !(1..=MAX_FILE_BYTES_CEILING).contains(&options.max_file_bytes) {
        return Err(Error::Invalid(format!(
            "max_file_bytes must be between 1 and {MAX_FILE_BYTES_CEILING}"
        )));
    }
    Ok(sqlx::query_as::<_, Run>(
        "INSERT INTO legacy_import_runs (id, source_url, mapping, options, dry_run, created_by)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
    )
    .bind(Uuid::now_v7())
    .bind(source_url)
    .bind(sqlx::types::Json(mapping))
    .bind(sqlx::types::Json(options))
    .bind(dry_run)
    .bind(created_by)
    .fetch_one(&mut *tx)
    .await?)
}

/// A run by id.
pub async fn get_run(pool: &PgPool, id: Uuid) -> Result<Run> {
    sqlx::query_as::<_, Run>("SELECT * FROM legacy_import_runs WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or(Error::NotFound)
}

/// Notes the job that runs a run.
pub async fn set_job(tx: &mut sqlx::PgConnection, id: Uuid, job_id: &str) -> Result<()> {
    sqlx::query("UPDATE legacy_import_runs SET job_id = $2 WHERE id = $1")
        .bind(id)
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Ends a run with its report.
pub async fn finish_run(
    pool: &PgPool,
    id: Uuid,
    status: &str,
    report: &Value,
    report_key: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "UPDATE legacy_import_runs SET status = $2, report = $3, report_key = $4, finished_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(status)
    .bind(report)
    .bind(report_key)
    .execute(pool)
    .await?;
    Ok(())
}

/// A problem kind (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// The mapping names no owner for the folder.
    Unowned,
    /// Another folder claims the same campaign number.
    Duplicate,
    /// Not named `campaign_<n> - <Name>`, or not in an env folder.
    NotCampaign,
    /// The mapping says to leave it out.
    Skipped,
    /// Cannot be read, or is not what its name says.
    Unreadable,
    /// Over the run's limit.
    Oversized,
    /// Its name, made safe, is another file's.
    Collision,
}

impl Problem {
    /// Every kind, in report order.
    pub const ALL: [Problem; 7] = [
        Problem::Unowned,
        Problem::Duplicate,
        Problem::NotCampaign,
        Problem::Skipped,
        Problem::Unreadable,
        Problem::Oversized,
        Problem::Collision,
    ];

    /// Its name in reports and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Problem::Unowned => "unowned",
            Problem::Duplicate => "duplicate",
            Problem::NotCampaign => "not_campaign",
            Problem::Skipped => "skipped",
            Problem::Unreadable => "unreadable",
            Problem::Oversized => "oversized",
            Problem::Collision => "collision",
        }
    }
}

/// Records (or records again) a problem of a run.
pub async fn record_problem(
    pool: &PgPool,
    run: Uuid,
    problem: Problem,
    path: &str,
    detail: &Value,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO legacy_import_problems (run_id, kind, path, detail) VALUES ($1, $2, $3, $4)
         ON CONFLICT (run_id, kind, path) DO UPDATE SET detail = EXCLUDED.detail",
    )
    .bind(run)
    .bind(problem.as_str())
    .bind(path)
    .bind(detail)
    .execute(pool)
    .await?;
    Ok(())
}

/// A run's problems, by kind (each a list of `{path, ...detail}`, at most
/// `limit` per kind), and how many there are of each.
pub async fn problems(pool: &PgPool, run: Uuid, limit: i64) -> Result<(Value, Value)> {
    let rows: Vec<(String, String, Value)> = sqlx::query_as(
        "SELECT kind, path, detail FROM (
             SELECT kind, path, detail, row_number() OVER (PARTITION BY kind ORDER BY path) AS n
             FROM legacy_import_problems WHERE run_id = $1) p
         WHERE n <= $2 ORDER BY kind, path",
    )
    .bind(run)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kind, count(*) FROM legacy_import_problems WHERE run_id = $1 GROUP BY kind",
    )
    .bind(run)
    .fetch_all(pool)
    .await?;
    let mut lists = serde_json::Map::new();
    let mut totals = serde_json::Map::new();
    for problem in Problem::ALL {
        lists.insert(problem.as_str().into(), json!([]));
        totals.insert(problem.as_str().into(), json!(0));
    }
    for (kind, path, detail) in rows {
        let mut entry = json!({ "path": path });
        if let (Some(entry), Value::Object(detail)) = (entry.as_object_mut(), detail) {
            entry.extend(detail);
        }
        if let Some(Value::Array(list)) = lists.get_mut(&kind) {
            list.push(entry);
        }
    }
    for (kind, count) in counts {
        totals.insert(kind, json!(count));
    }
    Ok((Value::Object(lists), Value::Object(totals)))
}

/// A legacy folder that became a session.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Campaign {
    /// Its env folder.
    pub env: String,
    /// Its folder name.
    pub folder: String,
    /// Its campaign number.
    pub campaign_number: i64,
    /// The session it became.
    pub session_id: Uuid,
    /// `importing` or `imported`.
    pub status: String,
    /// Files copied.
    pub files: i32,
    /// Bytes copied.
    pub bytes: i64,
    /// The session's storage prefix.
    pub storage_prefix: String,
}

/// Every imported (or importing) folder of `env`s, by `(env, folder)`.
pub async fn campaigns(pool: &PgPool) -> Result<BTreeMap<(String, String), Campaign>> {
    let rows = sqlx::query_as::<_, Campaign>(
        "SELECT c.env, c.folder, c.campaign_number, c.session_id, c.status, c.files, c.bytes,
                s.storage_prefix
         FROM legacy_campaigns c JOIN campaign_sessions s ON s.id = c.session_id",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|c| ((c.env.clone(), c.folder.clone()), c))
        .collect())
}

/// A folder about to be imported.
#[derive(Debug, Clone)]
pub struct NewCampaign<'a> {
    /// Its env folder.
    pub env: &'a str,
    /// Its folder name.
    pub folder: &'a str,
    /// Its campaign number.
    pub number: i64,
    /// The session's name.
    pub name: &'a SessionName,
    /// Owner, players, game masters.
    pub owners: &'a Owners,
}

/// Creates the session of a folder (owner, members, the legacy path
/// recorded) in one transaction; returns None if another folder already
/// holds its campaign number (or another run made it meanwhile).
pub async fn begin_campaign(
    pool: &PgPool,
    run: Uuid,
    new: &NewCampaign<'_>,
) -> Result<Option<Campaign>> {
    let owner = UserId::parse(&new.owners.owner).map_err(|e| Error::Invalid(e.to_string()))?;
    let mut tx = pool.begin().await?;
    let id = Uuid::now_v7();
    let prefix = sessions::storage_prefix_for(id);
    sqlx::query(
        "INSERT INTO campaign_sessions (id, name, owner_user_id, storage_prefix)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(id)
    .bind(new.name.as_str())
    .bind(owner.as_str())
    .bind(&prefix)
    .execute(&mut *tx)
    .await?;
    let (users, roles): (Vec<&str>, Vec<&str>) = std::iter::once((owner.as_str(), "owner"))
        .chain(new.owners.gms.iter().map(|u| (u.as_str(), "gm")))
        .chain(new.owners.members.iter().map(|u| (u.as_str(), "player")))
        .unzip();
    // The first role named wins: the owner over a gm over a player.
    sqlx::query(
        "INSERT INTO campaign_session_members (session_id, user_id, role)
         SELECT $1, u, r FROM unnest($2::text[], $3::text[]) AS m(u, r)
         ON CONFLICT (session_id, user_id) DO NOTHING",
    )
    .bind(id)
    .bind(&users)
    .bind(&roles)
    .execute(&mut *tx)
    .await?;
    let inserted = sqlx::query(
        "INSERT INTO legacy_campaigns (env, folder, campaign_number, session_id, run_id)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(new.env)
    .bind(new.folder)
    .bind(new.number)
    .bind(id)
    .bind(run)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        tx.rollback().await?;
        return Ok(None);
    }
    tx.commit().await?;
    Ok(Some(Campaign {
        env: new.env.to_owned(),
        folder: new.folder.to_owned(),
        campaign_number: new.number,
        session_id: id,
        status: "importing".into(),
        files: 0,
        bytes: 0,
        storage_prefix: prefix,
    }))
}

/// Marks a folder imported by run `run` (which may have finished what an
/// earlier run began), with what was copied.
pub async fn finish_campaign(pool: &PgPool, session: Uuid, run: Uuid) -> Result<(i64, i64)> {
    let (files, bytes): (i64, i64) = sqlx::query_as(
        "WITH f AS (SELECT count(*) AS files, coalesce(sum(byte_size), 0)::bigint AS bytes
                    FROM legacy_files WHERE session_id = $1 AND status = 'copied')
         UPDATE legacy_campaigns c SET status = 'imported', imported_at = now(),
                files = f.files, bytes = f.bytes, run_id = $2
         FROM f WHERE c.session_id = $1
         RETURNING f.files, f.bytes",
    )
    .bind(session)
    .bind(run)
    .fetch_one(pool)
    .await?;
    Ok((files, bytes))
}

/// A folder a run imported.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Imported {
    /// `<env>/<folder>`.
    pub path: String,
    /// Its campaign number.
    pub campaign: i64,
    /// The session it became.
    pub session_id: Uuid,
    /// Files copied.
    pub files: i32,
    /// Bytes copied.
    pub bytes: i64,
}

/// The folders run `run` imported, in path order.
pub async fn imported(pool: &PgPool, run: Uuid) -> Result<Vec<Imported>> {
    Ok(sqlx::query_as::<_, Imported>(
        "SELECT env || '/' || folder AS path, campaign_number AS campaign, session_id, files, bytes
         FROM legacy_campaigns WHERE run_id = $1 AND status = 'imported' ORDER BY env, folder",
    )
    .bind(run)
    .fetch_all(pool)
    .await?)
}

/// How many folders run `run` imported so far.
pub async fn imported_by(pool: &PgPool, run: Uuid) -> Result<i64> {
    let (count,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM legacy_campaigns WHERE run_id = $1 AND status = 'imported'",
    )
    .bind(run)
    .fetch_one(pool)
    .await?;
    Ok(count)
}

/// A session a run made, as a rollback sees it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Made {
    /// `<env>/<folder>`.
    pub path: String,
    /// The session.
    pub session_id: Uuid,
    /// Its storage prefix.
    pub storage_prefix: String,
    /// Turns played in it since (a rollback keeps such sessions unless
    /// forced).
    pub turns: i64,
}

/// The sessions run `run` made (or finished making).
pub async fn made_by(pool: &PgPool, run: Uuid) -> Result<Vec<Made>> {
    Ok(sqlx::query_as::<_, Made>(
        "SELECT c.env || '/' || c.folder AS path, c.session_id, s.storage_prefix,
                (SELECT count(*) FROM turns t WHERE t.session_id = c.session_id) AS turns
         FROM legacy_campaigns c JOIN campaign_sessions s ON s.id = c.session_id
         WHERE c.run_id = $1 ORDER BY c.env, c.folder",
    )
    .bind(run)
    .fetch_all(pool)
    .await?)
}

/// Deletes an imported session and everything recorded of it (members,
/// media rows, its legacy records: a later run imports the folder again).
/// Its objects must be deleted first. False if it was not imported.
pub async fn forget(pool: &PgPool, session: Uuid) -> Result<bool> {
    let deleted: i64 = sqlx::query_scalar(
        "WITH gone AS (
             DELETE FROM campaign_sessions s WHERE s.id = $1
             AND EXISTS (SELECT 1 FROM legacy_campaigns c WHERE c.session_id = s.id)
             RETURNING id
         ),
         lease AS (
             DELETE FROM leases WHERE scope = 'session' AND key = $1::text
                                  AND EXISTS (SELECT 1 FROM gone)
         )
         SELECT count(*) FROM gone",
    )
    .bind(session)
    .fetch_one(pool)
    .await?;
    Ok(deleted == 1)
}

/// A legacy file's record.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LegacyFile {
    /// Its session.
    pub session_id: Uuid,
    /// Its path in the folder.
    pub legacy_path: String,
    /// `pending` or `copied`.
    pub status: String,
    /// Its area (`logs`, `data`, `images`, `audio`).
    pub area: String,
    /// Its name in the area.
    pub name: String,
    /// Its object.
    pub storage_key: String,
    /// Its content type.
    pub content_type: String,
    /// Its media item (images, audio).
    pub media_id: Option<Uuid>,
    /// Its size.
    pub byte_size: Option<i64>,
    /// Its SHA-256.
    pub sha256: Option<Vec<u8>>,
}

/// The file records of a session, by legacy path.
pub async fn files_of(pool: &PgPool, session: Uuid) -> Result<BTreeMap<String, LegacyFile>> {
    let rows = sqlx::query_as::<_, LegacyFile>(
        "SELECT session_id, legacy_path, status, area, name, storage_key, content_type, media_id,
                byte_size, sha256
         FROM legacy_files WHERE session_id = $1",
    )
    .bind(session)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|f| (f.legacy_path.clone(), f))
        .collect())
}

fn area_name(area: Area) -> &'static str {
    match area {
        Area::Logs => "logs",
        Area::Data => "data",
        Area::Images => "images",
        Area::Audio => "audio",
        Area::Maps => "maps",
        Area::Notes => "notes",
    }
}

/// Chooses a file's key (and media id) before its copy starts; a file
/// claimed before keeps what was chosen then.
pub async fn claim_file(
    pool: &PgPool,
    session: Uuid,
    legacy_path: &str,
    placement: &Placement,
    name: &str,
    storage_key: &str,
    media_id: Option<Uuid>,
) -> Result<LegacyFile> {
    Ok(sqlx::query_as::<_, LegacyFile>(
        "INSERT INTO legacy_files
             (session_id, legacy_path, status, area, name, storage_key, content_type, media_id)
         VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7)
         ON CONFLICT (session_id, legacy_path) DO UPDATE SET status = legacy_files.status
         RETURNING session_id, legacy_path, status, area, name, storage_key, content_type,
                   media_id, byte_size, sha256",
    )
    .bind(session)
    .bind(legacy_path)
    .bind(area_name(placement.area()))
    .bind(name)
    .bind(storage_key)
    .bind(placement.content_type())
    .bind(media_id)
    .fetch_one(pool)
    .await?)
}

/// Records a file whose object is stored and verified: its record, and
/// for an image or audio its media row (source `migrated`, created by the
/// session's owner, the legacy name kept for display), in one transaction.
pub async fn record_copied(
    pool: &PgPool,
    file: &LegacyFile,
    kind: Option<MediaKind>,
    byte_size: u64,
    sha256: &[u8; 32],
) -> Result<()> {
    let mut tx = pool.begin().await?;
    if let (Some(kind), Some(media_id)) = (kind, file.media_id) {
        let display = file
            .legacy_path
            .rsplit('/')
            .next()
            .and_then(|n| media::display_name(n).ok());
        media::record_migrated(
            &mut tx,
            media_id,
            file.session_id,
            kind,
            &media::StoredObject {
                storage_key: file.storage_key.clone(),
                content_type: file.content_type.clone(),
                byte_size,
                sha256: *sha256,
            },
            display.as_deref(),
            &json!({ "legacy_path": file.legacy_path }),
        )
        .await
        .map_err(|e| match e {
            media::Error::Database(e) => Error::Database(e),
            other => Error::Invalid(other.to_string()),
        })?;
    }
    sqlx::query(
        "UPDATE legacy_files SET status = 'copied', byte_size = $3, sha256 = $4, copied_at = now()
         WHERE session_id = $1 AND legacy_path = $2",
    )
    .bind(file.session_id)
    .bind(&file.legacy_path)
    .bind(byte_size as i64)
    .bind(sha256.as_slice())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Resolves `<env>/<folder>/<path>` for `user`: None unless the folder was
/// imported, the user is a member of its session and the file was copied.
/// The bool says whether the folder is known (for the shim's counting).
pub async fn resolve(
    pool: &PgPool,
    env: &str,
    folder: &str,
    path: &str,
    user: &UserId,
) -> Result<(bool, Option<LegacyFile>)> {
    let Some((session,)): Option<(Uuid,)> =
        sqlx::query_as("SELECT session_id FROM legacy_campaigns WHERE env = $1 AND folder = $2")
            .bind(env)
            .bind(folder)
            .fetch_optional(pool)
            .await?
    else {
        return Ok((false, None));
    };
    match sessions::require_member(pool, session, user).await {
        Ok(_) => {}
        Err(sessions::Error::NotFound) => return Ok((true, None)),
        Err(sessions::Error::Database(err)) => return Err(err.into()),
        Err(_) => return Ok((true, None)),
    }
    let file = sqlx::query_as::<_, LegacyFile>(
        "SELECT session_id, legacy_path, status, area, name, storage_key, content_type, media_id,
                byte_size, sha256
         FROM legacy_files WHERE session_id = $1 AND legacy_path = $2 AND status = 'copied'",
    )
    .bind(session)
    .bind(path)
    .fetch_optional(pool)
    .await?;
    Ok((true, file))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn folder_names() {
        assert_eq!(
            parse_folder("campaign_1 - The Lost Mine"),
            Some((1, "The Lost Mine".into()))
        );
        assert_eq!(parse_folder("Campaign_12"), Some((12, String::new())));
        assert_eq!(
            parse_folder("campaign_3-Château d'If"),
            Some((3, "Château d'If".into()))
        );
        assert_eq!(parse_folder("campaign_4_Frost"), Some((4, "Frost".into())));
        for bad in [
            "notes",
            "campaign_",
            "campaign_x - A",
            "campaign_5 A",
            "campaign",
        ] {
            assert_eq!(parse_folder(bad), None, "{bad}");
        }
        assert_eq!(session_name(9, "").unwrap().as_str(), "Campaign 9");
        assert_eq!(
            session_name(9, "\u{202e}evil").unwrap().as_str(),
            "Campaign 9"
        );
    }

    #[test]
    fn names_are_made_safe() {
        assert_eq!(safe_name("Day 1 (draft).md").unwrap(), "Day_1_draft_.md");
        assert_eq!(safe_name(".hidden").unwrap(), "_hidden");
        assert_eq!(safe_name("Château/é.txt").unwrap(), "Ch_teau/_.txt");
        assert!(safe_name("日本").is_err());
        let long = format!("{}.png", "a".repeat(300));
        let safe = safe_name(&long).unwrap();
        assert_eq!(safe.len(), storage::MAX_COMPONENT_BYTES);
        assert!(safe.ends_with(".png"));
        assert!(safe_name(&["a"; 12].join("/")).is_err());
    }

    #[test]
    fn files_are_placed_by_the_rules() {
        let file = |area, name: &str| Placement::File {
            area,
            name: name.into(),
            content_type: storage::content_type_for(name),
        };
        assert_eq!(
            place("history.txt").unwrap(),
            file(Area::Logs, "history.txt")
        );
        assert_eq!(
            place("logs/Session 1.log").unwrap(),
            file(Area::Logs, "Session_1.log")
        );
        assert_eq!(
            place("chat_history.json").unwrap(),
            file(Area::Logs, "chat_history.json")
        );
        assert_eq!(place("state.json").unwrap(), file(Area::Data, "state.json"));
        assert_eq!(
            place("notes/todo.md").unwrap(),
            file(Area::Data, "legacy/notes/todo.md")
        );
        assert_eq!(
            place("page.html").unwrap(),
            file(Area::Data, "legacy/page.html")
        );
        assert_eq!(
            place("art/Map.JPEG").unwrap(),
            Placement::Media {
                kind: MediaKind::Image,
                content_type: "image/jpeg",
                ext: "jpg"
            }
        );
        assert_eq!(
            place("theme.mp3").unwrap(),
            Placement::Media {
                kind: MediaKind::Audio,
                content_type: "audio/mpeg",
                ext: "mp3"
            }
        );
        assert_eq!(
            place("page.html").unwrap().content_type(),
            "application/octet-stream"
        );
    }

    #[test]
    fn bytes_are_checked() {
        let json = place("state.json").unwrap();
        assert!(check_bytes(&json, b"{\"a\": 1}").is_ok());
        assert!(check_bytes(&json, b"{oops").is_err());
        let log = place("history.txt").unwrap();
        assert!(check_bytes(&log, &[0xff, 0xfe]).is_err());
        let png = place("a.png").unwrap();
        assert!(check_bytes(&png, b"GIF89a....").is_err());
        assert!(check_bytes(&place("x.bin").unwrap(), &[0, 1, 2]).is_ok());
    }

    #[test]
    fn mappings_in_csv_and_json() {
        let csv = "folder,owner,members,gms\n\
                   \"prod/campaign_1 - A, B\", alice ,bob;carol,dave\n\
                   \"prod/campaign_3 - C  \",erin\n\
                   # a comment\n\
                   staging/campaign_2,erin\n";
        let mapping = parse_mapping(csv).unwrap();
        assert_eq!(mapping.len(), 3);
        assert_eq!(mapping["prod/campaign_3 - C  "].owner, "erin");
        assert!(mapping.contains_key("staging/campaign_2"));
        let a = &mapping["prod/campaign_1 - A, B"];
        assert_eq!(a.owner, "alice");
        assert_eq!(a.members, ["bob", "carol"]);
        assert_eq!(a.gms, ["dave"]);
        let json = r#"{"prod/campaign_1 - A": "alice",
                       "prod/campaign_2 - B": {"owner": "bob", "members": ["carol"]},
                       "prod/campaign_2 - B (old)": {"skip": true}}"#;
        let mapping = parse_mapping(json).unwrap();
        assert_eq!(mapping["prod/campaign_1 - A"].owner, "alice");
        assert!(mapping["prod/campaign_2 - B (old)"].skip);
        for bad in [
            "prod,alice",
            "prod/campaign_1,",
            "prod/campaign_1,\u{202e}x",
            "{\"prod/x\": 3}",
            "a/b,alice\na/b,bob",
            "\"unclosed,alice",
        ] {
            assert!(parse_mapping(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sources() {
        for good in ["file:///srv/old", "s3://bucket/old", "gs://b"] {
            assert!(check_source(good).is_ok(), "{good}");
        }
        for bad in [
            "memory://",
            "/srv/old",
            "file://rel",
            "file:///a/../etc",
            "http://x",
        ] {
            assert!(check_source(bad).is_err(), "{bad}");
        }
    }
}
