//! The warehouse's naming rules against a real PostgreSQL (`.ci/run` starts one and sets
//! DATABASE_URL): run with
//! `DATABASE_URL=postgres://postgres@127.0.0.1:15432/postgres cargo test -p sluice-warehouse --test postgres_names -- --ignored`.

use sluice_warehouse::naming::{column_name, event_table, POSTGRES_RESERVED};

fn client() -> postgres::Client {
    let url = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL must name a running PostgreSQL (see .ci/run)");
    postgres::Client::connect(&url, postgres::NoTls).expect("connect")
}

/// The reserved words are the server's own: `pg_get_keywords()` categories R and T.
#[test]
#[ignore = "needs PostgreSQL: DATABASE_URL (run by .ci/run)"]
fn the_reserved_words_are_the_servers() {
    let mut c = client();
    let mut server: Vec<String> = c
        .query(
            "SELECT word FROM pg_get_keywords() WHERE catcode IN ('R', 'T') ORDER BY word",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    server.sort();
    let mut ours: Vec<String> = POSTGRES_RESERVED.iter().map(|w| w.to_string()).collect();
    ours.sort();
    assert_eq!(ours, server);
}

/// Every name the rules make can be used unquoted, as analysts write SQL: a table and
/// columns made from hostile event names and keys are created and read back.
#[test]
#[ignore = "needs PostgreSQL: DATABASE_URL (run by .ci/run)"]
fn names_work_unquoted() {
    let mut c = client();
    let schema = format!("names_{}", std::process::id());
    c.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
    ))
    .unwrap();
    let table = event_table("Select * From Users; --").unwrap();
    let mut columns: Vec<String> = ["order", "user", "9lives", "Group", "Card Number", "ÄÖÜ tax"]
        .iter()
        .map(|k| column_name(k).unwrap())
        .collect();
    columns.push(column_name(&"very long property name ".repeat(5)).unwrap());
    let defs: Vec<String> = columns.iter().map(|c| format!("{c} text")).collect();
    c.batch_execute(&format!(
        "CREATE TABLE {schema}.{table} ({}); INSERT INTO {schema}.{table} ({}) VALUES ({})",
        defs.join(", "),
        columns.join(", "),
        columns.iter().map(|_| "'x'").collect::<Vec<_>>().join(", ")
    ))
    .unwrap();
    let n: i64 = c
        .query_one(&format!("SELECT count(*) FROM {schema}.{table}"), &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .unwrap();
}
