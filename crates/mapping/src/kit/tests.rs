//! Every directive's semantics and edge cases.

use std::borrow::Cow;

use serde_json::Value;

use super::*;
use serde_json::json;

fn run(mapping: Value, event: Value) -> Option<Value> {
    Mapping::compile(&mapping)
        .unwrap_or_else(|e| panic!("{mapping}: {e}"))
        .eval(&event)
}

#[test]
fn out_objects_serialise_with_sorted_keys() {
    let v = json!({"z": 1});
    let out = Out::object(vec![
        (Cow::Borrowed("b"), Out::Ref(&v)),
        (
            Cow::Owned("a".into()),
            Out::array(vec![Out::owned(json!("x"))]),
        ),
    ]);
    assert_eq!(
        serde_json::to_string(&out).unwrap(),
        r#"{"a":["x"],"b":{"z":1}}"#
    );
    assert_eq!(out.into_value(), json!({"a": ["x"], "b": {"z": 1}}));
}

#[test]
fn the_reference_worked_example() {
    let mapping = json!({"id": {"@path": "$.userId"}, "nm": {"@template": "{{traits.first}} {{traits.last}}"},
        "plan": {"@case": {"operator": "upper", "value": {"@path": "$.traits.plan"}}},
        "skus": {"@arrayPath": ["$.properties.products", {"s": {"@path": "$.sku"}}]},
        "gone": {"@path": "$.nope"}});
    let event = json!({"userId": "u1", "traits": {"first": "A", "plan": "pro"},
        "properties": {"products": [{"sku": "x"}, {"sku": "y"}]}});
    assert_eq!(
        run(mapping, event),
        Some(json!({"id": "u1", "nm": "A ", "plan": "PRO", "skus": [{"s": "x"}, {"s": "y"}]}))
    );
}

#[test]
fn paths() {
    let e = json!({"a": {"b": [10, {"c": "d"}], "x": null, "z": 0, "k.y": 1}, "s": "hey"});
    for (p, want) in [
        ("$.a.b[0]", Some(json!(10))),
        ("$.a.b[1].c", Some(json!("d"))),
        ("a.b.1.c", Some(json!("d"))),
        ("$.a['k.y']", Some(json!(1))),
        ("$.a[\"k.y\"]", Some(json!(1))),
        ("$.a.x.y", Some(json!(null))),
        ("$.a.z.y", Some(json!(0))),
        ("$.a.missing.y", None),
        ("$.s.1", Some(json!("e"))),
        // The path goes on from a string's character, as JavaScript's property access.
        ("$.s.0.name", None),
        ("$.s.2.0", Some(json!("y"))),
        ("", Some(e.clone())),
        (".", Some(e.clone())),
    ] {
        assert_eq!(Path::parse(p).get_ref(&e).map(Cow::into_owned), want, "{p}");
    }
    assert_eq!(
        run(json!({"@path": "$."}), json!({"a": 1})),
        Some(json!({"a": 1}))
    );
}

#[test]
fn undefined_removes_keys_and_null_stays() {
    let e = json!({"traits": {"email": null}});
    assert_eq!(
        run(
            json!({"email": {"@path": "$.traits.email"}, "name": {"@path": "$.traits.name"}, "n": null}),
            e
        ),
        Some(json!({"email": null, "n": null}))
    );
}

