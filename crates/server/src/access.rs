//! Who calls the admin API, and the console's accounts.
//!
//! A caller is the admin token (`Authorization: Bearer …`, a script), or a person signed
//! in to the console: a session cookie (`sluice_session`: HttpOnly, SameSite=Strict, Path
//! `/`, Secure behind HTTPS) made by `POST /console/api/session` with a user name and
//! password. The store keeps only the SHA-256 of a session's cookie. Every change a
//! session makes carries its CSRF token in `X-CSRF-Token` (a page of another site can
//! neither read it nor, SameSite aside, set that header). Roles: `admin` changes
//! anything; `viewer` reads, is answered 403 on any change, and is shown no secrets.
//!
//! Passwords are hashed with Argon2id (the `argon2` crate's defaults: 19 MiB, 2 passes),
//! on a blocking thread. Sign-in is limited per client address and per user name
//! (5 a minute after a burst of 10), and a wrong name costs the same hash as a wrong
//! password.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sluice_store::{AuditEntry, SessionRecord, UserRecord, VersionedWrite};

use crate::error::ApiError;
use crate::tracking::BodyBytes;
use crate::App;

pub const COOKIE: &str = "sluice_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts from sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 12;

/// A role: what a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Viewer,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

/// Who made a request to the admin API (an extension of every admin request).
#[derive(Debug, Clone)]
pub struct Actor {
    /// The user name, or `token`.
    pub name: String,
    pub role: Role,
    /// Signed in through the console (else the admin token).
    pub session: Option<SessionInfo>,
}

#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id_hash: String,
    pub csrf: String,
}

impl Actor {
    /// As the audit trail names it: `user:<name>`, or `token`.
    pub fn audit_name(&self) -> String {
        match self.session {
            Some(_) => format!("user:{}", self.name),
            None => "token".into(),
        }
    }
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// The SHA-256 of a session cookie, as the store keys sessions.
fn session_hash(cookie: &str) -> String {
    let digest = Sha256::digest(cookie.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Argon2id in PHC string form.
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| ApiError::unavailable(format!("cannot make a salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::unavailable(format!("cannot hash the password: {e}")))
}

fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash to verify against when the user does not exist: the same work either way.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("decoy password, never valid").unwrap_or_default())
}

/// Sign-in attempts per client address and per user name.
#[derive(Default)]
pub struct SignInLimit {
    buckets: Mutex<HashMap<String, sluice_ingest::ratelimit::Bucket>>,
}

impl SignInLimit {
    const MAX_KEYS: usize = 10_000;

    /// `Err(seconds to wait)` when `key` tried too often.
    fn take(&self, key: &str) -> Result<(), u64> {
        let Ok(mut b) = self.buckets.lock() else {
            return Ok(());
        };
        if b.len() >= Self::MAX_KEYS && !b.contains_key(key) {
            b.clear();
        }
        b.entry(key.to_string())
            .or_insert_with(|| {
                sluice_ingest::ratelimit::Bucket::new(sluice_ingest::RateLimit {
                    per_second: 5.0 / 60.0,
                    burst: 10.0,
                })
            })
            .take(1, Instant::now())
    }
}

/// The session cookie's value in a request, if any.
fn cookie_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// The signed-in user of a request, when its cookie names a live session.
pub async fn session_actor(app: &App, headers: &HeaderMap) -> Result<Option<Actor>, ApiError> {
    let Some(cookie) = cookie_of(headers) else {
        return Ok(None);
    };
    let id_hash = session_hash(&cookie);
    let Some(s) = app.store.session(&id_hash).await.map_err(store_error)? else {
        return Ok(None);
    };
    if s.expires_at_ms < now_ms() {
        return Ok(None);
    }
    let Some(user) = app.store.user(&s.user).await.map_err(store_error)? else {
        return Ok(None);
    };
    let role = Role::parse(&user.role).unwrap_or(Role::Viewer);
    Ok(Some(Actor {
        name: user.name,
        role,
        session: Some(SessionInfo {
            id_hash,
            csrf: s.csrf,
        }),
    }))
}

fn store_error(e: sluice_store::StoreError) -> ApiError {
    ApiError::unavailable(e.to_string())
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Whether a request only reads.
fn reads(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Calls that are POSTs but change nothing: a viewer may make them (with its CSRF
/// token). The preview's answer masks the destination's secrets for a viewer.
fn read_only_post(path: &str) -> bool {
    path.ends_with("/preview")
}

/// A session's change must carry its CSRF token; a viewer may not change anything.
pub fn check_change(
    actor: &Actor,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    if reads(method) {
        return Ok(());
    }
    if let Some(s) = &actor.session {
        let given = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !sluice_ingest::constant_time_eq(given.as_bytes(), s.csrf.as_bytes()) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "csrf_token_invalid",
                "a change from the console must carry the session's token in X-CSRF-Token",
            ));
        }
    }
    let read_only = read_only_post(path) && *method == Method::POST;
    if !(actor.is_admin() || read_only) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{} is a viewer: viewers cannot change anything", actor.name),
        ));
    }
    Ok(())
}

