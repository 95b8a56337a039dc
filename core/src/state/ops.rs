//! The operations a game master sends to change the game state, their path
//! grammar, and what each does: MongoDB's update semantics, which GM clients
//! already know, on a plain JSON document. Pure functions, no I/O: the
//! reference for the docs' operations table and for the property tests.
//!
//! A **path** is dotted: `characters.0.pluginData.hitPoints`. It has 1 to
//! [`MAX_DEPTH`] segments of 1 to [`MAX_SEGMENT_CHARS`] characters each from
//! `A-Z a-z 0-9 _ -`. A segment of digits without a leading zero (`0`, `17`,
//! at most 9 digits) indexes an array when it meets one; met by an object it
//! is an ordinary key. The first segment is one of the state's top-level
//! keys ([`TOP_LEVEL`]); `stateVersion` and `lastUpdated` are the server's
//! and cannot be written.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

/// The most segments a path may have.
pub const MAX_DEPTH: usize = 32;
/// The longest segment, in characters.
pub const MAX_SEGMENT_CHARS: usize = 64;
/// The state's top-level keys, with what each holds.
pub const TOP_LEVEL: [(&str, Shape); 5] = [
    ("characters", Shape::Array),
    ("actors", Shape::Array),
    ("items", Shape::Array),
    ("currentEncounter", Shape::ObjectOrNull),
    ("pluginData", Shape::Object),
];
/// Keys of the state the server owns: shown in reads, never written.
pub const SERVER_OWNED: [&str; 2] = ["stateVersion", "lastUpdated"];

/// What a top-level key must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A JSON array.
    Array,
    /// A JSON object.
    Object,
    /// A JSON object or `null`.
    ObjectOrNull,
}

impl Shape {
    /// The value a key of this shape has in a new state, and after `unset`.
    pub fn empty(self) -> Value {
        match self {
            Shape::Array => Value::Array(Vec::new()),
            Shape::Object => Value::Object(Map::new()),
            Shape::ObjectOrNull => Value::Null,
        }
    }

    fn admits(self, value: &Value) -> bool {
        matches!(
            (self, value),
            (Shape::Array, Value::Array(_))
                | (Shape::Object, Value::Object(_))
                | (Shape::ObjectOrNull, Value::Object(_) | Value::Null)
        )
    }

    fn describe(self) -> &'static str {
        match self {
            Shape::Array => "an array",
            Shape::Object => "an object",
            Shape::ObjectOrNull => "an object or null",
        }
    }
}

/// The state of a new session: every top-level key empty.
pub fn empty_state() -> Value {
    Value::Object(
        TOP_LEVEL
            .iter()
            .map(|(key, shape)| ((*key).to_owned(), shape.empty()))
            .collect(),
    )
}

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Writes `value` at the path, creating missing intermediate objects.
    Set,
    /// Removes the path (an array element: later elements shift down).
    Unset,
    /// Adds the number `value` to the number at the path (created if missing).
    Inc,
    /// Appends `value` as one element to the array at the path (created if missing).
    Push,
    /// Removes every element deep-equal to `value` from the array at the path.
    Pull,
}

impl Kind {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "set" => Kind::Set,
            "unset" => Kind::Unset,
            "inc" => Kind::Inc,
            "push" => Kind::Push,
            "pull" => Kind::Pull,
            _ => return None,
        })
    }
}

/// One segment of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The segment as written (an object key).
    pub key: String,
    /// The array index it also is, if it is one.
    pub index: Option<usize>,
}

/// A parsed path: at least one segment, the first a top-level key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path(Vec<Segment>);

impl Path {
    /// The grammar as a regular expression (for the OpenAPI description;
    /// [`Path::parse`] is the reference and a test holds them together).
    pub const PATTERN: &'static str =
        "^(characters|actors|items|currentEncounter|pluginData)(\\.[A-Za-z0-9_-]{1,64}){0,31}$";

