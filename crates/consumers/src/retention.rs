//! Retention: on a timer, deletes what has outlived its setting: log events past the
//! log's retention, refused-item records, delivery records and dead letters, and the
//! profile store's references to events that are gone (profiles keep their identifiers
//! and traits).

use std::sync::Arc;
use std::time::Duration;

use sluice_log::EventLog;
use sluice_store::Store;

/// What retention works on, and its clocks.
pub struct Retention {
    pub log: Arc<dyn EventLog>,
    pub store: Arc<dyn Store>,
    /// How often it runs.
    pub interval: Duration,
    /// How long refused-item records are kept.
    pub rejected: Duration,
    /// How long delivery records and dead letters are kept.
    pub deliveries: Duration,
}

/// Runs until the task is aborted.
pub async fn run(r: Retention) {
    let mut tick = tokio::time::interval(r.interval);
    loop {
        tick.tick().await;
        let now = chrono::Utc::now().timestamp_millis();
        match r.log.enforce_retention(now).await {
            Ok(n) if n > 0 => tracing::info!(deleted = n, "log retention"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "log retention failed"),
        }
        let before = now - r.rejected.as_millis() as i64;
        if let Err(e) = r.store.prune_rejected(before).await {
            tracing::warn!(error = %e, "pruning rejected records failed");
        }
        // Delivery records go with their events; dead letters keep their own clock.
        let before = now - r.deliveries.as_millis() as i64;
        for p in 0..r.log.partitions() {
            let oldest_kept = match r.log.offset_at(p, before).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(error = %e, partition = p, "cannot find the retention offset");
                    continue;
                }
            };
            let gone = sluice_log::position(p, 0)..oldest_kept;
            if let Err(e) = r.store.prune_deliveries(gone.clone(), before).await {
                tracing::warn!(error = %e, "pruning delivery records failed");
            }
            // Profiles keep their identifiers and traits; event references go with the
            // events.
            if let Err(e) = r.store.prune_profile_events(gone).await {
                tracing::warn!(error = %e, "pruning profile event references failed");
            }
        }
    }
}
