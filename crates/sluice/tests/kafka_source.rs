//! A source of kind `kafka` against a real Kafka-protocol broker (`.ci/run` starts one and
//! sets KAFKA_BROKERS): Pushwoosh-style delivery records produced to a topic become
//! `Push Delivered` events at a webhook destination; malformed records are listed with
//! their reasons; the consumer carries on after them.
//!
//! Needs a broker, so it is not part of the plain `cargo test --workspace`: run it with
//! `KAFKA_BROKERS=127.0.0.1:19092 cargo test -p sluice --test kafka_source -- --ignored`.

mod common;

use std::time::Duration;

use common::receiver::Receiver;
use common::Server;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS")
        .expect("KAFKA_BROKERS must name a running Kafka-protocol broker (see .ci/run)")
}

async fn create_topic(brokers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, 4, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topic");
    for r in results {
        r.expect("topic created");
    }
}

#[test]
#[ignore = "needs a Kafka-protocol broker: KAFKA_BROKERS (run by .ci/run)"]
fn delivery_records_from_a_topic_reach_a_destination() {
    let brokers = brokers();
    // A fresh topic and consumer group per run: a group whose last member died waits for
    // its session timeout before it rebalances.
    let topic = format!("pw-delivery-{}", uuid::Uuid::new_v4().simple());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(create_topic(&brokers, &topic));

    let rx = Receiver::ok();
    let data_dir = tempfile::tempdir().unwrap().keep();
    let config = format!(
        r#"
admin_token = "test-admin-token"
[[sources]]
name = "pw-log"
kind = "kafka"
write_key = "wk_pw_log"
[sources.kafka]
brokers = "{brokers}"
topic = "{topic}"
group = "sluice-test-{topic}"
options = {{ "session.timeout.ms" = "6000" }}
[sources.kafka.mapping]
type = "track"
event = "Push Delivered"
userId = {{ "@path" = "$.external_user_id" }}
anonymousId = {{ "@path" = "$.hwid" }}
timestamp = {{ "@path" = "$.sent_at" }}
[sources.kafka.mapping.properties]
message_type = {{ "@path" = "$.message_type" }}
campaign_code = {{ "@path" = "$.campaign_code" }}
device_type = {{ "@path" = "$.platform" }}

[[destinations]]
name = "hooks"
type = "webhook"
sources = ["pw-log"]
allow_private_networks = true
[destinations.settings]
hooks = [{{ hook = "{url}/in" }}]
"#,
        url = rx.url
    );
    let mut s = Server::start_in(&data_dir, Some(&config));

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("message.timeout.ms", "10000")
        .create()
        .expect("producer");
    let mut records: Vec<(String, String)> = Vec::new();
    for i in 0..6 {
        let user = if i % 2 == 0 {
            json!(format!("partner-user-{i}"))
        } else {
            json!(null)
        };
        records.push((
            format!("dev-{i}"),
            json!({"external_user_id": user, "hwid": format!("dev-{i}"), "message_type": "push",
                   "campaign_code": "ABCDE-12345", "platform": if i < 3 { "ios" } else { "android" },
                   "sent_at": "2026-11-23T10:00:00Z"})
            .to_string(),
        ));
    }
    // Malformed: not JSON; JSON without any id (the event has no userId or anonymousId).
    records.insert(2, ("bad-1".into(), "{not json".into()));
    records.push(("bad-2".into(), json!({"message_type": "push"}).to_string()));
    rt.block_on(async {
        for (key, value) in &records {
            producer
                .send(
                    FutureRecord::to(&topic).key(key).payload(value),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("produce");
        }
    });

    let got = rx.wait_until("six delivery events at the webhook", WAIT, |log| {
        Receiver::delivered_ids(log).len() >= 6
    });
    let mut events: Vec<serde_json::Value> = got.iter().map(|r| r.json()).collect();
    events.sort_by_key(|e| e["anonymousId"].as_str().unwrap_or("").to_string());
    assert_eq!(events.len(), 6, "each record delivered once: {events:?}");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["event"], "Push Delivered");
        assert_eq!(e["anonymousId"], format!("dev-{i}"));
        assert_eq!(e["properties"]["campaign_code"], "ABCDE-12345");
        assert_eq!(
            e["properties"]["device_type"],
            if i < 3 { "ios" } else { "android" }
        );
        assert_eq!(e["timestamp"], "2026-11-23T10:00:00.000Z");
        if i % 2 == 0 {
            assert_eq!(e["userId"], format!("partner-user-{i}"));
        } else {
            assert!(e.get("userId").is_none_or(|u| u.is_null()), "{e}");
        }
        assert!(e["messageId"]
            .as_str()
            .unwrap()
            .starts_with(&format!("kafka-{topic}-")));
    }
    let rejected = s.admin_until(
        "/sources/pw-log/rejected",
        "the two malformed records listed",
        WAIT,
        |b| b["data"].as_array().is_some_and(|d| d.len() == 2),
    );
    let codes: Vec<&str> = rejected["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert!(codes.contains(&"invalid_message"), "{rejected}");
    assert!(codes.contains(&"no_user_anon_id"), "{rejected}");
    let not_json = rejected["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["code"] == "invalid_message")
        .unwrap();
    assert!(
        not_json["reason"].as_str().unwrap().contains(&topic),
        "{not_json}"
    );

    // A crash (SIGKILL) and a restart: the group resumes from its committed offsets;
    // records produced meanwhile arrive, and nothing is lost.
    s.signal(libc::SIGKILL);
    s.wait();
    rt.block_on(async {
        for i in 6..8 {
            let value = json!({"external_user_id": format!("partner-user-{i}"), "hwid": format!("dev-{i}"),
                               "message_type": "push", "campaign_code": "ABCDE-12345", "platform": "ios"})
            .to_string();
            producer
                .send(
                    FutureRecord::to(&topic).key(&format!("dev-{i}")).payload(&value),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("produce");
        }
    });
    let _s = Server::start_in(&data_dir, Some(&config));
    let got = rx.wait_until("the records produced during the crash", WAIT, |log| {
        Receiver::delivered_ids(log).len() >= 8
    });
    let ids = Receiver::delivered_ids(&got);
    for i in 0..8 {
        assert!(
            got.iter()
                .any(|r| r.json()["anonymousId"] == format!("dev-{i}")),
            "dev-{i} missing: {ids:?}"
        );
    }
}
