//! The admin API of warehouses (under `/admin/v1`, behind the admin token; documented in
//! `docs/api.md`): each warehouse with its lag and last sync, its sync history, and its
//! window replays (started through `POST /destinations/{name}/replay`, as for any
//! destination, so `sluice replay` works for a warehouse too), and its latest discards
//! (read from the warehouse's `sluice_discards` tables).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
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
        .route("/warehouses/{name}/discards", get(discards))
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

/// `?limit=` (1–1000, default 50): the latest discards over the warehouse's schemas.
async fn discards(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(q): Query<crate::admin::LimitQuery>,
) -> Result<Json<Value>, ApiError> {
    let w = get_one(&app, &name)?;
    let limit = crate::admin::limit_or(&q, 50)? as u32;
    let found = w.latest_discards(limit).await.map_err(|e| {
        ApiError::unavailable(format!(
            "cannot read the discards of warehouse `{name}`: {e}"
        ))
    })?;
    let data: Vec<Value> = found
        .into_iter()
        .map(|d| {
            json!({
                "schema": d.schema,
                "table": d.table,
                "column": d.column,
                "rowId": d.row_id,
                "value": d.value,
                "reason": d.reason,
                "receivedAt": d.received_at,
                "loadedAt": d.loaded_at,
            })
        })
        .collect();
    Ok(Json(json!({ "data": data })))
}
