//! The profile consumer: one more consumer of the log. It files each event's
//! identifiers, traits, event reference and links into the state store (see
//! `sluice_store::profiles`), one batch per store transaction, and commits its cursor only
//! after the batch is in the store. Filing is idempotent, so a crash re-files the batches
//! after the committed cursor and changes nothing.

use std::sync::Arc;
use std::time::Duration;

use sluice_identity::{extract, Rules};
use sluice_log::{EventLog, StoredEvent};
use sluice_store::{ProfileEvent, ProfileStepStats, Store, StoreError};
use tokio::sync::watch;

use crate::runner::PartitionWorker;

/// The consumer's cursor name in the log.
pub const CONSUMER: &str = "profiles";
/// Events per batch: one store transaction each (bigger batches share index pages and
/// fsyncs). Two batches are in memory at a time (one filed, the next prepared); past this
/// size a batch files no faster and only holds more memory (`sluice-bench profiles`).
pub const READ_MAX: usize = 5_000;

/// What the profile consumer works with.
pub struct ProfileConsumer {
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn Store>,
    pub rules: Arc<Rules>,
    /// Whether it runs (without it, waiting for it returns at once).
    pub enabled: bool,
    /// Ticks on every append of this node (ingest's `log_end`): wakes the consumer.
    pub appended: watch::Receiver<u64>,
    /// Ticks on every commit of this node (waiters then read the cursors).
    pub done: watch::Sender<u64>,
    /// Turns true when the node shuts down.
    pub stop: watch::Receiver<bool>,
}

/// One log event as the profile store sees it; `None` when it names nobody.
pub fn profile_event(e: &StoredEvent, rules: &Rules) -> Option<ProfileEvent> {
    let v = match sluice_identity::extract::identity_fields(&e.payload) {
        Ok(v) => v,
        Err(err) => {
            // The log only holds what ingest validated; say which event if that breaks.
            tracing::warn!(offset = e.offset, error = %err, "profile consumer: event is not JSON; skipped");
            metrics::counter!("sluice_profile_events_skipped_total").increment(1);
            return None;
        }
    };
    let x = extract(&v, rules);
    if x.too_many_traits {
        metrics::counter!("sluice_profile_traits_refused_total").increment(1);
    }
    if x.users.is_empty() && x.accounts.is_empty() {
        return None;
    }
    let ts = v
        .get("timestamp")
        .and_then(|t| t.as_str())
        .and_then(sluice_spec::time::parse_timestamp)
        .map(|t| t.timestamp_millis())
        .unwrap_or(e.received_at_ms);
    Some(ProfileEvent {
        log_offset: e.offset,
        ts,
        message_id: e.message_id.clone(),
        source: e.source.clone(),
        users: x.users.iter().map(|i| i.key()).collect(),
        accounts: x.accounts.iter().map(|i| i.key()).collect(),
        user_traits: x.user_traits,
        account_traits: x.account_traits,
    })
}

type FilingTask = tokio::task::JoinHandle<Result<ProfileStepStats, StoreError>>;

/// Files batches in order, one at a time in the store, while the caller reads and parses
/// the next batch: on two cores, parsing and filing overlap.
pub struct Pipeline {
    store: Arc<dyn Store>,
    rules: Arc<Rules>,
    /// The batch being filed: its task, how many log events it covers, the offset after it.
    inflight: Option<(FilingTask, u64, u64)>,
}

impl Pipeline {
    pub fn new(store: Arc<dyn Store>, rules: Arc<Rules>) -> Pipeline {
        Pipeline {
            store,
            rules,
            inflight: None,
        }
    }

    /// Reads and parses up to `max` events from `from`: the batch, how many events were
    /// read and the offset after the last (None when nothing is there).
    pub async fn prepare(
        log: &dyn sluice_log::EventLog,
        rules: &Rules,
        from: u64,
        max: usize,
    ) -> Result<Option<(Vec<ProfileEvent>, u64, u64)>, sluice_log::LogError> {
        let events = log.read(from, max).await?;
        let Some(last) = events.last().map(|e| e.offset) else {
            return Ok(None);
        };
        let mut batch = Vec::with_capacity(events.len());
        batch.extend(events.iter().filter_map(|e| profile_event(e, rules)));
        Ok(Some((batch, events.len() as u64, last + 1)))
    }

