//! Catalog destinations at run time: for one event, every enabled action whose
//! subscription matches maps the event (field defaults overlaid by the configuration's
//! overrides), cleans and coerces the payload to the fields' types, and becomes one HTTP
//! request as its catalog entry describes.
//!
//! An event that no action's subscription matches sends nothing (recorded as filtered).
//! When a matched action cannot build its request (a required field missing, a value that
//! cannot be coerced, a bad URL or header), the event is not sent at all — not even by the
//! other matched actions — and becomes a dead letter with the action and the field named:
//! a permanent failure, never retried.

use std::collections::BTreeMap;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sluice_mapping::{Mapping, Subscription, TypedMapping};

use crate::catalog::{Action, Body, Entry, RequestSpec};
use crate::http::{Answer, Prepared};
use crate::kind::{blocked_reason, DeletionError, DestinationKind, PreviewEntry, Requests};
use crate::retry::Verdict;
use crate::routing::Route;

/// Prefix of a preview's `skipped_reason` when a field asked to skip the action.
const SKIP: &str = "skipped: ";

/// One `[[destinations.actions]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionConfig {
    /// The action's slug in the catalog (Segment's, e.g. `updateUserProfile`).
    pub action: String,
    /// FQL; default: the action's default subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<String>,
    /// Field overrides: field key → mapping-kit value (replacing the field's default).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub mapping: Map<String, Value>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// A catalog destination, validated.
#[derive(Debug, Clone)]
pub struct ActionsKind {
    pub entry: &'static Entry,
    /// Settings with the catalog's defaults filled in.
    pub settings: Value,
    pub endpoint_override: Option<url::Url>,
    pub actions: Vec<Enabled>,
}

#[derive(Debug, Clone)]
pub struct Enabled {
    pub action: &'static Action,
    pub subscription: Subscription,
    pub subscription_text: String,
    /// The action's fields compiled with the configured mapping.
    pub mapping: TypedMapping,
}

/// Why a matched action cannot build its request (or a deletion hook its request): a
/// sentence that names the field or value at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(pub String);

impl From<String> for BuildError {
    fn from(why: String) -> BuildError {
        BuildError(why)
    }
}

/// What one event becomes.
#[derive(Debug, Clone)]
pub enum Plan {
    /// (action slug, request) for every matched action.
    Send(Vec<(String, Prepared)>),
    /// Nothing to send: no enabled action's subscription matches, or every matched
    /// action was skipped by a field (the reason says which).
    NoMatch(String),
    /// A matched action cannot build its request: the reason.
    Invalid(String),
}

impl ActionsKind {
    /// The deletion hook's request for a `{"type": "delete", "userId", "anonymousId", …}`
    /// message: `Ok(None)` when the type has no hook or the hook has nothing to delete.
    pub fn deletion(
        &self,
        message: &Value,
        allow_private: bool,
    ) -> Result<Option<Prepared>, BuildError> {
        let Some(hook) = &self.entry.delete else {
            return Ok(None);
        };
        let mut ctx = Map::new();
        for key in ["userId", "anonymousId"] {
            if let Some(v) = message.get(key).filter(|v| !v.is_null()) {
                ctx.insert(key.into(), v.clone());
            }
        }
        ctx.insert("settings".into(), self.settings.clone());
        ctx.insert("event".into(), message.clone());
        let ctx = Value::Object(ctx);
        let url_text = match hook.url.eval(&ctx) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(u)) => u,
            Some(other) => {
                return Err(format!("the deletion URL resolved to {other}, not a string").into())
            }
        };
        let method = method_of(&hook.method, &ctx, "deletion")?;
        let url = self.target(&url_text, allow_private)?;
        let mut headers = self.headers(&ctx, hook.headers.as_ref())?;
        let body = json_body(hook.body.as_ref(), &ctx, &mut headers)?;
        self.sign(&mut headers, &body)?;
        Ok(Some(Prepared {
            method,
            url,
            headers,
            body,
        }))
    }
}

/// A request of a batch plan and the events it carries.
#[derive(Debug, Clone)]
pub struct BatchRequest {
    pub request: Prepared,
    /// Indices of the events it carries.
    pub events: Vec<usize>,
    /// Each event's own request, in `events` order (for splitting a refused batch).
    pub singles: Vec<Prepared>,
    /// Statuses on which the batch is re-sent one event per request.
    pub split_on: Vec<u16>,
}

/// Per-action detail for previews.
#[derive(Debug, Clone)]
pub struct ActionPreview {
    pub action: String,
    pub matched: bool,
    /// The action's requests, in the order they are sent (empty: see `skipped_reason`).
    pub requests: Vec<Prepared>,
    pub skipped_reason: Option<String>,
    /// The event's element of a batch request (actions that batch).
    pub batch_item: Option<Value>,
}

impl Enabled {
    /// The action as configured: `cfg.mapping` overrides the fields' default mappings.
    pub fn new(action: &'static Action, cfg: &ActionConfig) -> Result<Enabled, (String, String)> {
        Enabled::build(action, cfg, true)
    }

    /// A preset with a mapping of its own (as Segment's presets have): `cfg.mapping` is
    /// the whole mapping, and a field it does not list has none.
    pub fn preset(
        action: &'static Action,
        cfg: &ActionConfig,
    ) -> Result<Enabled, (String, String)> {
        Enabled::build(action, cfg, false)
    }