#[test]
fn if_exists_blank_and_else_truthiness() {
    let e = json!({"traits": {"email": "a@x", "empty": "", "zero": 0}, "context": {"traits": {"email": "c@x"}}});
    let coalesce = |p: &str| json!({"@if": {"exists": {"@path": p}, "then": {"@path": p}, "else": {"@path": "$.context.traits.email"}}});
    assert_eq!(
        run(coalesce("$.traits.email"), e.clone()),
        Some(json!("a@x"))
    );
    assert_eq!(
        run(coalesce("$.traits.none"), e.clone()),
        Some(json!("c@x"))
    );
    assert_eq!(
        run(
            json!({"@if": {"exists": {"@path": "$.traits.empty"}, "then": "yes"}}),
            e.clone()
        ),
        Some(json!("yes"))
    );
    assert_eq!(
        run(
            json!({"@if": {"blank": {"@path": "$.traits.empty"}, "then": "yes", "else": "no"}}),
            e.clone()
        ),
        Some(json!("no"))
    );
    assert_eq!(
        run(
            json!({"@if": {"blank": {"@path": "$.traits.zero"}, "then": "yes", "else": "no"}}),
            e.clone()
        ),
        Some(json!("no"))
    );
    assert_eq!(
        run(
            json!({"@if": {"blank": {"@path": "$.traits.email"}, "then": "yes"}}),
            e.clone()
        ),
        Some(json!("yes"))
    );
    // else with a falsy value omits the key; no branch omits it.
    assert_eq!(
        run(
            json!({"@if": {"exists": {"@path": "$.nope"}, "then": 1, "else": false}}),
            e.clone()
        ),
        None
    );
    assert_eq!(
        run(
            json!({"@if": {"exists": {"@path": "$.nope"}, "then": 1}}),
            e.clone()
        ),
        None
    );
}

#[test]
fn template_coercions() {
    let e = json!({"n": 0, "f": 1.5, "o": {"a": 1}, "l": ["a", "b"], "nul": null, "t": true, "big": 3.0});
    assert_eq!(
        run(
            json!({"@template": "{{n}}|{{f}}|{{o}}|{{l}}|{{nul}}|{{missing}}|{{{t}}}|{{big}}"}),
            e
        ),
        Some(json!("0|1.5|[object Object]|a,b|||true|3"))
    );
}

#[test]
fn literal_case_replace_json() {
    let e = json!({"p": "Pro Plan", "n": 12345, "s": "{\"a\":1}", "bad": "{nope"});
    assert_eq!(
        run(json!({"@literal": {"x": {"@path": "$.p"}}}), e.clone()),
        Some(json!({"x": "Pro Plan"}))
    );
    assert_eq!(
        run(
            json!({"@case": {"operator": "lower", "value": {"@path": "$.p"}}}),
            e.clone()
        ),
        Some(json!("pro plan"))
    );
    assert_eq!(
        run(
            json!({"@case": {"operator": "lower", "value": {"@path": "$.n"}}}),
            e.clone()
        ),
        Some(json!(12345))
    );
    assert_eq!(
        run(
            json!({"@replace": {"value": {"@path": "$.p"}, "pattern": " ", "replacement": "_"}}),
            e.clone()
        ),
        Some(json!("Pro_Plan"))
    );
    assert_eq!(
        run(
            json!({"@replace": {"value": {"@path": "$.p"}, "pattern": "p", "replacement": "b", "ignorecase": true, "global": false}}),
            e.clone()
        ),
        Some(json!("bro Plan"))
    );
    assert_eq!(
        run(
            json!({"@replace": {"value": {"@path": "$.n"}, "pattern": "23", "pattern2": "5", "replacement2": "!"}}),
            e.clone()
        ),
        Some(json!("14!"))
    );
    assert_eq!(
        run(
            json!({"@replace": {"value": {"@path": "$.missing"}, "pattern": "x"}}),
            e.clone()
        ),
        Some(json!(""))
    );
    assert_eq!(
        run(
            json!({"@json": {"mode": "decode", "value": {"@path": "$.s"}}}),
            e.clone()
        ),
        Some(json!({"a": 1}))
    );
    assert_eq!(
        run(
            json!({"@json": {"mode": "decode", "value": {"@path": "$.bad"}}}),
            e.clone()
        ),
        Some(json!("{nope"))
    );
    assert_eq!(
        run(
            json!({"@json": {"mode": "encode", "value": {"a": [1, "x"]}}}),
            e.clone()
        ),
        Some(json!("{\"a\":[1,\"x\"]}"))
    );
    assert_eq!(
        run(
            json!({"@json": {"mode": "encode", "value": {"@path": "$.missing"}}}),
            e
        ),
        None
    );
}

