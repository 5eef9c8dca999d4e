//! A configured source and what ingest keeps for it while it runs.

use crate::ratelimit::{Bucket, RateLimit};
use crate::sources::{kafka::KafkaSource, webhook::WebhookSource};

/// A configured source: where events come from and the key they authenticate with.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSettings {
    pub name: String,
    pub write_key: String,
    pub enabled: bool,
    /// Fill `context.ip` from the request for every event (client-side sources).
    pub collect_ip: bool,
    pub rate_limit: Option<RateLimit>,
    /// What else feeds the source besides the Tracking API.
    pub kind: SourceKind,
}

/// The source types. Every source takes Tracking API calls with its write key; the other
/// types are also fed another way. Adding a type: a file in [`crate::sources`] with its
/// settings and adapter, and a variant here.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceKind {
    /// The Tracking API only (`kind = "http"`, the default).
    Http,
    /// Also `POST /v1/webhooks/{name}` from a Segment Webhooks destination
    /// (`kind = "segment_webhook"`).
    SegmentWebhook(WebhookSource),
    /// Also a Kafka topic (`kind = "kafka"`).
    Kafka(KafkaSource),
}

impl SourceSettings {
    /// The webhook settings of a `segment_webhook` source.
    pub fn webhook(&self) -> Option<&WebhookSource> {
        match &self.kind {
            SourceKind::SegmentWebhook(w) => Some(w),
            _ => None,
        }
    }

    /// The topic settings of a `kafka` source.
    pub fn kafka(&self) -> Option<&KafkaSource> {
        match &self.kind {
            SourceKind::Kafka(k) => Some(k),
            _ => None,
        }
    }
}

/// A running source: its settings, its rate-limit bucket and its metric handles.
pub struct Source {
    pub settings: SourceSettings,
    pub(crate) bucket: Option<Bucket>,
    pub(crate) metrics: SourceMetrics,
}

impl Source {
    pub(crate) fn new(settings: SourceSettings) -> Source {
        Source {
            bucket: settings.rate_limit.map(Bucket::new),
            metrics: SourceMetrics::new(&settings.name),
            settings,
        }
    }

    /// Counts the bytes of a call this source accepted (before decompression).
    pub fn count_bytes(&self, n: usize) {
        self.metrics.bytes.increment(n as u64);
    }
}

/// Per-source metric handles, registered once (a labelled `counter!` per request costs
/// an allocation and a registry lookup).
pub(crate) struct SourceMetrics {
    pub accepted: metrics::Counter,
    pub duplicates: metrics::Counter,
    pub bytes: metrics::Counter,
}

impl SourceMetrics {
    fn new(source: &str) -> SourceMetrics {
        let label = source.to_string();
        SourceMetrics {
            accepted: metrics::counter!("sluice_events_accepted_total", "source" => label.clone()),
            duplicates: metrics::counter!("sluice_events_duplicate_total", "source" => label.clone()),
            bytes: metrics::counter!("sluice_ingest_bytes_total", "source" => label),
        }
    }
}