    fn build(
        action: &'static Action,
        cfg: &ActionConfig,
        defaults: bool,
    ) -> Result<Enabled, (String, String)> {
        let text = cfg
            .subscription
            .clone()
            .unwrap_or_else(|| action.default_subscription.clone());
        if text.is_empty() {
            return Err((
                "subscription".to_string(),
                format!(
                    "is needed: action {} has no default subscription (e.g. type = \"track\")",
                    action.slug
                ),
            ));
        }
        let subscription =
            Subscription::parse(&text).map_err(|e| ("subscription".to_string(), e.to_string()))?;
        for key in cfg.mapping.keys() {
            if !action.fields.iter().any(|(k, _)| k == key) {
                let known: Vec<&str> = action.fields.iter().map(|(k, _)| k.as_str()).collect();
                return Err((
                    format!("mapping.{key}"),
                    format!(
                        "is not a field of action {} (fields: {})",
                        action.slug,
                        known.join(", ")
                    ),
                ));
            }
        }
        // One entry per field that has a value (configured, else the catalog default), in
        // the order the fields are declared — the order they are typed in.
        let mut entries = Vec::new();
        for (key, _) in &action.fields {
            let default = || action.defaults.get(key).filter(|_| defaults);
            let Some(value) = cfg.mapping.get(key).or_else(default) else {
                continue;
            };
            let m =
                Mapping::compile(value).map_err(|e| (format!("mapping.{key}"), e.to_string()))?;
            entries.push((key.clone(), m));
        }
        let mapping = Mapping::Object(entries.into());
        Ok(Enabled {
            action,
            subscription,
            subscription_text: text,
            mapping: TypedMapping::new(&action.fields, &mapping),
        })
    }
}

impl ActionsKind {
    /// What an event becomes (requests, nothing, or a refusal).
    pub fn plan(&self, payload: &[u8], allow_private: bool) -> Plan {
        match self.planned(payload, allow_private) {
            Ok(reqs) => Plan::Send(reqs.into_iter().map(|(a, r, _)| (a, r)).collect()),
            Err(plan) => plan,
        }
    }

    /// One stored event's requests — (action, request, batch item) per matched action — or
    /// the plan saying why there are none (nothing matched, skipped, or refused).
    #[allow(clippy::type_complexity)]
    fn planned(
        &self,
        payload: &[u8],
        allow_private: bool,
    ) -> Result<Vec<(String, Prepared, Option<Value>)>, Plan> {
        let Ok(event) = serde_json::from_slice::<Value>(payload) else {
            return Err(Plan::Invalid("the stored event is not JSON".into()));
        };
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        for p in self.preview_raw(event, Some(payload), allow_private) {
            match (p.matched, p.requests.is_empty(), p.skipped_reason) {
                (false, _, _) => {}
                (true, false, _) => {
                    for req in p.requests {
                        out.push((p.action.clone(), req, p.batch_item.clone()));
                    }
                }
                (true, true, Some(reason)) if reason.starts_with(SKIP) => {
                    skipped.push(format!("action {} {reason}", p.action));
                }
                (true, true, reason) => {
                    return Err(Plan::Invalid(format!(
                        "action {}: {}",
                        p.action,
                        reason.unwrap_or_default()
                    )))
                }
            }
        }
        if !out.is_empty() {
            Ok(out)
        } else if skipped.is_empty() {
            Err(Plan::NoMatch(
                "no enabled action's subscription matches".into(),
            ))
        } else {
            Err(Plan::NoMatch(skipped.join("; ")))
        }
    }

    /// Every enabled action: whether it matched, and its request or why there is none.
    pub fn preview(&self, event: &Value, allow_private: bool) -> Vec<ActionPreview> {
        self.preview_raw(event.clone(), None, allow_private)
    }

    /// [`ActionsKind::preview`] with the event's stored bytes, when there are any. The
    /// event becomes part of the requests' context `{payload, settings, event}` (built
    /// once per event; each matched action puts its payload in).
    fn preview_raw(
        &self,
        event: Value,
        raw: Option<&[u8]>,
        allow_private: bool,
    ) -> Vec<ActionPreview> {
        let mut ctx = Map::with_capacity(3);
        ctx.insert("settings".into(), self.settings.clone());
        ctx.insert("event".into(), event);
        let mut ctx = Value::Object(ctx);
        self.actions
            .iter()
            .map(|a| {
                let slug = a.action.slug.clone();
                if !a.subscription.matches(&ctx["event"]) {
                    return ActionPreview {
                        action: slug,
                        matched: false,
                        requests: Vec::new(),
                        batch_item: None,
                        skipped_reason: Some(format!(
                            "the subscription `{}` does not match",
                            a.subscription_text
                        )),
                    };
                }
                match self.request(a, &mut ctx, raw, allow_private) {
                    Ok((requests, item)) => ActionPreview {
                        action: slug,
                        matched: true,
                        requests,
                        skipped_reason: None,
                        batch_item: item,
                    },
                    Err(why) => ActionPreview {
                        action: slug,
                        matched: true,
                        requests: Vec::new(),
                        skipped_reason: Some(why.to_string()),
                        batch_item: None,
                    },
                }
            })
            .collect()
    }

