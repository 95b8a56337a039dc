//! The `asset_migration` job: runs one asset migration run, or rolls one
//! back ([`questboard_core::asset_migration`] has the what and why).
//!
//! A run goes through each source table in id order, a page at a time,
//! from its checkpoint. Each asset is checked (type, limit, bytes), then,
//! unless the run is a dry run: its media id is chosen and noted, its
//! object stored under the session's prefix and read back (SHA-256
//! compared), its media row written, and only then the source row pointed
//! at it and its blob cleared. An asset that fails is recorded with why and
//! the run goes on, until more than the run's threshold (1 % by default, of
//! at least 100 assets seen) have failed: then the run is **aborted**.
//! Storage or database trouble is not an asset's failure: the job retries
//! (after its backoff) and resumes where it was. Every run ends with a
//! JSON report (counts, bytes, failures with asset id and reason,
//! duration), stored under `reports/asset-migration/` and returned as the
//! job's result.
//!
//! A rollback (`rollback: true`, of a run that ended) puts every blob the
//! run cleared back into its source row, byte for byte (checked against
//! the SHA-256 recorded when it was stored), clears the references and
//! deletes the run's objects and media rows.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use futures::TryStreamExt as _;
use questboard_core::asset_migration::{
    self as am, Item, MigrateAssets, Run, Source, SourceAsset, Table,
};
use questboard_core::media;
use questboard_core::metrics as m;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use super::{Handler, JobContext, JobError, JobRun};
use crate::operator_run;

/// Failures listed in a report (the count is always whole).
const REPORTED_FAILURES: i64 = 10_000;

fn db(err: impl std::fmt::Display) -> JobError {
    JobError::retryable(format!("database: {err}"))
}

fn source_error(err: am::Error) -> JobError {
    match err {
        am::Error::Invalid(why) => JobError::fatal(why),
        // Not allowed (any more) is for good; a source unwell may recover.
        am::Error::Source(e) if e.is_request() => JobError::fatal(e),
        other => JobError::retryable(other),
    }
}

impl Handler for MigrateAssets {
    async fn run(self, ctx: &JobContext, run: &JobRun) -> Result<Value, JobError> {
        let record: Run = operator_run::load(ctx, &am::RUNS, self.run_id).await?;
        if self.rollback {
            return Rollback::new(ctx, run, record).await?.run().await;
        }
        if record.status != "running" {
            return Ok(operator_run::ended(&record.status, record.report));
        }
        let mut migrator = match Migrator::new(ctx, run, record).await {
            Ok(migrator) => migrator,
            Err(JobError::Fatal { reason }) => {
                return Err(operator_run::fail(ctx, &am::RUNS, self.run_id, reason).await);
            }
            Err(err) => return Err(err),
        };
        let aborted = migrator.migrate().await?;
        migrator.finish(aborted).await
    }
}

struct Migrator<'a> {
    ctx: &'a JobContext,
    run: &'a JobRun,
    record: Run,
    source: Source,
    tables: Vec<Table>,
    total: i64,
    seen: u64,
    failed: u64,
    started: Instant,
}

impl<'a> Migrator<'a> {
    async fn new(ctx: &'a JobContext, run: &'a JobRun, record: Run) -> Result<Self, JobError> {
        let source = Source::connect(&ctx.sources, &record.source_url)
            .await
            .map_err(source_error)?;
        let mut tables = Vec::new();
        for spec in &record.options.tables {
            let table = source
                .table(
                    spec,
                    record.options.session_column.as_deref(),
                    record.dry_run,
                )
                .await
                .map_err(source_error)?;
            tables.push(table);
        }
        let total = match record.total {
            Some(total) => total,
            None => {
                let mut total = 0;
                for table in &tables {
                    total += source.count_pending(table).await.map_err(source_error)?;
                }
                am::set_total(&ctx.pool, record.id, total)
                    .await
                    .map_err(db)?
            }
        };
        let counts = am::counts(&ctx.pool, record.id).await.map_err(db)?;
        Ok(Self {
            ctx,
            run,
            seen: (counts.migrated + counts.stored + counts.validated + counts.failed) as u64,
            failed: counts.failed as u64,
            record,
            source,
            tables,
            total,
            started: Instant::now(),
        })
    }

