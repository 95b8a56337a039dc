//! The operator's mapping: which legacy folder goes to whom (owner,
//! members, game masters, or skip), read from CSV or JSON and checked.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Error, MAX_MAPPING, MAX_MEMBERS, Result};
use crate::identity::UserId;
use crate::operator_run;

/// Who a legacy folder belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Owners {
    /// The owner's user id (the JWT `sub`), who becomes the session's owner.
    #[serde(default)]
    pub owner: String,
    /// Players.
    #[serde(default)]
    pub members: Vec<String>,
    /// Game masters.
    #[serde(default)]
    pub gms: Vec<String>,
    /// Leave this folder out (reported as skipped): how an operator
    /// settles two folders claiming one campaign.
    #[serde(default)]
    pub skip: bool,
}

/// `"<env>/<folder>"` -> its owners.
pub type Mapping = BTreeMap<String, Owners>;

/// Reads a mapping: JSON (an object of `"<env>/<folder>"` to an owner's id
/// or to `{owner, members, gms, skip}`) or CSV (`folder,owner[,members[,gms]]`,
/// lists separated by `;`, an optional header line, `#` comments).
pub fn parse_mapping(text: &str) -> Result<Mapping> {
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    let mapping = if trimmed.starts_with('{') {
        let raw: BTreeMap<String, Value> = serde_json::from_str(trimmed)
            .map_err(|e| Error::Invalid(format!("the mapping is not a JSON object: {e}")))?;
        let mut mapping = Mapping::new();
        for (folder, value) in raw {
            let owners = match value {
                Value::String(owner) => Owners {
                    owner,
                    members: Vec::new(),
                    gms: Vec::new(),
                    skip: false,
                },
                other => serde_json::from_value(other)
                    .map_err(|e| Error::Invalid(format!("mapping of {folder:?}: {e}")))?,
            };
            mapping.insert(folder, owners);
        }
        mapping
    } else {
        parse_csv(trimmed)?
    };
    validate_mapping(&mapping)?;
    Ok(mapping)
}

fn parse_csv(text: &str) -> Result<Mapping> {
    let mut mapping = Mapping::new();
    for operator_run::CsvLine { line, fields } in
        operator_run::csv_lines(text, "folder").map_err(Error::Invalid)?
    {
        let list = |i: usize| -> Vec<String> {
            fields
                .get(i)
                .map(|f| {
                    f.split(';')
                        .map(str::trim)
                        .filter(|m| !m.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let (Some(folder), Some(owner)) = (fields.first(), fields.get(1)) else {
            return Err(Error::Invalid(format!(
                "mapping line {line}: expected folder,owner[,members[,gms]]"
            )));
        };
        if fields.len() > 4 {
            return Err(Error::Invalid(format!(
                "mapping line {line}: at most four fields (folder,owner,members,gms)"
            )));
        }
        let owners = Owners {
            owner: owner.clone(),
            members: list(2),
            gms: list(3),
            skip: false,
        };
        if mapping.insert(folder.clone(), owners).is_some() {
            return Err(Error::Invalid(format!(
                "mapping line {line}: folder {folder:?} is mapped twice"
            )));
        }
    }
    Ok(mapping)
}

/// Checks every folder key and user id of a mapping.
pub fn validate_mapping(mapping: &Mapping) -> Result<()> {
    if mapping.len() > MAX_MAPPING {
        return Err(Error::Invalid(format!(
            "a mapping names at most {MAX_MAPPING} folders"
        )));
    }
    for (folder, owners) in mapping {
        let Some((env, name)) = folder.split_once('/') else {
            return Err(Error::Invalid(format!(
                "mapping key {folder:?}: expected \"<env>/<folder>\""
            )));
        };
        if env.is_empty()
            || name.is_empty()
            || name.contains('/')
            || folder.len() > 600
            || folder.chars().any(char::is_control)
        {
            return Err(Error::Invalid(format!(
                "mapping key {folder:?}: expected \"<env>/<folder>\", without control characters"
            )));
        }
        if owners.skip {
            continue;
        }
        let users = std::iter::once(&owners.owner)
            .chain(&owners.members)
            .chain(&owners.gms);
        for user in users {
            UserId::parse(user)
                .map_err(|e| Error::Invalid(format!("mapping of {folder:?}: {e}: {user:?}")))?;
        }
        if owners.members.len() + owners.gms.len() > MAX_MEMBERS {
            return Err(Error::Invalid(format!(
                "mapping of {folder:?}: at most {MAX_MEMBERS} members"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn mappings_in_csv_and_json() {
        let csv = "folder,owner,members,gms\n\
                   \"prod/campaign_1 - A, B\", alice ,bob;carol,dave\n\
                   \"prod/campaign_3 - C  \",erin\n\
                   # a comment\n\
                   staging/campaign_2,erin\n";
        let mapping = parse_mapping(csv).unwrap();
        assert_eq!(mapping.len(), 3);
        assert_eq!(mapping["prod/campaign_3 - C  "].owner, "erin");
        assert!(mapping.contains_key("staging/campaign_2"));
        let a = &mapping["prod/campaign_1 - A, B"];
        assert_eq!(a.owner, "alice");
        assert_eq!(a.members, ["bob", "carol"]);
        assert_eq!(a.gms, ["dave"]);
        let json = r#"{"prod/campaign_1 - A": "alice",
                       "prod/campaign_2 - B": {"owner": "bob", "members": ["carol"]},
                       "prod/campaign_2 - B (old)": {"skip": true}}"#;
        let mapping = parse_mapping(json).unwrap();
        assert_eq!(mapping["prod/campaign_1 - A"].owner, "alice");
        assert!(mapping["prod/campaign_2 - B (old)"].skip);
        for bad in [
            "prod,alice",
            "prod/campaign_1,",
            "prod/campaign_1,\u{202e}x",
            "{\"prod/x\": 3}",
            "a/b,alice\na/b,bob",
            "\"unclosed,alice",
        ] {
            assert!(parse_mapping(bad).is_err(), "{bad:?}");
        }
    }
}
