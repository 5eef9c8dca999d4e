//! Per-destination delivery statistics: counts by outcome and latency histograms in
//! one-minute buckets over the last 24 hours (in memory; they restart empty), the latest
//! errors, and the Prometheus metrics of the same facts.
//!
//! Metrics (label `destination`): `sluice_delivery_events_total{outcome}`,
//! `sluice_delivery_attempts_total{result}`, `sluice_delivery_latency_seconds` (receipt
//! at the Tracking API → destination accepted), `sluice_delivery_request_seconds` (one
//! HTTP exchange), `sluice_destination_backlog_events`, `sluice_destination_retry_queue`,
//! `sluice_destination_dead_letters`, `sluice_destination_paused` (1 while the circuit
//! breaker holds new events back).

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;
use serde_json::{json, Value};

pub use sluice_store::DeliveryOutcome as Outcome;

/// An outcome's slot in the per-outcome counters.
trait Slot {
    fn index(self) -> usize;
}

impl Slot for Outcome {
    fn index(self) -> usize {
        self as usize
    }
}

/// Latency buckets: bucket i holds values below 2^(i/4) ms (the first: below 1 ms).
const BUCKETS: usize = 80;

fn bucket_of(ms: f64) -> usize {
    if ms < 1.0 {
        return 0;
    }
    ((ms.log2() * 4.0).floor() as usize + 1).min(BUCKETS - 1)
}

/// The upper bound of bucket i in ms.
fn bucket_upper(i: usize) -> f64 {
    2f64.powf(i as f64 / 4.0)
}

#[derive(Clone)]
struct Minute {
    minute: i64,
    counts: [u64; 5],
    end_to_end: [u32; BUCKETS],
    request: [u32; BUCKETS],
}

impl Minute {
    fn new(minute: i64) -> Minute {
        Minute {
            minute,
            counts: [0; 5],
            end_to_end: [0; BUCKETS],
            request: [0; BUCKETS],
        }
    }
}

/// One recent failure, for the delivery report.
#[derive(Debug, Clone, Serialize)]
pub struct RecentError {
    pub at: String,
    #[serde(rename = "messageId")]
    pub message_id: String,
    pub url: String,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub response: Option<String>,
    pub outcome: Outcome,
}

const MAX_ERRORS: usize = 20;
const MINUTES: i64 = 24 * 60;

struct Inner {
    minutes: VecDeque<Minute>,
    errors: VecDeque<RecentError>,
}

pub struct Stats {
    inner: Mutex<Inner>,
    m: Handles,
    paused: std::sync::atomic::AtomicBool,
    /// Events behind the cursor, per partition this node works on.
    backlogs: Mutex<std::collections::BTreeMap<u32, u64>>,
}

struct Handles {
    outcomes: [metrics::Counter; 5],
    attempt_ok: metrics::Counter,
    attempt_retry: metrics::Counter,
    attempt_permanent: metrics::Counter,
    latency: metrics::Histogram,
    request: metrics::Histogram,
    backlog: metrics::Gauge,
    retry_queue: metrics::Gauge,
    dead_letters: metrics::Gauge,
    paused: metrics::Gauge,
}

impl Stats {
    pub fn new(destination: &str) -> Stats {
        let d = destination.to_string();
        let outcome = |o: Outcome| metrics::counter!("sluice_delivery_events_total", "destination" => d.clone(), "outcome" => o.as_str());
        let attempt = |r: &'static str| metrics::counter!("sluice_delivery_attempts_total", "destination" => d.clone(), "result" => r);
        Stats {
            inner: Mutex::new(Inner {
                minutes: VecDeque::new(),
                errors: VecDeque::new(),
            }),
            paused: std::sync::atomic::AtomicBool::new(false),
            backlogs: Mutex::default(),
            m: Handles {
                outcomes: Outcome::ALL.map(outcome),
                attempt_ok: attempt("success"),
                attempt_retry: attempt("retryable_error"),
                attempt_permanent: attempt("permanent_error"),
                latency: metrics::histogram!("sluice_delivery_latency_seconds", "destination" => d.clone()),
                request: metrics::histogram!("sluice_delivery_request_seconds", "destination" => d.clone()),
                backlog: metrics::gauge!("sluice_destination_backlog_events", "destination" => d.clone()),
                retry_queue: metrics::gauge!("sluice_destination_retry_queue", "destination" => d.clone()),
                dead_letters: metrics::gauge!("sluice_destination_dead_letters", "destination" => d.clone()),
                paused: metrics::gauge!("sluice_destination_paused", "destination" => d),
            },
        }
    }

    fn with_minute(&self, now_ms: i64, f: impl FnOnce(&mut Minute)) {
        let minute = now_ms.div_euclid(60_000);
        let Ok(mut g) = self.inner.lock() else { return };
        if g.minutes.back().map(|m| m.minute) != Some(minute) {
            g.minutes.push_back(Minute::new(minute));
        }
        while g
            .minutes
            .front()
            .is_some_and(|m| m.minute <= minute - MINUTES)
        {
            g.minutes.pop_front();
        }
        if let Some(m) = g.minutes.back_mut() {
            f(m);
        }
    }

    /// Counts an event's outcome; `end_to_end_ms` for delivered events.
    pub fn outcome(&self, now_ms: i64, outcome: Outcome, end_to_end_ms: Option<u64>) {
        self.m.outcomes[outcome.index()].increment(1);
        if let Some(ms) = end_to_end_ms {
            self.m.latency.record(ms as f64 / 1000.0);
        }
        self.with_minute(now_ms, |m| {
            m.counts[outcome.index()] += 1;
            if let Some(ms) = end_to_end_ms {
                m.end_to_end[bucket_of(ms as f64)] += 1;
            }
        });
    }

