//! The admin API of destinations (under `/admin/v1`, behind the admin token; documented
//! in `docs/api.md`): configuration, Event Delivery reports, the Event Tester, dead
//! letters and their replay, log-window replay, and one event's journey.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use sluice_destinations::{DestinationConfig, Router as Destinations};
use sluice_store::{DeadLetter, DeadLetterFilter};

use crate::access::{self, Actor};
use crate::error::ApiError;
use crate::tracking::BodyBytes;
use crate::App;

const MAX_LIMIT: usize = 1000;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/destinations", get(list))
        .route("/destinations/{name}", get(show).put(put).delete(delete))
        .route("/destinations/{name}/delivery", get(delivery))
        .route("/destinations/{name}/test", post(test))
        .route("/destinations/{name}/preview", post(preview))
        .route("/destinations/{name}/dead-letters", get(dead_letters))
        .route(
            "/destinations/{name}/dead-letters/replay",
            post(replay_dead_letters),
        )
        .route("/destinations/{name}/replay", post(replay_window))
        .route("/destinations/{name}/replays", get(replays))
        .route("/events/{message_id}", get(journey))
}

fn router(app: &App) -> Result<&Arc<Destinations>, ApiError> {
    app.destinations
        .get()
        .ok_or_else(|| ApiError::unavailable("routing is not running"))
}

/// A JSON body, with a precise error when it is not one.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    what: &str,
) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_body",
            format!("the body is not a valid {what}: {e}"),
        )
    })
}

async fn list(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "data": router(&app)?.list() })))
}

/// A destination's version as an entity tag: a hash of how the API shows it. A change
/// sent with `If-Match` is refused when the destination changed since it was read.
fn etag(shown: &Value) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(shown.to_string().as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// 412 when the request's `If-Match` names another version than `current` (`None`: the
/// destination does not exist).
fn check_if_match(headers: &HeaderMap, current: Option<&Value>) -> Result<(), ApiError> {
    let Some(wanted) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    if wanted.trim() == "*" && current.is_some() {
        return Ok(());
    }
    if current.map(etag).as_deref() == Some(wanted.trim()) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        "stale_version",
        "the destination was changed (or removed) since it was read: reload it and try again",
    ))
}

async fn show(State(app): State<Arc<App>>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let shown = json!(router(&app)?.get(&name)?);
    let tag = etag(&shown);
    let mut r = Json(shown).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&tag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    Ok(r)
}

async fn put(
    State(app): State<Arc<App>>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(name): Path<String>,
    headers: HeaderMap,
    BodyBytes(body): BodyBytes,
) -> Result<Response, ApiError> {
    let mut raw: Value = json_body(&body, "JSON object")?;
    let Some(obj) = raw.as_object_mut() else {
        return Err(ApiError::bad_request(
            "invalid_body",
            "the body must be a JSON object",
        ));
    };
    match obj.get("name") {
        None => {
            obj.insert("name".into(), json!(name));
        }
        Some(Value::String(n)) if *n == name => {}
        Some(other) => {
            return Err(ApiError {
                field: Some("name".into()),
                ..ApiError::bad_request(
                    "name_mismatch",
                    format!("the body names destination {other}, the URL {name:?}"),
                )
            })
        }
    }
    let cfg: DestinationConfig = serde_json::from_value(raw).map_err(|e| {
        ApiError::bad_request("invalid_destination", format!("invalid destination: {e}"))
    })?;
    if crate::warehouse_api::find(&app, &name).is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "managed_by_file",
            format!("destination `{name}` is a warehouse configured in the config file; change it there"),
        ));
    }
    if cfg.kind == sluice_warehouse::settings::KIND {
        return Err(ApiError {
            field: Some("type".into()),
            ..ApiError::bad_request(
                "invalid_destination",
                "warehouse destinations are configured in sluice.toml (docs/configuration.md, \"Warehouses\"); the admin API does not create them",
            )
        });
    }
    let r = router(&app)?;
    let before = r.get(&name).ok().map(|d| json!(d));
    check_if_match(&headers, before.as_ref())?;
    let created = r.put(cfg).await?;
    let after = json!(r.get(&name)?);
    let (status, action) = if created {
        (StatusCode::CREATED, "create")
    } else {
        (StatusCode::OK, "update")
    };
    // Shown as the API shows it: shared secrets masked.
    access::audit(
        &app,
        &actor,
        action,
        "destination",
        &name,
        before.as_ref(),
        Some(&after),
    )
    .await;
    let tag = etag(&after);
    let mut r = (status, Json(after)).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&tag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    Ok(r)
}

