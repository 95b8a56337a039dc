//! Legacy folders made sessions (`legacy_campaigns`): beginning and
//! finishing one, what a run imported, and forgetting what it made (the
//! rollback).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Error, Owners, Result};
use crate::identity::UserId;
use crate::sessions::{self, SessionName};

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

/// What a rollback did: the sessions deleted, those kept (played in since,
/// not forced), and the objects deleted with them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RolledBack {
    /// The run.
    pub run_id: Uuid,
    /// `{path, session_id}` of each session deleted.
    pub deleted: Vec<Value>,
    /// `{path, session_id, turns, reason}` of each session kept.
    pub kept: Vec<Value>,
    /// Objects deleted from storage.
    pub objects_deleted: u64,
}

/// Deletes what run `run` imported: per session, its objects first (a
/// failure leaves the session to roll back again), then its rows.
/// Sessions played in since are kept unless `force`. Refused while the
/// run is still running.
pub async fn roll_back(
    pool: &PgPool,
    storage: &crate::storage::Storage,
    run: Uuid,
    force: bool,
) -> Result<RolledBack> {
    let record = super::get_run(pool, run).await?;
    if record.status == "running" {
        return Err(Error::Conflict(format!(
            "run {run} is still running; cancel its job first"
        )));
    }
    let mut done = RolledBack {
        run_id: run,
        ..RolledBack::default()
    };
    for made in made_by(pool, run).await? {
        if made.turns > 0 && !force {
            done.kept
                .push(json!({ "path": made.path, "session_id": made.session_id,
                "turns": made.turns, "reason": "played in since; --force deletes it" }));
            continue;
        }
        let files = storage
            .session(&made.storage_prefix)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        done.objects_deleted += files.delete_all().await.map_err(Error::Storage)?;
        if forget(pool, made.session_id).await? {
            done.deleted
                .push(json!({ "path": made.path, "session_id": made.session_id }));
        }
    }
    tracing::info!(%run, deleted = done.deleted.len(), kept = done.kept.len(),
        "legacy import rolled back");
    Ok(done)
}
