//! A warehouse destination end to end: events sent to the Tracking API appear in the
//! team's PostgreSQL in Segment's layout, each once, and loading goes on after a restart
//! from the committed cursor. Needs a server (`.ci/run` starts one):
//! `DATABASE_URL=postgres://postgres@127.0.0.1:15432/postgres cargo test -p sluice --test warehouse -- --ignored`.

mod common;

use std::time::{Duration, Instant};

use common::Server;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn database() -> String {
    std::env::var("DATABASE_URL")
        .expect("DATABASE_URL must name a running PostgreSQL (see .ci/run)")
}

/// The rows of a query as text, once `ready` says they are there (or after WAIT).
fn rows_when(
    sql: &str,
    what: &str,
    ready: impl Fn(&[Vec<Option<String>>]) -> bool,
) -> Vec<Vec<Option<String>>> {
    let mut c = postgres::Client::connect(&database(), postgres::NoTls).expect("connect");
    let deadline = Instant::now() + WAIT;
    loop {
        let rows: Vec<Vec<Option<String>>> = match c.query(sql, &[]) {
            Ok(rows) => rows
                .iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| r.get::<_, Option<String>>(i))
                        .collect()
                })
                .collect(),
            // The table does not exist before the first load.
            Err(_) => Vec::new(),
        };
        if ready(&rows) {
            return rows;
        }
        assert!(Instant::now() < deadline, "{what}: {rows:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The config of every test: one source.
const SOURCE: &str =
    "admin_token = \"test-admin-token\"\n[[sources]]\nname = \"web\"\nwrite_key = \"wk_web_123\"\n";

/// [`SOURCE`] with a warehouse loading it into `schema` (loads after 1 s), plus `extra`
/// settings.
fn with_warehouse(schema: &str, extra: &str) -> String {
    format!(
        "{SOURCE}[[destinations]]\nname = \"analytics\"\ntype = \"warehouse\"\nsources = [\"web\"]\n\
         [destinations.settings]\nurl = \"{}\"\nschemas = {{ web = \"{schema}\" }}\nmax_age_s = 1\n{extra}\n",
        database()
    )
}

#[test]
#[ignore = "needs PostgreSQL: DATABASE_URL (run by .ci/run)"]
fn events_land_in_segments_tables_once() {
    let schema = format!("wh_e2e_{}", uuid::Uuid::new_v4().simple());
    let config = with_warehouse(&schema, "exclude_columns = { pages = [\"path\"] }");
    let dir = tempfile::tempdir().unwrap().keep();
    let mut s = Server::start_in(&dir, Some(&config));
    let r = s.send(
        "/v1/batch",
        &json!({"batch": [
            {"type": "identify", "messageId": "w1", "userId": "u1", "traits": {"plan": "pro", "email": "u1@example.com"}},
            {"type": "track", "messageId": "w2", "userId": "u1", "event": "Order Completed",
             "properties": {"revenue": 19.99, "products": [{"sku": "A"}], "user_id": "spoofed"}},
            {"type": "page", "messageId": "w3", "anonymousId": "a1", "name": "Home", "properties": {"path": "/"}},
            {"type": "track", "messageId": "w4", "userId": "u1", "event": "Order Completed",
             "integrations": {"Warehouses": false}},
        ]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let orders = rows_when(
        &format!(
            "SELECT id, user_id, revenue::text, products FROM {schema}.order_completed ORDER BY id"
        ),
        "the track call in its event table",
        |r| !r.is_empty(),
    );
    assert_eq!(
        orders,
        vec![vec![
            Some("w2".into()),
            Some("u1".into()),
            Some("19.99".into()),
            Some(r#"[{"sku":"A"}]"#.into())
        ]],
        "w4 kept out by its integrations; the spoofed user_id dropped"
    );
    let users = rows_when(
        &format!("SELECT id, plan, email FROM {schema}.users"),
        "the users table",
        |r| !r.is_empty(),
    );
    assert_eq!(
        users,
        vec![vec![
            Some("u1".into()),
            Some("pro".into()),
            Some("u1@example.com".into())
        ]]
    );
    rows_when(
        &format!("SELECT id FROM {schema}.pages WHERE name = 'Home'"),
        "the page",
        |r| r.len() == 1,
    );
    // Selective sync left its `path` out.
    let path = rows_when(
        &format!(
            "SELECT column_name::text FROM information_schema.columns
             WHERE table_schema = '{schema}' AND table_name = 'pages' AND column_name = 'path'"
        ),
        "pages' columns",
        |_| true,
    );
    assert!(path.is_empty(), "{path:?}");
    rows_when(
        &format!("SELECT id FROM {schema}.tracks"),
        "the tracks table",
        |r| r.len() == 1,
    );

    // The same events again (a client's retry) and a restart: still once each.
    s.signal(libc::SIGTERM);
    assert!(s.wait().success());
    let s = Server::start_in(&dir, Some(&config));
    let r = s.send(
        "/v1/track",
        &json!({"messageId": "w5", "userId": "u2", "event": "Order Completed", "properties": {"revenue": 5}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let orders = rows_when(
        &format!("SELECT id FROM {schema}.order_completed ORDER BY id"),
        "w5 after the restart",
        |r| r.len() == 2,
    );
    assert_eq!(
        orders,
        vec![vec![Some("w2".into())], vec![Some("w5".into())]]
    );
    // A text where the column is a number: the row loads without it, and the discards
    // view of the admin API shows it with the reason.
    let r = s.send(
        "/v1/track",
        &json!({"messageId": "w6", "userId": "u2", "event": "Order Completed", "properties": {"revenue": "lots"}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let found = s.admin_until(
        "/warehouses/analytics/discards?limit=10",
        "the discarded revenue",
        std::time::Duration::from_secs(60),
        |b| b["data"].as_array().is_some_and(|d| !d.is_empty()),
    );
    let d = &found["data"][0];
    assert_eq!(
        (&d["table"], &d["column"], &d["rowId"], &d["value"]),
        (
            &json!("order_completed"),
            &json!("revenue"),
            &json!("w6"),
            &json!("lots")
        ),
        "{found}"
    );
    assert_eq!(d["schema"], json!(schema));
    assert!(
        d["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{found}"
    );
    s.admin("/warehouses/analytics/discards?limit=0")
        .assert_error(400, "invalid_limit");
    let mut c = postgres::Client::connect(&database(), postgres::NoTls).unwrap();
    c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .unwrap();
}

/// A warehouse added to a server that already holds events starts where its `start`
/// says: from a time, events received before it stay out.
#[test]
#[ignore = "needs PostgreSQL: DATABASE_URL (run by .ci/run)"]
fn a_new_warehouse_starts_from_a_time() {
    let schema = format!("wh_start_{}", uuid::Uuid::new_v4().simple());
    let source = SOURCE;
    let dir = tempfile::tempdir().unwrap().keep();
    // Two events, received by two runs of a server without the warehouse (so their
    // receive times differ), before the warehouse exists.
    for id in ["old-1", "new-1"] {
        let mut s = Server::start_in(&dir, Some(source));
        let r = s.send(
            "/v1/track",
            &json!({"messageId": id, "userId": "u1", "event": "Signed Up"}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        s.signal(libc::SIGTERM);
        assert!(s.wait().success());
    }
    // The start: the second event's receive time.
    let s = Server::start_in(&dir, Some(source));
    let stored = s.events("web", 2);
    let received = |i: usize| {
        stored[i]["receivedAt"]
            .as_str()
            .expect("receivedAt")
            .to_string()
    };
    let (newer, older) = (received(0), received(1));
    assert!(newer > older, "{newer} after {older}");
    drop(s);
    let config = with_warehouse(&schema, &format!("start = \"{newer}\""));
    let _s = Server::start_in(&dir, Some(&config));
    let rows = rows_when(
        &format!("SELECT id FROM {schema}.signed_up ORDER BY id"),
        "the event received at the start",
        |r| !r.is_empty(),
    );
    assert_eq!(rows, vec![vec![Some("new-1".into())]]);
    let mut c = postgres::Client::connect(&database(), postgres::NoTls).unwrap();
    c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .unwrap();
}

fn drop_schema(schema: &str) {
    let mut c = postgres::Client::connect(&database(), postgres::NoTls).unwrap();
    c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .unwrap();
}

/// A deletion regulation removes the subject's rows from every table of the warehouse:
/// by its user id, its anonymous id and the ids merged into its profile, the `users` row
/// included. Another user's rows stay. The warehouse's outcome is part of the
/// regulation's answer.
#[test]
#[ignore = "needs PostgreSQL: DATABASE_URL (run by .ci/run)"]
fn a_deletion_regulation_removes_the_subjects_rows() {
    let schema = format!("wh_del_{}", uuid::Uuid::new_v4().simple());
    let config = with_warehouse(&schema, "");
    let s = Server::start(Some(&config));
    let r = s.send(
        "/v1/batch",
        &json!({"batch": [
            {"type": "page", "messageId": "d1", "anonymousId": "anon-del", "name": "Home"},
            {"type": "identify", "messageId": "d2", "userId": "u-del", "anonymousId": "anon-del", "traits": {"email": "del@example.com"}},
            {"type": "track", "messageId": "d3", "userId": "u-del", "event": "Order Completed", "properties": {"revenue": 1}},
            {"type": "alias", "messageId": "d4", "userId": "u-del", "previousId": "anon-del"},
            {"type": "track", "messageId": "k1", "userId": "u-keep", "event": "Order Completed", "properties": {"revenue": 2}},
            {"type": "identify", "messageId": "k2", "userId": "u-keep", "traits": {"email": "keep@example.com"}},
        ]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    rows_when(
        &format!("SELECT id FROM {schema}.tracks"),
        "the tracks before the regulation",
        |r| r.len() == 2,
    );
    rows_when(
        &format!("SELECT id FROM {schema}.aliases"),
        "the alias before the regulation",
        |r| r.len() == 1,
    );
    let r = s.admin_call(
        "POST",
        "/regulations",
        Some(&json!({"regulationType": "SUPPRESS_WITH_DELETE", "subjectType": "USER_ID", "subjectIds": ["u-del"]})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let id = r.body["data"]["regulateId"].as_str().unwrap().to_string();
    let done = s.admin_until(&format!("/regulations/{id}"), "the regulation", WAIT, |b| {
        let st = b["data"]["regulation"]["overallStatus"]
            .as_str()
            .unwrap_or("");
        st != "INITIALIZED" && st != "RUNNING"
    });
    let reg = &done["data"]["regulation"];
    assert_eq!(reg["overallStatus"], "FINISHED", "{reg}");
    // page, identifies, users, tracks, order_completed, aliases.
    assert_eq!(reg["erased"]["warehouseRows"], 6, "{reg}");
    let outcome = reg["destinationStatuses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["destination"] == "analytics")
        .cloned()
        .unwrap_or_else(|| panic!("no warehouse outcome in {reg}"));
    assert_eq!(outcome["status"], "FINISHED", "{outcome}");
    let mut c = postgres::Client::connect(&database(), postgres::NoTls).unwrap();
    for (table, left) in [
        ("pages", 0),
        ("identifies", 1),
        ("users", 1),
        ("tracks", 1),
        ("order_completed", 1),
        ("aliases", 0),
    ] {
        let ids: Vec<String> = c
            .query(&format!("SELECT id FROM {schema}.{table}"), &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(ids.len(), left, "{table}: {ids:?}");
        assert!(
            ids.iter().all(|i| i.starts_with('k') || i == "u-keep"),
            "{table}: {ids:?}"
        );
    }
    drop(s);
    drop_schema(&schema);
}

/// A warehouse user without `CREATE` rights: the sync history says why the load failed,
/// ingest goes on, and once the right is granted every event is loaded, once. The lag
/// shows in `/metrics` meanwhile.
#[test]
#[ignore = "needs PostgreSQL: DATABASE_URL (run by .ci/run)"]
fn a_warehouse_without_rights_reports_it_and_loads_after_the_grant() {
    let schema = format!("wh_grant_{}", uuid::Uuid::new_v4().simple());
    let role = format!("wh_loader_{}", std::process::id());
    let mut admin = postgres::Client::connect(&database(), postgres::NoTls).unwrap();
    let db: String = admin
        .query_one("SELECT current_database()", &[])
        .unwrap()
        .get(0);
    admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN;"
        ))
        .unwrap();
    let mut url = url::Url::parse(&database()).unwrap();
    url.set_username(&role).unwrap();
    let config = format!(
        "{SOURCE}[[destinations]]\nname = \"analytics\"\ntype = \"warehouse\"\nsources = [\"web\"]\n\
         [destinations.settings]\nurl = \"{url}\"\nschemas = {{ web = \"{schema}\" }}\nmax_age_s = 1\n"
    );
    let s = Server::start(Some(&config));
    let events: Vec<_> = (0..20)
        .map(|i| json!({"type": "track", "messageId": format!("g{i}"), "userId": "u1", "event": "Granted"}))
        .collect();
    let r = s.send("/v1/batch", &json!({ "batch": events }));
    assert_eq!(r.status, 200, "{}", r.body);
    let syncs = s.admin_until("/warehouses/analytics/syncs", "a failed sync", WAIT, |b| {
        b["data"][0]["error"].is_string()
    });
    let error = syncs["data"][0]["error"].as_str().unwrap();
    assert!(error.contains("permission denied"), "{error}");
    assert_eq!(syncs["data"][0]["events"], 20, "{syncs}");
    let metrics = s.request("GET", "/metrics", &[], None).body;
    let lag = metrics
        .as_str()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("sluice_warehouse_lag_events{warehouse=\"analytics\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert_eq!(lag, Some(20.0), "lag while the load fails");
    // Ingest goes on meanwhile.
    let r = s.send(
        "/v1/track",
        &json!({"messageId": "g20", "userId": "u1", "event": "Granted"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    admin
        .batch_execute(&format!("GRANT CREATE ON DATABASE \"{db}\" TO {role}"))
        .unwrap();
    let n = rows_when(
        &format!("SELECT count(*)::text, count(DISTINCT id)::text FROM {schema}.granted"),
        "every event after the grant",
        |r| r.first().is_some_and(|r| r[0].as_deref() == Some("21")),
    );
    assert_eq!(n[0][1].as_deref(), Some("21"));
    let summary = s.admin_until(
        "/warehouses/analytics",
        "the sync after the grant",
        WAIT,
        |b| b["lastSync"]["error"].is_null() && b["lagEvents"] == 0,
    );
    assert_eq!(summary["schemas"]["web"], schema.as_str(), "{summary}");
    drop(s);
    drop_schema(&schema);
    admin
        .batch_execute(&format!(
            "REVOKE CREATE ON DATABASE \"{db}\" FROM {role}; DROP ROLE {role};"
        ))
        .unwrap();
}

/// A window replay loads the window's events again: rows lost in the warehouse come
/// back, each id still once; `sluice replay` is the same call. A warehouse has no dead
/// letters, and says so.
#[test]
#[ignore = "needs PostgreSQL: DATABASE_URL (run by .ci/run)"]
fn a_window_replay_loads_the_events_again() {
    let schema = format!("wh_replay_{}", uuid::Uuid::new_v4().simple());
    let config = with_warehouse(&schema, "");
    let s = Server::start(Some(&config));
    let events: Vec<_> = (0..10)
        .map(|i| json!({"type": "track", "messageId": format!("r{i}"), "userId": "u1", "event": "Replayed"}))
        .collect();
    let r = s.send("/v1/batch", &json!({ "batch": events }));
    assert_eq!(r.status, 200, "{}", r.body);
    let count = format!("SELECT count(*)::text FROM {schema}.replayed");
    rows_when(&count, "the first load", |r| {
        r.first().is_some_and(|r| r[0].as_deref() == Some("10"))
    });
    let mut c = postgres::Client::connect(&database(), postgres::NoTls).unwrap();
    c.batch_execute(&format!(
        "DELETE FROM {schema}.replayed WHERE id IN ('r1', 'r2', 'r3')"
    ))
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "replay",
            "analytics",
            "--from",
            "0",
            "--url",
            &s.url,
            "--token",
            "test-admin-token",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replays = s.admin_until("/destinations/analytics/replays", "the replay", WAIT, |b| {
        b["data"][0]["status"] == "finished"
    });
    assert_eq!(replays["data"][0]["events"], 10, "{replays}");
    let n = rows_when(
        &format!("SELECT count(*)::text, count(DISTINCT id)::text FROM {schema}.replayed"),
        "the replayed rows",
        |r| r.first().is_some_and(|r| r[0].as_deref() == Some("10")),
    );
    assert_eq!(n[0][1].as_deref(), Some("10"));
    let r = s.admin_call("POST", "/destinations/analytics/dead-letters/replay", None);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("no dead letters"),
        "{}",
        r.body
    );
    // The admin API neither replaces a warehouse of the file nor creates one.
    let hook = json!({"type": "webhook", "sources": ["web"], "settings": {"hooks": [{"hook": "https://example.com/in"}]}});
    let r = s.admin_call("PUT", "/destinations/analytics", Some(&hook));
    assert_eq!(r.status, 409, "{}", r.body);
    let r = s.admin_call(
        "PUT",
        "/destinations/second",
        Some(&json!({"type": "warehouse", "sources": ["web"], "settings": {"url": database()}})),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["field"], "type", "{}", r.body);
    drop(s);
    drop_schema(&schema);
}

/// SIGKILL while loads are under way, then a restart: every acknowledged event is in the
/// warehouse exactly once.
#[test]
#[ignore = "needs PostgreSQL: DATABASE_URL (run by .ci/run)"]
fn a_kill_mid_load_leaves_every_acknowledged_event_once() {
    let schema = format!("wh_kill_{}", uuid::Uuid::new_v4().simple());
    // Small batches: loads run all the time, so the kill lands in or between them.
    let config = with_warehouse(&schema, "batch_rows = 40");
    let dir = tempfile::tempdir().unwrap().keep();
    let mut s = Server::start_in(&dir, Some(&config));
    let mut sent = 0;
    let batch = |from: usize| {
        let events: Vec<_> = (from..from + 50)
            .map(|i| json!({"type": "track", "messageId": format!("x{i}"), "userId": "u1", "event": "Killed", "properties": {"i": i}}))
            .collect();
        json!({ "batch": events })
    };
    // Send until the warehouse has rows (loads are running), and a little more.
    loop {
        let r = s.send("/v1/batch", &batch(sent));
        assert_eq!(r.status, 200, "{}", r.body);
        sent += 50;
        let loaded = s.admin("/warehouses/analytics").body["lastSync"]["rows"]
            .as_object()
            .is_some_and(|r| !r.is_empty());
        if loaded && sent >= 1_000 {
            break;
        }
        assert!(sent < 100_000, "no load happened");
    }
    s.signal(libc::SIGKILL);
    s.wait();
    let _s = Server::start_in(&dir, Some(&config));
    let n = rows_when(
        &format!("SELECT count(*)::text, count(DISTINCT id)::text FROM {schema}.killed"),
        "every acknowledged event after the restart",
        |r| {
            r.first()
                .is_some_and(|r| r[1].as_deref() == Some(sent.to_string().as_str()))
        },
    );
    assert_eq!(n[0][0], n[0][1], "each event once");
    drop_schema(&schema);
}

/// A new warehouse with a start time, and an event sent the moment the server is up
/// (while the warehouse chooses its start position): the event is loaded, the one
/// received before the start is not.
#[test]
#[ignore = "needs PostgreSQL: DATABASE_URL (run by .ci/run)"]
fn an_event_sent_while_a_new_warehouse_starts_is_loaded() {
    let schema = format!("wh_race_{}", uuid::Uuid::new_v4().simple());
    let dir = tempfile::tempdir().unwrap().keep();
    let mut s = Server::start_in(&dir, Some(SOURCE));
    let r = s.send(
        "/v1/track",
        &json!({"messageId": "old-1", "userId": "u1", "event": "Signed Up"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let old = s.events("web", 1);
    let received = old[0]["receivedAt"].as_str().expect("receivedAt");
    let received = chrono::DateTime::parse_from_rfc3339(received).unwrap();
    let start = (received + chrono::Duration::milliseconds(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    s.signal(libc::SIGTERM);
    assert!(s.wait().success());
    let config = with_warehouse(&schema, &format!("start = \"{start}\""));
    let s = Server::start_in(&dir, Some(&config));
    let r = s.send(
        "/v1/track",
        &json!({"messageId": "new-1", "userId": "u1", "event": "Signed Up"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let rows = rows_when(
        &format!("SELECT id FROM {schema}.signed_up ORDER BY id"),
        "the event received after the start",
        |r| !r.is_empty(),
    );
    assert_eq!(rows, vec![vec![Some("new-1".into())]]);
    drop(s);
    drop_schema(&schema);
}
