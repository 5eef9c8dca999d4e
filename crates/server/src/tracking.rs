//! Segment's Tracking API: `POST /v1/{identify,track,page,screen,group,alias,batch}`, the
//! aliases `/v1/{i,t,p,s,g,a,b,import}`, CORS for browsers, and
//! `GET /v1/projects/{writeKey}/settings` for unmodified analytics.js.
//!
//! A request goes: read the body (bounded) → decode gzip → authenticate (header key
//! first, so a wrong key costs no parsing) → parse → rate limit → validate and normalise
//! → record refused items → append to the log (durable) → answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::json;
use sluice_log::{Appended, NewEvent};
use sluice_spec::{Endpoint, Outcome, RequestError};
use sluice_store::RejectedRecord;

use crate::error::ApiError;
use crate::{App, LiveEvent, Source};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route(INGEST_ROUTE, post(ingest))
        .route("/v1/projects/{write_key}/settings", get(project_settings))
        .layer(axum::middleware::from_fn(cors))
}

/// CORS for browsers: analytics.js posts cross-origin, and any request with an
/// `Authorization` header is preflighted.
async fn cors(req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    if req.method() == Method::OPTIONS {
        let mut res = StatusCode::NO_CONTENT.into_response();
        let h = res.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        let allow_headers = req
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned()
            .unwrap_or(HeaderValue::from_static(
                "Content-Type, Authorization, Content-Encoding, X-Retry-Count",
            ));
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers);
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("86400"),
        );
        add_origin(h, origin);
        return res;
    }
    let mut res = next.run(req).await;
    add_origin(res.headers_mut(), origin);
    res
}

fn add_origin(h: &mut HeaderMap, origin: Option<HeaderValue>) {
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        origin.unwrap_or(HeaderValue::from_static("*")),
    );
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
}

/// What a successful ingest answers.
#[derive(Serialize)]
pub(crate) struct IngestReply {
    success: bool,
    accepted: usize,
    duplicates: usize,
    /// Events of suppressed users: acknowledged, not stored.
    #[serde(skip_serializing_if = "is_zero")]
    suppressed: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    rejected: Vec<RejectedItem>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Serialize)]
struct RejectedItem {
    index: usize,
    #[serde(rename = "messageId", skip_serializing_if = "Option::is_none")]
    message_id: Option<String>,
    code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'static str>,
    reason: String,
}

/// The route of the Tracking API's ingest calls, as the router and the metrics name it.
pub(crate) const INGEST_ROUTE: &str = "/v1/{kind}";

/// The `{kind}` of a request the listener hands straight to [`ingest_direct`]: a `POST`
/// to `/v1/` plus one path segment without escapes. Anything else (other methods, nested
/// or percent-encoded paths) goes through the router, whose [`INGEST_ROUTE`] serves the
/// same handler behind the same CORS and timing, so the answer is the same either way.
pub(crate) fn direct_ingest_kind<B>(req: &axum::http::Request<B>) -> Option<&str> {
    if req.method() != Method::POST {
        return None;
    }
    let kind = req.uri().path().strip_prefix("/v1/")?;
    (!kind.is_empty() && !kind.contains(['/', '%'])).then_some(kind)
}

/// A Tracking API ingest call served without the router: what the router's
/// [`INGEST_ROUTE`] does, with its two layers (the CORS origin and the request duration)
/// applied here. The router's dispatch and layers cost a single `/v1/track` call a fifth
/// of the request thread's time (bench/RESULTS.md, eleventh session).
pub(crate) async fn ingest_direct(app: Arc<App>, peer: SocketAddr, req: Request) -> Response {
    let started = Instant::now();
    let origin = req.headers().get(header::ORIGIN).cloned();
    // A handle on the URI (its path is shared, not copied) that `kind` borrows from.
    let uri = req.uri().clone();
    let kind = uri.path().strip_prefix("/v1/").unwrap_or_default();
    let mut res = ingest_at(&app, kind, peer, req).await.into_response();
    add_origin(res.headers_mut(), origin);
    crate::telemetry::record_request(INGEST_ROUTE, res.status(), started);
    res
}

