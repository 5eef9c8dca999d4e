//! Regulations, the suppression list, and erasing a subject's state outside profiles.

use async_trait::async_trait;

use crate::StoreError;

/// What erasing a subject removed outside the profile tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ErasedState {
    pub pending: u64,
    pub dead_letters: u64,
    pub rejected: u64,
}

/// Regulations and suppressions.
#[async_trait]
pub trait PrivacyStore: Send + Sync {
    /// Removes retry-queue entries and dead letters of these user keys and refused items
    /// whose text holds any of `needles` (JSON-quoted ids), then truncates the write-ahead
    /// log so that no old page image keeps them.
    async fn erase_state(
        &self,
        user_keys: Vec<String>,
        needles: Vec<String>,
    ) -> Result<ErasedState, StoreError>;

    /// Regulations, as JSON documents keyed by id.
    async fn put_regulation(&self, id: &str, doc_json: &str) -> Result<(), StoreError>;

    async fn regulation(&self, id: &str) -> Result<Option<String>, StoreError>;
    async fn regulations(&self) -> Result<Vec<String>, StoreError>;

    /// Suppressed subjects (`user_id:u1`, `anonymous_id:a1`): set (`Some(regulation)`)
    /// or lifted (`None`).
    async fn set_suppressed(
        &self,
        subjects: Vec<String>,
        regulation: Option<String>,
    ) -> Result<(), StoreError>;

    async fn suppressed(&self) -> Result<Vec<String>, StoreError>;
}
