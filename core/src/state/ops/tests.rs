//! Every row of the operations table, every path form, and property tests
//! against a small reference model written separately (on JSON pointers).

// Tests fail loudly on purpose: panicking on unexpected input is their job.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

fn op(kind: &str, path: &str, value: Option<Value>) -> Result<Operation, String> {
    let mut raw = json!({ "path": path, "operation": kind });
    if let Some(v) = value {
        raw["value"] = v;
    }
    Operation::parse(&raw)
}

fn run(
    state: Value,
    ops: &[(&str, &str, Option<Value>)],
) -> Result<Value, (Option<usize>, String)> {
    let parsed: Vec<Operation> = ops
        .iter()
        .map(|(k, p, v)| op(k, p, v.clone()).map_err(|e| (None, e)))
        .collect::<Result<_, _>>()?;
    let mut copy = state;
    apply_all(&mut copy, &parsed)?;
    Ok(copy)
}

fn with(key: &str, value: Value) -> Value {
    let mut state = empty_state();
    state[key] = value;
    state
}

// ---- paths ----

#[test]
fn paths_of_every_form_parse() {
    for ok in [
        "characters",
        "characters.0",
        "characters.0.pluginData.hitPoints",
        "currentEncounter.tokens",
        "pluginData.dice-roller.last_roll",
        "items.123456789",
    ] {
        assert!(Path::parse(ok).is_ok(), "{ok}");
    }
    let deep = format!("pluginData{}", ".a".repeat(MAX_DEPTH - 1));
    assert!(Path::parse(&deep).is_ok());
}

#[test]
fn numeric_segments_are_indices_only_without_leading_zeros() {
    let path = Path::parse("items.0.01.10.1234567890").unwrap();
    let indices: Vec<Option<usize>> = path.segments().iter().map(|s| s.index).collect();
    assert_eq!(indices, vec![None, Some(0), None, Some(10), None]);
}

#[test]
fn bad_paths_are_refused_with_a_reason() {
    let too_deep = format!("pluginData{}", ".a".repeat(MAX_DEPTH));
    let long_segment = format!("pluginData.{}", "x".repeat(MAX_SEGMENT_CHARS + 1));
    for (bad, why) in [
        ("", "empty"),
        ("characters.", "empty"),
        (".characters", "empty"),
        ("characters..0", "empty"),
        ("stateVersion", "server"),
        ("lastUpdated", "server"),
        ("secrets", "must start with"),
        ("Characters", "must start with"),
        ("characters.$where", "character"),
        ("characters.0/../x", "character"),
        ("pluginData.a b", "character"),
        ("pluginData.\u{202e}x", "character"),
        ("pluginData.é", "character"),
        (too_deep.as_str(), "more than"),
        (long_segment.as_str(), "longer than"),
    ] {
        let err = Path::parse(bad).unwrap_err();
        assert!(err.contains(why), "{bad:?}: {err}");
    }
}

#[test]
fn operations_must_have_the_right_fields() {
    for (raw, why) in [
        (json!("set"), "object"),
        (json!({"path": 1, "operation": "set", "value": 1}), "path"),
        (
            json!({"path": "items", "operation": "replace", "value": 1}),
            "unknown operation",
        ),
        (
            json!({"path": "items", "operation": "set"}),
            "needs a `value`",
        ),
        (
            json!({"path": "items", "operation": "push"}),
            "needs a `value`",
        ),
        (
            json!({"path": "items.0.n", "operation": "inc", "value": "1"}),
            "number",
        ),
        (
            json!({"path": "items", "op": "set", "value": 1}),
            "unknown field",
        ),
        (json!({"path": "items", "value": 1}), "operation"),
    ] {
        let err = Operation::parse(&raw).unwrap_err();
        assert!(err.contains(why), "{raw}: {err}");
    }
    // unset takes no value; one sent is ignored.
    let unset =
        Operation::parse(&json!({"path": "items.0", "operation": "unset", "value": 5})).unwrap();
    assert_eq!(unset.value, None);
}

