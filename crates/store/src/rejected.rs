//! Refused items: what a source sent that ingest refused, with the reason, for the admin
//! API.

use async_trait::async_trait;

use crate::StoreError;

/// An item a source refused, kept with its reason for the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedRecord {
    pub id: i64,
    pub source: String,
    pub received_at_ms: i64,
    /// Position in the batch (0 for single calls).
    pub index: i64,
    pub message_id: Option<String>,
    /// Machine code, e.g. `no_user_anon_id`.
    pub code: String,
    pub field: Option<String>,
    pub reason: String,
    /// The item as received (possibly truncated).
    pub raw: String,
}

/// Refused items, newest first per source.
#[async_trait]
pub trait RejectedStore: Send + Sync {
    /// Stores refused items (the `id` field is ignored and assigned).
    async fn add_rejected(&self, records: Vec<RejectedRecord>) -> Result<(), StoreError>;

    /// The newest refused items of a source, newest first.
    async fn rejected(&self, source: &str, limit: usize)
        -> Result<Vec<RejectedRecord>, StoreError>;

    /// Deletes refused items received before `before_ms`. Returns how many.
    async fn prune_rejected(&self, before_ms: i64) -> Result<u64, StoreError>;
}
