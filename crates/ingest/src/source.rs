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
    /// Write keys replaced by a rotation, each still accepted until its time (ms since
    /// the epoch).
    pub previous_keys: Vec<(String, i64)>,
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

/// A running source: its settings, its rate-limit bucket, its metric handles and its
/// recent volume.
pub struct Source {
    pub settings: SourceSettings,
    pub(crate) bucket: Option<Bucket>,
    pub(crate) metrics: SourceMetrics,
    /// Events accepted and refused per minute, on this node.
    pub volume: Volume,
}

impl Source {
    pub(crate) fn new(settings: SourceSettings) -> Source {
        Source {
            bucket: settings.rate_limit.map(Bucket::new),
            metrics: SourceMetrics::new(&settings.name),
            volume: Volume::default(),
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

/// Events accepted and refused per minute over the last day (on this node, since its
/// start), for the console's volume figures.
#[derive(Default)]
pub struct Volume {
    /// (minute since the epoch, accepted, refused), oldest first.
    minutes: std::sync::Mutex<std::collections::VecDeque<(i64, u64, u64)>>,
}

impl Volume {
    /// Minutes kept.
    pub const MINUTES: usize = 24 * 60;

    pub fn add(&self, now_ms: i64, accepted: u64, refused: u64) {
        let minute = now_ms.div_euclid(60_000);
        let Ok(mut m) = self.minutes.lock() else {
            return;
        };
        match m.back_mut() {
            Some(last) if last.0 == minute => {
                last.1 += accepted;
                last.2 += refused;
            }
            _ => m.push_back((minute, accepted, refused)),
        }
        while m
            .front()
            .is_some_and(|f| f.0 <= minute - Self::MINUTES as i64)
        {
            m.pop_front();
        }
    }

    /// (accepted, refused) in the last `minutes` minutes before `now_ms`, and the
    /// accepted count of each of those minutes, oldest first.
    pub fn last(&self, now_ms: i64, minutes: usize) -> (u64, u64, Vec<u64>) {
        let now = now_ms.div_euclid(60_000);
        let from = now - minutes as i64 + 1;
        let mut series = vec![0; minutes];
        let (mut a, mut r) = (0, 0);
        if let Ok(m) = self.minutes.lock() {
            for &(minute, acc, refd) in m.iter().filter(|e| e.0 >= from && e.0 <= now) {
                a += acc;
                r += refd;
                series[(minute - from) as usize] += acc;
            }
        }
        (a, r, series)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_counts_per_minute_and_forgets_after_a_day() {
        let v = Volume::default();
        let m = 60_000;
        v.add(10 * m, 5, 1);
        v.add(10 * m + 30_000, 2, 0);
        v.add(12 * m, 3, 0);
        assert_eq!(v.last(12 * m, 3), (10, 1, vec![7, 0, 3]));
        assert_eq!(v.last(12 * m, 1), (3, 0, vec![3]));
        v.add((12 + 24 * 60) * m, 1, 0);
        assert_eq!(
            v.last((12 + 24 * 60) * m, 24 * 60).0,
            1,
            "older than a day: gone"
        );
    }
}
