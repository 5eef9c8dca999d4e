//! The event log on Apache Kafka (any Kafka-protocol broker), for the scale-out
//! deployment: many `sluice serve` nodes append to one topic and share the consumers' work.
//!
//! - **Events** are records of one topic, keyed by the user key (so one user's events stay
//!   in one partition, in order), valued by the normalised JSON event, with the source and
//!   messageId as record headers and the receive time as the record timestamp. An offset
//!   is [`position`]`(partition, kafka offset + 1)`.
//! - **Appends** are group-committed by a few writer tasks. Each group, in one PostgreSQL
//!   transaction: claim the messageIds in the shared dedupe table (a duplicate claimed by
//!   another node within the window is dropped; a claim in flight on another node waits for
//!   it), produce every new event with `acks=all`, wait for every acknowledgement, then
//!   commit the claims. Any produce error rolls the claims back and fails the whole append
//!   (the client gets 503 and resends; what the broker did store is then stored again:
//!   at least once). An append is answered only after the broker acknowledged it.
//! - **Cursors** are the offsets committed for one Kafka consumer group per consumer
//!   (`<group_prefix><consumer>`), so the usual Kafka tools show every consumer's lag.
//! - **Assignment**: [`EventLog::assignment`] makes this node one of the consumer's members;
//!   the members split the partitions through leases in PostgreSQL ([`leases`]). When a
//!   node joins, leaves or dies (stops renewing for [`KafkaConfig::lease`]) the partitions
//!   move, and a partition taken away is handed over only after its worker released it
//!   (cursor committed). Commits for a partition this node does not hold are refused, so a
//!   node that lost a partition can never move its cursor.
//! - **Retention** moves a per-partition floor (kept in PostgreSQL) past the events older
//!   than the retention; readers skip below it and the topic's own `retention.ms` frees the
//!   disk. **Erasure** records the subject in PostgreSQL: every reader on every node hides
//!   the subject's events received before the erasure (other nodes see it within
//!   [`STATE_REFRESH`]); the records themselves leave the broker with the topic retention.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

mod leases;

use leases::Leases;

use crate::{
    partition_of, position, seq_of, Appended, Assignment, EraseFilter, EventLog, LogError,
    LogOptions, NewEvent, StoredEvent, MAX_PARTITIONS,
};

/// How often a node reloads the shared erasure list and retention floors.
pub const STATE_REFRESH: Duration = Duration::from_secs(5);
/// Writer tasks (group commits in flight at once).
pub const WRITERS: usize = 4;

/// The producers' settings (the operator's `[log] options` are applied over them).
/// Idempotent producing is off: tansu's SQLite engine panics on it. One request in flight
/// per broker keeps each partition's order through retries (on Apache Kafka,
/// `enable.idempotence = "true"` in the options lifts that).
pub const PRODUCER_SETTINGS: &[(&str, &str)] = &[
    ("acks", "all"),
    ("enable.idempotence", "false"),
    ("max.in.flight.requests.per.connection", "1"),
    ("linger.ms", "5"),
    ("batch.num.messages", "10000"),
    ("queue.buffering.max.messages", "1000000"),
    ("message.timeout.ms", "15000"),
];
/// Broker round trips that should be quick (metadata, offsets).
const RPC: Duration = Duration::from_secs(10);
/// How far behind another node's clock may be: [`EventLog::offset_at`] starts this much
/// earlier.
const CLOCK_SKEW_MS: i64 = 60_000;
/// Idle readers kept per partition.
const READERS_PER_PARTITION: usize = 8;
/// [`EventLog::read_at`] reads through up to this many records between two wanted ones
/// rather than seeking (about one fetch's worth of typical events).
const READ_THROUGH: i64 = 256;

/// Where the Kafka log lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    pub topic: String,
    /// Partitions of the topic when this node creates it.
    pub partitions: u32,
    /// Replication factor of the topic when this node creates it.
    pub replication: i32,
    /// Topic settings when this node creates it (`retention.ms`, …).
    pub topic_config: BTreeMap<String, String>,
    /// Consumer group of consumer `c`: `group_prefix + c`.
    pub group_prefix: String,
    /// Extra librdkafka settings for every client (`security.protocol`, …).
    pub options: BTreeMap<String, String>,
    /// PostgreSQL holding the shared dedupe window, erasures, retention floors and the
    /// partition leases.
    pub state_url: String,
    /// How long a node's claim on its partitions lasts without renewal: how soon a dead
    /// node's partitions move to the others.
    pub lease: Duration,
}