    /// One matched action's requests (in order; those whose `when` fails left out) and
    /// its batch item; `ctx` is `{settings, event}` plus the `payload` and `let` of the
    /// last action planned, which this one replaces. Every request is built before any is
    /// returned, so a refusal or a bad value stops the whole action.
    fn request(
        &self,
        a: &Enabled,
        ctx: &mut Value,
        raw: Option<&[u8]>,
        allow_private: bool,
    ) -> Result<(Vec<Prepared>, Option<Value>), BuildError> {
        let payload = match a.mapping.eval(&ctx["event"]) {
            Ok(p) => p.into_value(),
            Err(e) if e.skip => return Err(format!("{SKIP}{e}").into()),
            Err(e) => return Err(BuildError(e.to_string())),
        };
        if let Value::Object(m) = ctx {
            m.insert("payload".into(), payload);
            m.remove("let");
        }
        if !a.action.lets.is_empty() {
            let lets: Map<String, Value> = a
                .action
                .lets
                .iter()
                .filter_map(|(k, m)| m.eval(ctx).map(|v| (k.clone(), v)))
                .collect();
            if let Value::Object(m) = ctx {
                m.insert("let".into(), Value::Object(lets));
            }
        }
        let ctx = &*ctx;
        let mut out = Vec::with_capacity(a.action.requests.len());
        for spec in &a.action.requests {
            if let Some(not_when) = &spec.when {
                if not_when.eval(ctx) == Some(Value::Bool(true)) {
                    continue;
                }
            }
            match &spec.for_each {
                None => out.push(self.one_request(spec, ctx, raw, allow_private)?),
                Some(list) => {
                    let items = match list.eval(ctx) {
                        None | Some(Value::Null) => Vec::new(),
                        Some(Value::Array(a)) => a,
                        Some(one) => vec![one],
                    };
                    // Each element's request sees the action's context plus its element.
                    let mut each = ctx.clone();
                    for (i, item) in items.into_iter().enumerate() {
                        if let Value::Object(m) = &mut each {
                            m.insert("item".into(), item);
                            m.insert("index".into(), Value::from(i));
                        }
                        out.push(self.one_request(spec, &each, raw, allow_private)?);
                    }
                }
            }
        }
        if out.is_empty() {
            return Err(format!("{SKIP}no request of the action applies to this event").into());
        }
        let item = a
            .action
            .batch
            .as_ref()
            .map(|(item, _, _)| item.eval(ctx).unwrap_or(Value::Null));
        Ok((out, item))
    }

    fn one_request(
        &self,
        spec: &RequestSpec,
        ctx: &Value,
        raw: Option<&[u8]>,
        allow_private: bool,
    ) -> Result<Prepared, BuildError> {
        for (not_when, reason) in &spec.refuse {
            if not_when.eval(ctx) == Some(Value::Bool(false)) {
                return Err(BuildError(reason.clone()));
            }
        }
        let method = method_of(&spec.method, ctx, "request")?;
        let url_text = match spec.url.eval(ctx) {
            Some(Value::String(u)) => u,
            other => {
                return Err(format!("the request URL resolved to {other:?}, not a string").into())
            }
        };
        let url = self.target(&url_text, allow_private)?;
        let mut headers = self.headers(ctx, spec.headers.as_ref())?;
        if let Some((user, pass)) = &spec.basic_auth {
            let text = |v: Option<Value>| match v {
                Some(Value::String(s)) => s,
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            use base64::Engine;
            let token = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                text(user.eval(ctx)),
                text(pass.eval(ctx))
            ));
            let v = HeaderValue::from_str(&format!("Basic {token}")).map_err(|e| e.to_string())?;
            headers.insert(AUTHORIZATION, v);
        }
        let body = match (&spec.body, raw) {
            (Some(Body::Event(_)), Some(bytes)) => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Bytes::copy_from_slice(bytes)
            }
            (Some(Body::Event(m)), None) => json_body(Some(m), ctx, &mut headers)?,
            (Some(Body::Json(m)), _) => json_body(Some(m), ctx, &mut headers)?,
            (Some(Body::Form(m)), _) => form_body(m, ctx, &mut headers)?,
            (None, _) => Bytes::new(),
        };
        self.sign(&mut headers, &body)?;
        Ok(Prepared {
            method,
            url,
            headers,
            body,
        })
    }

    /// Plans a group of events for batching: per event, what it becomes (`Err`: nothing
    /// to send, with the plan saying why), and the batch requests with the indices of
    /// the events each carries. Actions without a batch form send one request per event.
    pub fn plan_batch(
        &self,
        payloads: &[&[u8]],
        allow_private: bool,
    ) -> (Vec<Option<Plan>>, Vec<BatchRequest>) {
        let mut refused: Vec<Option<Plan>> = vec![None; payloads.len()];
        // (action, method, url, headers without the signature) → (each event's request, items, indices)
        type Group = (Vec<Prepared>, Vec<Value>, Vec<usize>);
        let mut groups: Vec<(String, Group)> = Vec::new();
        let mut singles: Vec<BatchRequest> = Vec::new();
        let sig_header = self
            .entry
            .signature
            .as_ref()
            .map(|(_, h)| h.to_ascii_lowercase());
        for (i, payload) in payloads.iter().enumerate() {
            let planned = match self.planned(payload, allow_private) {
                Ok(planned) => planned,
                Err(plan) => {
                    refused[i] = Some(plan);
                    continue;
                }
            };
            for (action, req, item) in planned {
                let Some(item) = item else {
                    singles.push(BatchRequest {
                        request: req.clone(),
                        events: vec![i],
                        singles: vec![req],
                        split_on: Vec::new(),
                    });
                    continue;
                };
                let mut headers: Vec<String> = req
                    .headers
                    .iter()
                    .filter(|(k, _)| Some(k.as_str()) != sig_header.as_deref())
                    .map(|(k, v)| format!("{k}:{}", String::from_utf8_lossy(v.as_bytes())))
                    .collect();
                headers.sort();
                let key = format!(
                    "{action}\n{}\n{}\n{}",
                    req.method,
                    req.url,
                    headers.join("\n")
                );
                match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, (reqs, items, idx))) => {
                        reqs.push(req);
                        items.push(item);
                        idx.push(i);
                    }
                    None => groups.push((key, (vec![req], vec![item], vec![i]))),
                }
            }
        }
        let mut out = singles;
        for (key, (each, items, idx)) in groups {
            let action = key.split('\n').next().unwrap_or_default();
            let Some(a) = self.actions.iter().find(|a| a.action.slug == action) else {
                continue;
            };
            let Some((_, body_map, split_on)) = &a.action.batch else {
                continue;
            };
            let ctx = json!({"items": items, "settings": self.settings});
            let body = body_map.eval(&ctx).unwrap_or(Value::Null);
            let Some(mut req) = each.first().cloned() else {
                continue;
            };
            req.body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
            req.headers
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            // As Segment's Actions webhook: the signature covers the first item only.
            if let Some(first_item) = items.first() {
                let bytes = serde_json::to_vec(first_item).unwrap_or_default();
                let _ = self.sign(&mut req.headers, &bytes);
            }
            out.push(BatchRequest {
                request: req,
                events: idx,
                singles: each,
                split_on: split_on.clone(),
            });
        }
        (refused, out)
    }
}

