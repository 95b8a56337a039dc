//! Asset migration throughput: a source database (a scratch database of
//! its own) holds maps of 1 MB and small notes in binary columns; one
//! `questboard work` process serving only `asset_migration` moves them into
//! storage, each checked, stored, read back and verified, its media row
//! written and its source row updated. Figures are from the run's report
//! (the handler's time, without the job's wait in line): MB/s over the
//! maps, assets/s over the notes. On the local filesystem and, when an
//! S3-compatible server is given (`QB_TEST_S3_ENDPOINT`), on S3.
//!
//! The legacy layout import likewise: a tree on the local disk in the old
//! app's layout (folders of images of 1 MB and small logs and JSON files)
//! imported by a `questboard work` process serving only `legacy_import`;
//! MB/s and files/s from the run's report.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use questboard_core::asset_migration::{Options, SourceTable};
use questboard_core::identity::UserId;
use questboard_core::legacy_import::{self, Mapping, Owners};
use questboard_core::media::MediaKind;
use questboard_core::sessions::{self, SessionName};

use super::processes::Processes;
use super::{BenchArgs, Figure, Scratch, runs};
use questboard::config::Config;

fn png(len: usize, seed: usize) -> Vec<u8> {
    let mut bytes =
        b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89".to_vec();
    bytes.extend_from_slice(format!("{seed:08}").as_bytes());
    bytes.resize(len, (seed % 251) as u8);
    bytes
}

/// Runs the scenarios and prints their rows.
pub async fn run(config: &Config, args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let (maps, notes) = if args.quick { (10, 100) } else { (100, 2000) };
    let map_bytes = 1_000_000;
    let dir = std::env::temp_dir().join(format!("qb-bench-migration-{}", std::process::id()));
    let backends = super::media::backends("migration", &dir).await?;
    let mut figures = Vec::new();
    for (name, env) in &backends {
        figures.extend(legacy(config, args, name, env).await?);
        let mut rate = Figure::new(
            format!("asset migration of {maps} maps of 1 MB, {name}"),
            "MB/s",
        );
        let mut map_rate = Figure::new("  ... the same, maps", "assets/s");
        let mut note_rate = Figure::new(
            format!("  ... {notes} notes of about 100 bytes, {name}"),
            "assets/s",
        );
        for _ in 0..runs(args) {
            Scratch::scoped(config, async |scratch| {
                // The source: another scratch database (a later name).
                tokio::time::sleep(Duration::from_millis(5)).await;
                Scratch::scoped(config, async |source| {
                    for table in ["campaign_maps", "campaign_notes"] {
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "CREATE TABLE {table} (id bigint PRIMARY KEY, campaign_id bigint,
                                 name text, content_type text, data bytea)"
                        )))
                        .execute(&source.pool)
                        .await?;
                    }
                    for id in 0..maps {
                        sqlx::query(
                            "INSERT INTO campaign_maps VALUES ($1, 1, 'map.png', 'image/png', $2)",
                        )
                        .bind(id as i64)
                        .bind(png(map_bytes, id))
                        .execute(&source.pool)
                        .await?;
                    }
                    sqlx::query(
                        "INSERT INTO campaign_notes
                         SELECT i, 1, 'notes.md', 'text/markdown',
                                convert_to('# Session ' || i || E'\\n\\nThe party rests at the inn.', 'UTF8')
                         FROM generate_series(1, $1) AS i",
                    )
                    .bind(notes as i64)
                    .execute(&source.pool)
                    .await?;
                    let owner = UserId::parse("bench").map_err(anyhow::Error::msg)?;
                    let session = sessions::create(
                        &scratch.pool,
                        &owner,
                        &SessionName::parse("Migration bench").map_err(anyhow::Error::msg)?,
                    )
                    .await?;
                    let env: Vec<(&str, &str)> =
                        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    let worker = Processes::worker_with(scratch, config, "asset_migration", &env)?;
                    let mapping = vec![("1".to_owned(), session.session.id)];
                    for (table, kind) in [
                        ("campaign_maps", MediaKind::Map),
                        ("campaign_notes", MediaKind::Note),
                    ] {
                        let options = Options {
                            tables: vec![SourceTable::named(table, kind)],
                            ..Options::default()
                        };
                        let started = questboard_core::asset_migration::start(
                            &scratch.pool,
                            &questboard_core::sources::Allowlist::any(),
                            &source.url,
                            &options,
                            false,
                            &mapping,
                            "bench",
                        )
                        .await?;
                        let deadline = Instant::now() + Duration::from_secs(600);
                        let report = loop {
                            let run = questboard_core::asset_migration::get_run(
                                &scratch.pool,
                                started.run.id,
                            )
                            .await?;
                            if run.status != "running" {
                                break run.report.context("no report")?;
                            }
                            anyhow::ensure!(Instant::now() < deadline, "the run did not end");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        };
                        anyhow::ensure!(report["outcome"] == "completed", "run: {report}");
                        let seconds = report["seconds"].as_f64().unwrap_or(f64::NAN);
                        let migrated = report["migrated"].as_f64().unwrap_or(0.0);
                        let expected = if kind == MediaKind::Map { maps } else { notes };
                        anyhow::ensure!(migrated as usize == expected, "run: {report}");
                        if kind == MediaKind::Map {
                            let bytes = report["bytes"].as_f64().unwrap_or(0.0);
                            rate.values.push(bytes / 1e6 / seconds);
                            map_rate.values.push(migrated / seconds);
                        } else {
                            note_rate.values.push(migrated / seconds);
                        }
                    }
                    worker.stop();
                    Ok(())
                })
                .await
            })
            .await?;
        }
        for figure in [rate, map_rate, note_rate] {
            figure.print();
            figures.push(figure);
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    Ok(figures)
}

