//! The web console: one page and its script and style, built into the binary (no CDN, no
//! fonts, nothing fetched from elsewhere; it works offline), served at `/console/…`
//! (`/` leads there). Every screen is a deep link (`/console/sources/web`, …) answered
//! with the same page, whose script draws the screen from the admin API — the console
//! does nothing a script with the admin token cannot. Why plain JavaScript and no
//! framework: docs/ARCHITECTURE.md, "The console".
//!
//! Every answer carries a strict Content-Security-Policy: scripts and styles from this
//! origin only (no inline script, no `eval`), connections to this origin only, no
//! framing. The script builds the page with DOM calls and `textContent`, never HTML
//! strings: what events hold is always shown as text.

use std::sync::Arc;

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use crate::App;

const PAGE: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");

pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console/") }))
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(page))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/console/assets/{file}", get(asset))
        .route("/console/{*path}", get(page))
}

/// Headers every console answer carries.
fn secured(mut r: Response, cache: &'static str) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}

async fn page() -> Response {
    secured(
        ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response(),
        "no-store",
    )
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, ty) = match file.as_str() {
        "console.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "console.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return secured(StatusCode::NOT_FOUND.into_response(), "no-store"),
    };
    // Short: a new binary's script is picked up within a minute.
    secured(
        ([(header::CONTENT_TYPE, ty)], body).into_response(),
        "max-age=60",
    )
}

/// The destination catalog as the console lists it: classic Webhooks and every catalog
/// type, with the settings each takes, its actions and presets.
pub fn catalog_json() -> Value {
    let mut out = vec![json!({
        "id": "webhook",
        "name": "Webhooks (classic)",
        "description": "POSTs every event, signed with a shared secret, to up to five URLs.",
        "settings": [
            {"key": "hooks", "type": "object", "required": true, "secret": false, "multiple": true,
             "description": "up to five {\"hook\": URL, \"headers\": [{\"key\", \"value\"}]}"},
            {"key": "sharedSecret", "type": "string", "required": false, "secret": true,
             "description": "signs each body: X-Signature is its HMAC-SHA1"},
        ],
        "actions": [],
        "presets": [],
    })];
    for e in sluice_destinations::catalog::builtin().values() {
        let settings: Vec<Value> = e
            .settings
            .iter()
            .map(|(k, s)| {
                json!({
                    "key": k,
                    "type": format!("{:?}", s.ty).to_lowercase(),
                    "required": s.required,
                    "secret": s.secret,
                    "default": s.default,
                    "description": s.description,
                })
            })
            .collect();
        let actions: Vec<Value> = e
            .actions
            .iter()
            .map(|(slug, a)| {
                json!({
                    "slug": slug,
                    "title": a.title,
                    "description": a.description,
                    "defaultSubscription": a.default_subscription,
                    "fields": a.fields.iter().map(|(k, f)| json!({
                        "key": k,
                        "type": format!("{:?}", f.ty).to_lowercase(),
                        "required": f.required,
                        "multiple": f.multiple,
                        "default": a.defaults.get(k),
                        "choices": a.choices.get(k),
                        "description": a.field_descriptions.get(k),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        out.push(json!({
            "id": e.id,
            "name": e.name,
            "segmentSlug": e.segment_slug,
            "description": e.description,
            "settings": settings,
            "actions": actions,
            "presets": e.presets.iter().map(|p| json!({"action": p.action, "subscription": p.subscription_text, "mapping": p.mapping})).collect::<Vec<_>>(),
            "deletion": e.delete.is_some(),
        }));
    }
    Value::Array(out)
}

pub fn admin_routes() -> Router<Arc<App>> {
    Router::new().route(
        "/catalog",
        get(|| async {
            // The catalog is built into the binary: its answer is made once.
            static ANSWER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
            let body = ANSWER.get_or_init(|| json!({ "data": catalog_json() }).to_string());
            ([(header::CONTENT_TYPE, "application/json")], body.as_str())
        }),
    )
}
