//! Sources of kind `kafka`: a consumer group reads a topic of JSON messages (a partner's
//! delivery log, say), maps each message to a Segment event with the mapping kit, and feeds
//! the events into the same pipeline as Tracking API events (validation, dedupe, the log).
//!
//! At least once, never lost: a message's offset is stored for commit only after its
//! event is durably in the log (or after it was recorded as refused); a crash or a log
//! that cannot write makes the batch come again, and the event's messageId — from the
//! mapping, else `kafka-<topic>-<partition>-<offset>` — drops the repeat. A message that is
//! not JSON or that the mapping cannot turn into an event is listed under the source's
//! rejected records with the reason; the consumer never stops on a bad message.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use sluice_mapping::Mapping;

#[cfg(feature = "kafka")]
pub use consumer::run;

/// Whether this build can consume Kafka topics (cargo feature `kafka`).
pub const SUPPORTED: bool = cfg!(feature = "kafka");

/// A `kafka` source's settings.
#[derive(Debug, Clone)]
pub struct KafkaSource {
    pub brokers: String,
    pub topic: String,
    pub group: String,
    /// Extra librdkafka client settings (`session.timeout.ms`, `security.protocol`, …).
    pub options: BTreeMap<String, String>,
    /// Message → event.
    pub mapping: Arc<Mapping>,
}

impl PartialEq for KafkaSource {
    fn eq(&self, other: &Self) -> bool {
        (&self.brokers, &self.topic, &self.group, &self.options)
            == (&other.brokers, &other.topic, &other.group, &other.options)
    }
}

/// What one message becomes: an event, or the reason it cannot be one.
pub fn event_of(
    mapping: &Mapping,
    topic: &str,
    partition: i32,
    offset: i64,
    payload: Option<&[u8]>,
) -> Result<Value, (&'static str, String)> {
    let Some(payload) = payload else {
        return Err(("invalid_message", "the message has no value".into()));
    };
    let message: Value = serde_json::from_slice(payload)
        .map_err(|e| ("invalid_message", format!("the message is not JSON: {e}")))?;
    let mut event = match mapping.eval(&message) {
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err((
                "unmappable_message",
                format!("the mapping made {other}, not an event object"),
            ))
        }
        None => {
            return Err((
                "unmappable_message",
                "the mapping made nothing of this message".into(),
            ))
        }
    };
    if !event.contains_key("messageId") {
        event.insert(
            "messageId".into(),
            Value::String(format!("kafka-{topic}-{partition}-{offset}")),
        );
    }
    Ok(Value::Object(event))
}

#[cfg(feature = "kafka")]
mod consumer {
    use std::sync::Arc;
    use std::time::Duration;

    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::BorrowedMessage;
    use rdkafka::Message;
    use sluice_store::RejectedRecord;

    use tokio::sync::watch;

    use super::{event_of, KafkaSource};
    use crate::Ingest;

    /// Most messages one batch takes (one log append).
    const BATCH: usize = 500;
    /// How long a batch waits for more messages once it has one.
    const LINGER: Duration = Duration::from_millis(20);

