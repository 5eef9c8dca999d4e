//! The server on the PostgreSQL state store (`[store] kind = "postgres"`), end to end:
//! delivery with retries kept in PostgreSQL, profiles and the Profile API, a deletion
//! regulation, and a restart that finds everything again. Needs a server (`.ci/run` starts
//! one): `DATABASE_URL=postgres://postgres@127.0.0.1:15432/postgres cargo test -p sluice
//! --test postgres_store -- --ignored`.

mod common;

use std::time::Duration;

use common::receiver::{Answer, Receiver};
use common::{basic, Server};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// A fresh schema in the DATABASE_URL database, as a URL that uses it.
fn fresh_schema() -> String {
    let base = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL must name a running PostgreSQL (see .ci/run)");
    let schema = format!("e2e_{}", uuid::Uuid::new_v4().simple());
    let mut c = postgres::Client::connect(&base, postgres::NoTls).expect("connect");
    c.batch_execute(&format!("CREATE SCHEMA {schema}"))
        .expect("create schema");
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-csearch_path%3D{schema}")
}

fn profile(s: &Server, path: &str) -> common::Reply {
    s.request(
        "GET",
        &format!("/v1/spaces/default/collections/users/profiles/{path}"),
        &[("Authorization", &basic("test-admin-token"))],
        None,
    )
}

#[test]
#[ignore = "needs PostgreSQL: DATABASE_URL (run by .ci/run)"]
fn the_server_runs_on_postgres() {
    let url = fresh_schema();
    // The receiver fails the first request: the retry queue lives in PostgreSQL.
    let rx = Receiver::start(|n, _| {
        if n == 0 {
            Answer::Status(503)
        } else {
            Answer::Status(200)
        }
    });
    let config = format!(
        r#"
admin_token = "test-admin-token"
[store]
kind = "postgres"
url = "{url}"
[[sources]]
name = "web"
write_key = "wk_web_123"
[[destinations]]
name = "hooks"
type = "webhook"
sources = ["web"]
allow_private_networks = true
retry = {{ min_backoff = "20ms", max_backoff = "100ms" }}
[destinations.settings]
hooks = [{{ hook = "{}/in" }}]
"#,
        rx.url
    );
    let dir = tempfile::tempdir().unwrap().keep();
    let mut s = Server::start_in(&dir, Some(&config));
    let r = s.send(
        "/v1/batch",
        &json!({"batch": [
            {"type": "identify", "messageId": "p1", "userId": "pg-user", "anonymousId": "pg-anon",
             "traits": {"plan": "pro", "email": "pg@example.com"}},
            {"type": "track", "messageId": "p2", "userId": "pg-user", "event": "Order Completed"},
            {"type": "track", "messageId": "p3", "userId": "other-user", "event": "Order Completed"},
        ]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    rx.wait_until("three events delivered after a retry", WAIT, |log| {
        Receiver::delivered_ids(log).len() == 3
    });
    let deadline = std::time::Instant::now() + WAIT;
    let traits = loop {
        let r = profile(&s, "anonymous_id:pg-anon/traits");
        if r.status == 200 {
            break r.body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no profile: {}",
            r.body
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(traits["traits"]["plan"], "pro");
    // The delivery record (written after the answer, in PostgreSQL) says so.
    s.admin_until("/events/p1", "p1's record delivered", WAIT, |b| {
        b["deliveries"][0]["outcome"] == "delivered"
    });

    // A restart finds destinations' records and profiles in PostgreSQL.
    s.signal(libc::SIGTERM);
    assert!(s.wait().success());
    let s = Server::start_in(&dir, Some(&config));
    assert_eq!(
        profile(&s, "email:pg@example.com/traits").body["traits"]["plan"],
        "pro"
    );

    // A deletion regulation runs to the end on PostgreSQL.
    let r = s.admin_call(
        "POST",
        "/regulations",
        Some(&json!({"regulationType": "DELETE_INTERNAL", "subjectType": "USER_ID", "subjectIds": ["pg-user"]})),
    );
    let id = r.body["data"]["regulateId"].as_str().unwrap().to_string();
    let done: Value = s.admin_until(&format!("/regulations/{id}"), "the deletion", WAIT, |b| {
        let st = b["data"]["regulation"]["overallStatus"]
            .as_str()
            .unwrap_or("");
        st == "FINISHED" || st == "FAILED"
    });
    assert_eq!(
        done["data"]["regulation"]["overallStatus"], "FINISHED",
        "{done}"
    );
    assert_eq!(profile(&s, "anonymous_id:pg-anon/traits").status, 404);
    let others: Vec<Value> = s.events("web", 10);
    assert_eq!(
        others.len(),
        1,
        "only the other user's event is left: {others:?}"
    );
}
