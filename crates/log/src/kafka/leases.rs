//! Which node works on which partition, for each consumer: leases in PostgreSQL.
//!
//! Every node working for a consumer is a *member* (a row renewed every heartbeat). The
//! live members, sorted, split the partitions between them ([`share`]: contiguous runs,
//! rotated per consumer so that the larger shares of different consumers land on
//! different nodes). A node works on a partition only while it holds the partition's
//! *lease*, a row naming the owner and when the claim runs out; a lease is taken only when
//! it is free, already ours, or ran out. A node whose share shrank halts the workers
//! there, and frees a lease once its worker committed its cursor and let go; the node whose
//! share grew takes it at its next heartbeat. A node that dies stops renewing: its member
//! row and its leases run out after the lease time and the others take its partitions.
//! A node that cannot renew halts its own workers before its leases can run out
//! (self-fencing), so two nodes never work on one partition at once except for work in
//! flight when a lease ran out (delivered again: at least once).
//!
//! Why not Kafka's group protocol: the broker our tests and small deployments run (tansu
//! 0.6) never takes a dead member's partitions away from it — its coordinator drops the
//! member but keeps the generation, the leader and the stored assignment — and the database
//! the Kafka deployment needs anyway gives a lease that fences commits. The cursors stay
//! Kafka consumer groups' committed offsets, so Kafka's tools still show each consumer's lag.
//! All times are PostgreSQL's `now()`, so the nodes' clocks need not agree.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::{connect, pg_error};
use crate::{Assignment, LogError};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sluice_log_members (
    topic TEXT NOT NULL,
    consumer TEXT NOT NULL,
    member TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (topic, consumer, member)
);
CREATE TABLE IF NOT EXISTS sluice_log_leases (
    topic TEXT NOT NULL,
    consumer TEXT NOT NULL,
    partition INT NOT NULL,
    owner TEXT,
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (topic, consumer, partition)
);
";

/// The partitions of `partitions` that `me` works on among `members` (sorted, distinct)
/// for `consumer`: every partition goes to exactly one member, each member gets
/// ⌊P/n⌋ or ⌈P/n⌉ (a contiguous run), and which member gets which run depends on the
/// consumer, so the larger runs of different consumers fall on different members.
pub fn share(members: &[String], me: &str, partitions: u32, consumer: &str) -> BTreeSet<u32> {
    let Some(index) = members.iter().position(|m| m == me) else {
        return BTreeSet::new();
    };
    let (n, p) = (members.len() as u64, u64::from(partitions));
    let rotation = xxhash_rust::xxh3::xxh3_64(consumer.as_bytes()) % n;
    (0..partitions)
        .filter(|&q| (u64::from(q) * n / p + rotation) % n == index as u64)
        .collect()
}

/// The node's leases, shared by the consumers' lease tasks.
pub(super) struct Leases {
    url: String,
    topic: String,
    partitions: u32,
    /// Names this node in member ids (host and process), for operators reading the tables.
    node: String,
    ttl: Duration,
    db: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    /// What each consumer's task holds now, for the commit check.
    held: Mutex<HashMap<String, Weak<Held>>>,
}

/// The partitions whose leases a node holds for one consumer, and until when (by this
/// node's clock, conservatively: the renewal's start plus the lease time).
#[derive(Default)]
pub(super) struct Held {
    state: Mutex<(BTreeSet<u32>, Option<Instant>)>,
}

impl Held {
    /// Whether this node may move the consumer's cursor on `partition` now.
    pub fn holds(&self, partition: u32) -> bool {
        self.state.lock().is_ok_and(|s| {
            s.0.contains(&partition) && s.1.is_some_and(|until| Instant::now() < until)
        })
    }

    fn set(&self, partitions: BTreeSet<u32>, until: Option<Instant>) {
        if let Ok(mut s) = self.state.lock() {
            *s = (partitions, until);
        }
    }
}