    /// Segments refused anywhere in a path: they name the prototype
    /// machinery of JavaScript objects, and a client applying
    /// `obj[segment] = ...` along such a path (the documented algorithm,
    /// written naively) would change `Object.prototype` for its whole page.
    pub const FORBIDDEN_SEGMENTS: [&'static str; 3] = ["__proto__", "constructor", "prototype"];

    /// What a path must *not* match, as a regular expression (the
    /// description publishes it as `not: {pattern}` next to [`Path::PATTERN`]).
    pub const FORBIDDEN_PATTERN: &'static str = "(^|\\.)(__proto__|constructor|prototype)(\\.|$)";

    /// Parses `text` by the grammar in this module's docs.
    pub fn parse(text: &str) -> Result<Path, String> {
        if text.is_empty() {
            return Err("the path is empty".into());
        }
        let parts: Vec<&str> = text.split('.').collect();
        if parts.len() > MAX_DEPTH {
            return Err(format!("the path has more than {MAX_DEPTH} segments"));
        }
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            if part.is_empty() {
                return Err(format!("segment {i} of the path is empty"));
            }
            if part.chars().count() > MAX_SEGMENT_CHARS {
                return Err(format!(
                    "segment {i} of the path is longer than {MAX_SEGMENT_CHARS} characters"
                ));
            }
            if let Some(bad) = part
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
            {
                return Err(format!(
                    "segment {i} of the path has the character {:?}; allowed are A-Z, a-z, 0-9, '_' and '-'",
                    bad.escape_default().to_string()
                ));
            }
            if Self::FORBIDDEN_SEGMENTS.contains(part) {
                return Err(format!(
                    "segment {i} of the path is `{part}`, which is refused: it names the prototype of JavaScript objects"
                ));
            }
            segments.push(Segment {
                key: (*part).to_owned(),
                index: as_index(part),
            });
        }
        let first = segments[0].key.as_str();
        if SERVER_OWNED.contains(&first) {
            return Err(format!(
                "`{first}` is kept by the server and cannot be written"
            ));
        }
        if !TOP_LEVEL.iter().any(|(key, _)| *key == first) {
            return Err(format!(
                "the path must start with one of characters, actors, items, currentEncounter, pluginData (not `{}`)",
                shorten(first)
            ));
        }
        Ok(Path(segments))
    }

    /// The segments, the first being a top-level key.
    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    fn top_level(&self) -> Shape {
        let first = self.0[0].key.as_str();
        TOP_LEVEL
            .iter()
            .find(|(key, _)| *key == first)
            .map_or(Shape::Object, |(_, shape)| *shape)
    }
}

/// `part` as an array index: digits, no leading zero, at most 9 of them.
fn as_index(part: &str) -> Option<usize> {
    let digits = part.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = part.len() > 1 && part.starts_with('0');
    if !digits || leading_zero || part.len() > 9 {
        return None;
    }
    part.parse().ok()
}

/// At most 64 characters of untrusted text, for messages.
fn shorten(text: &str) -> String {
    if text.chars().count() <= 64 {
        text.to_owned()
    } else {
        let head: String = text.chars().take(64).collect();
        format!("{head}...")
    }
}

/// A validated operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    /// Where.
    pub path: Path,
    /// The path as sent.
    pub path_text: String,
    /// What.
    pub kind: Kind,
    /// With what (absent for `unset`).
    pub value: Option<Value>,
}

/// An operation as it is sent and recorded in `state.updated` events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StateOperation {
    /// The dotted path.
    pub path: String,
    /// `set`, `unset`, `inc`, `push` or `pull`.
    pub operation: Kind,
    /// The operand; required except for `unset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub value: Option<Value>,
}

impl Operation {
    /// Validates one operation as sent: an object with `path`, `operation`
    /// and (except for `unset`) `value`, nothing else.
    pub fn parse(raw: &Value) -> Result<Operation, String> {
        let Value::Object(fields) = raw else {
            return Err("an operation is an object {path, operation, value}".into());
        };
        if let Some(other) = fields
            .keys()
            .find(|k| !matches!(k.as_str(), "path" | "operation" | "value"))
        {
            return Err(format!("unknown field `{}`", shorten(other)));
        }
        let Some(Value::String(path_text)) = fields.get("path") else {
            return Err("`path` must be a string".into());
        };
        let Some(Value::String(name)) = fields.get("operation") else {
            return Err("`operation` must be one of set, unset, inc, push, pull".into());
        };
        let kind = Kind::parse(name).ok_or_else(|| {
            format!(
                "unknown operation `{}`: use set, unset, inc, push or pull",
                shorten(name)
            )
        })?;
        let path = Path::parse(path_text)?;
        let value = fields.get("value").cloned();
        match (kind, &value) {
            (Kind::Unset, _) => {}
            (_, None) => return Err(format!("`{name}` needs a `value`")),
            (Kind::Inc, Some(v)) if !v.is_number() => {
                return Err("`inc` needs a number as its `value`".into());
            }
            _ => {}
        }
        Ok(Operation {
            path,
            path_text: path_text.clone(),
            kind,
            value: if kind == Kind::Unset { None } else { value },
        })
    }

