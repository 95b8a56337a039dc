//! Campaign files and media, behind one abstraction over `object_store`.
//!
//! Every part of questboard that reads or writes a campaign's files (turn
//! logs, game state, generated images and audio) goes through [`Storage`],
//! so the backend is chosen once, by `QB_STORAGE_URL`:
//!
//! | URL | backend |
//! |---|---|
//! | `file:///abs/path` or a plain path | local filesystem (the default, `./data/storage`) |
//! | `memory://` | in process memory (tests, throwaway runs) |
//! | `s3://bucket/prefix` | S3 or any S3-compatible server (`AWS_*` variables) |
//! | `gs://bucket/prefix` | Google Cloud Storage (`GOOGLE_*` variables) |
//!
//! A session's files live under its recorded `storage_prefix` in one of a
//! fixed set of [`Area`]s (`logs/`, `data/`, `media/images/`,
//! `media/audio/`, `media/maps/`, `media/notes/`). File names are validated component by component (a
//! conservative character set, no `..`, no absolute paths, no NUL), so no
//! name a client sends can reach outside its session. A file's content type
//! must agree with its extension: a `.png` cannot be stored as `text/html`,
//! which keeps stored media from becoming a cross-site scripting vector.
//!
//! Object stores have no directories, so a session's prefix "exists" by
//! its manifest, `<prefix>/session.json` (written when the session is
//! created; `reconcile --repair` writes missing ones). Outside session
//! prefixes only `reports/` (job reports) and `_questboard/` (probes) are
//! used. Maintenance lists and deletes whole prefixes through
//! [`Storage::list_objects`] (a stream, page by page) and
//! [`Storage::delete_objects`].

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::aws::AmazonS3Builder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt as _, PutOptions};

mod local;

pub use local::SymbolicLink;

/// The name of a session's manifest, at the root of its prefix.
pub const MANIFEST: &str = "session.json";

/// A session's manifest (`session.json`): what makes its prefix exist on
/// stores without directories. No names or user ids: only the session's
/// id, when it was created and the layout's version.
pub fn manifest(session_id: uuid::Uuid, created_at: DateTime<Utc>) -> serde_json::Value {
    serde_json::json!({ "session_id": session_id, "created_at": created_at, "layout": 1 })
}
/// Where job reports go.
pub const REPORTS: &str = "reports";

/// Longest file name component, in bytes.
pub const MAX_COMPONENT_BYTES: usize = 128;
/// Most components (directories plus the file) in one name.
pub const MAX_COMPONENTS: usize = 8;

/// What can go wrong with storage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A path or name a caller supplied is not acceptable.
    #[error("invalid file name: {0}")]
    InvalidName(String),
    /// The content type does not match the file's extension.
    #[error("content type {given:?} does not match the file extension (expected {expected:?})")]
    ContentTypeMismatch {
        /// What the caller sent.
        given: String,
        /// What the extension implies.
        expected: &'static str,
    },
    /// No such file.
    #[error("file not found")]
    NotFound,
    /// `QB_STORAGE_URL` cannot be used.
    #[error("storage configuration: {0}")]
    Config(String),
    /// A listing of a local tree met a symbolic link (at this key): it is
    /// not followed, and the listing goes on after it.
    #[error("{0} is a symbolic link: not followed")]
    Link(String),
    /// The backend failed.
    #[error("storage backend: {0}")]
    Backend(#[source] object_store::Error),
}

impl From<object_store::Error> for Error {
    fn from(err: object_store::Error) -> Self {
        // A read through a link is "not found"; a listing's link is its own item.
        match err {
            object_store::Error::NotFound { .. } => Error::NotFound,
            other => match local::link_of(&other) {
                Some(link) => Error::Link(link.0.clone()),
                None => Error::Backend(other),
            },
        }
    }
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The configured object store.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// Presigns URLs on S3 and GCS (None elsewhere), with the URL's prefix
    /// to put before keys.
    signer: Option<(Arc<dyn object_store::signer::Signer>, Option<Path>)>,
    /// Whether the backend keeps object attributes (the local filesystem does not).
    keeps_attributes: bool,
    description: String,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage")
            .field("backend", &self.description)
            .finish()
    }
}

