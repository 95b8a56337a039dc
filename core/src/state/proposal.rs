//! State written by turns: what a game master's reply asks to change, and
//! what became of it.
//!
//! A model proposes operations with its reply (the `openai` provider's
//! `update_game_state` tool call, the scripted game master's `/state`
//! lines). They are checked only when the reply is recorded: against the
//! state as it is then (locked, whatever version a game master's updates
//! brought it to), with the same rules as a game master's update. If they
//! apply, the new state, its `state.updated` event (`source: "system"`) and
//! the reply are written together ([`crate::turns::steps`]); if not, the
//! reply is still recorded and the refusal with it, on the turn
//! (`state_change`) and in `turn.completed`. A model's mistake never fails a
//! turn.
//!
//! Whether the model may change the state at all is the session's
//! `ai_authority` ([`crate::sessions::AiAuthority`]): where its changes
//! apply they are [`resolve`]d as above; a player's turn's changes in a
//! `propose` session are [`hold`]: checked for shape only and kept for a
//! game master's review ([`super::review`]); in an `off` session they are
//! [`refuse`]d.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{Change, Error, Limits, Prepared, Source, ops, parse_operations, prepare};

/// The operations a turn's reply asks for, as the model gave them.
#[derive(Debug, Clone, PartialEq)]
pub enum Proposal {
    /// Raw operations (`{path, operation, value?}` objects), in order;
    /// checked when applied.
    Operations(Vec<Value>),
    /// The model asked for a change that could not be read (why).
    Unreadable(String),
}

/// Why a turn's state change was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Refusal {
    /// `VALIDATION_ERROR` (an operation, or the request as a whole, is not
    /// acceptable) or `STATE_TOO_LARGE`, as for a game master's update.
    pub code: String,
    /// What was wrong.
    pub message: String,
    /// The index of the operation refused, if one is to blame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<usize>,
}

/// What a turn's reply did to the game state (on the turn as
/// `state_change`, and in its `turn.completed` event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StateChange {
    /// Whether the operations were applied (all of them; or none).
    pub applied: bool,
    /// How many operations the reply asked for.
    pub operations: usize,
    /// The state's version the change made, when applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// The update's id (as in its `state.updated` event), when applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_id: Option<Uuid>,
    /// Why it was refused, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Refusal>,
    /// When held for a game master's review (the session's `ai_authority`
    /// is `propose` and the turn was a player's): the proposal, which an
    /// owner or gm approves or rejects (`GET .../state/proposals`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proposal_id: Option<Uuid>,
}

/// A proposal resolved against the locked state, ready to be written with
/// the reply.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// What to record on the turn.
    pub change: StateChange,
    /// When applied: the new document (JSON text) and the `state.updated`
    /// event's data.
    pub write: Option<(String, Value)>,
}

/// Resolves `proposal`, made by turn `turn_id`'s reply, against the state
/// `current` (its version and document, locked by the caller). `None`: the
/// reply asked for nothing (an empty list of operations).
pub fn resolve(
    proposal: &Proposal,
    current: (i64, Value),
    turn_id: Uuid,
    limits: Limits,
) -> Option<Resolved> {
    let raw = match readable(proposal)? {
        Ok(raw) => raw,
        Err(refusal) => return Some(refusal),
    };
    let count = raw.len();
    let max_bytes = limits.max_bytes;
    let prepared = parse_operations(raw, limits.max_update_bytes).and_then(|operations| {
        let wire: Vec<ops::StateOperation> = operations.iter().map(ops::Operation::wire).collect();
        prepare(
            current.clone(),
            &Change {
                // Against the current version, whatever it is.
                base_version: current.0,
                operations: &operations,
                wire: &wire,
                source: Source::System,
                // The event names the turn (`turn_id`).
                by: "system",
                max_bytes,
                request: None,
            },
            Some(turn_id),
        )
    });
    Some(match prepared {
        Ok(Prepared {
            document,
            update_id,
            new_version,
            data,
            ..
        }) => Resolved {
            change: StateChange {
                applied: true,
                operations: count,
                version: Some(new_version),
                update_id: Some(update_id),
                error: None,
                proposal_id: None,
            },
            write: Some((document, data)),
        },
        Err(err) => refused(count, refusal(&err)),
    })
}

/// The raw operations of `proposal`, or its refusal if it could not be
/// read; None if it asks for nothing.
fn readable(proposal: &Proposal) -> Option<Result<&[Value], Resolved>> {
    match proposal {
        Proposal::Operations(raw) if raw.is_empty() => None,
        Proposal::Operations(raw) => Some(Ok(raw)),
        Proposal::Unreadable(why) => Some(Err(refused(
            0,
            Refusal {
                code: "VALIDATION_ERROR".into(),
                message: why.clone(),
                operation: None,
            },
        ))),
    }
}

