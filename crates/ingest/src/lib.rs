//! Where events enter Sluice. Transport-free: no HTTP types here; the server (and any
//! other front end) hands ingest bytes, keys and addresses and gets a [`Receipt`] or an
//! [`IngestError`] back.
//!
//! Module map:
//! - [`Ingest`] (this file): the sources by write key and name, and [`Ingest::accept`],
//!   the one path every source's events take into the log: record refused items, drop
//!   suppressed subjects, append (durable, deduplicated), wake this node's consumers,
//!   feed the live debugger, count.
//! - [`sources`]: one adapter per source type over [`Ingest::accept`]: the Tracking API's
//!   decoding ([`sources::tracking`]), the Segment webhook source ([`sources::webhook`]),
//!   the Kafka topic source ([`sources::kafka`]).
//! - [`source`]: a configured source and its running state.
//! - [`error`]: why a call was refused, with a transport-free [`error::Status`].
//! - [`ratelimit`]: per-source token buckets.
//! - [`storage`]: whether this node can store events (readiness when the log is full).
//! - [`suppress`]: subjects whose new events are dropped at ingest.

pub mod error;
pub mod ratelimit;
pub mod source;
pub mod sources;
pub mod storage;
pub mod suppress;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use sluice_log::{Appended, EventLog, NewEvent};
use sluice_spec::{Endpoint, Limits, Outcome, RequestError};
use sluice_store::{RejectedRecord, Store};
use tokio::sync::{broadcast, watch};

pub use error::{IngestError, Status};
pub use ratelimit::RateLimit;
pub use source::{Source, SourceKind, SourceSettings};

/// How many accepted events the live debugger's channel holds for a slow reader.
const LIVE_CAPACITY: usize = 1024;

/// One accepted event for the live debugger.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    pub source: Arc<str>,
    pub offset: u64,
    pub payload: Bytes,
}

/// What a source's sender is told of an accepted call.
#[derive(Debug, Serialize)]
pub struct Receipt {
    pub success: bool,
    pub accepted: usize,
    pub duplicates: usize,
    /// Events of suppressed users: acknowledged, not stored.
    #[serde(skip_serializing_if = "is_zero")]
    pub suppressed: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<RejectedItem>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One item of a call that was refused while the others were accepted.
#[derive(Debug, Serialize)]
pub struct RejectedItem {
    pub index: usize,
    #[serde(rename = "messageId", skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
    pub reason: String,
}

/// The sources by write key (a rotated key with the time it stops being accepted) and by
/// name.
struct SourceMap {
    by_key: HashMap<String, (Arc<Source>, Option<i64>)>,
    by_name: HashMap<String, Arc<Source>>,
}

impl SourceMap {
    fn new(sources: &[SourceSettings], before: Option<&SourceMap>) -> SourceMap {
        let mut by_key = HashMap::new();
        let mut by_name = HashMap::new();
        for s in sources {
            let source = match before.and_then(|b| b.by_name.get(&s.name)) {
                Some(old) if old.settings == *s => old.clone(),
                _ => Arc::new(Source::new(s.clone())),
            };
            for (k, until) in &s.previous_keys {
                by_key.insert(k.clone(), (source.clone(), Some(*until)));
            }
            by_key.insert(s.write_key.clone(), (source.clone(), None));
            by_name.insert(s.name.clone(), source);
        }
        SourceMap { by_key, by_name }
    }
}

/// The ingest side of a node: its sources and the log and store their events go to.
pub struct Ingest {
    /// The size limits, replaced whole by a reload (a request reads them once).
    limits: std::sync::RwLock<Arc<Limits>>,
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn Store>,
    /// The sources, replaced whole when they change (the admin API, a reload).
    sources: std::sync::RwLock<Arc<SourceMap>>,
    /// Accepted events for the live debugger (sent only while someone subscribes).
    pub live: broadcast::Sender<Arc<LiveEvent>>,
    /// Counts this node's appends: its consumers wait on it (and poll the log every
    /// [`sluice_log::EventLog::idle_poll`] for events other nodes appended).
    pub log_end: watch::Sender<u64>,
    /// Whether the log has room: readiness fails while it refuses appends for want of it.
    pub storage: storage::StorageHealth,
    /// Subjects whose events are dropped at ingest.
    pub suppressions: suppress::Suppressions,
}

impl Ingest {
    pub fn new(
        sources: &[SourceSettings],
        limits: Limits,
        log: Arc<dyn EventLog>,
        store: Arc<dyn Store>,
    ) -> Ingest {
        Ingest {
            limits: std::sync::RwLock::new(Arc::new(limits)),
            log,
            store,
            sources: std::sync::RwLock::new(Arc::new(SourceMap::new(sources, None))),
            live: broadcast::channel(LIVE_CAPACITY).0,
            log_end: watch::channel(0).0,
            storage: storage::StorageHealth::default(),
            suppressions: suppress::Suppressions::default(),
        }
    }

