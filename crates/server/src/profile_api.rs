//! Segment's Profile API (`/v1/spaces/{space}/collections/…`) over the profile store:
//! `/v1/spaces/{space}/collections/{users|accounts}/profiles/{type}:{value}/{traits,
//! external_ids, events, metadata, links}`. HTTP Basic with an access token as user name
//! (the admin token always works); errors are `{"error": {"code", "message"}}`; every
//! answer carries a `Request-Id`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Map, Value};
use sluice_identity::{key_type, traits, Collection, Ident};
use sluice_log::StoredEvent;
use sluice_store::{EventQuery, StoredProfile};

use crate::error::{with_request_id, ApiError, ProfileApiError};
use crate::App;

pub fn routes() -> Router<Arc<App>> {
    Router::new().route(
        "/v1/spaces/{space}/collections/{collection}/profiles/{id}/{what}",
        get(profile),
    )
}

type ProfileError = ProfileApiError;

fn err(status: StatusCode, code: &'static str, message: impl Into<String>) -> ProfileError {
    ProfileApiError(ApiError::new(status, code, message))
}

/// An access token (Segment's way), or a person signed in to the console (the Profiles
/// screen reads through this API too).
async fn authorized(app: &App, headers: &HeaderMap) -> Result<(), ProfileError> {
    if headers.get(header::AUTHORIZATION).is_none() {
        if let Ok(Some(_)) = crate::access::session_actor(app, headers).await {
            return Ok(());
        }
    }
    let raw = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            err(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "send an access token as the user name of HTTP Basic authentication",
            )
        })?;
    let token = if let Some(b) = raw
        .strip_prefix("Basic ")
        .or_else(|| raw.strip_prefix("basic "))
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or_else(|| {
                err(
                    StatusCode::UNAUTHORIZED,
                    "authentication_error",
                    "the Basic credentials are not valid base64 of `token:`",
                )
            })?;
        decoded.split(':').next().unwrap_or_default().to_string()
    } else if let Some(b) = raw.strip_prefix("Bearer ") {
        b.trim().to_string()
    } else {
        return Err(err(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "use HTTP Basic authentication with the access token as the user name",
        ));
    };
    let settings = &app.settings;
    let eq = |t: &str| sluice_ingest::constant_time_eq(t.as_bytes(), token.as_bytes());
    let ok = !token.is_empty()
        && (eq(&settings.admin_token) || settings.profiles.access_tokens.iter().any(|t| eq(t)));
    if ok {
        Ok(())
    } else {
        Err(err(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "the access token is not valid for this space",
        ))
    }
}

type Params = BTreeMap<String, String>;

fn limit(params: &Params, default: usize, max: usize) -> Result<usize, ProfileError> {
    match params.get("limit") {
        None => Ok(default),
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(err(
                StatusCode::BAD_REQUEST,
                "validation_error",
                format!("limit must be a number from 1 to {max}, not {l:?}"),
            )),
        },
    }
}

fn flag(params: &Params, name: &str) -> Result<bool, ProfileError> {
    match params.get(name).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") | Some("") => Ok(true),
        Some(other) => Err(err(
            StatusCode::BAD_REQUEST,
            "validation_error",
            format!("{name} must be true or false, not {other:?}"),
        )),
    }
}

