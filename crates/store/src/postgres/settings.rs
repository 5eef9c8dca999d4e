//! Settings and API-created destinations on PostgreSQL.

use async_trait::async_trait;

use super::PgStore;
use crate::{SettingsStore, StoreError};

#[async_trait]
impl SettingsStore for PgStore {
    async fn get_setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let key = key.to_string();
        self.with(move |c| {
            Ok(
                c.query_opt("SELECT value FROM settings WHERE key = $1", &[&key])?
                    .map(|r| r.get(0)),
            )
        })
        .await
    }

    async fn put_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let (key, value) = (key.to_string(), value.to_string());
        self.with(move |c| {
            c.execute(
                "INSERT INTO settings (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&key, &value],
            )
            .map(|_| ())
        })
        .await
    }

    async fn destinations(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.with(|c| {
            Ok(
                c.query("SELECT name, config FROM destinations ORDER BY name", &[])?
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect(),
            )
        })
        .await
    }

    async fn put_destination(&self, name: &str, config_json: &str) -> Result<(), StoreError> {
        let (name, config) = (name.to_string(), config_json.to_string());
        self.with(move |c| {
            c.execute(
                "INSERT INTO destinations (name, config) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET config = excluded.config",
                &[&name, &config],
            )
            .map(|_| ())
        })
        .await
    }

    async fn delete_destination(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.with(move |c| {
            let mut tx = c.transaction()?;
            let n = tx.execute("DELETE FROM destinations WHERE name = $1", &[&name])?;
            tx.execute("DELETE FROM pending WHERE destination = $1", &[&name])?;
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }
}
