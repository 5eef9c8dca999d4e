//! Settings the server keeps for itself (generated secrets: the write key and admin
//! token) and destinations created over the admin API.

use async_trait::async_trait;

use crate::StoreError;

/// Small settings and API-created destinations.
#[async_trait]
pub trait SettingsStore: Send + Sync {
    async fn get_setting(&self, key: &str) -> Result<Option<String>, StoreError>;

    async fn put_setting(&self, key: &str, value: &str) -> Result<(), StoreError>;
    /// Destinations created over the admin API: (name, configuration as JSON).
    async fn destinations(&self) -> Result<Vec<(String, String)>, StoreError>;

    async fn put_destination(&self, name: &str, config_json: &str) -> Result<(), StoreError>;
    /// Removes a destination's configuration and its retry queue (dead letters and
    /// delivery records stay until retention). Returns whether it existed.
    async fn delete_destination(&self, name: &str) -> Result<bool, StoreError>;
}
