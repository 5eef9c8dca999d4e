//! Which partitions of the log one node works on for one consumer.

use std::any::Any;
use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

/// The partitions a node works on for one consumer, as they change.
///
/// On the embedded log that is every partition, for good. On Kafka it is this node's
/// share of the consumer's group: when another node joins or leaves, the group takes some
/// partitions away (the set shrinks; the consumer finishes what it has in hand there,
/// commits its cursor and calls [`Assignment::release`]) and then hands partitions out
/// again (the set grows; the consumer starts there at its committed cursor). Dropping the
/// assignment leaves the group.
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

    /// An assignment driven by a group membership: `partitions` follows the group,
    /// `release` tells the membership a partition taken away is let go, `membership` is
    /// kept alive as long as the assignment.
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
}

impl std::fmt::Debug for Assignment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assignment")
            .field("partitions", &*self.partitions.borrow())
            .finish()
    }
}
