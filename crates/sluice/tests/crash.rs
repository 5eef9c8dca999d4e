//! Crash safety: events are sent under load, the server is killed with SIGKILL mid-stream,
//! and every messageId that got a 200 must be in the log exactly once — also after the
//! clients retry everything they sent.

mod common;

use std::collections::HashMap;
use std::sync::mpsc;
use std::thread;

use common::{basic, Server};
use serde_json::json;
use sluice_log::{EventLog, LogOptions, SqliteLog};

const CONFIG: &str = r#"
[[sources]]
name = "web"
write_key = "wk_crash"
"#;

/// Counts every messageId in the log (opened directly, with no server running).
fn count_ids(dir: &std::path::Path) -> HashMap<String, usize> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let log = SqliteLog::open(dir.join("events.sqlite"), LogOptions::default()).unwrap();
        let mut counts = HashMap::new();
        let mut from = 0;
        loop {
            let page = log.read(from, 5000).await.unwrap();
            let Some(last) = page.last() else { break };
            from = last.offset + 1;
            for e in page {
                *counts.entry(e.message_id).or_insert(0) += 1;
            }
        }
        log.close().await;
        counts
    })
}

fn post_batch(url: &str, ids: &[String]) -> Result<u16, String> {
    let items: Vec<_> = ids
        .iter()
        .map(|id| json!({"type": "track", "userId": format!("user-{}", &id[..3]), "event": "Load", "messageId": id,
                         "properties": {"pad": "x".repeat(300)}}))
        .collect();
    let body = serde_json::to_vec(&json!({"batch": items})).unwrap();
    match ureq::post(&format!("{url}/v1/batch"))
        .set("Authorization", &basic("wk_crash"))
        .send_bytes(&body)
    {
        Ok(r) => Ok(r.status()),
        Err(ureq::Error::Status(code, _)) => Ok(code),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn sigkill_mid_stream_loses_no_acknowledged_event_and_duplicates_none() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir.path(), Some(CONFIG));
    let (acked_tx, acked_rx) = mpsc::channel::<Vec<String>>();
    let (sent_tx, sent_rx) = mpsc::channel::<Vec<String>>();
    let mut workers = Vec::new();
    for t in 0..4 {
        let url = server.url.clone();
        let acked_tx = acked_tx.clone();
        let sent_tx = sent_tx.clone();
        workers.push(thread::spawn(move || {
            for n in 0.. {
                let ids: Vec<String> = (0..10).map(|i| format!("t{t}-{n}-{i}")).collect();
                sent_tx.send(ids.clone()).unwrap();
                match post_batch(&url, &ids) {
                    Ok(200) => {
                        if acked_tx.send(ids).is_err() {
                            return;
                        }
                    }
                    Ok(other) => panic!("unexpected status {other}"),
                    // The server died under us: what was in flight has no answer.
                    Err(_) => return,
                }
            }
        }));
    }
    drop(acked_tx);
    drop(sent_tx);
    // Kill once 3,000 events were acknowledged, while all workers are still sending.
    let mut acked: Vec<String> = Vec::new();
    while acked.len() < 3000 {
        acked.extend(acked_rx.recv().expect("workers stopped early"));
    }
    server.signal(libc::SIGKILL);
    for w in workers {
        w.join().unwrap();
    }
    acked.extend(acked_rx.try_iter().flatten());
    let sent: Vec<String> = sent_rx.try_iter().flatten().collect();
    drop(server);

    let counts = count_ids(dir.path());
    for id in &acked {
        assert_eq!(
            counts.get(id),
            Some(&1),
            "acknowledged {id} must be stored exactly once"
        );
    }
    assert!(
        counts.values().all(|&c| c == 1),
        "no messageId may be stored twice"
    );

    // The clients retry everything they sent, acknowledged or not.
    let mut server = Server::start_in(dir.path(), Some(CONFIG));
    for chunk in sent.chunks(100) {
        assert_eq!(post_batch(&server.url, chunk), Ok(200));
    }
    server.signal(libc::SIGTERM);
    assert!(server.wait().success());
    drop(server);
    let counts = count_ids(dir.path());
    for id in &sent {
        assert_eq!(
            counts.get(id),
            Some(&1),
            "{id} must be stored exactly once after retries"
        );
    }
    assert_eq!(counts.len(), sent.len());
}
