//! Reloading `sluice.toml` without a restart, against the real binary: under load, SIGHUP
//! takes a source's new write key and a destination's new mapping, and every event the
//! server acknowledged is delivered (the ones sent after the reload with the new mapping);
//! a file that does not pass `sluice check` is refused over the admin API with the same
//! error and everything runs on as it was.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::receiver::Receiver;
use common::{basic, request_to, Server};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "reload-admin-token";

fn config(receiver: &str, key: &str, version: u32, extra: &str) -> String {
    format!(
        r#"
admin_token = "{TOKEN}"
{extra}
[[sources]]
name = "web"
write_key = "{key}"

[[destinations]]
name = "hook"
type = "actions_webhook"
sources = ["web"]
allow_private_networks = true
retry = {{ min_backoff = "20ms", max_backoff = "200ms" }}
[[destinations.actions]]
action = "send"
subscription = 'type = "track"'
mapping = {{ url = "{receiver}/in", method = "POST", data = {{ v = {version}, id = {{ "@path" = "$.messageId" }} }} }}
"#
    )
}

fn write(path: &Path, text: &str) {
    // Written whole and renamed, as an editor or a deploy tool does.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A server reading `text` from a file of the test's (the harness passes a config file of
/// its own, which this server must not read): the server and the file.
fn start(text: &str) -> (Server, std::path::PathBuf) {
    let file = tempfile::tempdir().unwrap().keep().join("sluice.toml");
    write(&file, text);
    let data = tempfile::tempdir().unwrap().keep();
    let mut s = Server::start_with(
        &data,
        None,
        &[("SLUICE_CONFIG", file.to_str().unwrap())],
        None,
    );
    s.admin_token = TOKEN.into();
    (s, file)
}

#[test]
fn a_reload_under_load_takes_new_keys_and_mappings_and_loses_nothing() {
    let rx = Receiver::ok();
    let (s, file) = start(&config(&rx.url, "wk_old", 1, ""));

    // Load: one event per request with the key in use; a 401 means the reload took the
    // old key away: switch to the new one and send the same event again.
    let key = Arc::new(Mutex::new("wk_old".to_string()));
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (key, acked, stop, url) = (key.clone(), acked.clone(), stop.clone(), s.url.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) && i < 5000 {
                let id = format!("e-{i}");
                let used = key.lock().unwrap().clone();
                let r = request_to(
                    &url,
                    "POST",
                    "/v1/track",
                    &[
                        ("Authorization", &basic(&used)),
                        ("Content-Type", "application/json"),
                    ],
                    Some(
                        json!({"messageId": id, "userId": "u1", "event": "Load"})
                            .to_string()
                            .as_bytes(),
                    ),
                );
                match r.status {
                    200 => {
                        acked.lock().unwrap().push((id, used));
                        i += 1;
                    }
                    401 if used == "wk_old" => *key.lock().unwrap() = "wk_new".into(),
                    other => panic!("{id} with {used}: {other} {}", r.body),
                }
            }
        })
    };
    let until = |n: usize, with: &str| {
        let deadline = Instant::now() + WAIT;
        while acked
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, k)| k == with)
            .count()
            < n
        {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} events acknowledged with {with}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    until(100, "wk_old");
    write(&file, &config(&rx.url, "wk_new", 2, ""));
    s.signal(libc::SIGHUP);
    until(100, "wk_new");

    // A file that does not pass `sluice check`: refused with the same error, nothing
    // changes (the load goes on with the new key).
    let bad =
        config(&rx.url, "wk_newer", 3, "").replace("type = \"actions_webhook\"", "type = \"nope\"");
    write(&file, &bad);
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!check.status.success());
    let check_error = String::from_utf8_lossy(&check.stderr)
        .trim()
        .trim_start_matches("error: ")
        .to_string();
    let r = s.admin_call("POST", "/reload", None);
    r.assert_error(400, "invalid_config");
    assert_eq!(
        r.body["message"].as_str(),
        Some(check_error.as_str()),
        "{}",
        r.body
    );
    let n = acked.lock().unwrap().len();
    let deadline = Instant::now() + WAIT;
    while acked.lock().unwrap().len() < n + 50 {
        assert!(
            Instant::now() < deadline,
            "ingest stopped after a refused reload"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();

    // Limits change live; settings that apply at a restart are named, not applied; the
    // unchanged sources and destinations are not touched.
    write(
        &file,
        &config(
            &rx.url,
            "wk_new",
            2,
            "trust_forwarded_for = true\n[limits]\nmax_event_bytes = 2000\n",
        ),
    );
    let r = s.admin_call("POST", "/reload", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["data"]["limits_changed"], true, "{}", r.body);
    assert_eq!(
        r.body["data"]["restart_needed"],
        json!(["trust_forwarded_for"]),
        "{}",
        r.body
    );
    assert_eq!(
        r.body["data"]["destinations"],
        json!({"added": [], "changed": [], "removed": []})
    );
    assert_eq!(
        r.body["data"]["sources"],
        json!({"changed": [], "removed": []})
    );
    let big = json!({"userId": "u1", "event": "Big", "properties": {"pad": "x".repeat(3000)}});
    let r = request_to(
        &s.url,
        "POST",
        "/v1/track",
        &[
            ("Authorization", &basic("wk_new")),
            ("Content-Type", "application/json"),
        ],
        Some(big.to_string().as_bytes()),
    );
    assert_eq!(
        r.status, 400,
        "an event over the new max_event_bytes: {}",
        r.body
    );

    // Every acknowledged event is delivered; those sent with the new key (after the
    // reload) only with the new mapping.
    let acked = acked.lock().unwrap().clone();
    let got = rx.wait_until("every acknowledged event delivered", WAIT, |got| {
        let ids: HashSet<String> = got
            .iter()
            .filter_map(|g| g.json()["id"].as_str().map(str::to_string))
            .collect();
        acked.iter().all(|(id, _)| ids.contains(id))
    });
    let mut versions: HashMap<String, HashSet<i64>> = HashMap::new();
    for g in &got {
        let body = g.json();
        versions
            .entry(body["id"].as_str().unwrap().to_string())
            .or_default()
            .insert(body["v"].as_i64().unwrap());
    }
    let acked_ids: HashSet<&String> = acked.iter().map(|(id, _)| id).collect();
    assert!(
        versions.keys().all(|id| acked_ids.contains(id)),
        "an event nobody acknowledged was delivered"
    );
    for (id, k) in &acked {
        if k == "wk_new" {
            assert_eq!(versions[id], HashSet::from([2]), "{id} after the reload");
        }
    }
    assert!(acked.iter().filter(|(_, k)| k == "wk_old").count() >= 100);
}

#[test]
fn a_file_without_sources_keeps_the_default_source_and_a_broken_file_is_refused_on_sighup() {
    let (s, file) = start(&format!("admin_token = \"{TOKEN}\"\n"));
    let r = s.admin_call("POST", "/reload", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["data"]["sources"],
        json!({"changed": [], "removed": []}),
        "{}",
        r.body
    );
    assert_eq!(
        s.send("/v1/track", &json!({"userId": "u", "event": "E"}))
            .status,
        200
    );
    // A broken file on SIGHUP: the refusal is logged, the server runs on as it was.
    write(&file, "admin_token = [\n");
    s.signal(libc::SIGHUP);
    let deadline = Instant::now() + WAIT;
    while !s
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("configuration reload refused"))
    {
        assert!(Instant::now() < deadline, "no refusal logged");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        s.send("/v1/track", &json!({"userId": "u", "event": "E"}))
            .status,
        200
    );
}

