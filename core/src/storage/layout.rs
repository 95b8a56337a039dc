//! Where things go and what they may be called: the areas of a session,
//! its manifest, the name rules every key passes (a conservative
//! character set component by component, no `..`, no absolute paths, no
//! NUL) and the content type an extension stands for.

use chrono::{DateTime, Utc};
use object_store::path::Path;

use super::{Error, Result};

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

    pub(crate) fn path(self) -> Path {
        self.dir()
            .split('/')
            .fold(Path::default(), |p, c| p.join(c))
    }
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

pub(crate) fn truncate(name: &str) -> String {
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
