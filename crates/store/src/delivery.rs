//! The router's records: retry-queue entries ([`PendingDelivery`]), dead letters, and one
//! delivery record per (destination, event). Attempts are kept as a JSON array.

use std::ops::Range;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// One request (or set of requests to the configured URLs) made for an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// When the attempt started, milliseconds since the epoch.
    pub at_ms: i64,
    pub url: String,
    /// The HTTP status, when an answer came.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Transport error (timeout, connection refused, …), when no answer came.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The first bytes of the response body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    pub duration_ms: u64,
}

/// An event waiting in a destination's retry queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDelivery {
    pub destination: String,
    pub offset: u64,
    pub message_id: String,
    pub user_key: String,
    pub received_at_ms: i64,
    pub payload: Vec<u8>,
    /// Every attempt so far, oldest first.
    pub attempts: Vec<Attempt>,
    /// Start of the retry window.
    pub first_attempt_ms: i64,
    pub next_at_ms: i64,
}

/// An event a destination gave up on, with the reason and every attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: i64,
    pub destination: String,
    pub offset: u64,
    pub message_id: String,
    pub user_key: String,
    pub received_at_ms: i64,
    pub payload: Vec<u8>,
    pub attempts: Vec<Attempt>,
    pub reason: String,
    /// Status of the last answer, if any.
    pub status: Option<u16>,
    pub failed_at_ms: i64,
}

/// Which dead letters to list or replay. Empty: all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// Failed at or after.
    pub since_ms: Option<i64>,
    /// Failed before.
    pub until_ms: Option<i64>,
    pub status: Option<u16>,
    /// The event's user key (userId, else anonymousId).
    pub user_key: Option<String>,
}

/// What became of an event at a destination. Stored and shown as its snake-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryOutcome {
    Delivered,
    Retrying,
    Failed,
    Filtered,
    DroppedIntegrations,
}

impl DeliveryOutcome {
    pub const ALL: [DeliveryOutcome; 5] = [
        DeliveryOutcome::Delivered,
        DeliveryOutcome::Retrying,
        DeliveryOutcome::Failed,
        DeliveryOutcome::Filtered,
        DeliveryOutcome::DroppedIntegrations,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Retrying => "retrying",
            DeliveryOutcome::Failed => "failed",
            DeliveryOutcome::Filtered => "filtered",
            DeliveryOutcome::DroppedIntegrations => "dropped_integrations",
        }
    }

    /// The outcome named `text` ([`DeliveryOutcome::as_str`]).
    pub fn parse(text: &str) -> Option<DeliveryOutcome> {
        Self::ALL.into_iter().find(|o| o.as_str() == text)
    }
}

/// A stored outcome that is none of [`DeliveryOutcome`]'s names.
#[derive(Debug, thiserror::Error)]
#[error("unknown delivery outcome {0:?}")]
pub struct UnknownOutcome(pub String);

impl rusqlite::types::FromSql for DeliveryOutcome {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let text = v.as_str()?;
        DeliveryOutcome::parse(text).ok_or_else(|| {
            rusqlite::types::FromSqlError::Other(Box::new(UnknownOutcome(text.into())))
        })
    }
}

impl<'a> postgres::types::FromSql<'a> for DeliveryOutcome {
    fn from_sql(
        ty: &postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let text = <&str as postgres::types::FromSql>::from_sql(ty, raw)?;
        DeliveryOutcome::parse(text).ok_or_else(|| UnknownOutcome(text.into()).into())
    }

    fn accepts(ty: &postgres::types::Type) -> bool {
        <&str as postgres::types::FromSql>::accepts(ty)
    }
}

/// Where one event stands with one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub destination: String,
    pub offset: u64,
    pub message_id: String,
    pub outcome: DeliveryOutcome,
    pub attempts: u32,
    pub updated_at_ms: i64,
    /// From receipt at the Tracking API to the destination's answer (delivered events).
    pub latency_ms: Option<u64>,
    pub status: Option<u16>,
    /// Why (filters, errors).
    pub detail: Option<String>,
}

/// The effects of one step of a destination consumer, applied in one transaction.
#[derive(Debug, Clone, Default)]
pub struct DeliveryBatch {
    /// Inserted, or replacing the entry of the same (destination, offset).
    pub upsert_pending: Vec<PendingDelivery>,
    /// (destination, offset) entries to remove from the retry queue.
    pub remove_pending: Vec<(String, u64)>,
    pub dead_letters: Vec<DeadLetter>,
    pub records: Vec<DeliveryRecord>,
}

impl DeliveryBatch {
    pub fn is_empty(&self) -> bool {
        self.upsert_pending.is_empty()
            && self.remove_pending.is_empty()
            && self.dead_letters.is_empty()
            && self.records.is_empty()
    }

    pub fn len(&self) -> usize {
        self.upsert_pending.len()
            + self.remove_pending.len()
            + self.dead_letters.len()
            + self.records.len()
    }
}

pub(crate) fn attempts_json(a: &[Attempt]) -> String {
    serde_json::to_string(a).unwrap_or_else(|_| "[]".into())
}

pub(crate) fn attempts_from(text: String) -> Vec<Attempt> {
    serde_json::from_str(&text).unwrap_or_default()
}

/// The router's state: each destination's retry queue, dead letters and delivery
/// records, and log-replay jobs.
#[async_trait]
pub trait DeliveryStore: Send + Sync {
    /// Applies one step of a destination consumer in one transaction: retry-queue entries
    /// written and removed, dead letters added, delivery records upserted.
    async fn apply_deliveries(&self, batch: DeliveryBatch) -> Result<(), StoreError>;

    /// Retry-queue entries of a destination for events at log offsets `within` (one
    /// partition's), due at `now_ms`, earliest first.
    async fn due_pending(
        &self,
        destination: &str,
        within: Range<u64>,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<PendingDelivery>, StoreError>;

    async fn pending_count(&self, destination: &str) -> Result<u64, StoreError>;
    /// Makes every retry-queue entry of a destination due at `now_ms` (after the
    /// destination recovered). Returns how many.
    async fn reschedule_pending(&self, destination: &str, now_ms: i64) -> Result<u64, StoreError>;

    /// Dead letters of a destination matching `filter`, newest first.
    async fn dead_letters(
        &self,
        destination: &str,
        filter: &DeadLetterFilter,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError>;

    async fn dead_letter_count(&self, destination: &str) -> Result<u64, StoreError>;
    /// Moves the dead letters matching `filter` back into the retry queue, due at
    /// `now_ms` with a fresh retry window, in one transaction. Returns how many.
    async fn replay_dead_letters(
        &self,
        destination: &str,
        filter: &DeadLetterFilter,
        now_ms: i64,
    ) -> Result<u64, StoreError>;

    /// Every destination's record of one event, searching the records of events at log
    /// offsets from `from_offset` on (records are kept in log order without a messageId
    /// index, which would cost a random B-tree insert per delivered event).
    async fn deliveries_of(
        &self,
        message_id: &str,
        from_offset: u64,
    ) -> Result<Vec<DeliveryRecord>, StoreError>;

    /// Deletes the delivery records of events at log offsets `within` (a partition's
    /// offsets before those the log's retention kept) and dead letters that failed before
    /// `before_ms`.
    async fn prune_deliveries(&self, within: Range<u64>, before_ms: i64)
        -> Result<u64, StoreError>;

    /// Log-replay jobs, as JSON documents keyed by id.
    async fn put_replay_job(&self, id: &str, job_json: &str) -> Result<(), StoreError>;

    async fn replay_jobs(&self) -> Result<Vec<String>, StoreError>;
}
