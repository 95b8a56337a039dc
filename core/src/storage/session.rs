//! One session's files: reading, writing and listing within its prefix
//! and areas ([`SessionFiles`]), and streamed uploads that leave nothing
//! behind when aborted ([`Upload`]).

use std::fmt;
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::path::Path;
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt as _, PutOptions};

use super::{
    Area, Error, MANIFEST, Result, Storage, content_type_for, count_error, local, observe,
    validated_path,
};

/// Information about one stored file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// The area it is in.
    pub area: Area,
    /// Its name relative to the area.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Its content type.
    pub content_type: String,
    /// When it was last written.
    pub last_modified: DateTime<Utc>,
}

/// A file read back, with its contents.
#[derive(Debug, Clone)]
pub struct File {
    /// What it is.
    pub info: FileInfo,
    /// What it holds.
    pub bytes: Bytes,
}

/// The files of one campaign session.
#[derive(Debug, Clone)]
pub struct SessionFiles {
    pub(super) storage: Storage,
    pub(super) prefix: Path,
}

impl SessionFiles {
    fn location(&self, area: Area, name: &str) -> Result<Path> {
        let name = validated_path(name)?;
        let mut path = self.prefix.clone();
        for part in area.path().parts().chain(name.parts()) {
            path = path.join(part);
        }
        Ok(path)
    }

    /// Stores `bytes` as `name` in `area`, replacing any file of that name.
    /// `content_type` must agree with the name's extension.
    pub async fn put(
        &self,
        area: Area,
        name: &str,
        bytes: Bytes,
        content_type: &str,
    ) -> Result<FileInfo> {
        let location = self.location(area, name)?;
        let (expected, attributes) = self.attributes_for(name, content_type)?;
        let size = bytes.len() as u64;
        let options = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        let started = Instant::now();
        let put = self
            .storage
            .store
            .put_opts(&location, bytes.into(), options)
            .await
            .map_err(Error::from);
        self.storage.observed("put", started, put)?;
        Ok(FileInfo {
            area,
            name: name.to_owned(),
            size,
            content_type: expected.to_owned(),
            // One round trip fewer than a HEAD; the store's own time may
            // differ by clock skew, which no caller relies on.
            last_modified: Utc::now(),
        })
    }

    /// Checks that `content_type` agrees with `name`'s extension; returns
    /// the type and the attributes to store it with.
    fn attributes_for(&self, name: &str, content_type: &str) -> Result<(&'static str, Attributes)> {
        let expected = content_type_for(name);
        let given = content_type.split(';').next().unwrap_or_default().trim();
        if !given.eq_ignore_ascii_case(expected) {
            return Err(Error::ContentTypeMismatch {
                given: content_type.to_owned(),
                expected,
            });
        }
        let mut attributes = Attributes::new();
        if self.storage.keeps_attributes {
            attributes.insert(Attribute::ContentType, expected.into());
        }
        Ok((expected, attributes))
    }

    /// The key of `name` in `area` (relative to the configured root), as
    /// [`Storage::read`] and [`Storage::delete_objects`] take it.
    pub fn key(&self, area: Area, name: &str) -> Result<String> {
        Ok(self.location(area, name)?.to_string())
    }

    /// Starts storing `name` in `area` piece by piece: a multipart upload on
    /// object stores, a staging file on the local filesystem; nothing is
    /// visible under the name until [`Upload::finish`], and
    /// [`Upload::abort`] (or dropping it) leaves nothing behind.
    /// `content_type` must agree with the name's extension.
    pub async fn begin_upload(&self, area: Area, name: &str, content_type: &str) -> Result<Upload> {
        let location = self.location(area, name)?;
        let (_, attributes) = self.attributes_for(name, content_type)?;
        let options = object_store::PutMultipartOptions {
            attributes,
            ..Default::default()
        };
        let started = Instant::now();
        let begun = self
            .storage
            .store
            .put_multipart_opts(&location, options)
            .await
            .map_err(Error::from);
        let upload = self.storage.observed("upload_begin", started, begun)?;
        // S3 and GCS parts are at least 5 MiB (but the last): one is sent
        // before the next fills, so an upload holds about one part in
        // memory. Local files take small parts, one written while the next
        // fills.
        let (part, in_flight) = if self.storage.signer.is_some() {
            (UPLOAD_PART_BYTES, 0)
        } else {
            (LOCAL_PART_BYTES, 1)
        };
        let writer = object_store::WriteMultipart::new_with_chunk_size(upload, part);
        Ok(Upload {
            writer: Some(writer),
            key: location.to_string(),
            written: 0,
            in_flight,
            backend: self.storage.backend(),
            started,
        })
    }

    /// Reads a file back.
    pub async fn get(&self, area: Area, name: &str) -> Result<File> {
        let location = self.location(area, name)?;
        let result = self.storage.store.get(&location).await?;
        let content_type = result
            .attributes
            .get(&Attribute::ContentType)
            .map(|v| v.to_string())
            .unwrap_or_else(|| content_type_for(name).to_owned());
        let last_modified = result.meta.last_modified;
        let bytes = result.bytes().await?;
        Ok(File {
            info: FileInfo {
                area,
                name: name.to_owned(),
                size: bytes.len() as u64,
                content_type,
                last_modified,
            },
            bytes,
        })
    }