#[test]
fn array_path_merge_transform_flatten_exclude() {
    let e = json!({"properties": {"products": [{"sku": "a", "q": 1}, {"sku": "b"}], "one": {"sku": "c"}},
        "traits": {"a": 1, "b": null, "n": {"x": null, "y": 2}}, "context": {"traits": {"a": 9, "c": 3}}});
    assert_eq!(
        run(
            json!({"@arrayPath": ["$.properties.one", {"s": {"@path": "$.sku"}}]}),
            e.clone()
        ),
        Some(json!([{"s": "c"}])),
        "a single object becomes a one-element array"
    );
    assert_eq!(
        run(json!({"@arrayPath": ["$.properties.products"]}), e.clone()),
        Some(json!([{"sku": "a", "q": 1}, {"sku": "b"}]))
    );
    assert_eq!(
        run(
            json!({"@arrayPath": ["$.missing", {"s": {"@path": "$.sku"}}]}),
            e.clone()
        ),
        None
    );
    assert_eq!(
        run(
            json!({"@merge": {"objects": [{"@path": "$.traits"}, {"@path": "$.context.traits"}], "direction": "right"}}),
            e.clone()
        ),
        Some(json!({"a": 9, "b": null, "n": {"x": null, "y": 2}, "c": 3}))
    );
    assert_eq!(
        run(
            json!({"@merge": {"objects": [{"@path": "$.traits"}, {"@path": "$.context.traits"}, {"@path": "$.nope"}], "direction": "left"}}),
            e.clone()
        ),
        Some(json!({"a": 1, "c": 3, "b": null, "n": {"x": null, "y": 2}}))
    );
    assert_eq!(
        run(
            json!({"@transform": {"apply": {"x": {"@path": "$.traits.n"}}, "mapping": {"y": {"@path": "$.x.y"}}}}),
            e.clone()
        ),
        Some(json!({"y": 2}))
    );
    assert_eq!(
        run(
            json!({"@flatten": {"value": {"@path": "$.properties"}, "separator": "."}}),
            e.clone()
        ),
        Some(
            json!({"products.0.sku": "a", "products.0.q": 1, "products.1.sku": "b", "one.sku": "c"})
        )
    );
    assert_eq!(
        run(
            json!({"@flatten": {"value": {"@path": "$.properties"}, "separator": "_", "omitArrays": true}}),
            e.clone()
        ),
        Some(json!({"products": [{"sku": "a", "q": 1}, {"sku": "b"}], "one_sku": "c"}))
    );
    assert_eq!(
        run(
            json!({"@flatten": {"value": 5, "separator": "."}}),
            e.clone()
        ),
        Some(json!({"": 5}))
    );
    assert_eq!(
        run(
            json!({"@excludeWhenNull": {"@path": "$.traits.b"}}),
            e.clone()
        ),
        None
    );
    assert_eq!(
        run(json!({"@excludeWhenNull": {"@path": "$.traits"}}), e),
        Some(json!({"a": 1, "n": {"y": 2}}))
    );
}

#[test]
fn sluice_extensions() {
    let e = json!({"event": "Hit Search", "n": 2, "context": {"ip": "203.0.113.77", "ip6": "2001:db8::1"},
        "products": [{"product_id": "p1", "quantity": 2}, {"sku": "x"}, {"product_id": 3}]});
    let lookup = |v: Value| json!({"@lookup": {"value": v, "table": {"Hit Search": "search", "2": "two"}, "default": "custom"}});
    assert_eq!(
        run(lookup(json!({"@path": "$.event"})), e.clone()),
        Some(json!("search"))
    );
    assert_eq!(
        run(lookup(json!({"@path": "$.n"})), e.clone()),
        Some(json!("two"))
    );
    assert_eq!(
        run(lookup(json!("Other")), e.clone()),
        Some(json!("custom"))
    );
    assert_eq!(
        run(
            json!({"@lookup": {"value": {"@path": "$.nope"}, "table": {"a": 1}}}),
            e.clone()
        ),
        None
    );
    assert_eq!(
        run(
            json!({"@map": {"value": {"@path": "$.products"}, "each": {"@path": "$.product_id"}}}),
            e.clone()
        ),
        Some(json!(["p1", 3]))
    );
    let qty = json!({"@map": {"value": {"@path": "$.products"}, "each": {"@if": {"exists": {"@path": "$.product_id"},
        "then": {"@if": {"exists": {"@path": "$.quantity"}, "then": {"@path": "$.quantity"}, "else": 1}}}}}});
    assert_eq!(run(qty, e.clone()), Some(json!([2, 1])));
    assert_eq!(
        run(json!({"@truncateIp": {"@path": "$.context.ip"}}), e.clone()),
        Some(json!("203.0.113.0"))
    );
    assert_eq!(
        run(
            json!({"@truncateIp": {"@path": "$.context.ip6"}}),
            e.clone()
        ),
        None
    );
    assert_eq!(
        run(json!({"@nonEmpty": {"a": {"@path": "$.nope"}}}), e.clone()),
        None
    );
    assert_eq!(
        run(json!({"@nonEmpty": {"a": {"@path": "$.n"}}}), e.clone()),
        Some(json!({"a": 2}))
    );
    let bad = Mapping::compile(&json!({"@lookup": {"value": 1, "table": [1]}})).unwrap_err();
    assert_eq!(bad.at, "@lookup.table");
}

