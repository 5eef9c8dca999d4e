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
//! The log is split into partitions (the SQLite log has one; the Kafka log has its topic's).
//! Events of one user key always go to the same partition and keep their order there.
//! An event's *offset* is a position: the partition in the high bits
//! ([`PARTITION_SHIFT`]), the sequence within the partition below ([`position`],
//! [`partition_of`]); so one `u64` names an event anywhere in the log, and within a
//! partition offsets are positive, strictly increasing and never reused, also after
//! retention. A consumer keeps one cursor per partition: the next offset it wants there.
//! Which partitions a node works on for a consumer is the log's [`Assignment`] (all of
//! them on the embedded log; a share negotiated with the other nodes on Kafka).

mod assignment;
mod chunk;
pub mod contract;
mod dedupe;
#[cfg(feature = "kafka")]
pub mod kafka;
mod runs;
pub mod sqlite;
pub mod throttle;

use async_trait::async_trait;
use thiserror::Error;

pub use assignment::Assignment;
pub use sqlite::SqliteLog;

/// Bits below the partition number in an offset.
pub const PARTITION_SHIFT: u32 = 48;
/// Most partitions a log may have (offsets, doubled, must still fit an `i64` in stores).
pub const MAX_PARTITIONS: u32 = 4096;

/// The offset of the `seq`-th position of `partition`.
pub fn position(partition: u32, seq: u64) -> u64 {
    (u64::from(partition) << PARTITION_SHIFT) | (seq & ((1 << PARTITION_SHIFT) - 1))
}

/// The partition an offset lies in.
pub fn partition_of(offset: u64) -> u32 {
    (offset >> PARTITION_SHIFT) as u32
}

/// The sequence of an offset within its partition.
pub fn seq_of(offset: u64) -> u64 {
    offset & ((1 << PARTITION_SHIFT) - 1)
}

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
    /// Memory the dedupe index may use (`[dedupe] max_memory_mb`): entries beyond it move
    /// to sorted files on disk with a filter each in memory, and deduplication stays exact.
    pub dedupe_memory_bytes: usize,
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
            dedupe_memory_bytes: 64 << 20,
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

/// The append-only event log. Implementations: [`SqliteLog`] (embedded) and, with the
/// `kafka` feature, `kafka::KafkaLog`.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// How many partitions the log has; they are numbered from 0.
    fn partitions(&self) -> u32 {
        1
    }

    /// The partitions this node works on for `consumer`, as they change. Every consumer
    /// (a destination, the profile store) asks once and runs one worker per partition it
    /// is given; it must call [`Assignment::release`] for a partition taken away once its
    /// cursor there is committed. The default: every partition, for good.
    fn assignment(&self, _consumer: &str) -> Assignment {
        Assignment::all(self.partitions())
    }

    /// Appends events in order, durably: when this returns `Ok`, every `Stored` event
    /// survives a crash of the process or the machine. Either all events of the call are
    /// stored (or recognised as duplicates), or none is.
    async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<Appended>, LogError>;

    /// How long a consumer at the end of a partition waits before reading again when
    /// nothing told it of new events (events appended by other nodes arrive that way).
    fn idle_poll(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }

    /// Reads up to `max` events of `from`'s partition with offset ≥ `from`, in order.
    async fn read(&self, from: u64, max: usize) -> Result<Vec<StoredEvent>, LogError>;

    /// The events at these offsets (any partitions, any order, for the Profile API's
    /// pages), in the order asked. Offsets past retention, erased or not written are left
    /// out. The default reads them one by one; a log where a random read is a round trip
    /// reads each partition's offsets in few passes.
    async fn read_at(&self, offsets: &[u64]) -> Result<Vec<StoredEvent>, LogError> {
        let mut out = Vec::with_capacity(offsets.len());
        for &o in offsets {
            let found = self.read(o, 1).await?;
            out.extend(found.into_iter().filter(|e| e.offset == o));
        }
        Ok(out)
    }

    /// The newest `limit` events of one source, newest first (for the admin API).
    async fn recent(&self, source: &str, limit: usize) -> Result<Vec<StoredEvent>, LogError>;

    /// The consumer's committed cursor in a partition (the next offset it wants there), if
    /// it ever committed one.
    async fn cursor(&self, consumer: &str, partition: u32) -> Result<Option<u64>, LogError>;

    /// Durably commits a consumer's cursor in the partition `next_offset` lies in.
    async fn commit(&self, consumer: &str, next_offset: u64) -> Result<(), LogError>;

    /// The offset the next event appended to `partition` will get.
    async fn end_offset(&self, partition: u32) -> Result<u64, LogError>;

    /// A position in `partition` to start reading at so that no event received at or
    /// after `received_at_ms` is missed (it may include a few earlier events; readers
    /// filter by `received_at_ms`). The partition's end offset when there is none.
    async fn offset_at(&self, partition: u32, received_at_ms: i64) -> Result<u64, LogError>;

    /// Deletes events older than the retention and dedupe entries older than the window,
    /// relative to `now_ms`, in small steps that let appends through in between. Returns
    /// the number of events deleted.
    async fn enforce_retention(&self, now_ms: i64) -> Result<u64, LogError>;

    /// Erases the events matching `filter` everywhere the log keeps them (their offsets
    /// stay unused; readers skip them), for deletion regulations. Returns how many.
    async fn erase(&self, filter: EraseFilter) -> Result<u64, LogError>;

    /// How many more bytes the log can take before appends fail for want of space: the
    /// free space of its disk or the room left under its size limit, whichever is less.
    /// `None` when the log cannot tell (a broker's disks are the broker's). Readiness
    /// uses it, so a load balancer stops sending to a node that would refuse every event.
    async fn room(&self) -> Result<Option<u64>, LogError> {
        Ok(None)
    }

    /// Finishes pending appends and stops. Later calls fail with [`LogError::Closed`].
    async fn close(&self);
}
