//! The store contract against the embedded SQLite store.

use std::sync::Arc;

use async_trait::async_trait;
use sluice_store::contract::StoreHarness;
use sluice_store::{SqliteStore, Store};

struct Sqlite(tempfile::TempDir);

impl Sqlite {
    fn new() -> Sqlite {
        Sqlite(tempfile::tempdir().unwrap())
    }
}

#[async_trait]
impl StoreHarness for Sqlite {
    async fn open(&self) -> Arc<dyn Store> {
        Arc::new(SqliteStore::open(self.0.path().join("state.sqlite")).unwrap())
    }
}

sluice_store::store_contract_tests!(Sqlite::new());