async fn ingest(
    State(app): State<Arc<App>>,
    Path(kind): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Result<Json<IngestReply>, ApiError> {
    ingest_at(&app, &kind, peer, req).await
}

async fn ingest_at(
    app: &Arc<App>,
    kind: &str,
    peer: SocketAddr,
    req: Request,
) -> Result<Json<IngestReply>, ApiError> {
    // The headers are taken from the request, not cloned (as the `HeaderMap` extractor does).
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let endpoint = Endpoint::from_path(kind).ok_or_else(|| {
        ApiError::not_found(format!(
            "no Tracking API endpoint /v1/{kind}; use identify, track, page, screen, group, alias or batch"
        ))
    })?;
    let received_at = chrono::Utc::now();
    let limits = &app.settings.limits;

    let header_source = match header_write_key(&headers)? {
        Some(key) => Some(authenticate(app, Some(&key))?),
        None => None,
    };

    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    // Body read errors (413, 408) are counted below like every other refusal.
    let result = async {
        let raw = read_body(body, limits.max_request_bytes).await?;
        decode_and_ingest(
            app,
            endpoint,
            &raw,
            encoding,
            header_source,
            received_at,
            &headers,
            peer,
        )
        .await
    }
    .await;
    if let Err(e) = &result {
        if e.status.is_client_error() && e.status != StatusCode::UNAUTHORIZED {
            metrics::counter!("sluice_requests_rejected_total", "reason" => e.code).increment(1);
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn decode_and_ingest(
    app: &Arc<App>,
    endpoint: Endpoint,
    raw: &[u8],
    encoding: Option<&str>,
    header_source: Option<Arc<Source>>,
    received_at: chrono::DateTime<chrono::Utc>,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Json<IngestReply>, ApiError> {
    let limits = &app.settings.limits;
    let body = match sluice_spec::decode::decode_body(raw, encoding, limits, endpoint) {
        Ok(b) => b,
        Err(e) => return Err(refuse(app, header_source.as_deref(), e, raw, received_at).await),
    };
    let doc = match sluice_spec::parse(endpoint, &body, limits) {
        Ok(d) => d,
        Err(e) => return Err(refuse(app, header_source.as_deref(), e, &body, received_at).await),
    };
    let source = match header_source {
        Some(s) => s,
        None => authenticate(app, doc.write_key())?,
    };
    let settings = &source.settings;
    if let (Some(bucket), Some(limit)) = (&source.bucket, settings.rate_limit) {
        if let Err(wait) = bucket.take(doc.len().max(1), Instant::now()) {
            metrics::counter!("sluice_rate_limited_total", "source" => settings.name.clone())
                .increment(doc.len() as u64);
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "source {:?} is limited to {} events per second (burst {})",
                    settings.name, limit.per_second, limit.burst
                ),
            )
            .retry_after(wait));
        }
    }
    let client_ip = client_ip(headers, peer, app.settings.trust_forwarded_for);
    let ctx = sluice_spec::Context::new(received_at, Some(&client_ip), settings.collect_ip);
    let outcome =
        match sluice_spec::normalize::normalize_document(endpoint.call(), doc, &ctx, limits) {
            Ok(o) => o,
            Err(e) => return Err(refuse(app, Some(&source), e, &body, received_at).await),
        };
    source.metrics.bytes.increment(raw.len() as u64);
    store_outcome(app, &source, outcome, received_at).await
}

/// Events that arrived another way than the Tracking API (a webhook source, a Kafka
/// topic), as JSON values: validated and normalised as one batch, then stored like any.
pub(crate) async fn ingest_events(
    app: &Arc<App>,
    source: &Source,
    events: Vec<serde_json::Value>,
    received_at: chrono::DateTime<chrono::Utc>,
    client_ip: Option<&str>,
) -> Result<Json<IngestReply>, ApiError> {
    let limits = &app.settings.limits;
    let doc_bytes = serde_json::to_vec(&serde_json::json!({ "batch": events }))
        .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?;
    let doc = sluice_spec::parse(Endpoint::Batch, &doc_bytes, limits).map_err(ApiError::from)?;
    let ctx = sluice_spec::Context::new(received_at, client_ip, source.settings.collect_ip);
    let outcome = sluice_spec::normalize::normalize_document(None, doc, &ctx, limits)
        .map_err(ApiError::from)?;
    store_outcome(app, source, outcome, received_at).await
}

pub(crate) async fn store_outcome(
    app: &Arc<App>,
    source: &Source,
    outcome: Outcome,
    received_at: chrono::DateTime<chrono::Utc>,
) -> Result<Json<IngestReply>, ApiError> {
    let name = &source.settings.name;
    let received_ms = received_at.timestamp_millis();
    let rejected: Vec<RejectedItem> = outcome
        .rejected
        .iter()
        .map(|r| RejectedItem {
            index: r.index,
            message_id: r.message_id.clone(),
            code: r.error.code,
            field: r.error.field,
            reason: r.error.message.clone(),
        })
        .collect();
    if !outcome.rejected.is_empty() {
        for r in &outcome.rejected {
            metrics::counter!("sluice_events_rejected_total", "source" => name.clone(), "reason" => r.error.code)
                .increment(1);
        }
        let records = outcome
            .rejected
            .into_iter()
            .map(|r| RejectedRecord {
                id: 0,
                source: name.clone(),
                received_at_ms: received_ms,
                index: r.index as i64,
                message_id: r.message_id,
                code: r.error.code.to_string(),
                field: r.error.field.map(str::to_string),
                reason: r.error.message,
                raw: r.raw,
            })
            .collect();
        if let Err(e) = app.store.add_rejected(records).await {
            // The refusal itself is answered either way; losing its record is logged.
            // A full state store fails every record: one line a minute.
            static QUIET: sluice_log::throttle::Throttle =
                sluice_log::throttle::Throttle::new(sluice_log::throttle::STORAGE_WARNING_EVERY);
            if let Some(skipped) = QUIET.allow() {
                tracing::warn!(error = %e, source = %name, skipped, "could not record rejected items");
            }
        }
    }

    let live = app.live.receiver_count() > 0;
    let mut accepted_events = outcome.accepted;
    let mut suppressed = 0;
    if !app.suppressions.is_empty() {
        accepted_events.retain(|e| {
            let drop = app.suppressions.matches(&e.user_key, &e.json);
            suppressed += drop as usize;
            !drop
        });
        if suppressed > 0 {
            metrics::counter!("sluice_events_suppressed_total", "source" => name.clone())
                .increment(suppressed as u64);
        }
    }
    let events: Vec<NewEvent> = accepted_events
        .into_iter()
        .map(|e| NewEvent {
            payload: e.json,
            source: name.clone(),
            message_id: e.message_id,
            user_key: e.user_key,
            received_at_ms: received_ms,
        })
        .collect();
    // Only the live debugger needs a copy of the payloads, and only while someone watches.
    let payloads: Vec<Bytes> = if live {
        events
            .iter()
            .map(|e| Bytes::from(e.payload.clone()))
            .collect()
    } else {
        Vec::new()
    };
    let results = match app.log.append(events).await {
        Ok(r) => r,
        Err(e) => {
            app.storage.append_failed(app.log.as_ref(), &e, name).await;
            return Err(ApiError::unavailable(format!(
                "events were not stored: {e}"
            )));
        }
    };
    app.storage.append_succeeded();

    let mut accepted = 0;
    let mut duplicates = 0;
    if results.iter().any(|r| matches!(r, Appended::Stored { .. })) {
        // Wakes the consumers of this node (other nodes' consumers poll the log).
        app.log_end.send_modify(|n| *n = n.wrapping_add(1));
    }
    let source_name: Option<Arc<str>> = live.then(|| Arc::from(name.as_str()));
    let mut payloads = payloads.into_iter();
    for r in &results {
        let payload = payloads.next();
        match r {
            Appended::Stored { offset } => {
                accepted += 1;
                if let (Some(payload), Some(source_name)) = (payload, &source_name) {
                    let _ = app.live.send(Arc::new(LiveEvent {
                        source: source_name.clone(),
                        offset: *offset,
                        payload,
                    }));
                }
            }
            Appended::Duplicate => duplicates += 1,
        }
    }
    source.metrics.accepted.increment(accepted as u64);
    if duplicates > 0 {
        source.metrics.duplicates.increment(duplicates as u64);
    }
    Ok(Json(IngestReply {
        success: true,
        accepted,
        duplicates,
        suppressed,
        rejected,
    }))
}

/// Answers a refused request, keeping the refusal (with an excerpt of the body) for the
/// admin API when the source is known.
async fn refuse(
    app: &App,
    source: Option<&Source>,
    e: RequestError,
    body: &[u8],
    received_at: chrono::DateTime<chrono::Utc>,
) -> ApiError {
    if let Some(source) = source {
        let name = &source.settings.name;
        metrics::counter!("sluice_events_rejected_total", "source" => name.clone(), "reason" => e.code())
            .increment(1);
        let record = RejectedRecord {
            id: 0,
            source: name.clone(),
            received_at_ms: received_at.timestamp_millis(),
            index: 0,
            message_id: None,
            code: e.code().to_string(),
            field: e.field().map(str::to_string),
            reason: e.to_string(),
            raw: String::from_utf8_lossy(&body[..body.len().min(64 * 1024)]).into_owned(),
        };
        if let Err(err) = app.store.add_rejected(vec![record]).await {
            static QUIET: sluice_log::throttle::Throttle =
                sluice_log::throttle::Throttle::new(sluice_log::throttle::STORAGE_WARNING_EVERY);
            if let Some(skipped) = QUIET.allow() {
                tracing::warn!(error = %err, skipped, "could not record rejected request");
            }
        }
    }
    ApiError::from(e)
}

/// A handler's whole body, read by [`read_body`] up to `limits.max_request_bytes`: the
/// admin API's bodies fail with the same JSON errors as ingest (413 `request_too_large`,
/// 408 `body_timeout`), not axum's plain-text rejections.
pub(crate) struct BodyBytes(pub Bytes);

impl axum::extract::FromRequest<Arc<App>> for BodyBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, app: &Arc<App>) -> Result<Self, Self::Rejection> {
        read_body(req.into_body(), app.settings.limits.max_request_bytes)
            .await
            .map(BodyBytes)
    }
}