// ---- the operations table, row by row ----

#[test]
fn set_writes_and_creates_missing_intermediate_objects() {
    let state = run(
        empty_state(),
        &[("set", "pluginData.dice.last.roll", Some(json!(17)))],
    )
    .unwrap();
    assert_eq!(state["pluginData"], json!({"dice": {"last": {"roll": 17}}}));
    // Replaces an existing value of any type.
    let state = run(
        state,
        &[("set", "pluginData.dice.last", Some(json!([1, 2])))],
    )
    .unwrap();
    assert_eq!(state["pluginData"]["dice"]["last"], json!([1, 2]));
}

#[test]
fn set_replaces_an_array_element_but_not_past_the_end() {
    let state = with("characters", json!([{"name": "Ada"}, {"name": "Bo"}]));
    let done = run(
        state.clone(),
        &[("set", "characters.1.name", Some(json!("Cy")))],
    )
    .unwrap();
    assert_eq!(done["characters"][1]["name"], json!("Cy"));
    let done = run(
        state.clone(),
        &[("set", "characters.0", Some(json!({"name": "Di"})))],
    )
    .unwrap();
    assert_eq!(done["characters"][0], json!({"name": "Di"}));
    for past in ["characters.2", "characters.2.name", "characters.9"] {
        let (index, why) = run(state.clone(), &[("set", past, Some(json!(1)))]).unwrap_err();
        assert_eq!(index, Some(0));
        assert!(why.contains("past the end"), "{past}: {why}");
    }
    let (_, why) = run(state, &[("set", "characters.first", Some(json!(1)))]).unwrap_err();
    assert!(why.contains("not an index"), "{why}");
}

#[test]
fn set_cannot_create_inside_a_scalar_or_null() {
    let state = with("pluginData", json!({"n": 3}));
    let (_, why) = run(state, &[("set", "pluginData.n.deeper", Some(json!(1)))]).unwrap_err();
    assert!(why.contains("cannot create"), "{why}");
    // currentEncounter is null until set whole.
    let (_, why) = run(
        empty_state(),
        &[("set", "currentEncounter.tokens", Some(json!([])))],
    )
    .unwrap_err();
    assert!(why.contains("null"), "{why}");
    let done = run(
        empty_state(),
        &[
            (
                "set",
                "currentEncounter",
                Some(json!({"encounter": "ambush", "map": null, "tokens": []})),
            ),
            ("push", "currentEncounter.tokens", Some(json!({"id": "t1"}))),
        ],
    )
    .unwrap();
    assert_eq!(done["currentEncounter"]["tokens"], json!([{"id": "t1"}]));
}

#[test]
fn numeric_segments_are_keys_in_objects() {
    let done = run(
        empty_state(),
        &[("set", "pluginData.0", Some(json!("zero")))],
    )
    .unwrap();
    assert_eq!(done["pluginData"], json!({"0": "zero"}));
}

#[test]
fn unset_removes_keys_and_shifts_array_elements() {
    let state = with("items", json!([{"id": 1}, {"id": 2}, {"id": 3}]));
    let done = run(state.clone(), &[("unset", "items.0", None)]).unwrap();
    assert_eq!(done["items"], json!([{"id": 2}, {"id": 3}]));
    let done = run(state, &[("unset", "items.1.id", None)]).unwrap();
    assert_eq!(done["items"], json!([{"id": 1}, {}, {"id": 3}]));
}

#[test]
fn unset_of_a_missing_path_is_a_no_op() {
    let state = with("items", json!([{"id": 1}]));
    for missing in [
        "items.5",
        "items.0.nope",
        "items.0.nope.deeper",
        "pluginData.a.b.c",
        "items.x",
    ] {
        let done = run(state.clone(), &[("unset", missing, None)]).unwrap();
        assert_eq!(done, state, "{missing}");
    }
}

