//! The `legacy_import` job: runs one legacy layout import run
//! ([`questboard_core::legacy_import`] has the rules and why).
//!
//! A run lists the tree under `campaigns/` once, groups its files by
//! `<env>/<folder>`, and settles every folder in name order: one imported
//! before is left alone; one that is not named as a campaign, claims a
//! campaign number another folder claims too, has no owner in the mapping
//! or is marked `skip` is recorded as a problem; every other one becomes a
//! session whose files are copied by the placement rules, file by file,
//! each recorded as it is stored. A file that cannot be read, is not what
//! its name says, is over the limit or collides with another once its name
//! is made safe is recorded as a problem and the folder goes on without
//! it. Storage or database trouble is not a file's problem: the job
//! retries (after its backoff) and resumes where it was, finishing an
//! interrupted folder with the keys and media ids chosen the first time.
//! The run ends with a JSON report (what was imported, every problem,
//! counts, bytes, duration) stored under `reports/legacy-import/` and
//! returned as the job's result.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt as _;
use questboard_core::legacy_import::{self as li, ImportLegacy, Placement, Problem, Run};
use questboard_core::media;
use questboard_core::metrics as m;
use questboard_core::sources;
use questboard_core::storage::{self, Area, Storage};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use super::{Handler, JobContext, JobError, JobRun};
use crate::operator_run;

/// Problems listed per kind in a report (the counts are always whole).
const REPORTED_PROBLEMS: i64 = 10_000;

fn db(err: impl std::fmt::Display) -> JobError {
    JobError::retryable(format!("database: {err}"))
}

fn store_error(err: impl std::fmt::Display) -> JobError {
    JobError::retryable(format!("storage: {err}"))
}

/// One file of a folder, as listed.
#[derive(Debug, Clone)]
struct Listed {
    /// The key as the store lists it.
    key: String,
    /// Its size.
    size: u64,
}

/// The tree, as listed: folders by `(env, folder)`, each with its files by
/// path within the folder, and the paths that are not in a folder.
#[derive(Debug, Default)]
struct Tree {
    folders: BTreeMap<(String, String), BTreeMap<String, Listed>>,
    stray: BTreeSet<String>,
    /// Symbolic links met (never followed), below `campaigns/`.
    links: BTreeSet<String>,
}

async fn scan(source: &Storage) -> Result<Tree, JobError> {
    let mut tree = Tree::default();
    let mut listing = source.list_objects(li::CAMPAIGNS);
    loop {
        let object = match listing.next().await {
            None => break,
            Some(Ok(object)) => object,
            Some(Err(storage::Error::Link(key))) => {
                let shown = storage::decoded_key(&key);
                let below = shown
                    .strip_prefix(&format!("{}/", li::CAMPAIGNS))
                    .unwrap_or(&shown);
                tree.links.insert(below.to_owned());
                continue;
            }
            Some(Err(e)) => {
                return Err(JobError::retryable(format!(
                    "listing the legacy tree: {}",
                    sources::store_error(&e)
                )));
            }
        };
        let shown = storage::decoded_key(&object.key);
        let parts: Vec<&str> = shown.splitn(4, '/').collect();
        match parts.as_slice() {
            [_, env, folder, rel] if !rel.is_empty() => {
                tree.folders
                    .entry(((*env).to_owned(), (*folder).to_owned()))
                    .or_default()
                    .insert(
                        (*rel).to_owned(),
                        Listed {
                            key: object.key,
                            size: object.size,
                        },
                    );
            }
            _ => {
                tree.stray.insert(
                    shown
                        .strip_prefix(&format!("{}/", li::CAMPAIGNS))
                        .unwrap_or(&shown)
                        .to_owned(),
                );
            }
        }
    }
    Ok(tree)
}