/// Reads the body up to `cap` bytes; beyond it, 413 without reading further.
pub(crate) async fn read_body(body: Body, cap: usize) -> Result<Bytes, ApiError> {
    // Sized once from Content-Length (bounded by the cap): a buffer grown by doubling
    // would hold up to twice the body.
    let declared = axum::body::HttpBody::size_hint(&body).exact();
    let mut buf =
        bytes::BytesMut::with_capacity(declared.map_or(0, |n| n.min(cap as u64 + 1)) as usize);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| match crate::http::body_timeout(&e) {
            Some(t) => ApiError::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", t.to_string()),
            None => ApiError::bad_request(
                "unreadable_body",
                format!("could not read the request body: {e}"),
            ),
        })?;
        if buf.len() + chunk.len() > cap {
            return Err(RequestError::RequestTooLarge { limit: cap }.into());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// The write key from `Authorization: Basic base64(key:)` (the colon is optional).
/// `Bearer` tokens (Segment's OAuth) carry no key: the body's `writeKey` is used.
fn header_write_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let invalid = |why: &str| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_authorization",
            format!("Authorization header {why}; send Basic base64(\"<writeKey>:\")"),
        )
    };
    let value = value.to_str().map_err(|_| invalid("is not ASCII"))?.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(invalid("uses an unknown scheme"));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .map_err(|_| invalid("is not valid base64"))?;
    let text = String::from_utf8(decoded).map_err(|_| invalid("is not UTF-8"))?;
    let key = text.split_once(':').map(|(k, _)| k).unwrap_or(&text);
    if key.is_empty() {
        return Ok(None);
    }
    Ok(Some(key.to_string()))
}

