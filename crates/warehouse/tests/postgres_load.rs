//! Loading into a real PostgreSQL (`.ci/run` starts one and sets DATABASE_URL): run with
//! `DATABASE_URL=postgres://postgres@127.0.0.1:15432/postgres cargo test -p sluice-warehouse --test postgres_load -- --ignored`.
//! Each test loads into a schema of its own.

use serde_json::{json, Value};
mod common;

use common::{db as client, rows};
use sluice_warehouse::load::load;
use sluice_warehouse::postgres::Postgres;

fn track(id: &str, received: &str, properties: Value) -> Value {
    json!({"type": "track", "messageId": id, "event": "Order Completed", "userId": "u1",
           "receivedAt": received, "timestamp": received, "properties": properties,
           "context": {"library": {"name": "analytics.js"}}})
}

fn strings(c: &mut Postgres, sql: &str) -> Vec<Vec<Option<String>>> {
    c.client
        .query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.get::<_, Option<String>>(i))
                .collect()
        })
        .collect()
}

/// Tables and typed columns appear as the events bring them; a batch loaded twice (a
/// replay, a retry days later) leaves one row per id, the latest.
#[test]
#[ignore = "needs PostgreSQL: DATABASE_URL (run by .ci/run)"]
fn tables_and_columns_appear_and_each_id_is_stored_once() {
    let s = common::schema("wh", "basic");
    let mut c = client();
    let batch = rows(&[
        track(
            "m1",
            "2026-12-07T10:00:00Z",
            json!({"revenue": 19, "coupon": "X"}),
        ),
        track(
            "m2",
            "2026-12-07T10:00:01Z",
            json!({"revenue": 5.5, "shipped": true}),
        ),
    ]);
    let loaded = load(&mut c, &s, &batch).unwrap();
    assert_eq!(loaded.rows["tracks"], 2);
    assert_eq!(loaded.rows["order_completed"], 2);
    let types = strings(
        &mut c,
        &format!(
            "SELECT column_name::text, data_type::text FROM information_schema.columns
             WHERE table_schema = '{s}' AND table_name = 'order_completed'
               AND column_name IN ('revenue', 'shipped', 'coupon', 'received_at', 'context_library_name')
             ORDER BY 1"
        ),
    );
    let types: Vec<(String, String)> = types
        .into_iter()
        .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
        .collect();
    assert_eq!(
        types,
        [
            ("context_library_name", "text"),
            ("coupon", "text"),
            ("received_at", "timestamp with time zone"),
            // The first value was an integer; 5.5 could not fit and was discarded.
            ("revenue", "bigint"),
            ("shipped", "boolean"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    // Again, with m1 changed: still two rows, m1 as sent last.
    let again = rows(&[track(
        "m1",
        "2026-12-08T10:00:00Z",
        json!({"revenue": 21, "coupon": "Y"}),
    )]);
    load(&mut c, &s, &again).unwrap();
    load(&mut c, &s, &batch[..2]).unwrap();
    let got = strings(
        &mut c,
        &format!("SELECT id, coupon, revenue::text FROM {s}.order_completed ORDER BY id"),
    );
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0][0].as_deref(), Some("m1"));
    assert_eq!(got[1][2], None, "5.5 in an integer column is NULL");
    let discards = strings(
        &mut c,
        &format!("SELECT table_name, column_name, row_id, value, reason FROM {s}.sluice_discards"),
    );
    assert!(
        discards
            .iter()
            .all(|d| d[0].as_deref() == Some("order_completed")
                && d[1].as_deref() == Some("revenue")
                && d[2].as_deref() == Some("m2")
                && d[3].as_deref() == Some("5.5")
                && d[4].as_deref() == Some("incompatible schema conversion from float to integer")),
        "{discards:?}"
    );
    assert!(!discards.is_empty());
    c.client
        .batch_execute(&format!("DROP SCHEMA {s} CASCADE"))
        .unwrap();
}

/// Values that can be widened are: an integer into a float column, anything into a text
/// column. A value stored as text stays exactly what was sent.
#[test]
#[ignore = "needs PostgreSQL: DATABASE_URL (run by .ci/run)"]
fn safe_widening_and_hostile_text() {
    let s = common::schema("wh", "widen");
    let mut c = client();
    load(
        &mut c,
        &s,
        &rows(&[track(
            "a",
            "2026-12-07T10:00:00Z",
            json!({"price": 1.5, "note": "n"}),
        )]),
    )
    .unwrap();
    let hostile = "a \"quoted\", comma\nnewline \\ backslash '; DROP TABLE x; --";
    let loaded = load(
        &mut c,
        &s,
        &rows(&[track(
            "b",
            "2026-12-07T10:00:01Z",
            json!({"price": 2, "note": hostile}),
        )]),
    )
    .unwrap();
    assert_eq!(loaded.discarded, 0);
    let got = strings(
        &mut c,
        &format!("SELECT price::text, note FROM {s}.order_completed WHERE id = 'b'"),
    );
    assert_eq!(got, vec![vec![Some("2".into()), Some(hostile.into())]]);
    c.client
        .batch_execute(&format!("DROP SCHEMA {s} CASCADE"))
        .unwrap();
}

/// `users` keeps one row per user id, each trait its latest non-null value by
/// `received_at`: across the rows of one batch, and across loads (a late, older identify
/// does not overwrite newer traits).
#[test]
#[ignore = "needs PostgreSQL: DATABASE_URL (run by .ci/run)"]
fn users_keep_the_latest_non_null_trait() {
    let s = common::schema("wh", "users");
    let mut c = client();
    let identify = |id: &str, received: &str, traits: Value| {
        json!({"type": "identify", "messageId": id, "userId": "u1", "receivedAt": received,
               "traits": traits})
    };
    load(
        &mut c,
        &s,
        &rows(&[
            identify("i2", "2026-12-07T10:00:02Z", json!({"plan": "pro"})),
            identify(
                "i1",
                "2026-12-07T10:00:01Z",
                json!({"plan": "free", "email": "a@x.io"}),
            ),
        ]),
    )
    .unwrap();
    load(
        &mut c,
        &s,
        &rows(&[identify(
            "i3",
            "2026-12-07T10:00:03Z",
            json!({"name": "Ann"}),
        )]),
    )
    .unwrap();
    let got = strings(
        &mut c,
        &format!("SELECT id, plan, email, name FROM {s}.users"),
    );
    assert_eq!(
        got,
        vec![vec![
            Some("u1".into()),
            Some("pro".into()),
            Some("a@x.io".into()),
            Some("Ann".into())
        ]]
    );
    // A late identify, older than the row (a mobile client's backlog), in a later load:
    // it fills what the row lacks and overwrites nothing.
    load(
        &mut c,
        &s,
        &rows(&[identify(
            "i0",
            "2026-12-07T09:00:00Z",
            json!({"plan": "trial", "name": "Old", "phone": "123"}),
        )]),
    )
    .unwrap();
    let got = strings(
        &mut c,
        &format!("SELECT plan, name, phone, (received_at AT TIME ZONE 'UTC')::text FROM {s}.users"),
    );
    assert_eq!(
        got,
        vec![vec![
            Some("pro".into()),
            Some("Ann".into()),
            Some("123".into()),
            Some("2026-12-07 10:00:03".into())
        ]]
    );
    let identifies = strings(
        &mut c,
        &format!("SELECT count(*)::text FROM {s}.identifies"),
    );
    assert_eq!(identifies[0][0].as_deref(), Some("4"));
    c.client
        .batch_execute(&format!("DROP SCHEMA {s} CASCADE"))
        .unwrap();
}

/// Two loaders at once on the same tables (two nodes): both succeed, every id once.
#[test]
#[ignore = "needs PostgreSQL: DATABASE_URL (run by .ci/run)"]
fn two_loaders_at_once() {
    let s = common::schema("wh", "concurrent");
    let handles: Vec<_> = (0..2)
        .map(|n| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut c = client();
                for b in 0..5 {
                    let events: Vec<Value> = (0..20)
                        .map(|i| {
                            track(
                                &format!("n{n}-b{b}-{i}"),
                                "2026-12-07T10:00:00Z",
                                json!({format!("p{n}_{b}"): i}),
                            )
                        })
                        .collect();
                    load(&mut c, &s, &rows(&events)).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut c = client();
    let n = strings(
        &mut c,
        &format!("SELECT count(DISTINCT id)::text, count(*)::text FROM {s}.order_completed"),
    );
    assert_eq!(n[0], vec![Some("200".into()), Some("200".into())]);
    c.client
        .batch_execute(&format!("DROP SCHEMA {s} CASCADE"))
        .unwrap();
}