/// A destination added to the file under the name of one created over the admin API
/// takes its place (the file wins, as at a start); removed from the file again, the API's
/// runs again.
#[test]
fn a_file_destination_shadows_an_api_one_until_it_is_removed() {
    let rx = Receiver::ok();
    let sources =
        format!("admin_token = \"{TOKEN}\"\n[[sources]]\nname = \"web\"\nwrite_key = \"wk_s\"\n");
    let (s, file) = start(&sources);
    let api = json!({"type": "webhook", "sources": ["web"], "allow_private_networks": true,
        "settings": {"sharedSecret": "k", "hooks": [{"hook": format!("{}/api", rx.url)}]}});
    assert_eq!(
        s.admin_call("PUT", "/destinations/x", Some(&api)).status,
        201
    );
    let with_file = format!(
        "{sources}[[destinations]]\nname = \"x\"\ntype = \"webhook\"\nsources = [\"web\"]\nallow_private_networks = true\n[destinations.settings]\nsharedSecret = \"k\"\nhooks = [{{ hook = \"{}/file\" }}]\n",
        rx.url
    );
    write(&file, &with_file);
    let r = s.admin_call("POST", "/reload", None);
    assert_eq!(
        r.body["data"]["destinations"]["changed"],
        json!(["x"]),
        "{}",
        r.body
    );
    assert_eq!(s.admin("/destinations/x").body["managed_by"], "file");
    write(&file, &sources);
    let r = s.admin_call("POST", "/reload", None);
    assert_eq!(
        r.body["data"]["destinations"]["removed"],
        json!(["x"]),
        "{}",
        r.body
    );
    assert_eq!(s.admin("/destinations/x").body["managed_by"], "api");
    let r = request_to(
        &s.url,
        "POST",
        "/v1/track",
        &[
            ("Authorization", &basic("wk_s")),
            ("Content-Type", "application/json"),
        ],
        Some(br#"{"messageId":"after","userId":"u","event":"E"}"#),
    );
    assert_eq!(r.status, 200);
    let got = rx.wait_until("the API destination's delivery", WAIT, |got| {
        got.iter().any(|g| g.path == "/api")
    });
    assert!(
        got.iter().all(|g| g.path != "/file"),
        "the file's destination was gone"
    );
}
