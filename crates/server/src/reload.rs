//! Reloading the configuration file without a restart (`SIGHUP`, or `POST
//! /admin/v1/reload`): the file is read and checked as `sluice check` does, and only a
//! file that passes is applied; otherwise the error is answered and everything runs on
//! as it was.
//!
//! What changes live: the file's sources (write keys, names, kinds, rate limits, …: a
//! source whose settings did not change keeps its state), `[limits]` (requests read them
//! once each) and the file's destinations (a
//! changed one restarts from its committed cursor, an unchanged one is not touched, one
//! removed from the file stops with its cursor kept). What needs a restart is reported by
//! name (the listeners, the data directory, the stores, limits, …): the binary compares
//! those with the file the server started with.
//!
//! No accepted event is lost across a reload: ingest keeps appending to the same log, and
//! a restarted destination resumes from its cursor, so what its old consumer had in
//! flight is at most sent again.

use std::sync::Arc;

use serde_json::{json, Value};
use sluice_destinations::DestinationConfig;
use sluice_ingest::SourceSettings;

use crate::App;

/// The file, read and checked again.
pub struct Reloaded {
    pub sources: Vec<SourceSettings>,
    /// `[limits]`: requests from the reload on are held to them.
    pub limits: sluice_spec::Limits,
    /// Its destinations the router runs (not warehouses).
    pub destinations: Vec<DestinationConfig>,
    /// Settings that changed but apply only at a restart, by name (`listen`, `limits`, …).
    pub restart_needed: Vec<String>,
}

/// Reads and checks the file: the error is the one `sluice check` gives.
pub type Reloader = Arc<dyn Fn() -> Result<Reloaded, String> + Send + Sync>;

impl App {
    /// How the file is read again (once, by the binary that has the file).
    pub fn set_reloader(&self, reloader: Reloader) {
        let _ = self.reloader.set(reloader);
    }

    /// The configuration file's sources as last loaded.
    pub fn file_sources(&self) -> std::sync::RwLockReadGuard<'_, Vec<SourceSettings>> {
        self.file_sources.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads the file again and applies it: what changed, or why nothing did.
pub async fn reload(app: &Arc<App>) -> Result<Value, String> {
    let _one = app.reloading.lock().await;
    let Some(reloader) = app.reloader.get().cloned() else {
        return Err(
            "the server runs without a configuration file (--config): there is nothing to reload"
                .into(),
        );
    };
    let new = tokio::task::spawn_blocking(move || reloader())
        .await
        .map_err(|e| format!("reading the configuration failed: {e}"))??;
    // The destinations are checked against every source they may name (the file's new
    // ones and the admin API's) before anything changes.
    let api = crate::source_api::api_source_names(app)
        .await
        .map_err(|e| e.message)?;
    let mut names: Vec<String> = new.sources.iter().map(|s| s.name.clone()).collect();
    for n in api {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    let before: Vec<SourceSettings> = app.file_sources().clone();
    let (added, changed, removed) = match app.destinations.get() {
        Some(router) => router
            .reload_file(new.destinations, names)
            .await
            .map_err(|e| format!("the configuration's destinations: {e}"))?,
        None => (Vec::new(), Vec::new(), Vec::new()),
    };
    let source_names =
        |list: &[SourceSettings]| -> Vec<String> { list.iter().map(|s| s.name.clone()).collect() };
    let sources_changed: Vec<String> = new
        .sources
        .iter()
        .filter(|s| !before.contains(s))
        .map(|s| s.name.clone())
        .collect();
    let sources_removed: Vec<String> = source_names(&before)
        .into_iter()
        .filter(|n| !new.sources.iter().any(|s| &s.name == n))
        .collect();
    // A Kafka source's consumer starts with the server: a change to one applies at a
    // restart (its other sources change now).
    let mut restart_needed = new.restart_needed;
    for name in sources_changed.iter().chain(&sources_removed) {
        let kafka =
            |list: &[SourceSettings]| list.iter().any(|s| &s.name == name && s.kafka().is_some());
        if kafka(&before) || kafka(&new.sources) {
            restart_needed.push(format!("sources ({name}: a Kafka source)"));
        }
    }
    let limits_changed = *app.ingest.limits() != new.limits;
    app.ingest.set_limits(new.limits);
    *app.file_sources.write().unwrap_or_else(|e| e.into_inner()) = new.sources;
    crate::source_api::apply(app).await.map_err(|e| e.message)?;
    let report = json!({
        "sources": {"changed": sources_changed, "removed": sources_removed},
        "destinations": {"added": added, "changed": changed, "removed": removed},
        "limits_changed": limits_changed,
        "restart_needed": restart_needed,
    });
    tracing::info!(
        sources_changed = report["sources"]["changed"].to_string(),
        sources_removed = report["sources"]["removed"].to_string(),
        destinations_added = report["destinations"]["added"].to_string(),
        destinations_changed = report["destinations"]["changed"].to_string(),
        destinations_removed = report["destinations"]["removed"].to_string(),
        restart_needed = report["restart_needed"].to_string(),
        "configuration reloaded"
    );
    Ok(report)
}

/// `POST /admin/v1/reload`: 200 with what changed, or 400 `invalid_config` with why
/// nothing did.
pub(crate) async fn reload_route(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
) -> Result<axum::Json<Value>, crate::error::ApiError> {
    match reload(&app).await {
        Ok(report) => Ok(axum::Json(json!({"data": report}))),
        Err(why) => {
            tracing::warn!("configuration reload refused; the running configuration stays: {why}");
            Err(crate::error::ApiError::bad_request("invalid_config", why))
        }
    }
}
