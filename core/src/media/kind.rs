//! What a media item is and what its object is called: the kinds, the
//! types each keeps and the extension each is stored under, object names
//! (`<media_id>.png`, `<media_id>-v2.png`), display names a client sent,
//! and the size limits of uploads.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::storage::Area;

use super::{Error, Result};

/// What a media item is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum MediaKind {
    /// A generated image.
    Image,
    /// Generated audio (narration).
    Audio,
    /// An uploaded map.
    Map,
    /// Uploaded session notes.
    Note,
}

impl MediaKind {
    /// Every kind.
    pub const ALL: [MediaKind; 4] = [
        MediaKind::Image,
        MediaKind::Audio,
        MediaKind::Map,
        MediaKind::Note,
    ];

    /// The name clients use.
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Audio => "audio",
            MediaKind::Map => "map",
            MediaKind::Note => "note",
        }
    }

    /// Parses a client's name.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// Where its objects go.
    pub fn area(self) -> Area {
        match self {
            MediaKind::Image => Area::Images,
            MediaKind::Audio => Area::Audio,
            MediaKind::Map => Area::Maps,
            MediaKind::Note => Area::Notes,
        }
    }

    /// The `{type}` segment of its URL (`/api/media/{session}/{type}/{file}`).
    pub fn url_segment(self) -> &'static str {
        match self {
            MediaKind::Image => "images",
            MediaKind::Audio => "audio",
            MediaKind::Map => "maps",
            MediaKind::Note => "notes",
        }
    }

    /// The kind a URL segment names.
    pub fn from_url_segment(segment: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.url_segment() == segment)
    }

    /// Whether browsers should show it in place (images, audio, maps) or
    /// download it (notes).
    pub fn inline(self) -> bool {
        !matches!(self, MediaKind::Note)
    }

    /// The content types it may have, with the extension each is stored
    /// under.
    pub fn content_types(self) -> &'static [(&'static str, &'static str)] {
        match self {
            MediaKind::Image => &[
                ("image/png", "png"),
                ("image/jpeg", "jpg"),
                ("image/webp", "webp"),
            ],
            MediaKind::Audio => &[
                ("audio/wav", "wav"),
                ("audio/mpeg", "mp3"),
                ("audio/ogg", "ogg"),
                ("audio/opus", "opus"),
                ("audio/flac", "flac"),
            ],
            MediaKind::Map => &[("image/png", "png"), ("image/jpeg", "jpg")],
            MediaKind::Note => &[("text/markdown", "md"), ("application/pdf", "pdf")],
        }
    }

    /// The content type its objects of extension `ext` are stored and
    /// served as.
    pub fn content_type_of(self, ext: &str) -> Option<&'static str> {
        self.content_types()
            .iter()
            .find(|(_, e)| *e == ext)
            .map(|(ty, _)| *ty)
    }

    /// The extension `content_type` (parameters ignored) is stored under,
    /// if the kind admits it.
    pub fn extension_for(self, content_type: &str) -> Option<&'static str> {
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        self.content_types()
            .iter()
            .find(|(ty, _)| ty.eq_ignore_ascii_case(essence))
            .map(|(_, ext)| *ext)
    }
}

/// The name of a version's object within its area.
pub fn object_name(id: Uuid, version: i32, ext: &str) -> String {
    if version <= 1 {
        format!("{id}.{ext}")
    } else {
        format!("{id}-v{version}.{ext}")
    }
}

/// The media id and version a URL's file name names, if it is one of ours.
pub fn parse_file_name(name: &str) -> Option<(Uuid, i32)> {
    let (stem, _ext) = name.rsplit_once('.')?;
    match stem.split_once("-v") {
        Some((id, version)) => Some((
            Uuid::try_parse(id).ok()?,
            version.parse().ok().filter(|v| *v >= 2)?,
        )),
        None => Some((Uuid::try_parse(stem).ok()?, 1)),
    }
}

/// Longest display name kept, in characters.
pub const MAX_ORIGINAL_NAME_CHARS: usize = 255;

/// The display name of an upload: the last component of what the client
/// sent (so `../../etc/passwd` is shown as `passwd`), trimmed, at most
/// [`MAX_ORIGINAL_NAME_CHARS`], with no control or bidirectional
/// characters.
pub fn display_name(raw: &str) -> Result<String> {
    // The limit holds for what was sent (as the API description says), not
    // only for what is left once trimmed.
    if raw.chars().count() > MAX_ORIGINAL_NAME_CHARS {
        return Err(Error::Invalid(format!(
            "name must be at most {MAX_ORIGINAL_NAME_CHARS} characters"
        )));
    }
    let base = raw.rsplit(['/', '\\']).next().unwrap_or_default().trim();
    if base.is_empty() || base.chars().all(|c| c == '.') {
        return Err(Error::Invalid("name must name a file".into()));
    }
    if base.chars().count() > MAX_ORIGINAL_NAME_CHARS {
        return Err(Error::Invalid(format!(
            "name must be at most {MAX_ORIGINAL_NAME_CHARS} characters"
        )));
    }
    if let Some(reason) = crate::text::name_refusal(base) {
        return Err(Error::Invalid(format!("name {reason}")));
    }
    Ok(base.to_owned())
}

/// Size limits of uploads, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimits {
    /// Largest map, in bytes.
    pub map_max_bytes: u64,
    /// Largest note, in bytes.
    pub note_max_bytes: u64,
}

impl Default for UploadLimits {
    fn default() -> Self {
        Self {
            map_max_bytes: 25 * 1000 * 1000,
            note_max_bytes: 10 * 1000 * 1000,
        }
    }
}

impl UploadLimits {
    /// The limit of an upload of `kind`; None if the kind is not uploaded.
    pub fn of(&self, kind: MediaKind) -> Option<u64> {
        match kind {
            MediaKind::Map => Some(self.map_max_bytes),
            MediaKind::Note => Some(self.note_max_bytes),
            MediaKind::Image | MediaKind::Audio => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn file_names_round_trip_and_refuse_strangers() {
        let id = Uuid::now_v7();
        assert_eq!(parse_file_name(&object_name(id, 1, "png")), Some((id, 1)));
        assert_eq!(parse_file_name(&object_name(id, 7, "md")), Some((id, 7)));
        for bad in [
            "x.png",
            "passwd",
            &format!("{id}-v1.png"),
            &format!("{id}-v0.png"),
            &format!("{id}-vx.png"),
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn display_names_lose_their_directories_and_refuse_tricks() {
        assert_eq!(display_name("../../etc/passwd").unwrap(), "passwd");
        assert_eq!(display_name("C:\\maps\\keep.png").unwrap(), "keep.png");
        assert_eq!(
            display_name(" Dungeon level 1.png ").unwrap(),
            "Dungeon level 1.png"
        );
        for bad in [
            "",
            "..",
            "dir/",
            "a\u{0}b.png",
            "\u{202e}gnp.exe",
            &"x".repeat(256),
            // What the contract run sent: within the limit once trimmed,
            // not as sent.
            &format!("N{}", "\u{85}".repeat(300)),
        ] {
            assert!(display_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn kinds_admit_their_types() {
        assert_eq!(MediaKind::Map.extension_for("image/PNG"), Some("png"));
        assert_eq!(MediaKind::Map.extension_for("image/jpeg; q=1"), Some("jpg"));
        assert_eq!(MediaKind::Map.extension_for("application/pdf"), None);
        assert_eq!(
            MediaKind::Note.extension_for("text/markdown; charset=utf-8"),
            Some("md")
        );
        assert_eq!(MediaKind::Note.extension_for("text/html"), None);
    }
}