#[test]
fn unset_of_a_top_level_key_empties_it() {
    let state = run(
        empty_state(),
        &[
            ("push", "characters", Some(json!({"name": "Ada"}))),
            ("set", "currentEncounter", Some(json!({"tokens": []}))),
            ("set", "pluginData.x", Some(json!(1))),
        ],
    )
    .unwrap();
    let done = run(
        state,
        &[
            ("unset", "characters", None),
            ("unset", "currentEncounter", None),
            ("unset", "pluginData", None),
        ],
    )
    .unwrap();
    assert_eq!(done, empty_state());
}

#[test]
fn inc_adds_and_creates_missing_numbers() {
    let done = run(
        empty_state(),
        &[
            ("inc", "pluginData.hp", Some(json!(5))),
            ("inc", "pluginData.hp", Some(json!(-2))),
            ("inc", "pluginData.gold", Some(json!(1.5))),
            ("inc", "pluginData.gold", Some(json!(1))),
        ],
    )
    .unwrap();
    assert_eq!(done["pluginData"]["hp"], json!(3));
    assert_eq!(done["pluginData"]["gold"], json!(2.5));
    // Integers that would overflow become floats, not wrapped integers.
    let big = run(
        with("pluginData", json!({"n": i64::MAX})),
        &[("inc", "pluginData.n", Some(json!(1)))],
    )
    .unwrap();
    assert_eq!(big["pluginData"]["n"].as_f64(), Some(i64::MAX as f64 + 1.0));
}

#[test]
fn inc_refuses_non_numbers_and_non_finite_results() {
    let state = with("pluginData", json!({"name": "Ada", "huge": 1.0e308}));
    let (_, why) = run(state.clone(), &[("inc", "pluginData.name", Some(json!(1)))]).unwrap_err();
    assert!(why.contains("needs a number"), "{why}");
    let (_, why) = run(state, &[("inc", "pluginData.huge", Some(json!(1.0e308)))]).unwrap_err();
    assert!(why.contains("non-finite"), "{why}");
}

#[test]
fn push_appends_one_element_and_creates_missing_arrays() {
    let done = run(
        empty_state(),
        &[
            ("push", "pluginData.log", Some(json!("a"))),
            ("push", "pluginData.log", Some(json!(["b", "c"]))),
        ],
    )
    .unwrap();
    assert_eq!(done["pluginData"]["log"], json!(["a", ["b", "c"]]));
    let (_, why) = run(
        with("pluginData", json!({"log": "text"})),
        &[("push", "pluginData.log", Some(json!(1)))],
    )
    .unwrap_err();
    assert!(why.contains("needs an array"), "{why}");
}

#[test]
fn pull_removes_every_deep_equal_element() {
    let state = with(
        "items",
        json!([{"id": 1, "tags": ["a"]}, 2, {"tags": ["a"], "id": 1}, 2.0, {"id": 1, "tags": ["a", "b"]}]),
    );
    let done = run(
        state.clone(),
        &[("pull", "items", Some(json!({"tags": ["a"], "id": 1})))],
    )
    .unwrap();
    assert_eq!(
        done["items"],
        json!([2, 2.0, {"id": 1, "tags": ["a", "b"]}])
    );
    let done = run(state, &[("pull", "items", Some(json!(2)))]).unwrap();
    assert_eq!(done["items"].as_array().map(Vec::len), Some(3));
    // A missing array: nothing to do; not an array: refused.
    let done = run(
        empty_state(),
        &[("pull", "pluginData.none", Some(json!(1)))],
    )
    .unwrap();
    assert_eq!(done, empty_state());
    let (_, why) = run(
        with("pluginData", json!({"n": 1})),
        &[("pull", "pluginData.n", Some(json!(1)))],
    )
    .unwrap_err();
    assert!(why.contains("needs an array"), "{why}");
}

