//! Property tests: the two evaluators agree, and no mapping panics on any event.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::*;
use proptest::prelude::*;

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(Value::from),
        "[@$.a-z\\[\\]{}' ]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("@path".to_string()),
                    Just("@if".to_string()),
                    Just("@template".to_string()),
                    Just("@arrayPath".to_string()),
                    Just("@merge".to_string()),
                    Just("@when".to_string()),
                    Just("@not".to_string()),
                    Just("@map".to_string()),
                    Just("@omit".to_string()),
                    Just("exists".to_string()),
                    Just("value".to_string()),
                    Just("each".to_string()),
                    Just("true".to_string()),
                    Just("objects".to_string()),
                    Just("then".to_string()),
                    Just("else".to_string()),
                    "[a-z]{1,3}",
                ],
                inner,
                0..3
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Values for `@map`'s fixtures: lists of small objects, objects, scalars, null.
fn element() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (0..3i32).prop_map(Value::from),
        prop_oneof![Just(""), Just("x")].prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("a|url|b", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Paths into `element()`-made events: shared and distinct first keys, deeper keys,
/// list indexes and string characters, missing keys.
fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![Just("a"), Just("url"), Just("b"), Just("0"), Just("z")],
        1..4,
    )
    .prop_map(|keys| format!("$.{}", keys.join(".")))
}