#[test]
fn when_not_trim_and_map_with() {
    let e = json!({"flag": true, "off": false, "s": "  Video Played ", "p": [{"a": 1, "url": "x"}, {"a": 2}], "url": "page"});
    assert_eq!(
        run(
            json!({"@when": {"true": {"@path": "$.flag"}, "then": "y", "else": "n"}}),
            e.clone()
        ),
        Some(json!("y"))
    );
    assert_eq!(
        run(
            json!({"@when": {"true": {"@path": "$.off"}, "then": "y", "else": "n"}}),
            e.clone()
        ),
        Some(json!("n"))
    );
    assert_eq!(
        run(
            json!({"@when": {"true": {"@path": "$.nope"}, "then": "y"}}),
            e.clone()
        ),
        None
    );
    assert_eq!(
        run(json!({"@not": {"@path": "$.off"}}), e.clone()),
        Some(json!(true))
    );
    assert_eq!(
        run(json!({"@not": {"@path": "$.flag"}}), e.clone()),
        Some(json!(false))
    );
    assert_eq!(
        run(json!({"@trim": {"@path": "$.s"}}), e.clone()),
        Some(json!("Video Played"))
    );
    assert_eq!(
        run(
            json!({"@map": {"value": {"@path": "$.p"}, "each": {"a": {"@path": "$.a"}, "url": {"@path": "$.url"}}, "with": {"url": {"@path": "$.url"}}}}),
            e
        ),
        Some(json!([{"a": 1, "url": "page"}, {"a": 2, "url": "page"}]))
    );
}

#[test]
fn omit_drops_listed_keys() {
    let e = json!({"traits": {"email": "a@x", "city": "Oslo", "plan": "pro"}});
    assert_eq!(
        run(
            json!({"@omit": {"value": {"@path": "$.traits"}, "keys": ["email", "city"]}}),
            e.clone()
        ),
        Some(json!({"plan": "pro"}))
    );
    assert_eq!(
        run(
            json!({"@omit": {"value": {"@path": "$.nope"}, "keys": ["a"]}}),
            e
        ),
        None
    );
    let bad = Mapping::compile(&json!({"@omit": {"value": 1, "keys": "a"}})).unwrap_err();
    assert_eq!(bad.at, "@omit.keys");
}

#[test]
fn case_insensitive_replace_is_per_character() {
    assert_eq!(replace("ẞaȺbẞ", "ȺB", "-", true, true), "ẞa-ẞ");
    assert_eq!(replace("ÄÖü", "ö", "o", true, true), "Äoü");
    assert_eq!(replace("aAa", "A", "b", false, true), "bAa");
    assert_eq!(replace("aAa", "A", "b", true, false), "aba");
}

