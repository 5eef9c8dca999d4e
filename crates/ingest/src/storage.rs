//! Whether this node can store events, for readiness and for the operator's log.
//!
//! When the log refuses an append for want of space ([`LogError::Full`]: the disk or
//! `log.max_size_mb`), every ingest call gets 503 and nothing is lost; what must follow:
//!
//! - `/readyz` fails, so a load balancer sends the traffic to nodes that can store it. It
//!   passes again once the log reports room for a whole request more than it had when it
//!   filled ([`EventLog::room`]: someone freed space, or retention deleted events), or, for
//!   a log that cannot tell its room, [`RETRY_UNKNOWN_ROOM`] after the last refusal; the
//!   first append that succeeds clears the condition.
//! - The condition is logged once when it begins, then at most once per
//!   [`STORAGE_WARNING_EVERY`] with the count of refused requests, and once when it ends:
//!   not one line per refused request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sluice_log::throttle::{Throttle, STORAGE_WARNING_EVERY};
use sluice_log::{EventLog, LogError};

/// For a log that cannot tell its room: readiness is tried again this long after the last
/// refusal.
pub const RETRY_UNKNOWN_ROOM: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Full {
    since: Instant,
    /// The log's room when it filled (None: it cannot tell).
    room_then: Option<u64>,
    last_refusal: Instant,
    /// Requests refused while it lasts.
    refused: u64,
}

/// The node's storage condition (one per [`crate::Ingest`]).
pub struct StorageHealth {
    /// Whether `full` is set: read on every append without taking the lock.
    is_full: AtomicBool,
    full: Mutex<Option<Full>>,
    /// The "still full" lines, while the condition lasts.
    repeats: Throttle,
    /// A log near full flaps between refusing and taking appends: the lines for the
    /// condition's start and end are throttled together.
    transitions: Throttle,
}

impl Default for StorageHealth {
    fn default() -> Self {
        StorageHealth {
            is_full: AtomicBool::new(false),
            full: Mutex::new(None),
            repeats: Throttle::new(STORAGE_WARNING_EVERY),
            transitions: Throttle::new(STORAGE_WARNING_EVERY),
        }
    }
}

impl StorageHealth {
    /// Records an append of `source`'s events that failed; logs the condition when it
    /// begins and, while it lasts, once per [`STORAGE_WARNING_EVERY`].
    pub async fn append_failed(&self, log: &dyn EventLog, error: &LogError, source: &str) {
        if !matches!(error, LogError::Full(_)) {
            tracing::error!(error = %error, source, "append failed; answering 503");
            return;
        }
        let now = Instant::now();
        {
            let mut full = self.full.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(f) = full.as_mut() {
                f.refused += 1;
                f.last_refusal = now;
                if let Some(skipped) = self.repeats.allow() {
                    tracing::warn!(
                        refused = skipped + 1,
                        full_for_s = now.duration_since(f.since).as_secs(),
                        error = %error,
                        "the event log is still full; ingest answers 503 and /readyz fails"
                    );
                }
                return;
            }
        }
        let room_then = log.room().await.ok().flatten();
        let mut full = self.full.lock().unwrap_or_else(|e| e.into_inner());
        if full.is_none() {
            if let Some(skipped) = self.transitions.allow() {
                tracing::warn!(
                    error = %error,
                    room_bytes = room_then,
                    skipped,
                    "the event log is full: ingest answers 503 and /readyz fails until there is room (free disk space or raise log.max_size_mb); repeated at most once a minute"
                );
            }
            // The first "still full" line comes a period after this one.
            let _ = self.repeats.allow();
            self.is_full.store(true, Ordering::Release);
            *full = Some(Full {
                since: now,
                room_then,
                last_refusal: now,
                refused: 1,
            });
        }
    }

    /// Records an append that succeeded: ends a full condition.
    pub fn append_succeeded(&self) {
        if !self.is_full.load(Ordering::Acquire) {
            return;
        }
        self.is_full.store(false, Ordering::Release);
        let mut full = self.full.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = full.take().filter(|_| self.transitions.allow().is_some()) {
            tracing::warn!(
                refused = f.refused,
                full_for_s = f.since.elapsed().as_secs(),
                "the event log takes events again"
            );
        }
    }

    /// Whether the node can take events: `Err` while the log is full and has not gained
    /// `needed` bytes of room since.
    pub async fn ready(&self, log: &dyn EventLog, needed: u64) -> Result<(), LogIsFull> {
        let (room_then, since, last_refusal) = {
            let full = self.full.lock().unwrap_or_else(|e| e.into_inner());
            match full.as_ref() {
                None => return Ok(()),
                Some(f) => (f.room_then, f.since, f.last_refusal),
            }
        };
        let room_now = log.room().await.ok().flatten();
        let recovered = match (room_then, room_now) {
            (Some(then), Some(now)) => now >= then.saturating_add(needed),
            _ => last_refusal.elapsed() >= RETRY_UNKNOWN_ROOM,
        };
        if recovered {
            return Ok(());
        }
        Err(LogIsFull {
            for_s: since.elapsed().as_secs(),
        })
    }
}

/// The node refuses events for want of room in its log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the event log is full (for {for_s} s): it refuses every event; free disk space on the data directory or raise log.max_size_mb")]
pub struct LogIsFull {
    /// Seconds since the first refused append.
    pub for_s: u64,
}