    /// Goes through every table; returns why the run aborted, if it did.
    async fn migrate(&mut self) -> Result<Option<String>, JobError> {
        // Items stored by an earlier attempt whose source row may already
        // point at them (it then left the pages): finish them first.
        let stored = am::stored(&self.ctx.pool, self.record.id)
            .await
            .map_err(db)?;
        for item in stored {
            let table = self
                .tables
                .iter()
                .find(|t| t.spec().table == item.source_table)
                .cloned();
            if let Some(table) = table {
                self.point_source(&table, &item).await?;
            }
        }
        for index in 0..self.tables.len() {
            let table = self.tables[index].clone();
            let name = table.spec().table.clone();
            let mut after = self.record.checkpoint_of(&name);
            loop {
                let page = self
                    .source
                    .page(&table, after.as_deref(), self.record.options.batch)
                    .await
                    .map_err(source_error)?;
                let Some(last) = page.last().map(|a| a.id.clone()) else {
                    break;
                };
                let ids: Vec<String> = page.iter().map(|a| a.id.clone()).collect();
                let done = am::items(&self.ctx.pool, self.record.id, &name, &ids)
                    .await
                    .map_err(db)?;
                let owners: Vec<String> = page.iter().filter_map(|a| a.owner.clone()).collect();
                let targets = am::targets(&self.ctx.pool, &self.record, &owners)
                    .await
                    .map_err(db)?;
                for asset in &page {
                    self.run.checkpoint()?;
                    match done.get(&asset.id) {
                        Some(item)
                            if matches!(
                                item.status.as_str(),
                                "migrated" | "failed" | "validated"
                            ) =>
                        {
                            continue;
                        }
                        Some(item) if item.status == "stored" => {
                            self.point_source(&table, item).await?;
                            continue;
                        }
                        _ => {}
                    }
                    let target = asset.owner.as_ref().and_then(|o| targets.get(o));
                    self.asset(&table, asset, target).await?;
                    if self.record.options.over_threshold(self.failed, self.seen) {
                        return Ok(Some(format!(
                            "{} of {} assets failed, over the threshold of {} %",
                            self.failed, self.seen, self.record.options.max_failure_percent
                        )));
                    }
                }
                am::set_checkpoint(&self.ctx.pool, self.record.id, &name, &last)
                    .await
                    .map_err(db)?;
                self.run
                    .progress(
                        self.seen as i64,
                        Some(self.total),
                        &format!("{name}: {} failed", self.failed),
                    )
                    .await?;
                after = Some(last);
            }
        }
        Ok(None)
    }

    async fn fail(&mut self, table: &Table, id: &str, reason: &str) -> Result<(), JobError> {
        am::record_outcome(
            &self.ctx.pool,
            self.record.id,
            &table.spec().table,
            id,
            "failed",
            Some(reason),
        )
        .await
        .map_err(db)?;
        metrics::counter!(m::MIGRATION_ASSETS_TOTAL, "kind" => table.spec().kind.as_str(), "outcome" => "failed")
            .increment(1);
        tracing::info!(run_id = %self.record.id, table = %table.spec().table, asset_id = id, reason,
            "asset not migrated");
        self.failed += 1;
        self.seen += 1;
        Ok(())
    }