    /// Lists the files of one area, sorted by name.
    pub async fn list(&self, area: Area) -> Result<Vec<FileInfo>> {
        let mut dir = self.prefix.clone();
        for part in area.path().parts() {
            dir = dir.join(part);
        }
        let dir_parts = dir.parts().count();
        // A link (a local root only) is not a file of the session: left
        // out here, reported by reconcile.
        let metas: Vec<_> = self
            .storage
            .store
            .list(Some(&dir))
            .filter(|item| {
                let link = matches!(item, Err(e) if local::link_of(e).is_some());
                futures::future::ready(!link)
            })
            .try_collect()
            .await?;
        let mut files: Vec<FileInfo> = metas
            .into_iter()
            .filter_map(|meta| {
                let name = meta
                    .location
                    .parts()
                    .skip(dir_parts)
                    .map(|p| p.as_ref().to_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                // Files of a nested area (media/images under media/) are not ours.
                validated_path(&name).ok()?;
                Some(FileInfo {
                    area,
                    content_type: content_type_for(&name).to_owned(),
                    name,
                    size: meta.size,
                    last_modified: meta.last_modified,
                })
            })
            .collect();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(files)
    }

    /// The session's prefix, as a key.
    pub fn prefix(&self) -> String {
        self.prefix.to_string()
    }

    /// Writes the session's manifest (`session.json`): what makes its
    /// prefix exist on stores without directories.
    pub async fn put_manifest(&self, manifest: &serde_json::Value) -> Result<()> {
        let location = self.prefix.clone().join(MANIFEST);
        let bytes = serde_json::to_vec_pretty(manifest)
            .map_err(|e| Error::Config(format!("manifest: {e}")))?;
        let mut attributes = Attributes::new();
        if self.storage.keeps_attributes {
            attributes.insert(Attribute::ContentType, "application/json".into());
        }
        let options = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        self.storage
            .store
            .put_opts(&location, Bytes::from(bytes).into(), options)
            .await?;
        Ok(())
    }

    /// Whether the session's manifest exists.
    pub async fn has_manifest(&self) -> Result<bool> {
        let location = self.prefix.clone().join(MANIFEST);
        match self.storage.store.head(&location).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(Error::Backend(e)),
        }
    }

    /// Deletes every object under the session's prefix, page by page.
    /// Returns how many were deleted.
    pub async fn delete_all(&self) -> Result<u64> {
        let mut listing = self.storage.list_objects(&self.prefix());
        let mut total = 0;
        let mut page = Vec::with_capacity(1000);
        while let Some(object) = listing.next().await {
            let object = match object {
                Ok(object) => object,
                // Never deleted through; reconcile reports it.
                Err(Error::Link(key)) => {
                    tracing::warn!(key, "a symbolic link in a session's files was left alone");
                    continue;
                }
                Err(err) => return Err(err),
            };
            page.push(object.key);
            if page.len() == 1000 {
                total += self
                    .storage
                    .delete_objects(std::mem::take(&mut page))
                    .await?;
            }
        }
        if !page.is_empty() {
            total += self.storage.delete_objects(page).await?;
        }
        Ok(total)
    }

    /// Deletes a file. Deleting a missing file succeeds, as on S3.
    pub async fn delete(&self, area: Area, name: &str) -> Result<()> {
        let location = self.location(area, name)?;
        match self.storage.store.delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::Backend(e)),
        }
    }
}

/// Size of the parts of a streamed upload to S3 or GCS (their smallest
/// but the last).
pub(super) const UPLOAD_PART_BYTES: usize = 5 * 1024 * 1024;
/// Size of the parts of a streamed upload to local files or memory.
pub(super) const LOCAL_PART_BYTES: usize = 1024 * 1024;

/// A file being stored piece by piece ([`SessionFiles::begin_upload`]).
pub struct Upload {
    writer: Option<object_store::WriteMultipart>,
    key: String,
    written: u64,
    /// Parts that may be in flight while the next fills.
    in_flight: usize,
    /// For the metrics: which backend, and since when.
    backend: &'static str,
    started: Instant,
}

impl fmt::Debug for Upload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upload")
            .field("key", &self.key)
            .field("written", &self.written)
            .finish()
    }
}

impl Upload {
    /// The key the file gets.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends `bytes`; waits while parts are still being sent, so memory
    /// stays bounded however fast the body arrives.
    pub async fn write(&mut self, bytes: Bytes) -> Result<()> {
        let Some(writer) = self.writer.as_mut() else {
            return Err(Error::Config("the upload is finished".into()));
        };
        let waited = writer
            .wait_for_capacity(self.in_flight)
            .await
            .map_err(Error::from);
        count_error(self.backend, "upload", waited)?;
        self.written += bytes.len() as u64;
        writer.put(bytes);
        Ok(())
    }

    /// Completes the file; returns its size.
    pub async fn finish(mut self) -> Result<u64> {
        match self.writer.take() {
            Some(writer) => {
                let finished = writer.finish().await.map_err(Error::from);
                // The whole upload's time, from its start.
                observe(self.backend, "upload", self.started, finished)?;
                Ok(self.written)
            }
            None => Err(Error::Config("the upload is finished".into())),
        }
    }

    /// Gives up: nothing is stored.
    pub async fn abort(mut self) -> Result<()> {
        match self.writer.take() {
            Some(writer) => Ok(writer.abort().await?),
            None => Ok(()),
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // A request cut off mid-body drops its upload: abort it in the
        // background so no parts or staging file are left behind.
        if let Some(writer) = self.writer.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = writer.abort().await;
            });
        }
    }
}
