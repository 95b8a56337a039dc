//! Schedule entries: the built-in maintenance schedule, and the TOML file
//! (`QB_SCHEDULE_FILE`) that overrides and extends it.
//!
//! ```toml
//! [[entry]]
//! name = "prune"              # an existing name overrides that entry's fields
//! cron = "0 3 * * *"          # 5 fields (min hour dom month dow), 6 or 7
//!                             # (with seconds, and year), or @daily, @hourly, ...
//! kind = "prune"              # a registered job kind
//! payload = { dry_run = false }
//! timezone = "Europe/Berlin"  # IANA name; default UTC
//! missed = "once"             # or "skip": after downtime, at most one catch-up
//! enabled = true
//! ```
//!
//! Day-of-week numbers follow the `cron` crate (1 = Sunday ... 7 =
//! Saturday); names (`Mon-Fri`) are unambiguous. A file that does not parse,
//! names an unknown kind or time zone, has a bad expression or a payload
//! the kind refuses is rejected at start with its line and the reason.
//!
//! Time zones and daylight saving: an entry's expression is read on its
//! zone's wall clock. A wall-clock time that does not exist on the day
//! clocks spring forward (02:30 in Europe/Berlin on the last Sunday of
//! March) does not fire that day; one that happens twice when clocks fall
//! back fires twice, once per occurrence (each is its own instant, so its
//! own tick). Entries that must run exactly once a day use UTC, or a time
//! outside 01:00-03:00.

use std::path::Path;
use std::str::FromStr as _;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use questboard_core::jobs::JobSpec;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::jobs::Registry;

/// What to do with ticks missed while no scheduler ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// Fire none of them.
    Skip,
    /// Fire one catch-up for all of them.
    Once,
}

/// One schedule entry, checked.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its name (ticks are enqueued as `<name>@<tick>`).
    pub name: String,
    /// The expression as written.
    pub cron: String,
    schedule: cron::Schedule,
    /// The kind it enqueues.
    pub spec: JobSpec,
    /// The payload, as written.
    pub payload: Value,
    pub(crate) stored: Vec<u8>,
    pub(crate) session: Option<Uuid>,
    /// The zone its expression is read in.
    pub timezone: Tz,
    /// What to do with missed ticks.
    pub missed: Missed,
    /// Disabled entries are listed but never fire.
    pub enabled: bool,
}

impl Entry {
    /// Its job as a tick enqueues it: the stored payload and the session
    /// it names (if any).
    pub fn job(&self) -> (Vec<u8>, Option<Uuid>) {
        (self.stored.clone(), self.session)
    }

    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule
            .after(&after.with_timezone(&self.timezone))
            .next()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The ticks in `(after, until]`, oldest first, at most `limit`.
    pub fn ticks_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Vec<DateTime<Utc>> {
        self.schedule
            .after(&after.with_timezone(&self.timezone))
            .map(|t| t.with_timezone(&Utc))
            .take_while(|t| *t <= until)
            .take(limit)
            .collect()
    }
}

/// A schedule file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("{path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Something in it is wrong.
    #[error("{path}:{line}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// The line (from 1).
        line: usize,
        /// Why.
        reason: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    entry: Vec<toml::Spanned<RawEntry>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: toml::Spanned<String>,
    cron: Option<toml::Spanned<String>>,
    kind: Option<toml::Spanned<String>>,
    payload: Option<toml::Spanned<toml::Value>>,
    timezone: Option<toml::Spanned<String>>,
    missed: Option<toml::Spanned<Missed>>,
    enabled: Option<bool>,
}

/// An entry before checking: what the built-ins and the file say.
#[derive(Debug, Clone)]
struct Draft {
    name: String,
    cron: String,
    kind: String,
    payload: Value,
    timezone: String,
    missed: Missed,
    enabled: bool,
}

/// The built-in maintenance schedule: a full prune daily at 03:00 UTC, a
/// prune of dead invites and expired leases every hour, a reconcile daily
/// at 04:00 UTC.
fn builtin() -> Vec<Draft> {
    vec![
        Draft {
            name: "prune".into(),
            cron: "0 3 * * *".into(),
            kind: "prune".into(),
            payload: json!({}),
            timezone: "UTC".into(),
            missed: Missed::Once,
            enabled: true,
        },
        Draft {
            name: "prune-hourly".into(),
            cron: "15 * * * *".into(),
            kind: "prune".into(),
            payload: json!({ "only": ["invites", "leases"] }),
            timezone: "UTC".into(),
            missed: Missed::Skip,
            enabled: true,
        },
        Draft {
            name: "reconcile".into(),
            cron: "0 4 * * *".into(),
            kind: "reconcile".into(),
            payload: json!({}),
            timezone: "UTC".into(),
            missed: Missed::Once,
            enabled: true,
        },
    ]
}

