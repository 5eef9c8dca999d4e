use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{json, Value};

use crate::time::{format_timestamp, parse_timestamp};
use crate::*;

fn received() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()
}

fn ctx() -> Context<'static> {
    Context::new(received(), Some("203.0.113.7"), false)
}

fn run(endpoint: Endpoint, body: &Value) -> Result<Outcome, RequestError> {
    let bytes = serde_json::to_vec(body).unwrap();
    let limits = Limits::default();
    let doc = parse(endpoint, &bytes, &limits)?;
    normalize::normalize_document(endpoint.call(), doc, &ctx(), &limits)
}

fn single(call: CallType, body: Value) -> Result<Event, RequestError> {
    run(Endpoint::Single(call), &body).map(|mut o| o.accepted.remove(0))
}

fn code(r: Result<Event, RequestError>) -> &'static str {
    r.unwrap_err().code()
}

#[test]
fn endpoints_include_every_alias() {
    for (p, e) in [
        ("batch", Endpoint::Batch),
        ("b", Endpoint::Batch),
        ("import", Endpoint::Batch),
        ("t", Endpoint::Single(CallType::Track)),
        ("i", Endpoint::Single(CallType::Identify)),
        ("p", Endpoint::Single(CallType::Page)),
        ("s", Endpoint::Single(CallType::Screen)),
        ("g", Endpoint::Single(CallType::Group)),
        ("a", Endpoint::Single(CallType::Alias)),
        ("alias", Endpoint::Single(CallType::Alias)),
    ] {
        assert_eq!(Endpoint::from_path(p), Some(e), "{p}");
    }
    assert_eq!(Endpoint::from_path("x"), None);
}

#[test]
fn type_comes_from_the_path() {
    let ev = single(CallType::Page, json!({"type": "track", "userId": "u"})).unwrap();
    assert_eq!(ev.call, CallType::Page);
    assert_eq!(ev.body()["type"], "page");
}

#[test]
fn required_fields_per_call() {
    assert_eq!(
        code(single(CallType::Track, json!({"event": "A"}))),
        "no_user_anon_id"
    );
    assert_eq!(
        code(single(CallType::Track, json!({"userId": "u"}))),
        "missing_event"
    );
    assert_eq!(
        code(single(CallType::Track, json!({"userId": "u", "event": ""}))),
        "missing_event"
    );
    assert_eq!(
        code(single(CallType::Group, json!({"userId": "u"}))),
        "missing_group_id"
    );
    assert_eq!(
        code(single(CallType::Alias, json!({"userId": "u"}))),
        "missing_previous_id"
    );
    assert_eq!(
        code(single(
            CallType::Alias,
            json!({"previousId": "p", "anonymousId": "a"})
        )),
        "missing_user_id"
    );
    assert_eq!(
        code(single(CallType::Identify, json!({"userId": {"x": 1}}))),
        "invalid_id"
    );
    assert_eq!(
        code(single(
            CallType::Identify,
            json!({"userId": "u", "traits": [1]})
        )),
        "invalid_field"
    );
    assert!(single(CallType::Alias, json!({"previousId": "p", "userId": "u"})).is_ok());
    assert!(single(CallType::Screen, json!({"anonymousId": "a"})).is_ok());
    assert!(single(CallType::Group, json!({"anonymousId": "a", "groupId": 42})).is_ok());
}

#[test]
fn errors_name_the_field() {
    let e = single(CallType::Track, json!({"userId": "u"})).unwrap_err();
    assert_eq!(e.field(), Some("event"));
    assert_eq!(e.status(), 400);
    let e = single(
        CallType::Track,
        json!({"userId": "u", "event": "e", "timestamp": "noon"}),
    )
    .unwrap_err();
    assert_eq!(
        (e.code(), e.field()),
        ("invalid_timestamp", Some("timestamp"))
    );
}

