//! Sources over the admin API, against the real binary: created from a type (its write
//! key generated, a client-side type recording `context.ip`), changed only from the
//! version read, key rotation with a grace period, disable, volume, removal, a restart,
//! destinations naming them, the audit trail without keys. The file's sources stay
//! read-only.

mod common;

use common::{basic, Server};
use serde_json::{json, Value};

fn track(s: &Server, key: &str, id: &str) -> common::Reply {
    let auth = basic(key);
    let body = json!({"userId": "u1", "event": "Signed Up", "messageId": id}).to_string();
    s.request(
        "POST",
        "/v1/track",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Some(body.as_bytes()),
    )
}

fn source(s: &Server, name: &str) -> Value {
    let list = s.admin("/sources");
    list.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no source {name} in {}", list.body))
}

#[test]
fn sources_are_created_rotated_disabled_and_removed_over_the_api() {
    let config = "admin_token = \"test-admin-token\"\n[[sources]]\nname = \"web\"\nwrite_key = \"wk_web_123\"\n";
    let dir = tempfile::tempdir().unwrap().keep();
    let mut s = Server::start_in(&dir, Some(config));

    // Created from a type: a generated key, client-side defaults.
    let made = s.admin_call("PUT", "/sources/site", Some(&json!({"type": "javascript"})));
    assert_eq!(made.status, 201, "{}", made.body);
    let key = made.body["write_key"].as_str().unwrap().to_string();
    assert!(key.starts_with("wk_"), "{key}");
    assert_eq!(made.body["collect_ip"], true);
    let r = track(&s, &key, "a1");
    assert_eq!(r.status, 200, "{}", r.body);
    let stored = s.events("site", 1);
    assert_eq!(
        stored[0]["context"]["ip"], "127.0.0.1",
        "a client-side source records the ip"
    );
    assert_eq!(source(&s, "site")["managed_by"], "api");
    assert_eq!(source(&s, "site")["volume"]["last_hour"]["accepted"], 1);

    // Bad input and conflicts name their cause.
    let bad = s.admin_call("PUT", "/sources/other", Some(&json!({"type": "cobol"})));
    bad.assert_error(400, "invalid_source");
    assert_eq!(bad.body["field"], "type");
    s.admin_call("PUT", "/sources/site", Some(&json!({"type": "javascript"})))
        .assert_error(409, "source_exists");
    s.admin_call(
        "PUT",
        "/sources/site",
        Some(&json!({"type": "javascript", "version": 9})),
    )
    .assert_error(409, "stale_version");
    s.admin_call("PUT", "/sources/web", Some(&json!({"type": "http"})))
        .assert_error(409, "managed_by_file");

    // A destination may name it.
    let hook = json!({"type": "webhook", "sources": ["site"], "settings": {"hooks": [{"hook": "https://example.com/in"}]}});
    let d = s.admin_call("PUT", "/destinations/site-hooks", Some(&hook));
    assert_eq!(d.status, 201, "{}", d.body);

    // Rotation: the new key works at once, the old one until its grace ends.
    let rotated = s.admin_call(
        "POST",
        "/sources/site/rotate-key",
        Some(&json!({"grace_hours": 1})),
    );
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let key2 = rotated.body["write_key"].as_str().unwrap().to_string();
    assert_ne!(key2, key);
    assert_eq!(track(&s, &key2, "a2").status, 200);
    assert_eq!(
        track(&s, &key, "a3").status,
        200,
        "the old key within its grace"
    );
    let rotated = s.admin_call(
        "POST",
        "/sources/site/rotate-key",
        Some(&json!({"grace_hours": 0})),
    );
    let key3 = rotated.body["write_key"].as_str().unwrap().to_string();
    track(&s, &key2, "a4").assert_error(401, "unknown_write_key");
    assert_eq!(
        track(&s, &key, "a5").status,
        200,
        "the first key's grace still runs"
    );
    assert_eq!(track(&s, &key3, "a6").status, 200);

    // Disabled: its key is refused.
    let version = source(&s, "site")["version"].as_i64().unwrap();
    let off = s.admin_call(
        "PUT",
        "/sources/site",
        Some(&json!({"type": "javascript", "enabled": false, "version": version})),
    );
    assert_eq!(off.status, 200, "{}", off.body);
    assert_eq!(track(&s, &key3, "a7").status, 403);

    // It survives a restart.
    s.signal(libc::SIGTERM);
    assert!(s.wait().success());
    let s = Server::start_in(&dir, Some(config));
    let after = source(&s, "site");
    assert_eq!(
        (after["enabled"].as_bool(), after["managed_by"].as_str()),
        (Some(false), Some("api"))
    );
    let version = after["version"].as_i64().unwrap();
    let on = s.admin_call(
        "PUT",
        "/sources/site",
        Some(&json!({"type": "javascript", "enabled": true, "version": version})),
    );
    assert_eq!(on.status, 200, "{}", on.body);
    assert_eq!(track(&s, &key3, "a8").status, 200);

    // Removed: its key is unknown; its events stay in the log.
    let version = source(&s, "site")["version"].as_i64().unwrap();
    let gone = s.admin_call("DELETE", &format!("/sources/site?version={version}"), None);
    assert_eq!(gone.status, 204, "{}", gone.body);
    track(&s, &key3, "a9").assert_error(401, "unknown_write_key");

    // The audit trail has each change, and never a key.
    let audit = s.admin("/audit");
    let actions: Vec<&str> = audit.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "source")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "delete",
            "update",
            "update",
            "rotate-key",
            "rotate-key",
            "create"
        ]
    );
    let text = audit.body.to_string();
    assert!(
        !text.contains(&key) && !text.contains(&key3),
        "no write key in the trail"
    );
}

