//! Routing end to end: the real binary delivers to real HTTP receivers started here.
//! Signatures, retries until recovery, dead letters and their replay, isolation from a
//! hanging destination, a crash mid-delivery, `integrations` and event filters, the SSRF
//! guard, the admin API of destinations, the event tester and log replay.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
[[sources]]
name = "app"
write_key = "wk_app_456"
{destinations}
"#
    )
}

/// The issue's minimal configuration, pointed at `url`, plus `extra` lines.
fn hooks(name: &str, url: &str, extra: &str) -> String {
    format!(
        r#"
[[destinations]]
name = "{name}"
type = "webhook"
sources = ["web"]
allow_private_networks = true
{extra}
[destinations.settings]
sharedSecret = "s3cret"
hooks = [{{ hook = "{url}/in" }}]
"#
    )
}

const FAST_RETRY: &str = r#"retry = { min_backoff = "20ms", max_backoff = "200ms" }"#;

fn track(id: &str, user: &str, event: &str) -> Value {
    json!({"messageId": id, "userId": user, "event": event, "properties": {"n": id}})
}

fn batch(s: &Server, items: Vec<Value>) {
    let r = s.send("/v1/batch", &json!({ "batch": items.into_iter().map(|mut i| { i["type"] = json!("track"); i }).collect::<Vec<_>>() }));
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn delivers_signed_events_with_the_fields_sent() {
    let rx = Receiver::ok();
    let s = Server::start(Some(&config(&hooks("hooks", &rx.url, ""))));
    let r = s.send(
        "/v1/identify",
        &json!({"messageId": "id-1", "userId": "u1", "traits": {"email": "a@example.com", "plan": "pro"}}),
    );
    assert_eq!(r.status, 200);
    let r = s.send(
        "/v1/track",
        &json!({"messageId": "tr-1", "userId": "u1", "event": "Signed Up", "properties": {"price": 12.5, "tags": ["a"]}, "custom": {"kept": true}}),
    );
    assert_eq!(r.status, 200);
    let got = rx.wait_until("two deliveries", WAIT, |l| l.len() >= 2);
    // One user: log order.
    let first = got[0].json();
    let second = got[1].json();
    assert_eq!(first["messageId"], "id-1");
    assert_eq!(first["type"], "identify");
    assert_eq!(first["traits"]["email"], "a@example.com");
    assert_eq!(second["messageId"], "tr-1");
    assert_eq!(second["event"], "Signed Up");
    assert_eq!(second["properties"]["price"], 12.5);
    assert_eq!(second["custom"]["kept"], true);
    assert!(second["receivedAt"].is_string());
    for r in &got {
        assert_eq!(r.path, "/in");
        assert_eq!(r.headers["x-signature"], hmac_hex("s3cret", &r.body));
        assert_eq!(r.headers["content-type"], "application/json");
        assert!(
            r.headers["user-agent"].starts_with("Sluice/"),
            "{:?}",
            r.headers
        );
    }
    // The journey and the delivery report agree.
    let j = s.admin_until("/events/tr-1", "journey of tr-1", WAIT, |b| {
        b["deliveries"][0]["outcome"] == "delivered"
    });
    assert_eq!(j["deliveries"][0]["destination"], "hooks");
    assert_eq!(j["deliveries"][0]["attempts"], 1);
    assert_eq!(j["deliveries"][0]["status"], 200);
    assert_eq!(j["stored"]["event"]["event"], "Signed Up");
    let d = s.admin("/destinations/hooks/delivery").body;
    assert_eq!(d["windows"]["5m"]["counts"]["delivered"], 2, "{d}");
    assert!(d["windows"]["5m"]["latency_ms"]["p50"].is_number(), "{d}");
    assert_eq!(d["backlog"]["retry_queue"], 0);
    s.admin("/events/never-sent").assert_error(404, "not_found");
}

#[test]
fn a_failing_receiver_that_recovers_gets_every_event() {
    // 503 for the first 40 requests (with a Retry-After of 0 on some), then 200.
    let rx = Receiver::start(|n, _| match n {
        0..=19 => Answer::Status(503),
        20..=39 => Answer::WithBody(500, "{\"error\":\"overloaded\"}"),
        _ => Answer::Status(200),
    });
    let s = Server::start(Some(&config(&hooks("hooks", &rx.url, FAST_RETRY))));
    let ids: Vec<String> = (0..60).map(|i| format!("m{i}")).collect();
    batch(
        &s,
        ids.iter()
            .enumerate()
            .map(|(i, id)| track(id, &format!("user{}", i % 7), "Clicked"))
            .collect(),
    );
    let got = rx.wait_until("all 60 delivered", WAIT, |l| {
        Receiver::delivered_ids(l).len() == 60
    });
    let delivered = Receiver::delivered_ids(&got);
    assert_eq!(delivered, ids.iter().cloned().collect::<HashSet<_>>());
    assert!(got.iter().filter(|r| r.answered != Some(200)).count() >= 40);
    let d = s.admin_until(
        "/destinations/hooks/delivery",
        "an empty retry queue",
        WAIT,
        |b| b["backlog"]["retry_queue"] == 0 && b["windows"]["5m"]["counts"]["delivered"] == 60,
    );
    assert_eq!(d["backlog"]["dead_letters"], 0, "{d}");
    assert!(d["windows"]["5m"]["counts"]["retrying"].as_u64().unwrap() > 0);
    let errors = d["latest_errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e["status"] == 500 && e["response"] == "{\"error\":\"overloaded\"}"),
        "{d}"
    );
    // Metrics carry the destination label.
    let m = s.request("GET", "/metrics", &[], None);
    let text = m.body.as_str().unwrap_or_default().to_string();
    assert!(
        text.contains(
            "sluice_delivery_events_total{destination=\"hooks\",outcome=\"delivered\"} 60"
        ),
        "{text}"
    );
}

#[test]
fn a_permanent_error_is_dead_lettered_at_once_and_replays_after_a_fix() {
    let broken = Arc::new(AtomicBool::new(true));
    let b = broken.clone();
    let rx = Receiver::start(move |_, _| {
        if b.load(Ordering::SeqCst) {
            Answer::WithBody(400, "{\"error\":\"missing field email\"}")
        } else {
            Answer::Status(200)
        }
    });
    let s = Server::start(Some(&config(&hooks("hooks", &rx.url, FAST_RETRY))));
    batch(
        &s,
        vec![
            track("d1", "ua", "A"),
            track("d2", "ub", "B"),
            track("d3", "ua", "C"),
        ],
    );
    let dl = s.admin_until(
        "/destinations/hooks/dead-letters",
        "three dead letters",
        WAIT,
        |b| b["data"].as_array().is_some_and(|a| a.len() == 3),
    );
    for d in dl["data"].as_array().unwrap() {
        assert_eq!(d["status"], 400);
        assert_eq!(
            d["attempts"].as_array().unwrap().len(),
            1,
            "not retried: {d}"
        );
        assert_eq!(
            d["attempts"][0]["response"],
            "{\"error\":\"missing field email\"}"
        );
        assert!(d["reason"].as_str().unwrap().contains("permanent"), "{d}");
        assert!(d["event"]["messageId"].is_string());
    }
    // Filters: by user and by status.
    let by_user = s.admin("/destinations/hooks/dead-letters?user=ua").body;
    assert_eq!(by_user["data"].as_array().unwrap().len(), 2);
    let by_status = s.admin("/destinations/hooks/dead-letters?status=500").body;
    assert_eq!(by_status["data"].as_array().unwrap().len(), 0);
    s.admin("/destinations/hooks/dead-letters?status=abc")
        .assert_error(400, "invalid_status");
    s.admin("/destinations/hooks/dead-letters?since=yesterday")
        .assert_error(400, "invalid_time");
    assert_eq!(rx.received().len(), 3, "a 400 is never retried");
    let j = s.admin("/events/d2").body;
    assert_eq!(j["deliveries"][0]["outcome"], "failed");

    // Fix the receiver, replay only user ua's dead letters, then the rest.
    broken.store(false, Ordering::SeqCst);
    let r = s.admin_call(
        "POST",
        "/destinations/hooks/dead-letters/replay",
        Some(&json!({"user": "ua"})),
    );
    assert_eq!(
        (r.status, &r.body["replayed"]),
        (200, &json!(2)),
        "{}",
        r.body
    );
    let got = rx.wait_until("the replayed two", WAIT, |l| {
        Receiver::delivered_ids(l).len() == 2
    });
    assert_eq!(
        Receiver::delivered_ids(&got),
        HashSet::from(["d1".to_string(), "d3".to_string()])
    );
    // The rest with `sluice replay`, the operator's command.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "replay",
            "hooks",
            "--dead-letters",
            "--url",
            &s.url,
            "--token",
            &s.admin_token,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 dead letter(s)"), "{stdout}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["replay", "nope", "--url", &s.url, "--token", &s.admin_token])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no destination named \"nope\""));
    rx.wait_until("the third", WAIT, |l| Receiver::delivered_ids(l).len() == 3);
    s.admin_until(
        "/destinations/hooks/dead-letters",
        "no dead letters",
        WAIT,
        |b| b["data"].as_array().is_some_and(|a| a.is_empty()),
    );
    s.admin_until("/events/d2", "d2 delivered", WAIT, |b| {
        b["deliveries"][0]["outcome"] == "delivered"
    });
    let r = s.admin_call(
        "POST",
        "/destinations/hooks/dead-letters/replay",
        Some(&json!({"colour": "red"})),
    );
    r.assert_error(400, "invalid_body");
}