#[test]
fn compile_errors_name_the_place() {
    for (m, at, msg) in [
        (
            json!({"a": {"@path": "$.x", "@template": "y"}}),
            "a",
            "exactly one",
        ),
        (json!({"a": {"@path": "$.x", "other": 1}}), "a", "mixed"),
        (
            json!({"a": {"b": {"@nope": 1}}}),
            "a.b.@nope",
            "unknown directive",
        ),
        (
            json!({"a": {"@liquid": "{{x}}"}}),
            "a.@liquid",
            "not supported",
        ),
        (json!({"a": {"@if": {"then": 1}}}), "a.@if", "exists"),
        (
            json!({"a": {"@case": {"operator": "title", "value": 1}}}),
            "a.@case.operator",
            "lower",
        ),
        (
            json!({"a": {"@replace": {"value": 1, "pattern": "01234567890"}}}),
            "a.@replace.pattern",
            "1 to 10",
        ),
        (
            json!({"a": {"@merge": {"objects": []}}}),
            "a.@merge.direction",
            "left",
        ),
        (json!({"a": {"@path": 5}}), "a.@path", "path string"),
        (
            json!({"a": [{"@json": {"mode": "x", "value": 1}}]}),
            "a[0].@json.mode",
            "encode",
        ),
    ] {
        let e = Mapping::compile(&m).unwrap_err();
        assert_eq!(e.at, at, "{m}: {e}");
        assert!(e.message.contains(msg), "{m}: {e}");
    }
    // `_metadata` beside a directive is allowed.
    assert!(Mapping::compile(&json!({"@path": "$.x", "_metadata": {"label": "X"}})).is_ok());
}

#[test]
fn dates_convert_to_iso_days_and_epoch_units() {
    let e = json!({"iso": "2026-12-07T10:00:00.250+03:00", "day": "1990-04-01", "ms": 1796637600250i64,
                   "text": "1796637600", "bad": "April 1st", "blank": " ", "flag": true});
    let d = |value: &str, to: &str| {
        run(
            json!({"@date": {"value": {"@path": value}, "to": to}}),
            e.clone(),
        )
    };
    assert_eq!(d("$.iso", "iso"), Some(json!("2026-12-07T07:00:00.250Z")));
    assert_eq!(d("$.iso", "date"), Some(json!("2026-12-07")));
    assert_eq!(d("$.iso", "s"), Some(json!(1796626800)));
    assert_eq!(d("$.iso", "ms"), Some(json!(1796626800250i64)));
    assert_eq!(d("$.iso", "us"), Some(json!(1796626800250000i64)));
    assert_eq!(d("$.day", "iso"), Some(json!("1990-04-01T00:00:00.000Z")));
    // Numbers are milliseconds for a date, and kept as they are for an epoch unit.
    assert_eq!(d("$.ms", "iso"), Some(json!("2026-12-07T10:00:00.250Z")));
    assert_eq!(d("$.text", "us"), Some(json!(1796637600)));
    for not_a_date in ["$.bad", "$.blank", "$.flag", "$.missing"] {
        assert_eq!(d(not_a_date, "iso"), None, "{not_a_date}");
    }
    let refused = Mapping::compile(&json!({"@date": {"value": "x", "to": "weeks"}})).unwrap_err();
    assert!(refused.to_string().contains("to"), "{refused}");
}

#[test]
fn hashes_are_lowercase_hex_sha256_of_text() {
    let e = json!({"email": "a@example.com", "n": 42, "o": {}});
    let h = |value: &str| {
        run(
            json!({"@hash": {"value": {"@path": value}, "algorithm": "sha256"}}),
            e.clone(),
        )
    };
    assert_eq!(
        h("$.email"),
        Some(json!(
            "08168cd80dfd534ab0f10af10f1303fe00af2d43ab5c1432360d137f8197e17a"
        ))
    );
    assert_eq!(
        h("$.n"),
        Some(json!(
            "73475cb40a568e8da8a045ced110137e159f890ac4da883b6b17dc651b3a8049"
        ))
    );
    assert_eq!(h("$.o"), None);
    assert_eq!(h("$.missing"), None);
    assert!(Mapping::compile(&json!({"@hash": {"value": "x", "algorithm": "md5"}})).is_err());
}

#[test]
fn map_values_keeps_keys_and_drops_undefined_results() {
    let e = json!({"props": {"plan": "pro", "seats": 3, "gone": null}, "list": [1]});
    assert_eq!(
        run(
            json!({"@mapValues": {"value": {"@path": "$.props"}, "each": {"value": {"@path": "$."}}}}),
            e.clone()
        ),
        Some(json!({"plan": {"value": "pro"}, "seats": {"value": 3}, "gone": {"value": null}}))
    );
    assert_eq!(
        run(
            json!({"@mapValues": {"value": {"@path": "$.props"}, "each": {"@path": "$.missing"}}}),
            e.clone()
        ),
        // A path from a falsy value gives that value (Segment's rule), so `null` stays.
        Some(json!({"gone": null}))
    );
    assert_eq!(
        run(
            json!({"@mapValues": {"value": {"@path": "$.list"}, "each": 1}}),
            e.clone()
        ),
        None
    );
    assert!(Mapping::compile(&json!({"@mapValues": {"value": 1}})).is_err());
}

