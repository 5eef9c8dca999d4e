//! `POST /v1/webhooks/{source}`: the HTTP side of the `segment_webhook` source
//! ([`sluice_ingest::sources::webhook`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap};
use axum::routing::post;
use axum::{Json, Router};
use sluice_ingest::sources::webhook::Post;
use sluice_ingest::Receipt;

use crate::error::ApiError;
use crate::tracking::{client_ip, read_body};
use crate::App;

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/v1/webhooks/{source}", post(receive))
}

async fn receive(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Receipt>, ApiError> {
    let received_at = chrono::Utc::now();
    // Unknown and disabled sources are refused before the body is read.
    let source = app.ingest.webhook_source(&name)?;
    let raw = read_body(body, app.ingest.limits().max_request_bytes).await?;
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let client_ip = client_ip(&headers, peer, app.settings.trust_forwarded_for);
    let post = Post {
        source,
        body: &raw,
        encoding: header(header::CONTENT_ENCODING),
        signature: header(header::HeaderName::from_static("x-signature")),
        client_ip: &client_ip,
        received_at,
    };
    Ok(Json(app.ingest.webhook(post).await?))
}