    /// Starts filing a batch (after the previous one finished: see [`Pipeline::finish`]).
    pub fn submit(&mut self, batch: Vec<ProfileEvent>, events: u64, next: u64) {
        let (store, rules) = (self.store.clone(), self.rules.clone());
        let task = tokio::spawn(async move { store.apply_profiles(batch, rules).await });
        self.inflight = Some((task, events, next));
    }

    /// Waits for the batch being filed: `Ok(Some((events, next offset)))` once it is in
    /// the store, `Ok(None)` when none was.
    pub async fn finish(&mut self) -> Result<Option<(u64, u64)>, StoreError> {
        let Some((task, events, next)) = self.inflight.take() else {
            return Ok(None);
        };
        let stats = task.await.map_err(StoreError::from)??;
        if stats.oversized_components > 0 {
            tracing::warn!(
                components = stats.oversized_components,
                "identity components larger than the re-resolution bound were resolved in part"
            );
        }
        Ok(Some((events, next)))
    }
}

/// Runs the profile consumer until the server shuts down: one worker per partition this
/// node is assigned ([`crate::runner`]).
pub async fn run(consumer: Arc<ProfileConsumer>) {
    let (log, appended, stop) = (
        consumer.log.clone(),
        consumer.appended.clone(),
        consumer.stop.clone(),
    );
    crate::runner::run(log, CONSUMER.into(), appended, stop, |worker| {
        run_partition(consumer.clone(), worker)
    })
    .await;
}

/// The profile consumer of one partition: read from the cursor, file each batch in one
/// store transaction, then commit the cursor past it (a crash re-files the batches after
/// the committed cursor, which changes nothing: filing is idempotent). Returns once the
/// worker is stopped, after committing what it filed.
async fn run_partition(consumer: Arc<ProfileConsumer>, mut worker: PartitionWorker) {
    let partition = worker.partition;
    let rules = consumer.rules.clone();
    let Some(mut committed) = worker.committed_cursor().await else {
        return;
    };
    let events_total = metrics::counter!("sluice_profile_events_total");
    let mut pipeline = Pipeline::new(consumer.store.clone(), rules.clone());
    let commit = |next: u64| {
        let consumer = consumer.clone();
        async move {
            let r = consumer.log.commit(CONSUMER, next).await;
            consumer.done.send_modify(|n| *n = n.wrapping_add(1));
            r
        }
    };
    // The next offset to read: ahead of `committed` by the batch being filed.
    let mut cursor = committed;
    loop {
        if worker.stopped() {
            // Let the batch being filed finish, so its cursor can be committed.
            if let Ok(Some((_, next))) = pipeline.finish().await {
                let _ = commit(next).await;
            }
            return;
        }
        worker.mark_seen();
        let prepared = Pipeline::prepare(consumer.log.as_ref(), &rules, cursor, READ_MAX).await;
        // The previous batch must be in the store before its cursor is committed.
        let finished = pipeline.finish().await;
        match finished {
            Ok(Some((events, next))) => {
                if let Err(e) = commit(next).await {
                    tracing::warn!(error = %e, partition, "profile consumer cannot commit its cursor");
                }
                committed = next;
                events_total.increment(events);
            }
            Ok(None) => {}
            Err(e) => {
                static QUIET: sluice_log::throttle::Throttle = sluice_log::throttle::Throttle::new(
                    sluice_log::throttle::STORAGE_WARNING_EVERY,
                );
                if let Some(skipped) = QUIET.allow() {
                    tracing::warn!(error = %e, partition, skipped, "profile consumer cannot write profiles; retrying");
                }
                cursor = committed;
                worker.pause().await;
                continue;
            }
        }
        match prepared {
            Ok(Some((batch, events, next))) => {
                pipeline.submit(batch, events, next);
                cursor = next;
            }
            Ok(None) => {
                if let Ok(end) = consumer.log.end_offset(partition).await {
                    // Nothing after the cursor but, perhaps, erased events: skip those.
                    if end > cursor {
                        if Pipeline::prepare(consumer.log.as_ref(), &rules, cursor, 1)
                            .await
                            .is_ok_and(|p| p.is_none())
                        {
                            cursor = end;
                            committed = end;
                            let _ = commit(end).await;
                        }
                        continue;
                    }
                }
                worker.idle().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, partition, "profile consumer cannot read the log; retrying");
                worker.pause().await;
            }
        }
    }
}