#[test]
fn match_takes_the_first_case_whose_pattern_matches() {
    let browser = json!({"@match": {"value": {"@path": "$.ua"}, "cases": [
        {"pattern": " OPR/", "then": "Opera"},
        {"pattern": "(?i)(BlackBerry|BB10)", "then": {"@template": "BB on {{os}}"}},
        {"pattern": "Chrome/(\\d+(\\.\\d+)+)", "group": 1},
        {"pattern": "Safari", "group": 0}
    ], "else": ""}});
    let ua = |s: &str| json!({"ua": s, "os": "bb10"});
    assert_eq!(
        run(browser.clone(), ua("x OPR/99 Chrome/120.0")),
        Some(json!("Opera"))
    );
    assert_eq!(
        run(browser.clone(), ua("a bb10 b")),
        Some(json!("BB on bb10"))
    );
    assert_eq!(
        run(
            browser.clone(),
            ua("Mozilla Chrome/120.0.6099.71 Safari/537")
        ),
        Some(json!("120.0.6099.71"))
    );
    // A pattern that matches ends the search even when its group took no part.
    assert_eq!(
        run(
            json!({"@match": {"value": "ab", "cases": [{"pattern": "a(x)?", "group": 1}, {"pattern": "a", "then": 1}]}}),
            json!({})
        ),
        None
    );
    assert_eq!(run(browser.clone(), ua("Safari")), Some(json!("Safari")));
    assert_eq!(run(browser.clone(), ua("curl/8")), Some(json!("")));
    // Not text, or missing: `else`.
    assert_eq!(run(browser.clone(), json!({"ua": 5})), Some(json!("")));
    assert_eq!(run(browser, json!({})), Some(json!("")));
    assert_eq!(
        run(json!({"@match": {"value": "x", "cases": []}}), json!({})),
        None
    );
    for (m, at, msg) in [
        (
            json!({"@match": {"value": 1, "cases": [{"pattern": "(", "then": 1}]}}),
            "@match.cases[0].pattern",
            "not a regular expression",
        ),
        (
            json!({"@match": {"value": 1, "cases": [{"pattern": "a(b)", "group": 2}]}}),
            "@match.cases[0].group",
            "0 to 1",
        ),
        (
            json!({"@match": {"value": 1, "cases": [{"pattern": "a", "then": 1, "group": 0}]}}),
            "@match.cases[0]",
            "exactly one",
        ),
        (
            json!({"@match": {"value": 1, "cases": {}}}),
            "@match.cases",
            "list",
        ),
        (
            json!({"@match": {"value": 1, "cases": [], "other": 1}}),
            "@match.other",
            "not a @match key",
        ),
    ] {
        let e = Mapping::compile(&m).unwrap_err();
        assert_eq!(e.at, at, "{m}: {e}");
        assert!(e.message.contains(msg), "{m}: {e}");
    }
}