impl Handler for ImportLegacy {
    async fn run(self, ctx: &JobContext, run: &JobRun) -> Result<Value, JobError> {
        let record: Run = operator_run::load(ctx, &li::RUNS, self.run_id).await?;
        if record.status != "running" {
            return Ok(operator_run::ended(&record.status, record.report));
        }
        let fail = |reason: String| async move {
            Err::<Value, _>(operator_run::fail(ctx, &li::RUNS, self.run_id, reason).await)
        };
        if let Err(err) = ctx.sources.check(&record.source_url) {
            return fail(format!("the legacy tree cannot be opened: {err}")).await;
        }
        let source = match Storage::existing(&record.source_url) {
            Ok(source) => source,
            Err(err) => {
                let err = sources::store_error(&err);
                return fail(format!("the legacy tree cannot be opened: {err}")).await;
            }
        };
        let tree = scan(&source).await?;
        if tree.folders.is_empty() && tree.stray.is_empty() && tree.links.is_empty() {
            return fail(format!(
                "{} holds nothing under {}/",
                record.source_url,
                li::CAMPAIGNS
            ))
            .await;
        }
        let mut importer = Importer {
            ctx,
            run,
            record,
            source,
            copied: 0,
            bytes: 0,
            validated: Vec::new(),
            already: 0,
            started: Instant::now(),
        };
        importer.import(tree).await?;
        importer.finish().await
    }
}

/// Where a folder's files go.
enum Destination {
    /// Nowhere: a dry run checks them.
    Check,
    /// Into this session.
    Campaign(li::Campaign),
    /// Nowhere: another folder was imported as the same campaign.
    Duplicate,
}

struct Importer<'a> {
    ctx: &'a JobContext,
    run: &'a JobRun,
    record: Run,
    source: Storage,
    /// Files and bytes this attempt copied.
    copied: u64,
    bytes: u64,
    /// A dry run's folders that would be imported.
    validated: Vec<Value>,
    /// Folders imported by an earlier run.
    already: u64,
    started: Instant,
}