impl Storage {
    /// Opens the store named by `url` (see the module docs for the forms).
    /// Credentials for S3 and GCS come from the standard `AWS_*` and
    /// `GOOGLE_*` environment variables.
    pub fn from_url(url: &str) -> Result<Self> {
        Self::from_url_with(url, std::iter::empty::<(&str, &str)>())
    }

    /// Like [`Storage::from_url`], with extra backend options on top of the
    /// environment (`object_store` config keys such as `aws_endpoint`,
    /// `aws_allow_http`, `google_service_account`). Ignored for local and
    /// in-memory stores.
    pub fn from_url_with<K, V>(url: &str, options: impl IntoIterator<Item = (K, V)>) -> Result<Self>
    where
        K: AsRef<str>,
        V: Into<String>,
    {
        Self::open(url, options, true)
    }

    /// Opens a tree questboard reads but did not make (the legacy layout):
    /// like [`Storage::from_url`], except that a local directory must
    /// exist already (it is never created).
    pub fn existing(url: &str) -> Result<Self> {
        Self::open(url, std::iter::empty::<(&str, &str)>(), false)
    }

    fn open<K, V>(
        url: &str,
        options: impl IntoIterator<Item = (K, V)>,
        create: bool,
    ) -> Result<Self>
    where
        K: AsRef<str>,
        V: Into<String>,
    {
        if url == "memory://" || url == "memory:" {
            return Ok(Self::in_memory());
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = split_bucket(rest)?;
            let builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
            let store = configure(builder, options, AmazonS3Builder::with_config)?
                .build()
                .map_err(|e| Error::Config(e.to_string()))?;
            let store = Arc::new(store);
            return Ok(Self::remote(store.clone(), store, prefix, url));
        }
        if let Some(rest) = url.strip_prefix("gs://") {
            let (bucket, prefix) = split_bucket(rest)?;
            let builder = GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket);
            let store = configure(builder, options, GoogleCloudStorageBuilder::with_config)?
                .build()
                .map_err(|e| Error::Config(e.to_string()))?;
            let store = Arc::new(store);
            return Ok(Self::remote(store.clone(), store, prefix, url));
        }
        let dir = match url.strip_prefix("file://") {
            Some(abs) if abs.starts_with('/') => std::path::PathBuf::from(abs),
            Some(_) => {
                return Err(Error::Config(format!(
                    "{url:?}: a file URL needs an absolute path (file:///...)"
                )));
            }
            None if url.contains("://") => {
                return Err(Error::Config(format!(
                    "{url:?}: expected file://, memory://, s3:// or gs://"
                )));
            }
            None => std::path::PathBuf::from(url),
        };
        if create {
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::Config(format!("cannot create {}: {e}", dir.display())))?;
        } else if !dir.is_dir() {
            // A tree to read that is not there.
            return Err(Error::NotFound);
        }
        let store = local::NoFollow::new(&dir)
            .map_err(|e| Error::Config(format!("{}: {e}", dir.display())))?;
        Ok(Self {
            store: Arc::new(store),
            signer: None,
            keeps_attributes: false,
            description: format!("file://{}", dir.display()),
        })
    }

    /// A store that lives in this process's memory.
    pub fn in_memory() -> Self {
        Self {
            store: Arc::new(InMemory::new()),
            signer: None,
            keeps_attributes: true,
            description: "memory://".into(),
        }
    }

    fn remote<T: ObjectStore>(
        store: Arc<T>,
        signer: Arc<dyn object_store::signer::Signer>,
        prefix: Option<Path>,
        url: &str,
    ) -> Self {
        let wrapped: Arc<dyn ObjectStore> = match &prefix {
            Some(prefix) => Arc::new(PrefixStore::new(store, prefix.clone())),
            None => store,
        };
        Self {
            store: wrapped,
            signer: Some((signer, prefix)),
            keeps_attributes: true,
            description: url.to_owned(),
        }
    }

    /// A URL that reads the object `key` without credentials until `ttl`
    /// has passed (S3 and GCS presigned URLs); None where the backend
    /// cannot make one (the local filesystem, memory).
    pub async fn presigned_get(
        &self,
        key: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<String>> {
        let Some((signer, prefix)) = &self.signer else {
            return Ok(None);
        };
        let key = validated_path(key)?;
        let path = match prefix {
            Some(prefix) => key.parts().fold(prefix.clone(), |p, part| p.join(part)),
            None => key,
        };
        let url = signer
            .signed_url(object_store::signer::Method::GET, &path, ttl)
            .await
            .map_err(Error::from)?;
        Ok(Some(url.to_string()))
    }

    /// Records how long `operation` took since `started` and counts its
    /// backend failure (not a missing object or a refused name) as a
    /// storage error; returns `result`. Every operation on object bytes
    /// goes through here, so the storage dashboard sees them all.
    fn observed<T>(
        &self,
        operation: &'static str,
        started: Instant,
        result: Result<T>,
    ) -> Result<T> {
        observe(self.backend(), operation, started, result)
    }

    /// The backend's kind, for metric labels: `local`, `memory`, `s3` or `gcs`.
    pub fn backend(&self) -> &'static str {
        let d = self.description.as_str();
        if d.starts_with("s3://") {
            "s3"
        } else if d.starts_with("gs://") {
            "gcs"
        } else if d.starts_with("memory:") {
            "memory"
        } else {
            "local"
        }
    }

    /// A short description of the backend for logs.
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// The files of the session whose recorded prefix is `storage_prefix`.
    pub fn session(&self, storage_prefix: &str) -> Result<SessionFiles> {
        Ok(SessionFiles {
            storage: self.clone(),
            prefix: validated_path(storage_prefix)?,
        })
    }

    /// Every object whose key starts with `prefix` (`""`: all), as a
    /// stream read page by page from the backend, in no particular order.
    pub fn list_objects(
        &self,
        prefix: &str,
    ) -> futures::stream::BoxStream<'static, Result<ObjectInfo>> {
        let prefix = prefix.trim_matches('/');
        let path =
            (!prefix.is_empty()).then(|| prefix.split('/').fold(Path::default(), |p, c| p.join(c)));
        self.store
            .list(path.as_ref())
            .map_ok(|meta| ObjectInfo {
                key: meta.location.to_string(),
                size: meta.size,
                last_modified: meta.last_modified,
            })
            .map_err(Error::from)
            .boxed()
    }

    /// Deletes the objects `keys` (missing ones count as deleted), in
    /// batches as the backend allows (S3: 1,000 per request). Returns how
    /// many were deleted.
    pub async fn delete_objects(&self, keys: Vec<String>) -> Result<u64> {
        let started = Instant::now();
        let result = self.delete_stream(keys).await;
        self.observed("delete", started, result)
    }

    async fn delete_stream(&self, keys: Vec<String>) -> Result<u64> {
        let count = keys.len() as u64;
        let locations = futures::stream::iter(keys.into_iter().map(|k| Ok(Path::from(k)))).boxed();
        let mut deleted = self.store.delete_stream(locations);
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(err) => return Err(Error::Backend(err)),
            }
        }
        Ok(count)
    }

    /// Stores a job report as `reports/<name>` (validated like every name).
    /// Returns its key.
    pub async fn put_report(&self, name: &str, bytes: Bytes) -> Result<String> {
        let location = validated_path(&format!("{REPORTS}/{name}"))?;
        let mut attributes = Attributes::new();
        if self.keeps_attributes {
            attributes.insert(Attribute::ContentType, "application/json".into());
        }
        let options = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        self.store
            .put_opts(&location, bytes.into(), options)
            .await?;
        Ok(location.to_string())
    }

    /// Whether the object `key` exists (one HEAD).
    pub async fn exists(&self, key: &str) -> Result<bool> {
        let location = validated_path(key)?;
        let started = Instant::now();
        let found = match self.store.head(&location).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(Error::Backend(e)),
        };
        self.observed("head", started, found)
    }

    /// Reads an object by key (reports, mostly).
    pub async fn get_object(&self, key: &str) -> Result<Bytes> {
        let location = validated_path(key)?;
        Ok(self.store.get(&location).await?.bytes().await?)
    }

    /// Reads an object by a key a listing of this store returned, as it
    /// is: unlike every other read, the key is not held to questboard's
    /// name rules, since a tree questboard did not write (the legacy
    /// layout) has spaces, quotes and accents in its names.
    pub async fn read_listed(&self, key: &str) -> Result<Bytes> {
        let location = Path::parse(key).map_err(|e| Error::InvalidName(e.to_string()))?;
        let started = Instant::now();
        let result = async { Ok(self.store.get(&location).await?.bytes().await?) }.await;
        self.observed("read", started, result)
    }

    /// Checks the backend answers (used by readiness checks and startup).
    pub async fn check(&self) -> Result<()> {
        let probe = Path::from("_questboard").join("probe");
        match self.store.head(&probe).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::Backend(e)),
        }
    }
}