#[test]
fn indexed_map_concat_and_subtract() {
    let e = json!({"t": 1796637600250i64, "id": "m1", "products": [{"sku": "a"}, {"sku": "b", "price": 2.5}], "f": 1.5});
    let per_product = json!({"@map": {"value": {"@path": "$.products"}, "index": true, "each": {
    "@merge": {"direction": "right", "objects": [
        {"id": {"@template": "{{index}}{{outer.id}}"},
         "time": {"@subtract": [{"@path": "$.outer.t"}, {"@path": "$.index"}, 1]}},
        {"@path": "$.item"}
    ]}}}});
    assert_eq!(
        run(
            json!({"@concat": [[{"order": true}], per_product.clone(), {"@path": "$.nope"}, "tail"]}),
            e.clone()
        ),
        Some(json!([
            {"order": true},
            {"id": "0m1", "time": 1796637600249i64, "sku": "a"},
            {"id": "1m1", "time": 1796637600248i64, "sku": "b", "price": 2.5},
            "tail"
        ]))
    );
    // One value that is not a list is one element; missing: undefined, as @map.
    assert_eq!(
        run(
            json!({"@map": {"value": {"@path": "$.id"}, "index": true, "each": {"@path": "$.index"}}}),
            e.clone()
        ),
        Some(json!([0]))
    );
    assert_eq!(run(per_product, json!({})), None);
    assert_eq!(run(json!({"@concat": []}), json!({})), Some(json!([])));
    assert_eq!(
        run(json!({"@subtract": [{"@path": "$.f"}, 0.5]}), e.clone()),
        Some(json!(1.0))
    );
    assert_eq!(
        run(json!({"@subtract": [{"@path": "$.t"}]}), e.clone()),
        Some(json!(1796637600250i64))
    );
    // Numeric text is not a number here; nor is a missing operand.
    assert_eq!(run(json!({"@subtract": ["5", 1]}), json!({})), None);
    assert_eq!(
        run(json!({"@subtract": [5, {"@path": "$.x"}]}), json!({})),
        None
    );
    assert!(Mapping::compile(&json!({"@subtract": []})).is_err());
    let e = Mapping::compile(&json!({"@map": {"value": 1, "each": 1, "index": true, "with": {}}}))
        .unwrap_err();
    assert_eq!(e.at, "@map.with", "{e}");
}

#[test]
fn dates_converts_iso_texts_in_objects_at_any_depth() {
    let e = json!({"a": {"created": "2026-12-07T10:00:00.750Z", "day": "1990-04-01",
        "hm": "2026-12-07T10:00", "off": "2026-12-07T13:00:00+0300", "n": 5,
        "deep": {"at": "2026-12-07T10:00:00Z", "list": ["2026-12-07"]},
        "text": "2026-12-07 10:00", "bad": "2026-13-45", "numeric": "1796637600", "ahead": "x2026-12-07"}});
    assert_eq!(
        run(
            json!({"@dates": {"value": {"@path": "$.a"}, "to": "s"}}),
            e.clone()
        ),
        Some(
            json!({"created": 1796637600, "day": 638928000, "hm": 1796637600,
            "off": 1796637600, "n": 5, "deep": {"at": 1796637600, "list": ["2026-12-07"]},
            "text": "2026-12-07 10:00", "bad": "2026-13-45", "numeric": "1796637600", "ahead": "x2026-12-07"})
        )
    );
    // A text is converted too; anything else comes back as it is.
    assert_eq!(
        run(
            json!({"@dates": {"value": "2026-12-07", "to": "iso"}}),
            json!({})
        ),
        Some(json!("2026-12-07T00:00:00.000Z"))
    );
    assert_eq!(
        run(
            json!({"@dates": {"value": {"@path": "$.x"}, "to": "s"}}),
            json!({})
        ),
        None
    );
    let e = Mapping::compile(&json!({"@dates": {"value": 1, "to": "days"}})).unwrap_err();
    assert_eq!(e.at, "@dates.to", "{e}");
}