async fn delete(
    State(app): State<Arc<App>>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let r = router(&app)?;
    let before = r.get(&name).ok().map(|d| json!(d));
    check_if_match(&headers, before.as_ref())?;
    r.delete(&name).await?;
    access::audit(
        &app,
        &actor,
        "delete",
        "destination",
        &name,
        before.as_ref(),
        None,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

async fn delivery(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(router(&app)?.delivery(&name).await?))
}

/// Body: empty (a sample track event), `{"event": {...}}`, or the event itself.
async fn test(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    BodyBytes(body): BodyBytes,
) -> Result<Json<Value>, ApiError> {
    let event = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let v: Value = json_body(&body, "JSON object")?;
        match v.get("event") {
            Some(e) if e.is_object() => Some(e.clone()),
            _ => Some(v),
        }
    };
    Ok(Json(router(&app)?.test(&name, event).await?))
}

/// Body: the event (or `{"event": {...}}`). Nothing is sent.
async fn preview(
    State(app): State<Arc<App>>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(name): Path<String>,
    BodyBytes(body): BodyBytes,
) -> Result<Json<Value>, ApiError> {
    let mut v: Value = json_body(&body, "JSON object (the event)")?;
    // `{"event", "config"}`: the preview of a configuration not saved yet.
    let candidate = match v.as_object_mut().and_then(|o| o.remove("config")) {
        Some(mut c) => {
            if let Some(o) = c.as_object_mut() {
                o.insert("name".into(), json!(name));
                for shown_only in ["managed_by", "state", "error"] {
                    o.remove(shown_only);
                }
            }
            Some(
                serde_json::from_value::<DestinationConfig>(c).map_err(|e| ApiError {
                    field: Some("config".into()),
                    ..ApiError::bad_request(
                        "invalid_destination",
                        format!("invalid destination: {e}"),
                    )
                })?,
            )
        }
        None => None,
    };
    let event = match v.get("event") {
        Some(e) if e.is_object() => e.clone(),
        _ => v,
    };
    if !event.is_object() {
        return Err(ApiError::bad_request(
            "invalid_body",
            "the event must be a JSON object",
        ));
    }
    let r = router(&app)?;
    let shown = match candidate {
        Some(cfg) => r.preview_candidate(cfg, &event)?,
        None => r.preview(&name, &event)?,
    };
    if actor.is_admin() {
        return Ok(Json(shown));
    }
    // A viewer sees the requests with the destination's secrets masked, wherever they
    // appear in a string (a header, a URL, a body field).
    let mut shown = shown;
    mask_in_strings(&mut shown, &r.secret_values(&name));
    Ok(Json(shown))
}

