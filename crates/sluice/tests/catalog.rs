//! Catalog destinations end to end with the real binary: Webhooks (Actions) through
//! `endpoint_override` to a receiver started here (mapping, signature, retries, refusals,
//! preview), and the `segment` destination forwarding to a second Sluice.

mod common;

use std::time::Duration;

use common::receiver::{Answer, Receiver};
use common::{hmac_hex, Server};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

fn config(destinations: &str) -> String {
    format!(
        r#"
admin_token = "test-admin-token"
[[sources]]
name = "web"
write_key = "wk_web_123"
{destinations}
"#
    )
}

/// A partner's stub: requests whose body contains `refused_marker` get `refused` (a
/// permanent error, with a body when given); the first request whose body contains
/// `fail_marker` gets `fail_status` once (a retryable error); everything else 200.
fn partner_stub(
    refused_marker: &'static str,
    refused: (u16, &'static str),
    fail_marker: &'static str,
    fail_status: u16,
) -> Receiver {
    let failed_once = std::sync::atomic::AtomicBool::new(false);
    Receiver::start(move |_, r| {
        let body = String::from_utf8_lossy(&r.body);
        if body.contains(refused_marker) {
            Answer::WithBody(refused.0, refused.1)
        } else if body.contains(fail_marker)
            && !failed_once.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            Answer::Status(fail_status)
        } else {
            Answer::Status(200)
        }
    })
}

/// A catalog destination sent to `url` through `endpoint_override`, with fast retries;
/// `settings` and `rest` are TOML lines (settings, then e.g. `[[destinations.actions]]`).
fn partner_config(name: &str, kind: &str, settings: &str, url: &str, rest: &str) -> String {
    config(&format!(
        r#"
[[destinations]]
name = "{name}"
type = "{kind}"
sources = ["web"]
allow_private_networks = true
retry = {{ min_backoff = "20ms", max_backoff = "100ms" }}
[destinations.settings]
{settings}
endpoint_override = "{url}"
{rest}
"#
    ))
}