#[test]
fn numeric_ids_become_strings() {
    let ev = single(
        CallType::Identify,
        json!({"userId": 123, "anonymousId": 4.5}),
    )
    .unwrap();
    assert_eq!(ev.body()["userId"], "123");
    assert_eq!(ev.body()["anonymousId"], "4.5");
    assert_eq!(ev.user_key, "123");
    // Beyond 64 bits, every digit is kept (an f64 would give "1.2345678901234568e29").
    let raw = br#"{"userId":123456789012345678901234567890,"event":"E"}"#;
    let doc = parse(Endpoint::Single(CallType::Track), raw, &Limits::default()).unwrap();
    let out = normalize::normalize_document(Some(CallType::Track), doc, &ctx(), &Limits::default())
        .unwrap();
    assert_eq!(out.accepted[0].user_key, "123456789012345678901234567890");
    assert_eq!(
        out.accepted[0].body()["userId"],
        "123456789012345678901234567890"
    );
}

#[test]
fn message_id_assigned_or_checked() {
    let ev = single(CallType::Track, json!({"userId": "u", "event": "e"})).unwrap();
    assert_eq!(ev.body()["messageId"], Value::String(ev.message_id.clone()));
    assert_eq!(ev.message_id.len(), 36);
    let long = "m".repeat(101);
    assert_eq!(
        code(single(
            CallType::Track,
            json!({"userId": "u", "event": "e", "messageId": long})
        )),
        "message_id_too_long"
    );
    let ok = "m".repeat(100);
    assert_eq!(
        single(
            CallType::Track,
            json!({"userId": "u", "event": "e", "messageId": ok.clone()})
        )
        .unwrap()
        .message_id,
        ok
    );
}

#[test]
fn nulls_are_absent_and_unknown_fields_kept() {
    let ev = single(
        CallType::Page,
        json!({"userId": null, "anonymousId": "a", "name": null, "category": null,
               "context": {}, "integrations": {}, "email": "x@y.z", "custom": {"deep": [1, null]}}),
    )
    .unwrap();
    assert!(ev.body().get("userId").is_none());
    assert!(ev.body().get("name").is_none());
    assert_eq!(ev.body()["email"], "x@y.z");
    assert_eq!(ev.body()["custom"], json!({"deep": [1, null]}));
    assert_eq!(ev.user_key, "a");
}

#[test]
fn write_key_is_never_stored() {
    let out = run(
        Endpoint::Batch,
        &json!({"writeKey": "secret", "batch": [{"type": "track", "event": "e", "userId": "u", "writeKey": "secret"}]}),
    )
    .unwrap();
    assert!(out.accepted[0].body().get("writeKey").is_none());
}

#[test]
fn timestamp_correction_from_sent_at() {
    // The device clock is 10 minutes fast: it says the event happened at 12:09:00 and
    // was sent at 12:10:00, and we received it at 12:00:00 server time.
    let ev = single(
        CallType::Track,
        json!({"userId": "u", "event": "e", "timestamp": "2024-05-01T12:09:00.000Z", "sentAt": "2024-05-01T12:10:00Z"}),
    )
    .unwrap();
    assert_eq!(ev.body()["timestamp"], "2024-05-01T11:59:00.000Z");
    assert_eq!(ev.body()["originalTimestamp"], "2024-05-01T12:09:00.000Z");
    assert_eq!(ev.body()["receivedAt"], "2024-05-01T12:00:00.000Z");
    assert_eq!(ev.body()["sentAt"], "2024-05-01T12:10:00Z");
}

#[test]
fn timestamp_without_sent_at_is_kept_and_missing_timestamp_is_server_time() {
    let ev = single(
        CallType::Track,
        json!({"userId": "u", "event": "e", "timestamp": "2024-05-01T11:00:00+00:00"}),
    )
    .unwrap();
    assert_eq!(ev.body()["timestamp"], "2024-05-01T11:00:00.000Z");
    let ev = single(CallType::Track, json!({"userId": "u", "event": "e"})).unwrap();
    assert_eq!(ev.body()["timestamp"], "2024-05-01T12:00:00.000Z");
    assert!(ev.body().get("originalTimestamp").is_none());
}

