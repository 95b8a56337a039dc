//! The placement rules: what a legacy folder's name says (campaign number
//! and title), what a file's path is made into (a safe name), where each
//! file goes (an area, or a media item), and whether its bytes are what
//! its name says.

use super::{Error, Result};
use crate::media::{self, MediaKind};
use crate::sessions::SessionName;
use crate::storage::{self, Area};

/// What a folder's name says: `campaign_<n> - <Name>` (also `campaign_<n>`,
/// `campaign_<n>-<Name>`, `campaign_<n>_<Name>`; `campaign` in any case).
/// None for anything else.
pub fn parse_folder(folder: &str) -> Option<(i64, String)> {
    let lower = folder.get(..9)?.to_ascii_lowercase();
    if lower != "campaign_" {
        return None;
    }
    let rest = &folder[9..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 15 {
        return None;
    }
    let number: i64 = rest[..digits].parse().ok()?;
    let tail = &rest[digits..];
    let title = if tail.is_empty() {
        ""
    } else if let Some(t) = tail.trim_start().strip_prefix('-') {
        t
    } else {
        tail.strip_prefix('_')?
    };
    Some((number, title.trim().to_owned()))
}

/// The session name of folder `n` titled `title`: the title, or
/// `Campaign <n>` when it is empty or not a usable name.
pub fn session_name(number: i64, title: &str) -> Result<SessionName> {
    SessionName::parse(title)
        .or_else(|_| SessionName::parse(&format!("Campaign {number}")))
        .map_err(|e| Error::Invalid(e.to_string()))
}

/// A legacy file name made safe for storage, component by component:
/// letters, digits, `.`, `_` and `-` are kept, every run of anything
/// else becomes one `_`, a leading `.` becomes `_`, and a component longer
/// than [`storage::MAX_COMPONENT_BYTES`] is cut (its extension kept).
/// Refused when nothing usable is left or the path is too deep.
pub fn safe_name(rel: &str) -> Result<String, String> {
    let mut parts = Vec::new();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        let mut safe = String::with_capacity(part.len());
        for c in part.chars() {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                safe.push(c);
            } else if !safe.ends_with('_') {
                safe.push('_');
            }
        }
        if safe.starts_with('.') {
            safe.replace_range(..1, "_");
        }
        if safe.chars().all(|c| matches!(c, '_' | '.' | '-')) {
            return Err(format!("{part:?} has no usable characters"));
        }
        if safe.len() > storage::MAX_COMPONENT_BYTES {
            let ext = safe
                .rsplit_once('.')
                .map(|(_, e)| e)
                .filter(|e| e.len() <= 16)
                .map(|e| format!(".{e}"))
                .unwrap_or_default();
            safe.truncate(storage::MAX_COMPONENT_BYTES - ext.len());
            safe.push_str(&ext);
        }
        parts.push(safe);
    }
    let name = parts.join("/");
    storage::validated_path(&name).map_err(|e| e.to_string())?;
    Ok(name)
}

/// Where a legacy file goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// A file in an area, under a safe name.
    File {
        /// The area.
        area: Area,
        /// Its name in the area.
        name: String,
        /// Its content type (what its extension says).
        content_type: &'static str,
    },
    /// A media item (image or audio).
    Media {
        /// Image or audio.
        kind: MediaKind,
        /// Its content type.
        content_type: &'static str,
        /// The extension its object is stored under.
        ext: &'static str,
    },
}

impl Placement {
    /// The area it goes to.
    pub fn area(&self) -> Area {
        match self {
            Placement::File { area, .. } => *area,
            Placement::Media { kind, .. } => kind.area(),
        }
    }

    /// Its content type.
    pub fn content_type(&self) -> &'static str {
        match self {
            Placement::File { content_type, .. } | Placement::Media { content_type, .. } => {
                content_type
            }
        }
    }
}

const LOG_EXTENSIONS: [&str; 6] = ["txt", "log", "md", "json", "jsonl", "ndjson"];
/// A name part (split at anything not a letter or digit) that marks a log.
fn is_log_word(word: &str) -> bool {
    let word = word.to_ascii_lowercase();
    matches!(word.as_str(), "log" | "logs" | "chatlog" | "gamelog")
        || word.starts_with("histor")
        || word.starts_with("transcript")
}

/// Where the file at `rel` (relative to its folder) goes, by the rules in
/// the module docs; Err when its name cannot be made safe.
pub fn place(rel: &str) -> Result<Placement, String> {
    let file = rel.rsplit('/').next().unwrap_or(rel);
    let (stem, ext) = match file.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => (stem, ext.to_ascii_lowercase()),
        _ => (file, String::new()),
    };
    let dirs: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    let dirs = &dirs[..dirs.len().saturating_sub(1)];
    let is_log = LOG_EXTENSIONS.contains(&ext.as_str())
        && dirs
            .iter()
            .copied()
            .chain(std::iter::once(stem))
            .flat_map(|part| part.split(|c: char| !c.is_ascii_alphanumeric()))
            .any(is_log_word);
    for kind in [MediaKind::Image, MediaKind::Audio] {
        let found = kind.content_types().iter().find(|(ty, stored)| {
            *stored == ext || storage::content_type_for(&format!("x.{ext}")) == *ty
        });
        if let Some((content_type, stored)) = found {
            return Ok(Placement::Media {
                kind,
                content_type,
                ext: stored,
            });
        }
    }
    let (area, name) = if is_log {
        // `logs/history.txt` goes to `logs/history.txt`, not `logs/logs/...`.
        let trimmed = match rel.split_once('/') {
            Some((first, rest))
                if ["logs", "log", "history"].contains(&first.to_ascii_lowercase().as_str()) =>
            {
                rest
            }
            _ => rel,
        };
        (Area::Logs, safe_name(trimmed)?)
    } else if ext == "json" {
        (Area::Data, safe_name(rel)?)
    } else {
        (Area::Data, safe_name(&format!("legacy/{rel}"))?)
    };
    let content_type = storage::content_type_for(&name);
    Ok(Placement::File {
        area,
        name,
        content_type,
    })
}