/// The Kafka event log. See the module documentation.
pub struct KafkaLog {
    inner: Arc<Inner>,
    writers: Mutex<Option<mpsc::Sender<Group>>>,
}

struct Inner {
    config: KafkaConfig,
    options: LogOptions,
    partitions: u32,
    /// One per writer task.
    producers: Vec<FutureProducer>,
    /// Offsets, metadata, committed offsets of groups this node is not a member of.
    admin: BaseConsumer,
    /// Group clients (not members) by consumer name, for cursors and simple commits.
    groups: Mutex<HashMap<String, Arc<BaseConsumer>>>,
    /// Which partitions this node works on, per consumer.
    leases: Arc<Leases>,
    readers: Mutex<HashMap<u32, Vec<Reader>>>,
    state: tokio::sync::Mutex<tokio_postgres::Client>,
    shared: RwLock<Arc<Shared>>,
    closed: AtomicBool,
}

/// What every node shares through PostgreSQL, as last loaded.
#[derive(Clone, Default)]
struct Shared {
    /// Erased subjects: id → events received at or before this time are hidden.
    users: HashMap<String, i64>,
    anonymous: HashMap<String, i64>,
    /// Per partition: Kafka offsets below this are retained away.
    floors: HashMap<u32, i64>,
}

impl Shared {
    fn hidden(&self, user_key: &str, received_at_ms: i64, payload: &[u8]) -> bool {
        let as_user = self
            .users
            .get(user_key)
            .is_some_and(|t| received_at_ms <= *t);
        let as_anon = self
            .anonymous
            .get(user_key)
            .is_some_and(|t| received_at_ms <= *t);
        if !as_user && !as_anon {
            return false;
        }
        let filter = EraseFilter {
            user_ids: as_user.then(|| user_key.to_string()).into_iter().collect(),
            anonymous_ids: as_anon.then(|| user_key.to_string()).into_iter().collect(),
        };
        filter.matches(user_key, payload)
    }
}

struct Group {
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Result<Vec<Appended>, LogError>>,
}

/// A consumer assigned to one partition, positioned at `next` (a Kafka offset).
struct Reader {
    consumer: BaseConsumer,
    /// -1 while unassigned (new, or back in the pool not fetching; see
    /// [`Inner::read_blocking`]).
    next: i64,
}

/// A PostgreSQL error with the server's own message (tokio-postgres shows only "db error").
fn pg_error(e: tokio_postgres::Error) -> LogError {
    match e.as_db_error() {
        Some(db) => LogError::Storage(format!("log state database: {}", db.message())),
        None => LogError::Storage(format!("log state database: {e}")),
    }
}

fn storage(e: impl std::fmt::Display) -> LogError {
    LogError::Storage(e.to_string())
}

fn kafka_error(e: KafkaError) -> LogError {
    LogError::Storage(format!("kafka: {e}"))
}

