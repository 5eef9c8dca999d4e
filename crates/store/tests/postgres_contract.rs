//! The store contract against PostgreSQL (`.ci/run` starts a server and sets DATABASE_URL).
//! Each test gets a schema of its own. Needs a server, so it is not part of the plain
//! `cargo test --workspace`: run it with
//! `DATABASE_URL=postgres://postgres@127.0.0.1:15432/postgres cargo test -p sluice-store --test postgres_contract -- --ignored`.

use std::sync::Arc;

use async_trait::async_trait;
use sluice_store::contract::StoreHarness;
use sluice_store::{PgStore, Store};

struct Postgres {
    url: String,
}

impl Postgres {
    fn new() -> Postgres {
        let base = std::env::var("DATABASE_URL")
            .expect("DATABASE_URL must name a running PostgreSQL (see .ci/run)");
        let schema = format!("contract_{}", uuid::Uuid::new_v4().simple());
        let (b, s) = (base.clone(), schema.clone());
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&b, postgres::NoTls).expect("connect");
            c.batch_execute(&format!("CREATE SCHEMA {s}"))
                .expect("create schema");
        })
        .join()
        .unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        Postgres {
            url: format!("{base}{sep}options=-csearch_path%3D{schema}"),
        }
    }
}

#[async_trait]
impl StoreHarness for Postgres {
    async fn open(&self) -> Arc<dyn Store> {
        let url = self.url.clone();
        let store = tokio::task::spawn_blocking(move || PgStore::open(&url))
            .await
            .unwrap()
            .expect("open the PostgreSQL store");
        Arc::new(store)
    }
}

sluice_store::store_contract_tests!(
    ignore = "needs PostgreSQL: DATABASE_URL (run by .ci/run)";
    Postgres::new()
);

/// The PostgreSQL store answers the algorithm's reads from what it loaded ahead for a
/// batch (kept up to date by the batch's own writes) and writes traits at the end of the
/// batch; SQLite asks the database each time. Both must file the same profiles: a few
/// thousand generated events (identifies that connect devices, users and emails, tracks,
/// groups, out-of-order and repeated timestamps), in batches of varying size, through both
/// stores, then every identifier's profile, traits and links compared.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs PostgreSQL: DATABASE_URL (run by .ci/run)"]
async fn profiles_file_the_same_as_on_sqlite() {
    use serde_json::{json, Value};
    use sluice_identity::Rules;
    use sluice_store::contract::{event, members, trait_map};

    let pg = Postgres::new().open().await;
    let dir = tempfile::tempdir().unwrap();
    let sqlite: Arc<dyn Store> =
        Arc::new(sluice_store::SqliteStore::open(dir.path().join("state.sqlite")).unwrap());
    let rules = Arc::new(Rules::default());
    // A fixed xorshift stream: the same events on every run.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let mut events: Vec<Value> = Vec::new();
    for i in 0..3000u64 {
        let ts = 1_000 + i as i64 - next(40) as i64; // out of order, with ties
        let anon = format!("a{}", next(60));
        let user = format!("u{}", next(25));
        let msg = if next(20) == 0 {
            format!("m{}", next(50))
        } else {
            format!("m-{i}")
        };
        let plan = ["free", "pro", "team"][next(3) as usize];
        events.push(match next(10) {
            0..=1 => json!({"type": "identify", "ts": ts, "messageId": msg, "userId": user,
                "anonymousId": anon, "traits": {"email": format!("e{}@x.test", next(15)),
                "plan": plan, "n": next(5)}}),
            2 => json!({"type": "identify", "ts": ts, "messageId": msg, "anonymousId": anon,
                "traits": {"plan": "trial", "seen": i}}),
            3 => json!({"type": "group", "ts": ts, "messageId": msg, "userId": user,
                "groupId": format!("g{}", next(4)), "traits": {"size": next(100)}}),
            4..=5 => json!({"type": "track", "ts": ts, "messageId": msg, "userId": user,
                "anonymousId": anon}),
            _ => json!({"type": "page", "ts": ts, "messageId": msg, "anonymousId": anon}),
        });
    }
    let mut offset = 1u64;
    let mut rest = &events[..];
    while !rest.is_empty() {
        let n = (1 + next(400) as usize).min(rest.len());
        let batch: Vec<_> = rest[..n]
            .iter()
            .enumerate()
            .map(|(i, e)| event(offset + i as u64, e, &rules))
            .collect();
        for s in [&pg, &sqlite] {
            s.apply_profiles(batch.clone(), rules.clone())
                .await
                .unwrap();
        }
        offset += n as u64;
        rest = &rest[n..];
    }
    let keys = (0..60)
        .map(|i| format!("u|anonymous_id:a{i}"))
        .chain((0..25).map(|i| format!("u|user_id:u{i}")))
        .chain((0..15).map(|i| format!("u|email:e{i}@x.test")))
        .chain((0..4).map(|i| format!("a|group_id:g{i}")));
    let mut compared = 0;
    for key in keys {
        let (on_pg, on_sqlite) = (
            members(pg.as_ref(), &key).await,
            members(sqlite.as_ref(), &key).await,
        );
        assert_eq!(
            on_pg.as_ref().map(|m| &m.1),
            on_sqlite.as_ref().map(|m| &m.1),
            "members of the profile of {key}"
        );
        if on_pg.is_some() {
            assert_eq!(
                trait_map(pg.as_ref(), &key).await,
                trait_map(sqlite.as_ref(), &key).await,
                "traits of the profile of {key}"
            );
            let mut links = Vec::new();
            for s in [&pg, &sqlite] {
                let mut l = s.profile_links(vec![key.clone()]).await.unwrap();
                l.sort();
                links.push(l);
            }
            assert_eq!(links[0], links[1], "links of {key}");
            compared += 1;
        }
    }
    assert!(compared > 50, "only {compared} identifiers had profiles");
}

/// Opening applies the migrations once (a second open finds them applied and changes
/// nothing), and a database whose schema is newer than this build knows is refused with
/// an error that says so, not misread.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs PostgreSQL: DATABASE_URL (run by .ci/run)"]
async fn migrations_apply_once_and_a_newer_schema_is_refused() {
    let pg = Postgres::new();
    let url = pg.url.clone();
    tokio::task::spawn_blocking(move || {
        let versions = |c: &mut postgres::Client| -> Vec<i32> {
            c.query(
                "SELECT version FROM schema_migrations ORDER BY version",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
        };
        drop(PgStore::open(&url).expect("a fresh database"));
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let applied = versions(&mut c);
        assert!(!applied.is_empty() && applied[0] == 1, "{applied:?}");
        drop(PgStore::open(&url).expect("an up-to-date database"));
        assert_eq!(versions(&mut c), applied, "nothing applied twice");
        let newer = applied.last().unwrap() + 1;
        c.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&newer],
        )
        .unwrap();
        let e = PgStore::open(&url)
            .err()
            .expect("a newer schema is refused");
        assert!(
            e.to_string().contains(&format!("schema version {newer}"))
                && e.to_string().contains("newer Sluice"),
            "{e}"
        );
    })
    .await
    .unwrap();
}