fn authenticate(app: &App, key: Option<&str>) -> Result<Arc<Source>, ApiError> {
    let Some(key) = key.filter(|k| !k.is_empty()) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_write_key",
            "no write key: send it as the Basic auth user name or as `writeKey` in the body",
        ));
    };
    let Some(source) = app.by_key.get(key) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unknown_write_key",
            "the write key does not belong to any source",
        ));
    };
    if !source.settings.enabled {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "source_disabled",
            format!("source {:?} is disabled", source.settings.name),
        ));
    }
    Ok(source.clone())
}

pub(crate) fn client_ip(headers: &HeaderMap, peer: SocketAddr, trust_forwarded: bool) -> String {
    if trust_forwarded {
        if let Some(first) = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| v.parse::<std::net::IpAddr>().is_ok())
        {
            return first.to_string();
        }
    }
    peer.ip().to_string()
}

/// The settings document analytics.js loads at start. It points the `Segment.io`
/// integration at this server, so an unmodified analytics.js (with `cdnURL` set to this
/// server) sends here.
async fn project_settings(
    State(app): State<Arc<App>>,
    Path(write_key): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let source = authenticate(&app, Some(&write_key)).map_err(|e| {
        if e.status == StatusCode::UNAUTHORIZED {
            ApiError::not_found("no source has this write key")
        } else {
            e
        }
    })?;
    let (protocol, host) = match &app.settings.public_url {
        Some(url) => {
            let (p, rest) = url.split_once("://").unwrap_or(("https", url));
            (p.to_string(), rest.trim_end_matches('/').to_string())
        }
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("localhost")
                .to_string();
            let proto = headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("http")
                .to_string();
            (proto, host)
        }
    };
    let doc = json!({
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": format!("{host}/v1"),
                "protocol": protocol,
                "unbundledIntegrations": [],
                "addBundledMetadata": true,
                "maybeBundledConfigIds": {},
                "versionSettings": {"version": "4.4.7", "componentTypes": ["browser"]}
            }
        },
        "plan": {
            "track": {"__default": {"enabled": true, "integrations": {}}},
            "identify": {"__default": {"enabled": true}},
            "group": {"__default": {"enabled": true}}
        },
        "edgeFunction": {},
        "analyticsNextEnabled": true,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0.0},
        "legacyVideoPluginsEnabled": false,
        "remotePlugins": [],
        "source": {"name": source.settings.name}
    });
    let mut res = Json(doc).into_response();
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_posts_to_one_plain_segment_under_v1_skip_the_router() {
        let req = |method: &str, uri: &str| {
            axum::http::Request::builder()
                .method(method)
                .uri(uri)
                .body(())
                .unwrap()
        };
        assert_eq!(direct_ingest_kind(&req("POST", "/v1/track")), Some("track"));
        assert_eq!(direct_ingest_kind(&req("POST", "/v1/b?x=1")), Some("b"));
        // Unknown kinds too: the handler answers their 404, as behind the router.
        assert_eq!(direct_ingest_kind(&req("POST", "/v1/nope")), Some("nope"));
        for (method, uri) in [
            ("OPTIONS", "/v1/track"),
            ("GET", "/v1/track"),
            ("POST", "/v1/"),
            ("POST", "/v1/tr%61ck"),
            ("POST", "/v1/webhooks/shop"),
            ("POST", "/v1/track/"),
            ("POST", "/v2/track"),
            ("POST", "/admin/v1/sources"),
        ] {
            assert_eq!(
                direct_ingest_kind(&req(method, uri)),
                None,
                "{method} {uri}"
            );
        }
    }

    fn basic(raw: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let enc = base64::engine::general_purpose::STANDARD.encode(raw);
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {enc}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn basic_auth_with_and_without_colon() {
        assert_eq!(
            header_write_key(&basic("wk:")).unwrap().as_deref(),
            Some("wk")
        );
        assert_eq!(
            header_write_key(&basic("wk")).unwrap().as_deref(),
            Some("wk")
        );
        assert_eq!(
            header_write_key(&basic("wk:pw")).unwrap().as_deref(),
            Some("wk")
        );
        assert_eq!(header_write_key(&basic(":")).unwrap(), None);
        assert_eq!(header_write_key(&HeaderMap::new()).unwrap(), None);
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer tok".parse().unwrap());
        assert_eq!(header_write_key(&h).unwrap(), None);
        h.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert_eq!(
            header_write_key(&h).unwrap_err().code,
            "invalid_authorization"
        );
        h.insert(header::AUTHORIZATION, "Digest x".parse().unwrap());
        assert_eq!(
            header_write_key(&h).unwrap_err().code,
            "invalid_authorization"
        );
    }

    #[test]
    fn forwarded_for_only_when_trusted() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "198.51.100.4, 10.0.0.1".parse().unwrap());
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(client_ip(&h, peer, true), "198.51.100.4");
        assert_eq!(client_ip(&h, peer, false), "127.0.0.1");
        h.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(client_ip(&h, peer, true), "127.0.0.1");
    }
}
