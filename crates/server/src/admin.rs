//! The admin API under `/admin/v1`, protected by the admin bearer token.
//! Documented in `docs/api.md`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use crate::error::ApiError;
use sluice_ingest::Source;

use crate::access::{Actor, Role};
use crate::App;

const MAX_LIMIT: usize = 1000;

pub fn routes(app: Arc<App>) -> Router<Arc<App>> {
    Router::new()
        .route("/sources/{name}/events", get(source_events))
        .route("/sources/{name}/rejected", get(source_rejected))
        .route("/sources/{name}/live", get(source_live))
        .route("/reload", axum::routing::post(crate::reload::reload_route))
        .merge(crate::delivery_api::routes())
        .merge(crate::privacy::routes())
        .merge(crate::warehouse_api::routes())
        .merge(crate::access::routes())
        .merge(crate::console::admin_routes())
        .merge(crate::source_api::routes())
        .fallback(|| async { ApiError::not_found("no such admin endpoint") })
        .layer(axum::middleware::from_fn_with_state(
            app,
            crate::access::authenticate,
        ))
}

/// `/metrics`: open when `[http] public_metrics` (by default on a loopback listener),
/// otherwise behind the admin token like the admin API (Prometheus: `authorization` with
/// `credentials`).
pub(crate) async fn metrics_token(
    State(app): State<Arc<App>>,
    req: Request,
    next: Next,
) -> Response {
    if app.settings.http.public_metrics {
        return next.run(req).await;
    }
    crate::access::authenticate(State(app), req, next).await
}

/// The admin token of a request: `Authorization: Bearer <token>`, or `?token=` for
/// browsers' EventSource, which cannot set headers. `None` when it carries none; an error
/// when the one it carries is wrong.
pub(crate) fn token_actor(app: &App, req: &Request) -> Option<Result<Actor, ApiError>> {
    let header_token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .map(str::to_owned);
    // Percent-decoded, as every query value: a token with `+` or `%` in it arrives encoded.
    let query_token = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    });
    let given = header_token.or(query_token)?;
    if !sluice_ingest::constant_time_eq(given.as_bytes(), app.settings.admin_token.as_bytes()) {
        return Some(Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_admin_token",
            "the admin token is wrong",
        )));
    }
    Some(Ok(Actor {
        name: "token".into(),
        role: Role::Admin,
        session: None,
    }))
}

#[derive(Deserialize)]
pub(crate) struct LimitQuery {
    limit: Option<String>,
}

fn parse_limit(q: &LimitQuery) -> Result<usize, ApiError> {
    limit_or(q, 20)
}

/// `?limit=` from 1 to 1000; `default` when absent; 400 `invalid_limit` otherwise.
pub(crate) fn limit_or(q: &LimitQuery, default: usize) -> Result<usize, ApiError> {
    match &q.limit {
        None => Ok(default),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError {
                field: Some("limit".into()),
                ..ApiError::bad_request(
                    "invalid_limit",
                    format!("limit must be an integer from 1 to {MAX_LIMIT}, not {s:?}"),
                )
            }),
        },
    }
}

pub(crate) fn source(app: &App, name: &str) -> Result<Arc<Source>, ApiError> {
    app.ingest
        .source(name)
        .ok_or_else(|| ApiError::not_found(format!("no source named {name:?}")))
}

async fn source_events(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(q): Query<LimitQuery>,
) -> Result<Response, ApiError> {
    let limit = parse_limit(&q)?;
    source(&app, &name)?;
    let events = app
        .log
        .recent(&name, limit)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let data: Vec<Value> = events
        .into_iter()
        .map(|e| {
            let event = String::from_utf8(e.payload)
                .ok()
                .and_then(|s| RawValue::from_string(s).ok())
                .map(|raw| serde_json::to_value(raw).unwrap_or(Value::Null))
                .unwrap_or(Value::Null);
            json!({
                "offset": e.offset,
                "messageId": e.message_id,
                "event": event,
            })
        })
        .collect();
    Ok(Json(json!({ "data": data })).into_response())
}

async fn source_rejected(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(q): Query<LimitQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = parse_limit(&q)?;
    source(&app, &name)?;
    let records = app
        .store
        .rejected(&name, limit)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let data: Vec<Value> = records
        .into_iter()
        .map(|r| {
            json!({
                "id": r.id,
                "receivedAt": chrono::DateTime::from_timestamp_millis(r.received_at_ms)
                    .map(|t| sluice_spec::time::format_timestamp(&t)),
                "index": r.index,
                "messageId": r.message_id,
                "code": r.code,
                "field": r.field,
                "reason": r.reason,
                "raw": r.raw,
            })
        })
        .collect();
    Ok(Json(json!({ "data": data })))
}

/// The source debugger: every event the source accepts from now on, as Server-Sent
/// Events (`event: track` etc., `id:` the log offset, `data:` the stored JSON). A slow
/// reader that falls more than 1,024 events behind gets an `event: lagged` with the
/// number skipped; the stream ends when the server shuts down.
async fn source_live(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    source(&app, &name)?;
    let rx = app.ingest.live.subscribe();
    let shutdown = app.shutdown.clone();
    let stream = futures_util::stream::unfold(
        (rx, shutdown, name, true),
        |(mut rx, mut shutdown, name, first)| async move {
            if first {
                let hello = SseEvent::default().comment(format!("live events of source {name}"));
                return Some((Ok(hello), (rx, shutdown, name, false)));
            }
            loop {
                if *shutdown.borrow() {
                    return None;
                }
                tokio::select! {
                    _ = shutdown.changed() => return None,
                    msg = rx.recv() => match msg {
                        Ok(ev) if &*ev.source == name.as_str() => {
                            let text = String::from_utf8_lossy(&ev.payload).into_owned();
                            let kind = serde_json::from_str::<Value>(&text)
                                .ok()
                                .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_owned))
                                .unwrap_or_else(|| "event".into());
                            let sse = SseEvent::default().event(kind).id(ev.offset.to_string()).data(text);
                            return Some((Ok(sse), (rx, shutdown, name, false)));
                        }
                        Ok(_) => continue,
                        Err(RecvError::Lagged(n)) => {
                            let sse = SseEvent::default().event("lagged").data(json!({"skipped": n}).to_string());
                            return Some((Ok(sse), (rx, shutdown, name, false)));
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
