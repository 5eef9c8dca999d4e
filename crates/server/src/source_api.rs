//! Sources over the admin API, beside the ones of `sluice.toml` (which stay read-only):
//! create one from a source type, enable or disable it, rotate its write key (the old
//! key keeps working for a grace period), remove it. They are kept in the state store
//! (`api_sources`, one JSON document) and applied to ingest at once; other nodes pick
//! them up within [`REFRESH`].
//!
//! A source's type sets its defaults as Segment's do: client-side types (a JavaScript
//! website, iOS, Android) record `context.ip` from the request.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

use sluice_ingest::sources::webhook::{FieldPath, WebhookSource};
use sluice_ingest::{SourceKind, SourceSettings};

use crate::access::{self, Actor, VersionQuery};
use crate::error::ApiError;
use crate::tracking::BodyBytes;
use crate::App;

/// The state store's key of the API's sources.
const KEY: &str = "api_sources";

/// How often a node re-reads the API's sources (another node may have changed them).
pub const REFRESH: Duration = Duration::from_secs(5);

/// Source types: (id, name, records `context.ip`).
pub const TYPES: &[(&str, &str, bool)] = &[
    ("javascript", "JavaScript website (analytics.js)", true),
    ("ios", "iOS", true),
    ("android", "Android", true),
    ("nodejs", "Node.js", false),
    ("python", "Python", false),
    ("http", "HTTP API", false),
    (
        WEBHOOK_TYPE,
        "Segment Webhooks (a Segment workspace's Webhooks destination)",
        false,
    ),
];

/// The type whose source also takes `POST /v1/webhooks/{name}` from a Segment Webhooks
/// destination, signed with the source's shared secret.
const WEBHOOK_TYPE: &str = "segment_webhook";

/// Longest grace period of a rotated write key.
const MAX_GRACE_HOURS: u64 = 24 * 30;

/// A source created over the admin API, as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiSource {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub write_key: String,
    pub enabled: bool,
    pub collect_ip: bool,
    #[serde(default)]
    pub previous_keys: Vec<(String, i64)>,
    pub version: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// `segment_webhook`: the secret the Webhooks destination signs with (generated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_secret: Option<String>,
    /// `segment_webhook`: where the user and anonymous ids are in the posted events
    /// (`userId`, `anonymousId` → a path such as `$.traits.id`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub field_mapping: BTreeMap<String, String>,
}

impl ApiSource {
    fn settings(&self) -> SourceSettings {
        SourceSettings {
            name: self.name.clone(),
            write_key: self.write_key.clone(),
            enabled: self.enabled,
            collect_ip: self.collect_ip,
            rate_limit: None,
            kind: match &self.shared_secret {
                Some(secret) if self.ty == WEBHOOK_TYPE => {
                    // Checked when written (`field_paths`).
                    let path = |k: &str| {
                        self.field_mapping
                            .get(k)
                            .and_then(|p| FieldPath::parse(p).ok())
                    };
                    SourceKind::SegmentWebhook(WebhookSource {
                        shared_secret: secret.clone(),
                        user_id: path("userId"),
                        anonymous_id: path("anonymousId"),
                    })
                }
                _ => SourceKind::Http,
            },
            previous_keys: self.previous_keys.clone(),
        }
    }

    /// As the audit trail keeps it: no write key, no shared secret.
    fn audited(&self) -> Value {
        json!({"name": self.name, "type": self.ty, "enabled": self.enabled,
               "collect_ip": self.collect_ip, "field_mapping": self.field_mapping,
               "version": self.version})
    }

    /// As the admin API shows it: the shared secret to admins only.
    fn shown(&self, actor: &Actor) -> Value {
        let mut v = json!(self);
        if let (Some(o), false) = (v.as_object_mut(), actor.is_admin()) {
            for secret in ["write_key", "shared_secret"] {
                if o.contains_key(secret) {
                    o.insert(secret.into(), json!("********"));
                }
            }
            o.remove("previous_keys");
        }
        v
    }
}