impl KafkaLog {
    /// Connects to the brokers and PostgreSQL, creates the topic when it is missing and
    /// the state tables, and loads the shared state.
    pub async fn open(config: KafkaConfig, options: LogOptions) -> Result<KafkaLog, LogError> {
        let client = connect(&config.state_url).await?;
        // Nodes starting together must not race on creating the tables.
        client
            .batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock(7243916504); {SCHEMA} {} COMMIT;",
                leases::SCHEMA
            ))
            .await
            .map_err(pg_error)?;
        let cfg = config.clone();
        let (producers, admin, partitions) = tokio::task::spawn_blocking(move || {
            let mut producer = client_config(&cfg);
            for (k, v) in PRODUCER_SETTINGS {
                producer.set(*k, *v);
            }
            // The operator's settings win.
            for (k, v) in &cfg.options {
                producer.set(k, v);
            }
            // One producer (one broker connection) per writer task, so the groups in
            // flight do not queue behind one another's single in-flight request. A group
            // is produced by one producer, in order; separate groups were never ordered
            // relative to each other (their requests were concurrent).
            let producers = (0..WRITERS)
                .map(|_| producer.create().map_err(kafka_error))
                .collect::<Result<Vec<FutureProducer>, _>>()?;
            let admin: BaseConsumer = reader_config(&cfg).create().map_err(kafka_error)?;
            let partitions = ensure_topic(&cfg, &admin)?;
            Ok::<_, LogError>((producers, admin, partitions))
        })
        .await
        .map_err(storage)??;
        let leases = Arc::new(Leases::new(
            &config.state_url,
            &config.topic,
            partitions,
            config.lease,
        ));
        let inner = Arc::new(Inner {
            config,
            leases,
            options,
            partitions,
            producers,
            admin,
            groups: Mutex::default(),
            readers: Mutex::default(),
            state: tokio::sync::Mutex::new(client),
            shared: RwLock::default(),
            closed: AtomicBool::new(false),
        });
        inner.refresh().await?;
        let (tx, rx) = mpsc::channel::<Group>(1024);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for w in 0..WRITERS {
            let db = connect(&inner.config.state_url).await?;
            tokio::spawn(writer(inner.clone(), w, db, rx.clone()));
        }
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(STATE_REFRESH).await;
                let Some(inner) = weak.upgrade() else { return };
                if inner.closed.load(Ordering::Relaxed) {
                    return;
                }
                if let Err(e) = inner.refresh().await {
                    tracing::warn!(error = %e, "cannot reload the log's shared state");
                }
            }
        });
        Ok(KafkaLog {
            inner,
            writers: Mutex::new(Some(tx)),
        })
    }

    fn sender(&self) -> Result<mpsc::Sender<Group>, LogError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        self.writers
            .lock()
            .map_err(|_| LogError::Closed)?
            .clone()
            .ok_or(LogError::Closed)
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, LogError> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(pg_error)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::error!(error = %e, "log state database connection ended");
        }
    });
    Ok(client)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sluice_log_dedupe (
    topic TEXT NOT NULL,
    source TEXT NOT NULL,
    message_id TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (topic, source, message_id)
);
CREATE INDEX IF NOT EXISTS sluice_log_dedupe_received ON sluice_log_dedupe (received_at);
CREATE TABLE IF NOT EXISTS sluice_log_erased (
    topic TEXT NOT NULL,
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    before_ms BIGINT NOT NULL,
    PRIMARY KEY (topic, kind, id)
);
CREATE TABLE IF NOT EXISTS sluice_log_floors (
    topic TEXT NOT NULL,
    partition INT NOT NULL,
    kafka_offset BIGINT NOT NULL,
    PRIMARY KEY (topic, partition)
);
";

fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    for (k, v) in &cfg.options {
        c.set(k, v);
    }
    c
}

fn reader_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = client_config(cfg);
    c.set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .set("group.id", format!("{}reader", cfg.group_prefix))
        // Readers read what is there (a read at a partition's end returns at once), so
        // the broker need not hold a fetch long; against tansu a random read took ~50 ms
        // with 50.
        .set("fetch.wait.max.ms", "5")
        // What a reader fetches ahead (per reader; librdkafka's default is 64 MB).
        .set("queued.max.messages.kbytes", "8192");
    c
}

/// The topic's partition count, after creating it when it is missing.
fn ensure_topic(cfg: &KafkaConfig, admin: &BaseConsumer) -> Result<u32, LogError> {
    let count = |admin: &BaseConsumer| -> Result<usize, LogError> {
        let md = admin
            .fetch_metadata(Some(&cfg.topic), RPC)
            .map_err(kafka_error)?;
        Ok(md
            .topics()
            .iter()
            .find(|t| t.name() == cfg.topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len()))
    };
    let mut n = count(admin)?;
    if n == 0 {
        let client: AdminClient<DefaultClientContext> =
            client_config(cfg).create().map_err(kafka_error)?;
        let mut topic = NewTopic::new(
            &cfg.topic,
            cfg.partitions as i32,
            TopicReplication::Fixed(cfg.replication),
        );
        for (k, v) in &cfg.topic_config {
            topic = topic.set(k, v);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(storage)?;
        let results = rt
            .block_on(
                client.create_topics([&topic], &AdminOptions::new().operation_timeout(Some(RPC))),
            )
            .map_err(kafka_error)?;
        for r in results {
            if let Err((name, code)) = r {
                if code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                    return Err(LogError::Storage(format!(
                        "cannot create topic {name:?}: {code}"
                    )));
                }
            }
        }
        let deadline = Instant::now() + RPC;
        while n == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            n = count(admin)?;
        }
        tracing::info!(topic = %cfg.topic, partitions = n, "created the event log topic");
    }
    if n == 0 {
        return Err(LogError::Storage(format!(
            "topic {:?} has no partitions",
            cfg.topic
        )));
    }
    if n as u32 > MAX_PARTITIONS {
        return Err(LogError::Storage(format!(
            "topic {:?} has {n} partitions; at most {MAX_PARTITIONS} are supported",
            cfg.topic
        )));
    }
    Ok(n as u32)
}

