//! `sluice backup` under load and `sluice restore` into a new directory, against the real
//! binary: every event acknowledged before the backup began is in the restored server's
//! log, its destination resumes from the backed-up cursor (what it had committed is not
//! sent again), and profiles are there.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::receiver::Receiver;
use common::{basic, request_to, Server};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "pat_backup_reader_1";
const KEY: &str = "wk_backup_1";

fn config(receiver: &str) -> String {
    format!(
        r#"
admin_token = "backup-admin-token"
[[sources]]
name = "web"
write_key = "{KEY}"
[profiles]
access_tokens = ["{TOKEN}"]
[[destinations]]
name = "hook"
type = "webhook"
sources = ["web"]
allow_private_networks = true
[destinations.settings]
sharedSecret = "s3cret"
hooks = [{{ hook = "{receiver}/in" }}]
"#
    )
}

fn sluice(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env_remove("SLUICE_CONFIG")
        .output()
        .expect("run sluice");
    assert!(
        out.status.success(),
        "sluice {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The hook's committed cursor in a log file (0 when none is committed).
fn committed(log: &std::path::Path) -> u64 {
    let conn =
        rusqlite::Connection::open_with_flags(log, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.busy_timeout(WAIT).unwrap();
    conn.query_row(
        "SELECT next_offset FROM cursors WHERE consumer = 'dest:hook'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n as u64)
    .unwrap_or(0)
}

fn ids(events: &[Value]) -> std::collections::HashSet<String> {
    events
        .iter()
        .filter_map(|e| e["messageId"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn a_backup_under_load_restores_every_acknowledged_event_cursor_and_profile() {
    let first = Receiver::ok();
    let d1 = tempfile::tempdir().unwrap().keep();
    let s1 = Server::start_in(&d1, Some(&config(&first.url)));
    // A profile and deliveries before the backup.
    let r = s1.send(
        "/v1/identify",
        &json!({"messageId": "id-1", "userId": "ann", "traits": {"plan": "pro"}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    for i in 0..50 {
        let r = s1.send(
            "/v1/track",
            &json!({"messageId": format!("pre-{i}"), "userId": "ann", "event": "E"}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    first.wait_until("the first 51 deliveries", WAIT, |got| got.len() >= 51);
    // The destination's cursor is committed past them before the backup (read from the
    // log's own table, as the backup will copy it).
    let deadline = std::time::Instant::now() + WAIT;
    while committed(&d1.join("events.sqlite")) < 52 {
        assert!(
            std::time::Instant::now() < deadline,
            "the hook's cursor was not committed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Load: batches until the backup is done (at most 900 events, under the admin API's
    // 1,000 that the check reads back); every acknowledged id is kept.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let load = {
        let (acked, done, url) = (acked.clone(), done.clone(), s1.url.clone());
        std::thread::spawn(move || {
            for b in 0..90 {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                let batch: Vec<Value> = (0..10)
                    .map(|i| json!({"type": "track", "messageId": format!("load-{b}-{i}"), "userId": "bob", "event": "Load"}))
                    .collect();
                let r = request_to(
                    &url,
                    "POST",
                    "/v1/batch",
                    &[
                        ("Authorization", &basic(KEY)),
                        ("Content-Type", "application/json"),
                    ],
                    Some(json!({"batch": batch}).to_string().as_bytes()),
                );
                assert_eq!(r.status, 200, "{}", r.body);
                acked.lock().unwrap().extend(
                    batch
                        .iter()
                        .map(|e| e["messageId"].as_str().unwrap().to_string()),
                );
            }
        })
    };
    // The backup begins while the load runs.
    while acked.lock().unwrap().len() < 100 {
        std::thread::yield_now();
    }
    let before: Vec<String> = acked.lock().unwrap().clone();
    let backup = tempfile::tempdir().unwrap().keep().join("b");
    let out = sluice(&[
        "backup",
        "--data-dir",
        d1.to_str().unwrap(),
        backup.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("backed up"));
    assert!(
        committed(&backup.join("events.sqlite")) >= 52,
        "the backup has the cursor"
    );
    done.store(true, Ordering::SeqCst);
    load.join().unwrap();
    drop(s1);

    // Restore into a new directory and start a server there, its hook at a new receiver.
    let d2 = tempfile::tempdir().unwrap().keep().join("restored");
    sluice(&[
        "restore",
        backup.to_str().unwrap(),
        "--data-dir",
        d2.to_str().unwrap(),
    ]);
    let second = Receiver::ok();
    let s2 = Server::start_in(&d2, Some(&config(&second.url)));
    let events = s2.events("web", 1000);
    let restored = ids(&events);
    let missing: Vec<&String> = before.iter().filter(|id| !restored.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged before the backup are missing: {missing:?}",
        missing.len()
    );
    for i in 0..50 {
        assert!(restored.contains(&format!("pre-{i}")));
    }
    // The dedupe index, rebuilt from the restored log, knows the restored events.
    let r = s2.send(
        "/v1/track",
        &json!({"messageId": "pre-7", "userId": "ann", "event": "E"}),
    );
    assert_eq!(r.body["duplicates"], 1, "{}", r.body);
    // The profile is there.
    let r = s2.request(
        "GET",
        "/v1/spaces/default/collections/users/profiles/user_id:ann/traits",
        &[("Authorization", &basic(TOKEN))],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["traits"]["plan"], "pro", "{}", r.body);
    // The hook resumes from the backed-up cursor: load events after it are delivered, the
    // ones committed before the backup are not sent again.
    let got = second.wait_until("deliveries of the load after the cursor", WAIT, |got| {
        let delivered = ids(&got.iter().map(|g| g.json()).collect::<Vec<_>>());
        before.iter().all(|id| delivered.contains(id))
    });
    let resent = ids(&got.iter().map(|g| g.json()).collect::<Vec<_>>());
    assert!(
        !resent.contains("pre-0") && !resent.contains("id-1"),
        "events committed before the backup were sent again"
    );
    // A restore never writes over data: the directory is not empty now.
    let again = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "restore",
            backup.to_str().unwrap(),
            "--data-dir",
            d2.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("is not empty"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn restore_refuses_what_is_not_a_backup_and_backup_what_is_not_a_data_directory() {
    let empty = tempfile::tempdir().unwrap().keep();
    let target = tempfile::tempdir().unwrap().keep().join("d");
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "restore",
            empty.to_str().unwrap(),
            "--data-dir",
            target.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a Sluice backup"));
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "backup",
            "--data-dir",
            empty.to_str().unwrap(),
            target.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no Sluice data"));
    // A damaged file is found before anything is written.
    let d = tempfile::tempdir().unwrap().keep();
    let s = Server::start_in(&d, None);
    drop(s);
    let b = tempfile::tempdir().unwrap().keep().join("b");
    sluice(&[
        "backup",
        "--data-dir",
        d.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    let state = b.join("state.sqlite");
    let mut bytes = std::fs::read(&state).unwrap();
    let n = bytes.len();
    for byte in &mut bytes[n / 2..n / 2 + 4096] {
        *byte = 0x5a;
    }
    std::fs::write(&state, bytes).unwrap();
    let fresh = tempfile::tempdir().unwrap().keep().join("r");
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "restore",
            b.to_str().unwrap(),
            "--data-dir",
            fresh.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        !fresh.join("events.sqlite").exists(),
        "nothing written before the check"
    );
}
