//! The local-filesystem backend, which never follows a symbolic link.
//!
//! `object_store`'s `LocalFileSystem` follows links when it lists, reads
//! and writes. A tree questboard reads but did not make (the legacy
//! layout) may hold links planted to reach outside it (`passwd.txt ->
//! /etc/passwd`, `etcdir -> /etc`), and questboard's own storage root
//! should hold none: a link there is either a mistake or an attack. So
//! every path this backend touches is checked below its root, component by
//! component, with `lstat`:
//!
//! - a read, write, copy or delete whose path has a link anywhere in it is
//!   refused (reads answer "not found", so a link looks like nothing);
//! - a listing never descends into a linked directory and yields each link
//!   it meets as a [`SymbolicLink`] error item, then goes on: callers
//!   report it (the legacy import records it as skipped, reconcile lists
//!   it) instead of copying what it points at;
//! - every path resolves to a place under the root (no `..`, no absolute
//!   component).
//!
//! The check and the operation are two system calls, so a link swapped in
//! between them by someone who can write into the tree is not caught; the
//! trees questboard reads are written before an import starts, and its own
//! root only by itself.

use std::fmt;
use std::ops::Range;
use std::path::{Component, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// A symbolic link met where questboard reads or writes a local tree: the
/// source of the error a refused path or a listing's link item carries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} is a symbolic link: questboard never follows one")]
pub struct SymbolicLink(pub String);

/// A local directory, read and written without following links.
#[derive(Debug, Clone)]
pub(super) struct NoFollow {
    inner: Arc<LocalFileSystem>,
    /// The canonical root (the one `inner` resolves paths under).
    root: Arc<PathBuf>,
}

impl NoFollow {
    /// The store rooted at the existing directory `dir`.
    pub(super) fn new(dir: &std::path::Path) -> std::io::Result<Self> {
        let root = std::fs::canonicalize(dir)?;
        let inner = LocalFileSystem::new_with_prefix(&root)
            .map_err(std::io::Error::other)?
            .with_automatic_cleanup(true);
        Ok(Self {
            inner: Arc::new(inner),
            root: Arc::new(root),
        })
    }

    /// Checks that `location` stays under the root and that nothing on its
    /// way there is a link (components that do not exist yet are fine: a
    /// write creates them as plain directories).
    fn check(&self, location: &Path) -> Result<()> {
        check(&self.inner, &self.root, location)
    }
}

fn check(inner: &LocalFileSystem, root: &std::path::Path, location: &Path) -> Result<()> {
    if location.as_ref().is_empty() {
        // The root itself.
        return Ok(());
    }
    let path = inner.path_to_filesystem(location)?;
    let outside = || object_store::Error::NotFound {
        path: location.to_string(),
        source: "the path leads outside the storage root".into(),
    };
    let rel = path.strip_prefix(root).map_err(|_| outside())?;
    let mut at = root.to_path_buf();
    for component in rel.components() {
        let Component::Normal(part) = component else {
            return Err(outside());
        };
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => return Err(link(location)),
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => {
                return Err(object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(err),
                });
            }
        }
    }
    Ok(())
}

/// The error of a path through a link: "not found", with the reason.
fn link(location: &Path) -> object_store::Error {
    object_store::Error::NotFound {
        path: location.to_string(),
        source: Box::new(SymbolicLink(location.to_string())),
    }
}

/// Whether the entry `location` itself is a link.
fn is_link(inner: &LocalFileSystem, location: &Path) -> bool {
    inner
        .path_to_filesystem(location)
        .ok()
        .and_then(|p| std::fs::symlink_metadata(p).ok())
        .is_some_and(|m| m.file_type().is_symlink())
}

/// The link a listing met, as an error item of the listing.
fn listed_link(location: &Path) -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(SymbolicLink(location.to_string())),
    }
}

/// The link an error is about, if it is one of ours.
pub(super) fn link_of(err: &object_store::Error) -> Option<&SymbolicLink> {
    match err {
        object_store::Error::Generic { source, .. }
        | object_store::Error::NotFound { source, .. } => source.downcast_ref::<SymbolicLink>(),
        _ => None,
    }
}

impl fmt::Display for NoFollow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NoFollow({})", self.root.display())
    }
}

/// What a listing still has to do: directories to read, entries to yield.
struct Walk {
    inner: Arc<LocalFileSystem>,
    dirs: Vec<Path>,
    ready: std::collections::VecDeque<Result<ObjectMeta>>,
}

