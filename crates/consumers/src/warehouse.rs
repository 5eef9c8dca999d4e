//! The warehouse consumer: one more consumer of the log per warehouse destination. Each
//! partition's worker reads its sources' events from the cursor, shapes them into
//! Segment's rows (`sluice_warehouse::shape`), and loads them (`sluice_warehouse::load`)
//! once `batch_rows` rows wait or the oldest has waited `max_age`; the cursor is committed
//! only after the load has committed, so a crash or a failed load reads the same events
//! again, and the merge on `id` keeps each event once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use sluice_log::EventLog;
use sluice_warehouse::load::Loaded;
use sluice_warehouse::settings::{Start, WarehouseSettings};
use sluice_warehouse::shape::{shape, Row};
use tokio::sync::watch;

use crate::runner::PartitionWorker;

/// Events read at a time.
const READ_MAX: usize = 5_000;

/// Runs a warehouse's consumer until `stop` turns true.
pub async fn run(
    log: Arc<dyn EventLog>,
    warehouse: Arc<WarehouseSettings>,
    appended: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
) {
    let consumer: Arc<str> = warehouse.consumer().into();
    crate::runner::run(log, consumer, appended, stop, |worker| {
        run_partition(warehouse.clone(), worker)
    })
    .await;
}

/// Rows by schema.
type Batch = BTreeMap<String, Vec<Row>>;

/// Rows waiting for their load, and the offset after the last event read.
struct Pending {
    rows: Batch,
    /// How many rows `rows` holds.
    count: usize,
    since: Option<Instant>,
    next: u64,
}

async fn run_partition(warehouse: Arc<WarehouseSettings>, mut worker: PartitionWorker) {
    let committed = loop {
        if worker.stopped() {
            return;
        }
        match start_cursor(&worker, &warehouse).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %e, warehouse = %warehouse.name, "warehouse consumer cannot read its cursor; retrying");
                worker.pause().await;
            }
        }
    };
    // Events received before a `start` time are not the warehouse's (the log's position
    // for a time may hold a few earlier ones).
    let not_before = match warehouse.start {
        Start::At(ms) => ms,
        _ => i64::MIN,
    };
    let name = warehouse.name.clone();
    let rows_total = metrics::counter!("sluice_warehouse_rows_total", "warehouse" => name.clone());
    let discards_total =
        metrics::counter!("sluice_warehouse_discards_total", "warehouse" => name.clone());
    let dropped_total =
        metrics::counter!("sluice_warehouse_dropped_keys_total", "warehouse" => name.clone());
    let mut client: Option<postgres::Client> = None;
    let mut pending = Pending {
        rows: Batch::new(),
        count: 0,
        since: None,
        next: committed,
    };
    let mut committed = committed;
    loop {
        if worker.stopped() {
            // What waits is read again after the restart: its cursor is not committed.
            return;
        }
        worker.mark_seen();
        let read = worker.log.read(pending.next, READ_MAX).await;
        let got_events = match read {
            Ok(events) => {
                for e in &events {
                    pending.next = e.offset + 1;
                    let Some(schema) = warehouse.schemas.get(&e.source) else {
                        continue;
                    };
                    if e.received_at_ms < not_before {
                        continue;
                    }
                    let Ok(event) = serde_json::from_slice::<serde_json::Value>(&e.payload) else {
                        continue;
                    };
                    if !wanted(&event) {
                        continue;
                    }
                    let mut shaped = shape(&event);
                    dropped_total.increment(shaped.dropped.len() as u64);
                    warehouse.select(&mut shaped.rows);
                    if !shaped.rows.is_empty() && pending.since.is_none() {
                        pending.since = Some(Instant::now());
                    }
                    pending.count += shaped.rows.len();
                    pending
                        .rows
                        .entry(schema.clone())
                        .or_default()
                        .extend(shaped.rows);
                }
                !events.is_empty()
            }
            Err(e) => {
                tracing::warn!(error = %e, warehouse = %name, "warehouse consumer cannot read the log; retrying");
                worker.pause().await;
                continue;
            }
        };
        let due = pending.count >= warehouse.batch_rows
            || pending
                .since
                .is_some_and(|t| t.elapsed() >= warehouse.max_age)
            || worker.stopped();
        if pending.count > 0 && due {
            let batch = std::mem::take(&mut pending.rows);
            let (url, taken) = (warehouse.url.clone(), client.take());
            let result = tokio::task::spawn_blocking(move || load_batch(taken, &url, batch)).await;
            match result {
                Ok((c, _, Ok(loaded))) => {
                    client = c;
                    rows_total.increment(loaded.rows.values().sum());
                    discards_total.increment(loaded.discarded);
                    (pending.count, pending.since) = (0, None);
                    if let Err(e) = worker.log.commit(&worker.consumer, pending.next).await {
                        tracing::warn!(error = %e, warehouse = %name, "warehouse consumer cannot commit its cursor");
                    } else {
                        committed = pending.next;
                    }
                }
                Ok((c, batch, Err(error))) => {
                    client = c;
                    pending.rows = batch;
                    static QUIET: sluice_log::throttle::Throttle =
                        sluice_log::throttle::Throttle::new(
                            sluice_log::throttle::STORAGE_WARNING_EVERY,
                        );
                    if let Some(skipped) = QUIET.allow() {
                        tracing::warn!(%error, warehouse = %name, skipped, "warehouse load failed; retrying");
                    }
                    worker.pause().await;
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, warehouse = %name, "warehouse load task failed; reading again");
                    pending = Pending {
                        rows: Batch::new(),
                        count: 0,
                        since: None,
                        next: committed,
                    };
                    continue;
                }
            }
        } else if pending.count == 0 && pending.next > committed {
            // Nothing of this warehouse's sources: move the cursor on.
            if worker
                .log
                .commit(&worker.consumer, pending.next)
                .await
                .is_ok()
            {
                committed = pending.next;
            }
        }
        if !got_events {
            worker.idle().await;
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
/// connection (while it works) and the batch, for a retry when the load failed.
fn load_batch(
    client: Option<postgres::Client>,
    url: &str,
    batch: Batch,
) -> (Option<postgres::Client>, Batch, Result<Loaded, String>) {
    let mut c = match client {
        Some(c) if !c.is_closed() => c,
        _ => match postgres::Client::connect(url, postgres::NoTls) {
            Ok(c) => c,
            Err(e) => return (None, batch, Err(format!("cannot connect: {e}"))),
        },
    };
    let mut loaded = Loaded::default();
    for (schema, rows) in &batch {
        match sluice_warehouse::load::load(&mut c, schema, rows) {
            Ok(l) => {
                loaded.discarded += l.discarded;
                for (t, n) in l.rows {
                    *loaded.rows.entry(t).or_default() += n;
                }
            }
            Err(e) => return (Some(c), batch, Err(e.to_string())),
        }
    }
    (Some(c), batch, Ok(loaded))
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