/// `field_mapping` of a webhook source: `userId` and `anonymousId` only, each a path.
fn field_paths(m: &BTreeMap<String, String>) -> Result<(), ApiError> {
    for (k, p) in m {
        if k != "userId" && k != "anonymousId" {
            return Err(invalid(
                &format!("field_mapping.{k}"),
                format!("field_mapping takes userId and anonymousId, not {k:?}"),
            ));
        }
        FieldPath::parse(p)
            .map_err(|why| invalid(&format!("field_mapping.{k}"), why.to_string()))?;
    }
    Ok(())
}

fn store_error(e: sluice_store::StoreError) -> ApiError {
    ApiError::unavailable(e.to_string())
}

async fn load(app: &App) -> Result<Vec<ApiSource>, ApiError> {
    let Some(text) = app.store.get_setting(KEY).await.map_err(store_error)? else {
        return Ok(Vec::new());
    };
    serde_json::from_str(&text)
        .map_err(|e| ApiError::unavailable(format!("the stored sources are unreadable: {e}")))
}

async fn save(app: &App, all: &[ApiSource]) -> Result<(), ApiError> {
    let text = serde_json::to_string(all).map_err(|e| ApiError::unavailable(e.to_string()))?;
    app.store.put_setting(KEY, &text).await.map_err(store_error)
}

/// The names of the sources created over the admin API.
pub(crate) async fn api_source_names(app: &App) -> Result<Vec<String>, ApiError> {
    Ok(load(app).await?.into_iter().map(|a| a.name).collect())
}

/// Applies the file's sources and the API's to ingest and to the destinations' checks.
pub async fn apply(app: &App) -> Result<(), ApiError> {
    let api = load(app).await?;
    let mut all = app.file_sources().clone();
    for a in &api {
        if !all.iter().any(|s| s.name == a.name) {
            all.push(a.settings());
        }
    }
    let current: Vec<SourceSettings> = app
        .ingest
        .sources()
        .iter()
        .map(|s| s.settings.clone())
        .collect();
    let mut sorted = all.clone();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    if sorted != current {
        app.ingest.set_sources(&all);
        if let Some(router) = app.destinations.get() {
            router.set_source_names(all.iter().map(|s| s.name.clone()).collect());
        }
    }
    Ok(())
}

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/sources", get(list))
        .route("/source-types", get(types))
        .route("/sources/{name}", axum::routing::put(put).delete(delete))
        .route("/sources/{name}/rotate-key", post(rotate))
}

async fn types() -> Json<Value> {
    Json(json!({"data": TYPES.iter().map(|(id, name, ip)| json!({
        "id": id, "name": name, "collect_ip": ip,
    })).collect::<Vec<_>>()}))
}

async fn list(
    State(app): State<Arc<App>>,
    axum::Extension(actor): axum::Extension<Actor>,
) -> Result<Json<Value>, ApiError> {
    let api = load(&app).await?;
    let now = access::now_ms();
    let file = app.file_sources().clone();
    let data: Vec<Value> = app
        .ingest
        .sources()
        .iter()
        .map(|src| {
            let s = &src.settings;
            let from_api = api.iter().find(|a| a.name == s.name);
            let (hour, hour_refused, series) = src.volume.last(now, 60);
            let (day, day_refused, _) = src.volume.last(now, 24 * 60);
            json!({
                "name": s.name,
                // A viewer is shown no secret.
                "write_key": if actor.is_admin() { s.write_key.as_str() } else { "********" },
                "enabled": s.enabled,
                "collect_ip": s.collect_ip,
                "rate_limit": s.rate_limit.map(|r| json!({"per_second": r.per_second, "burst": r.burst})),
                "kind": match &s.kind {
                    SourceKind::Http => "http",
                    SourceKind::SegmentWebhook(_) => "segment_webhook",
                    SourceKind::Kafka(_) => "kafka",
                },
                "type": from_api.map(|a| a.ty.as_str()),
                "managed_by": if from_api.is_some() && !file.iter().any(|f| f.name == s.name) { "api" } else { "file" },
                "version": from_api.map(|a| a.version),
                "webhook_path": s.webhook().map(|_| format!("/v1/webhooks/{}", s.name)),
                // The API's webhook sources show their secret to admins (it goes into
                // the Segment workspace's Webhooks settings); the file's stay in the file.
                "shared_secret": from_api.and_then(|a| a.shared_secret.as_ref()).map(|k| if actor.is_admin() { k.as_str() } else { "********" }),
                "field_mapping": from_api.map(|a| &a.field_mapping),
                "previous_key_valid_until": s.previous_keys.iter().map(|(_, t)| *t).max().and_then(crate::delivery_api::iso),
                "volume": {
                    "last_hour": {"accepted": hour, "refused": hour_refused},
                    "last_day": {"accepted": day, "refused": day_refused},
                    "per_minute": series,
                },
            })
        })
        .collect();
    Ok(Json(json!({ "data": data })))
}