/// Parses a cron expression: 5 fields get a leading `0` seconds field.
pub fn parse_cron(expression: &str) -> Result<cron::Schedule, String> {
    let trimmed = expression.trim();
    let full = if !trimmed.starts_with('@') && trimmed.split_whitespace().count() == 5 {
        format!("0 {trimmed}")
    } else {
        trimmed.to_owned()
    };
    cron::Schedule::from_str(&full).map_err(|e| format!("cron expression {expression:?}: {e}"))
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

fn toml_to_json(value: toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => Value::from(f),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

/// The schedule: the built-ins, overridden and extended by `file`; every
/// entry checked against `registry`.
pub fn load(registry: &Registry, file: Option<&Path>) -> Result<Vec<Entry>, Error> {
    let mut drafts = builtin();
    let mut lines: Vec<Option<usize>> = vec![None; drafts.len()];
    let mut text = String::new();
    let path = file.map(|p| p.display().to_string()).unwrap_or_default();
    if let Some(file) = file {
        text = std::fs::read_to_string(file).map_err(|e| Error::Read {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let parsed: File = toml::from_str(&text).map_err(|e| Error::Invalid {
            path: path.clone(),
            line: e.span().map_or(1, |s| line_of(&text, s.start)),
            reason: e.message().to_owned(),
        })?;
        let invalid = |offset: usize, reason: String| Error::Invalid {
            path: path.clone(),
            line: line_of(&text, offset),
            reason,
        };
        for raw in parsed.entry {
            let at = raw.span().start;
            let raw = raw.into_inner();
            let name = raw.name.get_ref().trim().to_owned();
            if name.is_empty()
                || name.len() > 100
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(invalid(
                    raw.name.span().start,
                    format!("entry name {name:?}: 1 to 100 letters, digits, '-' or '_'"),
                ));
            }
            let index = match drafts.iter().position(|d| d.name == name) {
                Some(i) => i,
                None => {
                    let (Some(cron), Some(kind)) = (&raw.cron, &raw.kind) else {
                        return Err(invalid(
                            at,
                            format!("entry {name:?} is new, so it needs `cron` and `kind`"),
                        ));
                    };
                    drafts.push(Draft {
                        name: name.clone(),
                        cron: cron.get_ref().clone(),
                        kind: kind.get_ref().clone(),
                        payload: json!({}),
                        timezone: "UTC".into(),
                        missed: Missed::Skip,
                        enabled: true,
                    });
                    lines.push(Some(at));
                    drafts.len() - 1
                }
            };
            let draft = &mut drafts[index];
            lines[index] = Some(at);
            if let Some(cron) = raw.cron {
                parse_cron(cron.get_ref()).map_err(|e| invalid(cron.span().start, e))?;
                draft.cron = cron.into_inner();
            }
            if let Some(kind) = raw.kind {
                draft.kind = kind.into_inner();
            }
            if let Some(payload) = raw.payload {
                draft.payload = toml_to_json(payload.into_inner());
            }
            if let Some(zone) = raw.timezone {
                zone.get_ref().parse::<Tz>().map_err(|_| {
                    invalid(
                        zone.span().start,
                        format!(
                            "unknown time zone {:?} (an IANA name such as Europe/Berlin)",
                            zone.get_ref()
                        ),
                    )
                })?;
                draft.timezone = zone.into_inner();
            }
            if let Some(missed) = raw.missed {
                draft.missed = missed.into_inner();
            }
            if let Some(enabled) = raw.enabled {
                draft.enabled = enabled;
            }
        }
    }
    drafts
        .into_iter()
        .zip(lines)
        .map(|(draft, line)| {
            let fail = |reason: String| match line {
                Some(offset) => Error::Invalid {
                    path: path.clone(),
                    line: line_of(&text, offset),
                    reason,
                },
                None => Error::Invalid {
                    path: "built-in schedule".into(),
                    line: 0,
                    reason,
                },
            };
            let kind = registry.get(&draft.kind).ok_or_else(|| {
                fail(format!(
                    "entry {:?}: unknown job kind {:?}",
                    draft.name, draft.kind
                ))
            })?;
            if kind.spec.session_serial {
                return Err(fail(format!(
                    "entry {:?}: {} jobs cannot be scheduled",
                    draft.name, draft.kind
                )));
            }
            let (stored, session) = kind
                .validate(draft.payload.clone())
                .map_err(|e| fail(format!("entry {:?}: {e}", draft.name)))?;
            let schedule = parse_cron(&draft.cron)
                .map_err(|e| fail(format!("entry {:?}: {e}", draft.name)))?;
            let timezone = draft
                .timezone
                .parse::<Tz>()
                .map_err(|_| fail(format!("unknown time zone {:?}", draft.timezone)))?;
            Ok(Entry {
                name: draft.name,
                cron: draft.cron,
                schedule,
                spec: kind.spec,
                payload: draft.payload,
                stored,
                session,
                timezone,
                missed: draft.missed,
                enabled: draft.enabled,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::registry;
    use chrono::TimeZone as _;

    fn write(text: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("qb-schedule-{}.toml", Uuid::new_v4()));
        std::fs::write(&path, text).unwrap_or_default();
        path
    }

    #[test]
    fn builtins_load_and_a_file_overrides_and_extends_them() {
        let entries = load(&registry(), None).unwrap_or_default();
        assert_eq!(entries.len(), 3);
        let path = write(
            r#"
[[entry]]
name = "reconcile"
enabled = false

[[entry]]
name = "nightly-dry-prune"
cron = "30 2 * * Mon-Fri"
kind = "prune"
payload = { dry_run = true, only = ["jobs"] }
timezone = "Europe/Berlin"
missed = "once"
"#,
        );
        let entries = load(&registry(), Some(&path)).unwrap_or_default();
        assert_eq!(entries.len(), 4);
        let reconcile = entries.iter().find(|e| e.name == "reconcile");
        assert_eq!(reconcile.map(|e| e.enabled), Some(false));
        let extra = entries.iter().find(|e| e.name == "nightly-dry-prune");
        assert_eq!(extra.map(|e| e.missed), Some(Missed::Once));
        assert_eq!(extra.map(|e| e.timezone), Some(chrono_tz::Europe::Berlin));
    }

    #[test]
    fn bad_files_are_refused_with_their_line() {
        for (text, line, needle) in [
            (
                "[[entry]]\nname = \"x\"\ncron = \"nope\"\nkind = \"prune\"\n",
                3,
                "cron",
            ),
            (
                "[[entry]]\nname = \"x\"\ncron = \"* * * * *\"\nkind = \"nope\"\n",
                1,
                "unknown job kind",
            ),
            (
                "[[entry]]\nname = \"x\"\ncron = \"* * * * *\"\nkind = \"prune\"\ntimezone = \"Mars/Olympus\"\n",
                5,
                "time zone",
            ),
            (
                "[[entry]]\nname = \"x\"\ncron = \"* * * * *\"\nkind = \"prune\"\npayload = { bogus = 1 }\n",
                1,
                "bogus",
            ),
            ("\n\n[[entry]\nname = 1\n", 3, ""),
            ("[[entry]]\nname = \"x\"\n", 1, "needs `cron` and `kind`"),
            (
                "[[entry]]\nname = \"x\"\ncron = \"* * * * *\"\nkind = \"turn\"\n",
                1,
                "cannot be scheduled",
            ),
        ] {
            let path = write(text);
            match load(&registry(), Some(&path)) {
                Err(Error::Invalid {
                    line: l, reason, ..
                }) => {
                    assert_eq!(l, line, "{text}: {reason}");
                    assert!(reason.contains(needle), "{text}: {reason}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn daylight_saving_gaps_skip_and_overlaps_fire_twice() {
        let path = write(
            "[[entry]]\nname = \"x\"\ncron = \"30 2 * * *\"\nkind = \"prune\"\ntimezone = \"Europe/Berlin\"\n\n[[entry]]\nname = \"y\"\ncron = \"30 2 * * *\"\nkind = \"prune\"\ntimezone = \"Europe/Berlin\"\n",
        );
        let entries = load(&registry(), Some(&path)).unwrap_or_default();
        let entry = entries.iter().find(|e| e.name == "x");
        let Some(entry) = entry else { panic!("entry") };
        // Clocks sprang forward at 02:00 on 2026-03-29: no 02:30 that day.
        let from = Utc
            .with_ymd_and_hms(2026, 3, 27, 12, 0, 0)
            .single()
            .unwrap_or_default();
        let until = Utc
            .with_ymd_and_hms(2026, 3, 31, 12, 0, 0)
            .single()
            .unwrap_or_default();
        let days: Vec<String> = entry
            .ticks_between(from, until, 10)
            .iter()
            .map(|t| {
                t.with_timezone(&chrono_tz::Europe::Berlin)
                    .format("%m-%d %H:%M")
                    .to_string()
            })
            .collect();
        assert_eq!(days, ["03-28 02:30", "03-30 02:30", "03-31 02:30"]);
        // Clocks fell back at 03:00 on 2026-10-25: 02:30 happened twice.
        let from = Utc
            .with_ymd_and_hms(2026, 10, 24, 12, 0, 0)
            .single()
            .unwrap_or_default();
        let until = Utc
            .with_ymd_and_hms(2026, 10, 25, 12, 0, 0)
            .single()
            .unwrap_or_default();
        let ticks = entry.ticks_between(from, until, 10);
        assert_eq!(ticks.len(), 2, "{ticks:?}");
        assert_eq!((ticks[1] - ticks[0]).num_minutes(), 60);
    }
}
