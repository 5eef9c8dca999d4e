//! Hostile input against the real binary: what an attacker holding a public write key can
//! send, and what an operator's logs and load balancer see. Each test here failed on the
//! code before the fix it names.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::receiver::Receiver;
use common::{basic, gzip, noise, Server};
use proptest::prelude::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

const WEB: &str = r#"
admin_token = "test-admin-token"
[[sources]]
name = "web"
write_key = "wk_web_123"
"#;

fn post(s: &Server, path: &str, body: &[u8]) -> common::Reply {
    let auth = basic("wk_web_123");
    s.request(
        "POST",
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        Some(body),
    )
}

/// The probe's attack: 2,500 tiny items under a 439 KB envelope `context`, which the
/// server merged into every item after checking each item's size (RSS 24 MB → 2.47 GB).
#[test]
fn the_envelope_context_cannot_amplify_a_batch() {
    let s = Server::start(Some(WEB));
    let items = vec![r#"{"type":"track","userId":"u","event":"E"}"#; 2500].join(",");
    let pad = "x".repeat(439 * 1024 - items.len().min(400 * 1024));
    let body = format!(r#"{{"batch":[{items}],"context":{{"pad":"{pad}"}}}}"#);
    assert!(body.len() <= 500 * 1024, "{}", body.len());
    let r = post(&s, "/v1/batch", body.as_bytes());
    r.assert_error(400, "event_too_large");
    assert_eq!(r.body["field"], "context", "{}", r.body);
    assert_eq!(s.events("web", 10).len(), 0);

    // An envelope context that fits an event: stored events stay within the stated bounds
    // (each ≤ 32 KB + 512 bytes, the request's ≤ 4 × 500 KB); the rest are refused by name.
    let pad = "y".repeat(20_000);
    let items = vec![r#"{"type":"track","userId":"u","event":"E"}"#; 2000].join(",");
    let body = format!(r#"{{"batch":[{items}],"context":{{"pad":"{pad}"}}}}"#);
    let r = post(&s, "/v1/batch", body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let accepted = r.body["accepted"].as_u64().unwrap() as usize;
    let rejected = r.body["rejected"].as_array().unwrap();
    assert_eq!(accepted + rejected.len(), 2000);
    assert!(
        accepted > 0 && accepted * 20_000 <= 4 * 500 * 1024,
        "{accepted}"
    );
    assert!(rejected.iter().all(|x| x["code"] == "batch_too_large"));
    let stored = s.events("web", 1000);
    assert_eq!(stored.len(), accepted);
    assert_eq!(stored[0]["context"]["pad"], pad.as_str());

    // A gzip body is decompressed no further than the endpoint takes: a 2 KB bomb that
    // inflates past a batch's 500 KB is refused without inflating the rest.
    let bomb = gzip(&vec![b' '; 3 * 1024 * 1024]);
    assert!(bomb.len() < 8 * 1024);
    let auth = basic("wk_web_123");
    let r = s.request(
        "POST",
        "/v1/batch",
        &[("Authorization", &auth), ("Content-Encoding", "gzip")],
        Some(&bomb),
    );
    r.assert_error(413, "request_too_large");
    assert!(
        r.body["message"].as_str().unwrap().contains("512000"),
        "{}",
        r.body
    );
}

/// Events nested past 127 levels, or holding a lone surrogate, were acknowledged and then
/// unreadable: the admin API showed `"event": null` and destinations failed them.
#[test]
fn unreadable_events_are_refused_by_name_on_every_path() {
    let s = Server::start(Some(WEB));
    let deep = |levels: usize| {
        format!(
            r#"{{"type":"track","userId":"u","event":"Deep","properties":{{"a":{}1{}}}}}"#,
            "[".repeat(levels),
            "]".repeat(levels)
        )
    };
    // 150 levels: serde_json (and so every reader of ours) stops at 128.
    let r = post(&s, "/v1/track", deep(150).as_bytes());
    r.assert_error(400, "too_deep");
    assert_eq!(r.body["field"], "properties");
    let lone = r#"{"type":"track","userId":"u","event":"Lone","properties":{"s":"\ud800"}}"#;
    let r = post(&s, "/v1/track", lone.as_bytes());
    r.assert_error(400, "invalid_string");
    let body = format!(
        r#"{{"batch":[{},{lone},{{"type":"track","userId":"u","event":"Fine","messageId":"fine"}}]}}"#,
        deep(150)
    );
    let r = post(&s, "/v1/batch", body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["accepted"], 1);
    let codes: Vec<&str> = r.body["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["too_deep", "invalid_string"]);
    let stored = s.events("web", 10);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["messageId"], "fine");
    // The refusals are recorded with their reasons for the admin API.
    let rec = s.admin("/sources/web/rejected?limit=10");
    let text = rec.body.to_string();
    assert!(
        text.contains("too_deep") && text.contains("invalid_string"),
        "{text}"
    );
}

/// JSON text as hostile clients write it: nesting around the limit, surrogate escapes
/// paired and lone, numbers at and past an f64's range, control escapes, long digits.
fn hostile(depth: u32) -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        Just("-0.0".to_string()),
        Just("1e308".to_string()),
        Just("1e309".to_string()),
        Just("123456789012345678901234567890".to_string()),
        Just(r#""\ud83d\ude00""#.to_string()),
        Just(r#""\ud800""#.to_string()),
        Just(r#""\\ud800""#.to_string()),
        Just(r#""\u0000\n\t\"\/\u2028""#.to_string()),
        "[a-zé€😀 ]{0,6}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        (55usize..66).prop_map(|n| format!("{}0{}", "[".repeat(n), "]".repeat(n))),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    prop_oneof![
        3 => leaf,
        1 => prop::collection::vec(hostile(depth - 1), 0..3)
            .prop_map(|v| format!("[{}]", v.join(","))),
        1 => prop::collection::vec(("[a-z]{1,3}", hostile(depth - 1)), 0..3).prop_map(|v| {
            let m: Vec<String> = v.into_iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", m.join(","))
        }),
    ]
    .boxed()
}

/// Every event ingest accepts reads back equal, as JSON, through the log (the admin
/// API's events), a classic webhook (the stored bytes forwarded) and a catalog
/// destination (the stored event parsed and mapped); every event it refuses is refused
/// with a readability code. One server for all cases.
#[test]
fn every_accepted_event_reads_back_equal_through_the_admin_api_and_destinations() {
    let hook = Receiver::ok();
    let actions = Receiver::ok();
    let cfg = format!(
        r#"{WEB}
[[destinations]]
name = "hook"
type = "webhook"
sources = ["web"]
allow_private_networks = true
[destinations.settings]
hooks = [{{ hook = "{hook}/in" }}]

[[destinations]]
name = "actions"
type = "actions_webhook"
sources = ["web"]
allow_private_networks = true
[destinations.settings]
sharedSecret = "k3y"
endpoint_override = "{actions}"
[[destinations.actions]]
action = "send"
subscription = 'type = "track"'
mapping = {{ url = "https://hooks.example.com/e", data = {{ id = {{ "@path" = "$.messageId" }}, props = {{ "@path" = "$.properties" }} }} }}
"#,
        hook = hook.url,
        actions = actions.url,
    );
    let s = Server::start(Some(&cfg));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    });
    let accepted = std::cell::RefCell::new(Vec::new());
    let case = std::cell::Cell::new(0);
    runner
        .run(&(hostile(3), any::<bool>()), |(props, batch)| {
            case.set(case.get() + 1);
            let id = format!("case-{}", case.get());
            let item = format!(
                r#"{{"type":"track","userId":"u","event":"E","messageId":"{id}","properties":{{"p":{props}}}}}"#
            );
            let (path, body) = if batch {
                ("/v1/batch", format!(r#"{{"batch":[{item}]}}"#))
            } else {
                ("/v1/track", item.clone())
            };
            let r = post(&s, path, body.as_bytes());
            let refused = match (r.status, r.body["accepted"].as_u64()) {
                (200, Some(1)) => None,
                (200, Some(0)) => r.body["rejected"][0]["code"].as_str().map(str::to_owned),
                _ => r.body["code"].as_str().map(str::to_owned),
            };
            match refused {
                None => {
                    let sent: Value = serde_json::from_str(&item).expect("accepted, so it parses");
                    accepted.borrow_mut().push((id, sent["properties"].clone()));
                }
                Some(code) => prop_assert!(
                    ["too_deep", "invalid_string", "invalid_number"].contains(&code.as_str()),
                    "{} refused with {}: {}", item, code, r.body
                ),
            }
            Ok(())
        })
        .unwrap();
    let accepted = accepted.into_inner();
    assert!(
        accepted.len() >= 10,
        "too few accepted cases: {}",
        accepted.len()
    );
    let stored = s.events("web", 1000);
    for (id, props) in &accepted {
        let ev = stored
            .iter()
            .find(|e| e["messageId"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} acknowledged but not shown by the admin API"));
        assert_eq!(&ev["properties"], props, "{id} through the admin API");
    }
    let by_id = |log: &[common::receiver::Received], path: &str| -> Vec<(String, Value)> {
        log.iter()
            .filter_map(|r| {
                let v: Value = serde_json::from_slice(&r.body).ok()?;
                let items = match v {
                    Value::Array(a) => a,
                    one => vec![one],
                };
                Some(items)
            })
            .flatten()
            .filter_map(|v| {
                let id = v
                    .get("messageId")
                    .or_else(|| v.get("id"))?
                    .as_str()?
                    .to_owned();
                Some((id, v.pointer(path)?.clone()))
            })
            .collect()
    };
    let n = accepted.len();
    let got = hook.wait_until("the webhook's deliveries", WAIT, |log| {
        by_id(log, "/properties").len() >= n
    });
    let got = by_id(&got, "/properties");
    let acts = actions.wait_until("the catalog destination's deliveries", WAIT, |log| {
        by_id(log, "/props").len() >= n
    });
    let acts = by_id(&acts, "/props");
    for (id, props) in &accepted {
        let h = got.iter().find(|(i, _)| i == id).map(|(_, p)| p);
        assert_eq!(h, Some(props), "{id} through the webhook");
        let a = acts.iter().find(|(i, _)| i == id).map(|(_, p)| p);
        assert_eq!(a, Some(props), "{id} through the catalog destination");
    }
    // Nothing failed on the way out.
    let d = s.admin("/destinations/actions");
    assert_eq!(d.status, 200, "{}", d.body);
    assert!(!d.body.to_string().contains("is not JSON"), "{}", d.body);
}

/// Writes a raw HTTP/1.1 request and returns the status line and the body.
fn raw_request(s: &Server, request: &[u8]) -> (String, String) {
    let addr = s.url.trim_start_matches("http://");
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    conn.write_all(request).unwrap();
    let mut out = Vec::new();
    // The server closes after each of these answers (Connection: close).
    let _ = conn.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.lines().next().unwrap_or("").to_string();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[test]
fn strict_http_refusals_name_the_problem() {
    let s = Server::start(Some(
        &WEB.replace("test-admin-token", "tok+en/%x y").to_string(),
    ));
    let auth = basic("wk_web_123");
    let event = r#"{"userId":"u","event":"E"}"#;
    let req = |head: &str, body: &str| {
        format!(
            "POST /v1/track HTTP/1.1\r\n{head}Authorization: {auth}\r\nConnection: close\r\n\r\n{body}"
        )
    };
    // HTTP/1.1 without Host.
    let (status, body) = raw_request(
        &s,
        req(&format!("Content-Length: {}\r\n", event.len()), event).as_bytes(),
    );
    assert!(status.contains(" 400 "), "{status}");
    assert!(body.contains("missing_host"), "{body}");
    // A transfer coding other than chunked.
    let chunk = format!("{:x}\r\n{event}\r\n0\r\n\r\n", event.len());
    let (status, body) = raw_request(
        &s,
        req("Host: x\r\nTransfer-Encoding: gzip, chunked\r\n", &chunk).as_bytes(),
    );
    assert!(status.contains(" 501 "), "{status}");
    assert!(body.contains("unsupported_transfer_encoding"), "{body}");
    // Plain chunked is fine.
    let (status, _) = raw_request(
        &s,
        req("Host: x\r\nTransfer-Encoding: chunked\r\n", &chunk).as_bytes(),
    );
    assert!(status.contains(" 200 "), "{status}");
    // Two Content-Encoding headers, or a list.
    for head in [
        "Content-Encoding: gzip\r\nContent-Encoding: gzip\r\n",
        "Content-Encoding: gzip, identity\r\n",
    ] {
        let (status, body) = raw_request(
            &s,
            req(
                &format!("Host: x\r\n{head}Content-Length: {}\r\n", event.len()),
                event,
            )
            .as_bytes(),
        );
        assert!(status.contains(" 415 "), "{head}: {status}");
        assert!(body.contains("more than one coding"), "{body}");
    }
    // A declared 10 GiB body is refused before a byte of it is sent.
    let (status, body) = raw_request(
        &s,
        req("Host: x\r\nContent-Length: 10737418240\r\n", "").as_bytes(),
    );
    assert!(status.contains(" 413 "), "{status}");
    assert!(body.contains("10737418240"), "{body}");
    // Numeric ids beyond 64 bits keep every digit.
    let r = post(
        &s,
        "/v1/track",
        br#"{"userId":123456789012345678901234567890,"event":"Big","messageId":"big-id"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // `?token=` is percent-decoded like any query value.
    let r = s.request(
        "GET",
        "/admin/v1/sources/web/events?limit=1&token=tok%2Ben%2F%25x+y",
        &[],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["data"][0]["event"]["userId"],
        "123456789012345678901234567890"
    );
}

/// The admin token was printed at every start, twice, even from the environment; no
/// secret the operator configures may reach the server's output.
#[test]
fn configured_secrets_never_reach_the_output() {
    let hook = Receiver::start(|_, _| common::receiver::Answer::Status(500));
    let secrets = [
        "env-admin-SECRET-2",
        "hook-SECRET-3",
        "webhook-source-SECRET-4",
        "profile-SECRET-5",
        "actions-SECRET-6",
    ];
    let cfg = format!(
        r#"
[[sources]]
name = "web"
write_key = "wk_web_123"
[[sources]]
name = "shop"
kind = "segment_webhook"
write_key = "wk_shop_1"
shared_secret = "{s3}"
[profiles]
access_tokens = ["{s4}"]
[[destinations]]
name = "hook"
type = "webhook"
sources = ["web"]
allow_private_networks = true
retry = {{ min_backoff = "20ms", max_backoff = "50ms", window = "300ms" }}
[destinations.settings]
sharedSecret = "{s2}"
hooks = [{{ hook = "{url}/in?key={s5}" }}]
"#,
        s2 = secrets[1],
        s3 = secrets[2],
        s4 = secrets[3],
        s5 = secrets[4],
        url = hook.url,
    );
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start_with(
        dir.path(),
        Some(&cfg),
        &[("SLUICE_ADMIN_TOKEN", secrets[0]), ("RUST_LOG", "debug")],
        None,
    );
    s.admin_token = secrets[0].to_string();
    let r = s.send(
        "/v1/track",
        &json!({"userId": "u", "event": "Fails", "messageId": "m1"}),
    );
    assert_eq!(r.status, 200);
    // Wrong tokens and failing deliveries are what gets logged.
    let bad = s.request(
        "GET",
        "/admin/v1/sources",
        &[("Authorization", "Bearer nope")],
        None,
    );
    assert_eq!(bad.status, 401);
    hook.wait_until("several failed attempts", WAIT, |log| log.len() >= 3);
    s.admin_until(
        "/destinations/hook/dead-letters",
        "the dead letter",
        WAIT,
        |b| b["data"].as_array().is_some_and(|d| !d.is_empty()),
    );
    s.signal(libc::SIGTERM);
    assert!(s.wait_at_most(WAIT).success());
    let output = s.output.lock().unwrap().join("\n");
    assert!(output.contains("listening on"), "{output}");
    for secret in secrets {
        assert!(
            !output.contains(secret),
            "{secret} appears in the server's output:\n{output}"
        );
    }
}

/// A real full disk: the data directory is a 32 MB tmpfs (mounted in a mount namespace of
/// the server's own, `unshare`), most of it taken by a ballast file that a helper deletes
/// when the test writes to a FIFO. Before the fix, `/readyz` stayed ready while every
/// ingest call got 503, and each refusal logged a warning.
#[test]
fn a_full_disk_fails_readiness_logs_once_and_recovers_when_space_is_freed() {
    let ctl = tempfile::tempdir().unwrap();
    let fifo = ctl.path().join("free");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let data = tempfile::tempdir().unwrap();
    let script = r#"
        mount -t tmpfs -o size=32m tmpfs "$SLUICE_TEST_DIR" || exit 90
        head -c 26M /dev/zero > "$SLUICE_TEST_DIR/ballast"
        ( read -r _ < "$SLUICE_TEST_FIFO"; rm -f "$SLUICE_TEST_DIR/ballast" ) &
        exec setpriv --pdeathsig KILL "$@"
    "#;
    let mut s = Server::start_with(
        data.path(),
        Some(WEB),
        &[
            ("SLUICE_TEST_DIR", data.path().to_str().unwrap()),
            ("SLUICE_TEST_FIFO", fifo.to_str().unwrap()),
            ("RUST_LOG", "warn"),
        ],
        Some(&["unshare", "-rm", "sh", "-c", script, "sh"]),
    );
    assert_eq!(s.request("GET", "/readyz", &[], None).status, 200);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut acked = Vec::new();
    let mut refused = 0;
    for round in 0..400 {
        let items: Vec<Value> = (0..8)
            .map(|i| {
                json!({"type": "track", "userId": "u", "event": "Fill",
                            "messageId": format!("fill-{round}-{i}"),
                            "properties": {"pad": noise(&mut seed, 20_000)}})
            })
            .collect();
        let r = s.send("/v1/batch", &json!({ "batch": items }));
        match r.status {
            200 => acked.extend((0..8).map(|i| format!("fill-{round}-{i}"))),
            503 => {
                refused += 1;
                if refused == 30 {
                    break;
                }
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert_eq!(refused, 30, "the 6 MB left on the disk never filled");
    let ready = s.request("GET", "/readyz", &[], None);
    ready.assert_error(503, "storage_full");
    assert_eq!(s.request("GET", "/healthz", &[], None).status, 200);
    // One warning for the condition, not one per refused request.
    let warnings = s
        .output
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .cloned()
        .collect::<Vec<_>>();
    // Each condition (the log's write, its checkpoints, the dedupe journal, the profile
    // consumer, the server's readiness) at most once, whatever the 30 refused requests.
    assert!(
        warnings.len() <= 8,
        "{} warnings: {warnings:#?}",
        warnings.len()
    );
    let count = |what: &str| warnings.iter().filter(|l| l.contains(what)).count();
    assert_eq!(count("the event log is full"), 1, "{warnings:#?}");
    assert!(count("group rolled back") <= 1, "{warnings:#?}");

    // The operator frees space; readiness comes back without a restart.
    std::fs::write(&fifo, "go\n").unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while s.request("GET", "/readyz", &[], None).status != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready again");
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = s.send(
        "/v1/track",
        &json!({"userId": "u", "event": "After", "messageId": "after-free"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    acked.push("after-free".into());
    let stored: std::collections::HashSet<String> = s
        .events("web", 1000)
        .iter()
        .map(|e| e["messageId"].as_str().unwrap().to_string())
        .collect();
    for id in &acked {
        assert!(
            stored.contains(id),
            "{id} was acknowledged but is not stored"
        );
    }
    assert_eq!(stored.len(), acked.len());
    s.signal(libc::SIGTERM);
    assert!(s.wait_at_most(WAIT).success());
}

/// `/metrics` answered anyone; off a loopback listener (or with `public_metrics = false`)
/// it now asks for the admin token.
#[test]
fn metrics_can_require_the_admin_token() {
    let open = Server::start(Some(WEB));
    assert_eq!(open.request("GET", "/metrics", &[], None).status, 200);
    let closed = Server::start(Some(&format!("{WEB}\n[http]\npublic_metrics = false\n")));
    closed
        .request("GET", "/metrics", &[], None)
        .assert_error(401, "missing_admin_token");
    let r = closed.request(
        "GET",
        "/metrics",
        &[("Authorization", "Bearer test-admin-token")],
        None,
    );
    assert_eq!(r.status, 200);
    assert!(r.body.as_str().unwrap().contains("sluice_"), "{}", r.body);
}

/// Failing syncs, failing writes and partial writes in the log's own files (an
/// `LD_PRELOAD` shim, `tests/faults/faulty_io.c`, armed and disarmed through a control
/// file): every request a fault hits is refused with 503, nothing acknowledged is lost,
/// and nothing refused becomes visible: while the faults last, after them, and after a
/// SIGKILL and a restart without them.
#[test]
fn faults_in_the_logs_write_path_lose_nothing_acknowledged_and_show_nothing_refused() {
    let tools = tempfile::tempdir().unwrap();
    let shim = tools.path().join("faulty_io.so");
    let status = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&shim)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/faults/faulty_io.c"
        ))
        .arg("-ldl")
        .status()
        .expect("a C compiler (cc) builds the fault shim");
    assert!(status.success());
    let ctl = tools.path().join("fault");
    let data = tempfile::tempdir().unwrap();
    let mut s = Server::start_with(
        data.path(),
        Some(WEB),
        &[
            ("LD_PRELOAD", shim.to_str().unwrap()),
            ("SLUICE_FAULT_FILE", ctl.to_str().unwrap()),
            ("SLUICE_FAULT_MATCH", "events.sqlite"),
        ],
        None,
    );
    let mut acked = std::collections::HashSet::new();
    let mut refused = std::collections::HashSet::new();
    // The last phase's fault is still armed when the server is killed: no successful
    // commit overwrites what the failed ones left in the page cache.
    let phases = [
        "none", "sync", "none", "partial", "none", "write", "none", "sync",
    ];
    for (phase, fault) in phases.into_iter().enumerate() {
        if fault == "none" {
            let _ = std::fs::remove_file(&ctl);
        } else {
            std::fs::write(&ctl, fault).unwrap();
        }
        let mut refusals = 0;
        for round in 0..4 {
            let ids: Vec<String> = (0..5)
                .map(|i| format!("{fault}-{phase}-{round}-{i}"))
                .collect();
            let items: Vec<Value> = ids
                .iter()
                .map(|id| json!({"type": "track", "userId": "u", "event": "E", "messageId": id}))
                .collect();
            let r = s.send("/v1/batch", &json!({ "batch": items }));
            match r.status {
                200 => acked.extend(ids),
                503 => {
                    refusals += 1;
                    refused.extend(ids);
                }
                other => panic!("{fault}: unexpected {other}: {}", r.body),
            }
        }
        if fault != "none" {
            assert!(refusals > 0, "the {fault} fault never bit");
        }
        exactly_the_acknowledged(&s, &acked, &refused, fault);
    }
    assert!(!acked.is_empty() && !refused.is_empty());
    // A crash, then a start without faults: the same holds on disk.
    s.signal(libc::SIGKILL);
    s.wait();
    drop(s);
    let s = Server::start_in(data.path(), Some(WEB));
    exactly_the_acknowledged(&s, &acked, &refused, "the restart");
}

/// Every acknowledged id is stored and no refused one is visible.
#[track_caller]
fn exactly_the_acknowledged(
    s: &Server,
    acked: &std::collections::HashSet<String>,
    refused: &std::collections::HashSet<String>,
    when: &str,
) {
    let stored: std::collections::HashSet<String> = s
        .events("web", 1000)
        .iter()
        .map(|e| e["messageId"].as_str().unwrap().to_string())
        .collect();
    for id in acked {
        assert!(
            stored.contains(id),
            "after {when}: {id} acknowledged, not stored"
        );
    }
    for id in refused {
        assert!(
            !stored.contains(id),
            "after {when}: {id} refused, yet visible"
        );
    }
}
