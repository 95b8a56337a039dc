//! Storing media bytes: the one way bytes become a stored object of a
//! session's media, whoever brings them (an upload, a generation, an
//! asset migration, the legacy import).
//!
//! The checks are the same for all: the declared type must be one the
//! kind keeps (its extension names the object), the bytes must stay under
//! the limit (the declared length first, then as they arrive) and must be
//! what the type says ([`super::Sniffer`]); they are hashed on their way
//! (SHA-256) and put under the object name of the item's version. Bytes
//! that arrive as a stream are streamed to storage and the upload aborted
//! on a refusal, so nothing is left behind; bytes already in memory are
//! checked first and then put in one request. What comes back is the
//! [`StoredObject`] to record, or why the bytes were not stored.

use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use super::{MediaKind, Sniffer, StoredObject, object_name};
use crate::storage::{self, SessionFiles};

/// Why bytes were refused (nothing was stored).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The declared type is not one the kind keeps.
    #[error("a {kind} must be {allowed}")]
    UnsupportedType {
        /// The kind.
        kind: &'static str,
        /// The types it keeps, for the message.
        allowed: String,
    },
    /// Over the limit, declared or while arriving.
    #[error("the body is over the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The bytes are not what the declared type says.
    #[error("{0}")]
    Disguised(String),
}

/// Why storing failed: refused, the bytes could not be read (`E`, the
/// stream's error), or storage failed.
#[derive(Debug, thiserror::Error)]
pub enum Error<E> {
    /// The bytes are not acceptable.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The bytes stopped arriving.
    #[error("the bytes could not be read")]
    Body(E),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] storage::Error),
}

/// What to store: the version `version` of item `id` of kind `kind`, in
/// the session `files`, declared as `content_type`, at most `limit` bytes.
#[derive(Debug, Clone, Copy)]
pub struct Ingest<'a> {
    /// The session's files.
    pub files: &'a SessionFiles,
    /// The item's kind.
    pub kind: MediaKind,
    /// The item.
    pub id: Uuid,
    /// Its version, from 1.
    pub version: i32,
    /// The declared content type.
    pub content_type: &'a str,
    /// The largest it may be, in bytes.
    pub limit: u64,
}

/// The checks bytes pass on their way.
struct Check {
    limit: u64,
    seen: u64,
    sniffer: Sniffer,
    hasher: Sha256,
}

impl Ingest<'_> {
    /// The object's extension and stored type, and a fresh check; refused
    /// when the kind does not keep the declared type.
    fn begin(&self) -> Result<(&'static str, &'static str, Check), Refusal> {
        let refused = || Refusal::UnsupportedType {
            kind: self.kind.as_str(),
            allowed: self
                .kind
                .content_types()
                .iter()
                .map(|(ty, _)| *ty)
                .collect::<Vec<_>>()
                .join(" or "),
        };
        let ext = self
            .kind
            .extension_for(self.content_type)
            .ok_or_else(refused)?;
        let sniffer = Sniffer::new(self.content_type).ok_or_else(refused)?;
        let stored_type = self.kind.content_type_of(ext).ok_or_else(refused)?;
        Ok((
            ext,
            stored_type,
            Check {
                limit: self.limit,
                seen: 0,
                sniffer,
                hasher: Sha256::new(),
            },
        ))
    }

    /// Streams `stream` to storage through the checks (`declared_length`,
    /// when the sender said it, is checked first); on a refusal or a read
    /// error the upload is aborted and nothing is stored.
    pub async fn store_stream<S, E>(
        &self,
        declared_length: Option<u64>,
        mut stream: S,
    ) -> Result<StoredObject, Error<E>>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
    {
        let (ext, stored_type, mut check) = self.begin()?;
        if declared_length.is_some_and(|n| n > self.limit) {
            return Err(Refusal::TooLarge { limit: self.limit }.into());
        }
        let name = object_name(self.id, self.version, ext);
        let mut upload = self
            .files
            .begin_upload(self.kind.area(), &name, stored_type)
            .await?;
        let outcome: Result<(), Error<E>> = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(Error::Body)?;
                check.feed(&chunk)?;
                upload.write(chunk).await?;
            }
            Ok(())
        }
        .await;
        let sha256 = match outcome.and_then(|()| check.finish().map_err(Error::from)) {
            Ok(sha256) => sha256,
            Err(err) => {
                let _ = upload.abort().await;
                return Err(err);
            }
        };
        let storage_key = upload.key().to_owned();
        let byte_size = upload.finish().await?;
        Ok(StoredObject {
            storage_key,
            content_type: stored_type.to_owned(),
            byte_size,
            sha256,
        })
    }

    /// Checks `bytes` as [`Ingest::store_bytes`] would, storing nothing
    /// (dry runs); the object's extension when they pass.
    pub fn check(&self, bytes: &[u8]) -> Result<&'static str, Refusal> {
        let (ext, _, mut check) = self.begin()?;
        check.feed(bytes)?;
        check.finish()?;
        Ok(ext)
    }

    /// Checks `bytes` (already in memory), then puts them in one request.
    pub async fn store_bytes(
        &self,
        bytes: Bytes,
    ) -> Result<StoredObject, Error<std::convert::Infallible>> {
        let (ext, stored_type, mut check) = self.begin()?;
        check.feed(&bytes)?;
        let sha256 = check.finish()?;
        let name = object_name(self.id, self.version, ext);
        let byte_size = bytes.len() as u64;
        self.files
            .put(self.kind.area(), &name, bytes, stored_type)
            .await?;
        Ok(StoredObject {
            storage_key: self.files.key(self.kind.area(), &name)?,
            content_type: stored_type.to_owned(),
            byte_size,
            sha256,
        })
    }
}

impl Check {
    fn feed(&mut self, chunk: &[u8]) -> Result<(), Refusal> {
        self.seen += chunk.len() as u64;
        if self.seen > self.limit {
            return Err(Refusal::TooLarge { limit: self.limit });
        }
        self.sniffer
            .feed(chunk)
            .map_err(|e| Refusal::Disguised(e.to_string()))?;
        self.hasher.update(chunk);
        Ok(())
    }

    fn finish(self) -> Result<[u8; 32], Refusal> {
        self.sniffer
            .finish()
            .map_err(|e| Refusal::Disguised(e.to_string()))?;
        Ok(self.hasher.finalize().into())
    }
}