impl Importer<'_> {
    async fn problem(&self, problem: Problem, path: &str, detail: Value) -> Result<(), JobError> {
        li::record_problem(&self.ctx.pool, self.record.id, problem, path, &detail)
            .await
            .map_err(db)?;
        tracing::info!(run_id = %self.record.id, problem = problem.as_str(), path,
            "legacy import problem");
        Ok(())
    }

    fn folder_outcome(&self, outcome: &'static str) {
        metrics::counter!(m::LEGACY_IMPORT_FOLDERS_TOTAL, "outcome" => outcome).increment(1);
    }

    async fn import(&mut self, tree: Tree) -> Result<(), JobError> {
        for link in &tree.links {
            self.problem(
                Problem::Skipped,
                link,
                json!({ "reason": "a symbolic link: links are never followed" }),
            )
            .await?;
        }
        for stray in &tree.stray {
            self.problem(
                Problem::NotCampaign,
                stray,
                json!({ "reason": "not inside a campaigns/<env>/<folder>/ folder" }),
            )
            .await?;
        }
        let imported = li::campaigns(&self.ctx.pool).await.map_err(db)?;
        let mapping = self.record.mapping.0.clone();
        // Campaign numbers per env: of the folders here (none skipped) and
        // of folders imported before.
        let mut claims: BTreeMap<(String, i64), BTreeSet<String>> = BTreeMap::new();
        for (env, folder) in tree.folders.keys() {
            let skipped = mapping
                .get(&format!("{env}/{folder}"))
                .is_some_and(|o| o.skip);
            if let (Some((number, _)), false) = (li::parse_folder(folder), skipped) {
                claims
                    .entry((env.clone(), number))
                    .or_default()
                    .insert(folder.clone());
            }
        }
        for campaign in imported.values() {
            claims
                .entry((campaign.env.clone(), campaign.campaign_number))
                .or_default()
                .insert(campaign.folder.clone());
        }
        let total = tree.folders.len() as i64;
        for (done, ((env, folder), files)) in tree.folders.iter().enumerate() {
            self.run.checkpoint()?;
            let path = format!("{env}/{folder}");
            let existing = imported.get(&(env.clone(), folder.clone()));
            if existing.is_some_and(|c| c.status == "imported") {
                self.already += 1;
                self.folder_outcome("already_imported");
            } else if let Some((number, title)) = li::parse_folder(folder) {
                let owners = mapping.get(&path);
                let rivals = claims
                    .get(&(env.clone(), number))
                    .map(|f| {
                        f.iter()
                            .filter(|f| *f != folder)
                            .cloned()
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                if owners.is_some_and(|o| o.skip) {
                    self.problem(
                        Problem::Skipped,
                        &path,
                        json!({ "reason": "the mapping says to skip it" }),
                    )
                    .await?;
                    self.folder_outcome("skipped");
                } else if !rivals.is_empty() && existing.is_none() {
                    self.problem(
                        Problem::Duplicate,
                        &path,
                        json!({ "campaign": number, "also_claimed_by": rivals }),
                    )
                    .await?;
                    self.folder_outcome("duplicate");
                } else if let Some(owners) = owners {
                    let name = li::session_name(number, &title).map_err(JobError::fatal)?;
                    let new = li::NewCampaign {
                        env,
                        folder,
                        number,
                        name: &name,
                        owners,
                    };
                    self.folder(&new, existing.cloned(), files).await?;
                } else {
                    self.problem(
                        Problem::Unowned,
                        &path,
                        json!({ "campaign": number, "files": files.len(),
                                "reason": "the mapping names no owner for it" }),
                    )
                    .await?;
                    self.folder_outcome("unowned");
                }
            } else {
                self.problem(
                    Problem::NotCampaign,
                    &path,
                    json!({ "files": files.len(),
                            "reason": "not named campaign_<n> - <Name>" }),
                )
                .await?;
                self.folder_outcome("not_campaign");
            }
            self.run
                .progress(done as i64 + 1, Some(total), &path)
                .await?;
        }
        Ok(())
    }

    /// Imports one folder (or, in a dry run, checks it).
    async fn folder(
        &mut self,
        new: &li::NewCampaign<'_>,
        existing: Option<li::Campaign>,
        files: &BTreeMap<String, Listed>,
    ) -> Result<(), JobError> {
        let path = format!("{}/{}", new.env, new.folder);
        let placed = self.place_files(&path, files).await?;
        let campaign = match self.open_campaign(new, existing, &path).await? {
            Destination::Duplicate => return Ok(()),
            Destination::Check => None,
            Destination::Campaign(campaign) => Some(campaign),
        };
        let records = match &campaign {
            Some(c) => li::files_of(&self.ctx.pool, c.session_id)
                .await
                .map_err(db)?,
            None => BTreeMap::new(),
        };
        let mut checked = 0u64;
        for (rel, listed, placement) in placed {
            self.run.checkpoint()?;
            if records.get(rel).is_some_and(|r| r.status == "copied") {
                continue;
            }
            let Some(bytes) = self.read_checked(&path, rel, listed, &placement).await? else {
                continue;
            };
            match &campaign {
                None => {
                    checked += 1;
                    let area = area_label(placement.area());
                    metrics::counter!(m::LEGACY_IMPORT_FILES_TOTAL, "area" => area,
                        "outcome" => "validated")
                    .increment(1);
                }
                Some(campaign) => {
                    self.copy(campaign, rel, &placement, records.get(rel), bytes)
                        .await?
                }
            }
        }
        match campaign {
            Some(campaign) => {
                let (files, bytes) =
                    li::finish_campaign(&self.ctx.pool, campaign.session_id, self.record.id)
                        .await
                        .map_err(db)?;
                self.folder_outcome("imported");
                tracing::info!(run_id = %self.record.id, folder = %path,
                    session_id = %campaign.session_id, files, bytes, "legacy folder imported");
            }
            None => {
                self.folder_outcome("validated");
                self.validated.push(json!({
                    "path": path,
                    "campaign": new.number,
                    "name": new.name.as_str(),
                    "owner": new.owners.owner,
                    "files": checked,
                }));
            }
        }
        Ok(())
    }

    /// Where each file of the folder at `path` goes. Names that cannot be
    /// made safe, and names that collide once made safe, go nowhere and
    /// are reported.
    async fn place_files<'f>(
        &self,
        path: &str,
        files: &'f BTreeMap<String, Listed>,
    ) -> Result<Vec<(&'f String, &'f Listed, Placement)>, JobError> {
        let mut placed: Vec<(&String, &Listed, Placement)> = Vec::new();
        let mut targets: HashMap<(Area, String), Vec<&String>> = HashMap::new();
        for (rel, listed) in files {
            match li::place(rel) {
                Ok(placement) => {
                    if let Placement::File { area, name, .. } = &placement {
                        targets.entry((*area, name.clone())).or_default().push(rel);
                    }
                    placed.push((rel, listed, placement));
                }
                Err(reason) => {
                    let detail = json!({ "reason": reason });
                    self.file_problem(path, rel, Problem::Unreadable, detail, "data")
                        .await?;
                }
            }
        }
        let mut colliding: BTreeSet<&String> = BTreeSet::new();
        for ((area, name), rels) in targets.iter().filter(|(_, rels)| rels.len() > 1) {
            for rel in rels {
                colliding.insert(rel);
                let others: Vec<&String> = rels.iter().copied().filter(|r| r != rel).collect();
                self.file_problem(
                    path,
                    rel,
                    Problem::Collision,
                    json!({ "name": format!("{}/{name}", area.dir()), "collides_with": others }),
                    area_label(*area),
                )
                .await?;
            }
        }
        placed.retain(|(rel, _, _)| !colliding.contains(rel));
        Ok(placed)
    }

    /// The session the folder goes into: the one a stopped run began, a
    /// new one, none in a dry run; or nothing when another folder was
    /// imported as the same campaign (reported).
    async fn open_campaign(
        &mut self,
        new: &li::NewCampaign<'_>,
        existing: Option<li::Campaign>,
        path: &str,
    ) -> Result<Destination, JobError> {
        if self.record.dry_run {
            return Ok(Destination::Check);
        }
        let campaign = match existing {
            // Begun by a run that stopped: its manifest may never have been
            // written (writing it again is harmless).
            Some(campaign) => campaign,
            None => match li::begin_campaign(&self.ctx.pool, self.record.id, new)
                .await
                .map_err(db)?
            {
                Some(campaign) => campaign,
                None => {
                    self.problem(
                        Problem::Duplicate,
                        path,
                        json!({ "campaign": new.number,
                                "reason": "another folder was imported as this campaign" }),
                    )
                    .await?;
                    self.folder_outcome("duplicate");
                    return Ok(Destination::Duplicate);
                }
            },
        };
        self.write_manifest(&campaign).await?;
        Ok(Destination::Campaign(campaign))
    }

    /// A file's bytes, if it is within the limit, readable, and what its
    /// name says (else the problem is reported and None returned).
    async fn read_checked(
        &self,
        path: &str,
        rel: &str,
        listed: &Listed,
        placement: &Placement,
    ) -> Result<Option<Bytes>, JobError> {
        let area = area_label(placement.area());
        let limit = self.record.options.max_file_bytes;
        let (problem, detail) = if listed.size > limit {
            (
                Problem::Oversized,
                json!({ "bytes": listed.size, "limit": limit }),
            )
        } else {
            match self.source.read_listed(&listed.key).await {
                Err(err) => (
                    Problem::Unreadable,
                    json!({ "reason": format!("cannot be read: {}", sources::store_error(&err)) }),
                ),
                Ok(bytes) if bytes.len() as u64 > limit => (
                    Problem::Oversized,
                    json!({ "bytes": bytes.len(), "limit": limit }),
                ),
                Ok(bytes) => match li::check_bytes(placement, &bytes) {
                    Ok(()) => return Ok(Some(bytes)),
                    Err(reason) => (Problem::Unreadable, json!({ "reason": reason })),
                },
            }
        };
        self.file_problem(path, rel, problem, detail, area).await?;
        Ok(None)
    }

    async fn file_problem(
        &self,
        folder: &str,
        rel: &str,
        problem: Problem,
        detail: Value,
        area: &'static str,
    ) -> Result<(), JobError> {
        metrics::counter!(m::LEGACY_IMPORT_FILES_TOTAL, "area" => area, "outcome" => problem.as_str())
            .increment(1);
        self.problem(problem, &format!("{folder}/{rel}"), detail)
            .await
    }

    async fn write_manifest(&self, campaign: &li::Campaign) -> Result<(), JobError> {
        let files = self
            .ctx
            .storage
            .session(&campaign.storage_prefix)
            .map_err(JobError::fatal)?;
        let mut manifest = storage::manifest(campaign.session_id, chrono::Utc::now());
        manifest["legacy_path"] = json!(format!("{}/{}", campaign.env, campaign.folder));
        files.put_manifest(&manifest).await.map_err(store_error)
    }

    /// Stores one file under the key chosen for it (the first time it was
    /// tried, if it was) and records it.
    async fn copy(
        &mut self,
        campaign: &li::Campaign,
        rel: &str,
        placement: &Placement,
        record: Option<&li::LegacyFile>,
        bytes: Bytes,
    ) -> Result<(), JobError> {
        let files = self
            .ctx
            .storage
            .session(&campaign.storage_prefix)
            .map_err(JobError::fatal)?;
        let area = placement.area();
        let record = match record {
            Some(record) => record.clone(),
            None => {
                let (name, media_id) = match placement {
                    Placement::File { name, .. } => (name.clone(), None),
                    Placement::Media { ext, .. } => {
                        let id = Uuid::now_v7();
                        (media::object_name(id, 1, ext), Some(id))
                    }
                };
                let key = files.key(area, &name).map_err(JobError::fatal)?;
                li::claim_file(
                    &self.ctx.pool,
                    campaign.session_id,
                    rel,
                    placement,
                    &name,
                    &key,
                    media_id,
                )
                .await
                .map_err(db)?
            }
        };
        let size = bytes.len() as u64;
        let (kind, sha256) = match (placement, record.media_id) {
            // Media goes the one way media is stored; its bytes were
            // checked already, so a refusal here is a defect, not input.
            (Placement::Media { kind, .. }, Some(id)) => {
                let stored = media::Ingest {
                    files: &files,
                    kind: *kind,
                    id,
                    version: 1,
                    content_type: &record.content_type,
                    limit: size,
                }
                .store_bytes(bytes)
                .await
                .map_err(|e| match e {
                    media::ingest::Error::Storage(e) => store_error(e),
                    other => JobError::fatal(other),
                })?;
                (Some(*kind), stored.sha256)
            }
            _ => {
                let sha256: [u8; 32] = Sha256::digest(&bytes).into();
                files
                    .put(area, &record.name, bytes, &record.content_type)
                    .await
                    .map_err(store_error)?;
                (None, sha256)
            }
        };
        li::record_copied(&self.ctx.pool, &record, kind, size, &sha256)
            .await
            .map_err(db)?;
        let label = area_label(area);
        metrics::counter!(m::LEGACY_IMPORT_FILES_TOTAL, "area" => label, "outcome" => "copied")
            .increment(1);
        metrics::counter!(m::LEGACY_IMPORT_BYTES_TOTAL, "area" => label).increment(size);
        self.copied += 1;
        self.bytes += size;
        Ok(())
    }

    async fn finish(self) -> Result<Value, JobError> {
        let (problems, problem_counts) =
            li::problems(&self.ctx.pool, self.record.id, REPORTED_PROBLEMS)
                .await
                .map_err(db)?;
        let imported = li::imported(&self.ctx.pool, self.record.id)
            .await
            .map_err(db)?;
        let files: i64 = imported.iter().map(|i| i64::from(i.files)).sum();
        let bytes: i64 = imported.iter().map(|i| i.bytes).sum();
        let seconds = self.started.elapsed().as_secs_f64();
        let report = json!({
            "run_id": self.record.id,
            "outcome": "completed",
            "dry_run": self.record.dry_run,
            "imported": imported,
            "would_import": self.validated,
            "already_imported": self.already,
            "files": files,
            "bytes": bytes,
            "problems": problems,
            "problem_counts": problem_counts,
            "max_file_bytes": self.record.options.max_file_bytes,
            "seconds": seconds,
            "copied_this_attempt": { "files": self.copied, "bytes": self.bytes,
                "mb_per_second": if seconds > 0.0 { self.bytes as f64 / 1e6 / seconds } else { 0.0 } },
            "storage": self.ctx.storage.describe(),
        });
        let report =
            operator_run::finish(self.ctx, &li::RUNS, self.record.id, "completed", report).await?;
        tracing::info!(run_id = %self.record.id, imported = imported.len(), files, bytes,
            "legacy import ended");
        Ok(report)
    }
}

/// An area's metric label.
fn area_label(area: Area) -> &'static str {
    match area {
        Area::Logs => "logs",
        Area::Images => "images",
        Area::Audio => "audio",
        Area::Data | Area::Maps | Area::Notes => "data",
    }
}
