//! The log contract against a real Kafka-protocol broker and PostgreSQL (`.ci/run` starts
//! both and sets KAFKA_BROKERS and DATABASE_URL). Each test gets a topic of 4 partitions
//! and consumer groups of its own. Needs the servers, so it is not part of the plain
//! `cargo test --workspace`: run it with
//! `KAFKA_BROKERS=127.0.0.1:19092 DATABASE_URL=postgres://postgres@127.0.0.1:15432/postgres
//!  cargo test -p sluice-log --features kafka --test kafka_contract -- --ignored`.

use async_trait::async_trait;
use sluice_log::contract::LogHarness;
use sluice_log::kafka::{KafkaConfig, KafkaLog};
use sluice_log::LogOptions;

struct Kafka {
    config: KafkaConfig,
}

impl Kafka {
    fn new() -> Kafka {
        let brokers = std::env::var("KAFKA_BROKERS")
            .expect("KAFKA_BROKERS must name a running broker (see .ci/run)");
        let state_url = std::env::var("DATABASE_URL")
            .expect("DATABASE_URL must name a running PostgreSQL (see .ci/run)");
        let id = uuid::Uuid::new_v4().simple().to_string();
        Kafka {
            config: KafkaConfig {
                brokers,
                topic: format!("contract-{id}"),
                partitions: 4,
                replication: 1,
                topic_config: Default::default(),
                group_prefix: format!("contract-{id}."),
                options: Default::default(),
                state_url,
                lease: std::time::Duration::from_secs(3),
            },
        }
    }
}

#[async_trait]
impl LogHarness for Kafka {
    type Log = KafkaLog;
    async fn open(&self, options: LogOptions) -> KafkaLog {
        KafkaLog::open(self.config.clone(), options)
            .await
            .expect("open the Kafka log")
    }
}

sluice_log::log_contract_tests!(
    ignore = "needs a Kafka-protocol broker and PostgreSQL: KAFKA_BROKERS, DATABASE_URL (run by .ci/run)";
    Kafka::new()
);

mod leases {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use sluice_log::contract::LogHarness;
    use sluice_log::{position, Assignment, EventLog, LogOptions};

    use super::Kafka;

    /// Follows two nodes' assignments for one consumer, releasing what is taken away as a
    /// consumer does, until `done` holds for their partitions; no partition may ever be
    /// worked on by both. Panics after 30 s.
    async fn follow(
        a: &mut Assignment,
        mut b: Option<&mut Assignment>,
        done: impl Fn(&BTreeSet<u32>, &BTreeSet<u32>) -> bool,
    ) -> (BTreeSet<u32>, BTreeSet<u32>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let current =
            |b: &mut Option<&mut Assignment>| b.as_mut().map(|b| b.current()).unwrap_or_default();
        let (mut seen_a, mut seen_b) = (a.current(), current(&mut b));
        loop {
            let (now_a, now_b) = (a.current(), current(&mut b));
            for p in seen_a.difference(&now_a) {
                a.release(*p);
            }
            if let Some(b) = &b {
                for p in seen_b.difference(&now_b) {
                    b.release(*p);
                }
            }
            (seen_a, seen_b) = (now_a, now_b);
            assert!(
                seen_a.is_disjoint(&seen_b),
                "both nodes work on {:?}",
                seen_a.intersection(&seen_b).collect::<Vec<_>>()
            );
            if done(&seen_a, &seen_b) {
                return (seen_a, seen_b);
            }
            tokio::select! {
                _ = a.changed() => {}
                _ = changed(b.as_deref_mut()) => {}
                _ = tokio::time::sleep_until(deadline) => panic!("assignments stuck at {seen_a:?} / {seen_b:?}"),
            }
        }
    }

    async fn changed(b: Option<&mut Assignment>) {
        match b {
            Some(b) => b.changed().await,
            None => std::future::pending().await,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs a Kafka-protocol broker and PostgreSQL: KAFKA_BROKERS, DATABASE_URL (run by .ci/run)"]
    async fn nodes_split_the_partitions_hand_them_over_and_fence_commits() {
        let h = Kafka::new();
        let (node_a, node_b) = (
            h.open(LogOptions::default()).await,
            h.open(LogOptions::default()).await,
        );
        let all: BTreeSet<u32> = (0..4).collect();
        // Alone, a node works on every partition.
        let mut a = node_a.assignment("c");
        let (got, _) = follow(&mut a, None, |x, _| *x == all).await;
        assert_eq!(got, all);

        // A second node gets its half once the first let go.
        let mut b = node_b.assignment("c");
        let (in_a, in_b) = follow(&mut a, Some(&mut b), |x, y| x.len() == 2 && y.len() == 2).await;
        assert_eq!(&in_a | &in_b, all);

        // Only the holder moves a partition's cursor.
        let (pa, pb) = (*in_a.first().unwrap(), *in_b.first().unwrap());
        node_a
            .commit("c", position(pa, 1))
            .await
            .expect("holder commits");
        let refused = node_a.commit("c", position(pb, 1)).await.unwrap_err();
        assert!(
            refused.to_string().contains("no longer this node's"),
            "{refused}"
        );
        assert_eq!(node_b.cursor("c", pa).await.unwrap(), Some(position(pa, 1)));
        assert_eq!(node_b.cursor("c", pb).await.unwrap(), None);

        // When the first node leaves, the second takes everything.
        drop(a);
        let (in_b, _) = follow(&mut b, None, |x, _| *x == all).await;
        assert_eq!(in_b, all);
        node_b
            .commit("c", position(pa, 2))
            .await
            .expect("new holder commits");
    }
}
