//! The first pass: every object, listed a chunk at a time. Each chunk's
//! session prefixes are looked up in one query and its media objects in
//! another, so a million objects never sit in memory at once: orphans
//! (under a prefix no session has), objects outside the known areas, and
//! untracked media (in a live session's media areas, recorded by no
//! version). Symbolic links in a local root are reported, never followed.
//! With `repair`, orphans and untracked media past the grace period are
//! deleted.

use std::collections::HashSet;

use futures::StreamExt as _;
use futures::stream::BoxStream;
use questboard_core::storage::{self, Area, MANIFEST, ObjectInfo, REPORTS};
use questboard_core::{media, sessions};
use uuid::Uuid;

use super::{CHUNK, Env, Report, db};
use crate::jobs::JobError;
use crate::sweep::Sweep;

/// Every object in storage.
pub(super) struct Objects;

/// The listing, once started.
type Listing = BoxStream<'static, storage::Result<ObjectInfo>>;

impl Sweep for Objects {
    type Env = Env;
    type Report = Report;
    type Cursor = Option<Listing>;
    const NAME: &'static str = "listing objects";

    async fn step(
        env: &Env,
        report: &mut Report,
        listing: Option<Listing>,
    ) -> Result<Option<Option<Listing>>, JobError> {
        let mut listing = listing.unwrap_or_else(|| env.ctx.storage.list_objects(""));
        let mut chunk: Vec<ObjectInfo> = Vec::with_capacity(CHUNK);
        let mut done = false;
        while chunk.len() < CHUNK {
            match listing.next().await {
                None => {
                    done = true;
                    break;
                }
                Some(Err(storage::Error::Link(key))) => {
                    report.symbolic_links.count += 1;
                    report.symbolic_links.keys.keep(&key, env.settings.sample);
                }
                Some(Err(e)) => {
                    return Err(JobError::retryable(format!("listing storage: {e}")));
                }
                Some(Ok(object)) => chunk.push(object),
            }
        }
        report.objects_scanned += chunk.len() as u64;
        if !chunk.is_empty() {
            check(env, report, chunk).await?;
        }
        Ok((!done).then_some(Some(listing)))
    }
}

/// Sorts one chunk of objects into what they are, deleting what `repair`
/// may.
async fn check(env: &Env, report: &mut Report, chunk: Vec<ObjectInfo>) -> Result<(), JobError> {
    let sample = env.settings.sample;
    let ids: Vec<Uuid> = chunk
        .iter()
        .filter_map(|o| {
            split_session_key(&o.key)?
                .0
                .strip_prefix("sessions/")?
                .parse()
                .ok()
        })
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let known: HashSet<String> = sessions::prefixes_of(&env.ctx.pool, &ids)
        .await
        .map_err(db)?
        .into_iter()
        .map(|(_, prefix)| prefix)
        .collect();
    let mut orphans = Vec::new();
    let mut media_objects = Vec::new();
    for object in &chunk {
        match split_session_key(&object.key) {
            Some((prefix, rest)) if known.contains(prefix) => {
                if !in_known_area(rest) {
                    report.outside_areas.add(object, sample);
                } else if rest.starts_with("media/") {
                    media_objects.push(object);
                }
            }
            Some(_) => {
                if report.orphans.add(object, env.cutoff, sample) && env.repair {
                    orphans.push(object.key.clone());
                }
            }
            None => {
                let top = object.key.split('/').next().unwrap_or_default();
                if top != REPORTS && top != "_questboard" {
                    report.outside_areas.add(object, sample);
                }
            }
        }
    }
    let mut untracked = Vec::new();
    if !media_objects.is_empty() {
        let keys: Vec<String> = media_objects.iter().map(|o| o.key.clone()).collect();
        let tracked: HashSet<String> = media::known_keys(&env.ctx.pool, &keys)
            .await
            .map_err(db)?
            .into_iter()
            .collect();
        for object in media_objects
            .into_iter()
            .filter(|o| !tracked.contains(&o.key))
        {
            if report.untracked_media.add(object, env.cutoff, sample) && env.repair {
                untracked.push(object.key.clone());
            }
        }
    }
    if !untracked.is_empty() {
        report.untracked_media.deleted += env
            .ctx
            .storage
            .delete_objects(untracked)
            .await
            .map_err(|e| JobError::retryable(format!("deleting untracked media: {e}")))?;
    }
    if !orphans.is_empty() {
        report.orphans.deleted += env
            .ctx
            .storage
            .delete_objects(orphans)
            .await
            .map_err(|e| JobError::retryable(format!("deleting orphans: {e}")))?;
    }
    Ok(())
}

/// Whether `rest` (a key below a session prefix) is in a known area.
fn in_known_area(rest: &str) -> bool {
    rest == MANIFEST
        || Area::ALL.iter().any(|area| {
            rest.strip_prefix(area.dir())
                .is_some_and(|tail| tail.starts_with('/') && tail.len() > 1)
        })
}

/// The session prefix (`sessions/<x>`) of a key and the rest below it.
fn split_session_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix("sessions/")?;
    let (id, below) = rest.split_once('/')?;
    let prefix_len = "sessions/".len() + id.len();
    Some((&key[..prefix_len], below))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_placed_in_areas() {
        assert!(in_known_area("logs/turn-1.json"));
        assert!(in_known_area("media/images/a.png"));
        assert!(in_known_area("session.json"));
        assert!(!in_known_area("media/other.png"));
        assert!(!in_known_area("logs"));
        assert!(!in_known_area("logs/"));
        assert!(!in_known_area("stray.bin"));
        assert_eq!(
            split_session_key("sessions/abc/logs/x"),
            Some(("sessions/abc", "logs/x"))
        );
        assert_eq!(split_session_key("sessions/abc"), None);
        assert_eq!(split_session_key("reports/x"), None);
    }
}
