//! What the PostgreSQL suites of the warehouse share: the server (`DATABASE_URL`, started
//! by `.ci/run`), a fresh schema per test, events into rows.

#![allow(dead_code)]

use serde_json::Value;
use sluice_warehouse::postgres::Postgres;
use sluice_warehouse::shape::{shape, Row};

pub fn url() -> String {
    std::env::var("DATABASE_URL")
        .expect("DATABASE_URL must name a running PostgreSQL (see .ci/run)")
}

pub fn db() -> Postgres {
    Postgres::connect(&url()).expect("connect")
}

/// A schema name of this test's own (`{prefix}_{name}_{pid}`), dropped if a run before
/// left it.
pub fn schema(prefix: &str, name: &str) -> String {
    let s = format!("{prefix}_{name}_{}", std::process::id());
    db().client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {s} CASCADE"))
        .unwrap();
    s
}

pub fn drop_schema(db: &mut Postgres, s: &str) {
    db.client
        .batch_execute(&format!("DROP SCHEMA {s} CASCADE"))
        .unwrap();
}

/// The rows of these events.
pub fn rows(events: &[Value]) -> Vec<Row> {
    events.iter().flat_map(|e| shape(e).rows).collect()
}
