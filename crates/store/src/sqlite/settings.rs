//! Settings and API-created destinations on SQLite.

use async_trait::async_trait;
use rusqlite::params;

use super::SqliteStore;
use crate::*;

#[async_trait]
impl SettingsStore for SqliteStore {
    async fn get_setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.text("SELECT value FROM settings WHERE key = ?1", key)
            .await
    }

    async fn put_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let (key, value) = (key.to_string(), value.to_string());
        self.state
            .with(move |c| {
                c.execute(
                    "INSERT INTO settings (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![key, value],
                )
                .map(|_| ())
            })
            .await
    }

    async fn destinations(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.state
            .with(|c| {
                let mut stmt =
                    c.prepare_cached("SELECT name, config FROM destinations ORDER BY name")?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect()
            })
            .await
    }

    async fn put_destination(&self, name: &str, config_json: &str) -> Result<(), StoreError> {
        let (name, config) = (name.to_string(), config_json.to_string());
        self.state
            .with(move |c| {
                c.execute(
                    "INSERT INTO destinations (name, config) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET config = excluded.config",
                    params![name, config],
                )
                .map(|_| ())
            })
            .await
    }

    async fn delete_destination(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_string();
        self.state
            .with(move |c| {
                let tx = c.transaction()?;
                let n = tx.execute("DELETE FROM destinations WHERE name = ?1", [&name])?;
                tx.execute("DELETE FROM pending WHERE destination = ?1", [&name])?;
                tx.commit()?;
                Ok(n > 0)
            })
            .await
    }
}