impl Walk {
    /// Reads one directory: plain subdirectories are queued, plain files
    /// made ready, links made ready as error items.
    async fn read(&mut self, dir: Path) {
        let listed = self
            .inner
            .list_with_delimiter((!dir.as_ref().is_empty()).then_some(&dir))
            .await;
        match listed {
            Err(err) => self.ready.push_back(Err(err)),
            Ok(listed) => {
                for sub in listed.common_prefixes {
                    if is_link(&self.inner, &sub) {
                        self.ready.push_back(Err(listed_link(&sub)));
                    } else {
                        self.dirs.push(sub);
                    }
                }
                for object in listed.objects {
                    if is_link(&self.inner, &object.location) {
                        self.ready.push_back(Err(listed_link(&object.location)));
                    } else {
                        self.ready.push_back(Ok(object));
                    }
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for NoFollow {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.check(location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.check(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.check(location)?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.check(location)?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let (inner, root) = (self.inner.clone(), self.root.clone());
        let checked = locations
            .and_then(move |location| {
                let checked = check(&inner, &root, &location).map(|()| location);
                futures::future::ready(checked)
            })
            .boxed();
        self.inner.delete_stream(checked)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let start = prefix.cloned().unwrap_or_default();
        let mut walk = Walk {
            inner: self.inner.clone(),
            dirs: Vec::new(),
            ready: Default::default(),
        };
        match self.check(&start) {
            Ok(()) => walk.dirs.push(start),
            Err(err) if link_of(&err).is_some() => walk.ready.push_back(Err(listed_link(&start))),
            Err(err) => walk.ready.push_back(Err(err)),
        }
        futures::stream::unfold(walk, |mut walk| async move {
            loop {
                if let Some(item) = walk.ready.pop_front() {
                    return Some((item, walk));
                }
                let dir = walk.dirs.pop()?;
                walk.read(dir).await;
            }
        })
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        if let Some(prefix) = prefix {
            self.check(prefix)?;
        }
        let mut listed = self.inner.list_with_delimiter(prefix).await?;
        listed.common_prefixes.retain(|p| !is_link(&self.inner, p));
        listed
            .objects
            .retain(|o| !is_link(&self.inner, &o.location));
        Ok(listed)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.check(from)?;
        self.check(to)?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.check(from)?;
        self.check(to)?;
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use object_store::ObjectStoreExt as _;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("qb-nofollow-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn links_are_neither_read_nor_listed_nor_written_through() {
        let outside = scratch("outside");
        std::fs::write(outside.join("secret.txt"), "secret").unwrap();
        let root = scratch("root");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::write(root.join("a/plain.txt"), "plain").unwrap();
        std::os::unix::fs::symlink(outside.join("secret.txt"), root.join("a/passwd.txt")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a/etcdir")).unwrap();
        let store = NoFollow::new(&root).unwrap();

        let plain = store.get(&Path::from("a/plain.txt")).await.unwrap();
        assert_eq!(plain.bytes().await.unwrap(), "plain");
        for refused in ["a/passwd.txt", "a/etcdir/secret.txt"] {
            let err = store.get(&Path::from(refused)).await.unwrap_err();
            assert!(link_of(&err).is_some(), "{refused}: {err}");
            assert!(matches!(err, object_store::Error::NotFound { .. }));
        }
        // A write through the linked directory is refused too.
        let err = store
            .put(&Path::from("a/etcdir/planted.txt"), "x".into())
            .await
            .unwrap_err();
        assert!(link_of(&err).is_some());
        assert!(!outside.join("planted.txt").exists());

        let items: Vec<_> = store.list(None).collect().await;
        let mut files = Vec::new();
        let mut links = Vec::new();
        for item in items {
            match item {
                Ok(meta) => files.push(meta.location.to_string()),
                Err(err) => {
                    links.push(link_of(&err).unwrap_or_else(|| panic!("{err:?}")).0.clone())
                }
            }
        }
        links.sort();
        assert_eq!(files, ["a/plain.txt"]);
        assert_eq!(links, ["a/etcdir", "a/passwd.txt"]);

        let level = store
            .list_with_delimiter(Some(&Path::from("a")))
            .await
            .unwrap();
        assert!(level.common_prefixes.is_empty());
        assert_eq!(level.objects.len(), 1);
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_dir_all(&outside);
    }
}