impl ActionsKind {
    /// A request URL: http(s) only, `endpoint_override` applied, then the SSRF guard.
    fn target(&self, text: &str, allow_private: bool) -> Result<url::Url, BuildError> {
        let mut url =
            url::Url::parse(text).map_err(|e| format!("the URL {text:?} is invalid: {e}"))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(format!("the URL {text:?} is not http or https").into());
        }
        if let Some(o) = &self.endpoint_override {
            override_endpoint(&mut url, o).map_err(|e| format!("endpoint_override: {e}"))?;
        }
        if !allow_private {
            crate::ssrf::check_url(&url)
                .map_err(|why| format!("refused by the SSRF guard: {why}"))?;
        }
        Ok(url)
    }

    /// The catalog entry's shared headers, then the request's own (an object of strings).
    fn headers(&self, ctx: &Value, own: Option<&Mapping>) -> Result<HeaderMap, BuildError> {
        let mut headers = HeaderMap::new();
        for (name, m) in &self.entry.headers {
            add_header(&mut headers, name, m.eval(ctx))?;
        }
        match own.and_then(|h| h.eval(ctx)) {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (k, v) in map {
                    add_header(&mut headers, &k, Some(v))?;
                }
            }
            Some(other) => return Err(format!("headers must be an object, not {other}").into()),
        }
        Ok(headers)
    }

    /// `X-Signature` (or the entry's header) over `signed`, when the secret is set.
    fn sign(&self, headers: &mut HeaderMap, signed: &[u8]) -> Result<(), BuildError> {
        let Some((setting, header)) = &self.entry.signature else {
            return Ok(());
        };
        match self.settings.get(setting).and_then(Value::as_str) {
            Some(secret) if !secret.is_empty() => {
                let sig = crate::webhook::signature(secret, signed);
                add_header(headers, header, Some(Value::String(sig)))
            }
            _ => Ok(()),
        }
    }
}

fn method_of(m: &Mapping, ctx: &Value, what: &str) -> Result<Method, BuildError> {
    match m.eval(ctx) {
        Some(Value::String(m)) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| BuildError(format!("the method {m:?} is not an HTTP method"))),
        other => Err(format!("the {what} method resolved to {other:?}, not a string").into()),
    }
}

/// A form body (`application/x-www-form-urlencoded`, as `URLSearchParams` encodes it):
/// text values as they are, other values as JSON text; none when the mapping gives
/// nothing. The mapping must give an object.
fn form_body(m: &Mapping, ctx: &Value, headers: &mut HeaderMap) -> Result<Bytes, BuildError> {
    let fields = match m.eval(ctx) {
        None | Some(Value::Null) => return Ok(Bytes::new()),
        Some(Value::Object(fields)) => fields,
        Some(other) => {
            return Err(format!("the form body resolved to {other}, not an object").into())
        }
    };
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in &fields {
        match v {
            Value::String(s) => form.append_pair(k, s),
            other => form.append_pair(k, &other.to_string()),
        };
    }
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded;charset=UTF-8"),
    );
    Ok(Bytes::from(form.finish()))
}

/// A JSON body (with its Content-Type), or none when the mapping gives nothing.
fn json_body(
    m: Option<&Mapping>,
    ctx: &Value,
    headers: &mut HeaderMap,
) -> Result<Bytes, BuildError> {
    // Serialised from the borrowed form: the body's values are not copied first.
    Ok(match m.and_then(|b| b.eval_out(ctx)) {
        None => Bytes::new(),
        Some(v) if v.is_null() => Bytes::new(),
        Some(v) => {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Bytes::from(serde_json::to_vec(&v).map_err(|e| e.to_string())?)
        }
    })
}

fn add_header(headers: &mut HeaderMap, name: &str, value: Option<Value>) -> Result<(), BuildError> {
    let text = match value {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::String(s)) => s,
        Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
        Some(other) => return Err(format!("header {name:?} must be a string, not {other}").into()),
    };
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a valid header name"))?;
    let v = HeaderValue::from_str(&text)
        .ok()
        .filter(|_| text.is_ascii())
        .ok_or_else(|| format!("header {name:?} has a value that is not visible ASCII"))?;
    headers.insert(n, v);
    Ok(())
}

/// Replaces the scheme, host and port of `url` with those of `with`.
pub fn override_endpoint(url: &mut url::Url, with: &url::Url) -> Result<(), BuildError> {
    url.set_scheme(with.scheme())
        .map_err(|_| "cannot change the scheme".to_string())?;
    url.set_host(with.host_str()).map_err(|e| e.to_string())?;
    url.set_port(with.port())
        .map_err(|_| "cannot set the port".to_string())?;
    Ok(())
}