/// Applies `object_store` config options (keys such as `aws_endpoint`) to a
/// cloud store builder.
fn configure<B, C, K, V>(
    builder: B,
    options: impl IntoIterator<Item = (K, V)>,
    with_config: impl Fn(B, C, String) -> B,
) -> Result<B>
where
    C: std::str::FromStr<Err = object_store::Error>,
    K: AsRef<str>,
    V: Into<String>,
{
    options
        .into_iter()
        .try_fold(builder, |builder, (key, value)| {
            let key = key
                .as_ref()
                .parse()
                .map_err(|e: object_store::Error| Error::Config(e.to_string()))?;
            Ok(with_config(builder, key, value.into()))
        })
}

fn split_bucket(rest: &str) -> Result<(&str, Option<Path>)> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(Error::Config("the storage URL names no bucket".into()));
    }
    let prefix = prefix.trim_matches('/');
    let prefix = if prefix.is_empty() {
        None
    } else {
        Some(validated_path(prefix).map_err(|e| Error::Config(e.to_string()))?)
    };
    Ok((bucket, prefix))
}

/// An object found by a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its key, relative to the configured root.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// When it was last written.
    pub last_modified: DateTime<Utc>,
}

/// The fixed places a session's files go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Area {
    /// `logs/`: turn transcripts and audit logs.
    Logs,
    /// `data/`: game state and other structured data.
    Data,
    /// `media/images/`: generated images.
    Images,
    /// `media/audio/`: generated audio.
    Audio,
    /// `media/maps/`: uploaded maps.
    Maps,
    /// `media/notes/`: uploaded session notes.
    Notes,
}