/// `proposal` held for review as `proposal_id` (nothing written to the
/// state now), once its operations are well-formed (they are checked
/// against the state when approved); refused as [`resolve`] would if they
/// are not. None if it asks for nothing.
pub fn hold(proposal: &Proposal, proposal_id: Uuid, limits: Limits) -> Option<Resolved> {
    let raw = match readable(proposal)? {
        Ok(raw) => raw,
        Err(refusal) => return Some(refusal),
    };
    Some(match parse_operations(raw, limits.max_update_bytes) {
        Ok(_) => Resolved {
            change: StateChange {
                applied: false,
                operations: raw.len(),
                version: None,
                update_id: None,
                error: None,
                proposal_id: Some(proposal_id),
            },
            write: None,
        },
        Err(err) => refused(raw.len(), refusal(&err)),
    })
}

/// `proposal` refused with `code` and `message` (the session's setting or
/// its cap on pending proposals); None if it asks for nothing.
pub fn refuse(proposal: &Proposal, code: &str, message: &str) -> Option<Resolved> {
    let count = match readable(proposal)? {
        Ok(raw) => raw.len(),
        Err(_) => 0,
    };
    Some(refused(
        count,
        Refusal {
            code: code.into(),
            message: message.into(),
            operation: None,
        },
    ))
}

fn refused(operations: usize, error: Refusal) -> Resolved {
    Resolved {
        change: StateChange {
            applied: false,
            operations,
            version: None,
            update_id: None,
            error: Some(error),
            proposal_id: None,
        },
        write: None,
    }
}

fn refusal(err: &Error) -> Refusal {
    let (code, operation) = match err {
        Error::TooLarge { .. } => ("STATE_TOO_LARGE", None),
        Error::Invalid { index, .. } => ("VALIDATION_ERROR", *index),
        _ => ("VALIDATION_ERROR", None),
    };
    Refusal {
        code: code.into(),
        message: match err {
            // The index is its own field.
            Error::Invalid { message, .. } => message.clone(),
            other => other.to_string(),
        },
        operation,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use serde_json::json;

    use super::*;

    fn state() -> (i64, Value) {
        (7, ops::empty_state())
    }

    #[test]
    fn operations_that_apply_make_the_next_version_with_a_system_event() {
        let turn = Uuid::now_v7();
        let proposal = Proposal::Operations(vec![
            json!({"path": "characters", "operation": "push", "value": {"name": "Ayla"}}),
            json!({"path": "characters.0.hp", "operation": "inc", "value": 3}),
        ]);
        let resolved = resolve(
            &proposal,
            state(),
            turn,
            Limits {
                max_bytes: 1 << 20,
                ..Limits::default()
            },
        )
        .expect("resolved");
        assert!(resolved.change.applied);
        assert_eq!(resolved.change.operations, 2);
        assert_eq!(resolved.change.version, Some(8));
        let (document, event) = resolved.write.expect("write");
        let document: Value = serde_json::from_str(&document).unwrap();
        assert_eq!(document["characters"], json!([{"name": "Ayla", "hp": 3}]));
        assert_eq!(event["source"], "system");
        assert_eq!(event["base_version"], 7);
        assert_eq!(event["version"], 8);
        assert_eq!(event["turn_id"], json!(turn));
        assert_eq!(event["update_id"], json!(resolved.change.update_id));
    }

    #[test]
    fn a_bad_operation_is_refused_with_its_index_and_nothing_is_written() {
        let proposal = Proposal::Operations(vec![
            json!({"path": "items", "operation": "push", "value": 1}),
            json!({"path": "items", "operation": "inc", "value": 1}),
        ]);
        let resolved = resolve(
            &proposal,
            state(),
            Uuid::now_v7(),
            Limits {
                max_bytes: 1 << 20,
                ..Limits::default()
            },
        )
        .expect("resolved");
        assert!(resolved.write.is_none());
        let change = resolved.change;
        assert!(!change.applied);
        let error = change.error.expect("error");
        assert_eq!(error.code, "VALIDATION_ERROR");
        assert_eq!(error.operation, Some(1));
        assert!(!error.message.starts_with("operation"), "{}", error.message);
    }

    #[test]
    fn unreadable_oversized_and_empty_proposals() {
        let unreadable = resolve(
            &Proposal::Unreadable("not JSON".into()),
            state(),
            Uuid::now_v7(),
            Limits::default(),
        )
        .expect("resolved");
        assert_eq!(unreadable.change.error.expect("error").message, "not JSON");
        let big = Proposal::Operations(vec![
            json!({"path": "pluginData.blob", "operation": "set", "value": "x".repeat(200)}),
        ]);
        let too_large = resolve(
            &big,
            state(),
            Uuid::now_v7(),
            Limits {
                max_bytes: 100,
                ..Limits::default()
            },
        )
        .expect("resolved");
        assert_eq!(
            too_large.change.error.expect("error").code,
            "STATE_TOO_LARGE"
        );
        assert!(
            resolve(
                &Proposal::Operations(vec![]),
                state(),
                Uuid::now_v7(),
                Limits::default()
            )
            .is_none()
        );
    }
}