#[test]
fn batch_envelope_is_merged_item_wins() {
    let out = run(
        Endpoint::Batch,
        &json!({
            "sentAt": "2024-05-01T12:00:05Z",
            "context": {"device": {"type": "phone", "id": "d1"}, "locale": "nl-NL"},
            "integrations": {"All": false, "Webhooks": true},
            "batch": [
                {"type": "track", "event": "A", "userId": "u", "timestamp": "2024-05-01T12:00:00Z",
                 "context": {"device": {"id": "mine"}}, "integrations": {"All": true}},
                {"type": "identify", "userId": "u", "sentAt": "2024-05-01T12:00:00Z", "timestamp": "2024-05-01T12:00:00Z"}
            ]
        }),
    )
    .unwrap();
    assert!(out.rejected.is_empty());
    let a = &out.accepted[0].body();
    assert_eq!(
        a["context"],
        json!({"device": {"type": "phone", "id": "mine"}, "locale": "nl-NL"})
    );
    assert_eq!(a["integrations"], json!({"All": true, "Webhooks": true}));
    assert_eq!(a["sentAt"], "2024-05-01T12:00:05Z");
    assert_eq!(a["timestamp"], "2024-05-01T11:59:55.000Z");
    // Item sentAt wins over the envelope's.
    let b = &out.accepted[1].body();
    assert_eq!(b["timestamp"], "2024-05-01T12:00:00.000Z");
}

#[test]
fn batch_keeps_valid_items_and_lists_the_rest() {
    let out = run(
        Endpoint::Batch,
        &json!({"batch": [
            {"type": "track", "event": "ok", "userId": "u", "messageId": "m0"},
            {"type": "track", "userId": "u", "messageId": "m1"},
            "not an object",
            {"type": "bogus", "userId": "u"},
            {"event": "no type", "userId": "u"},
            {"type": "identify", "anonymousId": "a", "messageId": "m5"}
        ]}),
    )
    .unwrap();
    let ids: Vec<_> = out.accepted.iter().map(|e| e.message_id.as_str()).collect();
    assert_eq!(ids, ["m0", "m5"]);
    let rej: Vec<_> = out
        .rejected
        .iter()
        .map(|r| (r.index, r.error.code, r.message_id.as_deref()))
        .collect();
    assert_eq!(
        rej,
        [
            (1, "missing_event", Some("m1")),
            (2, "invalid_event", None),
            (3, "invalid_type", None),
            (4, "missing_type", None)
        ]
    );
}

#[test]
fn limits_per_event_batch_and_count() {
    let limits = Limits {
        max_event_bytes: 200,
        max_batch_bytes: 2000,
        max_batch_events: 2,
        max_request_bytes: 4000,
    };
    let big = "x".repeat(300);
    let body = serde_json::to_vec(&json!({"batch": [
        {"type": "track", "event": "a", "userId": "u"},
        {"type": "track", "event": big, "userId": "u"},
        {"type": "track", "event": "c", "userId": "u"}
    ]}))
    .unwrap();
    let doc = parse(Endpoint::Batch, &body, &limits).unwrap();
    let out = normalize::normalize_document(None, doc, &ctx(), &limits).unwrap();
    assert_eq!(out.accepted.len(), 1);
    assert_eq!(out.rejected[0].error.code, "event_too_large");
    assert_eq!(out.rejected[1].error.code, "batch_too_many_events");

    let huge = vec![b' '; 2001];
    assert!(matches!(
        parse(Endpoint::Batch, &huge, &limits),
        Err(RequestError::BatchTooLarge { limit: 2000, .. })
    ));
    let single_body = serde_json::to_vec(&json!({"event": big, "userId": "u"})).unwrap();
    let err = parse(Endpoint::Single(CallType::Track), &single_body, &limits).unwrap_err();
    assert_eq!(
        (err.code(), err.status(), err.limit()),
        ("event_too_large", 400, Some(200))
    );
}

#[test]
fn context_ip_only_when_asked() {
    let ev = single(CallType::Track, json!({"userId": "u", "event": "e"})).unwrap();
    assert!(ev.body().get("context").is_none());
    let ev = single(
        CallType::Track,
        json!({"userId": "u", "event": "e", "context": {"direct": true}}),
    )
    .unwrap();
    assert_eq!(ev.body()["context"]["ip"], "203.0.113.7");
    let ev = single(
        CallType::Track,
        json!({"userId": "u", "event": "e", "context": {"direct": true, "ip": "1.2.3.4"}}),
    )
    .unwrap();
    assert_eq!(ev.body()["context"]["ip"], "1.2.3.4");
}

// ---- properties ----