impl Inner {
    async fn refresh(&self) -> Result<(), LogError> {
        let db = self.state.lock().await;
        let topic = &self.config.topic;
        let mut shared = Shared::default();
        for row in db
            .query(
                "SELECT kind, id, before_ms FROM sluice_log_erased WHERE topic = $1",
                &[topic],
            )
            .await
            .map_err(storage)?
        {
            let (kind, id, before): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
            match kind.as_str() {
                "user" => shared.users.insert(id, before),
                _ => shared.anonymous.insert(id, before),
            };
        }
        for row in db
            .query(
                "SELECT partition, kafka_offset FROM sluice_log_floors WHERE topic = $1",
                &[topic],
            )
            .await
            .map_err(storage)?
        {
            shared
                .floors
                .insert(row.get::<_, i32>(0) as u32, row.get::<_, i64>(1));
        }
        drop(db);
        if let Ok(mut s) = self.shared.write() {
            *s = Arc::new(shared);
        }
        Ok(())
    }

    /// One group commit: claim, produce, wait, commit the claims.
    async fn append_group(
        &self,
        producer: &FutureProducer,
        db: &mut tokio_postgres::Client,
        events: &[NewEvent],
    ) -> Result<Vec<Appended>, LogError> {
        let mut out = vec![Appended::Duplicate; events.len()];
        // Within the group, the first of a (source, messageId) is the candidate.
        let mut first: HashMap<(&str, &str), usize> = HashMap::new();
        for (i, e) in events.iter().enumerate() {
            first.entry((&e.source, &e.message_id)).or_insert(i);
        }
        let mut candidates: Vec<usize> = first.values().copied().collect();
        // One lock order for every node: no deadlock between two groups.
        candidates.sort_by_key(|&i| (&events[i].source, &events[i].message_id));
        let window = self.options.dedupe_window_ms;
        let tx = db.transaction().await.map_err(pg_error)?;
        let sources: Vec<&str> = candidates
            .iter()
            .map(|&i| events[i].source.as_str())
            .collect();
        let ids: Vec<&str> = candidates
            .iter()
            .map(|&i| events[i].message_id.as_str())
            .collect();
        let times: Vec<i64> = candidates
            .iter()
            .map(|&i| events[i].received_at_ms)
            .collect();
        let rows = tx
            .query(
                "INSERT INTO sluice_log_dedupe AS d (topic, source, message_id, received_at)
                 SELECT $5, * FROM UNNEST($1::text[], $2::text[], $3::int8[])
                 ON CONFLICT (topic, source, message_id) DO UPDATE
                   SET received_at = EXCLUDED.received_at
                   WHERE d.received_at <= EXCLUDED.received_at - $4
                 RETURNING source, message_id",
                &[&sources, &ids, &times, &window, &self.config.topic],
            )
            .await
            .map_err(pg_error)?;
        let new: HashSet<(String, String)> = rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect();
        let mut stored: Vec<usize> = candidates
            .into_iter()
            .filter(|&i| new.contains(&(events[i].source.clone(), events[i].message_id.clone())))
            .collect();
        stored.sort_unstable();
        let mut pending = Vec::with_capacity(stored.len());
        for &i in &stored {
            let e = &events[i];
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "source",
                    value: Some(e.source.as_bytes()),
                })
                .insert(Header {
                    key: "message_id",
                    value: Some(e.message_id.as_bytes()),
                });
            let record = FutureRecord::to(&self.config.topic)
                .key(e.user_key.as_bytes())
                .payload(&e.payload[..])
                .timestamp(e.received_at_ms)
                .headers(headers);
            match producer.send_result(record) {
                Ok(f) => pending.push((i, f)),
                Err((e, _)) => return Err(produce_error(e)),
            }
        }
        for (i, f) in pending {
            match f.await {
                Ok(Ok(d)) => {
                    out[i] = Appended::Stored {
                        offset: position(d.partition as u32, d.offset as u64 + 1),
                    }
                }
                Ok(Err((e, _))) => return Err(produce_error(e)),
                Err(_) => return Err(LogError::Closed),
            }
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(out)
    }

    fn topic_partition(&self, partition: u32, offset: Offset) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        let _ = tpl.add_partition_offset(&self.config.topic, partition as i32, offset);
        tpl
    }

    fn check_partition(&self, partition: u32) -> Result<(), LogError> {
        if partition >= self.partitions {
            return Err(LogError::Storage(format!(
                "the log has {} partitions; there is no partition {partition}",
                self.partitions
            )));
        }
        Ok(())
    }

    fn floor(&self, partition: u32) -> i64 {
        self.shared
            .read()
            .ok()
            .and_then(|s| s.floors.get(&partition).copied())
            .unwrap_or(0)
    }

    /// Reads (blocking) up to `max` visible records of a partition from Kafka offset
    /// `from`, past hidden (erased) records, up to the partition's end as of the call.
    ///
    /// Readers are pooled per partition, and a reader fetches ahead in the background
    /// while it is assigned. `follow` (a consumer reading on from here) leaves a reader
    /// that filled `max` running, so the next page is already on its way; every other
    /// reader is unassigned when it goes back to the pool — idle readers fetching at the end
    /// of a partition were a steady load on the broker.
    fn read_blocking(
        &self,
        partition: u32,
        from: i64,
        max: usize,
        follow: bool,
    ) -> Result<Vec<StoredEvent>, LogError> {
        let from = from.max(self.floor(partition));
        let (_, high) = self.watermarks(partition)?;
        if from >= high || max == 0 {
            return Ok(Vec::new());
        }
        let mut reader = self.take_reader(partition, from)?;
        let result = self.poll_reader(&mut reader, partition, max, high);
        let Ok(events) = &result else {
            return result;
        };
        if !(follow && events.len() == max) {
            // Unassigned, it stops fetching; taken again, it is assigned afresh.
            if reader.consumer.unassign().is_err() {
                return result; // dropped, not pooled
            }
            reader.next = -1;
        }
        if let Ok(mut pool) = self.readers.lock() {
            let list = pool.entry(partition).or_default();
            if list.len() < READERS_PER_PARTITION {
                list.push(reader);
            }
        }
        result
    }

    /// [`EventLog::read_at`]: per partition, the wanted offsets in order, reading through
    /// gaps of up to [`READ_THROUGH`] records instead of seeking (a seek costs a fetch).
    fn read_at_blocking(&self, offsets: &[u64]) -> Result<Vec<StoredEvent>, LogError> {
        let mut wanted: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
        for &o in offsets {
            if seq_of(o) > 0 {
                wanted
                    .entry(partition_of(o))
                    .or_default()
                    .push(seq_of(o) as i64 - 1);
            }
        }
        let mut found: HashMap<u64, StoredEvent> = HashMap::new();
        for (partition, mut ks) in wanted {
            let (_, high) = self.watermarks(partition)?;
            let floor = self.floor(partition);
            ks.sort_unstable();
            ks.dedup();
            ks.retain(|k| *k >= floor && *k < high);
            let mut run = 0;
            while run < ks.len() {
                let mut last = run;
                while last + 1 < ks.len() && ks[last + 1] - ks[last] <= READ_THROUGH {
                    last += 1;
                }
                let (first, end) = (ks[run], ks[last]);
                let mut from = first;
                while from <= end {
                    let page =
                        self.read_blocking(partition, from, (end - from + 1) as usize, false)?;
                    let Some(next) = page.last().map(|e| seq_of(e.offset) as i64) else {
                        break; // the rest of the run is hidden (erased)
                    };
                    for e in page {
                        let k = seq_of(e.offset) as i64 - 1;
                        if ks[run..=last].binary_search(&k).is_ok() {
                            found.insert(e.offset, e);
                        }
                    }
                    from = next;
                }
                run = last + 1;
            }
        }
        Ok(offsets
            .iter()
            .filter_map(|o| found.get(o).cloned())
            .collect())
    }

    fn take_reader(&self, partition: u32, from: i64) -> Result<Reader, LogError> {
        let found = self.readers.lock().ok().and_then(|mut pool| {
            let list = pool.get_mut(&partition)?;
            let i = list
                .iter()
                .position(|r| r.next == from)
                .or(if list.is_empty() { None } else { Some(0) })?;
            Some(list.swap_remove(i))
        });
        let mut reader = match found {
            Some(r) => r,
            None => Reader {
                consumer: reader_config(&self.config).create().map_err(kafka_error)?,
                next: -1,
            },
        };
        if reader.next != from {
            reader
                .consumer
                .assign(&self.topic_partition(partition, Offset::Offset(from)))
                .map_err(kafka_error)?;
            reader.next = from;
        }
        Ok(reader)
    }

    fn poll_reader(
        &self,
        reader: &mut Reader,
        partition: u32,
        max: usize,
        high: i64,
    ) -> Result<Vec<StoredEvent>, LogError> {
        let mut out = Vec::new();
        let shared = self
            .shared
            .read()
            .map_err(|_| storage("log state lock poisoned"))?
            .clone();
        // Records known to exist (below `high`) come within a fetch or two: wait for all
        // of them up to `max`; past hidden ones, take only what has already arrived.
        let through = high.min(reader.next.saturating_add(max as i64));
        while out.len() < max && reader.next < high {
            let timeout = if reader.next < through {
                RPC
            } else {
                Duration::from_millis(1)
            };
            // `None` after waiting `timeout`: nothing more for now.
            let Some(m) = reader.consumer.poll(timeout) else {
                break;
            };
            let m = m.map_err(kafka_error)?;
            reader.next = m.offset() + 1;
            let (mut source, mut message_id) = (String::new(), String::new());
            if let Some(h) = m.headers() {
                for h in h.iter() {
                    let v = String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned();
                    match h.key {
                        "source" => source = v,
                        "message_id" => message_id = v,
                        _ => {}
                    }
                }
            }
            let user_key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            let payload = m.payload().unwrap_or_default();
            let received_at_ms = m.timestamp().to_millis().unwrap_or(0);
            if shared.hidden(&user_key, received_at_ms, payload) {
                continue;
            }
            out.push(StoredEvent {
                offset: position(partition, m.offset() as u64 + 1),
                source,
                message_id,
                user_key,
                received_at_ms,
                payload: payload.to_vec(),
            });
        }
        Ok(out)
    }

    /// The first Kafka offset of a partition whose record was received at or after
    /// `received_at_ms - CLOCK_SKEW` (the high watermark when there is none): the broker's
    /// time index gives a lower bound (brokers without one answer the start), then a
    /// binary search over the records' timestamps, which nodes write from their clocks,
    /// closes in.
    fn offset_at_blocking(&self, partition: u32, received_at_ms: i64) -> Result<i64, LogError> {
        let target = received_at_ms.saturating_sub(CLOCK_SKEW_MS);
        let (low, high) = self.watermarks(partition)?;
        let tpl = self.topic_partition(partition, Offset::Offset(target));
        let hint = match self
            .admin
            .offsets_for_times(tpl, RPC)
            .map_err(kafka_error)?
            .find_partition(&self.config.topic, partition as i32)
            .map(|e| e.offset())
        {
            Some(Offset::Offset(k)) if k >= 0 => k,
            Some(Offset::End) => high,
            _ => low,
        };
        let (mut lo, mut hi) = (hint.max(low).max(self.floor(partition)), high.max(0));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.read_blocking(partition, mid, 1, false)?.first() {
                Some(e) if e.received_at_ms < target => lo = seq_of(e.offset) as i64,
                _ => hi = mid,
            }
        }
        Ok(lo)
    }

    fn watermarks(&self, partition: u32) -> Result<(i64, i64), LogError> {
        self.admin
            .fetch_watermarks(&self.config.topic, partition as i32, RPC)
            .map_err(kafka_error)
    }

    fn group_client(&self, consumer: &str) -> Result<Arc<BaseConsumer>, LogError> {
        let mut groups = self.groups.lock().map_err(|_| storage("lock poisoned"))?;
        if let Some(c) = groups.get(consumer) {
            return Ok(c.clone());
        }
        let mut cfg = reader_config(&self.config);
        cfg.set(
            "group.id",
            format!("{}{consumer}", self.config.group_prefix),
        );
        let c: Arc<BaseConsumer> = Arc::new(cfg.create().map_err(kafka_error)?);
        groups.insert(consumer.to_string(), c.clone());
        Ok(c)
    }
}