#[test]
fn webhooks_actions_maps_signs_retries_and_refuses() {
    // The first two requests fail with 503, then 200.
    let rx = Receiver::start(|n, _| {
        if n < 2 {
            Answer::Status(503)
        } else {
            Answer::Status(200)
        }
    });
    let cfg = config(&format!(
        r#"
[[destinations]]
name = "orders"
type = "actions_webhook"
sources = ["web"]
allow_private_networks = true
retry = {{ min_backoff = "20ms", max_backoff = "100ms" }}
[destinations.settings]
sharedSecret = "k3y"
endpoint_override = "{url}"
[[destinations.actions]]
action = "send"
subscription = 'type = "track" and event = "Order Completed"'
mapping = {{ url = "https://hooks.example.com/orders", headers = {{ "X-Shop" = "acme" }}, data = {{ order = {{ "@path" = "$.properties.order_id" }}, total = {{ "@path" = "$.properties.total" }}, user = {{ "@path" = "$.userId" }} }} }}
"#,
        url = rx.url
    ));
    let s = Server::start(Some(&cfg));
    let r = s.send(
        "/v1/batch",
        &json!({"batch": [
            {"type": "track", "messageId": "o1", "userId": "u1", "event": "Order Completed", "properties": {"order_id": "A-1", "total": 30}},
            {"type": "track", "messageId": "v1", "userId": "u1", "event": "Product Viewed"},
            {"type": "identify", "messageId": "i1", "userId": "u1"},
        ]}),
    );
    assert_eq!(r.status, 200);
    let got = rx.wait_until("the order after two 503s", WAIT, |l| {
        l.iter().any(|r| r.answered == Some(200))
    });
    assert_eq!(got.len(), 3, "two failures, one success, nothing else");
    for r in &got {
        assert_eq!(r.path, "/orders");
        assert_eq!(r.json(), json!({"order": "A-1", "total": 30, "user": "u1"}));
        assert_eq!(r.headers["x-shop"], "acme");
        assert_eq!(r.headers["x-signature"], hmac_hex("k3y", &r.body));
    }
    let j = s.admin_until("/events/o1", "o1 delivered", WAIT, |b| {
        b["deliveries"][0]["outcome"] == "delivered"
    });
    assert_eq!(j["deliveries"][0]["attempts"], 3);
    let v = s.admin_until("/events/v1", "v1 recorded", WAIT, |b| {
        b["deliveries"].is_array()
    });
    assert_eq!(v["deliveries"][0]["outcome"], "filtered");
    assert!(v["deliveries"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("no enabled action"));

    // Preview: what would be sent, without sending.
    let before = rx.received().len();
    let p = s.admin_call(
        "POST",
        "/destinations/orders/preview",
        Some(&json!({"type": "track", "userId": "u9", "event": "Order Completed", "properties": {"order_id": "P-1"}})),
    );
    assert_eq!(p.status, 200, "{}", p.body);
    let a = &p.body["actions"][0];
    assert_eq!(
        (a["action"].as_str(), a["matched"].as_bool()),
        (Some("send"), Some(true))
    );
    assert_eq!(a["requests"][0]["method"], "POST");
    assert_eq!(a["requests"][0]["url"], format!("{}/orders", rx.url));
    assert_eq!(
        a["requests"][0]["body"],
        json!({"order": "P-1", "user": "u9"})
    );
    let p = s.admin_call(
        "POST",
        "/destinations/orders/preview",
        Some(&json!({"type": "identify", "userId": "u9"})),
    );
    assert_eq!(p.body["actions"][0]["matched"], false);
    assert!(p.body["actions"][0]["skipped_reason"]
        .as_str()
        .unwrap()
        .contains("does not match"));
    assert_eq!(rx.received().len(), before, "preview sends nothing");
}

#[test]
fn a_payload_that_cannot_be_built_is_dead_lettered_without_a_request() {
    let rx = Receiver::ok();
    let cfg = config(&format!(
        r#"
[[destinations]]
name = "api"
type = "http"
sources = ["web"]
allow_private_networks = true
[destinations.settings]
endpoint_override = "{url}"
[[destinations.actions]]
action = "send"
mapping = {{ url = {{ "@path" = "$.properties.callback" }} }}
"#,
        url = rx.url
    ));
    let s = Server::start(Some(&cfg));
    let r = s.send(
        "/v1/batch",
        &json!({"batch": [
            {"type": "track", "messageId": "no-url", "userId": "u1", "event": "E"},
            {"type": "track", "messageId": "with-url", "userId": "u1", "event": "E", "properties": {"callback": "https://x.example.com/cb"}},
        ]}),
    );
    assert_eq!(r.status, 200);
    let got = rx.wait_until("the event with a url", WAIT, |l| !l.is_empty());
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/cb");
    assert_eq!(got[0].json()["messageId"], "with-url");
    let dl = s.admin_until(
        "/destinations/api/dead-letters",
        "one dead letter",
        WAIT,
        |b| b["data"].as_array().is_some_and(|a| a.len() == 1),
    );
    let d = &dl["data"][0];
    assert_eq!(d["messageId"], "no-url");
    assert!(
        d["reason"].as_str().unwrap().contains("`url` is required"),
        "{d}"
    );
    assert_eq!(
        d["attempts"].as_array().unwrap().len(),
        0,
        "no request was made"
    );
}

#[test]
fn the_segment_destination_forwards_to_another_sluice() {
    let downstream = Server::start(Some(
        r#"
admin_token = "down-admin-token"
[[sources]]
name = "upstream"
write_key = "wk_down_1"
"#,
    ));
    let cfg = config(&format!(
        r#"
[[destinations]]
name = "fwd"
type = "segment"
sources = ["web"]
allow_private_networks = true
[destinations.settings]
write_key = "wk_down_1"
endpoint = "{url}"
"#,
        url = downstream.url
    ));
    let s = Server::start(Some(&cfg));
    let listed = s.admin("/destinations/fwd").body;
    assert_eq!(listed["settings"]["write_key"], "********");
    let r = s.send(
        "/v1/identify",
        &json!({"messageId": "fwd-1", "userId": "u1", "traits": {"plan": "pro"}}),
    );
    assert_eq!(r.status, 200);
    let r = s.send(
        "/v1/track",
        &json!({"messageId": "fwd-2", "userId": "u1", "event": "Signed Up"}),
    );
    assert_eq!(r.status, 200);
    let events = downstream.admin_until(
        "/sources/upstream/events?limit=10",
        "two forwarded events",
        WAIT,
        |b| b["data"].as_array().is_some_and(|a| a.len() == 2),
    );
    let by_id = |id: &str| -> Value {
        events["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["messageId"] == id)
            .unwrap_or_else(|| panic!("{id} not forwarded: {events}"))["event"]
            .clone()
    };
    assert_eq!(by_id("fwd-1")["traits"]["plan"], "pro");
    assert_eq!(by_id("fwd-1")["type"], "identify");
    assert_eq!(by_id("fwd-2")["event"], "Signed Up");
}

#[test]
fn sluice_catalog_lists_and_shows_types() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, list, _) = run(&["catalog"]);
    assert!(ok);
    for id in ["webhook", "actions_webhook", "http", "segment"] {
        assert!(
            list.lines().any(|l| l.starts_with(id)),
            "{id} missing from:\n{list}"
        );
    }
    let (ok, show, _) = run(&["catalog", "show", "actions_webhook"]);
    assert!(ok);
    assert!(
        show.contains("sharedSecret") && show.contains("action send"),
        "{show}"
    );
    assert!(show.contains("url") && show.contains("required"), "{show}");
    let (ok, _, err) = run(&["catalog", "show", "carrier-pigeon"]);
    assert!(!ok);
    assert!(
        err.contains("no catalog destination \"carrier-pigeon\""),
        "{err}"
    );
    // `sluice preview`: offline, from the file.
    let cfg_file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(
        cfg_file.path(),
        config(
            r#"
[[destinations]]
name = "orders"
type = "actions_webhook"
sources = ["web"]
[destinations.settings]
sharedSecret = "k"
[[destinations.actions]]
action = "send"
subscription = 'type = "track"'
mapping = { url = "https://hooks.example.com/o", data = { id = { "@path" = "$.userId" } } }
"#,
        ),
    )
    .unwrap();
    let ev = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ev.path(), r#"{"type":"track","event":"E","userId":"u7"}"#).unwrap();
    let cfg_path = cfg_file.path().to_str().unwrap();
    let ev_path = ev.path().to_str().unwrap();
    let (ok, out, err) = run(&[
        "preview",
        "--config",
        cfg_path,
        "--destination",
        "orders",
        "--event",
        ev_path,
    ]);
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let req = &report["actions"][0]["requests"][0];
    assert_eq!(req["url"], "https://hooks.example.com/o");
    assert_eq!(req["body"], json!({"id": "u7"}));
    assert_eq!(
        req["headers"]["x-signature"],
        hmac_hex("k", br#"{"id":"u7"}"#)
    );
    let (ok, _, err) = run(&[
        "preview",
        "--config",
        cfg_path,
        "--destination",
        "nope",
        "--event",
        ev_path,
    ]);
    assert!(
        !ok && err.contains("no destination named \"nope\""),
        "{err}"
    );

    // A bad catalog destination fails `sluice check` with the destination and the field.
    let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(
        f.path(),
        config(
            r#"
[[destinations]]
name = "api"
type = "http"
sources = ["web"]
[[destinations.actions]]
action = "send"
subscription = 'type = "track" and'
"#,
        ),
    )
    .unwrap();
    let (ok, _, err) = run(&["check", "--config", f.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("destination \"api\"") && err.contains("actions[0].subscription"),
        "{err}"
    );
    assert!(err.contains("position"), "{err}");
}

#[test]
fn pushwoosh_through_endpoint_override_retries_5xx_and_dead_letters_4xx() {
    // Post-events answers 500 once, then 200; an event named "Rejected" gets 400.
    let rx = partner_stub(
        "\"Rejected\"",
        (400, "{\"status\":\"bad event\"}"),
        "Order Completed",
        500,
    );
    let settings = "pushwooshAPIKey = \"pw_key\"\npushwooshAppCode = \"ABCDE-12345\"";
    let cfg = partner_config("pw", "pushwoosh", settings, &rx.url, "");
    let s = Server::start(Some(&cfg));
    let r = s.send(
        "/v1/batch",
        &json!({"batch": [
            {"type": "track", "messageId": "pw-1", "userId": "u1", "event": "Order Completed", "properties": {"total": 5}},
            {"type": "identify", "messageId": "pw-2", "userId": "u2", "traits": {"email": "b@example.com", "plan": "pro"}},
            {"type": "track", "messageId": "pw-3", "userId": "u3", "event": "Rejected"},
        ]}),
    );
    assert_eq!(r.status, 200);
    let got = rx.wait_until(
        "the order delivered after a 500, the profile, the rejected one",
        WAIT,
        |l| {
            let ok = |id: &str| {
                l.iter().any(|r| {
                    r.answered == Some(200) && String::from_utf8_lossy(&r.body).contains(id)
                })
            };
            ok("Order Completed")
                && ok("b@example.com")
                && l.iter().any(|r| r.answered == Some(400))
        },
    );
    for r in &got {
        assert_eq!(r.headers["authorization"], "Token pw_key");
        assert_eq!(r.headers["x-pw-appcode"], "ABCDE-12345");
    }
    let order = got
        .iter()
        .find(|r| r.answered == Some(200) && r.path.ends_with("/post-events"))
        .unwrap();
    assert_eq!(order.path, "/integration-segment/v1/post-events");
    let e = &order.json()["events"][0];
    assert_eq!(
        (
            e["user_id"].as_str(),
            e["name"].as_str(),
            e["app_code"].as_str()
        ),
        (Some("u1"), Some("Order Completed"), Some("ABCDE-12345"))
    );
    let profile = got
        .iter()
        .find(|r| r.path.ends_with("/track-user"))
        .unwrap();
    assert_eq!(
        profile.json(),
        json!({"user_id": "u2", "email": "b@example.com", "attributes": {"plan": "pro"}})
    );
    let dl = s.admin_until(
        "/destinations/pw/dead-letters",
        "the 400 dead-lettered",
        WAIT,
        |b| b["data"].as_array().is_some_and(|a| a.len() == 1),
    );
    assert_eq!(dl["data"][0]["messageId"], "pw-3");
    // A deletion previews the type's deletion hook.
    let p = s.admin_call(
        "POST",
        "/destinations/pw/preview",
        Some(&json!({"type": "delete", "userId": "u9"})),
    );
    let req = &p.body["actions"][0]["requests"][0];
    assert_eq!(p.body["actions"][0]["action"], "delete");
    assert_eq!(
        req["url"],
        format!("{}/integration-segment/v1/delete-user", rx.url)
    );
    assert_eq!(req["body"], json!({"external_id": "u9"}));
    assert_eq!(dl["data"][0]["status"], 400);
    assert_eq!(
        dl["data"][0]["attempts"].as_array().unwrap().len(),
        1,
        "a 400 is not retried"
    );
    let j = s.admin_until("/events/pw-1", "pw-1 delivered", WAIT, |b| {
        b["deliveries"][0]["outcome"] == "delivered"
    });
    assert_eq!(j["deliveries"][0]["attempts"], 2);
}

#[test]
fn miso_through_endpoint_override_retries_5xx_and_dead_letters_422() {
    let rx = partner_stub(
        "\"bad-id\"",
        (
            422,
            "{\"errors\":true,\"data\":[\"data.0.product_ids.0 is invalid\"]}",
        ),
        "",
        503,
    );
    let cfg = partner_config("miso", "miso", "api_key = \"miso_secret_1\"", &rx.url, "");
    let s = Server::start(Some(&cfg));
    let r = s.send(
        "/v1/batch",
        &json!({"batch": [
            {"type": "track", "messageId": "ms-1", "userId": "u1", "event": "Product Viewed", "properties": {"product_id": "p1"}},
            {"type": "track", "messageId": "ms-2", "userId": "u2", "event": "Product Added", "properties": {"product_id": "bad-id"}},
            {"type": "track", "messageId": "ms-3", "userId": "u3", "event": "Video Played"},
        ]}),
    );
    assert_eq!(r.status, 200);
    let got = rx.wait_until("the view delivered after a 503, the 422", WAIT, |l| {
        l.iter().any(|r| r.answered == Some(200)) && l.iter().any(|r| r.answered == Some(422))
    });
    for r in &got {
        assert_eq!(r.path, "/v1/interactions");
        assert_eq!(r.headers["x-api-key"], "miso_secret_1");
    }
    let ok = got.iter().find(|r| r.answered == Some(200)).unwrap();
    let mut interaction = ok.json()["data"][0].clone();
    // The server's timestamp (the event had none), verbatim.
    assert!(
        interaction["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{interaction}"
    );
    interaction.as_object_mut().unwrap().remove("timestamp");
    assert_eq!(
        interaction,
        json!({"type": "product_detail_page_view", "user_id": "u1", "product_ids": ["p1"]})
    );
    let dl = s.admin_until(
        "/destinations/miso/dead-letters",
        "the 422 dead-lettered",
        WAIT,
        |b| b["data"].as_array().is_some_and(|a| a.len() == 1),
    );
    assert_eq!(dl["data"][0]["messageId"], "ms-2");
    assert_eq!(dl["data"][0]["status"], 422);
    assert!(dl["data"][0]["attempts"][0]["response"]
        .as_str()
        .unwrap()
        .contains("is invalid"));
    let v = s.admin_until("/events/ms-3", "ms-3 recorded", WAIT, |b| {
        b["deliveries"].is_array()
    });
    assert_eq!(v["deliveries"][0]["outcome"], "filtered");
}

#[test]
fn insider_as_the_issue_configures_it_through_endpoint_override() {
    let rx = partner_stub(
        "blocked@example.com",
        (400, "{\"error\":\"Partner is invalid.\"}"),
        "",
        502,
    );
    // The issue's minimal configuration, plus endpoint_override and fast retries.
    let cfg = partner_config(
        "insider",
        "insider",
        "account_name = \"examplebrand\"\nucd_key = \"ucd_123\"",
        &rx.url,
        "[[destinations.actions]]\naction = \"updateUserProfile\"\nsubscription = 'type = \"identify\"'\nmapping = { email_as_identifier = true }",
    );
    let s = Server::start(Some(&cfg));
    let r = s.send(
        "/v1/batch",
        &json!({"batch": [
            {"type": "identify", "messageId": "in-1", "userId": "u1", "traits": {"email": "ann@example.com", "first_name": "Ann"}},
            {"type": "identify", "messageId": "in-2", "userId": "u2", "traits": {"email": "blocked@example.com"}},
            {"type": "track", "messageId": "in-3", "userId": "u1", "event": "Order Completed"},
        ]}),
    );
    assert_eq!(r.status, 200);
    let got = rx.wait_until("u1 upserted after a 502, u2 refused", WAIT, |l| {
        l.iter().any(|r| r.answered == Some(200)) && l.iter().any(|r| r.answered == Some(400))
    });
    for r in &got {
        assert_eq!(r.path, "/api/user/v1/upsert");
        assert_eq!(r.headers["x-partner-name"], "examplebrand");
        assert_eq!(r.headers["x-request-token"], "ucd_123");
        assert_eq!(r.headers["x-platform-name"], "segment");
    }
    let ok = got.iter().find(|r| r.answered == Some(200)).unwrap();
    assert_eq!(
        ok.json(),
        json!({"users": [{"identifiers": {"uuid": "u1", "email": "ann@example.com", "custom": {}},
            "attributes": {"email": "ann@example.com", "name": "Ann"}, "not_append": true}], "platform": "segment"})
    );
    let dl = s.admin_until(
        "/destinations/insider/dead-letters",
        "u2 dead-lettered",
        WAIT,
        |b| b["data"].as_array().is_some_and(|a| a.len() == 1),
    );
    assert_eq!(dl["data"][0]["messageId"], "in-2");
    let t = s.admin_until("/events/in-3", "in-3 recorded", WAIT, |b| {
        b["deliveries"].is_array()
    });
    assert_eq!(t["deliveries"][0]["outcome"], "filtered");
}

#[test]
fn product_fruits_gets_every_event_signed_through_endpoint_override() {
    let rx = partner_stub("\"pf-bad\"", (410, ""), "", 500);
    let settings = "webhook_url = \"https://hooks.productfruits.example/segment/abc\"\nwebhook_secret = \"pf-secret\"";
    let cfg = partner_config("pf", "product_fruits", settings, &rx.url, "");
    let s = Server::start(Some(&cfg));
    let r = s.send(
        "/v1/batch",
        &json!({"batch": [
            {"type": "identify", "messageId": "pf-1", "userId": "u1", "traits": {"email": "ann@example.com"}},
            {"type": "track", "messageId": "pf-2", "userId": "u1", "event": "Tour Finished"},
            {"type": "track", "messageId": "pf-bad", "userId": "u2", "event": "X"},
        ]}),
    );
    assert_eq!(r.status, 200);
    let got = rx.wait_until("pf-1 and pf-2 delivered, pf-bad refused", WAIT, |l| {
        let ids = Receiver::delivered_ids(l);
        ids.contains("pf-1") && ids.contains("pf-2") && l.iter().any(|r| r.answered == Some(410))
    });
    // The stored events, byte for byte as the admin API shows them, signed.
    let stored = s.events("web", 10);
    for r in &got {
        assert_eq!(r.path, "/segment/abc");
        assert_eq!(r.headers["x-signature"], hmac_hex("pf-secret", &r.body));
        let sent = r.json();
        let original = stored
            .iter()
            .find(|e| e["messageId"] == sent["messageId"])
            .unwrap();
        assert_eq!(&sent, original);
    }
    let dl = s.admin_until(
        "/destinations/pf/dead-letters",
        "pf-bad dead-lettered",
        WAIT,
        |b| b["data"].as_array().is_some_and(|a| a.len() == 1),
    );
    assert_eq!(dl["data"][0]["messageId"], "pf-bad");
    assert_eq!(dl["data"][0]["status"], 410);
}

#[test]
fn miso_batches_interactions_and_refuses_per_event() {
    // Miso refuses a whole request (422) when one record is bad: the batch is split.
    let rx = Receiver::start(|_, r| {
        if String::from_utf8_lossy(&r.body).contains("bad-id") {
            Answer::WithBody(
                422,
                "{\"errors\":true,\"data\":[\"data.0.product_ids.0 is invalid\"]}",
            )
        } else {
            Answer::Status(200)
        }
    });
    let cfg = partner_config("miso", "miso", "api_key = \"miso_secret_1\"", &rx.url, "").replace(
        "sources = [\"web\"]",
        "sources = [\"web\"]\nbatch_size = 100",
    );
    let s = Server::start(Some(&cfg));
    let mut batch: Vec<Value> = (0..5)
        .map(|i| json!({"type": "track", "messageId": format!("mb-{i}"), "userId": "u1", "event": "Product Viewed", "properties": {"product_id": format!("p{i}")}}))
        .collect();
    // One the batch must not carry: no product id (skipped), and one no action takes.
    batch.push(
        json!({"type": "track", "messageId": "mb-skip", "userId": "u1", "event": "Product Viewed"}),
    );
    batch.push(json!({"type": "identify", "messageId": "mb-id", "userId": "u1"}));
    batch.push(json!({"type": "track", "messageId": "mb-bad", "userId": "u1", "event": "Product Viewed", "properties": {"product_id": "bad-id"}}));
    let r = s.send("/v1/batch", &json!({ "batch": batch }));
    assert_eq!(r.status, 200);
    let got = rx.wait_until("five interactions accepted", WAIT, |l| {
        l.iter()
            .filter(|r| r.answered == Some(200))
            .map(|r| r.json()["data"].as_array().map_or(0, Vec::len))
            .sum::<usize>()
            >= 5
    });
    let mut products: Vec<String> = got
        .iter()
        .filter(|r| r.answered == Some(200))
        .flat_map(|r| r.json()["data"].as_array().cloned().unwrap_or_default())
        .map(|i| i["product_ids"][0].as_str().unwrap().to_string())
        .collect();
    products.sort();
    assert_eq!(products, ["p0", "p1", "p2", "p3", "p4"]);
    let skipped = s.admin_until("/events/mb-skip", "mb-skip recorded", WAIT, |b| {
        b["deliveries"].is_array()
    });
    assert_eq!(skipped["deliveries"][0]["outcome"], "filtered");
    assert!(skipped["deliveries"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("product_id"));
    let d = s.admin_until("/destinations/miso/delivery", "five delivered", WAIT, |b| {
        b["windows"]["5m"]["counts"]["delivered"] == 5
    });
    assert_eq!(d["windows"]["5m"]["counts"]["filtered"], 2, "{d}");
    let dl = s.admin_until(
        "/destinations/miso/dead-letters",
        "the bad record dead-lettered",
        WAIT,
        |b| b["data"].as_array().is_some_and(|a| a.len() == 1),
    );
    assert_eq!(dl["data"][0]["messageId"], "mb-bad");
    assert_eq!(dl["data"][0]["status"], 422);
}