    /// Checks, stores, verifies and records one asset.
    async fn asset(
        &mut self,
        table: &Table,
        asset: &SourceAsset,
        target: Option<&am::Target>,
    ) -> Result<(), JobError> {
        let kind = table.spec().kind;
        let Some(target) = target else {
            let reason = match (&asset.owner, &self.record.options.session_column) {
                (None, _) => "the row names no campaign".to_owned(),
                (Some(s), Some(_)) => format!("no session {s:?}"),
                (Some(c), None) => format!("campaign {c:?} has no session in the mapping"),
            };
            return self.fail(table, &asset.id, &reason).await;
        };
        let limits = self.ctx.media_limits;
        let ext = match am::check(kind, asset.content_type.as_deref(), asset.size, &limits) {
            Ok(ext) => ext,
            Err(reason) => return self.fail(table, &asset.id, &reason).await,
        };
        let content_type = asset.content_type.clone().unwrap_or_default();
        let Some(bytes) = self
            .source
            .blob(table, &asset.id)
            .await
            .map_err(source_error)?
        else {
            return self
                .fail(table, &asset.id, "the row has no bytes any more")
                .await;
        };
        let files = self
            .ctx
            .storage
            .session(&target.storage_prefix)
            .map_err(JobError::fatal)?;
        // The one ingest path (type, limit, bytes, hash, put), with the
        // migration's own words for a refusal.
        let ingest = |id: Uuid| media::Ingest {
            files: &files,
            kind,
            id,
            version: 1,
            content_type: &content_type,
            limit: limits.of(kind).unwrap_or(0),
        };
        let refused = |refusal: media::Refusal| match refusal {
            media::Refusal::Disguised(_) => format!("the bytes are not {content_type}"),
            other => other.to_string(),
        };
        let name = &table.spec().table;
        if self.record.dry_run {
            if let Err(refusal) = ingest(Uuid::nil()).check(&bytes) {
                return self.fail(table, &asset.id, &refused(refusal)).await;
            }
            return self.validated(table, asset).await;
        }
        let key_of = |media_id: Uuid| files.key(kind.area(), &media::object_name(media_id, 1, ext));
        let candidate = Uuid::now_v7();
        let item = am::claim(
            &self.ctx.pool,
            self.record.id,
            name,
            &asset.id,
            target.id,
            candidate,
            &key_of(candidate).map_err(JobError::fatal)?,
        )
        .await
        .map_err(db)?;
        // A run started again finds the id chosen the first time.
        let object = match ingest(item.media_id).store_bytes(Bytes::from(bytes)).await {
            Ok(object) => object,
            Err(media::ingest::Error::Refused(refusal)) => {
                return self.fail(table, &asset.id, &refused(refusal)).await;
            }
            Err(err) => return Err(JobError::retryable(format!("storage: {err}"))),
        };
        let (key, sha256, size) = (object.storage_key, object.sha256, object.byte_size);
        let stored_type = object.content_type;
        // Read it back: what storage holds must be what the source held.
        let read_back = stored_sha256(self.ctx, &key).await?;
        if read_back != sha256 {
            let _ = self.ctx.storage.delete_objects(vec![key.clone()]).await;
            return self
                .fail(
                    table,
                    &asset.id,
                    "the stored object did not read back the same",
                )
                .await;
        }
        let original = asset
            .name
            .as_deref()
            .and_then(|n| media::display_name(n).ok());
        am::record_stored(
            &self.ctx.pool,
            self.record.id,
            &item,
            &am::Verified {
                session_id: target.id,
                kind,
                content_type: &stored_type,
                storage_key: &key,
                byte_size: size,
                sha256: read_back,
                original_name: original.as_deref(),
            },
        )
        .await
        .map_err(db)?;
        let stored = Item {
            status: "stored".into(),
            storage_key: Some(key),
            byte_size: Some(size as i64),
            sha256: Some(read_back.to_vec()),
            session_id: Some(target.id),
            ..item
        };
        self.point_source(table, &stored).await?;
        self.seen += 1;
        Ok(())
    }

