//! What every log consumer's partition worker shares: the assignment (one worker per
//! partition this node holds, started and halted as it changes, released once the
//! worker has committed), the committed cursor to start from, waiting for new events
//! (a wake-up from this node's appends, else the log's idle poll for other nodes'), and
//! stopping (the node shuts down, or the partition is taken away).
//!
//! A consumer is a function of one [`PartitionWorker`] given to [`run`]; it reads from
//! its cursor, does its work, commits, and returns once [`PartitionWorker::stopped`] after
//! its last commit. The profile consumer (`crate::profiles`) is written this way.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sluice_log::EventLog;
use tokio::sync::watch;

/// How long a worker waits before trying a failed read or write again.
pub const RETRY: Duration = Duration::from_secs(1);

/// One partition's worker of a consumer.
pub struct PartitionWorker {
    pub log: Arc<dyn EventLog>,
    /// The consumer's cursor name in the log.
    pub consumer: Arc<str>,
    pub partition: u32,
    appended: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
    halt: watch::Receiver<bool>,
}

impl PartitionWorker {
    /// Whether the worker must finish: the node is stopping or the partition was taken.
    pub fn stopped(&self) -> bool {
        *self.stop.borrow() || *self.halt.borrow()
    }

    /// The committed cursor (the partition's start when there is none), read again every
    /// [`RETRY`] while the log cannot answer; `None` when the worker stopped first.
    pub async fn committed_cursor(&mut self) -> Option<u64> {
        loop {
            match self.log.cursor(&self.consumer, self.partition).await {
                Ok(c) => return Some(c.unwrap_or(sluice_log::position(self.partition, 0))),
                Err(e) => {
                    tracing::warn!(error = %e, consumer = %self.consumer, partition = self.partition, "cannot read the consumer's cursor; retrying");
                    if self.pause().await {
                        return None;
                    }
                }
            }
        }
    }

    /// Marks this node's appends so far as seen: call it before reading, so that an
    /// append after the read wakes [`PartitionWorker::idle`].
    pub fn mark_seen(&mut self) {
        self.appended.borrow_and_update();
    }

    /// Waits for an append on this node, the log's idle poll (other nodes' appends), or
    /// the stop.
    pub async fn idle(&mut self) {
        tokio::select! {
            _ = self.appended.changed() => {},
            _ = tokio::time::sleep(self.log.idle_poll()) => {},
            _ = self.stop.changed() => {},
            _ = self.halt.changed() => {},
        }
    }

    /// Waits [`RETRY`] after a failure; `true` when the worker was stopped meanwhile.
    pub async fn pause(&mut self) -> bool {
        self.pause_for(RETRY).await
    }

    /// Waits `wait` (a backoff); `true` when the worker was stopped meanwhile.
    pub async fn pause_for(&mut self, wait: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(wait) => false,
            _ = self.stop.changed() => true,
            _ = self.halt.changed() => true,
        }
    }
}

/// Runs `work` on every partition this node is assigned for `consumer` until `stop` turns
/// true; `appended` ticks on this node's appends.
pub async fn run<W, F>(
    log: Arc<dyn EventLog>,
    consumer: Arc<str>,
    appended: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
    work: W,
) where
    W: Fn(PartitionWorker) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let assignment = log.assignment(&consumer);
    let start = |partition: u32, halt: watch::Receiver<bool>| {
        work(PartitionWorker {
            log: log.clone(),
            consumer: consumer.clone(),
            partition,
            appended: appended.clone(),
            stop: stop.clone(),
            halt,
        })
    };
    assignment.run_workers(stop.clone(), start, |_| {}).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_log::{LogOptions, SqliteLog};

    /// A worker is started per partition held, starts at the committed cursor (the
    /// partition's start without one), and finishes when the node stops: `stopped`
    /// turns true and a `pause` in progress returns early.
    #[tokio::test]
    async fn workers_start_at_the_committed_cursor_and_finish_on_stop() {
        let dir = tempfile::tempdir().unwrap();
        let log: Arc<dyn EventLog> = Arc::new(
            SqliteLog::open(dir.path().join("events.sqlite"), LogOptions::default()).unwrap(),
        );
        let (_appended_tx, appended) = watch::channel(0u64);
        let (stop_tx, stop) = watch::channel(false);
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        for (consumer, committed) in [("fresh", None), ("resumed", Some(42))] {
            if let Some(c) = committed {
                log.commit(consumer, c).await.unwrap();
            }
            let seen_tx = seen_tx.clone();
            tokio::spawn(run(
                log.clone(),
                consumer.into(),
                appended.clone(),
                stop.clone(),
                move |mut worker| {
                    let seen_tx = seen_tx.clone();
                    async move {
                        let cursor = worker.committed_cursor().await;
                        let name = worker.consumer.to_string();
                        seen_tx.send((name.clone(), "cursor", cursor)).unwrap();
                        // A pause in progress ends when the node stops.
                        while !worker.stopped() {
                            worker.pause().await;
                        }
                        seen_tx.send((name, "stopped", None)).unwrap();
                    }
                },
            ));
        }
        let mut cursors = vec![seen.recv().await.unwrap(), seen.recv().await.unwrap()];
        cursors.sort();
        assert_eq!(
            cursors,
            vec![
                (
                    "fresh".to_string(),
                    "cursor",
                    Some(sluice_log::position(0, 0))
                ),
                ("resumed".to_string(), "cursor", Some(42)),
            ]
        );
        stop_tx.send(true).unwrap();
        for _ in 0..2 {
            assert_eq!(seen.recv().await.unwrap().1, "stopped");
        }
    }
}