/// Settings validated against the catalog: unknown keys refused, required ones present,
/// types checked, defaults filled in. `endpoint_override` is accepted by every entry.
pub fn settings(
    entry: &Entry,
    given: &Map<String, Value>,
) -> Result<(Value, Option<url::Url>), (String, String)> {
    let mut out = BTreeMap::new();
    let mut endpoint = None;
    for (k, v) in given {
        if k == "endpoint_override" {
            let text = v
                .as_str()
                .ok_or_else(|| (k.clone(), "must be a URL string".to_string()))?;
            let u = url::Url::parse(text)
                .map_err(|e| (k.clone(), format!("is not a valid URL ({e})")))?;
            if u.scheme() != "http" && u.scheme() != "https" || u.host_str().is_none() {
                return Err((k.clone(), "must be an http(s) URL with a host".into()));
            }
            endpoint = Some(u);
            continue;
        }
        let Some(spec) = entry.settings.get(k) else {
            let known: Vec<&str> = entry.settings.keys().map(String::as_str).collect();
            return Err((
                k.clone(),
                format!(
                    "is not a setting of {} (known: {}endpoint_override)",
                    entry.id,
                    known.iter().map(|k| format!("{k}, ")).collect::<String>()
                ),
            ));
        };
        let ok = match spec.ty {
            sluice_mapping::FieldType::Boolean => v.is_boolean(),
            sluice_mapping::FieldType::Number | sluice_mapping::FieldType::Integer => v.is_number(),
            sluice_mapping::FieldType::Object => v.is_object(),
            _ => v.is_string(),
        };
        if !ok {
            return Err((
                k.clone(),
                format!("must be of type {:?}", spec.ty).to_lowercase(),
            ));
        }
        out.insert(k.clone(), v.clone());
    }
    for (k, spec) in &entry.settings {
        if out.contains_key(k) {
            continue;
        }
        match &spec.default {
            Some(d) => {
                out.insert(k.clone(), d.clone());
            }
            None if spec.required => return Err((k.clone(), "is required".into())),
            None => {}
        }
    }
    Ok((Value::Object(out.into_iter().collect()), endpoint))
}

impl DestinationKind for ActionsKind {
    fn display_name(&self) -> &str {
        self.entry.name.as_str()
    }

    /// One event per lane turn: a catalog destination batches per action instead
    /// (`plan_batch`, through [`DestinationKind::catalog`]).
    fn requests(&self, payloads: &[&[u8]], _batched: bool, allow_private: bool) -> Requests {
        let payload = payloads.first().copied().unwrap_or(b"{}");
        match self.plan(payload, allow_private) {
            Plan::Send(reqs) => Requests::Send(reqs.into_iter().map(|(_, r)| r).collect()),
            Plan::NoMatch(why) => Requests::NoMatch(why),
            Plan::Invalid(why) => Requests::Invalid(why),
        }
    }

    /// Every matched action's request must be delivered.
    fn combine(&self, answers: &[Answer]) -> Verdict {
        crate::retry::all_delivered(answers)
    }

    fn deletion(
        &self,
        message: &Value,
        allow_private: bool,
    ) -> Result<Vec<Prepared>, DeletionError> {
        ActionsKind::deletion(self, message, allow_private)
            .map(|r| r.into_iter().collect())
            .map_err(|e| DeletionError(e.0))
    }

    /// A `delete` message previews the deletion hook (filters do not apply to it);
    /// anything else previews every enabled action.
    fn preview(
        &self,
        event: &Value,
        route: &Route,
        _batched: bool,
        allow_private: bool,
    ) -> Vec<PreviewEntry> {
        if event.get("type") == Some(&json!("delete")) {
            let (requests, reason) = match ActionsKind::deletion(self, event, allow_private) {
                Ok(Some(r)) => (vec![r], None),
                Ok(None) => (
                    Vec::new(),
                    Some(format!(
                        "{} has no deletion hook, or nothing to delete for this subject",
                        self.entry.id
                    )),
                ),
                Err(why) => (Vec::new(), Some(why.0)),
            };
            return vec![PreviewEntry {
                action: "delete".into(),
                matched: !requests.is_empty(),
                requests,
                skipped_reason: reason,
            }];
        }
        let blocked = blocked_reason(route);
        ActionsKind::preview(self, event, allow_private)
            .into_iter()
            .map(|p| PreviewEntry {
                action: p.action,
                matched: p.matched && blocked.is_none(),
                requests: match &blocked {
                    None => p.requests,
                    Some(_) => Vec::new(),
                },
                skipped_reason: blocked.clone().or(p.skipped_reason),
            })
            .collect()
    }