fn list(params: &Params, name: &str) -> Option<Vec<String>> {
    params.get(name).map(|v| {
        v.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| sluice_spec::time::format_timestamp(&t))
        .unwrap_or_default()
}

fn parse_time(params: &Params, name: &str) -> Result<Option<i64>, ProfileError> {
    match params.get(name) {
        None => Ok(None),
        Some(t) => sluice_spec::time::parse_timestamp(t)
            .map(|t| Some(t.timestamp_millis()))
            .ok_or_else(|| {
                err(
                    StatusCode::BAD_REQUEST,
                    "validation_error",
                    format!("{name} must be an ISO-8601 time, not {t:?}"),
                )
            }),
    }
}

fn cursor(url: &str, has_more: bool, next: Option<String>, limit: usize) -> Value {
    json!({"url": url, "has_more": has_more, "next": next.unwrap_or_default(), "limit": limit})
}

/// An identifier of a profile, as the API shows it.
fn external_id(key: &str, m: Option<&sluice_identity::Member>) -> Value {
    let id = Ident::from_key(key);
    let (collection, ty, value) = match &id {
        Some(i) => (i.collection.name(), i.ty.as_str(), i.value.as_str()),
        None => ("users", key_type(key), key),
    };
    json!({
        "id": value,
        "type": ty,
        "collection": collection,
        "encoding": "none",
        "source_id": m.map(|m| m.source.as_str()),
        "created_at": m.map(|m| iso(m.ts)),
        "first_message_id": m.map(|m| m.message_id.as_str()),
    })
}

fn storage(e: impl std::fmt::Display) -> ProfileError {
    err(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        format!("the profile store cannot answer: {e}"),
    )
}

async fn profile(
    State(app): State<Arc<App>>,
    Path((space, collection, id, what)): Path<(String, String, String, String)>,
    Query(params): Query<Params>,
    headers: HeaderMap,
) -> Response {
    match answer(&app, &space, &collection, &id, &what, &params, &headers).await {
        Ok(v) => with_request_id(Json(v).into_response()),
        Err(e) => e.into_response(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn answer(
    app: &Arc<App>,
    space: &str,
    collection: &str,
    id: &str,
    what: &str,
    params: &Params,
    headers: &HeaderMap,
) -> Result<Value, ProfileError> {
    authorized(app, headers).await?;
    if let Some(bucket) = &app.profile_bucket {
        if let Err(wait) = bucket.take(1, std::time::Instant::now()) {
            return Err(err(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                format!(
                    "more than {} Profile API requests per second; retry in {wait} s",
                    app.settings.profiles.rate_limit.unwrap_or_default()
                ),
            ));
        }
    }
    if space != app.settings.profiles.space {
        return Err(err(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("Space {space:?} was not found."),
        ));
    }
    if !app.settings.profiles.enabled {
        return Err(err(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "profiles are disabled in this server's configuration",
        ));
    }
    let coll = Collection::from_name(collection).ok_or_else(|| {
        err(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("collection must be users or accounts, not {collection:?}"),
        )
    })?;
    let ident = Ident::from_url(coll, id).ok_or_else(|| {
        err(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("the profile identifier must be <type>:<value>, e.g. user_id:u1, not {id:?}"),
        )
    })?;
    let profile = app
        .store
        .profile(&ident.key())
        .await
        .map_err(storage)?
        .filter(|p| {
            // A segment_id lookup must name a profile of this collection.
            p.members
                .first()
                .is_none_or(|m| Ident::from_key(&m.key).is_some_and(|i| i.collection == coll))
        })
        .ok_or_else(|| err(StatusCode::NOT_FOUND, "not_found", "Profile was not found."))?;
    let base = format!("/v1/spaces/{space}/collections/{collection}/profiles/{id}/{what}");
    match what {
        "traits" => traits_answer(app, &profile, params, &base).await,
        "external_ids" => external_ids_answer(&profile, params, &base),
        "events" => events_answer(app, &profile, params, &base).await,
        "metadata" => metadata_answer(app, &profile).await,
        "links" => links_answer(app, &profile, coll, params, &base).await,
        other => Err(err(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no profile resource {other:?}; use traits, external_ids, events, metadata or links"),
        )),
    }
}

fn keys(p: &StoredProfile) -> Vec<String> {
    p.members.iter().map(|m| m.key.clone()).collect()
}

async fn traits_answer(
    app: &App,
    p: &StoredProfile,
    params: &Params,
    base: &str,
) -> Result<Value, ProfileError> {
    let limit = limit(params, 10, 200)?;
    let verbose = flag(params, "verbose")?;
    if let Some(class) = params.get("class") {
        if class != "audience" && class != "computed_trait" {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "validation_error",
                format!("class must be audience or computed_trait, not {class:?}"),
            ));
        }
        // Sluice computes neither audiences nor computed traits.
        return Ok(json!({"traits": {}, "cursor": cursor(base, false, None, limit)}));
    }
    let rows = app.store.profile_traits(keys(p)).await.map_err(storage)?;
    let merged = traits::merge(rows);
    let include = list(params, "include");
    let after = params.get("next").cloned().unwrap_or_default();
    let mut selected = merged
        .into_iter()
        .filter(|(k, _)| include.as_ref().is_none_or(|i| i.contains(k)))
        .filter(|(k, _)| after.is_empty() || *k > after);
    let mut out = Map::new();
    let mut last = None;
    for (k, v) in selected.by_ref().take(limit) {
        let value = if verbose {
            json!({"value": v.value, "source_id": v.source, "updated_at": iso(v.ts)})
        } else {
            v.value
        };
        last = Some(k.clone());
        out.insert(k, value);
    }
    let has_more = selected.next().is_some();
    Ok(json!({
        "traits": out,
        "cursor": cursor(base, has_more, if has_more { last } else { None }, limit),
    }))
}

fn external_ids_answer(
    p: &StoredProfile,
    params: &Params,
    base: &str,
) -> Result<Value, ProfileError> {
    let limit = limit(params, 25, 100)?;
    let include = list(params, "include");
    let mut members: Vec<&sluice_identity::Member> = p
        .members
        .iter()
        .filter(|m| {
            include
                .as_ref()
                .is_none_or(|i| i.iter().any(|t| t == key_type(&m.key)))
        })
        .collect();
    // Newest first, as Segment lists them.
    members.sort_by(|a, b| (b.ts, &b.key).cmp(&(a.ts, &a.key)));
    let start: usize = match params.get("next") {
        None => 0,
        Some(n) => n.parse().map_err(|_| {
            err(
                StatusCode::BAD_REQUEST,
                "validation_error",
                format!("next must be a cursor from an earlier answer, not {n:?}"),
            )
        })?,
    };
    let page: Vec<Value> = members
        .iter()
        .skip(start)
        .take(limit)
        .map(|m| external_id(&m.key, Some(m)))
        .collect();
    let has_more = start + page.len() < members.len();
    Ok(json!({
        "data": page,
        "cursor": cursor(base, has_more, has_more.then(|| (start + limit).to_string()), limit),
    }))
}

async fn events_answer(
    app: &App,
    p: &StoredProfile,
    params: &Params,
    base: &str,
) -> Result<Value, ProfileError> {
    let limit = limit(params, 10, 100)?;
    let descending = match params.get("sort").map(String::as_str) {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(other) => {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "validation_error",
                format!("sort must be asc or desc, not {other:?}"),
            ))
        }
    };
    let after = match params.get("next") {
        None => None,
        Some(n) => Some(
            n.split_once('.')
                .and_then(|(t, o)| Some((t.parse::<i64>().ok()?, o.parse::<u64>().ok()?)))
                .ok_or_else(|| {
                    err(
                        StatusCode::BAD_REQUEST,
                        "validation_error",
                        format!("next must be a cursor from an earlier answer, not {n:?}"),
                    )
                })?,
        ),
    };
    let include = list(params, "include");
    let exclude = list(params, "exclude").unwrap_or_default();
    let profile_ids = [p.id.clone()];
    let mut data = Vec::new();
    let mut query = EventQuery {
        start_ms: parse_time(params, "start")?,
        end_ms: parse_time(params, "end")?,
        descending,
        after,
        limit: limit + 1,
    };
    let mut next = None;
    // Events filtered out by include/exclude (or erased from the log) are skipped; read
    // on until the page is full.
    'pages: loop {
        let refs = app
            .store
            .profile_events(keys(p), query.clone())
            .await
            .map_err(storage)?;
        let exhausted = refs.len() < query.limit;
        // One read for the whole page: on Kafka a random read is a broker round trip.
        let offsets: Vec<u64> = refs.iter().map(|r| r.log_offset).collect();
        let events: HashMap<u64, StoredEvent> = app
            .log
            .read_at(&offsets)
            .await
            .map_err(storage)?
            .into_iter()
            .map(|e| (e.offset, e))
            .collect();
        for r in &refs {
            if data.len() == limit {
                next = Some(format!(
                    "{}.{}",
                    query.after.map_or(0, |a| a.0),
                    query.after.map_or(0, |a| a.1)
                ));
                break 'pages;
            }
            query.after = Some((r.ts, r.log_offset));
            let Some(e) = events.get(&r.log_offset) else {
                continue; // past retention or erased
            };
            let Ok(body) = serde_json::from_slice::<Value>(&e.payload) else {
                continue;
            };
            let name = body.get("event").and_then(Value::as_str).unwrap_or("");
            let kind = body.get("type").and_then(Value::as_str).unwrap_or("");
            let label = if name.is_empty() { kind } else { name };
            if include
                .as_ref()
                .is_some_and(|i| !i.iter().any(|n| n == label))
                || exclude.iter().any(|n| n == label)
            {
                continue;
            }
            let ids: Vec<Value> = ["userId", "anonymousId"]
                .iter()
                .zip(["user_id", "anonymous_id"])
                .filter_map(|(field, ty)| {
                    body.get(*field).and_then(Value::as_str).map(|v| {
                        json!({"id": v, "type": ty, "collection": "users", "encoding": "none",
                               "source_id": e.source, "created_at": iso(r.ts)})
                    })
                })
                .collect();
            data.push(json!({
                "external_ids": ids,
                "context": body.get("context").cloned().unwrap_or(json!({})),
                "type": kind,
                "message_id": e.message_id,
                "source_id": e.source,
                "timestamp": body.get("timestamp").cloned().unwrap_or(Value::Null),
                "properties": body.get("properties").or(body.get("traits")).cloned().unwrap_or(json!({})),
                "event": body.get("event").cloned().unwrap_or(Value::Null),
                "related": {"users": profile_ids},
            }));
        }
        if exhausted {
            break;
        }
    }
    Ok(json!({
        "data": data,
        "cursor": cursor(base, next.is_some(), next, limit),
    }))
}