/// Records a change in the audit trail (a failure to record is logged, not fatal: the
/// change happened).
pub async fn audit(
    app: &App,
    actor: &Actor,
    action: &str,
    kind: &str,
    name: &str,
    before: Option<&Value>,
    after: Option<&Value>,
) {
    let entry = AuditEntry {
        at_ms: now_ms(),
        actor: actor.audit_name(),
        action: action.into(),
        kind: kind.into(),
        name: name.into(),
        before: before.map(Value::to_string),
        after: after.map(Value::to_string),
        ..AuditEntry::default()
    };
    if let Err(e) = app.store.append_audit(entry).await {
        tracing::error!(error = %e, kind, name, "cannot record the change in the audit trail");
    }
}

/// The console's sign-in and sign-out (outside `/admin/v1`: no token needed to sign in).
pub fn session_routes() -> Router<Arc<App>> {
    Router::new().route("/console/api/session", post(sign_in).delete(sign_out))
}

/// The admin API's routes for users, the audit trail and the caller.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/me", get(me))
        .route("/users", get(list_users))
        .route(
            "/users/{name}",
            axum::routing::put(put_user).delete(delete_user),
        )
        .route("/audit", get(list_audit))
}

fn cookie_header(app: &App, value: &str, max_age: u64) -> HeaderValue {
    let secure = app
        .settings
        .public_url
        .as_deref()
        .is_some_and(|u| u.starts_with("https://"));
    let text = format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

async fn sign_in(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    BodyBytes(body): BodyBytes,
) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        username: String,
        password: String,
    }
    let b: Body = crate::delivery_api::json_body(&body, "sign-in ({\"username\", \"password\"})")?;
    let ip = crate::tracking::client_ip(&headers, peer, app.settings.trust_forwarded_for);
    for key in [format!("ip:{ip}"), format!("user:{}", b.username)] {
        if let Err(wait) = app.sign_in_limit.take(&key) {
            let mut r = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_sign_ins",
                format!("too many sign-in attempts; try again in {wait} s"),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return Ok(r);
        }
    }
    let user = app.store.user(&b.username).await.map_err(store_error)?;
    let hash = user
        .as_ref()
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| decoy_hash().to_string());
    let password = b.password.clone();
    let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .unwrap_or(false);
    let Some(user) = user.filter(|_| ok) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "the user name or the password is wrong",
        ));
    };
    let (cookie, csrf) = (random_token(), random_token());
    app.store
        .put_session(
            &session_hash(&cookie),
            SessionRecord {
                user: user.name.clone(),
                csrf: csrf.clone(),
                expires_at_ms: now_ms() + SESSION_TTL.as_millis() as i64,
            },
        )
        .await
        .map_err(store_error)?;
    let mut r = Json(json!({"user": user.name, "role": user.role, "csrf": csrf})).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        cookie_header(&app, &cookie, SESSION_TTL.as_secs()),
    );
    Ok(r)
}

async fn sign_out(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(actor) = session_actor(&app, &headers).await? {
        check_change(
            &Actor {
                role: Role::Admin,
                ..actor.clone()
            },
            &Method::DELETE,
            "/console/api/session",
            &headers,
        )?;
        if let Some(s) = &actor.session {
            app.store
                .delete_session(&s.id_hash)
                .await
                .map_err(store_error)?;
        }
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, cookie_header(&app, "", 0));
    Ok(r)
}

