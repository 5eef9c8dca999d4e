//! The scale-out deployment end to end: three `sluice serve` processes on one Kafka topic
//! (the event log) and one PostgreSQL database (the state store), load through all three,
//! one SIGKILLed mid-run. Every event answered with 200 must reach the webhook at least
//! once, the profile store and the warehouse must hold each exactly once in effect; a
//! duplicate sent to another node is still dropped.
//!
//! Needs a broker and PostgreSQL, so it is not part of the plain `cargo test --workspace`:
//! run it with `KAFKA_BROKERS=127.0.0.1:19092
//! DATABASE_URL=postgres://postgres@127.0.0.1:15432/postgres
//! cargo test -p sluice --test multinode -- --ignored`.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::receiver::Receiver;
use common::{basic, Server};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(120);
const USERS: usize = 40;
const BATCHES: usize = 45;
const BATCH: usize = 20;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} must be set (see .ci/run)"))
}

/// A schema of its own in the test database, as a connection URL.
fn fresh_schema(base: &str, id: &str) -> String {
    let schema = format!("multinode_{id}");
    let (b, s) = (base.to_string(), schema.clone());
    std::thread::spawn(move || {
        let mut c = postgres::Client::connect(&b, postgres::NoTls).expect("connect");
        c.batch_execute(&format!("CREATE SCHEMA {s}"))
            .expect("create schema");
    })
    .join()
    .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-csearch_path%3D{schema}")
}

fn batch(node: usize, b: usize) -> (Value, Vec<(String, usize, u64)>) {
    let mut items = Vec::new();
    let mut sent = Vec::new();
    for j in 0..BATCH {
        let seq = ((node * BATCHES + b) * BATCH + j) as u64;
        let user = (node * 7 + b * 3 + j) % USERS;
        let id = format!("mn-{node}-{b}-{j}");
        // Later events of a user carry later timestamps: the last `seq` trait wins.
        let ts = chrono_ts(seq);
        items.push(json!({"type": "identify", "userId": format!("user-{user}"),
                          "messageId": id, "timestamp": ts, "traits": {"seq": seq}}));
        sent.push((id, user, seq));
    }
    (json!({ "batch": items }), sent)
}

fn chrono_ts(seq: u64) -> String {
    let ms = 1_763_900_000_000u64 + seq;
    let secs = ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("2025-11-23T{h:02}:{m:02}:{s:02}.{:03}Z", ms % 1000)
}

/// Posts a batch; `Ok(status)` when the node answered below 500, else what went wrong.
fn post(url: &str, key: &str, body: &Value) -> Result<u16, String> {
    match ureq::post(&format!("{url}/v1/batch"))
        .set("Authorization", &basic(key))
        .timeout(Duration::from_secs(30))
        .send_json(body.clone())
    {
        Ok(r) => Ok(r.status()),
        Err(ureq::Error::Status(code, _)) if code < 500 => Ok(code),
        Err(ureq::Error::Status(code, r)) => Err(format!(
            "{url}: {code} {}",
            r.into_string().unwrap_or_default()
        )),
        Err(e) => Err(format!("{url}: {e}")),
    }
}