    /// Counts a dry run's asset that passed the checks.
    async fn validated(&mut self, table: &Table, asset: &SourceAsset) -> Result<(), JobError> {
        let kind = table.spec().kind;
        am::record_outcome(
            &self.ctx.pool,
            self.record.id,
            &table.spec().table,
            &asset.id,
            "validated",
            None,
        )
        .await
        .map_err(db)?;
        metrics::counter!(m::MIGRATION_ASSETS_TOTAL, "kind" => kind.as_str(), "outcome" => "validated")
            .increment(1);
        self.seen += 1;
        Ok(())
    }

    /// Points the source row of a stored item at it, clears its blob
    /// (unless the run keeps the source) and marks it migrated.
    async fn point_source(&mut self, table: &Table, item: &Item) -> Result<(), JobError> {
        let kind = table.spec().kind;
        let metadata = json!({
            "storage_key": item.storage_key,
            "byte_size": item.byte_size,
            "sha256": item.sha256.as_deref().map(hex::encode),
            "session_id": item.session_id,
            "migration_run": self.record.id,
        });
        self.source
            .write_back(
                table,
                &item.source_id,
                item.media_id,
                &metadata,
                self.record.options.keep_source,
            )
            .await
            .map_err(source_error)?;
        am::set_status(&self.ctx.pool, self.record.id, item, "migrated")
            .await
            .map_err(db)?;
        metrics::counter!(m::MIGRATION_ASSETS_TOTAL, "kind" => kind.as_str(), "outcome" => "migrated")
            .increment(1);
        metrics::counter!(m::MIGRATION_BYTES_TOTAL, "kind" => kind.as_str())
            .increment(item.byte_size.unwrap_or(0).max(0) as u64);
        Ok(())
    }

    async fn finish(self, aborted: Option<String>) -> Result<Value, JobError> {
        let outcome = if aborted.is_some() {
            "aborted"
        } else {
            "completed"
        };
        let counts = am::counts(&self.ctx.pool, self.record.id)
            .await
            .map_err(db)?;
        let failures = am::failures(&self.ctx.pool, self.record.id, REPORTED_FAILURES)
            .await
            .map_err(db)?;
        let seconds = self.started.elapsed().as_secs_f64();
        let report = json!({
            "run_id": self.record.id,
            "outcome": outcome,
            "dry_run": self.record.dry_run,
            "keep_source": self.record.options.keep_source,
            "tables": self.record.options.tables.iter().map(|t| &t.table).collect::<Vec<_>>(),
            "total": self.total,
            "migrated": counts.migrated,
            "validated": counts.validated,
            "failed": counts.failed,
            "bytes": counts.bytes,
            "failure_threshold_percent": self.record.options.max_failure_percent,
            "aborted": aborted.as_ref().map(|why| json!({ "reason": why })),
            "failures": failures,
            "failures_listed": (counts.failed).min(REPORTED_FAILURES),
            "seconds": seconds,
            "mb_per_second": if seconds > 0.0 { counts.bytes as f64 / 1e6 / seconds } else { 0.0 },
            "storage": self.ctx.storage.describe(),
        });
        let report =
            operator_run::finish(self.ctx, &am::RUNS, self.record.id, outcome, report).await?;
        tracing::info!(run_id = %self.record.id, outcome, migrated = counts.migrated,
            failed = counts.failed, "asset migration ended");
        Ok(report)
    }
}

/// The SHA-256 of what storage holds at `key`, read back in full.
async fn stored_sha256(ctx: &JobContext, key: &str) -> Result<[u8; 32], JobError> {
    let storage = |e: questboard_core::storage::Error| JobError::retryable(format!("storage: {e}"));
    let mut stream = ctx.storage.read(key, None).await.map_err(storage)?.stream;
    let mut hasher = Sha256::new();
    while let Some(chunk) = stream.try_next().await.map_err(storage)? {
        hasher.update(&chunk);
    }
    Ok(hasher.finalize().into())
}

struct Rollback<'a> {
    ctx: &'a JobContext,
    run: &'a JobRun,
    record: Run,
    source: Source,
    tables: HashMap<String, Table>,
}