fn arb_time() -> impl Strategy<Value = DateTime<Utc>> {
    // 2000-01-01 .. 2040-01-01, millisecond precision.
    (946_684_800_000i64..2_208_988_800_000i64).prop_map(|ms| Utc.timestamp_millis_opt(ms).unwrap())
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[a-z0-9 ]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn skew_formula_holds(ts in arb_time(), skew_ms in -86_400_000i64..86_400_000, delay_ms in 0i64..600_000) {
        // A device whose clock is off by `skew_ms` sends after `delay_ms`.
        let sent = ts + Duration::milliseconds(delay_ms);
        let received = sent - Duration::milliseconds(skew_ms);
        let mut m = serde_json::Map::new();
        m.insert("userId".into(), json!("u"));
        m.insert("event".into(), json!("e"));
        m.insert("timestamp".into(), json!(format_timestamp(&ts)));
        m.insert("sentAt".into(), json!(format_timestamp(&sent)));
        let c = Context { received_at: received, received_at_text: None, client_ip: None, collect_ip: false };
        let text = serde_json::to_string(&m).unwrap();
        let obj = crate::raw::RawObject::parse(&text).unwrap();
        let ev = normalize::normalize_event(Some(CallType::Track), obj, None, &c, &Limits::default()).unwrap();
        let corrected = parse_timestamp(ev.body()["timestamp"].as_str().unwrap()).unwrap();
        prop_assert_eq!(corrected, received - (sent - ts));
        prop_assert_eq!(corrected, ts - Duration::milliseconds(skew_ms));
    }

    #[test]
    fn format_parse_round_trip(t in arb_time()) {
        prop_assert_eq!(parse_timestamp(&format_timestamp(&t)), Some(t));
    }

    #[test]
    fn nulls_never_survive_and_unknown_fields_do(extra in prop::collection::btree_map("x[a-z]{1,5}", arb_json(), 0..5)) {
        let mut body = json!({"userId": "u", "event": "e", "anonymousId": null, "name": null});
        for (k, v) in &extra { body[k] = v.clone(); }
        let ev = single(CallType::Track, body).unwrap();
        for (k, v) in ev.body().iter() { prop_assert!(!v.is_null(), "{} is null", k); }
        for (k, v) in &extra {
            if !v.is_null() { prop_assert_eq!(&ev.body()[k], v); }
        }
    }

    #[test]
    fn envelope_context_fills_only_missing_keys(
        item in prop::collection::btree_map("[a-d]", arb_json(), 0..4),
        env in prop::collection::btree_map("[a-d]", arb_json(), 0..4),
    ) {
        let body = json!({"context": env.clone(), "batch": [{"type": "identify", "userId": "u", "context": item.clone()}]});
        let out = run(Endpoint::Batch, &body).unwrap();
        let ctx = out.accepted[0].body().get("context").cloned().unwrap_or(json!({}));
        for (k, v) in &item {
            if !v.is_null() { prop_assert!(ctx.get(k).is_some(), "item key {} lost", k); }
            if !v.is_null() && !v.is_object() { prop_assert_eq!(&ctx[k], v); }
        }
        for (k, v) in &env {
            if !v.is_null() && item.get(k).is_none_or(|iv| iv.is_null()) { prop_assert_eq!(&ctx[k], v); }
        }
    }

    #[test]
    fn any_json_body_is_answered_without_panic(v in arb_json(), batch in any::<bool>()) {
        let endpoint = if batch { Endpoint::Batch } else { Endpoint::Single(CallType::Track) };
        let wrapped = if batch { json!({"batch": [v.clone(), v.clone()]}) } else { v };
        let _ = run(endpoint, &wrapped);
    }
}