#[test]
fn replace_all_and_smart_hashing() {
    let e = json!({"phone": "+1 (555) 010-9999", "email": " Ada@Example.COM ", "n": 5});
    assert_eq!(
        run(
            json!({"@replaceAll": {"value": {"@path": "$.phone"}, "pattern": "[^0-9]", "with": ""}}),
            e.clone()
        ),
        Some(json!("15550109999"))
    );
    assert_eq!(
        run(
            json!({"@replaceAll": {"value": {"@path": "$.email"}, "pattern": "(\\w+)@", "with": "<$1>@"}}),
            e.clone()
        ),
        Some(json!(" <Ada>@Example.COM "))
    );
    assert_eq!(
        run(
            json!({"@replaceAll": {"value": {"@path": "$.n"}, "pattern": "5", "with": ""}}),
            e.clone()
        ),
        Some(json!(5))
    );
    let hashed = "24b6f5c6e1e3b0e5a7d5a0c7e5e5ad1bb5a0d7c0f8e2f1a4c6b3e9d8f7a6b5C4";
    let smart = |v: Value| {
        run(
            json!({"@hash": {"value": v, "algorithm": "sha256", "keep_hashed": true}}),
            json!({}),
        )
    };
    assert_eq!(
        smart(json!(hashed)),
        Some(json!(hashed)),
        "already hashed: kept"
    );
    assert_eq!(smart(json!("  ")), Some(json!("")), "blank: empty");
    assert_eq!(
        smart(json!("ada@example.com")),
        run(
            json!({"@hash": {"value": "ada@example.com", "algorithm": "sha256"}}),
            json!({})
        )
    );
    // Without keep_hashed a digest is hashed again.
    assert_ne!(
        run(
            json!({"@hash": {"value": hashed, "algorithm": "sha256"}}),
            json!({})
        ),
        Some(json!(hashed))
    );
    for (m, at) in [
        (
            json!({"@replaceAll": {"value": 1, "pattern": "(", "with": ""}}),
            "@replaceAll.pattern",
        ),
        (
            json!({"@replaceAll": {"value": 1, "pattern": "a"}}),
            "@replaceAll.with",
        ),
        (
            json!({"@hash": {"value": 1, "algorithm": "sha256", "keep_hashed": "yes"}}),
            "@hash.keep_hashed",
        ),
    ] {
        let e = Mapping::compile(&m).unwrap_err();
        assert_eq!(e.at, at, "{m}: {e}");
    }
}

/// Expected values from google-libphonenumber 3.2.47 (`isValidNumberForRegion`, then E.164),
/// the library Segment's Klaviyo destination uses.
#[test]
fn phone_numbers_in_e164_by_the_countrys_plan() {
    let cases = [
        ("(555) 123-4567", "US", None),
        ("(415) 555-0100", "US", Some("+14155550100")),
        ("0532 123 45 67", "TR", Some("+905321234567")),
        ("+1 415 555 0100", "US", Some("+14155550100")),
        ("+1 415 555 0100", "TR", None),
        ("020 7946 0958", "GB", Some("+442079460958")),
        ("5551234567", "US", None),
        ("+905321234567", "TR", Some("+905321234567")),
        ("12", "US", None),
        ("not a phone", "DE", None),
        ("030 123456", "DE", Some("+4930123456")),
        ("+44 20 7946 0958", "GB", Some("+442079460958")),
        ("(613) 555-0100", "CA", Some("+16135550100")),
        ("(613) 555-0100", "US", None),
    ];
    for (phone, country, want) in cases {
        let got = run(
            json!({"@phone": {"value": {"@path": "$.p"}, "country": {"@path": "$.c"}, "format": "e164"}}),
            json!({"p": phone, "c": country.to_lowercase()}),
        );
        assert_eq!(got, want.map(|w| json!(w)), "{phone} in {country}");
    }
    // Without a country: an international number only; a number's text is read too.
    let m = json!({"@phone": {"value": {"@path": "$.p"}, "format": "e164"}});
    assert_eq!(
        run(m.clone(), json!({"p": "+44 20 7946 0958"})),
        Some(json!("+442079460958"))
    );
    assert_eq!(run(m.clone(), json!({"p": "020 7946 0958"})), None);
    assert_eq!(run(m.clone(), json!({"p": 14155550100u64})), None);
    assert_eq!(run(m, json!({"p": {"x": 1}})), None);
    // An unknown country code: undefined.
    assert_eq!(
        run(
            json!({"@phone": {"value": "030 123456", "country": "XX", "format": "e164"}}),
            json!({})
        ),
        None
    );
    let e = Mapping::compile(&json!({"@phone": {"value": 1, "format": "national"}})).unwrap_err();
    assert_eq!(e.at, "@phone.format", "{e}");
}

/// actions-core 3.170's @replace answers "" for a value that is missing or not text
/// (checked with its `transform`: `{"a": ""}` for a missing path, null and an object).
#[test]
fn replace_of_nothing_is_empty_text() {
    for e in [json!({}), json!({"x": null}), json!({"x": {"k": 1}})] {
        assert_eq!(
            run(
                json!({"@replace": {"value": {"@path": "$.x"}, "pattern": "en-", "replacement": ""}}),
                e.clone()
            ),
            Some(json!("")),
            "{e}"
        );
    }
}