impl Leases {
    pub fn new(url: &str, topic: &str, partitions: u32, ttl: Duration) -> Leases {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        Leases {
            url: url.to_string(),
            topic: topic.to_string(),
            partitions,
            node: format!("{host}:{}", std::process::id()),
            ttl,
            db: tokio::sync::Mutex::new(None),
            held: Mutex::default(),
        }
    }

    /// How often a member renews: often enough that a lease survives a few lost renewals.
    fn heartbeat(&self) -> Duration {
        (self.ttl / 5).min(Duration::from_secs(1))
    }

    /// The leases held for `consumer` by this node, when it works for that consumer.
    pub fn held(&self, consumer: &str) -> Option<Arc<Held>> {
        self.held.lock().ok()?.get(consumer)?.upgrade()
    }

    /// Joins `consumer`'s members: the assignment follows this node's leases until it is
    /// dropped (then the node leaves and frees its leases).
    pub fn join(self: &Arc<Leases>, consumer: &str) -> Assignment {
        let (assigned_tx, assigned_rx) = watch::channel(BTreeSet::new());
        let (release_tx, release_rx) = mpsc::unbounded_channel::<u32>();
        let held = Arc::new(Held::default());
        if let Ok(mut map) = self.held.lock() {
            map.insert(consumer.to_string(), Arc::downgrade(&held));
        }
        let (gone_tx, gone_rx) = watch::channel(());
        let task = Lessee {
            leases: self.clone(),
            consumer: consumer.to_string(),
            // One id per membership: a consumer restarted on this node must not inherit
            // (or free) the leases of its predecessor that is still leaving.
            member: format!("{}:{}", self.node, uuid::Uuid::new_v4().simple()),
            held,
            assigned: assigned_tx,
            working: BTreeSet::new(),
            letting_go: BTreeSet::new(),
            freed: BTreeSet::new(),
        };
        tokio::spawn(task.run(release_rx, gone_rx));
        // The assignment keeps `gone_tx`: dropping it ends the task, which then leaves.
        Assignment::new(assigned_rx, release_tx, Arc::new(gone_tx))
    }
}

/// One consumer's lease task on this node.
struct Lessee {
    leases: Arc<Leases>,
    consumer: String,
    member: String,
    held: Arc<Held>,
    assigned: watch::Sender<BTreeSet<u32>>,
    /// Partitions given to the workers.
    working: BTreeSet<u32>,
    /// Partitions taken from the workers whose release has not come yet (still leased).
    letting_go: BTreeSet<u32>,
    /// Partitions released by the workers, whose leases are to be freed.
    freed: BTreeSet<u32>,
}

/// What one renewal found: this node's share and the partitions leased to it.
struct Renewal {
    share: BTreeSet<u32>,
    leased: BTreeSet<u32>,
}