impl<'a> Rollback<'a> {
    async fn new(ctx: &'a JobContext, run: &'a JobRun, record: Run) -> Result<Self, JobError> {
        if record.status != "rolling_back" {
            return Err(JobError::fatal(format!(
                "run {} is {}, not being rolled back",
                record.id, record.status
            )));
        }
        let source = Source::connect(&ctx.sources, &record.source_url)
            .await
            .map_err(source_error)?;
        let mut tables = HashMap::new();
        for spec in &record.options.tables {
            // `dry_run: true`: a rollback adds no columns.
            let table = source
                .table(spec, record.options.session_column.as_deref(), true)
                .await
                .map_err(source_error)?;
            tables.insert(spec.table.clone(), table);
        }
        Ok(Self {
            ctx,
            run,
            record,
            source,
            tables,
        })
    }

    async fn run(self) -> Result<Value, JobError> {
        let started = Instant::now();
        let mut restored = 0u64;
        let mut bytes_restored = 0u64;
        let mut after = (String::new(), String::new());
        loop {
            let items = am::to_roll_back(&self.ctx.pool, self.record.id, (&after.0, &after.1), 100)
                .await
                .map_err(db)?;
            let Some(last) = items.last() else {
                break;
            };
            after = (last.source_table.clone(), last.source_id.clone());
            for item in &items {
                self.run.checkpoint()?;
                let Some(table) = self.tables.get(&item.source_table) else {
                    return Err(JobError::fatal(format!(
                        "the run's table {:?} is no longer among its tables",
                        item.source_table
                    )));
                };
                bytes_restored += self.put_back(table, item).await?;
                restored += 1;
                metrics::counter!(m::MIGRATION_ASSETS_TOTAL, "kind" => table.spec().kind.as_str(),
                    "outcome" => "rolled_back")
                .increment(1);
            }
            self.run
                .progress(restored as i64, None, "assets put back")
                .await?;
        }
        let counts = am::counts(&self.ctx.pool, self.record.id)
            .await
            .map_err(db)?;
        let report = json!({
            "run_id": self.record.id,
            "outcome": "rolled_back",
            "restored": restored,
            "rolled_back": counts.rolled_back,
            "bytes_restored": bytes_restored,
            "migration": self.record.report,
            "seconds": started.elapsed().as_secs_f64(),
        });
        operator_run::finish(self.ctx, &am::RUNS, self.record.id, "rolled_back", report).await
    }

    /// Puts one asset back; returns the bytes written into the source.
    async fn put_back(&self, table: &Table, item: &Item) -> Result<u64, JobError> {
        let mut written = 0;
        if item.status != "pending" {
            let bytes = if self
                .source
                .holds_bytes(table, &item.source_id)
                .await
                .map_err(source_error)?
            {
                None
            } else {
                let key = item.storage_key.as_deref().unwrap_or_default();
                let bytes = self
                    .ctx
                    .storage
                    .get_object(key)
                    .await
                    .map_err(|e| JobError::retryable(format!("reading {key}: {e}")))?;
                let sha: [u8; 32] = Sha256::digest(&bytes).into();
                if item.sha256.as_deref() != Some(sha.as_slice()) {
                    return Err(JobError::fatal(format!(
                        "the object of asset {} ({key}) is not what was stored; \
                         its source row is left as it is",
                        item.source_id
                    )));
                }
                written = bytes.len() as u64;
                Some(bytes)
            };
            self.source
                .restore(table, &item.source_id, bytes.as_deref())
                .await
                .map_err(source_error)?;
        }
        // The object goes (an interrupted upload's too), then the rows.
        if let Some(key) = &item.storage_key {
            self.ctx
                .storage
                .delete_objects(vec![key.clone()])
                .await
                .map_err(|e| JobError::retryable(format!("storage: {e}")))?;
        }
        am::forget(&self.ctx.pool, self.record.id, item)
            .await
            .map_err(db)?;
        Ok(written)
    }
}