async fn me(
    State(app): State<Arc<App>>,
    axum::Extension(actor): axum::Extension<Actor>,
) -> Json<Value> {
    Json(json!({
        "user": actor.name,
        "role": actor.role.as_str(),
        "csrf": actor.session.as_ref().map(|s| s.csrf.clone()),
        // What the install snippets name as the host: null means the page's own origin.
        "tracking_url": app.settings.public_url.as_ref().or(app.settings.tracking_url.as_ref()),
    }))
}

/// A user as written now (the store sets its version).
fn user_record(name: &str, role: Role, password_hash: String) -> UserRecord {
    UserRecord {
        name: name.to_string(),
        role: role.as_str().into(),
        password_hash,
        version: 0,
        created_at_ms: now_ms(),
        updated_at_ms: now_ms(),
    }
}

fn user_json(u: &UserRecord) -> Value {
    json!({
        "name": u.name,
        "role": u.role,
        "version": u.version,
        "createdAt": crate::delivery_api::iso(u.created_at_ms),
        "updatedAt": crate::delivery_api::iso(u.updated_at_ms),
    })
}

async fn list_users(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let users = app.store.users().await.map_err(store_error)?;
    Ok(Json(
        json!({ "data": users.iter().map(user_json).collect::<Vec<_>>() }),
    ))
}

fn valid_user_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

fn stale(name: &str) -> ApiError {
    ApiError::stale(&format!("user `{name}`"))
}

/// Body `{"role", "password"?, "version"?}`: without `version` a new user (a password is
/// required); with it, a change of the user read at that version.
async fn put_user(
    State(app): State<Arc<App>>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(name): Path<String>,
    BodyBytes(body): BodyBytes,
) -> Result<Response, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        role: String,
        password: Option<String>,
        version: Option<i64>,
    }
    let b: Body =
        crate::delivery_api::json_body(&body, "user ({\"role\", \"password\", \"version\"})")?;
    let field = |f: &str, code: &'static str, m: String| ApiError {
        field: Some(f.to_string().into()),
        ..ApiError::bad_request(code, m)
    };
    if !valid_user_name(&name) {
        return Err(field(
            "name",
            "invalid_user",
            "a user name is 1 to 64 letters, digits, '-', '_', '.' or '@'".into(),
        ));
    }
    let Some(role) = Role::parse(&b.role) else {
        return Err(field(
            "role",
            "invalid_user",
            format!("role must be \"admin\" or \"viewer\", not {:?}", b.role),
        ));
    };
    if let Some(p) = &b.password {
        if p.chars().count() < MIN_PASSWORD {
            return Err(field(
                "password",
                "invalid_user",
                format!("a password has at least {MIN_PASSWORD} characters"),
            ));
        }
    }
    let before = app.store.user(&name).await.map_err(store_error)?;
    let hash = match (&b.password, &before) {
        (Some(p), _) => {
            let p = p.clone();
            tokio::task::spawn_blocking(move || hash_password(&p))
                .await
                .map_err(|e| ApiError::unavailable(e.to_string()))??
        }
        (None, Some(u)) => u.password_hash.clone(),
        (None, None) => {
            return Err(field(
                "password",
                "invalid_user",
                "a new user needs a password".into(),
            ))
        }
    };
    let record = user_record(&name, role, hash);
    match app
        .store
        .put_user(record, b.version)
        .await
        .map_err(store_error)?
    {
        VersionedWrite::Stale if b.version.is_none() => Err(ApiError::new(
            StatusCode::CONFLICT,
            "user_exists",
            format!("user `{name}` exists: send its `version` to change it"),
        )),
        VersionedWrite::Stale => Err(stale(&name)),
        VersionedWrite::Written(_) => {
            // A new password or role ends the user's sessions.
            if before.is_some() {
                app.store
                    .delete_sessions_of(&name)
                    .await
                    .map_err(store_error)?;
            }
            let after = app.store.user(&name).await.map_err(store_error)?;
            let (before_json, after_json) = (
                before.as_ref().map(user_json),
                after.as_ref().map(user_json),
            );
            let action = if before.is_some() { "update" } else { "create" };
            audit(
                &app,
                &actor,
                action,
                "user",
                &name,
                before_json.as_ref(),
                after_json.as_ref(),
            )
            .await;
            let status = if before.is_some() {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok((status, Json(after_json.unwrap_or(Value::Null))).into_response())
        }
    }
}