#[test]
fn a_top_level_key_keeps_its_type() {
    for (path, value) in [
        ("characters", json!({})),
        ("pluginData", json!([])),
        ("currentEncounter", json!(3)),
        ("items", Value::Null),
    ] {
        let (index, why) = run(empty_state(), &[("set", path, Some(value))]).unwrap_err();
        assert_eq!(index, None, "structure errors are about the whole update");
        assert!(why.contains("must be"), "{path}: {why}");
    }
    let (_, why) = run(empty_state(), &[("inc", "characters", Some(json!(1)))]).unwrap_err();
    assert!(why.contains("needs a number"), "{why}");
}

#[test]
fn the_first_failing_operation_is_named() {
    let (index, _) = run(
        empty_state(),
        &[
            ("set", "pluginData.a", Some(json!(1))),
            ("push", "items", Some(json!(1))),
            ("inc", "pluginData.a", Some(json!("x"))),
        ],
    )
    .map(|_| ())
    .unwrap_err();
    // "x" is refused while parsing, before anything is applied.
    assert_eq!(index, None);
    let parsed = [
        op("set", "pluginData.a", Some(json!("text"))).unwrap(),
        op("push", "items", Some(json!(1))).unwrap(),
        op("inc", "pluginData.a", Some(json!(1))).unwrap(),
    ];
    let mut state = empty_state();
    let (index, _) = apply_all(&mut state, &parsed).unwrap_err();
    assert_eq!(index, Some(2));
}

// ---- the reference model ----

/// An operation of the model: kind, path segments, value.
type ModelOp = (Kind, Vec<String>, Value);

/// The same semantics, written on JSON pointers: `Err(())` where the real
/// implementation must refuse.
fn model(mut state: Value, ops: &[ModelOp]) -> Result<Value, usize> {
    for (i, (kind, segs, value)) in ops.iter().enumerate() {
        model_one(&mut state, *kind, segs, value).map_err(|()| i)?;
    }
    Ok(state)
}

fn pointer(segs: &[String]) -> String {
    segs.iter().map(|s| format!("/{s}")).collect()
}

fn is_index(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 9
        && s.bytes().all(|b| b.is_ascii_digit())
        && !(s.len() > 1 && s.starts_with('0'))
}