    /// The operation as recorded.
    pub fn wire(&self) -> StateOperation {
        StateOperation {
            path: self.path_text.clone(),
            operation: self.kind,
            value: self.value.clone(),
        }
    }
}

/// Applies `ops` to `state` in order; on the first refusal returns its
/// index and why, and `state` must then be thrown away (callers apply to a
/// copy). Checks the top-level structure at the end.
pub fn apply_all(state: &mut Value, ops: &[Operation]) -> Result<(), (Option<usize>, String)> {
    for (i, op) in ops.iter().enumerate() {
        apply(state, op).map_err(|why| (Some(i), why))?;
    }
    check_structure(state).map_err(|why| (None, why))
}

/// Applies one operation (see [`Kind`] and the docs' table).
pub fn apply(state: &mut Value, op: &Operation) -> Result<(), String> {
    let segments = op.path.segments();
    if segments.len() == 1 {
        return apply_top_level(state, op);
    }
    let (last, parents) = segments
        .split_last()
        .ok_or_else(|| "the path is empty".to_owned())?;
    let creates = matches!(op.kind, Kind::Set | Kind::Inc | Kind::Push);
    let Some(parent) = walk(state, parents, creates)? else {
        // A missing parent: unset and pull have nothing to do.
        return Ok(());
    };
    let value = op.value.clone().unwrap_or(Value::Null);
    match op.kind {
        Kind::Set => put(parent, last, value, &op.path_text),
        Kind::Unset => {
            match parent {
                Value::Object(map) => {
                    map.remove(&last.key);
                }
                Value::Array(items) => {
                    if let Some(i) = last.index.filter(|i| *i < items.len()) {
                        items.remove(i);
                    }
                }
                _ => {}
            }
            Ok(())
        }
        Kind::Inc | Kind::Push | Kind::Pull => match slot(parent, last, &op.path_text) {
            // A path through a scalar, or a key into an array, does not
            // exist: `pull` has nothing to do, the others cannot create it.
            Err(_) if op.kind == Kind::Pull => Ok(()),
            Err(why) => Err(why),
            Ok(Some(target)) => combine(target, op.kind, value),
            Ok(None) => match op.kind {
                Kind::Inc => put(parent, last, value, &op.path_text),
                Kind::Push => put(parent, last, Value::Array(vec![value]), &op.path_text),
                _ => Ok(()),
            },
        },
    }
}

/// An operation on a whole top-level key.
fn apply_top_level(state: &mut Value, op: &Operation) -> Result<(), String> {
    let Value::Object(root) = state else {
        return Err("the state is not an object".into());
    };
    let key = &op.path.segments()[0].key;
    let shape = op.path.top_level();
    let value = op.value.clone().unwrap_or(Value::Null);
    match op.kind {
        Kind::Set => {
            root.insert(key.clone(), value);
            Ok(())
        }
        Kind::Unset => {
            root.insert(key.clone(), shape.empty());
            Ok(())
        }
        kind => {
            let target = root.entry(key.clone()).or_insert_with(|| shape.empty());
            combine(target, kind, value)
        }
    }
}

/// `inc`, `push` or `pull` on an existing value.
fn combine(target: &mut Value, kind: Kind, value: Value) -> Result<(), String> {
    match kind {
        Kind::Inc => {
            let (Value::Number(current), Value::Number(by)) = (&*target, &value) else {
                return Err(format!(
                    "`inc` needs a number at the path, found {}",
                    type_name(target)
                ));
            };
            *target = Value::Number(add(current, by)?);
            Ok(())
        }
        Kind::Push => match target {
            Value::Array(items) => {
                items.push(value);
                Ok(())
            }
            other => Err(format!(
                "`push` needs an array at the path, found {}",
                type_name(other)
            )),
        },
        Kind::Pull => match target {
            Value::Array(items) => {
                items.retain(|item| !deep_equal(item, &value));
                Ok(())
            }
            other => Err(format!(
                "`pull` needs an array at the path, found {}",
                type_name(other)
            )),
        },
        Kind::Set | Kind::Unset => Ok(()),
    }
}

/// `a + b`: an integer while both are integers and the sum fits, otherwise
/// a finite float.
fn add(a: &Number, b: &Number) -> Result<Number, String> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64())
        && let Some(sum) = x.checked_add(y)
    {
        return Ok(Number::from(sum));
    }
    let sum = a.as_f64().unwrap_or(f64::NAN) + b.as_f64().unwrap_or(f64::NAN);
    Number::from_f64(sum).ok_or_else(|| "`inc` would make the number non-finite".to_owned())
}