impl Lessee {
    async fn run(
        mut self,
        mut released: mpsc::UnboundedReceiver<u32>,
        mut gone: watch::Receiver<()>,
    ) {
        let beat = self.leases.heartbeat();
        let mut until: Option<Instant> = None;
        let mut failing = false;
        loop {
            let started = Instant::now();
            match self.renew(2 * beat).await {
                Ok(r) => {
                    if failing {
                        tracing::info!(consumer = %self.consumer, "partition leases renewed again");
                    }
                    failing = false;
                    until = Some(started + self.leases.ttl);
                    self.apply(r, until);
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(consumer = %self.consumer, error = %e, "cannot renew the partition leases");
                    }
                    failing = true;
                    // Stop working before the leases can run out (another node may take
                    // them then); the workers commit and let go meanwhile.
                    let expiring = until.is_none_or(|u| Instant::now() + 3 * beat >= u);
                    if expiring && !self.working.is_empty() {
                        tracing::warn!(consumer = %self.consumer, partitions = ?self.working, "halting: the partition leases cannot be renewed");
                        self.letting_go.extend(std::mem::take(&mut self.working));
                        self.publish();
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(beat) => {}
                p = released.recv() => {
                    if let Some(p) = p {
                        self.release(p);
                        while let Ok(p) = released.try_recv() {
                            self.release(p);
                        }
                    }
                }
                _ = gone.changed() => {
                    self.leave(2 * beat).await;
                    return;
                }
            }
        }
    }

    fn release(&mut self, p: u32) {
        if self.letting_go.remove(&p) {
            self.freed.insert(p);
        }
    }

    fn publish(&self) {
        let working = self.working.clone();
        self.assigned.send_if_modified(|a| {
            if *a == working {
                false
            } else {
                *a = working;
                true
            }
        });
    }

    /// Takes in what a renewal found: works where its share is leased to it, lets go of
    /// the rest (a partition whose lease was lost is let go at once).
    fn apply(&mut self, r: Renewal, until: Option<Instant>) {
        let working: BTreeSet<u32> = r.share.intersection(&r.leased).copied().collect();
        let away: Vec<u32> = self.working.difference(&working).copied().collect();
        self.letting_go.extend(away);
        self.letting_go.retain(|p| !working.contains(p));
        if working != self.working {
            tracing::info!(consumer = %self.consumer, partitions = ?working, "partitions leased");
        }
        self.working = working;
        self.held.set(r.leased, until);
        self.publish();
    }

    /// One heartbeat, in one transaction: renew the membership, read the live members,
    /// free the leases let go, take or renew the leases of the share and of the
    /// partitions still being worked on.
    async fn renew(&mut self, limit: Duration) -> Result<Renewal, LogError> {
        let mut db = self.leases.db.lock().await;
        if db.as_ref().is_none_or(|c| c.is_closed()) {
            *db = Some(connect(&self.leases.url).await?);
        }
        let Some(client) = db.as_mut() else {
            return Err(LogError::Storage(
                "log state database: not connected".into(),
            ));
        };
        let (topic, consumer, member) = (&self.leases.topic, &self.consumer, &self.member);
        let ttl = self.leases.ttl.as_secs_f64();
        let (partitions, working, letting_go, freed) = (
            self.leases.partitions,
            &self.working,
            &self.letting_go,
            &self.freed,
        );
        let work = async move {
            let tx = client.transaction().await?;
            tx.execute(
                "INSERT INTO sluice_log_members (topic, consumer, member, expires_at)
                 VALUES ($1, $2, $3, now() + make_interval(secs => $4))
                 ON CONFLICT (topic, consumer, member) DO UPDATE SET expires_at = EXCLUDED.expires_at",
                &[topic, consumer, member, &ttl],
            )
            .await?;
            tx.execute(
                "DELETE FROM sluice_log_members WHERE topic = $1 AND consumer = $2 AND expires_at < now()",
                &[topic, consumer],
            )
            .await?;
            let members: Vec<String> = tx
                .query(
                    "SELECT member FROM sluice_log_members WHERE topic = $1 AND consumer = $2 ORDER BY member",
                    &[topic, consumer],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let share = share(&members, member, partitions, consumer);
            let free: Vec<i32> = freed
                .iter()
                .filter(|p| !share.contains(p))
                .map(|p| *p as i32)
                .collect();
            if !free.is_empty() {
                tx.execute(
                    "UPDATE sluice_log_leases SET owner = NULL
                     WHERE topic = $1 AND consumer = $2 AND owner = $3 AND partition = ANY($4)",
                    &[topic, consumer, member, &free],
                )
                .await?;
            }
            let keep: Vec<i32> = share
                .iter()
                .chain(working)
                .chain(letting_go)
                .map(|p| *p as i32)
                .collect::<BTreeSet<i32>>()
                .into_iter()
                .collect();
            let leased: BTreeSet<u32> = tx
                .query(
                    "INSERT INTO sluice_log_leases (topic, consumer, partition, owner, expires_at)
                     SELECT $1, $2, p, $3, now() + make_interval(secs => $4) FROM unnest($5::int[]) AS p
                     ON CONFLICT (topic, consumer, partition) DO UPDATE
                       SET owner = EXCLUDED.owner, expires_at = EXCLUDED.expires_at
                       WHERE sluice_log_leases.owner IS NULL
                          OR sluice_log_leases.owner = EXCLUDED.owner
                          OR sluice_log_leases.expires_at < now()
                     RETURNING partition",
                    &[topic, consumer, member, &ttl, &keep],
                )
                .await?
                .iter()
                .map(|r| r.get::<_, i32>(0) as u32)
                .collect();
            tx.commit().await?;
            Ok::<_, tokio_postgres::Error>(Renewal { share, leased })
        };
        match tokio::time::timeout(limit, work).await {
            Ok(Ok(r)) => {
                self.freed.clear();
                Ok(r)
            }
            Ok(Err(e)) => Err(pg_error(e)),
            Err(_) => {
                // The connection's state is unknown: start over on a new one.
                *db = None;
                Err(LogError::Storage(format!(
                    "log state database: renewing the partition leases took over {limit:?}"
                )))
            }
        }
    }

    /// Leaves the consumer's members and frees every lease of this membership (its
    /// workers are done: the assignment is dropped only after they finished).
    async fn leave(&mut self, limit: Duration) {
        if let Ok(mut map) = self.leases.held.lock() {
            if map
                .get(&self.consumer)
                .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(&self.held)))
            {
                map.remove(&self.consumer);
            }
        }
        self.held.set(BTreeSet::new(), None);
        let mut db = self.leases.db.lock().await;
        let Some(client) = db.as_mut().filter(|c| !c.is_closed()) else {
            return;
        };
        let (topic, consumer, member) = (&self.leases.topic, &self.consumer, &self.member);
        let work = async move {
            let tx = client.transaction().await?;
            tx.execute(
                "DELETE FROM sluice_log_members WHERE topic = $1 AND consumer = $2 AND member = $3",
                &[topic, consumer, member],
            )
            .await?;
            tx.execute(
                "UPDATE sluice_log_leases SET owner = NULL WHERE topic = $1 AND consumer = $2 AND owner = $3",
                &[topic, consumer, member],
            )
            .await?;
            tx.commit().await
        };
        match tokio::time::timeout(limit, work).await {
            Ok(Ok(())) => tracing::info!(consumer = %self.consumer, "left the consumer's members"),
            // The leases run out by themselves.
            Ok(Err(e)) => {
                tracing::warn!(consumer = %self.consumer, error = %pg_error(e), "cannot free the partition leases")
            }
            Err(_) => *db = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::share;
    use std::collections::BTreeSet;

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("m{i}")).collect()
    }