#[test]
fn a_hanging_destination_does_not_hold_up_a_healthy_one() {
    let hanging = Receiver::start(|_, _| Answer::Hang);
    let healthy = Receiver::ok();
    let cfg = config(&format!(
        "{}{}",
        hooks("stuck", &hanging.url, "timeout = \"60s\"\nconcurrency = 2"),
        hooks("healthy", &healthy.url, "")
    ));
    let s = Server::start(Some(&cfg));
    let ids: Vec<String> = (0..40).map(|i| format!("h{i}")).collect();
    batch(
        &s,
        ids.iter()
            .enumerate()
            .map(|(i, id)| track(id, &format!("u{i}"), "Viewed"))
            .collect(),
    );
    let got = healthy.wait_until("all 40 at the healthy receiver", WAIT, |l| {
        Receiver::delivered_ids(l).len() == 40
    });
    assert_eq!(got.len(), 40);
    // Meanwhile the stuck destination has requests hanging and nothing delivered.
    hanging.wait_until("the stuck destination's lanes to be busy", WAIT, |l| {
        l.len() == 2
    });
    let stuck = s.admin("/destinations/stuck/delivery").body;
    assert_eq!(stuck["windows"]["5m"]["counts"]["delivered"], 0, "{stuck}");
    // (The receiver records a request before the server has its answer: wait for it.)
    s.admin_until(
        "/destinations/healthy/delivery",
        "40 delivered",
        WAIT,
        |b| b["windows"]["5m"]["counts"]["delivered"] == 40,
    );
    // Ingest is not held up either.
    let r = s.send("/v1/track", &track("after", "u1", "Viewed"));
    assert_eq!(r.status, 200);
    healthy.wait_until("the later event", WAIT, |l| {
        Receiver::delivered_ids(l).contains("after")
    });
}