/// Replaces each secret inside every string of `v` (and object keys stay as they are).
fn mask_in_strings(v: &mut Value, secrets: &[String]) {
    match v {
        Value::String(s) => {
            for secret in secrets {
                if s.contains(secret.as_str()) {
                    *s = s.replace(secret.as_str(), sluice_destinations::router::MASKED);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| mask_in_strings(i, secrets)),
        Value::Object(map) => map.values_mut().for_each(|i| mask_in_strings(i, secrets)),
        _ => {}
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FilterParams {
    since: Option<String>,
    until: Option<String>,
    status: Option<String>,
    user: Option<String>,
    limit: Option<String>,
}

/// An ISO-8601 time or milliseconds since the epoch.
pub(crate) fn time_param(
    value: &Option<String>,
    field: &'static str,
) -> Result<Option<i64>, ApiError> {
    let Some(v) = value else { return Ok(None) };
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(Some(ms));
    }
    sluice_spec::time::parse_timestamp(v)
        .map(|t| Some(t.timestamp_millis()))
        .ok_or_else(|| ApiError {
            field: Some(field.into()),
            ..ApiError::bad_request(
                "invalid_time",
                format!(
                    "{field} must be an ISO-8601 time or milliseconds since the epoch, not {v:?}"
                ),
            )
        })
}

fn filter_of(p: &FilterParams) -> Result<DeadLetterFilter, ApiError> {
    let status = match &p.status {
        None => None,
        Some(s) => Some(
            s.parse::<u16>()
                .ok()
                .filter(|s| (100..=599).contains(s))
                .ok_or_else(|| ApiError {
                    field: Some("status".into()),
                    ..ApiError::bad_request(
                        "invalid_status",
                        format!("status must be an HTTP status code, not {s:?}"),
                    )
                })?,
        ),
    };
    Ok(DeadLetterFilter {
        since_ms: time_param(&p.since, "since")?,
        until_ms: time_param(&p.until, "until")?,
        status,
        user_key: p.user.clone(),
    })
}

fn limit_of(p: &FilterParams) -> Result<usize, ApiError> {
    match &p.limit {
        None => Ok(100),
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| ApiError {
                field: Some("limit".into()),
                ..ApiError::bad_request(
                    "invalid_limit",
                    format!("limit must be an integer from 1 to {MAX_LIMIT}, not {s:?}"),
                )
            }),
    }
}

pub(crate) fn iso(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| sluice_spec::time::format_timestamp(&t))
}

fn raw_json(bytes: &[u8]) -> Value {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| RawValue::from_string(s.to_string()).ok())
        .and_then(|raw| serde_json::to_value(raw).ok())
        .unwrap_or(Value::Null)
}

fn dead_letter_json(d: &DeadLetter) -> Value {
    json!({
        "id": d.id,
        "messageId": d.message_id,
        "userKey": d.user_key,
        "offset": d.offset,
        "receivedAt": iso(d.received_at_ms),
        "failedAt": iso(d.failed_at_ms),
        "reason": d.reason,
        "status": d.status,
        "attempts": d.attempts.iter().map(|a| json!({
            "at": iso(a.at_ms),
            "url": a.url,
            "status": a.status,
            "error": a.error,
            "response": a.response,
            "duration_ms": a.duration_ms,
        })).collect::<Vec<_>>(),
        "event": raw_json(&d.payload),
    })
}

async fn dead_letters(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(p): Query<FilterParams>,
) -> Result<Json<Value>, ApiError> {
    let filter = filter_of(&p)?;
    let letters = router(&app)?
        .dead_letters(&name, &filter, limit_of(&p)?)
        .await?;
    Ok(Json(
        json!({ "data": letters.iter().map(dead_letter_json).collect::<Vec<_>>() }),
    ))
}

/// Body (all optional): `{"since", "until", "status", "user"}`.
async fn replay_dead_letters(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    BodyBytes(body): BodyBytes,
) -> Result<Json<Value>, ApiError> {
    if crate::warehouse_api::find(&app, &name).is_some() {
        return Err(ApiError::bad_request(
            "no_dead_letters",
            format!("`{name}` is a warehouse: it has no dead letters (a failed load is retried until it succeeds); replay a window of the log instead ({{\"from\", \"to\"}} to /destinations/{name}/replay)"),
        ));
    }
    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Body {
        since: Option<Value>,
        until: Option<Value>,
        status: Option<Value>,
        user: Option<String>,
    }
    let b: Body = if body.iter().all(u8::is_ascii_whitespace) {
        Body::default()
    } else {
        json_body(
            &body,
            "replay filter ({\"since\", \"until\", \"status\", \"user\"})",
        )?
    };
    let text = |v: Option<Value>| {
        v.map(|v| {
            v.as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string())
        })
    };
    let params = FilterParams {
        since: text(b.since),
        until: text(b.until),
        status: text(b.status),
        user: b.user,
        limit: None,
    };
    let n = router(&app)?
        .replay_dead_letters(&name, &filter_of(&params)?)
        .await?;
    Ok(Json(json!({ "replayed": n })))
}