/// A `segment_webhook` source made over the API: its shared secret generated and shown to
/// admins, a signed post from a Segment Webhooks destination stored with the ids its
/// field mapping finds, a wrong signature refused, and bad mappings named.
#[test]
fn a_segment_webhook_source_is_created_over_the_api() {
    let s = Server::start(Some("admin_token = \"test-admin-token\"\n"));
    let bad = s.admin_call(
        "PUT",
        "/sources/hooked",
        Some(&json!({"type": "segment_webhook", "field_mapping": {"userId": "$."}})),
    );
    bad.assert_error(400, "invalid_source");
    assert_eq!(bad.body["field"], "field_mapping.userId", "{}", bad.body);
    let bad = s.admin_call(
        "PUT",
        "/sources/hooked",
        Some(&json!({"type": "segment_webhook", "field_mapping": {"email": "$.traits.email"}})),
    );
    assert_eq!(bad.body["field"], "field_mapping.email", "{}", bad.body);
    let bad = s.admin_call(
        "PUT",
        "/sources/plain",
        Some(&json!({"type": "http", "field_mapping": {"userId": "$.traits.id"}})),
    );
    assert_eq!(bad.body["field"], "field_mapping", "{}", bad.body);

    let made = s.admin_call(
        "PUT",
        "/sources/hooked",
        Some(&json!({"type": "segment_webhook", "field_mapping": {"userId": "$.traits.member"}})),
    );
    assert_eq!(made.status, 201, "{}", made.body);
    let secret = made.body["shared_secret"].as_str().unwrap().to_string();
    assert!(
        secret.starts_with("whsec_") && secret.len() > 40,
        "{secret}"
    );
    let listed = source(&s, "hooked");
    assert_eq!(listed["kind"], "segment_webhook");
    assert_eq!(listed["webhook_path"], "/v1/webhooks/hooked");
    assert_eq!(listed["shared_secret"], secret.as_str());

    let body =
        json!({"type": "identify", "messageId": "h1", "traits": {"member": "m-42"}}).to_string();
    let post = |sig: &str| {
        s.request(
            "POST",
            "/v1/webhooks/hooked",
            &[("Content-Type", "application/json"), ("X-Signature", sig)],
            Some(body.as_bytes()),
        )
    };
    assert_eq!(post(&"0".repeat(40)).status, 401, "a wrong signature");
    let ok = post(&common::hmac_hex(&secret, body.as_bytes()));
    assert_eq!(ok.status, 200, "{}", ok.body);
    let stored = s.events("hooked", 1);
    assert_eq!(stored[0]["userId"], "m-42", "{}", stored[0]);

    // The audit trail keeps no secret.
    let audit = s.admin("/audit?limit=50").body.to_string();
    assert!(!audit.contains(&secret), "{audit}");
}
