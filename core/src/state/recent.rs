//! The game-state documents this process wrote last, by session, so a game
//! master's next update can skip reading the state.
//!
//! A document at a version never changes (every update makes the next
//! version), so a remembered `(version, document)` is never wrong, only
//! perhaps old. An update against the remembered version is prepared from
//! it and written by one statement that applies only if the state is still
//! at that version and the caller still may write it
//! ([`super::update_as_gm`]); anything else (an older version, another
//! process's update, a role change) writes nothing and takes the path that
//! reads. Bounded by bytes: past the budget, everything is forgotten at
//! once (the next update of each session reads again).

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::Value;
use uuid::Uuid;

/// Documents larger than this are not remembered, in bytes of JSON.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// The most bytes of documents remembered.
pub const BUDGET_BYTES: usize = 32 * 1024 * 1024;

/// Remembered documents. Shared by the handlers of one process.
#[derive(Debug, Default)]
pub struct Recent {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    documents: HashMap<Uuid, (i64, Value, usize)>,
    bytes: usize,
}

impl Recent {
    /// Nothing remembered yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the session's document if the one remembered is at `version`.
    pub fn at(&self, session_id: Uuid, version: i64) -> Option<Value> {
        let inner = self.inner();
        match inner.documents.get(&session_id) {
            Some((v, document, _)) if *v == version => Some(document.clone()),
            _ => None,
        }
    }

    /// Remembers the session's `document` at `version` (`bytes` long as JSON).
    pub fn remember(&self, session_id: Uuid, version: i64, document: Value, bytes: usize) {
        let mut inner = self.inner();
        if let Some((_, _, old)) = inner.documents.remove(&session_id) {
            inner.bytes -= old;
        }
        if bytes > MAX_DOCUMENT_BYTES {
            return;
        }
        if inner.bytes + bytes > BUDGET_BYTES {
            inner.documents.clear();
            inner.bytes = 0;
        }
        inner.bytes += bytes;
        inner
            .documents
            .insert(session_id, (version, document, bytes));
    }

    /// How many sessions' documents are remembered.
    pub fn len(&self) -> usize {
        self.inner().documents.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_the_remembered_version_is_given_back() {
        let recent = Recent::new();
        let session = Uuid::now_v7();
        recent.remember(session, 3, json!({"items": [1]}), 12);
        assert_eq!(recent.at(session, 3), Some(json!({"items": [1]})));
        assert_eq!(recent.at(session, 2), None);
        recent.remember(session, 4, json!({"items": [1, 2]}), 14);
        assert_eq!(recent.at(session, 3), None);
        assert_eq!(recent.len(), 1);
    }

    #[test]
    fn large_documents_are_not_kept_and_the_budget_holds() {
        let recent = Recent::new();
        let session = Uuid::now_v7();
        recent.remember(session, 1, json!({}), 2);
        recent.remember(session, 2, json!({}), MAX_DOCUMENT_BYTES + 1);
        assert!(recent.is_empty(), "the old version was forgotten too");
        let per = MAX_DOCUMENT_BYTES;
        for _ in 0..(BUDGET_BYTES / per + 3) {
            recent.remember(Uuid::now_v7(), 1, json!({}), per);
        }
        assert!(recent.len() <= BUDGET_BYTES / per);
    }
}