async fn metadata_answer(app: &App, p: &StoredProfile) -> Result<Value, ProfileError> {
    let first_member = p
        .members
        .iter()
        .min_by_key(|m| (m.ts, m.message_id.clone()));
    let q = |descending| EventQuery {
        start_ms: None,
        end_ms: None,
        descending,
        after: None,
        limit: 1,
    };
    let first = app
        .store
        .profile_events(keys(p), q(false))
        .await
        .map_err(storage)?;
    let last = app
        .store
        .profile_events(keys(p), q(true))
        .await
        .map_err(storage)?;
    // Both sources in one read (on Kafka a random read is a broker round trip).
    let wanted: Vec<u64> = first.iter().chain(&last).map(|r| r.log_offset).collect();
    let found = app.log.read_at(&wanted).await.unwrap_or_default();
    let source_of = |r: Option<&sluice_store::ProfileEventRef>| {
        let offset = r?.log_offset;
        found
            .iter()
            .find(|e| e.offset == offset)
            .map(|e| e.source.clone())
    };
    let created = first.first().map(|r| r.ts).or(first_member.map(|m| m.ts));
    Ok(json!({"metadata": {
        "segment_id": p.id,
        "created_at": created.map(iso),
        "updated_at": last.first().map(|r| iso(r.ts)).or(created.map(iso)),
        "expires_at": Value::Null,
        "first_message_id": first.first().map(|r| r.message_id.clone()).or(first_member.map(|m| m.message_id.clone())),
        "first_source_id": source_of(first.first()).or(first_member.map(|m| m.source.clone())),
        "last_message_id": last.first().map(|r| r.message_id.clone()),
        "last_source_id": source_of(last.first()),
        "merged_ids": p.merged,
    }}))
}

async fn links_answer(
    app: &App,
    p: &StoredProfile,
    coll: Collection,
    params: &Params,
    base: &str,
) -> Result<Value, ProfileError> {
    let limit = limit(params, 20, 100)?;
    let anchors = app.store.profile_links(keys(p)).await.map_err(storage)?;
    let mut seen = std::collections::HashSet::new();
    let mut data = Vec::new();
    let to_collection = match coll {
        Collection::Users => "accounts",
        Collection::Accounts => "users",
    };
    for a in anchors {
        let Some(other) = app.store.profile(&a).await.map_err(storage)? else {
            continue;
        };
        if !seen.insert(other.id.clone()) {
            continue;
        }
        data.push(json!({
            "to_collection": to_collection,
            "external_ids": other.members.iter().map(|m| external_id(&m.key, Some(m))).collect::<Vec<_>>(),
        }));
    }
    let has_more = data.len() > limit;
    data.truncate(limit);
    Ok(json!({"data": data, "cursor": cursor(base, has_more, None, limit)}))
}
