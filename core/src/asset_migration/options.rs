//! What a run is told and what every asset must pass: the source tables
//! and their columns, the run's options (failure threshold, batch), the
//! campaign -> session mapping, and the checks an asset passes before it
//! is stored (its kind's types and size limit, its bytes).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Error, Result};
use crate::media::{self, MediaKind};
use crate::operator_run;

/// One source table and its columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceTable {
    /// The table (`name` or `schema.name`).
    #[schema(pattern = "^[A-Za-z_][A-Za-z0-9_]{0,62}(\\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")]
    pub table: String,
    /// What its rows become: `map` or `note`.
    pub kind: MediaKind,
    /// The primary key column (integer, text or uuid).
    #[serde(default = "default_id")]
    #[schema(pattern = "^[A-Za-z_][A-Za-z0-9_]{0,62}$")]
    pub id: String,
    /// The column naming the campaign.
    #[serde(default = "default_campaign")]
    #[schema(pattern = "^[A-Za-z_][A-Za-z0-9_]{0,62}$")]
    pub campaign: String,
    /// The file name column.
    #[serde(default = "default_name")]
    #[schema(pattern = "^[A-Za-z_][A-Za-z0-9_]{0,62}$")]
    pub name: String,
    /// The declared content type column.
    #[serde(default = "default_content_type")]
    #[schema(pattern = "^[A-Za-z_][A-Za-z0-9_]{0,62}$")]
    pub content_type: String,
    /// The bytes column.
    #[serde(default = "default_data")]
    #[schema(pattern = "^[A-Za-z_][A-Za-z0-9_]{0,62}$")]
    pub data: String,
}

fn default_id() -> String {
    "id".into()
}
fn default_campaign() -> String {
    "campaign_id".into()
}
fn default_name() -> String {
    "name".into()
}
fn default_content_type() -> String {
    "content_type".into()
}
fn default_data() -> String {
    "data".into()
}

impl SourceTable {
    /// The table of `kind` with the default column names.
    pub fn named(table: &str, kind: MediaKind) -> Self {
        Self {
            table: table.to_owned(),
            kind,
            id: default_id(),
            campaign: default_campaign(),
            name: default_name(),
            content_type: default_content_type(),
            data: default_data(),
        }
    }
}

/// How a run reads and decides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// The tables, in order.
    pub tables: Vec<SourceTable>,
    /// A column of each source row holding its session's id (instead of a
    /// campaign -> session mapping).
    #[serde(default)]
    pub session_column: Option<String>,
    /// Leave the blobs in the source rows (only write the references).
    #[serde(default)]
    pub keep_source: bool,
    /// Abort when more than this share of the assets so far failed, in
    /// percent (the design documents' rollback trigger: 1).
    #[serde(default = "default_max_failure_percent")]
    pub max_failure_percent: f64,
    /// Assets to see before the failure share can abort the run.
    #[serde(default = "default_min_sample")]
    pub min_sample: u64,
    /// Source rows read per page.
    #[serde(default = "default_batch")]
    pub batch: i64,
}

fn default_max_failure_percent() -> f64 {
    1.0
}
/// The largest `min_sample` a run takes: a billion assets is past any
/// campaign store, and the bound keeps the number inside what JSON and
/// Postgres carry exactly.
const MAX_MIN_SAMPLE: u64 = 1_000_000_000;

fn default_min_sample() -> u64 {
    100
}
fn default_batch() -> i64 {
    100
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tables: vec![
                SourceTable::named("campaign_maps", MediaKind::Map),
                SourceTable::named("campaign_notes", MediaKind::Note),
            ],
            session_column: None,
            keep_source: false,
            max_failure_percent: default_max_failure_percent(),
            min_sample: default_min_sample(),
            batch: default_batch(),
        }
    }
}

impl Options {
    /// Checks names, kinds and bounds.
    pub fn validate(&self) -> Result<()> {
        if self.tables.is_empty() {
            return Err(Error::Invalid("a run needs at least one table".into()));
        }
        for t in &self.tables {
            if !matches!(t.kind, MediaKind::Map | MediaKind::Note) {
                return Err(Error::Invalid(format!(
                    "{}: only maps and notes are migrated",
                    t.table
                )));
            }
            for name in [
                &t.table,
                &t.id,
                &t.campaign,
                &t.name,
                &t.content_type,
                &t.data,
            ] {
                quoted(name)?;
            }
        }
        if let Some(column) = &self.session_column {
            quoted(column)?;
        }
        if !(0.0..=100.0).contains(&self.max_failure_percent) {
            return Err(Error::Invalid(
                "the failure threshold is a percentage, 0 to 100".into(),
            ));
        }
        if self.min_sample > MAX_MIN_SAMPLE {
            return Err(Error::Invalid(
                "the sample before the threshold applies is at most 1,000,000,000 assets".into(),
            ));
        }
        if !(1..=10_000).contains(&self.batch) {
            return Err(Error::Invalid("the batch is 1 to 10,000 rows".into()));
        }
        Ok(())
    }

    /// Whether `failed` of `seen` assets is past the threshold.
    pub fn over_threshold(&self, failed: u64, seen: u64) -> bool {
        seen >= self.min_sample.max(1)
            && (failed as f64) * 100.0 > self.max_failure_percent * seen as f64
    }
}