fn produce_error(e: KafkaError) -> LogError {
    use rdkafka::types::RDKafkaErrorCode as C;
    match e.rdkafka_error_code() {
        Some(C::QueueFull | C::MessageSizeTooLarge) => LogError::Full(format!("kafka: {e}")),
        _ => LogError::Storage(format!("kafka: {e}")),
    }
}

async fn writer(
    inner: Arc<Inner>,
    w: usize,
    mut db: tokio_postgres::Client,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Group>>>,
) {
    loop {
        // Take what is waiting, up to the group size, then commit it as one.
        let mut groups = Vec::new();
        {
            let mut rx = rx.lock().await;
            let Some(g) = rx.recv().await else { return };
            let mut n = g.events.len();
            groups.push(g);
            while n < inner.options.max_group_events {
                match rx.try_recv() {
                    Ok(g) => {
                        n += g.events.len();
                        groups.push(g);
                    }
                    Err(_) => break,
                }
            }
        }
        let mut all = Vec::new();
        let mut sizes = Vec::new();
        for g in &mut groups {
            sizes.push(g.events.len());
            all.append(&mut g.events);
        }
        let result = inner.append_group(&inner.producers[w], &mut db, &all).await;
        let mut at = 0;
        for (g, n) in groups.into_iter().zip(sizes) {
            let part = result
                .as_ref()
                .map(|r| r[at..at + n].to_vec())
                .map_err(Clone::clone);
            at += n;
            let _ = g.reply.send(part);
        }
    }
}

