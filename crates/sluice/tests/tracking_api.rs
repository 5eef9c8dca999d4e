//! End-to-end tests of the Tracking API against the real binary.

mod common;

use common::{basic, gzip, Server};
use serde_json::{json, Value};

const WEB: &str = r#"
admin_token = "test-admin-token"
[[sources]]
name = "web"
write_key = "wk_web_123"
[[sources]]
name = "off"
write_key = "wk_off"
enabled = false
"#;

#[test]
fn every_path_and_alias_stores_events_with_the_right_type() {
    let s = Server::start(Some(WEB));
    let singles = [
        (
            "identify",
            "identify",
            json!({"userId": "u1", "traits": {"email": "a@b.c"}}),
        ),
        ("i", "identify", json!({"userId": "u1"})),
        ("track", "track", json!({"userId": "u1", "event": "E"})),
        ("t", "track", json!({"userId": "u1", "event": "E"})),
        ("page", "page", json!({"anonymousId": "a1", "name": "Home"})),
        ("p", "page", json!({"anonymousId": "a1"})),
        (
            "screen",
            "screen",
            json!({"anonymousId": "a1", "name": "Main"}),
        ),
        ("s", "screen", json!({"anonymousId": "a1"})),
        ("group", "group", json!({"userId": "u1", "groupId": "g1"})),
        ("g", "group", json!({"userId": "u1", "groupId": "g1"})),
        (
            "alias",
            "alias",
            json!({"userId": "u1", "previousId": "a1"}),
        ),
        ("a", "alias", json!({"userId": "u1", "previousId": "a1"})),
    ];
    for (i, (path, _, body)) in singles.iter().enumerate() {
        let mut body = body.clone();
        body["messageId"] = json!(format!("single-{i}"));
        let r = s.send(&format!("/v1/{path}"), &body);
        assert_eq!(r.status, 200, "/v1/{path}: {}", r.body);
        assert_eq!(r.body["accepted"], 1);
    }
    // An escaped path is served by the router rather than the listener's direct path
    // (`tracking::direct_ingest_kind`), by the same handler: same answer, same event.
    let r = s.request(
        "POST",
        "/v1/tr%61ck",
        &[("Origin", "https://shop.example.com")],
        Some(br#"{"writeKey":"wk_web_123","userId":"u1","event":"E","messageId":"escaped"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["accepted"], 1);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example.com")
    );
    for (i, path) in ["batch", "b", "import"].iter().enumerate() {
        let r = s.send(
            &format!("/v1/{path}"),
            &json!({"batch": [{"type": "track", "event": "B", "userId": "u2", "messageId": format!("batch-{i}")}]}),
        );
        assert_eq!(r.status, 200, "/v1/{path}: {}", r.body);
    }
    let events = s.events("web", 100);
    assert_eq!(events.len(), singles.len() + 4);
    let escaped = events.iter().find(|e| e["messageId"] == "escaped");
    assert_eq!(escaped.expect("stored")["type"], "track");
    for (i, (_, ty, _)) in singles.iter().enumerate() {
        let e = events
            .iter()
            .find(|e| e["messageId"] == format!("single-{i}"))
            .expect("stored");
        assert_eq!(e["type"], *ty);
        assert!(e["receivedAt"].is_string() && e["timestamp"].is_string());
    }
    assert_eq!(s.send("/v1/nope", &json!({})).status, 404);
}

#[test]
fn authentication_by_header_or_body_and_its_errors() {
    let s = Server::start(Some(WEB));
    let body = br#"{"userId":"u","event":"E"}"#;
    let with_colon = basic("wk_web_123");
    let no_colon = {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("wk_web_123")
        )
    };
    for auth in [&with_colon, &no_colon] {
        let r = s.request("POST", "/v1/track", &[("Authorization", auth)], Some(body));
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = s.request(
        "POST",
        "/v1/track",
        &[],
        Some(br#"{"userId":"u","event":"E","writeKey":"wk_web_123"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = s.request(
        "POST",
        "/v1/batch",
        &[("Authorization", "Bearer some-oauth-token")],
        Some(br#"{"writeKey":"wk_web_123","batch":[{"type":"track","userId":"u","event":"E"}]}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);

    let r = s.request("POST", "/v1/track", &[], Some(body));
    r.assert_error(401, "missing_write_key");
    let r = s.request(
        "POST",
        "/v1/track",
        &[("Authorization", &basic("nope"))],
        Some(body),
    );
    r.assert_error(401, "unknown_write_key");
    let r = s.request(
        "POST",
        "/v1/track",
        &[],
        Some(br#"{"userId":"u","event":"E","writeKey":"nope"}"#),
    );
    r.assert_error(401, "unknown_write_key");
    let r = s.request(
        "POST",
        "/v1/track",
        &[("Authorization", &basic("wk_off"))],
        Some(body),
    );
    r.assert_error(403, "source_disabled");
    let r = s.request(
        "POST",
        "/v1/track",
        &[("Authorization", "Basic %%%")],
        Some(body),
    );
    r.assert_error(401, "invalid_authorization");
    assert_eq!(s.events("web", 100).len(), 4);
    assert_eq!(s.events("off", 100).len(), 0);
}

#[test]
fn any_content_type_gzip_and_chunked_bodies() {
    let s = Server::start(Some(WEB));
    let auth = basic("wk_web_123");
    let body = br#"{"userId":"u","event":"Plain","messageId":"plain"}"#;
    let r = s.request(
        "POST",
        "/v1/t",
        &[("Authorization", &auth), ("Content-Type", "text/plain")],
        Some(body),
    );
    assert_eq!(r.status, 200);
    let batch =
        br#"{"batch":[{"type":"track","userId":"u","event":"Zipped","messageId":"zipped"}]}"#;
    let r = s.request(
        "POST",
        "/v1/batch",
        &[("Authorization", &auth), ("Content-Encoding", "gzip")],
        Some(&gzip(batch)),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // A reader body without a length goes out with Transfer-Encoding: chunked.
    let resp = ureq::post(&format!("{}/v1/batch", s.url))
        .set("Authorization", &auth)
        .set("Content-Encoding", "gzip")
        .send(std::io::Cursor::new(gzip(
            br#"{"batch":[{"type":"track","userId":"u","event":"Chunked","messageId":"chunked"}]}"#,
        )))
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ids: Vec<Value> = s
        .events("web", 10)
        .iter()
        .map(|e| e["messageId"].clone())
        .collect();
    assert_eq!(ids, [json!("chunked"), json!("zipped"), json!("plain")]);
    let r = s.request(
        "POST",
        "/v1/t",
        &[("Authorization", &auth), ("Content-Encoding", "br")],
        Some(body),
    );
    r.assert_error(415, "unsupported_encoding");
    let r = s.request(
        "POST",
        "/v1/t",
        &[("Authorization", &auth), ("Content-Encoding", "gzip")],
        Some(body),
    );
    r.assert_error(400, "invalid_gzip");
}

#[test]
fn cors_preflight_and_analytics_js_settings() {
    let s = Server::start(Some(WEB));
    let r = s.request(
        "OPTIONS",
        "/v1/t",
        &[
            ("Origin", "https://shop.example.com"),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization,content-type",
            ),
        ],
        None,
    );
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example.com")
    );
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("authorization,content-type")
    );
    assert!(r
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    let r = s.request(
        "POST",
        "/v1/t",
        &[
            ("Origin", "https://shop.example.com"),
            ("Content-Type", "text/plain"),
        ],
        Some(br#"{"writeKey":"wk_web_123","anonymousId":"a","event":"E"}"#),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example.com")
    );
    // Refusals carry the header too, or the browser hides their reason from the page.
    let r = s.request(
        "POST",
        "/v1/t",
        &[("Origin", "https://shop.example.com")],
        Some(br#"{"writeKey":"wk_wrong","anonymousId":"a","event":"E"}"#),
    );
    r.assert_error(401, "unknown_write_key");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example.com")
    );
    assert_eq!(r.header("vary"), Some("Origin"));

    let r = s.request("GET", "/v1/projects/wk_web_123/settings", &[], None);
    assert_eq!(r.status, 200);
    let host = s.url.trim_start_matches("http://");
    let seg = &r.body["integrations"]["Segment.io"];
    assert_eq!(seg["apiKey"], "wk_web_123");
    assert_eq!(seg["apiHost"], format!("{host}/v1"));
    assert_eq!(seg["protocol"], "http");
    assert_eq!(
        s.request("GET", "/v1/projects/unknown/settings", &[], None)
            .status,
        404
    );
}

#[test]
fn bad_bodies_get_precise_errors_and_are_recorded() {
    let s = Server::start(Some(&format!(
        "{WEB}\n[limits]\nmax_event_bytes = 2000\nmax_batch_bytes = 20000\nmax_batch_events = 3\nmax_request_bytes = 50000\n"
    )));
    let auth = basic("wk_web_123");
    let post =
        |path: &str, body: &[u8]| s.request("POST", path, &[("Authorization", &auth)], Some(body));

    let r = post("/v1/track", b"{not json");
    r.assert_error(400, "invalid_json");
    assert!(r.body["message"].as_str().unwrap().contains("line 1"));
    let r = post("/v1/track", b"[1,2]");
    r.assert_error(400, "invalid_json");
    let r = post("/v1/track", br#"{"userId":"u"}"#);
    assert_eq!(
        (r.status, r.body["code"].as_str(), r.body["field"].as_str()),
        (400, Some("missing_event"), Some("event"))
    );
    let r = post("/v1/identify", br#"{"traits":{}}"#);
    r.assert_error(400, "no_user_anon_id");
    let r = post("/v1/batch", br#"{"batch":{}}"#);
    assert_eq!((r.status, r.body["field"].as_str()), (400, Some("batch")));

    let big_event = format!(r#"{{"userId":"u","event":"{}"}}"#, "x".repeat(3000));
    let r = post("/v1/track", big_event.as_bytes());
    assert_eq!(
        (r.status, r.body["code"].as_str(), r.body["limit"].as_u64()),
        (400, Some("event_too_large"), Some(2000))
    );
    let big_batch = format!(r#"{{"batch":[],"pad":"{}"}}"#, "x".repeat(30_000));
    let r = post("/v1/batch", big_batch.as_bytes());
    assert_eq!(
        (r.status, r.body["code"].as_str(), r.body["limit"].as_u64()),
        (400, Some("batch_too_large"), Some(20000))
    );
    let huge = vec![b' '; 60_000];
    let r = post("/v1/batch", &huge);
    r.assert_error(413, "request_too_large");
    // A gzip bomb: small on the wire, over the hard cap once inflated.
    let bomb = gzip(&vec![b' '; 500_000]);
    assert!(bomb.len() < 5_000);
    let r = s.request(
        "POST",
        "/v1/batch",
        &[("Authorization", &auth), ("Content-Encoding", "gzip")],
        Some(&bomb),
    );
    r.assert_error(413, "request_too_large");

    // A batch with invalid items: the valid ones are stored, the others listed.
    let r = s.send(
        "/v1/batch",
        &json!({"batch": [
            {"type": "track", "userId": "u", "event": "ok1", "messageId": "ok1"},
            {"type": "track", "userId": "u", "messageId": "bad1"},
            {"type": "identify", "userId": "u", "messageId": "ok2"},
            {"type": "track", "userId": "u", "event": "over", "messageId": "over-limit"}
        ]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["accepted"], 2);
    let rej = r.body["rejected"].as_array().unwrap();
    assert_eq!(rej.len(), 2);
    assert_eq!(
        (
            rej[0]["index"].as_u64(),
            rej[0]["messageId"].as_str(),
            rej[0]["code"].as_str()
        ),
        (Some(1), Some("bad1"), Some("missing_event"))
    );
    assert_eq!(
        (rej[1]["index"].as_u64(), rej[1]["code"].as_str()),
        (Some(3), Some("batch_too_many_events"))
    );
    let stored: Vec<Value> = s
        .events("web", 10)
        .iter()
        .map(|e| e["messageId"].clone())
        .collect();
    assert_eq!(stored, [json!("ok2"), json!("ok1")]);

    let rejected = s.admin("/sources/web/rejected?limit=50");
    assert_eq!(rejected.status, 200);
    let codes: Vec<&str> = rejected.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    for c in [
        "batch_too_many_events",
        "missing_event",
        "request_too_large",
        "batch_too_large",
        "event_too_large",
        "no_user_anon_id",
        "invalid_json",
    ] {
        assert!(codes.contains(&c), "{c} not recorded in {codes:?}");
    }
    let bad1 = rejected.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["messageId"] == "bad1")
        .unwrap();
    assert_eq!(bad1["index"], 1);
    assert!(bad1["raw"].as_str().unwrap().contains("bad1"));
}

#[test]
fn duplicates_are_acknowledged_but_stored_once() {
    let s = Server::start(Some(WEB));
    let ev = json!({"userId": "u", "event": "E", "messageId": "same-id"});
    let first = s.send("/v1/track", &ev);
    assert_eq!(
        (
            first.body["accepted"].as_u64(),
            first.body["duplicates"].as_u64()
        ),
        (Some(1), Some(0))
    );
    let again = s.send("/v1/track", &ev);
    assert_eq!(again.status, 200);
    assert_eq!(
        (
            again.body["accepted"].as_u64(),
            again.body["duplicates"].as_u64()
        ),
        (Some(0), Some(1))
    );
    let in_batch = s.send(
        "/v1/batch",
        &json!({"batch": [
            {"type": "track", "userId": "u", "event": "E", "messageId": "same-id"},
            {"type": "track", "userId": "u", "event": "E", "messageId": "other"},
            {"type": "track", "userId": "u", "event": "E", "messageId": "other"}
        ]}),
    );
    assert_eq!(
        (
            in_batch.body["accepted"].as_u64(),
            in_batch.body["duplicates"].as_u64()
        ),
        (Some(1), Some(2))
    );
    assert_eq!(s.events("web", 10).len(), 2);
    let metrics = s.request("GET", "/metrics", &[], None).body;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("sluice_events_duplicate_total{source=\"web\"} 3"),
        "{metrics}"
    );
}

#[test]
fn normalisation_end_to_end() {
    let s = Server::start(Some(WEB));
    let r = s.send(
        "/v1/batch",
        &json!({
            "sentAt": "2020-01-01T00:00:10.000Z",
            "context": {"library": {"name": "test"}},
            "integrations": {"All": false},
            "batch": [{"type": "track", "event": "Skewed", "userId": 42, "anonymousId": null,
                       "timestamp": "2020-01-01T00:00:00.000Z", "messageId": "skew",
                       "context": {"direct": true}, "customTopLevel": {"kept": true}}]
        }),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let e = &s.events("web", 1)[0];
    assert_eq!(e["userId"], "42");
    assert!(e.get("anonymousId").is_none());
    assert_eq!(e["originalTimestamp"], "2020-01-01T00:00:00.000Z");
    assert_eq!(e["sentAt"], "2020-01-01T00:00:10.000Z");
    assert_eq!(e["context"]["library"]["name"], "test");
    assert_eq!(e["context"]["ip"], "127.0.0.1");
    assert_eq!(e["integrations"]["All"], false);
    assert_eq!(e["customTopLevel"]["kept"], true);
    // timestamp = receivedAt - (sentAt - originalTimestamp) = receivedAt - 10 s
    let parse = |v: &Value| sluice_spec::time::parse_timestamp(v.as_str().unwrap()).unwrap();
    assert_eq!(
        (parse(&e["receivedAt"]) - parse(&e["timestamp"])).num_milliseconds(),
        10_000
    );
}

#[test]
fn rate_limited_source_gets_429_with_retry_after() {
    let s = Server::start(Some(
        r#"
[[sources]]
name = "slow"
write_key = "wk_slow"
rate_limit = { events_per_second = 1, burst = 3 }
"#,
    ));
    let auth = basic("wk_slow");
    let batch = |n: usize| {
        let items: Vec<Value> = (0..n)
            .map(|i| json!({"type": "track", "userId": "u", "event": format!("e{i}")}))
            .collect();
        serde_json::to_vec(&json!({"batch": items})).unwrap()
    };
    let r = s.request(
        "POST",
        "/v1/batch",
        &[("Authorization", &auth)],
        Some(&batch(3)),
    );
    assert_eq!(r.status, 200);
    let r = s.request(
        "POST",
        "/v1/batch",
        &[("Authorization", &auth)],
        Some(&batch(3)),
    );
    r.assert_error(429, "rate_limited");
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3).contains(&wait), "{wait}");
    assert!(r.header("x-ratelimit-reset").is_some());
    assert_eq!(s.events("slow", 10).len(), 3);
}

#[test]
fn full_log_answers_503_and_never_acknowledges_unstored_events() {
    let s = Server::start(Some(&format!("{WEB}\n[log]\nmax_size_mb = 1\n")));
    let mut acked = Vec::new();
    let mut saw_503 = false;
    // Random hex: the log compresses payloads, so the padding must not compress.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut pad = || common::noise(&mut seed, 1500);
    for round in 0..200 {
        let items: Vec<Value> = (0..20)
            .map(|i| json!({"type": "track", "userId": "u", "event": "Fill", "messageId": format!("fill-{round}-{i}"),
                            "properties": {"pad": pad()}}))
            .collect();
        let r = s.send("/v1/batch", &json!({"batch": items}));
        match r.status {
            200 => acked.extend((0..20).map(|i| format!("fill-{round}-{i}"))),
            503 => {
                assert!(r.header("retry-after").is_some());
                assert_eq!(r.body["code"], "unavailable");
                saw_503 = true;
                break;
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert!(saw_503, "a 1 MB log never filled");
    let stored: std::collections::HashSet<String> = s
        .events("web", 1000)
        .iter()
        .map(|e| e["messageId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(stored.len(), acked.len());
    for id in &acked {
        assert!(
            stored.contains(id),
            "{id} was acknowledged but is not stored"
        );
    }
    // Health stays up; readiness fails: the node would refuse every event.
    assert_eq!(s.request("GET", "/healthz", &[], None).status, 200);
    s.request("GET", "/readyz", &[], None)
        .assert_error(503, "storage_full");
}