    fn catalog(&self) -> Option<&ActionsKind> {
        Some(self)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DestinationConfig;

    fn kind(v: Value) -> Result<ActionsKind, crate::ConfigError> {
        let cfg: DestinationConfig = serde_json::from_value(v).unwrap();
        cfg.validate(&["web"])
            .map(|d| d.kind.catalog().expect("a catalog destination").clone())
    }

    fn track() -> Value {
        json!({"type": "track", "event": "Order Completed", "userId": "u1", "messageId": "m1",
               "properties": {"total": 30}})
    }

    fn sent(plan: Plan) -> Vec<Prepared> {
        match plan {
            Plan::Send(reqs) => reqs.into_iter().map(|(_, r)| r).collect(),
            other => panic!("expected requests, got {other:?}"),
        }
    }

    /// An entry's one action, enabled with its defaults, under `settings`.
    fn one_action(
        entry: &'static crate::catalog::Entry,
        action: &str,
        settings: Value,
    ) -> ActionsKind {
        let cfg = ActionConfig {
            action: action.into(),
            subscription: None,
            mapping: Map::new(),
            enabled: true,
        };
        ActionsKind {
            entry,
            settings,
            endpoint_override: None,
            actions: vec![Enabled::new(&entry.actions[action], &cfg).unwrap()],
        }
    }

    /// `request.refuse`: the first check whose `when` is truthy refuses the event for the
    /// action with its reason; none truthy, the request is made.
    #[test]
    fn a_refusal_check_stops_the_request_with_its_reason() {
        let entry: &'static crate::catalog::Entry = Box::leak(Box::new(
            crate::catalog::parse(
                "checked",
                r#"{"id": "checked", "name": "Checked", "actions": {"send": {"title": "Send",
                "default_subscription": "type = \"track\"",
                "fields": {"external_id": {"type": "string", "default": {"@path": "$.userId"}},
                           "email": {"type": "string", "default": {"@path": "$.properties.email"}}},
                "request": {"method": "POST", "url": "https://api.example.com/track",
                    "body": {"id": {"@path": "$.payload.external_id"}},
                    "refuse": [{"when": {"@not": {"@if": {"exists": {"@path": "$.payload.external_id"},
                                    "then": true, "else": {"@path": "$.payload.email"}}}},
                                "reason": "one of external_id or email is required"}]}}},
                "presets": [{"action": "send"}]}"#,
            )
            .unwrap(),
        ));
        let k = one_action(entry, "send", json!({}));
        let plan = |e: Value| k.plan(&serde_json::to_vec(&e).unwrap(), false);
        assert_eq!(sent(plan(track())).len(), 1, "a user id: sent");
        let by_email = json!({"type": "track", "event": "E", "anonymousId": "a", "properties": {"email": "x@example.com"}});
        assert_eq!(sent(plan(by_email)).len(), 1, "an email: sent");
        match plan(json!({"type": "track", "event": "E", "anonymousId": "a"})) {
            Plan::Invalid(why) => assert!(
                why.contains("one of external_id or email is required"),
                "{why}"
            ),
            other => panic!("expected the refusal, got {other:?}"),
        }
    }

    /// An action of two requests: each sent when its `when` holds, in order, with a form
    /// body and a `let` value; a refusal in either stops both.
    #[test]
    fn an_action_sends_its_requests_in_order_each_when_it_applies() {
        let entry: &'static crate::catalog::Entry = Box::leak(Box::new(
            crate::catalog::parse(
                "two",
                r#"{"id": "two", "name": "Two", "actions": {"identify": {"title": "Identify",
                "default_subscription": "type = \"identify\"",
                "fields": {"anon": {"type": "string", "default": {"@path": "$.anonymousId"}},
                           "user": {"type": "string", "default": {"@path": "$.userId"}},
                           "traits": {"type": "object", "default": {"@path": "$.traits"}}},
                "let": {"base": {"@lookup": {"value": {"@path": "$.settings.region"}, "table": {"EU": "https://eu.example.com"}, "default": "https://us.example.com"}}},
                "request": [
                  {"when": {"@path": "$.payload.anon"}, "method": "POST", "url": {"@template": "{{let.base}}/track"},
                   "form": {"data": {"@json": {"mode": "encode", "value": {"event": "$identify", "anon": {"@path": "$.payload.anon"}}}}, "v": "1 & 2"}},
                  {"when": {"@nonEmpty": {"@path": "$.payload.traits"}}, "method": "POST", "url": {"@template": "{{let.base}}/engage"},
                   "refuse": [{"when": {"@path": "$.payload.traits.blocked"}, "reason": "blocked users are not sent"}],
                   "body": {"id": {"@path": "$.payload.user"}, "set": {"@path": "$.payload.traits"}}}
                ]}},
                "presets": [{"action": "identify"}]}"#,
            )
            .unwrap(),
        ));
        let k = one_action(entry, "identify", json!({"region": "EU"}));
        let plan = |e: Value| k.plan(&serde_json::to_vec(&e).unwrap(), false);
        let both = sent(plan(
            json!({"type": "identify", "userId": "u1", "anonymousId": "a1", "traits": {"plan": "pro"}}),
        ));
        assert_eq!(both.len(), 2, "{both:?}");
        assert_eq!(both[0].url.as_str(), "https://eu.example.com/track");
        assert_eq!(
            both[0].headers[CONTENT_TYPE],
            "application/x-www-form-urlencoded;charset=UTF-8"
        );
        let form: BTreeMap<String, String> = url::form_urlencoded::parse(&both[0].body)
            .into_owned()
            .collect();
        assert_eq!(form["v"], "1 & 2");
        assert_eq!(
            serde_json::from_str::<Value>(&form["data"]).unwrap(),
            json!({"event": "$identify", "anon": "a1"})
        );
        assert_eq!(both[1].url.as_str(), "https://eu.example.com/engage");
        assert_eq!(
            serde_json::from_slice::<Value>(&both[1].body).unwrap(),
            json!({"id": "u1", "set": {"plan": "pro"}})
        );
        // Only the second applies without an anonymous id; only the first without traits.
        let one = sent(plan(
            json!({"type": "identify", "userId": "u1", "traits": {"plan": "pro"}}),
        ));
        assert_eq!(one.len(), 1);
        assert!(one[0].url.path().ends_with("/engage"));
        let one = sent(plan(json!({"type": "identify", "anonymousId": "a1"})));
        assert_eq!(one.len(), 1);
        assert!(one[0].url.path().ends_with("/track"));
        // Neither: nothing to send, and the reason says so.
        match plan(json!({"type": "identify", "userId": "u1"})) {
            Plan::NoMatch(why) => {
                assert!(why.contains("no request of the action applies"), "{why}")
            }
            other => panic!("expected no match, got {other:?}"),
        }
        // A refusal in the second request stops the first as well: nothing half sent.
        match plan(json!({"type": "identify", "anonymousId": "a1", "traits": {"blocked": true}})) {
            Plan::Invalid(why) => assert!(why.contains("blocked users are not sent"), "{why}"),
            other => panic!("expected the refusal, got {other:?}"),
        }
        // The preview lists both requests of the action.
        let p = k.preview(
            &json!({"type": "identify", "userId": "u1", "anonymousId": "a1", "traits": {"a": 1}}),
            false,
        );
        assert_eq!(p[0].requests.len(), 2);
    }

    #[test]
    fn actions_webhook_maps_signs_and_overrides_the_endpoint() {
        let k = kind(json!({"name": "w", "type": "actions_webhook", "sources": ["web"],
            "settings": {"sharedSecret": "k", "endpoint_override": "http://stub.example.com:9000"},
            "actions": [{"action": "send", "subscription": "type = \"track\"",
                "mapping": {"url": "https://hooks.example.com/in?x=1", "headers": {"X-A": "b"},
                            "data": {"id": {"@path": "$.userId"}, "total": {"@path": "$.properties.total"}}}}]}))
        .unwrap();
        let body = serde_json::to_vec(&track()).unwrap();
        let reqs = sent(k.plan(&body, false));
        assert_eq!(reqs.len(), 1);
        let r = &reqs[0];
        assert_eq!(r.method, Method::POST);
        assert_eq!(r.url.as_str(), "http://stub.example.com:9000/in?x=1");
        assert_eq!(&r.body[..], br#"{"id":"u1","total":30}"#);
        assert_eq!(r.headers["x-a"], "b");
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(
            r.headers["x-signature"].to_str().unwrap(),
            crate::webhook::signature("k", &r.body)
        );
        // Not subscribed: nothing to send.
        let identify = serde_json::to_vec(&json!({"type": "identify", "userId": "u1"})).unwrap();
        assert!(matches!(k.plan(&identify, false), Plan::NoMatch(_)));
    }

    #[test]
    fn refusals_name_the_action_and_field() {
        let k = kind(json!({"name": "w", "type": "http", "sources": ["web"],
            "actions": [{"action": "send", "mapping": {"url": {"@path": "$.properties.hook"}}}]}))
        .unwrap();
        let body = serde_json::to_vec(&track()).unwrap();
        match k.plan(&body, false) {
            Plan::Invalid(why) => assert!(
                why.contains("action send") && why.contains("`url` is required"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        let with = |hook: &str, method: &str| {
            let e = json!({"type": "track", "event": "x", "userId": "u", "properties": {"hook": hook, "m": method}});
            serde_json::to_vec(&e).unwrap()
        };
        let k = kind(json!({"name": "w", "type": "http", "sources": ["web"],
            "actions": [{"action": "send", "mapping": {"url": {"@path": "$.properties.hook"}, "method": {"@path": "$.properties.m"}}}]}))
        .unwrap();
        for (hook, method, want) in [
            ("http://10.0.0.1/x", "POST", "SSRF"),
            ("not a url", "POST", "invalid"),
            ("https://api.example.com/x", "FETCH", "must be one of"),
        ] {
            match k.plan(&with(hook, method), false) {
                Plan::Invalid(why) => assert!(why.contains(want), "{hook} {method}: {why}"),
                other => panic!("{hook}: {other:?}"),
            }
        }
        let get = sent(k.plan(&with("https://api.example.com/x", "GET"), false));
        assert_eq!(get[0].method, Method::GET);
    }

    #[test]
    fn segment_forwards_with_basic_auth_to_type_paths() {
        let k = kind(json!({"name": "fwd", "type": "segment", "sources": ["web"],
            "settings": {"write_key": "wk_other", "endpoint": "https://sluice.example.com"}}))
        .unwrap();
        let event = track();
        let reqs = sent(k.plan(&serde_json::to_vec(&event).unwrap(), false));
        assert_eq!(reqs[0].url.as_str(), "https://sluice.example.com/v1/track");
        use base64::Engine;
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("wk_other:")
        );
        assert_eq!(reqs[0].headers["authorization"].to_str().unwrap(), want);
        let back: Value = serde_json::from_slice(&reqs[0].body).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn product_fruits_gets_the_stored_bytes_signed() {
        let k = kind(json!({"name": "pf", "type": "product_fruits", "sources": ["web"],
            "settings": {"webhook_url": "https://hooks.productfruits.example/abc", "webhook_secret": "pfs"}}))
        .unwrap();
        // Field order and spacing as stored: sent unchanged, not re-serialised.
        let stored = br#"{"userId":"u1","type":"identify","traits":{"email":"a@example.com"},"messageId":"m1"}"#;
        let reqs = sent(k.plan(stored, false));
        assert_eq!(reqs.len(), 1);
        assert_eq!(&reqs[0].body[..], &stored[..]);
        assert_eq!(
            reqs[0].url.as_str(),
            "https://hooks.productfruits.example/abc"
        );
        assert_eq!(
            reqs[0].headers["x-signature"].to_str().unwrap(),
            crate::webhook::signature("pfs", stored)
        );
        let e = kind(
            json!({"name": "pf", "type": "product_fruits", "sources": ["web"], "settings": {}}),
        )
        .unwrap_err();
        assert_eq!(e.field, "settings.webhook_url");
    }

    #[test]
    fn configuration_errors_name_the_field() {
        let base = json!({"name": "x", "type": "segment", "sources": ["web"], "settings": {"write_key": "k"}});
        assert!(kind(base.clone()).is_ok());
        for (patch, field) in [
            (json!({"settings": {}}), "settings.write_key"),
            (
                json!({"settings": {"write_key": "k", "colour": "red"}}),
                "settings.colour",
            ),
            (json!({"settings": {"write_key": 5}}), "settings.write_key"),
            (
                json!({"settings": {"write_key": "k", "endpoint_override": "ftp://x"}}),
                "settings.endpoint_override",
            ),
            (
                json!({"settings": {"write_key": "k", "endpoint_override": "http://127.0.0.1:9"}}),
                "settings.endpoint_override",
            ),
            (
                json!({"actions": [{"action": "nope"}]}),
                "actions[0].action",
            ),
            (
                json!({"actions": [{"action": "send", "subscription": "type ="}]}),
                "actions[0].subscription",
            ),
            (
                json!({"actions": [{"action": "send", "mapping": {"evnt": 1}}]}),
                "actions[0].mapping.evnt",
            ),
            (
                json!({"actions": [{"action": "send", "mapping": {"event": {"@nope": 1}}}]}),
                "actions[0].mapping.event",
            ),
            (json!({"batch_size": 10}), "batch_size"),
        ] {
            let mut v = base.clone();
            for (k, val) in patch.as_object().unwrap() {
                v[k] = val.clone();
            }
            let e = kind(v).unwrap_err();
            assert_eq!(e.field, field, "{patch}: {e}");
        }
        let e = kind(json!({"name": "x", "type": "http", "sources": ["web"],
            "actions": [{"action": "send", "mapping": {"url": {"@nope": 1}}}]}))
        .unwrap_err();
        assert_eq!(e.field, "actions[0].mapping.url");
        assert!(e.message.contains("unknown directive"), "{e}");
        let e = kind(json!({"name": "x", "type": "http", "sources": ["web"]})).unwrap_err();
        assert_eq!(e.field, "actions");
        assert!(e.message.contains("no presets"), "{e}");
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;
    use crate::config::DestinationConfig;

    fn kind(v: Value) -> ActionsKind {
        let cfg: DestinationConfig = serde_json::from_value(v).unwrap();
        let d = cfg.validate(&["web"]).unwrap();
        d.kind.catalog().expect("a catalog destination").clone()
    }

    fn bytes(v: &[Value]) -> Vec<Vec<u8>> {
        v.iter().map(|e| serde_json::to_vec(e).unwrap()).collect()
    }

    #[test]
    fn actions_webhook_batches_data_signed_over_the_first_item() {
        let k = kind(
            json!({"name": "w", "type": "actions_webhook", "sources": ["web"], "batch_size": 10,
            "settings": {"sharedSecret": "k"},
            "actions": [{"action": "send", "subscription": "type = \"track\"",
                "mapping": {"url": "https://hooks.example.com/in", "data": {"id": {"@path": "$.messageId"}}}}]}),
        );
        let events = bytes(&[
            json!({"type": "track", "event": "A", "messageId": "m1"}),
            json!({"type": "identify", "messageId": "m2"}),
            json!({"type": "track", "event": "B", "messageId": "m3"}),
        ]);
        let refs: Vec<&[u8]> = events.iter().map(|e| &e[..]).collect();
        let (refused, reqs) = k.plan_batch(&refs, false);
        assert!(refused[0].is_none() && refused[2].is_none());
        assert!(matches!(refused[1], Some(Plan::NoMatch(_))));
        assert_eq!(reqs.len(), 1);
        let (req, idx) = (&reqs[0].request, &reqs[0].events);
        assert_eq!(idx, &vec![0, 2]);
        assert_eq!(&req.body[..], br#"[{"id":"m1"},{"id":"m3"}]"#);
        assert_eq!(
            req.headers["x-signature"].to_str().unwrap(),
            crate::webhook::signature("k", br#"{"id":"m1"}"#)
        );
    }

    #[test]
    fn pushwoosh_batches_events_with_app_id_and_keeps_profiles_single() {
        let k = kind(
            json!({"name": "pw", "type": "pushwoosh", "sources": ["web"], "batch_size": 100,
            "settings": {"pushwooshAPIKey": "k", "pushwooshAppCode": "APP-1"}}),
        );
        let t = "2026-11-23T10:00:00.000Z";
        let events = bytes(&[
            json!({"type": "track", "event": "A", "userId": "u1", "timestamp": t}),
            json!({"type": "identify", "userId": "u1", "traits": {"plan": "pro"}}),
            json!({"type": "screen", "name": "Home", "userId": "u2", "timestamp": t}),
            json!({"type": "track", "event": "B", "anonymousId": "a", "timestamp": t}),
        ]);
        let refs: Vec<&[u8]> = events.iter().map(|e| &e[..]).collect();
        let (refused, reqs) = k.plan_batch(&refs, false);
        assert!(matches!(&refused[3], Some(Plan::Invalid(why)) if why.contains("external_id")));
        assert_eq!(reqs.len(), 2);
        let single = reqs
            .iter()
            .find(|b| b.request.url.path().ends_with("/track-user"))
            .unwrap();
        assert_eq!(single.events, vec![1]);
        let batch = reqs
            .iter()
            .find(|b| b.request.url.path().ends_with("/post-events"))
            .unwrap();
        assert_eq!(batch.events, vec![0, 2]);
        assert_eq!(batch.singles.len(), 2);
        let body: Value = serde_json::from_slice(&batch.request.body).unwrap();
        assert_eq!(
            body,
            json!({"events": [
                {"user_id": "u1", "app_id": "APP-1", "name": "A", "timestamp": t},
                {"user_id": "u2", "app_id": "APP-1", "name": "Home", "timestamp": t}
            ]})
        );
    }

    #[test]
    fn batch_size_needs_an_action_that_batches() {
        let cfg: DestinationConfig =
            serde_json::from_value(json!({"name": "x", "type": "insider", "sources": ["web"],
            "batch_size": 10, "settings": {"account_name": "a", "ucd_key": "k"}}))
            .unwrap();
        let e = cfg.validate(&["web"]).unwrap_err();
        assert_eq!(e.field, "batch_size");
        assert!(e.message.contains("none of the enabled actions"), "{e}");
    }
}
