//! The warehouse consumer: one more consumer of the log per warehouse destination. Each
//! partition's worker reads its sources' events from the cursor, shapes them into
//! Segment's rows (`sluice_warehouse::shape`), and loads them (`sluice_warehouse::load`)
//! once `batch_rows` rows wait or the oldest has waited `max_age`; the cursor is committed
//! only after the load has committed, so a crash or a failed load reads the same events
//! again, and the merge on `id` keeps each event once. A failed load is tried again with
//! a backoff (1 s doubling to [`MAX_BACKOFF`]); ingest and other destinations go on.
//!
//! [`Warehouse`] is what the rest of the server sees of one: its settings, its sync
//! history (each load: when, how long, rows per table, discards, error), its lag, a
//! window replay, and the deletion of a subject's rows for a regulation.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use sluice_log::EventLog;
use sluice_warehouse::load::Loaded;
use sluice_warehouse::naming::Names;
use sluice_warehouse::postgres::Postgres;
use sluice_warehouse::settings::{Start, WarehouseSettings};
use sluice_warehouse::shape::{shape_with, Row};
use tokio::sync::watch;

use crate::runner::PartitionWorker;

/// Events read at a time.
const READ_MAX: usize = 5_000;

/// Syncs kept in a warehouse's history (in memory, per node).
pub const SYNC_HISTORY: usize = 200;

/// The longest wait between two tries of a failed load.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One load, as the sync history shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sync {
    /// `load` (the consumer) or `replay` (a window replay).
    pub kind: &'static str,
    pub partition: u32,
    pub started_at: String,
    pub duration_ms: u64,
    /// Events whose rows the load held.
    pub events: u64,
    /// Rows written per `schema.table`.
    pub rows: BTreeMap<String, u64>,
    pub discards: u64,
    pub columns_added: u64,
    /// Why the load failed (it is tried again; its rows wait in the log).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A window replay of a warehouse, as `…/replays` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Replay {
    pub id: String,
    pub from: String,
    pub to: String,
    /// `running`, `finished` or `failed`.
    pub status: &'static str,
    pub events: u64,
    pub rows: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One warehouse destination as the server holds it.
pub struct Warehouse {
    pub settings: WarehouseSettings,
    syncs: Mutex<VecDeque<Sync>>,
    replays: Mutex<Vec<Replay>>,
}

impl Warehouse {
    pub fn new(settings: WarehouseSettings) -> Warehouse {
        Warehouse {
            settings,
            syncs: Mutex::default(),
            replays: Mutex::default(),
        }
    }

    /// The latest syncs, newest first.
    pub fn syncs(&self) -> Vec<Sync> {
        let syncs = self.syncs.lock().unwrap_or_else(|e| e.into_inner());
        syncs.iter().rev().cloned().collect()
    }

    fn record(&self, sync: Sync) {
        let mut syncs = self.syncs.lock().unwrap_or_else(|e| e.into_inner());
        if syncs.len() == SYNC_HISTORY {
            syncs.pop_front();
        }
        syncs.push_back(sync);
    }

