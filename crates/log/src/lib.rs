//! The append-only event log every consumer reads from.
//!
//! Module map:
//! - this file: the [`EventLog`] trait, its records and errors.
//! - [`sqlite`]: the embedded implementation (one SQLite file, WAL, one writer thread with
//!   group commit), with `chunk` (the row format: one row per run of one source's events)
//!   and `dedupe` (the in-memory, journaled messageId index). Its durability contract is
//!   written out in `docs/ARCHITECTURE.md`.
//! - [`contract`]: the contract suite every implementation must pass, as a macro that
//!   expands to one `#[tokio::test]` per property.
//!
//! Offsets are positive, strictly increasing and never reused, also after retention.
//! A consumer's cursor is the next offset it wants to read.

mod chunk;
pub mod contract;
mod dedupe;
pub mod sqlite;

use async_trait::async_trait;
use thiserror::Error;

pub use sqlite::SqliteLog;

/// An event about to be appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Name of the source the event came from.
    pub source: String,
    /// De-duplication key within the source.
    pub message_id: String,
    /// Order key: events of one key keep their order (userId, else anonymousId).
    pub user_key: String,
    /// Server receive time in milliseconds since the epoch; retention and the dedupe
    /// window are measured against it.
    pub received_at_ms: i64,
    /// The normalised event as JSON.
    pub payload: Vec<u8>,
}

/// An event read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub offset: u64,
    pub source: String,
    pub message_id: String,
    pub user_key: String,
    pub received_at_ms: i64,
    pub payload: Vec<u8>,
}

/// Which events [`EventLog::erase`] removes: those whose userId is one of `user_ids`,
/// and those without a userId whose anonymousId is one of `anonymous_ids`. An event of
/// another user that carries one of the anonymous ids (a shared device) is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EraseFilter {
    pub user_ids: std::collections::HashSet<String>,
    pub anonymous_ids: std::collections::HashSet<String>,
}

impl EraseFilter {
    /// Whether an event (its user key and JSON payload) is one of the subject's. The user
    /// key is the userId when there is one, else the anonymousId, so the payload is only
    /// read to tell the two apart.
    pub fn matches(&self, user_key: &str, payload: &[u8]) -> bool {
        let as_user = self.user_ids.contains(user_key);
        let as_anonymous = self.anonymous_ids.contains(user_key);
        if !as_user && !as_anonymous {
            return false;
        }
        #[derive(serde::Deserialize)]
        struct Ids {
            #[serde(rename = "userId")]
            user_id: Option<serde::de::IgnoredAny>,
        }
        let has_user_id = match serde_json::from_slice::<Ids>(payload) {
            Ok(ids) => ids.user_id.is_some(),
            // Not JSON: only the user key can tell; erase rather than keep.
            Err(_) => return true,
        };
        (as_user && has_user_id) || (as_anonymous && !has_user_id)
    }
}

/// What became of one appended event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored durably at this offset.
    Stored { offset: u64 },
    /// Same source and messageId already accepted within the dedupe window: not stored.
    Duplicate,
}

/// Settings every implementation honours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogOptions {
    /// Events older than this (by `received_at_ms`) are deleted by retention.
    pub retention_ms: i64,
    /// A messageId seen within this window for the same source is a duplicate.
    pub dedupe_window_ms: i64,
    /// Upper bound on the log's size on disk; appends beyond it fail with
    /// [`LogError::Full`]. `None`: as large as the disk allows.
    pub max_bytes: Option<u64>,
    /// Most events one group commit takes.
    pub max_group_events: usize,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            retention_ms: 7 * 24 * 3600 * 1000,
            dedupe_window_ms: 24 * 3600 * 1000,
            max_bytes: None,
            max_group_events: 20_000,
        }
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LogError {
    /// The disk or the configured size limit is full. Nothing of the append was stored.
    #[error("event log is full: {0}")]
    Full(String),
    /// The log is shutting down or its writer has stopped.
    #[error("event log is closed")]
    Closed,
    /// Any other storage failure. Nothing of the append was stored.
    #[error("event log storage error: {0}")]
    Storage(String),
}

/// The append-only event log. Implementations: [`SqliteLog`] (embedded); Kafka later.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends events in order, durably: when this returns `Ok`, every `Stored` event
    /// survives a crash of the process or the machine. Either all events of the call are
    /// stored (or recognised as duplicates), or none is.
    async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<Appended>, LogError>;

    /// Reads up to `max` events with offset ≥ `from`, in offset order.
    async fn read(&self, from: u64, max: usize) -> Result<Vec<StoredEvent>, LogError>;

    /// The newest `limit` events of one source, newest first (for the admin API).
    async fn recent(&self, source: &str, limit: usize) -> Result<Vec<StoredEvent>, LogError>;

    /// The consumer's committed cursor (the next offset it wants), if it ever committed.
    async fn cursor(&self, consumer: &str) -> Result<Option<u64>, LogError>;

    /// Durably commits a consumer's cursor.
    async fn commit(&self, consumer: &str, next_offset: u64) -> Result<(), LogError>;

    /// The offset the next appended event will get.
    async fn end_offset(&self) -> Result<u64, LogError>;

    /// A position to start reading at so that no event received at or after
    /// `received_at_ms` is missed (it may include a few earlier events of the same group
    /// commit; readers filter by `received_at_ms`). The end offset when there is none.
    async fn offset_at(&self, received_at_ms: i64) -> Result<u64, LogError>;

    /// Deletes events older than the retention and dedupe entries older than the window,
    /// relative to `now_ms`, in small steps that let appends through in between. Returns
    /// the number of events deleted.
    async fn enforce_retention(&self, now_ms: i64) -> Result<u64, LogError>;

    /// Erases the events matching `filter` everywhere the log keeps them (their offsets
    /// stay unused; readers skip them), for deletion regulations. Returns how many.
    async fn erase(&self, filter: EraseFilter) -> Result<u64, LogError>;

    /// Finishes pending appends and stops. Later calls fail with [`LogError::Closed`].
    async fn close(&self);
}
