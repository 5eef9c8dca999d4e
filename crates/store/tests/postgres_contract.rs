//! The store contract against PostgreSQL (`.ci/run` starts a server and sets DATABASE_URL).
//! Each test gets a schema of its own. Needs a server, so it is not part of the plain
//! `cargo test --workspace`: run it with
//! `DATABASE_URL=postgres://postgres@127.0.0.1:55432/postgres cargo test -p sluice-store --test postgres_contract -- --ignored`.

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