proptest! {
    /// An object's fixed paths, resolved together in one pass over the event's
    /// entries (`Gather`), give for each field what `Path::get_ref` gives alone —
    /// for any root (object or not) and any intermediate (falsy, list, string,
    /// missing).
    #[test]
    fn gathered_paths_resolve_as_alone(
        root in prop_oneof![
            prop::collection::btree_map("a|url|b|0", element(), 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            element(),
        ],
        paths in prop::collection::vec(path(), 0..7),
        shapes in prop::collection::vec(any::<bool>(), 7),
    ) {
        // Some fields are not paths, so gathered and plain ones interleave.
        let mut fields = serde_json::Map::new();
        for (i, p) in paths.iter().enumerate() {
            let m = if shapes[i] { serde_json::json!({"@path": p}) } else { serde_json::json!({"@literal": i}) };
            fields.insert(format!("f{i}"), m);
        }
        let compiled = Mapping::compile(&Value::Object(fields.clone())).unwrap();
        let Some(Value::Object(got)) = compiled.eval_out(&root).map(Out::into_value) else {
            panic!("an object mapping gives an object");
        };
        let mut want = Map::new();
        for (i, p) in paths.iter().enumerate() {
            let v = if shapes[i] {
                Path::parse(p).get_ref(&root).map(Cow::into_owned)
            } else {
                Some(Value::from(i))
            };
            if let Some(v) = v {
                want.insert(format!("f{i}"), v);
            }
        }
        prop_assert_eq!(got, want);
    }

    #[test]
    fn compiling_and_evaluating_never_panic(mapping in json(), event in json()) {
        if let Ok(m) = Mapping::compile(&mapping) {
            let _ = m.eval(&event);
        }
    }

    /// `@merge` and `@omit` over borrowed entries give what they gave on values.
    #[test]
    fn merge_and_omit_resolve_as_on_values(
        event in prop::collection::btree_map("p|q|r|a", element(), 0..4),
        picks in prop::collection::vec(0..4usize, 0..4),
        right in any::<bool>(),
        omit in prop::collection::vec(prop_oneof![Just("a"), Just("url"), Just("b")], 0..3),
    ) {
        let event = Value::Object(event.into_iter().collect());
        let choices = [
            serde_json::json!({"@path": "$.p"}),
            serde_json::json!({"@path": "$.q"}),
            serde_json::json!({"a": {"@path": "$.r"}, "url": "k"}),
            serde_json::json!({"@path": "$.nope"}),
        ];
        let objects: Vec<Value> = picks.iter().map(|i| choices[*i].clone()).collect();
        let direction = if right { "right" } else { "left" };
        let merge = Mapping::compile(
            &serde_json::json!({"@merge": {"objects": objects, "direction": direction}}),
        )
        .unwrap();
        // On values: each object's keys inserted in order of precedence.
        let mut resolved: Vec<Value> = objects
            .iter()
            .filter_map(|o| Mapping::compile(o).unwrap().eval(&event))
            .collect();
        if !right {
            resolved.reverse();
        }
        let mut want = Map::new();
        for o in &resolved {
            if let Value::Object(m) = o {
                for (k, v) in m {
                    want.insert(k.clone(), v.clone());
                }
            }
        }
        prop_assert_eq!(merge.eval(&event), Some(Value::Object(want)));
        for value in &choices {
            let m = Mapping::compile(
                &serde_json::json!({"@omit": {"value": value, "keys": omit}}),
            )
            .unwrap();
            let want = Mapping::compile(value).unwrap().eval(&event).map(|v| match v {
                Value::Object(mut o) => {
                    for k in &omit {
                        o.remove(*k);
                    }
                    Value::Object(o)
                }
                other => other,
            });
            prop_assert_eq!(m.eval(&event), want);
        }
    }

    /// `@map` (borrowed elements or built ones) gives what it gave on values,
    /// for every shape of `value` (list, one element, null, missing, built), of `each`
    /// and of `with` (object or not).
    #[test]
    fn map_resolves_as_on_values(
        event in prop::collection::btree_map("p|url|a", element(), 0..4),
        value in prop_oneof![Just(serde_json::json!({"@path": "$.p"})), Just(serde_json::json!({"@path": "$.nope"})),
            Just(serde_json::json!([{"a": 1}, {"@path": "$.url"}]))],
        each in prop_oneof![Just(serde_json::json!({"@path": "$.a"})), Just(serde_json::json!({"a": {"@path": "$.a"}, "url": {"@path": "$.url"}})),
            Just(serde_json::json!("k")), Just(serde_json::json!({"@path": "$"}))],
        with in prop_oneof![Just(None), Just(Some(serde_json::json!({"url": {"@path": "$.url"}}))),
            Just(Some(serde_json::json!({"@path": "$.url"}))), Just(Some(serde_json::json!({"@path": "$.p"})))],
    ) {
        let event = Value::Object(event.into_iter().collect());
        let mut spec = serde_json::json!({"value": value, "each": each});
        if let Some(w) = &with {
            spec["with"] = w.clone();
        }
        let m = Mapping::compile(&serde_json::json!({"@map": spec})).unwrap();
        let Mapping::Each { value, each, with } = &m else { unreachable!() };
        // On values, as `@map` was evaluated before it resolved borrowed elements.
        let on_values = value.eval(&event).and_then(|v| {
            let items = match v {
                Value::Array(a) => a,
                Value::Null => return None,
                one => vec![one],
            };
            let on_top = with.as_ref().and_then(|w| w.eval(&event));
            Some(Value::Array(
                items
                    .iter()
                    .filter_map(|item| each.eval(item))
                    .map(|v| match (v, &on_top) {
                        (Value::Object(mut m), Some(Value::Object(top))) => {
                            for (k, x) in top {
                                m.insert(k.clone(), x.clone());
                            }
                            Value::Object(m)
                        }
                        (v, _) => v,
                    })
                    .collect(),
            ))
        });
        prop_assert_eq!(m.eval(&event), on_values);
    }

    /// The borrowed form serialises to the same bytes as the built value.
    #[test]
    fn out_serialises_as_its_value(mapping in json(), event in json()) {
        if let Ok(m) = Mapping::compile(&mapping) {
            let out = m.eval_out(&event);
            let bytes = serde_json::to_vec(&out).unwrap();
            let value = out.map(Out::into_value);
            prop_assert_eq!(&value, &m.eval(&event));
            prop_assert_eq!(bytes, serde_json::to_vec(&value).unwrap());
        }
    }

    #[test]
    fn raw_values_without_directives_come_back_unchanged(v in json()) {
        let has_directive = v.to_string().contains("\"@");
        if !has_directive {
            prop_assert_eq!(Mapping::compile(&v).unwrap().eval(&serde_json::json!({})), Some(v));
        }
    }
}
