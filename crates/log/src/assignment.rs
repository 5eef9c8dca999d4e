//! Which partitions of the log one node works on for one consumer.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The partitions a node works on for one consumer, as they change.
///
/// On the embedded log that is every partition, for good. On Kafka it is this node's
/// share of the consumer's partitions among the nodes working for it: when another node
/// joins or leaves, some partitions are taken away (the set shrinks; the consumer finishes
/// what it has in hand there, commits its cursor and calls [`Assignment::release`]) and
/// others handed out (the set grows; the consumer starts there at its committed cursor).
/// Dropping the assignment leaves the consumer's members.
pub struct Assignment {
    partitions: watch::Receiver<BTreeSet<u32>>,
    release: Option<mpsc::UnboundedSender<u32>>,
    _membership: Arc<dyn Any + Send + Sync>,
}

impl Assignment {
    /// Every partition of a log with `n`, for good.
    pub fn all(n: u32) -> Assignment {
        let (tx, rx) = watch::channel((0..n).collect());
        Assignment {
            partitions: rx,
            release: None,
            _membership: Arc::new(tx),
        }
    }

    /// An assignment driven by a membership: `partitions` follows it, `release` tells it
    /// a partition taken away is let go, `membership` is kept alive as long as the
    /// assignment.
    pub fn new(
        partitions: watch::Receiver<BTreeSet<u32>>,
        release: mpsc::UnboundedSender<u32>,
        membership: Arc<dyn Any + Send + Sync>,
    ) -> Assignment {
        Assignment {
            partitions,
            release: Some(release),
            _membership: membership,
        }
    }

    /// The partitions this node holds now.
    pub fn current(&mut self) -> BTreeSet<u32> {
        self.partitions.borrow_and_update().clone()
    }

    /// Waits until the set changes (forever when it never will).
    pub async fn changed(&mut self) {
        if self.partitions.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Says that this node no longer works on `partition` (its cursor there is committed).
    pub fn release(&self, partition: u32) {
        if let Some(tx) = &self.release {
            let _ = tx.send(partition);
        }
    }

    /// Runs one worker per partition held until `stop` turns true: `start(p, halted)`
    /// makes partition `p`'s worker, which must finish once `halted` turns true (after
    /// committing its cursor). Partitions taken away are halted together, awaited, handed
    /// to `gone` and released; at the end every worker is halted and awaited.
    pub async fn run_workers<W>(
        mut self,
        mut stop: watch::Receiver<bool>,
        mut start: impl FnMut(u32, watch::Receiver<bool>) -> W,
        mut gone: impl FnMut(u32),
    ) where
        W: std::future::Future + Send + 'static,
        W::Output: Send + 'static,
    {
        let mut workers: BTreeMap<u32, (watch::Sender<bool>, JoinHandle<W::Output>)> =
            BTreeMap::new();
        loop {
            let want = self.current();
            let away: Vec<u32> = workers
                .keys()
                .filter(|p| !want.contains(p))
                .copied()
                .collect();
            // Halt them all at once, then wait: the handover waits for the slowest only.
            let halted: Vec<_> = away
                .iter()
                .filter_map(|p| workers.remove(p))
                .map(|(halt, task)| {
                    let _ = halt.send(true);
                    task
                })
                .collect();
            for task in halted {
                let _ = task.await;
            }
            for p in away {
                gone(p);
                self.release(p);
            }
            for p in want {
                workers.entry(p).or_insert_with(|| {
                    let (halt, halted) = watch::channel(false);
                    (halt, tokio::spawn(start(p, halted)))
                });
            }
            if *stop.borrow() {
                break;
            }
            tokio::select! {
                _ = self.changed() => {},
                r = stop.changed() => if r.is_err() { break },
            }
        }
        for (halt, _) in workers.values() {
            let _ = halt.send(true);
        }
        for (_, task) in workers.into_values() {
            let _ = task.await;
        }
    }
}

impl std::fmt::Debug for Assignment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assignment")
            .field("partitions", &*self.partitions.borrow())
            .finish()
    }
}
