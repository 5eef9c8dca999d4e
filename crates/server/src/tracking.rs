//! Segment's Tracking API: `POST /v1/{identify,track,page,screen,group,alias,batch}`, the
//! aliases `/v1/{i,t,p,s,g,a,b,import}`, CORS for browsers, and
//! `GET /v1/projects/{writeKey}/settings` for unmodified analytics.js.
//!
//! A request goes: authenticate the header's key (a wrong key costs no reading) → read
//! the body (bounded) → [`sluice_ingest::Ingest::tracking`] → answer.

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
use serde_json::json;
use sluice_ingest::sources::tracking::Call;
use sluice_ingest::{IngestError, Receipt, Status};
use sluice_spec::{Endpoint, RequestError};

use crate::error::ApiError;
use crate::App;

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
/// applied here: the router's dispatch and layers are a large share of a single call's
/// work on the request thread.
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
) -> Result<Json<Receipt>, ApiError> {
    ingest_at(&app, &kind, peer, req).await
}

async fn ingest_at(
    app: &Arc<App>,
    kind: &str,
    peer: SocketAddr,
    req: Request,
) -> Result<Json<Receipt>, ApiError> {
    // The headers are taken from the request, not cloned (as the `HeaderMap` extractor does).
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let endpoint = Endpoint::from_path(kind).ok_or_else(|| {
        ApiError::not_found(format!(
            "no Tracking API endpoint /v1/{kind}; use identify, track, page, screen, group, alias or batch"
        ))
    })?;
    let received_at = chrono::Utc::now();
    let ingest = &app.ingest;

    let credential = match header_write_key(&headers)? {
        Some(key) => Some(ingest.authenticate(Some(&key))?),
        None => None,
    };

    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    // Body read errors (413, 408) are counted below like every other refusal.
    let result = async {
        let raw = read_body(body, ingest.limits().max_request_bytes).await?;
        let client_ip = client_ip(&headers, peer, app.settings.trust_forwarded_for);
        let call = Call {
            endpoint,
            body: &raw,
            encoding,
            credential,
            client_ip: &client_ip,
            received_at,
        };
        Ok(Json(ingest.tracking(call).await?))
    }
    .await;
    if let Err(e) = &result {
        count_refusal(e);
    }
    result
}

/// Counts a refused ingest call by its code (wrong credentials are not counted: they
/// are not a source's traffic).
pub(crate) fn count_refusal(e: &ApiError) {
    if e.status.is_client_error() && e.status != StatusCode::UNAUTHORIZED {
        metrics::counter!("sluice_requests_rejected_total", "reason" => e.code).increment(1);
    }
}

/// A handler's whole body, read by [`read_body`] up to `limits.max_request_bytes`: the
/// admin API's bodies fail with the same JSON errors as ingest (413 `request_too_large`,
/// 408 `body_timeout`), not axum's plain-text rejections.
pub(crate) struct BodyBytes(pub Bytes);

impl axum::extract::FromRequest<Arc<App>> for BodyBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, app: &Arc<App>) -> Result<Self, Self::Rejection> {
        read_body(req.into_body(), app.ingest.limits().max_request_bytes)
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
    let invalid = |why: &'static str| ApiError::from(IngestError::InvalidAuthorization(why));
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
    let source = app
        .ingest
        .authenticate(Some(&write_key))
        .map_err(|e| match e.status() {
            Status::Unauthenticated => ApiError::not_found("no source has this write key"),
            _ => ApiError::from(e),
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
                .unwrap_or(if app.settings.http.https {
                    "https"
                } else {
                    "http"
                })
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