/// The legacy layout import on one backend.
async fn legacy(
    config: &Config,
    args: &BenchArgs,
    name: &str,
    env: &[(String, String)],
) -> anyhow::Result<Vec<Figure>> {
    let (folders, images, small) = if args.quick {
        (2, 2, 10)
    } else {
        (10, 10, 100)
    };
    let tree = std::env::temp_dir().join(format!("qb-bench-legacy-{}", std::process::id()));
    let mut mapping = Mapping::new();
    for folder in 0..folders {
        let dir = tree.join(format!("campaigns/prod/campaign_{folder} - Bench {folder}"));
        std::fs::create_dir_all(dir.join("art"))?;
        for i in 0..images {
            std::fs::write(dir.join(format!("art/scene {i}.png")), png(1_000_000, i))?;
        }
        for i in 0..small {
            let (file, text) = if i % 2 == 0 {
                (
                    format!("history {i}.txt"),
                    format!("Turn {i}: the party rests.\n"),
                )
            } else {
                (format!("state {i}.json"), format!("{{\"turn\": {i}}}"))
            };
            std::fs::write(dir.join(file), text)?;
        }
        mapping.insert(
            format!("prod/campaign_{folder} - Bench {folder}"),
            Owners {
                owner: "bench".into(),
                members: Vec::new(),
                gms: Vec::new(),
                skip: false,
            },
        );
    }
    let source = format!("file://{}", tree.display());
    let mut bytes_rate = Figure::new(
        format!(
            "legacy import of {folders} folders ({} images of 1 MB, {} small files), {name}",
            folders * images,
            folders * small
        ),
        "MB/s",
    );
    let mut file_rate = Figure::new("  ... the same", "files/s");
    for _ in 0..runs(args) {
        Scratch::scoped(config, async |scratch| {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let worker = Processes::worker_with(scratch, config, "legacy_import", &env)?;
            let started = questboard_core::legacy_import::start(
                &scratch.pool,
                &questboard_core::sources::Allowlist::any(),
                &source,
                &mapping,
                legacy_import::Options::default(),
                false,
                "bench",
            )
            .await?;
            let deadline = Instant::now() + Duration::from_secs(600);
            let report = loop {
                let run = legacy_import::get_run(&scratch.pool, started.run.id).await?;
                if run.status != "running" {
                    break run.report.context("no report")?;
                }
                anyhow::ensure!(Instant::now() < deadline, "the run did not end");
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            anyhow::ensure!(report["outcome"] == "completed", "run: {report}");
            let files = report["files"].as_f64().unwrap_or(0.0);
            anyhow::ensure!(
                files as usize == folders * (images + small),
                "run: {report}"
            );
            let seconds = report["seconds"].as_f64().unwrap_or(f64::NAN);
            let bytes = report["bytes"].as_f64().unwrap_or(0.0);
            bytes_rate.values.push(bytes / 1e6 / seconds);
            file_rate.values.push(files / seconds);
            worker.stop();
            Ok(())
        })
        .await?;
    }
    let _ = std::fs::remove_dir_all(tree);
    for figure in [&bytes_rate, &file_rate] {
        figure.print();
    }
    Ok(vec![bytes_rate, file_rate])
}