fn model_one(state: &mut Value, kind: Kind, segs: &[String], value: &Value) -> Result<(), ()> {
    let shape = TOP_LEVEL
        .iter()
        .find(|(k, _)| *k == segs[0])
        .map(|(_, s)| *s)
        .ok_or(())?;
    let creates = matches!(kind, Kind::Set | Kind::Inc | Kind::Push);
    if segs.len() > 1 {
        // Make (or find) the parents.
        for depth in 1..segs.len() {
            let here = pointer(&segs[..depth]);
            let exists = state.pointer(&here).is_some();
            if exists {
                continue;
            }
            if !creates {
                return Ok(());
            }
            let parent = state.pointer_mut(&pointer(&segs[..depth - 1])).ok_or(())?;
            match parent {
                Value::Object(map) => {
                    map.insert(segs[depth - 1].clone(), json!({}));
                }
                _ => return Err(()),
            }
        }
    }
    let target_ptr = pointer(segs);
    let parent_ptr = pointer(&segs[..segs.len() - 1]);
    let last = &segs[segs.len() - 1];
    let existing = state.pointer(&target_ptr).cloned();
    // pointer() also reads "01" or "x" as nothing in arrays, like the real one.
    let existing = match state.pointer(&parent_ptr) {
        Some(Value::Array(_)) if !is_index(last) => None,
        _ => existing,
    };
    let write = |state: &mut Value, v: Value| -> Result<(), ()> {
        if segs.len() == 1 {
            state[&segs[0]] = v;
            return Ok(());
        }
        match state.pointer_mut(&parent_ptr).ok_or(())? {
            Value::Object(map) => {
                map.insert(last.clone(), v);
                Ok(())
            }
            Value::Array(items) => {
                let i: usize = if is_index(last) {
                    last.parse().map_err(|_| ())?
                } else {
                    return Err(());
                };
                *items.get_mut(i).ok_or(())? = v;
                Ok(())
            }
            _ => Err(()),
        }
    };
    match kind {
        Kind::Set => write(state, value.clone()),
        Kind::Unset => {
            if segs.len() == 1 {
                state[&segs[0]] = shape.empty();
                return Ok(());
            }
            match state.pointer_mut(&parent_ptr) {
                Some(Value::Object(map)) => {
                    map.remove(last);
                }
                Some(Value::Array(items)) if is_index(last) => {
                    if let Ok(i) = last.parse::<usize>()
                        && i < items.len()
                    {
                        items.remove(i);
                    }
                }
                _ => {}
            }
            Ok(())
        }
        Kind::Inc => match existing {
            None if segs.len() == 1 => Err(()),
            None => write(state, value.clone()),
            Some(Value::Number(n)) => {
                let (a, b) = (n, value.as_number().ok_or(())?);
                let sum = match (a.as_i64(), b.as_i64()) {
                    (Some(x), Some(y)) if x.checked_add(y).is_some() => json!(x + y),
                    _ => {
                        let f = a.as_f64().ok_or(())? + b.as_f64().ok_or(())?;
                        if !f.is_finite() {
                            return Err(());
                        }
                        json!(f)
                    }
                };
                write(state, sum)
            }
            Some(_) => Err(()),
        },
        Kind::Push => match existing {
            None => write(state, json!([value])),
            Some(Value::Array(mut items)) => {
                items.push(value.clone());
                write(state, Value::Array(items))
            }
            Some(_) => Err(()),
        },
        Kind::Pull => match existing {
            None => Ok(()),
            Some(Value::Array(items)) => {
                let kept = items
                    .into_iter()
                    .filter(|x| !deep_equal(x, value))
                    .collect();
                write(state, Value::Array(kept))
            }
            Some(_) => Err(()),
        },
    }
}

/// Small JSON values: scalars, short arrays and objects over a few keys.
fn small_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-5i64..5).prop_map(|n| json!(n)),
        (-5i64..5).prop_map(|n| json!(n as f64 + 0.5)),
        prop::sample::select(vec!["a", "b"]).prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec!["a", "b", "0", "1"]),
                inner,
                0..3
            )
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}

fn small_state() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(small_value(), 0..3),
        prop::collection::vec(small_value(), 0..3),
        prop::option::of(small_value()),
    )
        .prop_map(|(characters, items, plugin)| {
            let mut state = empty_state();
            state["characters"] = Value::Array(characters);
            state["items"] = Value::Array(items);
            if let Some(Value::Object(p)) = plugin {
                state["pluginData"] = Value::Object(p);
            }
            state
        })
}

fn model_op() -> impl Strategy<Value = ModelOp> {
    let kind = prop::sample::select(vec![
        Kind::Set,
        Kind::Unset,
        Kind::Inc,
        Kind::Push,
        Kind::Pull,
    ]);
    let top = prop::sample::select(vec!["characters", "items", "pluginData"]);
    let rest = prop::collection::vec(
        prop::sample::select(vec!["0", "1", "2", "a", "b", "01"]),
        0..3,
    );
    let value = prop_oneof![small_value(), (-3i64..3).prop_map(|n| json!(n))];
    (kind, top, rest, value).prop_map(|(kind, top, rest, value)| {
        let mut segs = vec![top.to_owned()];
        segs.extend(rest.into_iter().map(str::to_owned));
        (kind, segs, value)
    })
}

