//! The admin API of warehouses (under `/admin/v1`, behind the admin token; documented in
//! `docs/api.md`): each warehouse with its lag and last sync, its sync history, and its
//! window replays (started through `POST /destinations/{name}/replay`, as for any
//! destination, so `sluice replay` works for a warehouse too).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use sluice_consumers::warehouse::Warehouse;

use crate::error::ApiError;
use crate::App;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/warehouses", get(list))
        .route("/warehouses/{name}", get(show))
        .route("/warehouses/{name}/syncs", get(syncs))
}

/// The warehouse of this name.
pub(crate) fn find<'a>(app: &'a App, name: &str) -> Option<&'a Arc<Warehouse>> {
    app.warehouses.iter().find(|w| w.settings.name == name)
}

fn get_one<'a>(app: &'a App, name: &str) -> Result<&'a Arc<Warehouse>, ApiError> {
    find(app, name).ok_or_else(|| ApiError::not_found(format!("no warehouse named `{name}`")))
}

async fn summary(app: &App, w: &Warehouse) -> Value {
    let s = &w.settings;
    let lag = w.lag(app.log.as_ref()).await.ok();
    json!({
        "name": s.name,
        "enabled": s.enabled,
        "sources": s.sources,
        "schemas": s.schemas,
        "batchRows": s.batch_rows,
        "maxAgeSeconds": s.max_age.as_secs_f64(),
        "lagEvents": lag,
        "lastSync": w.syncs().into_iter().next(),
    })
}

async fn list(State(app): State<Arc<App>>) -> Json<Value> {
    let mut data = Vec::new();
    for w in &app.warehouses {
        data.push(summary(&app, w).await);
    }
    Json(json!({ "data": data }))
}

async fn show(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let w = get_one(&app, &name)?;
    Ok(Json(summary(&app, w).await))
}

async fn syncs(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let w = get_one(&app, &name)?;
    Ok(Json(json!({ "data": w.syncs() })))
}