    fn consumer(k: &KafkaSource) -> Result<StreamConsumer, rdkafka::error::KafkaError> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &k.brokers)
            .set("group.id", &k.group)
            .set("enable.auto.commit", "true")
            // Offsets are stored by hand, after the events are durable.
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
        for (key, value) in &k.options {
            cfg.set(key, value);
        }
        let c: StreamConsumer = cfg.create()?;
        c.subscribe(&[&k.topic])?;
        Ok(c)
    }

    /// Runs one Kafka source until `stop` turns true.
    pub async fn run(ingest: Arc<Ingest>, source_name: String, mut stop: watch::Receiver<bool>) {
        let Some(source) = ingest.source(&source_name) else {
            return;
        };
        let Some(k) = source.settings.kafka().cloned() else {
            return;
        };
        let retry = Duration::from_secs(1);
        let consumer = loop {
            match consumer(&k) {
                Ok(c) => break c,
                Err(e) => {
                    tracing::error!(source = %source_name, error = %e, "kafka source cannot start; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {},
                        _ = stop.changed() => return,
                    }
                }
            }
        };
        tracing::info!(source = %source_name, topic = %k.topic, group = %k.group, "kafka source consuming");
        loop {
            if *stop.borrow() {
                return;
            }
            // A batch: wait for one message, then take what comes within the linger time.
            let mut batch: Vec<BorrowedMessage<'_>> = Vec::new();
            tokio::select! {
                m = consumer.recv() => match m {
                    Ok(m) => batch.push(m),
                    Err(e) => {
                        tracing::warn!(source = %source_name, error = %e, "kafka source receive failed");
                        tokio::time::sleep(retry).await;
                        continue;
                    }
                },
                _ = stop.changed() => return,
            }
            while batch.len() < BATCH {
                match tokio::time::timeout(LINGER, consumer.recv()).await {
                    Ok(Ok(m)) => batch.push(m),
                    _ => break,
                }
            }
            let received_at = chrono::Utc::now();
            let mut events = Vec::with_capacity(batch.len());
            let mut refused = Vec::new();
            for m in &batch {
                match event_of(
                    &k.mapping,
                    m.topic(),
                    m.partition(),
                    m.offset(),
                    m.payload(),
                ) {
                    Ok(e) => events.push(e),
                    Err((code, reason)) => refused.push(RejectedRecord {
                        id: 0,
                        source: source_name.clone(),
                        received_at_ms: received_at.timestamp_millis(),
                        index: m.offset(),
                        message_id: None,
                        code: code.to_string(),
                        field: None,
                        reason: format!(
                            "{reason} (topic {}, partition {}, offset {})",
                            m.topic(),
                            m.partition(),
                            m.offset()
                        ),
                        raw: crate::excerpt(m.payload().unwrap_or_default()),
                    }),
                }
            }
            // Until both the events and the refusals are stored, nothing is acknowledged.
            loop {
                let mut ok = true;
                if !refused.is_empty() {
                    metrics::counter!("sluice_events_rejected_total", "source" => source_name.clone(), "reason" => "kafka_message")
                        .increment(refused.len() as u64);
                    if let Err(e) = ingest.store.add_rejected(refused.clone()).await {
                        tracing::warn!(source = %source_name, error = %e, "cannot record refused kafka messages; retrying");
                        ok = false;
                    }
                }
                if ok && !events.is_empty() {
                    if let Err(e) = ingest
                        .accept_values(&source, events.clone(), received_at, None)
                        .await
                    {
                        // A batch refused as a whole (its items are refused one by one
                        // otherwise) is skipped; when the log cannot write, it is tried
                        // again and nothing is acknowledged.
                        ok = e.status() == crate::Status::Invalid;
                        if ok {
                            tracing::error!(source = %source_name, error = %e, "kafka batch refused as a whole; skipped");
                        } else {
                            tracing::warn!(source = %source_name, error = %e, "kafka batch not stored; retrying");
                        }
                    }
                }
                if ok {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {},
                    _ = stop.changed() => return,
                }
            }
            for m in &batch {
                if let Err(e) = consumer.store_offset_from_message(m) {
                    tracing::warn!(source = %source_name, error = %e, "cannot store a kafka offset");
                }
            }
            metrics::counter!("sluice_kafka_source_messages_total", "source" => source_name.clone())
                .increment(batch.len() as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapping() -> Mapping {
        Mapping::compile(&json!({
            "type": "track",
            "event": "Push Delivered",
            "userId": {"@path": "$.external_user_id"},
            "anonymousId": {"@path": "$.hwid"},
            "properties": {
                "message_type": {"@path": "$.message_type"},
                "campaign_code": {"@path": "$.campaign"},
                "device_type": {"@path": "$.platform"}
            },
            "timestamp": {"@path": "$.sent_at"}
        }))
        .unwrap()
    }

    #[test]
    fn messages_become_events_with_a_stable_message_id() {
        let m = mapping();
        let e = event_of(
            &m,
            "pw",
            2,
            41,
            Some(br#"{"external_user_id":"u7","hwid":"dev-1","message_type":"push","campaign":"C-1","platform":"ios","sent_at":"2026-11-23T10:00:00Z"}"#),
        )
        .unwrap();
        assert_eq!(e["event"], "Push Delivered");
        assert_eq!(e["userId"], "u7");
        assert_eq!(e["properties"]["campaign_code"], "C-1");
        assert_eq!(e["messageId"], "kafka-pw-2-41");
    }

    #[test]
    fn bad_messages_are_refused_with_a_reason() {
        let m = mapping();
        assert_eq!(
            event_of(&m, "pw", 0, 1, Some(b"not json")).unwrap_err().0,
            "invalid_message"
        );
        assert_eq!(
            event_of(&m, "pw", 0, 1, None).unwrap_err().0,
            "invalid_message"
        );
        let scalar = Mapping::compile(&json!({"@path": "$.x"})).unwrap();
        let (code, why) = event_of(&scalar, "pw", 0, 1, Some(br#"{"x": 3}"#)).unwrap_err();
        assert_eq!(code, "unmappable_message");
        assert!(why.contains("not an event object"), "{why}");
    }
}
