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

mod layout;
mod local;
mod session;

pub use layout::validated_path;
pub use layout::{
    Area, MANIFEST, MAX_COMPONENT_BYTES, MAX_COMPONENTS, REPORTS, content_type_for, decoded_key,
    manifest,
};
pub use local::SymbolicLink;
pub use session::{File, FileInfo, SessionFiles, Upload};

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
