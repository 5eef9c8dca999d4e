//! `sluice-bench kafka-produce`: the bound for the Kafka deployment's ingest. A bare
//! rdkafka producer sends the generator's events to a topic, configured as Sluice's Kafka
//! log configures its producers (`sluice_log::kafka::PRODUCER_SETTINGS`, as many
//! producers as it has writer tasks), each event keyed by its user with `source` and
//! `message_id` headers, and counts an event when the broker acknowledged it. Nothing
//! else: no HTTP, no validation, no dedupe, no PostgreSQL. Run against the same broker in
//! the same session as the deployment (`bench/kafka.sh` does both).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use sluice_log::kafka::{PRODUCER_SETTINGS, WRITERS};

use crate::ingest::Generator;

/// Producers, as Sluice's Kafka log has writer tasks.
const PRODUCERS: usize = WRITERS;

#[derive(clap::Args, Clone)]
pub struct ProduceArgs {
    /// The broker list.
    #[arg(long, default_value = "127.0.0.1:19092")]
    brokers: String,
    /// The topic: created with `--partitions` when it does not exist.
    #[arg(long)]
    topic: String,
    /// Partitions of a topic this creates (as `[log] partitions`).
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Concurrent senders, as the ingest benchmark's connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Events a sender produces before it waits for their acknowledgements, as a batch
    /// request waits for its append.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Seconds measured (after a 1 s warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

pub async fn produce(args: ProduceArgs) -> Result<()> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &args.brokers);
    for (k, v) in PRODUCER_SETTINGS {
        cfg.set(*k, *v);
    }
    let admin: AdminClient<DefaultClientContext> =
        cfg.create().context("cannot create a Kafka admin client")?;
    let topic = NewTopic::new(&args.topic, args.partitions, TopicReplication::Fixed(1));
    for r in admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .context("cannot create the topic")?
    {
        if let Err((name, code)) = r {
            if code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                anyhow::bail!("cannot create topic {name:?}: {code}");
            }
        }
    }
    let producers = (0..PRODUCERS)
        .map(|_| cfg.create::<FutureProducer>())
        .collect::<Result<Vec<_>, _>>()
        .context("cannot create a Kafka producer")?;
    let producers = Arc::new(producers);
    let acked = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let nonce = format!("{:x}", std::process::id());
    let stop_at = Instant::now() + Duration::from_secs(args.duration + 1);
    let mut tasks = Vec::new();
    for conn in 0..args.connections {
        let (producers, acked, errors, topic, nonce) = (
            producers.clone(),
            acked.clone(),
            errors.clone(),
            args.topic.clone(),
            nonce.clone(),
        );
        let batch = args.batch.max(1);
        tasks.push(tokio::spawn(async move {
            let mut generator = Generator::new(&nonce, conn);
            let producer = &producers[conn % PRODUCERS];
            let mid = |e: &str| {
                e.split_once(r#""messageId":""#)
                    .and_then(|(_, rest)| rest.split_once('"'))
                    .map(|(id, _)| id.to_string())
                    .unwrap_or_default()
            };
            while Instant::now() < stop_at {
                let mut pending = Vec::with_capacity(batch);
                for _ in 0..batch {
                    let event = generator.event();
                    let message_id = mid(&event);
                    let headers = OwnedHeaders::new()
                        .insert(Header {
                            key: "source",
                            value: Some("bench"),
                        })
                        .insert(Header {
                            key: "message_id",
                            value: Some(message_id.as_str()),
                        });
                    let record = FutureRecord::to(&topic)
                        .key(generator.user.as_bytes())
                        .payload(event.as_bytes())
                        .timestamp(chrono::Utc::now().timestamp_millis())
                        .headers(headers);
                    match producer.send_result(record) {
                        Ok(f) => pending.push(f),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                for f in pending {
                    match f.await {
                        Ok(Ok(_)) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }));
    }
    // Warm-up, then the measured window.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (from, t0) = (acked.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    let (to, seconds) = (acked.load(Ordering::Relaxed), t0.elapsed().as_secs_f64());
    for t in tasks {
        let _ = t.await;
    }
    let events_per_s = ((to - from) as f64 / seconds).round();
    let errors = errors.load(Ordering::Relaxed);
    println!(
        "kafka-produce: {} senders, batches of {}, {} producers: {events_per_s} events/s acknowledged, {errors} errors",
        args.connections, args.batch, PRODUCERS
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "connections": args.connections,
                "batch": args.batch,
                "events_per_s": events_per_s,
                "errors": errors,
            })
        );
    }
    Ok(())
}