    fn map(&self) -> Arc<SourceMap> {
        self.sources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The source of this name.
    pub fn source(&self, name: &str) -> Option<Arc<Source>> {
        self.map().by_name.get(name).cloned()
    }

    /// Every source, by name.
    pub fn sources(&self) -> Vec<Arc<Source>> {
        let mut all: Vec<Arc<Source>> = self.map().by_name.values().cloned().collect();
        all.sort_by(|a, b| a.settings.name.cmp(&b.settings.name));
        all
    }

    /// The size limits in force.
    pub fn limits(&self) -> Arc<Limits> {
        self.limits
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the size limits (a reload): requests from now on are held to them.
    pub fn set_limits(&self, limits: Limits) {
        *self.limits.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(limits);
    }

    /// Replaces the sources. A source whose settings did not change keeps its running
    /// state (rate-limit bucket, volume).
    pub fn set_sources(&self, sources: &[SourceSettings]) {
        let mut slot = self.sources.write().unwrap_or_else(|e| e.into_inner());
        *slot = Arc::new(SourceMap::new(sources, Some(&slot)));
    }

    /// The enabled source this write key belongs to (a rotated key until its time).
    pub fn authenticate(&self, key: Option<&str>) -> Result<Arc<Source>, IngestError> {
        let key = key
            .filter(|k| !k.is_empty())
            .ok_or(IngestError::MissingWriteKey)?;
        let map = self.map();
        let (source, until) = map.by_key.get(key).ok_or(IngestError::UnknownWriteKey)?;
        if until.is_some_and(|t| t <= chrono::Utc::now().timestamp_millis()) {
            return Err(IngestError::UnknownWriteKey);
        }
        if !source.settings.enabled {
            return Err(IngestError::SourceDisabled(source.settings.name.clone()));
        }
        Ok(source.clone())
    }

    /// Events that arrived as JSON values (a webhook source, a Kafka topic): validated and
    /// normalised as one batch, then accepted like any.
    pub async fn accept_values(
        &self,
        source: &Source,
        events: Vec<serde_json::Value>,
        received_at: chrono::DateTime<chrono::Utc>,
        client_ip: Option<&str>,
    ) -> Result<Receipt, IngestError> {
        let limits = &*self.limits();
        let doc_bytes =
            serde_json::to_vec(&serde_json::json!({ "batch": events })).map_err(|e| {
                IngestError::InvalidJson {
                    what: "the events are not JSON",
                    reason: e.to_string(),
                }
            })?;
        let doc = sluice_spec::parse(Endpoint::Batch, &doc_bytes, limits)?;
        let ctx = sluice_spec::Context::new(received_at, client_ip, source.settings.collect_ip);
        let outcome = sluice_spec::normalize::normalize_document(None, doc, &ctx, limits)?;
        self.accept(source, outcome, received_at).await
    }

    /// The one path into the log: records the refused items, drops suppressed subjects,
    /// appends the rest (durable and deduplicated when this returns `Ok`), wakes this
    /// node's consumers and feeds the live debugger.
    pub async fn accept(
        &self,
        source: &Source,
        outcome: Outcome,
        received_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Receipt, IngestError> {
        let name = &source.settings.name;
        let received_ms = received_at.timestamp_millis();
        let rejected: Vec<RejectedItem> = outcome
            .rejected
            .iter()
            .map(|r| RejectedItem {
                index: r.index,
                message_id: r.message_id.clone(),
                code: r.error.code,
                field: r.error.field,
                reason: r.error.message.clone(),
            })
            .collect();
        if !outcome.rejected.is_empty() {
            for r in &outcome.rejected {
                metrics::counter!("sluice_events_rejected_total", "source" => name.clone(), "reason" => r.error.code)
                    .increment(1);
            }
            let records = outcome
                .rejected
                .into_iter()
                .map(|r| RejectedRecord {
                    id: 0,
                    source: name.clone(),
                    received_at_ms: received_ms,
                    index: r.index as i64,
                    message_id: r.message_id,
                    code: r.error.code.to_string(),
                    field: r.error.field.map(str::to_string),
                    reason: r.error.message,
                    raw: r.raw,
                })
                .collect();
            self.record_rejected(records, name).await;
        }

        let live = self.live.receiver_count() > 0;
        let mut accepted_events = outcome.accepted;
        let mut suppressed = 0;
        if !self.suppressions.is_empty() {
            accepted_events.retain(|e| {
                let drop = self.suppressions.matches(&e.user_key, &e.json);
                suppressed += drop as usize;
                !drop
            });
            if suppressed > 0 {
                metrics::counter!("sluice_events_suppressed_total", "source" => name.clone())
                    .increment(suppressed as u64);
            }
        }
        let events: Vec<NewEvent> = accepted_events
            .into_iter()
            .map(|e| NewEvent {
                payload: e.json,
                source: name.clone(),
                message_id: e.message_id,
                user_key: e.user_key,
                received_at_ms: received_ms,
            })
            .collect();
        // Only the live debugger needs a copy of the payloads, and only while someone watches.
        let payloads: Vec<Bytes> = if live {
            events
                .iter()
                .map(|e| Bytes::from(e.payload.clone()))
                .collect()
        } else {
            Vec::new()
        };
        let results = match self.log.append(events).await {
            Ok(r) => r,
            Err(e) => {
                self.storage
                    .append_failed(self.log.as_ref(), &e, name)
                    .await;
                return Err(IngestError::NotStored(e));
            }
        };
        self.storage.append_succeeded();

        let mut accepted = 0;
        let mut duplicates = 0;
        if results.iter().any(|r| matches!(r, Appended::Stored { .. })) {
            // Wakes the consumers of this node (other nodes' consumers poll the log).
            self.log_end.send_modify(|n| *n = n.wrapping_add(1));
        }
        let source_name: Option<Arc<str>> = live.then(|| Arc::from(name.as_str()));
        let mut payloads = payloads.into_iter();
        for r in &results {
            let payload = payloads.next();
            match r {
                Appended::Stored { offset } => {
                    accepted += 1;
                    if let (Some(payload), Some(source_name)) = (payload, &source_name) {
                        let _ = self.live.send(Arc::new(LiveEvent {
                            source: source_name.clone(),
                            offset: *offset,
                            payload,
                        }));
                    }
                }
                Appended::Duplicate => duplicates += 1,
            }
        }
        source.metrics.accepted.increment(accepted as u64);
        source
            .volume
            .add(received_ms, accepted as u64, rejected.len() as u64);
        if duplicates > 0 {
            source.metrics.duplicates.increment(duplicates as u64);
        }
        Ok(Receipt {
            success: true,
            accepted,
            duplicates,
            suppressed,
            rejected,
        })
    }

    /// A refused call: when its source is known, the refusal (with an excerpt of the
    /// body) is kept for the admin API. Answers the error to return.
    pub async fn refuse(
        &self,
        source: Option<&Source>,
        e: RequestError,
        body: &[u8],
        received_at: chrono::DateTime<chrono::Utc>,
    ) -> IngestError {
        if let Some(source) = source {
            let name = &source.settings.name;
            metrics::counter!("sluice_events_rejected_total", "source" => name.clone(), "reason" => e.code())
                .increment(1);
            let record = RejectedRecord {
                id: 0,
                source: name.clone(),
                received_at_ms: received_at.timestamp_millis(),
                index: 0,
                message_id: None,
                code: e.code().to_string(),
                field: e.field().map(str::to_string),
                reason: e.to_string(),
                raw: excerpt(body),
            };
            source.volume.add(received_at.timestamp_millis(), 0, 1);
            self.record_rejected(vec![record], name).await;
        }
        IngestError::Request(e)
    }

    /// Keeps refusal records; losing one is logged, at most once a minute (a full state
    /// store fails every record), and never fails the call: the refusal is answered
    /// either way.
    pub async fn record_rejected(&self, records: Vec<RejectedRecord>, source: &str) {
        if let Err(e) = self.store.add_rejected(records).await {
            static QUIET: sluice_log::throttle::Throttle =
                sluice_log::throttle::Throttle::new(sluice_log::throttle::STORAGE_WARNING_EVERY);
            if let Some(skipped) = QUIET.allow() {
                tracing::warn!(error = %e, %source, skipped, "could not record rejected items");
            }
        }
    }
}

/// The first 64 KiB of a refused body, as text, for its refusal record.
pub fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(64 * 1024)]).into_owned()
}

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