#[test]
fn sigkill_mid_delivery_loses_nothing_and_duplicates_keep_their_message_id() {
    // Slow enough that the kill lands with deliveries in flight.
    let rx = Receiver::start(|_, _| {
        std::thread::sleep(Duration::from_millis(5));
        Answer::Status(200)
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&hooks("hooks", &rx.url, "concurrency = 2"));
    let mut s = Server::start_in(dir.path(), Some(&cfg));
    let ids: Vec<String> = (0..400).map(|i| format!("k{i}")).collect();
    for chunk in ids.chunks(100) {
        batch(
            &s,
            chunk
                .iter()
                .enumerate()
                .map(|(i, id)| track(id, &format!("u{}", i % 13), "Tick"))
                .collect(),
        );
    }
    rx.wait_until("some deliveries before the kill", WAIT, |l| l.len() >= 30);
    s.signal(libc::SIGKILL);
    s.wait();
    let before = rx.received().len();
    assert!(
        before < 400,
        "the kill should land mid-delivery ({before} delivered)"
    );
    let _s = Server::start_in(dir.path(), Some(&cfg));
    let got = rx.wait_until("all 400 after the restart", WAIT, |l| {
        Receiver::delivered_ids(l).len() == 400
    });
    // Every copy of an event is the same bytes (same messageId, same body).
    let mut bodies: HashMap<String, Vec<u8>> = HashMap::new();
    for r in &got {
        let id = r.json()["messageId"].as_str().unwrap().to_string();
        assert!(ids.contains(&id));
        let first = bodies.entry(id).or_insert_with(|| r.body.clone());
        assert_eq!(*first, r.body);
    }
}

#[test]
fn integrations_and_event_filters_are_honoured() {
    let rx = Receiver::ok();
    let s = Server::start(Some(&config(&hooks(
        "hooks",
        &rx.url,
        r#"events = ["Order Completed", "identify", "Marker"]"#,
    ))));
    let u = "same-user"; // one user key: one lane, log order
    let items = vec![
        json!({"type": "track", "messageId": "f-pass", "userId": u, "event": "Order Completed"}),
        json!({"type": "track", "messageId": "f-filtered", "userId": u, "event": "Cart Viewed"}),
        json!({"type": "identify", "messageId": "f-identify", "userId": u}),
        json!({"type": "page", "messageId": "f-page", "userId": u, "name": "Home"}),
        json!({"type": "track", "messageId": "f-all-off", "userId": u, "event": "Order Completed", "integrations": {"All": false}}),
        json!({"type": "track", "messageId": "f-all-off-but-us", "userId": u, "event": "Order Completed", "integrations": {"All": false, "hooks": true}}),
        json!({"type": "track", "messageId": "f-us-off", "userId": u, "event": "Order Completed", "integrations": {"hooks": false}}),
        json!({"type": "track", "messageId": "f-type-off", "userId": u, "event": "Order Completed", "integrations": {"Webhooks": false}}),
        json!({"type": "track", "messageId": "f-other-off", "userId": u, "event": "Order Completed", "integrations": {"Mixpanel": false}}),
        json!({"type": "track", "messageId": "f-marker", "userId": u, "event": "Marker"}),
    ];
    let r = s.send("/v1/batch", &json!({ "batch": items }));
    assert_eq!(r.status, 200);
    // An event of another source never reaches this destination.
    let r = s.request(
        "POST",
        "/v1/track",
        &[("Authorization", &common::basic("wk_app_456"))],
        Some(br#"{"messageId":"f-app","userId":"same-user","event":"Order Completed"}"#),
    );
    assert_eq!(r.status, 200);
    let got = rx.wait_until("the marker", WAIT, |l| {
        Receiver::delivered_ids(l).contains("f-marker")
    });
    let ids: Vec<String> = got
        .iter()
        .map(|r| r.json()["messageId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        [
            "f-pass",
            "f-identify",
            "f-all-off-but-us",
            "f-other-off",
            "f-marker"
        ]
    );
    let outcome = |id: &str| {
        s.admin_until(&format!("/events/{id}"), id, WAIT, |b| {
            b["deliveries"].is_array()
        })
    };
    assert_eq!(
        outcome("f-filtered")["deliveries"][0]["outcome"],
        "filtered"
    );
    assert_eq!(outcome("f-page")["deliveries"][0]["outcome"], "filtered");
    let off = outcome("f-us-off");
    assert_eq!(off["deliveries"][0]["outcome"], "dropped_integrations");
    assert!(off["deliveries"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("integrations.hooks"));
    assert_eq!(
        outcome("f-all-off")["deliveries"][0]["outcome"],
        "dropped_integrations"
    );
    assert_eq!(
        outcome("f-type-off")["deliveries"][0]["outcome"],
        "dropped_integrations"
    );
    s.admin("/events/f-app").assert_error(404, "not_found");
}

#[test]
fn the_ssrf_guard_refuses_private_targets_unless_allowed() {
    let cfg = config(
        r#"
[[destinations]]
name = "hooks"
type = "webhook"
sources = ["web"]
[destinations.settings]
hooks = [{ hook = "http://127.0.0.1:9000/in" }]
"#,
    );
    let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(f.path(), &cfg).unwrap();
    for cmd in ["check", "serve"] {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
        c.arg(cmd).arg("--config").arg(f.path());
        if cmd == "serve" {
            let dir = tempfile::tempdir().unwrap();
            c.arg("--listen")
                .arg("127.0.0.1:0")
                .arg("--data-dir")
                .arg(dir.path());
        }
        let out = c.output().unwrap();
        assert!(!out.status.success(), "{cmd} must refuse the config");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("settings.hooks[0].hook"), "{cmd}: {err}");
        assert!(
            err.contains("loopback") && err.contains("allow_private_networks"),
            "{cmd}: {err}"
        );
    }
    // Over the admin API too, for every kind of private address.
    let s = Server::start(Some(&config("")));
    for url in [
        "http://10.0.0.8/x",
        "http://169.254.169.254/latest",
        "http://[::1]:80/",
        "http://localhost:9/",
    ] {
        let r = s.admin_call(
            "PUT",
            "/destinations/api-hooks",
            Some(&json!({"type": "webhook", "sources": ["web"], "settings": {"hooks": [{"hook": url}]}})),
        );
        r.assert_error(400, "invalid_destination");
        assert_eq!(r.body["field"], "settings.hooks[0].hook", "{url}");
    }
}

#[test]
fn destinations_over_the_admin_api_and_the_event_tester() {
    let rx = Receiver::start(|_, r| {
        if r.path == "/fail" {
            Answer::WithBody(422, "{\"error\":\"bad\"}")
        } else {
            Answer::WithBody(200, "{\"ok\":true}")
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&hooks("from-file", &rx.url, ""));
    let s = Server::start_in(dir.path(), Some(&cfg));
    let body = json!({
        "type": "webhook", "sources": ["web"], "allow_private_networks": true,
        "events": ["Order Completed"],
        "settings": {"sharedSecret": "k", "hooks": [{"hook": format!("{}/api", rx.url), "headers": {"Authorization": "Bearer xyz"}}]}
    });
    let r = s.admin_call("PUT", "/destinations/api-hooks", Some(&body));
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["managed_by"], "api");
    assert_eq!(r.body["state"], "running");
    assert_eq!(r.body["settings"]["sharedSecret"], "********");
    let r = s.admin_call("PUT", "/destinations/api-hooks", Some(&body));
    assert_eq!(r.status, 200);
    let r = s.admin_call("PUT", "/destinations/from-file", Some(&body));
    r.assert_error(409, "managed_by_file");
    s.admin_call("DELETE", "/destinations/from-file", None)
        .assert_error(409, "managed_by_file");
    let r = s.admin_call(
        "PUT",
        "/destinations/x",
        Some(&json!({"type": "webhook", "sources": ["nope"], "settings": {}})),
    );
    r.assert_error(400, "invalid_destination");
    assert_eq!(r.body["field"], "sources[0]");
    let r = s.admin_call(
        "PUT",
        "/destinations/x",
        Some(&json!({"type": "webhook", "sourcez": []})),
    );
    r.assert_error(400, "invalid_destination");
    assert!(
        r.body["message"].as_str().unwrap().contains("sourcez"),
        "{}",
        r.body
    );
    let list = s.admin("/destinations").body;
    let names: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api-hooks", "from-file"]);
    s.admin("/destinations/nope/delivery")
        .assert_error(404, "unknown_destination");

    // The event tester: the exact request and the destination's answer.
    let ev = json!({"type": "track", "userId": "t1", "event": "Order Completed", "messageId": "tester-1"});
    let r = s.admin_call(
        "POST",
        "/destinations/api-hooks/test",
        Some(&json!({ "event": ev })),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let call = &r.body["calls"][0];
    assert_eq!(r.body["result"], "delivered");
    assert_eq!(call["request"]["method"], "POST");
    assert_eq!(call["request"]["url"], format!("{}/api", rx.url));
    assert_eq!(call["request"]["headers"]["authorization"], "Bearer xyz");
    let sent_body = call["request"]["body"].as_str().unwrap();
    assert_eq!(
        call["request"]["headers"]["x-signature"],
        hmac_hex("k", sent_body.as_bytes())
    );
    assert_eq!(call["response"]["status"], 200);
    assert_eq!(call["response"]["body"], "{\"ok\":true}");
    let seen = rx.wait_until("the tester's request", WAIT, |l| {
        l.iter().any(|r| r.path == "/api")
    });
    let at_receiver = seen.iter().find(|r| r.path == "/api").unwrap();
    assert_eq!(at_receiver.body, sent_body.as_bytes());
    // A sample event when none is given; it does not pass this destination's filter.
    let r = s.admin_call("POST", "/destinations/api-hooks/test", None);
    assert_eq!(r.body["would_route"]["send"], false, "{}", r.body);
    let r = s.admin_call("POST", "/destinations/api-hooks/test", Some(&json!([1, 2])));
    r.assert_error(400, "bad_request");

    // A failing endpoint: the tester shows the status and body it got.
    let fail = json!({"type": "webhook", "sources": ["web"], "allow_private_networks": true,
        "settings": {"hooks": [{"hook": format!("{}/fail", rx.url)}]}});
    assert_eq!(
        s.admin_call("PUT", "/destinations/failing", Some(&fail))
            .status,
        201
    );
    let r = s.admin_call("POST", "/destinations/failing/test", None);
    assert_eq!(r.body["result"], "permanent_error");
    assert_eq!(r.body["calls"][0]["response"]["status"], 422);
    assert_eq!(
        r.body["calls"][0]["response"]["body"],
        "{\"error\":\"bad\"}"
    );
    assert_eq!(
        s.admin_call("DELETE", "/destinations/failing", None).status,
        204
    );
    s.admin("/destinations/failing")
        .assert_error(404, "unknown_destination");

    // API destinations survive a restart.
    drop(s);
    let s = Server::start_in(dir.path(), Some(&cfg));
    let d = s.admin("/destinations/api-hooks").body;
    assert_eq!(d["state"], "running", "{d}");
    assert_eq!(d["events"], json!(["Order Completed"]));
}

#[test]
fn a_window_of_the_log_replays_to_one_destination() {
    let rx = Receiver::ok();
    let other = Receiver::ok();
    let cfg = config(&format!(
        "{}{}",
        hooks("hooks", &rx.url, ""),
        hooks("other", &other.url, "")
    ));
    let s = Server::start(Some(&cfg));
    let from = chrono_now_ms() - 1000;
    batch(
        &s,
        (0..5)
            .map(|i| track(&format!("w{i}"), "u", "Seen"))
            .collect(),
    );
    rx.wait_until("first delivery", WAIT, |l| l.len() == 5);
    other.wait_until("first delivery elsewhere", WAIT, |l| l.len() == 5);
    let r = s.admin_call(
        "POST",
        "/destinations/hooks/replay",
        Some(&json!({"from": from})),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let job = r.body["id"].as_str().unwrap().to_string();
    let got = rx.wait_until("the replay", WAIT, |l| l.len() == 10);
    let second: Vec<Value> = got[5..]
        .iter()
        .map(|r| r.json()["messageId"].clone())
        .collect();
    assert_eq!(
        second,
        (0..5).map(|i| json!(format!("w{i}"))).collect::<Vec<_>>()
    );
    s.admin_until(
        "/destinations/hooks/replays",
        "the job to finish",
        WAIT,
        |b| b["data"][0]["id"] == job.as_str() && b["data"][0]["status"] == "done",
    );
    // The other destination got nothing again.
    assert_eq!(other.received().len(), 5);
    let r = s.admin_call(
        "POST",
        "/destinations/hooks/replay",
        Some(&json!({"from": "2030-01-01T00:00:00Z", "to": "2020-01-01T00:00:00Z"})),
    );
    r.assert_error(400, "bad_request");
    let r = s.admin_call(
        "POST",
        "/destinations/hooks/replay",
        Some(&json!({"from": "last tuesday"})),
    );
    r.assert_error(400, "invalid_time");
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Sluice downstream of another "Segment": the upstream server's webhook destination
/// (signed, batched as Webhooks (Actions) does) posts into a `segment_webhook` source of a
/// second server, which maps the user id, dedupes on the upstream messageId, stores and
/// routes the events like its own.
#[test]
fn segment_webhook_source_takes_a_webhook_destinations_posts() {
    let downstream_rx = Receiver::ok();
    let downstream = Server::start(Some(&format!(
        r#"
admin_token = "test-admin-token"
[[sources]]
name = "web"
write_key = "wk_web_123"
[[sources]]
name = "from-segment"
kind = "segment_webhook"
write_key = "wk_from_segment"
shared_secret = "mig-secret"
field_mapping = {{ userId = "context.traits.member_id" }}
[[destinations]]
name = "onward"
type = "webhook"
sources = ["from-segment"]
allow_private_networks = true
[destinations.settings]
hooks = [{{ hook = "{}/onward" }}]
"#,
        downstream_rx.url
    )));
    let upstream = Server::start(Some(&config(&format!(
        r#"
[[destinations]]
name = "to-sluice"
type = "webhook"
sources = ["web"]
allow_private_networks = true
batch_size = 10
[destinations.settings]
sharedSecret = "mig-secret"
hooks = [{{ hook = "{}/v1/webhooks/from-segment" }}]
"#,
        downstream.url
    ))));
    let r = upstream.send(
        "/v1/batch",
        &json!({"batch": [
            {"type": "identify", "messageId": "up-1", "userId": "seg-1", "timestamp": "2026-05-01T10:00:00Z",
             "traits": {"plan": "pro"}, "context": {"traits": {"member_id": "M-77"}}},
            {"type": "track", "messageId": "up-2", "userId": "seg-1", "event": "Order Completed",
             "timestamp": "2026-05-01T10:01:00Z", "context": {"traits": {"member_id": "M-77"}}},
            {"type": "track", "messageId": "up-3", "userId": "seg-2", "event": "Unmapped"},
        ]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let got = downstream_rx.wait_until("three events routed downstream", WAIT, |log| {
        Receiver::delivered_ids(log).len() == 3
    });
    let by_id: HashMap<String, Value> = got
        .iter()
        .map(|r| r.json())
        .map(|e| (e["messageId"].as_str().unwrap().to_string(), e))
        .collect();
    assert_eq!(by_id["up-1"]["userId"], "M-77", "field mapping");
    assert_eq!(by_id["up-1"]["traits"]["plan"], "pro");
    assert_eq!(
        by_id["up-2"]["timestamp"], "2026-05-01T10:01:00.000Z",
        "Segment's timestamp kept"
    );
    assert_eq!(
        by_id["up-3"]["userId"], "seg-2",
        "no value at the path: the id stays"
    );
    assert_eq!(downstream.events("from-segment", 10).len(), 3);

    // By hand: a signed single event is stored once even when Segment retries it; wrong,
    // missing signatures and unknown sources are refused.
    let body = br#"{"type":"track","messageId":"up-9","userId":"seg-9","event":"Again"}"#;
    let sig = hmac_hex("mig-secret", body);
    let post = |sig: Option<&str>, path: &str| {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(s) = sig {
            headers.push(("X-Signature", s));
        }
        downstream.request("POST", path, &headers, Some(body))
    };
    let first = post(Some(&sig), "/v1/webhooks/from-segment");
    assert_eq!(
        (first.status, first.body["accepted"].as_u64()),
        (200, Some(1)),
        "{}",
        first.body
    );
    let again = post(Some(&sig), "/v1/webhooks/from-segment");
    assert_eq!(again.body["duplicates"], 1, "{}", again.body);
    post(Some(&hmac_hex("other", body)), "/v1/webhooks/from-segment")
        .assert_error(401, "invalid_signature");
    post(None, "/v1/webhooks/from-segment").assert_error(401, "invalid_signature");
    post(Some(&sig), "/v1/webhooks/web").assert_error(404, "not_found");
    post(Some(&sig), "/v1/webhooks/nope").assert_error(404, "not_found");
}