fn parse_model(ops: &[ModelOp]) -> Option<Vec<Operation>> {
    ops.iter()
        .map(|(kind, segs, value)| {
            let name = serde_json::to_value(kind).ok()?;
            let mut raw = json!({"path": segs.join("."), "operation": name});
            if *kind != Kind::Unset {
                raw["value"] = value.clone();
            }
            Operation::parse(&raw).ok()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn operations_agree_with_the_reference_model(state in small_state(), ops in prop::collection::vec(model_op(), 1..6)) {
        // `inc` with a non-number is refused at parsing; the model gets only what parses.
        let Some(parsed) = parse_model(&ops) else { return Ok(()); };
        let mut real = state.clone();
        let got = apply_all(&mut real, &parsed);
        let expected = model(state, &ops).and_then(|s| check_structure(&s).map(|()| s).map_err(|_| usize::MAX));
        match (got, expected) {
            (Ok(()), Ok(model_state)) => prop_assert!(deep_equal(&real, &model_state), "real {real}\nmodel {model_state}"),
            (Err((Some(i), _)), Err(j)) => prop_assert_eq!(i, j),
            (Err((None, _)), Err(j)) => prop_assert_eq!(j, usize::MAX),
            (got, expected) => prop_assert!(false, "real {got:?}, model {expected:?}"),
        }
    }

    #[test]
    fn a_successful_update_always_leaves_a_well_formed_state(state in small_state(), ops in prop::collection::vec(model_op(), 1..6)) {
        let Some(parsed) = parse_model(&ops) else { return Ok(()); };
        let mut real = state;
        if apply_all(&mut real, &parsed).is_ok() {
            prop_assert!(check_structure(&real).is_ok());
        }
    }

    #[test]
    fn prototype_segments_are_refused_wherever_they_are(
        head in "(characters|actors|items|currentEncounter|pluginData)",
        before in prop::collection::vec("[a-z0-9]{1,4}", 0..3),
        bad in "(__proto__|constructor|prototype)",
        after in prop::collection::vec("[a-z0-9]{1,4}", 0..3),
    ) {
        let path = std::iter::once(head).chain(before).chain(std::iter::once(bad)).chain(after)
            .collect::<Vec<_>>().join(".");
        prop_assert!(Path::parse(&path).is_err(), "{}", path);
    }

    #[test]
    fn hostile_paths_are_refused_or_parsed_never_a_panic(path in ".{0,80}") {
        if let Ok(parsed) = Path::parse(&path) {
            prop_assert!(parsed.segments().len() <= MAX_DEPTH);
            prop_assert!(path.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-'));
        }
    }

    #[test]
    fn hostile_operations_only_ever_give_a_reason(raw in small_value(), path in "[a-zA-Z0-9._$-]{0,40}", name in "[a-z$]{0,6}") {
        let candidates = [raw.clone(), json!({"path": path, "operation": name, "value": raw})];
        for candidate in candidates {
            if let Ok(op) = Operation::parse(&candidate) {
                let mut state = empty_state();
                let _ = apply_all(&mut state, std::slice::from_ref(&op));
            }
        }
    }

    #[test]
    fn deep_equal_is_reflexive_and_symmetric(a in small_value(), b in small_value()) {
        prop_assert!(deep_equal(&a, &a));
        prop_assert_eq!(deep_equal(&a, &b), deep_equal(&b, &a));
    }
}

proptest! {
    /// The published pattern of a path accepts exactly what `Path::parse`
    /// accepts.
    #[test]
    fn the_path_pattern_is_the_grammar(
        text in "(characters|actors|items|currentEncounter|pluginData|stateVersion|x)((\\.|\\.\\.)([A-Za-z0-9_ -]{0,3}|__proto__|constructor|prototype|__proto__x)){0,3}|[a-z.]{0,8}|items(\\.[0-9]){30,33}|items\\.[a-z]{63,65}"
    ) {
        let pattern = regex::Regex::new(Path::PATTERN).unwrap();
        let forbidden = regex::Regex::new(Path::FORBIDDEN_PATTERN).unwrap();
        let published = pattern.is_match(&text) && !forbidden.is_match(&text);
        prop_assert_eq!(published, Path::parse(&text).is_ok(), "{:?}", text);
    }
}