    /// Counts one HTTP exchange.
    pub fn attempt(&self, now_ms: i64, duration_ms: f64, result: crate::retry::Verdict) {
        use crate::retry::Verdict;
        match result {
            Verdict::Delivered => self.m.attempt_ok.increment(1),
            Verdict::Retry { .. } => self.m.attempt_retry.increment(1),
            Verdict::Permanent => self.m.attempt_permanent.increment(1),
        }
        self.m.request.record(duration_ms / 1000.0);
        self.with_minute(now_ms, |m| m.request[bucket_of(duration_ms)] += 1);
    }

    pub fn error(&self, e: RecentError) {
        let Ok(mut g) = self.inner.lock() else { return };
        if g.errors.len() == MAX_ERRORS {
            g.errors.pop_front();
        }
        g.errors.push_back(e);
    }

    /// Sets the gauges from one partition's worker (the backlog gauge is the sum over the
    /// partitions this node works on).
    pub fn set_gauges(
        &self,
        partition: u32,
        backlog: u64,
        retry_queue: u64,
        dead_letters: u64,
        paused: bool,
    ) {
        if let Ok(mut b) = self.backlogs.lock() {
            b.insert(partition, backlog);
            self.m.backlog.set(b.values().sum::<u64>() as f64);
        }
        self.m.retry_queue.set(retry_queue as f64);
        self.m.dead_letters.set(dead_letters as f64);
        self.m.paused.set(if paused { 1.0 } else { 0.0 });
        self.paused
            .store(paused, std::sync::atomic::Ordering::Relaxed);
    }

    /// Stops counting a partition this node no longer works on.
    pub fn forget_partition(&self, partition: u32) {
        if let Ok(mut b) = self.backlogs.lock() {
            b.remove(&partition);
            self.m.backlog.set(b.values().sum::<u64>() as f64);
        }
    }

    /// Whether the circuit breaker holds new events back (as of the last gauge update).
    pub fn is_paused(&self) -> bool {
        self.paused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts and percentiles over the last 5 minutes, hour and day, and the latest errors.
    pub fn report(&self, now_ms: i64) -> Value {
        let Ok(g) = self.inner.lock() else {
            return Value::Null;
        };
        let now_minute = now_ms.div_euclid(60_000);
        let mut windows = serde_json::Map::new();
        for (label, minutes) in [("5m", 5), ("1h", 60), ("24h", MINUTES)] {
            let mut counts = [0u64; 5];
            let mut e2e = [0u64; BUCKETS];
            let mut req = [0u64; BUCKETS];
            for m in g.minutes.iter().filter(|m| m.minute > now_minute - minutes) {
                for (total, n) in counts.iter_mut().zip(m.counts) {
                    *total += n;
                }
                for (total, n) in e2e.iter_mut().zip(m.end_to_end) {
                    *total += n as u64;
                }
                for (total, n) in req.iter_mut().zip(m.request) {
                    *total += n as u64;
                }
            }
            let mut c = serde_json::Map::new();
            for o in Outcome::ALL {
                c.insert(o.as_str().into(), json!(counts[o.index()]));
            }
            windows.insert(
                label.into(),
                json!({
                    "counts": c,
                    "latency_ms": percentiles(&e2e),
                    "request_ms": percentiles(&req),
                }),
            );
        }
        let errors: Vec<&RecentError> = g.errors.iter().rev().collect();
        json!({ "windows": windows, "latest_errors": errors })
    }
}

/// p50/p95/p99 as bucket upper bounds (within 19 % of the true value), or nulls.
fn percentiles(h: &[u64; BUCKETS]) -> Value {
    let total: u64 = h.iter().sum();
    if total == 0 {
        return json!({"p50": null, "p95": null, "p99": null, "count": 0});
    }
    let at = |q: f64| {
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in h.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return (bucket_upper(i) * 100.0).round() / 100.0;
            }
        }
        bucket_upper(BUCKETS - 1)
    };
    json!({"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "count": total})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_values() {
        for ms in [0.2, 1.0, 1.5, 3.0, 17.0, 250.0, 5000.0, 60_000.0] {
            let b = bucket_of(ms);
            assert!(ms < bucket_upper(b) || b == BUCKETS - 1, "{ms} in {b}");
            if b > 0 {
                assert!(ms >= bucket_upper(b - 1), "{ms} in {b}");
            }
        }
    }

    #[test]
    fn windows_count_and_expire() {
        let s = Stats::new("t");
        let t0 = 1_000_000_000_000;
        s.outcome(t0, Outcome::Delivered, Some(10));
        s.outcome(t0, Outcome::Failed, None);
        s.outcome(t0 + 10 * 60_000, Outcome::Delivered, Some(100));
        let r = s.report(t0 + 10 * 60_000);
        assert_eq!(r["windows"]["5m"]["counts"]["delivered"], 1);
        assert_eq!(r["windows"]["1h"]["counts"]["delivered"], 2);
        assert_eq!(r["windows"]["1h"]["counts"]["failed"], 1);
        let p50 = r["windows"]["5m"]["latency_ms"]["p50"].as_f64().unwrap();
        assert!((100.0..=120.0).contains(&p50), "{p50}");
        let later = s.report(t0 + 25 * 3600 * 1000);
        assert_eq!(later["windows"]["24h"]["counts"]["delivered"], 0);
    }
}