fn invalid(field: &str, message: String) -> ApiError {
    ApiError {
        field: Some(field.to_string().into()),
        ..ApiError::bad_request("invalid_source", message)
    }
}

fn from_file(app: &App, name: &str) -> Result<(), ApiError> {
    if app.file_sources().iter().any(|s| s.name == name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "managed_by_file",
            format!("source `{name}` is defined in the config file; change it there"),
        ));
    }
    Ok(())
}

fn stale(name: &str) -> ApiError {
    ApiError::stale(&format!("source `{name}`"))
}

/// `prefix` and `bytes` random bytes in hex: write keys (`wk_`, 18) and webhook shared
/// secrets (`whsec_`, 24).
fn random_key(prefix: &str, bytes: usize) -> String {
    let mut out = String::from(prefix);
    for _ in 0..bytes {
        out.push_str(&format!("{:02x}", rand::random::<u8>()));
    }
    out
}

fn new_shared_secret() -> String {
    random_key("whsec_", 24)
}

fn new_write_key() -> String {
    random_key("wk_", 18)
}

/// Body `{"type", "enabled"?, "collect_ip"?, "version"?}`: without `version` a new source
/// (its write key generated), with it a change of the source read at that version.
async fn put(
    State(app): State<Arc<App>>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(name): Path<String>,
    BodyBytes(body): BodyBytes,
) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[serde(rename = "type")]
        ty: String,
        enabled: Option<bool>,
        collect_ip: Option<bool>,
        version: Option<i64>,
        field_mapping: Option<BTreeMap<String, String>>,
    }
    let b: Body = crate::delivery_api::json_body(
        &body,
        "source ({\"type\", \"enabled\", \"collect_ip\", \"field_mapping\", \"version\"})",
    )?;
    let valid_name = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid_name {
        return Err(invalid(
            "name",
            "a source name is 1 to 64 letters, digits, '-' or '_'".into(),
        ));
    }
    let Some((_, _, client_side)) = TYPES.iter().find(|(id, _, _)| *id == b.ty) else {
        let known: Vec<&str> = TYPES.iter().map(|t| t.0).collect();
        return Err(invalid(
            "type",
            format!("type must be one of {}, not {:?}", known.join(", "), b.ty),
        ));
    };
    let webhook = b.ty == WEBHOOK_TYPE;
    match &b.field_mapping {
        Some(m) if !webhook && !m.is_empty() => {
            return Err(invalid(
                "field_mapping",
                format!("field_mapping is for {WEBHOOK_TYPE} sources only"),
            ))
        }
        Some(m) => field_paths(m)?,
        None => {}
    }
    from_file(&app, &name)?;
    let _writing = app.source_writes.lock().await;
    let mut all = load(&app).await?;
    let now = access::now_ms();
    let at = all.iter().position(|a| a.name == name);
    let (before, after, status, action) = match (at, b.version) {
        (Some(_), None) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "source_exists",
                format!("source `{name}` exists: send its `version` to change it"),
            ))
        }
        (None, Some(_)) => return Err(stale(&name)),
        (Some(i), Some(v)) if all[i].version != v => return Err(stale(&name)),
        (Some(i), Some(_)) => {
            let before = all[i].clone();
            let a = &mut all[i];
            a.ty = b.ty.clone();
            a.enabled = b.enabled.unwrap_or(a.enabled);
            a.collect_ip = b.collect_ip.unwrap_or(*client_side);
            if webhook {
                a.shared_secret.get_or_insert_with(new_shared_secret);
                if let Some(m) = &b.field_mapping {
                    a.field_mapping = m.clone();
                }
            } else {
                a.shared_secret = None;
                a.field_mapping.clear();
            }
            a.version += 1;
            a.updated_at_ms = now;
            (Some(before), a.clone(), StatusCode::OK, "update")
        }
        (None, None) => {
            let a = ApiSource {
                name: name.clone(),
                ty: b.ty.clone(),
                write_key: new_write_key(),
                enabled: b.enabled.unwrap_or(true),
                collect_ip: b.collect_ip.unwrap_or(*client_side),
                previous_keys: Vec::new(),
                version: 1,
                created_at_ms: now,
                updated_at_ms: now,
                shared_secret: webhook.then(new_shared_secret),
                field_mapping: b.field_mapping.clone().unwrap_or_default(),
            };
            all.push(a.clone());
            (None, a, StatusCode::CREATED, "create")
        }
    };
    save(&app, &all).await?;
    apply(&app).await?;
    access::audit(
        &app,
        &actor,
        action,
        "source",
        &name,
        before.as_ref().map(ApiSource::audited).as_ref(),
        Some(&after.audited()),
    )
    .await;
    Ok((status, Json(after.shown(&actor))).into_response())
}