/// Body: `{"from": time, "to": time}` (ISO-8601 or epoch milliseconds).
async fn replay_window(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    BodyBytes(body): BodyBytes,
) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        from: Value,
        to: Option<Value>,
    }
    let b: Body = json_body(&body, "replay window ({\"from\", \"to\"})")?;
    let text = |v: &Value| {
        v.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string())
    };
    let from = time_param(&Some(text(&b.from)), "from")?.unwrap_or_default();
    let to = match &b.to {
        Some(v) => time_param(&Some(text(v)), "to")?.unwrap_or_default(),
        None => chrono::Utc::now().timestamp_millis(),
    };
    if let Some(w) = crate::warehouse_api::find(&app, &name) {
        let job = w.replay(app.log.clone(), from, to, app.shutdown.clone());
        return Ok((StatusCode::ACCEPTED, Json(json!(job))).into_response());
    }
    let job = router(&app)?.replay_window(&name, from, to).await?;
    Ok((StatusCode::ACCEPTED, Json(job_json(&job))).into_response())
}

fn job_json(j: &sluice_destinations::ReplayJob) -> Value {
    json!({
        "id": j.id,
        "destination": j.destination,
        "from": iso(j.from_ms),
        "to": iso(j.to_ms),
        "start_offset": j.start_offset,
        "end_offset": j.end_offset,
        "status": j.status,
        "created_at": iso(j.created_at_ms),
    })
}

async fn replays(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if let Some(w) = crate::warehouse_api::find(&app, &name) {
        return Ok(Json(json!({ "data": w.replays() })));
    }
    let r = router(&app)?;
    r.get(&name)?;
    let jobs = r.replay_jobs(Some(&name)).await?;
    Ok(Json(
        json!({ "data": jobs.iter().map(job_json).collect::<Vec<_>>() }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JourneyParams {
    since: Option<String>,
}

/// One event's journey: every destination's record of it, and the event itself. Searches
/// events received in the last 24 hours unless `?since=` reaches further back.
async fn journey(
    State(app): State<Arc<App>>,
    Path(message_id): Path<String>,
    Query(p): Query<JourneyParams>,
) -> Result<Json<Value>, ApiError> {
    let since = time_param(&p.since, "since")?
        .unwrap_or_else(|| chrono::Utc::now().timestamp_millis() - 24 * 3600 * 1000);
    let records = router(&app)?.journey(&message_id, since).await?;
    let mut event = Value::Null;
    if let Some(first) = records.first() {
        if let Ok(found) = app.log.read(first.offset, 1).await {
            if let Some(e) = found.into_iter().find(|e| e.offset == first.offset) {
                event = json!({
                    "source": e.source,
                    "offset": e.offset,
                    "receivedAt": iso(e.received_at_ms),
                    "event": raw_json(&e.payload),
                });
            }
        }
    }
    if records.is_empty() {
        return Err(ApiError::not_found(format!(
            "no destination has a record of messageId {message_id:?} (searched events received since {}; use ?since= to search further back)",
            iso(since).unwrap_or_default()
        )));
    }
    let deliveries: Vec<Value> = records
        .iter()
        .map(|r| {
            json!({
                "destination": r.destination,
                "outcome": r.outcome,
                "attempts": r.attempts,
                "updatedAt": iso(r.updated_at_ms),
                "latency_ms": r.latency_ms,
                "status": r.status,
                "detail": r.detail,
            })
        })
        .collect();
    Ok(Json(
        json!({ "messageId": message_id, "stored": event, "deliveries": deliveries }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_inside_every_string() {
        let mut v = json!({"headers": {"authorization": "Token abc123"}, "url": "https://x/abc123/y",
                           "body": [{"k": "abc123"}, 5, null], "abc123": "key names stay"});
        mask_in_strings(&mut v, &["abc123".to_string()]);
        assert_eq!(v["headers"]["authorization"], "Token ********");
        assert_eq!(v["url"], "https://x/********/y");
        assert_eq!(v["body"][0]["k"], "********");
        assert_eq!(v["body"][1], 5);
        assert!(!v.to_string().contains("Token abc123"));
    }
}