/// `?version=N`: the version a removal was read at.
#[derive(Deserialize)]
pub(crate) struct VersionQuery {
    pub version: Option<i64>,
}

async fn delete_user(
    State(app): State<Arc<App>>,
    axum::Extension(actor): axum::Extension<Actor>,
    Path(name): Path<String>,
    Query(q): Query<VersionQuery>,
) -> Result<Response, ApiError> {
    let Some(version) = q.version else {
        return Err(ApiError {
            field: Some("version".into()),
            ..ApiError::bad_request(
                "invalid_user",
                "deleting a user needs the `version` it was read at (?version=N)",
            )
        });
    };
    if actor.session.is_some() && actor.name == name {
        return Err(ApiError::bad_request(
            "invalid_user",
            "you cannot delete the user you are signed in as",
        ));
    }
    let before = app.store.user(&name).await.map_err(store_error)?;
    match app
        .store
        .delete_user(&name, version)
        .await
        .map_err(store_error)?
    {
        VersionedWrite::Stale => Err(stale(&name)),
        VersionedWrite::Written(_) => {
            audit(
                &app,
                &actor,
                "delete",
                "user",
                &name,
                before.as_ref().map(user_json).as_ref(),
                None,
            )
            .await;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
    }
}

#[derive(Deserialize)]
struct AuditQuery {
    before: Option<i64>,
    limit: Option<usize>,
}

async fn list_audit(
    State(app): State<Arc<App>>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let entries = app
        .store
        .audit(q.before, limit)
        .await
        .map_err(store_error)?;
    let parse = |s: &Option<String>| {
        s.as_deref()
            .and_then(|t| serde_json::from_str::<Value>(t).ok())
    };
    Ok(Json(json!({
        "data": entries.iter().map(|e| json!({
            "seq": e.seq,
            "at": crate::delivery_api::iso(e.at_ms),
            "actor": e.actor,
            "action": e.action,
            "kind": e.kind,
            "name": e.name,
            "before": parse(&e.before),
            "after": parse(&e.after),
        })).collect::<Vec<_>>()
    })))
}

/// Creates the first admin when there is no user yet: its generated password is printed
/// once (as the first write key is), and can be changed in the console.
pub async fn first_admin(app: &App) -> Result<Option<String>, ApiError> {
    if !app.store.users().await.map_err(store_error)?.is_empty() {
        return Ok(None);
    }
    let password = random_token();
    let p = password.clone();
    let hash = tokio::task::spawn_blocking(move || hash_password(&p))
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))??;
    let record = user_record("admin", Role::Admin, hash);
    match app
        .store
        .put_user(record, None)
        .await
        .map_err(store_error)?
    {
        // Another node made it first.
        VersionedWrite::Stale => Ok(None),
        VersionedWrite::Written(_) => Ok(Some(password)),
    }
}

/// Drops a request's cookies, on the server's listener when the console has an address of
/// its own: a browser sends the console's session cookie to every port of its host, and
/// the session must not reach the admin API from the public listener.
pub async fn no_sessions(mut req: Request, next: Next) -> Response {
    req.headers_mut().remove(header::COOKIE);
    next.run(req).await
}

/// Admin API authentication: the admin token or a console session; then the CSRF token
/// and the role for changes. The caller becomes the request's [`Actor`].
pub async fn authenticate(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let actor = match crate::admin::token_actor(&app, &req) {
        Some(Ok(actor)) => actor,
        Some(Err(e)) => return e.into_response(),
        None => match session_actor(&app, req.headers()).await {
            Ok(Some(actor)) => actor,
            Ok(None) => {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing_admin_token",
                    "send the admin token as `Authorization: Bearer <token>`, or sign in to the console",
                )
                .into_response()
            }
            Err(e) => return e.into_response(),
        },
    };
    if let Err(e) = check_change(&actor, req.method(), req.uri().path(), req.headers()) {
        return e.into_response();
    }
    req.extensions_mut().insert(actor);
    next.run(req).await
}