    pub fn replays(&self) -> Vec<Replay> {
        self.replays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_replay(&self, replay: &Replay) {
        let mut all = self.replays.lock().unwrap_or_else(|e| e.into_inner());
        match all.iter_mut().find(|r| r.id == replay.id) {
            Some(r) => *r = replay.clone(),
            None => all.push(replay.clone()),
        }
    }

    /// Events of the log not yet loaded (committed), over all partitions.
    pub async fn lag(&self, log: &dyn EventLog) -> Result<u64, sluice_log::LogError> {
        let consumer = self.settings.consumer();
        let mut lag = 0;
        for p in 0..log.partitions() {
            let end = log.end_offset(p).await?;
            // Offsets start at 1; a cursor at the partition's start has every event waiting.
            let first = sluice_log::position(p, 1);
            let cursor = log.cursor(&consumer, p).await?.unwrap_or(first);
            lag += end.saturating_sub(cursor.max(first));
        }
        Ok(lag)
    }

    /// Whether every event before `ends` (one offset per partition) is loaded.
    pub async fn caught_up(&self, log: &dyn EventLog, ends: &[u64]) -> bool {
        let consumer = self.settings.consumer();
        for (p, end) in ends.iter().enumerate() {
            match log.cursor(&consumer, p as u32).await {
                Ok(Some(c)) if c >= *end => {}
                _ => return false,
            }
        }
        true
    }

    /// Deletes the rows of these users from every schema of this warehouse; the rows
    /// deleted.
    pub async fn erase(
        &self,
        user_ids: Vec<String>,
        anonymous_ids: Vec<String>,
    ) -> Result<u64, String> {
        let url = self.settings.url.clone();
        let schemas: Vec<String> = self.settings.schemas.values().cloned().collect();
        tokio::task::spawn_blocking(move || {
            let mut db = Postgres::connect(&url).map_err(|e| e.to_string())?;
            let mut n = 0;
            for schema in schemas {
                n += sluice_warehouse::load::Dialect::erase(
                    &mut db,
                    &schema,
                    &user_ids,
                    &anonymous_ids,
                )
                .map_err(|e| e.to_string())?;
            }
            Ok(n)
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// The latest discards of every schema of this warehouse, newest first.
    pub async fn latest_discards(
        &self,
        limit: u32,
    ) -> Result<Vec<sluice_warehouse::load::StoredDiscard>, String> {
        let url = self.settings.url.clone();
        let schemas: Vec<String> = self.settings.schemas.values().cloned().collect();
        tokio::task::spawn_blocking(move || {
            let mut db = Postgres::connect(&url).map_err(|e| e.to_string())?;
            let mut all = Vec::new();
            for schema in schemas {
                all.extend(
                    sluice_warehouse::load::Dialect::latest_discards(&mut db, &schema, limit)
                        .map_err(|e| e.to_string())?,
                );
            }
            all.sort_by(|a, b| b.loaded_at.cmp(&a.loaded_at));
            all.truncate(limit as usize);
            Ok(all)
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Loads again the events received in `[from_ms, to_ms)` (each `id` stays once: the
    /// merge replaces the rows loaded before). Runs in the background; follow it in
    /// [`Warehouse::replays`].
    pub fn replay(
        self: &Arc<Self>,
        log: Arc<dyn EventLog>,
        from_ms: i64,
        to_ms: i64,
        stop: watch::Receiver<bool>,
    ) -> Replay {
        let iso = |ms: i64| {
            chrono::DateTime::from_timestamp_millis(ms)
                .map(|t| sluice_spec::time::format_timestamp(&t))
                .unwrap_or_default()
        };
        let mut job = Replay {
            id: format!(
                "wr-{}-{}",
                self.settings.name,
                chrono::Utc::now().timestamp_millis()
            ),
            from: iso(from_ms),
            to: iso(to_ms),
            status: "running",
            events: 0,
            rows: 0,
            error: None,
        };
        self.set_replay(&job);
        let this = self.clone();
        let started = job.clone();
        tokio::spawn(async move {
            match this.run_replay(&log, from_ms, to_ms, &mut job, stop).await {
                Ok(()) => job.status = "finished",
                Err(e) => {
                    job.status = "failed";
                    job.error = Some(e);
                }
            }
            this.set_replay(&job);
        });
        started
    }

    async fn run_replay(
        &self,
        log: &Arc<dyn EventLog>,
        from_ms: i64,
        to_ms: i64,
        job: &mut Replay,
        stop: watch::Receiver<bool>,
    ) -> Result<(), String> {
        let mut db = Held(None);
        let mut names = Names::default();
        for p in 0..log.partitions() {
            let mut next = log.offset_at(p, from_ms).await.map_err(|e| e.to_string())?;
            let end = log.offset_at(p, to_ms).await.map_err(|e| e.to_string())?;
            while next < end {
                if *stop.borrow() {
                    return Err("the server stopped".into());
                }
                let events = log.read(next, READ_MAX).await.map_err(|e| e.to_string())?;
                let Some(last) = events.last() else { break };
                next = last.offset + 1;
                let mut batch = Batch::new();
                let mut events_n = 0;
                for e in events.iter().filter(|e| e.offset < end) {
                    if e.received_at_ms >= from_ms
                        && e.received_at_ms < to_ms
                        && self.take(&mut names, e, i64::MIN, &mut batch) > 0
                    {
                        events_n += 1;
                    }
                }
                if events_n == 0 {
                    continue;
                }
                let started = Instant::now();
                let started_at = sluice_spec::time::format_timestamp(&chrono::Utc::now());
                let (url, taken) = (self.settings.url.clone(), db.0.take());
                let (d, _, result) =
                    tokio::task::spawn_blocking(move || load_batch(taken, &url, batch))
                        .await
                        .map_err(|e| e.to_string())?;
                db.0 = d;
                match result {
                    Ok(loaded) => {
                        job.events += events_n;
                        job.rows += loaded.rows.values().sum::<u64>();
                        self.set_replay(job);
                        self.record(sync_of(
                            "replay",
                            p,
                            started_at,
                            started,
                            events_n,
                            Ok(&loaded),
                        ));
                    }
                    Err(e) => {
                        self.record(sync_of("replay", p, started_at, started, events_n, Err(&e)));
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Adds the rows of one stored event of this warehouse's sources to `batch`; the
    /// number of rows added.
    fn take(
        &self,
        names: &mut Names,
        e: &sluice_log::StoredEvent,
        not_before: i64,
        batch: &mut Batch,
    ) -> usize {
        let Some(schema) = self.settings.schemas.get(&e.source) else {
            return 0;
        };
        if e.received_at_ms < not_before {
            return 0;
        }
        let Ok(event) = serde_json::from_slice::<serde_json::Value>(&e.payload) else {
            return 0;
        };
        if !wanted(&event) {
            return 0;
        }
        let mut shaped = shape_with(names, &event);
        // Most events drop no key: the labelled counter is looked up only when one does.
        if !shaped.dropped.is_empty() {
            metrics::counter!("sluice_warehouse_dropped_keys_total", "warehouse" => self.settings.name.clone())
                .increment(shaped.dropped.len() as u64);
        }
        self.settings.select(&mut shaped.rows);
        let n = shaped.rows.len();
        batch.entry(schema.clone()).or_default().extend(shaped.rows);
        n
    }
}

fn sync_of(
    kind: &'static str,
    partition: u32,
    started_at: String,
    started: Instant,
    events: u64,
    result: Result<&Loaded, &String>,
) -> Sync {
    let mut sync = Sync {
        kind,
        partition,
        started_at,
        duration_ms: started.elapsed().as_millis() as u64,
        events,
        rows: BTreeMap::new(),
        discards: 0,
        columns_added: 0,
        error: None,
    };
    match result {
        Ok(l) => {
            sync.rows = l.rows.clone();
            sync.discards = l.discarded;
            sync.columns_added = l.columns_added;
        }
        Err(e) => sync.error = Some(e.clone()),
    }
    sync
}

/// Sets `sluice_warehouse_lag_events{warehouse}` (events not loaded yet) for each
/// warehouse; at each scrape of `/metrics`.
pub async fn record_lag(log: &dyn EventLog, warehouses: &[Arc<Warehouse>]) {
    for w in warehouses.iter().filter(|w| w.settings.enabled) {
        // A log that does not answer must not hold up a scrape.
        let lag = tokio::time::timeout(Duration::from_secs(1), w.lag(log)).await;
        if let Ok(Ok(lag)) = lag {
            metrics::gauge!("sluice_warehouse_lag_events", "warehouse" => w.settings.name.clone())
                .set(lag as f64);
        }
    }
}

/// Runs a warehouse's consumer until `stop` turns true.
pub async fn run(
    log: Arc<dyn EventLog>,
    warehouse: Arc<Warehouse>,
    appended: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
) {
    let consumer: Arc<str> = warehouse.settings.consumer().into();
    crate::runner::run(log, consumer, appended, stop, |worker| {
        run_partition(warehouse.clone(), worker)
    })
    .await;
}

/// Rows by schema.
type Batch = BTreeMap<String, Vec<Row>>;

/// A warehouse connection held by async code. The synchronous client blocks when it is
/// dropped (it says goodbye to the server), which must not happen on an async thread.
struct Held(Option<Postgres>);

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(db) = self.0.take() {
            std::thread::spawn(move || drop(db));
        }
    }
}

/// Rows waiting for their load, and the offset after the last event read.
struct Pending {
    rows: Batch,
    /// How many rows `rows` holds, and how many events they come from.
    count: usize,
    events: u64,
    since: Option<Instant>,
    next: u64,
}

impl Pending {
    fn at(next: u64) -> Pending {
        Pending {
            rows: Batch::new(),
            count: 0,
            events: 0,
            since: None,
            next,
        }
    }
}

/// A load under way on a blocking thread, and what it covers.
struct InFlight {
    task: tokio::task::JoinHandle<LoadResult>,
    load: Load,
}

/// What one load covers.
struct Load {
    /// The offset after the last event it holds (the cursor once it committed).
    next: u64,
    events: u64,
    count: usize,
    started: Instant,
    started_at: String,
}

type LoadResult = (Option<Postgres>, Batch, Result<Loaded, String>);

/// One partition of one warehouse. While a load runs in PostgreSQL the next batch is
/// read and shaped (one load at a time, so loads commit in log order and the cursor
/// follows them).
async fn run_partition(warehouse: Arc<Warehouse>, mut worker: PartitionWorker) {
    let settings = &warehouse.settings;
    let committed = loop {
        if worker.stopped() {
            return;
        }
        match start_cursor(&worker, settings).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %e, warehouse = %settings.name, "warehouse consumer cannot read its cursor; retrying");
                worker.pause().await;
            }
        }
    };
    // Events received before a `start` time are not the warehouse's (the log's position
    // for a time may hold a few earlier ones).
    let not_before = match settings.start {
        Start::At(ms) => ms,
        _ => i64::MIN,
    };
    let mut p = Partition {
        warehouse: warehouse.clone(),
        db: Held(None),
        pending: Pending::at(committed),
        committed,
        backoff: crate::runner::RETRY,
        names: Names::default(),
    };
    let mut inflight: Option<InFlight> = None;
    loop {
        if worker.stopped() {
            // A load under way ends in PostgreSQL anyway: take its outcome. What waits
            // otherwise is read again after the restart (its cursor is not committed).
            if let Some(f) = inflight.take() {
                let result = f.task.await;
                p.finish(&mut worker, f.load, result).await;
            }
            return;
        }
        if inflight.as_ref().is_some_and(|f| f.task.is_finished()) {
            let f = inflight.take().expect("checked");
            let result = f.task.await;
            if !p.settle(&mut worker, f.load, result).await {
                continue;
            }
        }
        worker.mark_seen();
        // Read on while the batch is not full; a full one waits for the load before it.
        let got_events = if p.pending.count < settings.batch_rows {
            match worker.log.read(p.pending.next, READ_MAX).await {
                Ok(events) => {
                    for e in &events {
                        p.pending.next = e.offset + 1;
                        let n = warehouse.take(&mut p.names, e, not_before, &mut p.pending.rows);
                        if n > 0 {
                            p.pending.since.get_or_insert_with(Instant::now);
                            p.pending.count += n;
                            p.pending.events += 1;
                        }
                    }
                    !events.is_empty()
                }
                Err(e) => {
                    tracing::warn!(error = %e, warehouse = %settings.name, "warehouse consumer cannot read the log; retrying");
                    worker.pause().await;
                    continue;
                }
            }
        } else {
            false
        };
        let due = p.pending.count >= settings.batch_rows
            || p.pending
                .since
                .is_some_and(|t| t.elapsed() >= settings.max_age);
        if p.pending.count > 0 && due {
            if let Some(f) = inflight.take() {
                let result = f.task.await;
                if !p.settle(&mut worker, f.load, result).await {
                    continue;
                }
            }
            let batch = std::mem::take(&mut p.pending.rows);
            let (url, taken) = (settings.url.clone(), p.db.0.take());
            inflight = Some(InFlight {
                task: tokio::task::spawn_blocking(move || load_batch(taken, &url, batch)),
                load: Load {
                    next: p.pending.next,
                    events: p.pending.events,
                    count: p.pending.count,
                    started: Instant::now(),
                    started_at: sluice_spec::time::format_timestamp(&chrono::Utc::now()),
                },
            });
            (p.pending.count, p.pending.events, p.pending.since) = (0, 0, None);
            continue;
        }
        if p.pending.count == 0 && inflight.is_none() && p.pending.next > p.committed {
            // Nothing of this warehouse's sources: move the cursor on.
            if worker
                .log
                .commit(&worker.consumer, p.pending.next)
                .await
                .is_ok()
            {
                p.committed = p.pending.next;
            }
        }
        if !got_events {
            let Some(f) = inflight.as_mut() else {
                worker.idle().await;
                continue;
            };
            // Wake when the load ends (its outcome taken here: a task's output is given
            // once) or when new events come.
            let ended = tokio::select! {
                result = &mut f.task => Some(result),
                _ = worker.idle() => None,
            };
            if let Some(result) = ended {
                let f = inflight.take().expect("in flight");
                p.settle(&mut worker, f.load, result).await;
            }
        }
    }
}

/// A partition worker's state beside the load in flight.
struct Partition {
    warehouse: Arc<Warehouse>,
    db: Held,
    pending: Pending,
    committed: u64,
    backoff: Duration,
    names: Names,
}

impl Partition {
    /// [`Partition::finish`], then, when the load failed, the backoff before the next
    /// try. `false` when it failed.
    async fn settle(
        &mut self,
        worker: &mut PartitionWorker,
        load: Load,
        result: Result<LoadResult, tokio::task::JoinError>,
    ) -> bool {
        if self.finish(worker, load, result).await {
            return true;
        }
        worker.pause_for(self.backoff).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        false
    }

    /// Takes a load's outcome: on success, records it and commits the cursor after its
    /// events; on failure, records it and puts its rows back before the ones read since
    /// (the next load holds both). `false` when the load failed.
    async fn finish(
        &mut self,
        worker: &mut PartitionWorker,
        load: Load,
        result: Result<LoadResult, tokio::task::JoinError>,
    ) -> bool {
        let Load {
            next,
            events,
            count,
            started,
            started_at,
        } = load;
        let name = &self.warehouse.settings.name;
        let p = worker.partition;
        match result {
            Ok((d, _, Ok(loaded))) => {
                self.db.0 = d;
                self.backoff = crate::runner::RETRY;
                self.warehouse
                    .record(sync_of("load", p, started_at, started, events, Ok(&loaded)));
                metrics::counter!("sluice_warehouse_rows_total", "warehouse" => name.clone())
                    .increment(loaded.rows.values().sum());
                metrics::counter!("sluice_warehouse_discards_total", "warehouse" => name.clone())
                    .increment(loaded.discarded);
                match worker.log.commit(&worker.consumer, next).await {
                    Ok(()) => self.committed = next,
                    Err(e) => {
                        tracing::warn!(error = %e, warehouse = %name, "warehouse consumer cannot commit its cursor")
                    }
                }
                true
            }
            Ok((d, batch, Err(error))) => {
                self.db.0 = d;
                metrics::counter!("sluice_warehouse_load_failures_total", "warehouse" => name.clone())
                    .increment(1);
                self.warehouse
                    .record(sync_of("load", p, started_at, started, events, Err(&error)));
                for (schema, mut rows) in batch {
                    let newer = self.pending.rows.remove(&schema).unwrap_or_default();
                    rows.extend(newer);
                    self.pending.rows.insert(schema, rows);
                }
                self.pending.count += count;
                self.pending.events += events;
                // Due again as soon as the backoff ends.
                let max_age = self.warehouse.settings.max_age;
                self.pending.since = Some(Instant::now().checked_sub(max_age).unwrap_or(started));
                static QUIET: sluice_log::throttle::Throttle = sluice_log::throttle::Throttle::new(
                    sluice_log::throttle::STORAGE_WARNING_EVERY,
                );
                if let Some(skipped) = QUIET.allow() {
                    tracing::warn!(%error, warehouse = %name, skipped, retry_in_s = self.backoff.as_secs(), "warehouse load failed; retrying");
                }
                false
            }
            Err(e) => {
                tracing::error!(error = %e, warehouse = %name, "warehouse load task failed; reading again");
                self.pending = Pending::at(self.committed);
                false
            }
        }
    }
}

/// The committed cursor, or, for a warehouse that has none yet, where its `start` says
/// (committed at once, so that a restart keeps that start).
async fn start_cursor(
    worker: &PartitionWorker,
    warehouse: &WarehouseSettings,
) -> Result<u64, sluice_log::LogError> {
    let (log, p) = (&worker.log, worker.partition);
    if let Some(c) = log.cursor(&worker.consumer, p).await? {
        return Ok(c);
    }
    let c = match warehouse.start {
        Start::Beginning => sluice_log::position(p, 0),
        Start::Now => log.end_offset(p).await?,
        Start::At(ms) => log.offset_at(p, ms).await?,
    };
    log.commit(&worker.consumer, c).await?;
    Ok(c)
}

/// Loads a batch on a connection, opening one when there is none; gives back the
/// connection (while it works) and the batch, for a retry when the load failed. Rows
/// are counted per `schema.table`.
fn load_batch(
    db: Option<Postgres>,
    url: &str,
    batch: Batch,
) -> (Option<Postgres>, Batch, Result<Loaded, String>) {
    let mut db = match db {
        Some(d) if !d.is_closed() => d,
        _ => match Postgres::connect(url) {
            Ok(d) => d,
            Err(e) => return (None, batch, Err(e.to_string())),
        },
    };
    let mut loaded = Loaded::default();
    for (schema, rows) in &batch {
        match sluice_warehouse::load::load(&mut db, schema, rows) {
            Ok(mut l) => {
                l.rows = l
                    .rows
                    .into_iter()
                    .map(|(t, n)| (format!("{schema}.{t}"), n))
                    .collect();
                loaded.add(l);
            }
            Err(e) => return (Some(db), batch, Err(e.to_string())),
        }
    }
    (Some(db), batch, Ok(loaded))
}

/// Segment's `integrations` rule for warehouses: `{"Warehouses": {"all": false}}`, or
/// `"Warehouses": false`, or `"All": false` without `"Warehouses": true`, keeps the event
/// out.
fn wanted(event: &serde_json::Value) -> bool {
    let Some(i) = event.get("integrations").and_then(|i| i.as_object()) else {
        return true;
    };
    match i.get("Warehouses") {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::Object(w)) => {
            w.get("all").and_then(|a| a.as_bool()).unwrap_or(true)
        }
        _ => i.get("All").and_then(|a| a.as_bool()).unwrap_or(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integrations_can_keep_an_event_out_of_warehouses() {
        assert!(wanted(&json!({})));
        assert!(wanted(&json!({"integrations": {"Mixpanel": false}})));
        assert!(!wanted(&json!({"integrations": {"Warehouses": false}})));
        assert!(!wanted(
            &json!({"integrations": {"Warehouses": {"all": false}}})
        ));
        assert!(wanted(
            &json!({"integrations": {"Warehouses": {"all": true}}})
        ));
        assert!(!wanted(&json!({"integrations": {"All": false}})));
        assert!(wanted(
            &json!({"integrations": {"All": false, "Warehouses": true}})
        ));
    }
}