#[test]
fn fields_keep_their_order_escapes_and_last_repeat() {
    let body = r#"{"zeta":1,"userId":"a","event":"E","we\"ird":{"k":[1,2]},"userId":"b","alpha":"\u00e9"}"#;
    let limits = Limits::default();
    let doc = parse(Endpoint::Single(CallType::Track), body.as_bytes(), &limits).unwrap();
    let out = normalize::normalize_document(Some(CallType::Track), doc, &ctx(), &limits).unwrap();
    let ev = &out.accepted[0];
    let text = std::str::from_utf8(&ev.json).unwrap();
    assert!(text.starts_with(r#"{"zeta":1,"#), "{text}");
    assert!(text.contains(r#""we\"ird":{"k":[1,2]}"#), "{text}");
    assert!(
        text.contains(r#""alpha":"\u00e9""#),
        "raw values are copied as sent: {text}"
    );
    let body = ev.body();
    assert_eq!(body["userId"], "b");
    assert_eq!(ev.user_key, "b");
    assert_eq!(body["alpha"], "é");
    assert_eq!(text.matches("\"userId\"").count(), 1);
}

#[test]
fn numbers_too_large_for_f64_are_refused_not_stored() {
    // Found by the ingest fuzz target: raw values are copied through, so a number no
    // JSON reader of ours can parse back must be refused up front.
    let limits = Limits::default();
    let single = br#"{"userId":"u","event":"E","properties":{"a":[1,9e99999999]}}"#;
    let err = parse(Endpoint::Single(CallType::Track), single, &limits).unwrap_err();
    assert_eq!(
        (err.code(), err.field()),
        ("invalid_number", Some("properties"))
    );
    assert!(err.to_string().contains("9e99999999"), "{err}");
    let out = run(
        Endpoint::Batch,
        &serde_json::from_str::<Value>(
            r#"{"batch":[{"type":"track","userId":"u","event":"ok","messageId":"fine","properties":{"x":1.5e300}},
                         {"type":"track","userId":"u","event":"E","messageId":"m2","properties":{"n":1}}]}"#,
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(out.accepted.len(), 2);
    let body = r#"{"batch":[{"type":"track","userId":"u","event":"E","messageId":"big","properties":{"n":1e999}},{"type":"identify","userId":"u"}]}"#;
    let doc = parse(Endpoint::Batch, body.as_bytes(), &limits).unwrap();
    let out = normalize::normalize_document(None, doc, &ctx(), &limits).unwrap();
    assert_eq!(out.accepted.len(), 1);
    assert_eq!(out.rejected[0].error.code, "invalid_number");
    assert_eq!(out.rejected[0].message_id.as_deref(), Some("big"));
}

/// `properties` nested so that the event is `depth` levels deep (the event is level 1).
fn nested_event(depth: usize) -> String {
    let inner = depth - 2; // the properties object is level 2
    format!(
        r#"{{"type":"track","userId":"u","event":"E","properties":{{"a":{}1{}}}}}"#,
        "[".repeat(inner),
        "]".repeat(inner)
    )
}

#[test]
fn nesting_beyond_the_limit_is_refused_everywhere_and_at_the_limit_reads_back() {
    let limits = Limits::default();
    let ok = nested_event(raw::MAX_DEPTH);
    let deep = nested_event(raw::MAX_DEPTH + 1);
    // Single calls.
    let doc = parse(Endpoint::Single(CallType::Track), ok.as_bytes(), &limits).unwrap();
    let out = normalize::normalize_document(Some(CallType::Track), doc, &ctx(), &limits).unwrap();
    let back: Value = serde_json::from_slice(&out.accepted[0].json).unwrap();
    assert_eq!(
        back["properties"],
        serde_json::from_str::<Value>(&ok).unwrap()["properties"]
    );
    let err = parse(Endpoint::Single(CallType::Track), deep.as_bytes(), &limits).unwrap_err();
    assert_eq!(
        (err.code(), err.field(), err.status()),
        ("too_deep", Some("properties"), 400)
    );
    assert!(
        err.to_string().contains("\"properties\"") && err.to_string().contains("64"),
        "{err}"
    );
    // 200 levels: what serde_json itself cannot read.
    let very = nested_event(200);
    assert_eq!(
        parse(Endpoint::Single(CallType::Track), very.as_bytes(), &limits)
            .unwrap_err()
            .code(),
        "too_deep"
    );
    // Batch items: the deep one is refused, its neighbour kept.
    let body = format!(r#"{{"batch":[{very},{ok}]}}"#);
    let doc = parse(Endpoint::Batch, body.as_bytes(), &limits).unwrap();
    let out = normalize::normalize_document(None, doc, &ctx(), &limits).unwrap();
    assert_eq!(out.accepted.len(), 1);
    assert_eq!(out.rejected[0].error.code, "too_deep");
    assert_eq!(out.rejected[0].index, 0);
    // The envelope's context lands one level below the item's top.
    let ctx_ok = format!(
        "{}1{}",
        "[".repeat(raw::MAX_DEPTH - 2),
        "]".repeat(raw::MAX_DEPTH - 2)
    );
    let body = format!(
        r#"{{"batch":[{{"type":"track","userId":"u","event":"E"}}],"context":{{"a":{ctx_ok}}}}}"#
    );
    let doc = parse(Endpoint::Batch, body.as_bytes(), &limits).unwrap();
    let out = normalize::normalize_document(None, doc, &ctx(), &limits).unwrap();
    serde_json::from_slice::<Value>(&out.accepted[0].json).unwrap();
    let body = format!(
        r#"{{"batch":[{{"type":"track","userId":"u","event":"E"}}],"context":{{"a":[{ctx_ok}]}}}}"#
    );
    let err = parse(Endpoint::Batch, body.as_bytes(), &limits).unwrap_err();
    assert_eq!((err.code(), err.field()), ("too_deep", Some("context")));
}

#[test]
fn lone_surrogates_are_refused_and_pairs_kept() {
    let limits = Limits::default();
    for (escape, ok) in [
        (r"\ud800", false),
        (r"\uDBFF", false),
        (r"\udc00", false),
        (r"\ud800\u0041", false),
        (r"x\ud83d", false),
        (r"\ud83d\ude00", true),
        (r"\\ud800", true), // an escaped backslash, then plain text
        (r"\u00e9", true),
    ] {
        let body = format!(r#"{{"userId":"u","event":"E","properties":{{"s":"{escape}"}}}}"#);
        let res = parse(Endpoint::Single(CallType::Track), body.as_bytes(), &limits);
        match (ok, res) {
            (true, Ok(doc)) => {
                let out =
                    normalize::normalize_document(Some(CallType::Track), doc, &ctx(), &limits)
                        .unwrap();
                let back: Value = serde_json::from_slice(&out.accepted[0].json).unwrap();
                let sent: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(back["properties"], sent["properties"], "{escape}");
            }
            (false, Err(e)) => {
                assert_eq!(
                    (e.code(), e.field()),
                    ("invalid_string", Some("properties")),
                    "{escape}"
                );
                assert!(e.to_string().contains("surrogate"), "{e}");
            }
            (ok, res) => panic!("{escape}: expected ok={ok}, got {res:?}"),
        }
    }
    // A batch item and the envelope's context alike.
    let body = r#"{"batch":[{"type":"track","userId":"u","event":"\ud800"},{"type":"track","userId":"u","event":"E"}]}"#;
    let doc = parse(Endpoint::Batch, body.as_bytes(), &limits).unwrap();
    let out = normalize::normalize_document(None, doc, &ctx(), &limits).unwrap();
    assert_eq!(out.accepted.len(), 1);
    assert_eq!(out.rejected[0].error.code, "invalid_string");
    assert_eq!(out.rejected[0].error.field, Some("event"));
    let body = r#"{"batch":[],"context":{"s":"\udfff"}}"#;
    let err = parse(Endpoint::Batch, body.as_bytes(), &limits).unwrap_err();
    assert_eq!(
        (err.code(), err.field()),
        ("invalid_string", Some("context"))
    );
}

#[test]
fn the_envelope_cannot_grow_events_past_the_limits() {
    let limits = Limits::default();
    // An envelope context larger than an event may be is refused before any item is built.
    let big = "x".repeat(limits.max_event_bytes);
    let body = format!(
        r#"{{"batch":[{{"type":"track","userId":"u","event":"E"}}],"context":{{"pad":"{big}"}}}}"#
    );
    let err = parse(Endpoint::Batch, body.as_bytes(), &limits).unwrap_err();
    assert_eq!(
        (err.code(), err.field(), err.status()),
        ("event_too_large", Some("context"), 400)
    );
    // Within the limit alone, but not with the item's own properties: the item is refused.
    let pad = "y".repeat(limits.max_event_bytes / 2 + 1000);
    let body = format!(
        r#"{{"batch":[{{"type":"track","userId":"u","event":"E","properties":{{"p":"{pad}"}}}},{{"type":"track","userId":"u","event":"small"}}],"context":{{"pad":"{pad}"}}}}"#
    );
    let doc = parse(Endpoint::Batch, body.as_bytes(), &limits).unwrap();
    let out = normalize::normalize_document(None, doc, &ctx(), &limits).unwrap();
    assert_eq!(out.rejected.len(), 1);
    assert_eq!(out.rejected[0].error.code, "event_too_large");
    assert!(out.rejected[0].error.message.contains("as stored"));
    assert_eq!(out.accepted.len(), 1);
    assert!(out.accepted[0].json.len() <= limits.max_stored_event_bytes());
    // Thousands of tiny items under a large context: the request's events as stored stop
    // at the stated bound, and the rest are refused one by one.
    let pad = "z".repeat(20_000);
    let items = vec![r#"{"type":"track","userId":"u","event":"E"}"#; 2000].join(",");
    let body = format!(r#"{{"batch":[{items}],"context":{{"pad":"{pad}"}}}}"#);
    assert!(body.len() < limits.max_batch_bytes);
    let doc = parse(Endpoint::Batch, body.as_bytes(), &limits).unwrap();
    let out = normalize::normalize_document(None, doc, &ctx(), &limits).unwrap();
    let stored: usize = out.accepted.iter().map(|e| e.json.len()).sum();
    assert!(stored <= limits.max_stored_request_bytes(), "{stored}");
    assert!(!out.accepted.is_empty());
    assert_eq!(out.accepted.len() + out.rejected.len(), 2000);
    assert!(out
        .rejected
        .iter()
        .all(|r| r.error.code == "batch_too_large"));
}

/// JSON text as hostile clients write it: deep nesting around the limit, surrogate
/// escapes (paired and lone), numbers at and past an f64's range, escapes of every kind.
fn hostile_value(depth: u32) -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        Just("1".to_string()),
        Just("-0.0".to_string()),
        Just("1e308".to_string()),
        Just("1e309".to_string()),
        Just("123456789012345678901234567890".to_string()),
        Just(r#""\ud83d\ude00""#.to_string()),
        Just(r#""\ud800""#.to_string()),
        Just(r#""\udc00x""#.to_string()),
        Just(r#""\\ud800""#.to_string()),
        Just(r#""\u0000\n\t\"\/""#.to_string()),
        "[a-zé€😀]{0,6}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        (50usize..70).prop_map(|n| format!("{}0{}", "[".repeat(n), "]".repeat(n))),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    prop_oneof![
        3 => leaf,
        1 => prop::collection::vec(hostile_value(depth - 1), 0..3).prop_map(|v| format!("[{}]", v.join(","))),
        1 => prop::collection::vec(("[a-z]{1,3}", hostile_value(depth - 1)), 0..3).prop_map(|v| {
            let m: Vec<String> = v.into_iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", m.join(","))
        }),
    ]
    .boxed()
}

proptest! {
    /// Whatever ingest accepts, every reader can parse back, equal to what was sent;
    /// whatever it refuses, it refuses with one of the readability codes.
    #[test]
    fn every_accepted_event_reads_back_equal(props in hostile_value(3), batch in any::<bool>()) {
        let limits = Limits::default();
        let item = format!(r#"{{"type":"track","userId":"u","event":"E","properties":{{"p":{props}}}}}"#);
        let (endpoint, body) = if batch {
            (Endpoint::Batch, format!(r#"{{"batch":[{item}]}}"#))
        } else {
            (Endpoint::Single(CallType::Track), item.clone())
        };
        let sent: Result<Value, _> = serde_json::from_str(&item);
        let outcome = parse(endpoint, body.as_bytes(), &limits)
            .and_then(|doc| normalize::normalize_document(endpoint.call(), doc, &ctx(), &limits));
        let accepted = match outcome {
            Ok(mut o) if !o.accepted.is_empty() => Some(o.accepted.remove(0)),
            Ok(o) => {
                prop_assert!(["too_deep", "invalid_string", "invalid_number"].contains(&o.rejected[0].error.code));
                None
            }
            Err(e) => {
                prop_assert!(["too_deep", "invalid_string", "invalid_number"].contains(&e.code()), "{}", e);
                None
            }
        };
        match accepted {
            Some(ev) => {
                let back: Value = serde_json::from_slice(&ev.json).expect("an accepted event reads back");
                prop_assert_eq!(&back["properties"], &sent.expect("what was accepted parses")["properties"]);
            }
            // Refused: a reader could not have parsed it at serde_json's own limit, or
            // it nests past ours.
            None => {
                let opens = item.bytes().filter(|b| *b == b'[' || *b == b'{').count();
                prop_assert!(sent.is_err() || opens > raw::MAX_DEPTH);
            }
        }
    }
}
