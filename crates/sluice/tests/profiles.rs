//! Profiles end to end against the real binary: the Profile API's contract (shapes,
//! pagination, errors, authentication), regulations (suppression at ingest, deletion
//! everywhere in the data directory and at destinations).

mod common;

use std::time::Duration;

use common::receiver::Receiver;
use common::{basic, hmac_hex, Server};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "pat_profile_reader_1";

fn config(extra: &str) -> String {
    format!(
        r#"
admin_token = "test-admin-token"
[[sources]]
name = "web"
write_key = "wk_web_123"
[profiles]
access_tokens = ["{TOKEN}"]
{extra}
"#
    )
}

fn profile_get(s: &Server, path: &str, auth: Option<&str>) -> common::Reply {
    let header = auth.map(basic);
    let headers: Vec<(&str, &str)> = header
        .as_deref()
        .map(|h| vec![("Authorization", h)])
        .unwrap_or_default();
    s.request(
        "GET",
        &format!("/v1/spaces/default/collections/{path}"),
        &headers,
        None,
    )
}

/// Re-reads a Profile API resource until `done` holds (every 20 ms).
fn profile_until(s: &Server, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let r = profile_get(s, path, Some(TOKEN));
        if r.status == 200 && done(&r.body) {
            return r.body;
        }
        if std::time::Instant::now() > deadline {
            panic!("gave up waiting for {what}: {} {}", r.status, r.body);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn batch(s: &Server, items: Value) {
    let r = s.send("/v1/batch", &json!({ "batch": items }));
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Waits until a regulation is finished (in any way); its whole answer.
fn finished(s: &Server, id: &str) -> Value {
    s.admin_until(&format!("/regulations/{id}"), "the regulation", WAIT, |b| {
        let st = b["data"]["regulation"]["overallStatus"]
            .as_str()
            .unwrap_or("");
        st != "INITIALIZED" && st != "RUNNING"
    })
}

/// `sluice_profile_lag_events{partition="0"}` as `/metrics` shows it now.
fn lag_gauge(s: &Server) -> Option<u64> {
    let text = s.request("GET", "/metrics", &[], None).body;
    text.as_str()?
        .lines()
        .find_map(|l| l.strip_prefix("sluice_profile_lag_events{partition=\"0\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Re-reads the lag gauge until it shows `want` (every 20 ms).
fn lag_until(s: &Server, want: u64) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let got = lag_gauge(s);
        if got == Some(want) {
            return;
        }
        if std::time::Instant::now() > deadline {
            panic!("the lag gauge shows {got:?}, never {want}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_lag_gauge_counts_what_the_consumer_could_not_file() {
    let s = Server::start(Some(&config("")));
    lag_until(&s, 0);
    // The test holds the profile store's write lock: the consumer reads the events but
    // cannot file them (as when other processes leave its idle-class threads no CPU).
    let store = rusqlite::Connection::open(s.data_dir.join("profiles.sqlite")).unwrap();
    store.execute_batch("BEGIN IMMEDIATE").unwrap();
    let items: Vec<Value> = (0..25)
        .map(|i| json!({"type": "identify", "userId": format!("lag-{i}"), "traits": {"n": i}}))
        .collect();
    batch(&s, json!(items));
    lag_until(&s, 25);
    store.execute_batch("ROLLBACK").unwrap();
    drop(store);
    lag_until(&s, 0);
    let r = profile_get(&s, "users/profiles/user_id:lag-24/traits", Some(TOKEN));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["traits"]["n"], 24, "{}", r.body);
}

#[test]
fn profile_api_contract() {
    let s = Server::start(Some(&config("")));
    let mut traits = serde_json::Map::new();
    for i in 0..14 {
        traits.insert(format!("t{i:02}"), json!(i));
    }
    traits.insert("email".into(), json!("Ann@Example.com"));
    traits.insert("plan".into(), json!("pro"));
    batch(
        &s,
        json!([
            {"type": "page", "messageId": "p-1", "anonymousId": "anon-1", "name": "Home",
             "timestamp": "2026-01-01T10:00:00Z"},
            {"type": "identify", "messageId": "i-1", "anonymousId": "anon-1", "userId": "ann",
             "traits": traits, "timestamp": "2026-01-01T10:01:00Z"},
            {"type": "track", "messageId": "t-1", "userId": "ann", "event": "Cart Viewed",
             "timestamp": "2026-01-01T10:02:00Z"},
            {"type": "track", "messageId": "t-2", "userId": "ann", "event": "Order Completed",
             "properties": {"revenue": 42}, "timestamp": "2026-01-01T10:03:00Z"},
            {"type": "group", "messageId": "g-1", "userId": "ann", "groupId": "acme",
             "traits": {"name": "Acme", "industry": "Anvils"}, "timestamp": "2026-01-01T10:04:00Z"},
        ]),
    );
    let first = profile_until(
        &s,
        "users/profiles/user_id:ann/traits?limit=10",
        "ann's traits",
        |b| b["traits"].as_object().is_some_and(|t| t.len() == 10),
    );
    // 16 traits, pages of 10, in key order, with a cursor to the rest.
    assert_eq!(first["cursor"]["has_more"], true, "{first}");
    assert_eq!(first["cursor"]["limit"], 10);
    let next = first["cursor"]["next"].as_str().unwrap().to_string();
    let second = profile_get(
        &s,
        &format!("users/profiles/user_id:ann/traits?limit=10&next={next}"),
        Some(TOKEN),
    );
    assert_eq!(second.status, 200);
    assert_eq!(second.body["cursor"]["has_more"], false);
    let mut all: Vec<String> = first["traits"]
        .as_object()
        .unwrap()
        .keys()
        .chain(second.body["traits"].as_object().unwrap().keys())
        .cloned()
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 16, "{all:?}");
    assert!(second.header("request-id").is_some_and(|v| v.len() >= 32));

    // Any identifier of the profile finds it; include and verbose shape the answer.
    for id in ["anonymous_id:anon-1", "email:ann@example.com"] {
        let r = profile_get(
            &s,
            &format!("users/profiles/{id}/traits?include=plan,email&verbose=true"),
            Some(TOKEN),
        );
        assert_eq!(r.status, 200, "{id}: {}", r.body);
        let t = &r.body["traits"];
        assert_eq!(t.as_object().unwrap().len(), 2, "{t}");
        assert_eq!(t["plan"]["value"], "pro");
        assert_eq!(t["plan"]["source_id"], "web");
        assert_eq!(t["plan"]["updated_at"], "2026-01-01T10:01:00.000Z");
    }

    // External ids, newest first, filtered by type.
    let ids = profile_get(&s, "users/profiles/user_id:ann/external_ids", Some(TOKEN));
    let data = ids.body["data"].as_array().unwrap();
    let types: Vec<&str> = data.iter().map(|d| d["type"].as_str().unwrap()).collect();
    assert_eq!(types.len(), 3, "{}", ids.body);
    for t in ["user_id", "anonymous_id", "email"] {
        assert!(types.contains(&t), "{types:?}");
    }
    let anon = data.iter().find(|d| d["type"] == "anonymous_id").unwrap();
    assert_eq!(anon["id"], "anon-1");
    assert_eq!(anon["first_message_id"], "p-1");
    assert_eq!(anon["collection"], "users");
    assert_eq!(anon["encoding"], "none");
    let only = profile_get(
        &s,
        "users/profiles/user_id:ann/external_ids?include=email",
        Some(TOKEN),
    );
    assert_eq!(only.body["data"][0]["id"], "ann@example.com");
    assert_eq!(only.body["data"].as_array().unwrap().len(), 1);

    // Events: newest first by default, pages with a cursor, sort, include, time range.
    let page1 = profile_get(&s, "users/profiles/user_id:ann/events?limit=2", Some(TOKEN));
    let msgs = |b: &Value| -> Vec<String> {
        b["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["message_id"].as_str().unwrap().to_string())
            .collect()
    };
    // The group call is one of ann's events too.
    assert_eq!(msgs(&page1.body), ["g-1", "t-2"], "{}", page1.body);
    assert_eq!(page1.body["data"][1]["event"], "Order Completed");
    assert_eq!(page1.body["data"][1]["properties"]["revenue"], 42);
    assert_eq!(page1.body["data"][1]["source_id"], "web");
    assert_eq!(page1.body["data"][1]["external_ids"][0]["id"], "ann");
    assert_eq!(page1.body["cursor"]["has_more"], true);
    let mut pages = vec![msgs(&page1.body)];
    let mut next = page1.body["cursor"]["next"].as_str().unwrap().to_string();
    while !next.is_empty() {
        let page = profile_get(
            &s,
            &format!("users/profiles/user_id:ann/events?limit=2&next={next}"),
            Some(TOKEN),
        );
        assert_eq!(page.status, 200, "{}", page.body);
        pages.push(msgs(&page.body));
        next = page.body["cursor"]["next"].as_str().unwrap().to_string();
        assert_eq!(page.body["cursor"]["has_more"], !next.is_empty());
    }
    assert_eq!(pages, [vec!["g-1", "t-2"], vec!["t-1", "i-1"], vec!["p-1"]]);
    let asc = profile_get(
        &s,
        "users/profiles/user_id:ann/events?sort=asc&limit=1",
        Some(TOKEN),
    );
    assert_eq!(msgs(&asc.body), ["p-1"]);
    let inc = profile_get(
        &s,
        "users/profiles/user_id:ann/events?include=Cart%20Viewed",
        Some(TOKEN),
    );
    assert_eq!(msgs(&inc.body), ["t-1"]);
    let range = profile_get(
        &s,
        "users/profiles/user_id:ann/events?start=2026-01-01T10:01:00Z&end=2026-01-01T10:03:00Z",
        Some(TOKEN),
    );
    assert_eq!(msgs(&range.body), ["t-1", "i-1"]);

    // Metadata: first and last events.
    let meta = profile_get(&s, "users/profiles/user_id:ann/metadata", Some(TOKEN));
    let m = &meta.body["metadata"];
    assert_eq!(m["first_message_id"], "p-1", "{m}");
    assert_eq!(m["created_at"], "2026-01-01T10:00:00.000Z");
    assert_eq!(m["first_source_id"], "web");
    assert!(m["segment_id"].as_str().unwrap().starts_with("use_"));
    // By segment_id too.
    let seg = m["segment_id"].as_str().unwrap();
    let by_seg = profile_get(
        &s,
        &format!("users/profiles/segment_id:{seg}/metadata"),
        Some(TOKEN),
    );
    assert_eq!(by_seg.body["metadata"]["segment_id"], seg);

    // The account and the links both ways.
    let acc = profile_until(
        &s,
        "accounts/profiles/group_id:acme/traits",
        "acme's traits",
        |b| b["traits"]["industry"] == "Anvils",
    );
    assert_eq!(acc["traits"]["name"], "Acme");
    let links = profile_get(&s, "users/profiles/user_id:ann/links", Some(TOKEN));
    assert_eq!(
        links.body["data"][0]["to_collection"], "accounts",
        "{}",
        links.body
    );
    assert_eq!(links.body["data"][0]["external_ids"][0]["id"], "acme");
    let back = profile_get(&s, "accounts/profiles/group_id:acme/links", Some(TOKEN));
    let users: Vec<&str> = back.body["data"][0]["external_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert!(users.contains(&"ann"), "{}", back.body);

    // Errors: Segment's shape and codes.
    let err = |r: common::Reply, status: u16, code: &str| {
        assert_eq!(r.status, status, "{}", r.body);
        assert_eq!(r.body["error"]["code"], code, "{}", r.body);
        assert!(r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        assert!(r.header("request-id").is_some());
    };
    err(
        profile_get(&s, "users/profiles/user_id:ann/traits", None),
        401,
        "authentication_error",
    );
    err(
        profile_get(&s, "users/profiles/user_id:ann/traits", Some("wrong-token")),
        401,
        "authentication_error",
    );
    // The admin token is always accepted.
    assert_eq!(
        profile_get(
            &s,
            "users/profiles/user_id:ann/traits",
            Some("test-admin-token")
        )
        .status,
        200
    );
    let missing = profile_get(&s, "users/profiles/user_id:nobody/traits", Some(TOKEN));
    assert_eq!(missing.body["error"]["message"], "Profile was not found.");
    err(missing, 404, "not_found");
    err(
        profile_get(
            &s,
            "users/profiles/user_id:ann/traits?limit=500",
            Some(TOKEN),
        ),
        400,
        "validation_error",
    );
    err(
        profile_get(
            &s,
            "users/profiles/user_id:ann/events?sort=sideways",
            Some(TOKEN),
        ),
        400,
        "validation_error",
    );
    err(
        profile_get(
            &s,
            "users/profiles/user_id:ann/events?start=yesterday",
            Some(TOKEN),
        ),
        400,
        "validation_error",
    );
    err(
        profile_get(&s, "people/profiles/user_id:ann/traits", Some(TOKEN)),
        400,
        "invalid_request_error",
    );
    err(
        profile_get(&s, "users/profiles/ann/traits", Some(TOKEN)),
        400,
        "invalid_request_error",
    );
    err(
        profile_get(&s, "users/profiles/user_id:ann/friends", Some(TOKEN)),
        404,
        "not_found",
    );
    let other_space = s.request(
        "GET",
        "/v1/spaces/elsewhere/collections/users/profiles/user_id:ann/traits",
        &[("Authorization", &basic(TOKEN))],
        None,
    );
    err(other_space, 404, "not_found");
}

#[test]
fn identity_rules_from_the_config_file_apply() {
    // email may hold one identifier only: a second email goes elsewhere; "guest" is blocked.
    let s = Server::start(Some(&config(
        r#"
[identity]
blocked_values = ["guest"]
[identity.types.email]
limit = 1
"#,
    )));
    batch(
        &s,
        json!([
            {"type": "identify", "messageId": "a", "userId": "guest", "anonymousId": "dev-1",
             "traits": {"email": "one@x.test"}},
            {"type": "identify", "messageId": "b", "anonymousId": "dev-1",
             "traits": {"email": "two@x.test"}},
        ]),
    );
    let ids = profile_until(
        &s,
        "users/profiles/anonymous_id:dev-1/external_ids",
        "dev-1's identifiers",
        |b| b["data"].as_array().is_some_and(|d| d.len() == 2),
    );
    let values: Vec<&str> = ids["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert!(
        values.contains(&"one@x.test") && !values.contains(&"guest"),
        "{ids}"
    );
    let two = profile_until(
        &s,
        "users/profiles/email:two@x.test/external_ids",
        "two's profile",
        |_| true,
    );
    assert_eq!(two["data"].as_array().unwrap().len(), 1, "{two}");
}

/// Every file under `dir`, read raw.
fn files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

fn found_in(files: &[(std::path::PathBuf, Vec<u8>)], needle: &str) -> Vec<String> {
    files
        .iter()
        .filter(|(_, b)| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .map(|(p, _)| p.display().to_string())
        .collect()
}

#[test]
fn deletion_erases_the_subject_everywhere_and_tells_destinations() {
    let hooks = Receiver::ok();
    let partner = Receiver::ok();
    let cfg = config(&format!(
        r#"
[[destinations]]
name = "hooks"
type = "webhook"
sources = ["web"]
allow_private_networks = true
[destinations.settings]
sharedSecret = "s3cret"
hooks = [{{ hook = "{hooks}/in" }}]

[[destinations]]
name = "pw"
type = "pushwoosh"
sources = ["web"]
allow_private_networks = true
[destinations.settings]
pushwooshAPIKey = "pw_key"
pushwooshAppCode = "ABCDE-12345"
endpoint_override = "{partner}"
"#,
        hooks = hooks.url,
        partner = partner.url,
    ));
    let dir = tempfile::tempdir().unwrap().keep();
    let mut s = Server::start_in(&dir, Some(&cfg));
    // The subject: anonymous browsing, sign-up with secrets, events; a kiosk shared with
    // the other user; a refused item naming the subject. The other user: the same shapes.
    let subject = "zorro-7f3a";
    let other = "yolanda-91bc";
    batch(
        &s,
        json!([
            {"type": "page", "messageId": "m01", "anonymousId": "anon-zorro-c0ffee", "name": "Home"},
            {"type": "identify", "messageId": "m02", "anonymousId": "anon-zorro-c0ffee", "userId": subject,
             "traits": {"email": "zorro.secret@mask.test", "phone": "+1-555-ZORRO-77", "plan": "pro"}},
            {"type": "track", "messageId": "m03", "userId": subject, "event": "Order Completed",
             "properties": {"note": "deliver to the cave of zorro"}},
            {"type": "identify", "messageId": "m04", "userId": subject, "anonymousId": "kiosk-shared-1"},
            {"type": "identify", "messageId": "m05", "anonymousId": "anon-yolanda-beef", "userId": other,
             "traits": {"email": "yolanda@keep.test", "plan": "team-yolanda-kept"}},
            {"type": "track", "messageId": "m06", "userId": other, "anonymousId": "kiosk-shared-1",
             "event": "Order Completed", "properties": {"note": "yolanda order kept"}},
            {"type": "track", "messageId": "m07", "userId": subject},
        ]),
    );
    // Everything delivered and filed first.
    hooks.wait_until("six events at the webhook", WAIT, |log| {
        Receiver::delivered_ids(log).len() >= 6
    });
    profile_until(
        &s,
        &format!("users/profiles/user_id:{other}/traits"),
        "the other's traits",
        |b| b["traits"]["plan"] == "team-yolanda-kept",
    );
    profile_until(
        &s,
        &format!("users/profiles/user_id:{subject}/traits"),
        "the subject's traits",
        |b| b["traits"]["plan"] == "pro",
    );
    let rejected = s.admin("/sources/web/rejected");
    assert!(
        rejected.body.to_string().contains(subject),
        "{}",
        rejected.body
    );

    let r = s.admin_call(
        "POST",
        "/regulations",
        Some(&json!({"regulationType": "DELETE_ONLY", "subjectType": "USER_ID", "subjectIds": [subject]})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let id = r.body["data"]["regulateId"].as_str().unwrap().to_string();
    let done = finished(&s, &id);
    let reg = &done["data"]["regulation"];
    assert_eq!(reg["overallStatus"], "FINISHED", "{reg}");
    assert_eq!(reg["erased"]["events"], 4, "{reg}");
    assert!(reg["erased"]["identifiers"].as_u64().unwrap() >= 4, "{reg}");
    assert_eq!(reg["erased"]["rejected"], 1, "{reg}");
    let statuses: Vec<(String, String)> = reg["destinationStatuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["destination"].as_str().unwrap().into(),
                d["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("hooks".to_string(), "FINISHED".to_string()),
            ("pw".into(), "FINISHED".into())
        ]
    );
    assert!(reg["subjectIds"][0]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));

    // The destinations got their deletions: Segment's delete event, signed; Pushwoosh's
    // delete-user with the external id.
    let deletes: Vec<_> = hooks
        .received()
        .into_iter()
        .filter(|r| r.json()["type"] == "delete")
        .collect();
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].json()["userId"], subject);
    assert_eq!(
        deletes[0].headers.get("x-signature").map(String::as_str),
        Some(hmac_hex("s3cret", &deletes[0].body).as_str())
    );
    let pw: Vec<_> = partner
        .received()
        .into_iter()
        .filter(|r| r.path.ends_with("/delete-user"))
        .collect();
    assert_eq!(
        pw.len(),
        1,
        "{:?}",
        partner
            .received()
            .iter()
            .map(|r| &r.path)
            .collect::<Vec<_>>()
    );
    assert_eq!(pw[0].json()["external_id"], subject);

    // The Profile API no longer knows the subject by any identifier; the other user is
    // whole, including the shared kiosk's event.
    for id in [
        format!("user_id:{subject}"),
        "anonymous_id:anon-zorro-c0ffee".into(),
        "email:zorro.secret@mask.test".into(),
    ] {
        let r = profile_get(&s, &format!("users/profiles/{id}/traits"), Some(TOKEN));
        assert_eq!(r.status, 404, "{id}: {}", r.body);
    }
    let kept = profile_get(
        &s,
        &format!("users/profiles/user_id:{other}/events"),
        Some(TOKEN),
    );
    let kept_ids: Vec<&str> = kept.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(kept_ids.len(), 2, "{}", kept.body);
    assert!(kept_ids.contains(&"m06"));
    let stored: Vec<Value> = s.events("web", 100);
    assert!(stored.iter().all(|e| e["userId"] != subject), "{stored:?}");
    assert_eq!(stored.len(), 2);

    // Stop the server (it checkpoints and closes every file), then search the raw bytes
    // of the whole data directory.
    s.signal(libc::SIGTERM);
    assert!(s.wait().success());
    let raw = files(&dir);
    for secret in [
        subject,
        "anon-zorro-c0ffee",
        "zorro.secret@mask.test",
        "ZORRO-77",
        "cave of zorro",
    ] {
        let hits = found_in(&raw, secret);
        assert!(hits.is_empty(), "{secret:?} is still in {hits:?}");
    }
    // The search does see the data that must stay.
    assert!(!found_in(&raw, "team-yolanda-kept").is_empty());
    assert!(!found_in(&raw, other).is_empty());
}

#[test]
fn suppression_drops_new_events_and_unsuppress_lets_them_in() {
    let s = Server::start(Some(&config("")));
    let r = s.admin_call(
        "POST",
        "/regulations",
        Some(&json!({"regulationType": "SUPPRESS_ONLY", "subjectType": "ANONYMOUS_ID", "subjectIds": ["anon-hidden"]})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = s.send(
        "/v1/batch",
        &json!({"batch": [
            {"type": "track", "messageId": "s1", "anonymousId": "anon-hidden", "event": "Hidden"},
            {"type": "track", "messageId": "s2", "userId": "u-seen", "anonymousId": "anon-hidden", "event": "Hidden"},
            {"type": "track", "messageId": "s3", "anonymousId": "anon-seen", "event": "Seen"},
        ]}),
    );
    assert_eq!(
        (r.status, r.body["suppressed"].as_u64()),
        (200, Some(2)),
        "{}",
        r.body
    );
    let stored = s.events("web", 10);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["messageId"], "s3");
    let list = s.admin("/suppressions");
    assert_eq!(
        list.body["data"]["anonymousIds"].as_array().unwrap().len(),
        1
    );
    assert!(
        !list.body.to_string().contains("anon-hidden"),
        "kept hashed"
    );

    let r = s.admin_call(
        "POST",
        "/regulations",
        Some(&json!({"regulationType": "UNSUPPRESS", "subjectType": "ANONYMOUS_ID", "subjectIds": ["anon-hidden"]})),
    );
    assert_eq!(r.status, 200);
    let r = s.send(
        "/v1/track",
        &json!({"messageId": "s4", "anonymousId": "anon-hidden", "event": "Back"}),
    );
    assert_eq!(r.status, 200);
    assert!(r.body.get("suppressed").is_none());
    assert_eq!(s.events("web", 10)[0]["messageId"], "s4");

    // Bad regulation bodies name the problem.
    let r = s.admin_call(
        "POST",
        "/regulations",
        Some(&json!({"regulationType": "DELETE", "subjectType": "USER_ID", "subjectIds": ["x"]})),
    );
    assert_eq!(r.status, 422);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("regulationType"),
        "{}",
        r.body
    );
    let r = s.admin("/regulations/reg_nope");
    r.assert_error(404, "not_found");
}

#[test]
fn enrichment_adds_the_profiles_traits_and_identifiers_before_sending() {
    let rx = Receiver::ok();
    let cfg = config(&format!(
        r#"
[[destinations]]
name = "enriched"
type = "webhook"
sources = ["web"]
allow_private_networks = true
enrich_profile = true
[destinations.settings]
hooks = [{{ hook = "{url}/in" }}]

[[destinations]]
name = "plain"
type = "webhook"
sources = ["web"]
allow_private_networks = true
[destinations.settings]
hooks = [{{ hook = "{url}/plain" }}]
"#,
        url = rx.url
    ));
    let s = Server::start(Some(&cfg));
    batch(
        &s,
        json!([{"type": "identify", "messageId": "e-1", "userId": "eve", "anonymousId": "anon-eve",
                "traits": {"email": "eve@example.com", "plan": "pro"}}]),
    );
    // Enrichment reads what the profile consumer has filed: wait for it, then track.
    profile_until(
        &s,
        "users/profiles/user_id:eve/traits",
        "eve's traits",
        |b| b["traits"]["email"] == "eve@example.com",
    );
    batch(
        &s,
        json!([{"type": "track", "messageId": "e-2", "userId": "eve", "event": "Order Completed",
                "context": {"traits": {"plan": "team"}}}]),
    );
    let got = rx.wait_until("the track at both hooks", WAIT, |log| {
        log.iter()
            .filter(|r| r.json()["messageId"] == "e-2")
            .count()
            == 2
    });
    let at = |path: &str| {
        got.iter()
            .find(|r| r.path == path && r.json()["messageId"] == "e-2")
            .unwrap()
            .json()
    };
    let enriched = at("/in");
    let ctx = &enriched["context"];
    assert_eq!(ctx["traits"]["email"], "eve@example.com", "{enriched}");
    // The event's own value wins over the profile's.
    assert_eq!(ctx["traits"]["plan"], "team");
    let ids: Vec<(String, String)> = ctx["externalIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().into(),
                e["id"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        ids.contains(&("anonymous_id".into(), "anon-eve".into())),
        "{ids:?}"
    );
    assert!(
        ids.contains(&("email".into(), "eve@example.com".into())),
        "{ids:?}"
    );
    assert!(ctx["profileId"].as_str().unwrap().starts_with("use_"));
    let plain = at("/plain");
    assert!(plain["context"]["traits"].get("email").is_none(), "{plain}");
    assert!(plain["context"].get("externalIds").is_none());
}

#[test]
fn a_destination_refusing_the_deletion_makes_a_partial_success() {
    // The webhook takes events but refuses deletions (400: not retried).
    let rx = Receiver::start(|_, r| {
        if String::from_utf8_lossy(&r.body).contains(r#""type":"delete""#) {
            common::receiver::Answer::Status(400)
        } else {
            common::receiver::Answer::Status(200)
        }
    });
    let cfg = config(&format!(
        r#"
[[destinations]]
name = "hooks"
type = "webhook"
sources = ["web"]
allow_private_networks = true
[destinations.settings]
hooks = [{{ hook = "{}/in" }}]
"#,
        rx.url
    ));
    let s = Server::start(Some(&cfg));
    batch(
        &s,
        json!([{"type": "identify", "messageId": "x1", "userId": "gone", "traits": {"plan": "pro"}}]),
    );
    rx.wait_until("the identify", WAIT, |log| !log.is_empty());
    let r = s.admin_call(
        "POST",
        "/regulations",
        Some(&json!({"regulationType": "SUPPRESS_WITH_DELETE", "subjectType": "USER_ID", "subjectIds": ["gone"]})),
    );
    let id = r.body["data"]["regulateId"].as_str().unwrap().to_string();
    let done = finished(&s, &id);
    let reg = &done["data"]["regulation"];
    assert_eq!(reg["overallStatus"], "PARTIAL_SUCCESS", "{reg}");
    assert_eq!(reg["destinationStatuses"][0]["destination"], "hooks");
    assert_eq!(reg["destinationStatuses"][0]["status"], "FAILED");
    assert!(
        reg["destinationStatuses"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("400"),
        "{reg}"
    );
    // Sluice's own erasure happened regardless, and the subject stays suppressed.
    assert_eq!(reg["erased"]["events"], 1, "{reg}");
    let r = s.send("/v1/track", &json!({"userId": "gone", "event": "Back"}));
    assert_eq!(r.body["suppressed"], 1, "{}", r.body);
}

#[test]
fn the_profile_api_rate_limit_answers_429_rate_limit_error() {
    // Half a request per second: the second of three quick requests is over the limit.
    let s = Server::start(Some(&config("rate_limit = 0.5\n")));
    let codes: Vec<(u16, Value)> = (0..3)
        .map(|_| {
            let r = profile_get(&s, "users/profiles/user_id:nobody/traits", Some(TOKEN));
            (r.status, r.body)
        })
        .collect();
    assert_eq!(
        codes[0].0, 404,
        "the first passes the limit: {:?}",
        codes[0]
    );
    let limited = codes.iter().find(|(st, _)| *st == 429).expect("a 429");
    assert_eq!(
        limited.1["error"]["code"], "rate_limit_error",
        "{:?}",
        limited.1
    );
}