async fn delete(
    State(app): State<Arc<App>>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(name): Path<String>,
    Query(q): Query<VersionQuery>,
) -> Result<StatusCode, ApiError> {
    from_file(&app, &name)?;
    let Some(version) = q.version else {
        return Err(invalid(
            "version",
            "removing a source needs the `version` it was read at (?version=N)".into(),
        ));
    };
    let _writing = app.source_writes.lock().await;
    let mut all = load(&app).await?;
    let Some(i) = all
        .iter()
        .position(|a| a.name == name && a.version == version)
    else {
        return Err(stale(&name));
    };
    let before = all.remove(i);
    save(&app, &all).await?;
    apply(&app).await?;
    access::audit(
        &app,
        &actor,
        "delete",
        "source",
        &name,
        Some(&before.audited()),
        None,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Body `{"grace_hours"?}` (default 24; 0 ends the old key now): a new write key; the old
/// one is accepted until the grace period ends.
async fn rotate(
    State(app): State<Arc<App>>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(name): Path<String>,
    BodyBytes(body): BodyBytes,
) -> Result<Json<Value>, ApiError> {
    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Body {
        grace_hours: Option<u64>,
    }
    let b: Body = if body.iter().all(u8::is_ascii_whitespace) {
        Body::default()
    } else {
        crate::delivery_api::json_body(&body, "rotation ({\"grace_hours\"})")?
    };
    let grace = b.grace_hours.unwrap_or(24);
    if grace > MAX_GRACE_HOURS {
        return Err(invalid(
            "grace_hours",
            format!("grace_hours is at most {MAX_GRACE_HOURS}, not {grace}"),
        ));
    }
    from_file(&app, &name)?;
    let _writing = app.source_writes.lock().await;
    let mut all = load(&app).await?;
    let Some(a) = all.iter_mut().find(|a| a.name == name) else {
        return Err(ApiError::not_found(format!("no source named {name:?}")));
    };
    let now = access::now_ms();
    let until = now + (grace * 3600 * 1000) as i64;
    a.previous_keys.retain(|(_, t)| *t > now);
    a.previous_keys
        .push((std::mem::replace(&mut a.write_key, new_write_key()), until));
    a.version += 1;
    a.updated_at_ms = now;
    let after = a.clone();
    save(&app, &all).await?;
    apply(&app).await?;
    access::audit(
        &app,
        &actor,
        "rotate-key",
        "source",
        &name,
        None,
        Some(&json!({"previous_key_valid_until": crate::delivery_api::iso(until)})),
    )
    .await;
    Ok(Json(json!({
        "write_key": after.write_key,
        "version": after.version,
        "previous_key_valid_until": crate::delivery_api::iso(until),
    })))
}
