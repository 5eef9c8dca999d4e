//! The log contract against a real Kafka-protocol broker and PostgreSQL (`.ci/run` starts
//! both and sets KAFKA_BROKERS and DATABASE_URL). Each test gets a topic of 4 partitions
//! and consumer groups of its own. Needs the servers, so it is not part of the plain
//! `cargo test --workspace`: run it with
//! `KAFKA_BROKERS=127.0.0.1:19092 DATABASE_URL=postgres://postgres@127.0.0.1:55432/postgres
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