#[async_trait]
impl EventLog for KafkaLog {
    fn partitions(&self) -> u32 {
        self.inner.partitions
    }

    fn idle_poll(&self) -> Duration {
        Duration::from_millis(100)
    }

    fn assignment(&self, consumer: &str) -> Assignment {
        self.inner.leases.join(consumer)
    }

    async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<Appended>, LogError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(Group { events, reply })
            .await
            .map_err(|_| LogError::Closed)?;
        rx.await.map_err(|_| LogError::Closed)?
    }

    async fn read(&self, from: u64, max: usize) -> Result<Vec<StoredEvent>, LogError> {
        let partition = partition_of(from);
        self.inner.check_partition(partition)?;
        let kafka_from = seq_of(from).saturating_sub(1) as i64;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.read_blocking(partition, kafka_from, max, true))
            .await
            .map_err(storage)?
    }

    async fn read_at(&self, offsets: &[u64]) -> Result<Vec<StoredEvent>, LogError> {
        for &o in offsets {
            self.inner.check_partition(partition_of(o))?;
        }
        let inner = self.inner.clone();
        let offsets = offsets.to_vec();
        tokio::task::spawn_blocking(move || inner.read_at_blocking(&offsets))
            .await
            .map_err(storage)?
    }

    async fn recent(&self, source: &str, limit: usize) -> Result<Vec<StoredEvent>, LogError> {
        let inner = self.inner.clone();
        let source = source.to_string();
        tokio::task::spawn_blocking(move || {
            // Newest windows first, per partition, at most 100,000 records looked at each.
            let mut found = Vec::new();
            for p in 0..inner.partitions {
                let (low, high) = inner.watermarks(p)?;
                let low = low.max(inner.floor(p));
                let mut end = high;
                let mut mine = Vec::new();
                while end > low && mine.len() < limit && high - end < 100_000 {
                    let start = (end - 1000).max(low);
                    let mut from = start;
                    while from < end {
                        let page = inner.read_blocking(p, from, 1000, true)?;
                        let Some(last) = page.last() else { break };
                        from = seq_of(last.offset) as i64;
                        mine.extend(
                            page.into_iter()
                                .filter(|e| seq_of(e.offset) as i64 <= end && e.source == source),
                        );
                    }
                    end = start;
                }
                found.extend(mine);
            }
            found.sort_by_key(|e| std::cmp::Reverse((e.received_at_ms, seq_of(e.offset))));
            found.dedup_by_key(|e| e.offset);
            found.truncate(limit);
            Ok(found)
        })
        .await
        .map_err(storage)?
    }

    async fn cursor(&self, consumer: &str, partition: u32) -> Result<Option<u64>, LogError> {
        self.inner.check_partition(partition)?;
        let inner = self.inner.clone();
        let consumer = consumer.to_string();
        tokio::task::spawn_blocking(move || {
            let client: Arc<BaseConsumer> = inner.group_client(&consumer)?;
            let tpl = inner.topic_partition(partition, Offset::Invalid);
            let got = client.committed_offsets(tpl, RPC).map_err(kafka_error)?;
            let offset = got
                .find_partition(&inner.config.topic, partition as i32)
                .map(|e| e.offset());
            Ok(match offset {
                Some(Offset::Offset(k)) if k >= 0 => Some(position(partition, k as u64 + 1)),
                _ => None,
            })
        })
        .await
        .map_err(storage)?
    }

    async fn commit(&self, consumer: &str, next_offset: u64) -> Result<(), LogError> {
        let partition = partition_of(next_offset);
        self.inner.check_partition(partition)?;
        let k = seq_of(next_offset).saturating_sub(1) as i64;
        let inner = self.inner.clone();
        let consumer = consumer.to_string();
        tokio::task::spawn_blocking(move || {
            // A node working for the consumer moves only the cursors of partitions it
            // holds; a node that does not (creating a destination) sets starting points.
            if let Some(held) = inner.leases.held(&consumer) {
                if !held.holds(partition) {
                    return Err(LogError::Storage(format!(
                        "partition {partition} of {consumer:?} is no longer this node's"
                    )));
                }
            }
            let tpl = inner.topic_partition(partition, Offset::Offset(k));
            inner
                .group_client(&consumer)?
                .commit(&tpl, CommitMode::Sync)
                .map_err(kafka_error)
        })
        .await
        .map_err(storage)?
    }

    async fn end_offset(&self, partition: u32) -> Result<u64, LogError> {
        self.inner.check_partition(partition)?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let (_, high) = inner.watermarks(partition)?;
            Ok(position(partition, high.max(0) as u64 + 1))
        })
        .await
        .map_err(storage)?
    }

    async fn offset_at(&self, partition: u32, received_at_ms: i64) -> Result<u64, LogError> {
        self.inner.check_partition(partition)?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let k = inner.offset_at_blocking(partition, received_at_ms)?;
            Ok(position(partition, k as u64 + 1))
        })
        .await
        .map_err(storage)?
    }

    async fn enforce_retention(&self, now_ms: i64) -> Result<u64, LogError> {
        let mut deleted = 0;
        let cutoff = now_ms - self.inner.options.retention_ms;
        for p in 0..self.inner.partitions {
            let target = seq_of(self.offset_at(p, cutoff).await?).saturating_sub(1) as i64;
            let floor = self.inner.floor(p);
            if target <= floor {
                continue;
            }
            let inner = self.inner.clone();
            let gone = tokio::task::spawn_blocking(move || {
                let (low, _) = inner.watermarks(p)?;
                Ok::<_, LogError>((target - floor.max(low)).max(0) as u64)
            })
            .await
            .map_err(storage)??;
            let db = self.inner.state.lock().await;
            db.execute(
                "INSERT INTO sluice_log_floors (topic, partition, kafka_offset) VALUES ($1, $2, $3)
                 ON CONFLICT (topic, partition) DO UPDATE SET kafka_offset =
                   GREATEST(sluice_log_floors.kafka_offset, EXCLUDED.kafka_offset)",
                &[&self.inner.config.topic, &(p as i32), &target],
            )
            .await
            .map_err(pg_error)?;
            drop(db);
            if let Ok(mut s) = self.inner.shared.write() {
                Arc::make_mut(&mut s).floors.insert(p, target);
            }
            deleted += gone;
        }
        let db = self.inner.state.lock().await;
        db.execute(
            "DELETE FROM sluice_log_dedupe WHERE topic = $1 AND received_at < $2",
            &[
                &self.inner.config.topic,
                &(now_ms - self.inner.options.dedupe_window_ms),
            ],
        )
        .await
        .map_err(pg_error)?;
        Ok(deleted)
    }

    async fn erase(&self, filter: EraseFilter) -> Result<u64, LogError> {
        // Count what is visible and matches, scanning the retained topic, then hide it.
        let inner = self.inner.clone();
        let scan = filter.clone();
        let count = tokio::task::spawn_blocking(move || {
            let mut n = 0u64;
            for p in 0..inner.partitions {
                let (_, high) = inner.watermarks(p)?;
                let mut from = 0;
                while from < high {
                    let page = inner.read_blocking(p, from, 5000, true)?;
                    let Some(last) = page.last() else { break };
                    from = seq_of(last.offset) as i64;
                    n += page
                        .iter()
                        .filter(|e| scan.matches(&e.user_key, &e.payload))
                        .count() as u64;
                }
            }
            Ok::<_, LogError>(n)
        })
        .await
        .map_err(storage)??;
        let now = chrono_now_ms();
        let db = self.inner.state.lock().await;
        for (kind, ids) in [
            ("user", &filter.user_ids),
            ("anonymous", &filter.anonymous_ids),
        ] {
            for id in ids {
                db.execute(
                    "INSERT INTO sluice_log_erased (topic, kind, id, before_ms) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (topic, kind, id) DO UPDATE SET before_ms = EXCLUDED.before_ms",
                    &[&self.inner.config.topic, &kind, id, &now],
                )
                .await
                .map_err(pg_error)?;
            }
        }
        drop(db);
        if let Ok(mut s) = self.inner.shared.write() {
            let s = Arc::make_mut(&mut s);
            for id in &filter.user_ids {
                s.users.insert(id.clone(), now);
            }
            for id in &filter.anonymous_ids {
                s.anonymous.insert(id.clone(), now);
            }
        }
        Ok(count)
    }

    async fn close(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        // Let the writers finish what they hold; later appends fail with Closed.
        if let Ok(mut w) = self.writers.lock() {
            w.take();
        }
        let inner = self.inner.clone();
        let _ = tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            for p in &inner.producers {
                let _ = p.flush(RPC);
            }
        })
        .await;
    }
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