impl Area {
    /// Every area, in layout order.
    pub const ALL: [Area; 6] = [
        Area::Logs,
        Area::Data,
        Area::Images,
        Area::Audio,
        Area::Maps,
        Area::Notes,
    ];

    /// The area's directory under the session prefix.
    pub fn dir(self) -> &'static str {
        match self {
            Area::Logs => "logs",
            Area::Data => "data",
            Area::Images => "media/images",
            Area::Audio => "media/audio",
            Area::Maps => "media/maps",
            Area::Notes => "media/notes",
        }
    }

    fn path(self) -> Path {
        self.dir()
            .split('/')
            .fold(Path::default(), |p, c| p.join(c))
    }
}

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
    storage: Storage,
    prefix: Path,
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
pub const UPLOAD_PART_BYTES: usize = 5 * 1024 * 1024;
/// Size of the parts of a streamed upload to local files or memory.
pub const LOCAL_PART_BYTES: usize = 1024 * 1024;

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

/// An object being read ([`Storage::read`]).
pub struct Reading {
    /// Its size in bytes (the whole object, not the range).
    pub size: u64,
    /// The bytes asked for, as they arrive.
    pub stream: futures::stream::BoxStream<'static, Result<Bytes>>,
}

impl fmt::Debug for Reading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reading").field("size", &self.size).finish()
    }
}

impl Storage {
    /// Reads the object `key`, or only `range` of it (a ranged GET on
    /// object stores: only those bytes are fetched), as a stream.
    pub async fn read(&self, key: &str, range: Option<std::ops::Range<u64>>) -> Result<Reading> {
        let location = validated_path(key)?;
        let options = object_store::GetOptions {
            range: range.map(object_store::GetRange::Bounded),
            ..Default::default()
        };
        let started = Instant::now();
        let opened = self
            .store
            .get_opts(&location, options)
            .await
            .map_err(Error::from);
        // Time to the first byte: the body streams at the reader's pace.
        let result = self.observed("read", started, opened)?;
        let size = result.meta.size;
        let stream = result.into_stream().map_err(Error::from).boxed();
        Ok(Reading { size, stream })
    }
}