/// `name` (or `schema.name`) as a quoted SQL identifier, if it is a plain
/// one: letters, digits and `_`, not starting with a digit, at most 63
/// bytes a part.
pub fn quoted(name: &str) -> Result<String> {
    let parts: Vec<&str> = name.split('.').collect();
    let plain = |p: &&str| {
        !p.is_empty()
            && p.len() <= 63
            && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !p.as_bytes()[0].is_ascii_digit()
    };
    if parts.len() > 2 || !parts.iter().all(plain) {
        return Err(Error::Invalid(format!(
            "{name:?} is not a plain SQL name (letters, digits, _)"
        )));
    }
    Ok(parts
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join("."))
}

/// Reads a campaign -> session mapping: CSV lines `campaign_id,session_id`
/// (a header line naming them is skipped; blank lines and `#` comments
/// too). A campaign named twice, or a line that is not two fields with a
/// UUID second, is refused with its line number.
pub fn parse_mapping(text: &str) -> Result<Vec<(String, Uuid)>> {
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut mapping = Vec::new();
    for operator_run::CsvLine { line, fields } in
        operator_run::csv_lines(text, "campaign_id").map_err(Error::Invalid)?
    {
        let [campaign, session] = &fields[..] else {
            return Err(Error::Invalid(format!(
                "mapping line {line}: expected campaign_id,session_id"
            )));
        };
        let session: Uuid = session.parse().map_err(|_| {
            Error::Invalid(format!(
                "mapping line {line}: {session:?} is not a session id"
            ))
        })?;
        if campaign.is_empty() || campaign.len() > 200 {
            return Err(Error::Invalid(format!(
                "mapping line {line}: the campaign id must be 1 to 200 characters"
            )));
        }
        if let Some(first) = seen.insert(campaign.clone(), line) {
            return Err(Error::Invalid(format!(
                "mapping line {line}: campaign {campaign:?} is mapped already on line {first}"
            )));
        }
        mapping.push((campaign.clone(), session));
    }
    Ok(mapping)
}

/// Most campaigns one run's mapping holds.
pub const MAX_MAPPING: usize = 1_000_000;

/// `url` with its password, if any, replaced by `***` (for showing).
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Checks an asset as an upload is checked: a kind's type, within its
/// limit, its bytes what the type says. Returns the type's extension.
pub fn check(
    kind: MediaKind,
    content_type: Option<&str>,
    size: i64,
    limits: &media::UploadLimits,
) -> Result<&'static str, String> {
    let Some(content_type) = content_type else {
        return Err("no content type".into());
    };
    let Some(ext) = kind.extension_for(content_type) else {
        return Err(format!("a {} cannot be {content_type:?}", kind.as_str()));
    };
    let limit = limits.of(kind).unwrap_or(0);
    if size < 0 || size as u64 > limit {
        return Err(format!(
            "{size} bytes is over the {} limit of {limit} bytes",
            kind.as_str()
        ));
    }
    Ok(ext)
}

/// Checks an asset's bytes against its declared type.
pub fn sniff(content_type: &str, bytes: &[u8]) -> Result<(), String> {
    let Some(mut sniffer) = media::Sniffer::new(content_type) else {
        return Err(format!("{content_type:?} is not a type questboard keeps"));
    };
    sniffer
        .feed(bytes)
        .and_then(|()| sniffer.finish())
        .map_err(|_| format!("the bytes are not {content_type}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn names_are_plain_identifiers_or_refused() {
        assert_eq!(quoted("campaign_maps").unwrap(), "\"campaign_maps\"");
        assert_eq!(quoted("old.maps").unwrap(), "\"old\".\"maps\"");
        for bad in ["", "a;drop table x", "a\"b", "1x", "a.b.c", "a b", "x--"] {
            assert!(quoted(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mappings_are_read_and_refused_with_their_line() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        let text = format!("campaign_id,session_id\n# comment\n\n12,{a}\n c-7 , {b} \n");
        assert_eq!(
            parse_mapping(&text).unwrap(),
            vec![("12".to_owned(), a), ("c-7".to_owned(), b)]
        );
        let twice = format!("1,{a}\n1,{b}\n");
        assert!(
            parse_mapping(&twice)
                .unwrap_err()
                .to_string()
                .contains("line 2")
        );
        assert!(
            parse_mapping("1,not-a-uuid")
                .unwrap_err()
                .to_string()
                .contains("line 1")
        );
        assert!(parse_mapping("1").is_err());
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redacted("postgres://app:s3cret@db:5432/old"),
            "postgres://app:***@db:5432/old"
        );
        assert_eq!(redacted("postgres://db/old"), "postgres://db/old");
        assert_eq!(redacted("postgres://app@db/old"), "postgres://app@db/old");
    }

    #[test]
    fn the_threshold_waits_for_its_sample() {
        let options = Options::default();
        assert!(!options.over_threshold(5, 50), "too few seen");
        assert!(!options.over_threshold(1, 100));
        assert!(options.over_threshold(2, 100));
        assert!(options.over_threshold(20, 1000));
        assert!(!options.over_threshold(8, 1000));
    }

    #[test]
    fn assets_are_checked_like_uploads() {
        let limits = media::UploadLimits::default();
        assert_eq!(
            check(MediaKind::Map, Some("image/png"), 10, &limits),
            Ok("png")
        );
        assert!(check(MediaKind::Map, Some("image/gif"), 10, &limits).is_err());
        assert!(check(MediaKind::Map, Some("image/png"), 26_000_000, &limits).is_err());
        assert!(check(MediaKind::Note, None, 10, &limits).is_err());
        assert!(sniff("text/markdown", b"# Notes").is_ok());
        assert!(sniff("image/png", b"# Notes").is_err());
    }
}
