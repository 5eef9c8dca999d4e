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