fn observe<T>(
    backend: &'static str,
    operation: &'static str,
    started: Instant,
    result: Result<T>,
) -> Result<T> {
    metrics::histogram!(crate::metrics::STORAGE_OPERATION_SECONDS,
        "operation" => operation, "backend" => backend)
    .record(started.elapsed().as_secs_f64());
    count_error(backend, operation, result)
}

/// Counts `result`'s backend failure as a storage error of `operation`.
fn count_error<T>(backend: &'static str, operation: &'static str, result: Result<T>) -> Result<T> {
    if let Err(Error::Backend(_) | Error::Config(_)) = &result {
        metrics::counter!(crate::metrics::STORAGE_ERRORS_TOTAL,
            "operation" => operation, "backend" => backend)
        .increment(1);
    }
    result
}

/// A listed key as its owner named it: object stores percent-encode a few
/// characters (`%`, `#`, `?`, `*`, ...) in keys; this undoes that.
pub fn decoded_key(key: &str) -> String {
    percent_encoding::percent_decode_str(key)
        .decode_utf8_lossy()
        .into_owned()
}

/// Validates a relative, `/`-separated name and turns it into a store path.
///
/// Each component must be 1 to [`MAX_COMPONENT_BYTES`] bytes of ASCII
/// letters, digits, `.`, `_` and `-`, must not start with `.` (which also
/// refuses `.` and `..`), and there may be at most [`MAX_COMPONENTS`] of
/// them. Leading `/` (absolute paths), `\`, NUL, spaces and percent-escapes
/// are all refused by the character set.
pub fn validated_path(name: &str) -> Result<Path> {
    let invalid = |why: &str| Error::InvalidName(format!("{why}: {:?}", truncate(name)));
    if name.is_empty() {
        return Err(invalid("empty name"));
    }
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() > MAX_COMPONENTS {
        return Err(invalid("too many path components"));
    }
    for part in &parts {
        if part.is_empty() {
            return Err(invalid(
                "empty path component (leading, trailing or double '/')",
            ));
        }
        if part.len() > MAX_COMPONENT_BYTES {
            return Err(invalid("path component too long"));
        }
        if part.starts_with('.') {
            return Err(invalid("path components must not start with '.'"));
        }
        if !part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(invalid(
                "only letters, digits, '.', '_' and '-' are allowed",
            ));
        }
    }
    Ok(parts.into_iter().fold(Path::default(), |p, c| p.join(c)))
}

fn truncate(name: &str) -> String {
    name.chars().take(64).collect()
}

/// The content type a file name's extension implies.
pub fn content_type_for(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "json" => "application/json",
        "jsonl" | "ndjson" => "application/x-ndjson",
        "txt" | "log" => "text/plain",
        "md" => "text/markdown",
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "mp3" => "audio/mpeg",
        "ogg" | "oga" => "audio/ogg",
        "opus" => "audio/opus",
        "wav" => "audio/wav",
        "m4a" => "audio/mp4",
        "flac" => "audio/flac",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "..",
            "../x",
            "a/../b",
            "a//b",
            "a/",
            ".hidden",
            "a\0b",
            "a\\b",
            "a b",
            "%2e%2e/x",
            "C:\\x",
            "é.png",
        ] {
            assert!(validated_path(bad).is_err(), "{bad:?} should be refused");
        }
        let deep = ["a"; MAX_COMPONENTS + 1].join("/");
        assert!(validated_path(&deep).is_err());
        assert!(validated_path(&"a".repeat(MAX_COMPONENT_BYTES + 1)).is_err());
    }

    #[test]
    fn ordinary_names_are_kept() {
        for good in ["turn-0001.json", "2026/11/portrait_v2.png", "a.b.c"] {
            assert_eq!(
                validated_path(good).map(|p| p.to_string()).ok(),
                Some(good.to_owned())
            );
        }
    }

    #[test]
    fn content_types_follow_extensions() {
        assert_eq!(content_type_for("x.PNG"), "image/png");
        assert_eq!(content_type_for("x"), "application/octet-stream");
        assert_eq!(content_type_for("log.jsonl"), "application/x-ndjson");
    }
}