#[test]
#[ignore = "needs a Kafka-protocol broker and PostgreSQL (KAFKA_BROKERS, DATABASE_URL); .ci/run starts both"]
fn three_nodes_share_the_work_and_lose_nothing_when_one_is_killed() {
    let brokers = env("KAFKA_BROKERS");
    let id = uuid::Uuid::new_v4().simple().to_string();
    let db = fresh_schema(&env("DATABASE_URL"), &id);
    let warehouse = format!("multinode_wh_{id}");
    let rx = Receiver::ok();
    let config = format!(
        r#"
admin_token = "test-admin-token"
[log]
kind = "kafka"
brokers = "{brokers}"
topic = "multinode-{id}"
partitions = 4
group_prefix = "multinode-{id}."
lease = "3s"
[store]
kind = "postgres"
url = "{db}"
[[sources]]
name = "web"
write_key = "wk_web_multinode"
[[destinations]]
name = "hooks"
type = "webhook"
sources = ["web"]
allow_private_networks = true
[destinations.settings]
hooks = [{{ hook = "{url}/in" }}]
[[destinations]]
name = "analytics"
type = "warehouse"
sources = ["web"]
[destinations.settings]
url = "{base}"
schemas = {{ web = "{warehouse}" }}
max_age_s = 1
batch_rows = 200
"#,
        url = rx.url,
        base = env("DATABASE_URL"),
    );
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().unwrap().keep())
        .collect();
    let mut nodes: Vec<Server> = dirs
        .iter()
        .map(|d| Server::start_in(d, Some(&config)))
        .collect();
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let key = "wk_web_multinode";

    // One client thread per node; a request the node cannot answer (it was killed) goes
    // to the next node with the same events, as a client library's retry would.
    let accepted: Arc<Mutex<BTreeMap<String, (usize, u64)>>> = Arc::default();
    let killed = Arc::new(AtomicBool::new(false));
    let halfway = Arc::new(std::sync::Barrier::new(4));
    let mut threads = Vec::new();
    for node in 0..3 {
        let (urls, accepted, killed, halfway) = (
            urls.clone(),
            accepted.clone(),
            killed.clone(),
            halfway.clone(),
        );
        threads.push(std::thread::spawn(move || {
            for b in 0..BATCHES {
                if b == BATCHES / 3 {
                    halfway.wait();
                }
                let (body, sent) = batch(node, b);
                let mut target = node;
                let give_up = std::time::Instant::now() + WAIT;
                let mut last = String::new();
                let status = loop {
                    assert!(
                        std::time::Instant::now() < give_up,
                        "batch {node}/{b}: no node accepted it within {WAIT:?}; last: {last}"
                    );
                    match post(&urls[target], key, &body) {
                        Ok(s) => break s,
                        Err(e) if target == 0 && !killed.load(Ordering::SeqCst) => {
                            // Node 0 not killed yet: a real failure.
                            panic!("node 0 failed before it was killed: {e}")
                        }
                        Err(e) => {
                            last = e;
                            target = (target + 1) % 3
                        }
                    }
                };
                assert_eq!(status, 200, "batch {node}/{b}");
                let mut a = accepted.lock().unwrap();
                for (id, user, seq) in sent {
                    a.insert(id, (user, seq));
                }
            }
        }));
    }
    // A third of the way in, node 0 dies hard while the clients keep sending.
    halfway.wait();
    killed.store(true, Ordering::SeqCst);
    nodes[0].signal(libc::SIGKILL);
    nodes[0].wait();
    for t in threads {
        t.join().expect("client thread");
    }
    let accepted = accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), 3 * BATCHES * BATCH);

    // A duplicate sent to another node is acknowledged and dropped.
    let (again, _) = batch(1, 0);
    assert_eq!(post(&urls[2], key, &again), Ok(200));

    // Every accepted event reaches the webhook (at least once).
    let want: HashSet<String> = accepted.keys().cloned().collect();
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rx.wait_until("every accepted event at the webhook", WAIT, |log| {
            want.is_subset(&Receiver::delivered_ids(log))
        })
    }));
    let Ok(got) = waited else {
        let got = Receiver::delivered_ids(&rx.received());
        let mut missing: Vec<_> = want.difference(&got).collect();
        missing.sort();
        panic!(
            "{} accepted events never reached the webhook, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        );
    };
    let delivered = Receiver::delivered_ids(&got);
    assert!(delivered.is_subset(&want), "only sent events arrive");

    // The warehouse, loaded by whichever node holds each partition (node 0's taken over
    // after the kill, from the cursor of its last committed load), has each accepted
    // event exactly once.
    let mut c = postgres::Client::connect(&env("DATABASE_URL"), postgres::NoTls).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let loaded: Vec<String> = loop {
        let ids: Vec<String> = c
            .query(&format!("SELECT id FROM {warehouse}.identifies"), &[])
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            .unwrap_or_default();
        if ids.len() >= want.len() || std::time::Instant::now() > deadline {
            break ids;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let distinct: HashSet<String> = loaded.iter().cloned().collect();
    assert_eq!(loaded.len(), distinct.len(), "an event loaded twice");
    assert_eq!(distinct, want, "the warehouse holds every accepted event");
    c.batch_execute(&format!("DROP SCHEMA {warehouse} CASCADE"))
        .unwrap();

    // The profile store has each accepted event exactly once, and the last trait wins.
    let survivor = &nodes[1];
    let mut per_user: BTreeMap<usize, Vec<(String, u64)>> = BTreeMap::new();
    for (id, (user, seq)) in &accepted {
        per_user.entry(*user).or_default().push((id.clone(), *seq));
    }
    for (user, events) in &per_user {
        let path = format!(
            "/v1/spaces/default/collections/users/profiles/user_id:user-{user}/events?limit=100"
        );
        let expected: HashSet<&str> = events.iter().map(|(id, _)| id.as_str()).collect();
        let deadline = std::time::Instant::now() + WAIT;
        let listed = loop {
            let reply = survivor.request(
                "GET",
                &path,
                &[("Authorization", &basic("test-admin-token"))],
                None,
            );
            let ids: Vec<String> = reply.body["data"]
                .as_array()
                .map(|d| {
                    d.iter()
                        .filter_map(|e| e["message_id"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if ids.len() >= expected.len() || std::time::Instant::now() > deadline {
                break ids;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let distinct: HashSet<&str> = listed.iter().map(String::as_str).collect();
        assert_eq!(
            listed.len(),
            distinct.len(),
            "user-{user}: an event listed twice"
        );
        assert_eq!(distinct, expected, "user-{user}: the profile's events");
        let reply = survivor.request(
            "GET",
            &format!("/v1/spaces/default/collections/users/profiles/user_id:user-{user}/traits"),
            &[("Authorization", &basic("test-admin-token"))],
            None,
        );
        let last = events.iter().map(|(_, s)| *s).max().unwrap();
        assert_eq!(reply.body["traits"]["seq"], json!(last), "user-{user}");
    }
}