    #[test]
    fn every_partition_has_exactly_one_member_and_shares_are_even() {
        for n in 1..=7 {
            for p in 1..=16u32 {
                for consumer in ["dest:hooks", "profiles", "dest:a"] {
                    let ms = members(n);
                    let shares: Vec<BTreeSet<u32>> =
                        ms.iter().map(|m| share(&ms, m, p, consumer)).collect();
                    let mut all: Vec<u32> = shares.iter().flatten().copied().collect();
                    all.sort_unstable();
                    assert_eq!(all, (0..p).collect::<Vec<_>>(), "n={n} p={p} {consumer}");
                    let (lo, hi) = (p as usize / n, (p as usize).div_ceil(n));
                    for s in &shares {
                        assert!((lo..=hi).contains(&s.len()), "n={n} p={p}: {s:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_stranger_gets_nothing_and_consumers_rotate() {
        let ms = members(3);
        assert!(share(&ms, "nobody", 4, "profiles").is_empty());
        // The extra partition of 4 over 3 members does not always land on the same member.
        let firsts: BTreeSet<usize> = (0..20)
            .map(|i| {
                let c = format!("dest:{i}");
                ms.iter()
                    .position(|m| share(&ms, m, 4, &c).len() == 2)
                    .unwrap()
            })
            .collect();
        assert!(firsts.len() > 1, "{firsts:?}");
    }
}