/// Follows `segments` from `root`. With `create`, missing object keys are
/// created as empty objects; without, a missing step gives `None`. An
/// array is entered only by an index inside it.
fn walk<'a>(
    root: &'a mut Value,
    segments: &[Segment],
    create: bool,
) -> Result<Option<&'a mut Value>, String> {
    let mut here = root;
    for (depth, segment) in segments.iter().enumerate() {
        let next = match here {
            Value::Object(map) => {
                if !map.contains_key(&segment.key) {
                    if !create {
                        return Ok(None);
                    }
                    map.insert(segment.key.clone(), Value::Object(Map::new()));
                }
                map.get_mut(&segment.key)
            }
            Value::Array(items) => {
                let len = items.len();
                match segment.index {
                    Some(i) if i < len => items.get_mut(i),
                    Some(i) if create => {
                        return Err(format!(
                            "index {i} is past the end of the array at `{}` (length {len})",
                            joined(segments, depth)
                        ));
                    }
                    Some(_) => return Ok(None),
                    None if create => {
                        return Err(format!(
                            "`{}` is not an index, but `{}` is an array",
                            segment.key,
                            joined(segments, depth)
                        ));
                    }
                    None => return Ok(None),
                }
            }
            other => {
                if !create {
                    return Ok(None);
                }
                return Err(format!(
                    "cannot create `{}` inside {} at `{}`",
                    segment.key,
                    type_name(other),
                    joined(segments, depth)
                ));
            }
        };
        here = next.ok_or_else(|| "the path changed while it was followed".to_owned())?;
    }
    Ok(Some(here))
}

/// The path up to (not including) segment `depth`.
fn joined(segments: &[Segment], depth: usize) -> String {
    segments[..depth]
        .iter()
        .map(|s| s.key.as_str())
        .collect::<Vec<_>>()
        .join(".")
}

/// The existing value at `last` in `parent`, if any.
fn slot<'a>(
    parent: &'a mut Value,
    last: &Segment,
    path: &str,
) -> Result<Option<&'a mut Value>, String> {
    match parent {
        Value::Object(map) => Ok(map.get_mut(&last.key)),
        Value::Array(items) => match last.index {
            Some(i) => Ok(items.get_mut(i)),
            None => Err(format!(
                "`{}` is not an index into the array at `{path}`",
                last.key
            )),
        },
        other => Err(format!(
            "cannot reach `{}` inside {}",
            last.key,
            type_name(other)
        )),
    }
}

/// Writes `value` at `last` in `parent`: any key of an object, an existing
/// element of an array.
fn put(parent: &mut Value, last: &Segment, value: Value, path: &str) -> Result<(), String> {
    match parent {
        Value::Object(map) => {
            map.insert(last.key.clone(), value);
            Ok(())
        }
        Value::Array(items) => {
            let len = items.len();
            match last.index {
                Some(i) if i < len => {
                    items[i] = value;
                    Ok(())
                }
                Some(i) => Err(format!(
                    "index {i} is past the end of the array (length {len}) in `{path}`; use `push` to append"
                )),
                None => Err(format!(
                    "`{}` is not an index into the array in `{path}`",
                    last.key
                )),
            }
        }
        other => Err(format!(
            "cannot create `{}` inside {}",
            last.key,
            type_name(other)
        )),
    }
}

/// JSON equality with numbers compared by value (`1` equals `1.0`) and
/// objects by their fields regardless of order.
pub fn deep_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => match (x.as_u64(), y.as_u64()) {
                (Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            },
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| deep_equal(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| deep_equal(v, w)))
        }
        _ => a == b,
    }
}

/// Checks the top-level keys and their types.
pub fn check_structure(state: &Value) -> Result<(), String> {
    let Value::Object(root) = state else {
        return Err("the state must be an object".into());
    };
    for (key, shape) in TOP_LEVEL {
        match root.get(key) {
            Some(value) if shape.admits(value) => {}
            Some(value) => {
                return Err(format!(
                    "`{key}` must be {}, not {}",
                    shape.describe(),
                    type_name(value)
                ));
            }
            None => return Err(format!("`{key}` is missing")),
        }
    }
    if let Some(extra) = root
        .keys()
        .find(|k| !TOP_LEVEL.iter().any(|(key, _)| key == k))
    {
        return Err(format!("unknown top-level key `{}`", shorten(extra)));
    }
    Ok(())
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests;