/// How far the profile consumer is behind the log, per partition: the events after its
/// committed cursor. Read from the log and the cursor at every `/metrics` scrape
/// ([`record_lag`]), not by the consumer: the consumer runs in the idle class, and a
/// consumer that other processes starve of CPU would otherwise leave a stale figure.
pub async fn lag(log: &dyn sluice_log::EventLog) -> Result<Vec<(u32, u64)>, sluice_log::LogError> {
    let mut out = Vec::new();
    for partition in 0..log.partitions() {
        let end = log.end_offset(partition).await?;
        // Without a cursor, every event of the partition is waiting (offsets start at 1).
        let from = log
            .cursor(CONSUMER, partition)
            .await?
            .unwrap_or(sluice_log::position(partition, 1));
        out.push((partition, end.saturating_sub(from)));
    }
    Ok(out)
}

/// Sets `sluice_profile_lag_events{partition}` from [`lag`]; within `limit`, or leaves
/// the figures as they were (a log that does not answer must not hold up a scrape).
pub async fn record_lag(consumer: &ProfileConsumer, limit: Duration) {
    if !consumer.enabled {
        return;
    }
    match tokio::time::timeout(limit, lag(consumer.log.as_ref())).await {
        Ok(Ok(lags)) => {
            for (partition, events) in lags {
                metrics::gauge!("sluice_profile_lag_events", "partition" => partition.to_string())
                    .set(events as f64);
            }
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the profile consumer's lag"),
        Err(_) => tracing::warn!("reading the profile consumer's lag took over {limit:?}; skipped"),
    }
}

/// Waits until the profile consumer has filed every event before `ends` (one offset per
/// partition, whichever node works on it) or `limit` passes. Returns whether it did.
pub async fn caught_up(consumer: &ProfileConsumer, ends: &[u64], limit: Duration) -> bool {
    if !consumer.enabled {
        return true;
    }
    let mut done = consumer.done.subscribe();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        done.borrow_and_update();
        let mut all = true;
        for (p, end) in ends.iter().enumerate() {
            match consumer.log.cursor(CONSUMER, p as u32).await {
                Ok(Some(c)) if c >= *end => {}
                _ => {
                    all = false;
                    break;
                }
            }
        }
        if all {
            return true;
        }
        // Commits on this node wake us; other nodes' are seen by polling.
        tokio::select! {
            _ = done.changed() => {},
            _ = tokio::time::sleep(consumer.log.idle_poll()) => {},
            _ = tokio::time::sleep_until(deadline) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lag_counts_the_events_after_the_consumers_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let log = sluice_log::sqlite::SqliteLog::open(
            dir.path().join("events.sqlite"),
            sluice_log::LogOptions::default(),
        )
        .unwrap();
        assert_eq!(lag(&log).await.unwrap(), vec![(0, 0)], "an empty log");
        let events = (0..10)
            .map(|i| sluice_log::NewEvent {
                source: "web".into(),
                message_id: format!("m{i}"),
                user_key: "u1".into(),
                received_at_ms: 1_700_000_000_000,
                payload: br#"{"type":"track"}"#.to_vec(),
            })
            .collect();
        let appended = log.append(events).await.unwrap();
        assert_eq!(appended.len(), 10);
        // No cursor yet: all ten wait.
        assert_eq!(lag(&log).await.unwrap(), vec![(0, 10)]);
        // The consumer's cursor after the first `n` events, then the lag.
        let filed = |n: usize| {
            let log = &log;
            async move {
                let read = log.read(0, n).await.unwrap();
                let next = read.last().unwrap().offset + 1;
                log.commit(CONSUMER, next).await.unwrap();
                lag(log).await.unwrap()
            }
        };
        assert_eq!(filed(4).await, vec![(0, 6)]);
        // Another consumer's cursor is not this one's.
        log.commit("someone-else", 11).await.unwrap();
        assert_eq!(lag(&log).await.unwrap(), vec![(0, 6)]);
        assert_eq!(filed(10).await, vec![(0, 0)]);
        log.close().await;
    }
}