/// Checks a file's bytes against what its placement says: images and
/// audio by their magic bytes, markdown, text and logs as UTF-8, JSON by
/// parsing. Err says why not.
pub fn check_bytes(placement: &Placement, bytes: &[u8]) -> Result<(), String> {
    let content_type = placement.content_type();
    match content_type {
        "application/json" => serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
            .map(|_| ())
            .map_err(|e| format!("not valid JSON: {e}")),
        "text/plain" | "application/x-ndjson" => std::str::from_utf8(bytes)
            .map(|_| ())
            .map_err(|_| "not UTF-8 text".to_owned()),
        other => match media::Sniffer::new(other) {
            Some(mut sniffer) => sniffer
                .feed(bytes)
                .and_then(|()| sniffer.finish())
                .map_err(|_| format!("the bytes are not {other}")),
            // No check for the type: it is stored as what its extension
            // says (unknown ones as application/octet-stream) and served
            // as an attachment.
            None => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn folder_names() {
        assert_eq!(
            parse_folder("campaign_1 - The Lost Mine"),
            Some((1, "The Lost Mine".into()))
        );
        assert_eq!(parse_folder("Campaign_12"), Some((12, String::new())));
        assert_eq!(
            parse_folder("campaign_3-Château d'If"),
            Some((3, "Château d'If".into()))
        );
        assert_eq!(parse_folder("campaign_4_Frost"), Some((4, "Frost".into())));
        for bad in [
            "notes",
            "campaign_",
            "campaign_x - A",
            "campaign_5 A",
            "campaign",
        ] {
            assert_eq!(parse_folder(bad), None, "{bad}");
        }
        assert_eq!(session_name(9, "").unwrap().as_str(), "Campaign 9");
        assert_eq!(
            session_name(9, "\u{202e}evil").unwrap().as_str(),
            "Campaign 9"
        );
    }

    #[test]
    fn names_are_made_safe() {
        assert_eq!(safe_name("Day 1 (draft).md").unwrap(), "Day_1_draft_.md");
        assert_eq!(safe_name(".hidden").unwrap(), "_hidden");
        assert_eq!(safe_name("Château/é.txt").unwrap(), "Ch_teau/_.txt");
        assert!(safe_name("日本").is_err());
        let long = format!("{}.png", "a".repeat(300));
        let safe = safe_name(&long).unwrap();
        assert_eq!(safe.len(), storage::MAX_COMPONENT_BYTES);
        assert!(safe.ends_with(".png"));
        assert!(safe_name(&["a"; 12].join("/")).is_err());
    }

    #[test]
    fn files_are_placed_by_the_rules() {
        let file = |area, name: &str| Placement::File {
            area,
            name: name.into(),
            content_type: storage::content_type_for(name),
        };
        assert_eq!(
            place("history.txt").unwrap(),
            file(Area::Logs, "history.txt")
        );
        assert_eq!(
            place("logs/Session 1.log").unwrap(),
            file(Area::Logs, "Session_1.log")
        );
        assert_eq!(
            place("chat_history.json").unwrap(),
            file(Area::Logs, "chat_history.json")
        );
        assert_eq!(place("state.json").unwrap(), file(Area::Data, "state.json"));
        assert_eq!(
            place("notes/todo.md").unwrap(),
            file(Area::Data, "legacy/notes/todo.md")
        );
        assert_eq!(
            place("page.html").unwrap(),
            file(Area::Data, "legacy/page.html")
        );
        assert_eq!(
            place("art/Map.JPEG").unwrap(),
            Placement::Media {
                kind: MediaKind::Image,
                content_type: "image/jpeg",
                ext: "jpg"
            }
        );
        assert_eq!(
            place("theme.mp3").unwrap(),
            Placement::Media {
                kind: MediaKind::Audio,
                content_type: "audio/mpeg",
                ext: "mp3"
            }
        );
        assert_eq!(
            place("page.html").unwrap().content_type(),
            "application/octet-stream"
        );
    }

    #[test]
    fn bytes_are_checked() {
        let json = place("state.json").unwrap();
        assert!(check_bytes(&json, b"{\"a\": 1}").is_ok());
        assert!(check_bytes(&json, b"{oops").is_err());
        let log = place("history.txt").unwrap();
        assert!(check_bytes(&log, &[0xff, 0xfe]).is_err());
        let png = place("a.png").unwrap();
        assert!(check_bytes(&png, b"GIF89a....").is_err());
        assert!(check_bytes(&place("x.bin").unwrap(), &[0, 1, 2]).is_ok());
    }
}
