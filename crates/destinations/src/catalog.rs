//! The destination catalog as data: one JSON file per destination type in `catalog/`
//! (built into the binary), loaded and validated once. A catalog entry names its settings
//! (types, required, secret), its actions (fields with types and defaults written as
//! mapping-kit values, a default subscription, and how the prepared payload becomes an HTTP
//! request) and its presets (the actions enabled when a configuration lists none).
//!
//! A request is described by mapping-kit values evaluated against
//! `{"payload": <the action's prepared fields>, "settings": <the destination's settings>,
//! "event": <the event>}`: `method`, `url`, `headers` (an object of strings), `body`
//! (any JSON), and optionally `basic_auth` (`{username, password}` → an
//! `Authorization: Basic` header). Every catalog destination also takes the setting
//! `endpoint_override`: it replaces the scheme, host and port of every request it sends.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use sluice_mapping::{FieldSpec, FieldType, Mapping, Subscription};

/// The catalog files, built in.
const FILES: &[(&str, &str)] = &[
    (
        "actions_webhook",
        include_str!("../../../catalog/actions_webhook.json"),
    ),
    ("braze", include_str!("../../../catalog/braze.json")),
    (
        "customerio",
        include_str!("../../../catalog/customerio.json"),
    ),
    (
        "facebook_conversions_api",
        include_str!("../../../catalog/facebook_conversions_api.json"),
    ),
    (
        "google_analytics_4",
        include_str!("../../../catalog/google_analytics_4.json"),
    ),
    ("http", include_str!("../../../catalog/http.json")),
    ("insider", include_str!("../../../catalog/insider.json")),
    ("klaviyo", include_str!("../../../catalog/klaviyo.json")),
    ("miso", include_str!("../../../catalog/miso.json")),
    ("mixpanel", include_str!("../../../catalog/mixpanel.json")),
    (
        "product_fruits",
        include_str!("../../../catalog/product_fruits.json"),
    ),
    ("pushwoosh", include_str!("../../../catalog/pushwoosh.json")),
    ("segment", include_str!("../../../catalog/segment.json")),
    ("slack", include_str!("../../../catalog/slack.json")),
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFile {
    id: String,
    name: String,
    #[serde(default)]
    segment_slug: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    settings: BTreeMap<String, SettingFile>,
    /// Headers every request carries (mapping-kit values over the request context).
    #[serde(default)]
    headers: BTreeMap<String, Value>,
    #[serde(default)]
    signature: Option<SignatureFile>,
    actions: BTreeMap<String, ActionFile>,
    #[serde(default)]
    presets: Vec<PresetFile>,
    /// The deletion hook: a request (mapping-kit values over `{"userId", "anonymousId",
    /// "settings", "event"}`, `event` being the `{"type": "delete", …}` message) sent when
    /// a user is deleted. A URL that resolves to nothing means "nothing to delete".
    #[serde(default)]
    delete: Option<DeleteFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteFile {
    method: Value,
    url: Value,
    #[serde(default)]
    headers: Option<Value>,
    #[serde(default)]
    body: Option<Value>,
}

/// A compiled deletion hook.
#[derive(Debug, Clone)]
pub struct DeleteHook {
    pub method: Mapping,
    pub url: Mapping,
    pub headers: Option<Mapping>,
    pub body: Option<Mapping>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingFile {
    #[serde(rename = "type")]
    pub ty: FieldType,
    #[serde(default)]
    pub required: bool,
    /// Never shown back by the admin API.
    #[serde(default)]
    pub secret: bool,
    #[serde(default)]
    pub default: Option<Value>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureFile {
    /// The setting holding the shared secret.
    secret_setting: String,
    header: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionFile {
    title: String,
    #[serde(default)]
    description: String,
    /// Absent (as some of Segment's actions have none): a configuration must give one.
    #[serde(default)]
    default_subscription: String,
    fields: BTreeMap<String, FieldFile>,
    /// Values computed once per event after the payload, by name, each a mapping-kit value
    /// over the request context (they do not see each other); requests read them as
    /// `$.let.<name>`.
    #[serde(default, rename = "let")]
    lets: serde_json::Map<String, Value>,
    /// One request (an object), or several (a list, sent in order, each with its `when`).
    request: Value,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldFile {
    #[serde(flatten)]
    spec: FieldSpec,
    #[serde(default)]
    default: Option<Value>,
    #[serde(default)]
    description: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestFile {
    /// In a list of requests: this one is sent only when `when` is truthy (JavaScript's
    /// rules) over the request context.
    #[serde(default)]
    when: Option<Value>,
    /// One request per element of the list this gives (a single value: one element; none
    /// or an empty list: no request), each with `$.item` and `$.index` in its context.
    #[serde(default)]
    for_each: Option<Value>,
    method: Value,
    url: Value,
    #[serde(default)]
    headers: Option<Value>,
    #[serde(default)]
    body: Option<Value>,
    /// A form body (`application/x-www-form-urlencoded`): an object whose text values are
    /// sent as they are and other values as JSON text. Not with `body`.
    #[serde(default)]
    form: Option<Value>,
    #[serde(default)]
    basic_auth: Option<BasicAuthFile>,
    /// Checks that refuse the event for this action, in order: the first whose `when`
    /// is truthy (JavaScript's rules) over the request context gives its `reason`, and no
    /// request (a partner's own client-side check, e.g. "one of external_id or email is
    /// required").
    #[serde(default)]
    refuse: Vec<RefuseFile>,
    /// When the destination's `batch_size` > 1: each event's `item` (over the same
    /// context) and the batch request's `body` (over `{"items": [...], "settings"}`);
    /// method, URL and headers come from the first event. Events are batched together
    /// only when their method, URL and headers are the same.
    #[serde(default)]
    batch: Option<BatchFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefuseFile {
    when: Value,
    reason: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchFile {
    item: Value,
    body: Value,
    /// Statuses that mean "some item of the batch is invalid": the batch is then sent
    /// again one event per request, so the valid ones get through (Miso's 422).
    #[serde(default)]
    split_on: Vec<u16>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct BasicAuthFile {
    username: Value,
    password: Value,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PresetFile {
    action: String,
    #[serde(default)]
    subscription: Option<String>,
    /// The preset's whole mapping (fields it does not list have none), as Segment's
    /// presets carry one; absent: the fields' default mappings.
    #[serde(default)]
    mapping: Option<serde_json::Map<String, Value>>,
}

/// A loaded, validated catalog entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub name: String,
    pub segment_slug: Option<String>,
    pub description: String,
    pub settings: BTreeMap<String, SettingFile>,
    pub headers: Vec<(String, Mapping)>,
    pub signature: Option<(String, String)>,
    pub actions: BTreeMap<String, Action>,
    /// Enabled when a configuration lists no actions.
    pub presets: Vec<Preset>,
    pub delete: Option<DeleteHook>,
}

/// An action enabled when a configuration lists none.
#[derive(Debug, Clone)]
pub struct Preset {
    pub action: String,
    pub subscription: Subscription,
    pub subscription_text: String,
    /// Its whole mapping; `None`: the fields' default mappings.
    pub mapping: Option<serde_json::Map<String, Value>>,
}

#[derive(Debug, Clone)]
pub struct Action {
    pub slug: String,
    pub title: String,
    pub description: String,
    /// Empty: the action has none (a configuration must give its subscription).
    pub default_subscription: String,
    pub fields: Vec<(String, FieldSpec)>,
    /// Defaults as written (mapping-kit JSON), for overrides and `sluice catalog show`.
    pub defaults: BTreeMap<String, Value>,
    pub choices: BTreeMap<String, Vec<Value>>,
    pub field_descriptions: BTreeMap<String, String>,
    /// `let`: (name, value) computed once per event, each over the request context.
    pub lets: Vec<(String, Mapping)>,
    /// The requests, in the order they are sent; at least one.
    pub requests: Vec<RequestSpec>,
    /// (item, body, split_on) when the action can send batches (an action of one request).
    pub batch: Option<(Mapping, Mapping, Vec<u16>)>,
}

/// One request of an action.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    /// `@not` of the condition: the request is sent unless the compiled mapping gives
    /// `true` (the condition was falsy, as [`RequestSpec::refuse`] reads its checks);
    /// `None`: always.
    pub when: Option<Mapping>,
    /// One request per element of this list, with `item` and `index` in the context.
    pub for_each: Option<Mapping>,
    pub method: Mapping,
    pub url: Mapping,
    pub headers: Option<Mapping>,
    pub body: Option<Body>,
    pub basic_auth: Option<(Mapping, Mapping)>,
    /// (`@not` of the condition, reason): the event is refused for this action when the
    /// compiled mapping gives `false` (the condition was truthy).
    pub refuse: Vec<(Mapping, String)>,
}

/// A request's body.
#[derive(Debug, Clone)]
pub enum Body {
    Json(Mapping),
    /// The event itself (`{"@path": "$.event"}`): the stored bytes are sent unchanged
    /// (field order and all), not a re-serialisation; the mapping serves previews, which
    /// have no stored bytes.
    Event(Mapping),
    Form(Mapping),
}

/// A catalog file that does not load: which file, where, what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("catalog file {file}: {message}")]
pub struct CatalogError {
    pub file: String,
    pub message: String,
}

/// Loads and validates every built-in catalog file.
pub fn load() -> Result<BTreeMap<String, Entry>, CatalogError> {
    let mut out = BTreeMap::new();
    for (id, text) in FILES {
        let entry = parse(id, text)?;
        out.insert(entry.id.clone(), entry);
    }
    Ok(out)
}

/// The built-in catalog (validated by a unit test; loading cannot fail at run time).
pub fn builtin() -> &'static BTreeMap<String, Entry> {
    static CATALOG: std::sync::OnceLock<BTreeMap<String, Entry>> = std::sync::OnceLock::new();
    CATALOG.get_or_init(|| load().unwrap_or_default())
}

pub fn parse(file_id: &str, text: &str) -> Result<Entry, CatalogError> {
    let file = format!("catalog/{file_id}.json");
    let err = |message: String| CatalogError {
        file: file.clone(),
        message,
    };
    let f: EntryFile = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
    if f.id != file_id {
        return Err(err(format!("id {:?} does not match the file name", f.id)));
    }
    let compile = |v: &Value, at: &str| Mapping::compile(v).map_err(|e| err(format!("{at}: {e}")));
    let mut headers = Vec::new();
    for (k, v) in &f.headers {
        headers.push((k.clone(), compile(v, &format!("headers.{k}"))?));
    }
    if let Some(sig) = &f.signature {
        if !f.settings.contains_key(&sig.secret_setting) {
            return Err(err(format!(
                "signature.secret_setting names {:?}, which is not a setting",
                sig.secret_setting
            )));
        }
    }
    let mut actions = BTreeMap::new();
    for (slug, a) in &f.actions {
        let at = format!("actions.{slug}");
        if !a.default_subscription.is_empty() {
            Subscription::parse(&a.default_subscription)
                .map_err(|e| err(format!("{at}.default_subscription: {e}")))?;
        }
        let mut fields = Vec::new();
        let mut defaults = BTreeMap::new();
        let mut choices = BTreeMap::new();
        let mut field_descriptions = BTreeMap::new();
        for (key, field) in &a.fields {
            if let Some(d) = &field.default {
                compile(d, &format!("{at}.fields.{key}.default"))?;
                defaults.insert(key.clone(), d.clone());
            }
            if let Some(c) = &field.spec.choices {
                choices.insert(key.clone(), c.clone());
            }
            field_descriptions.insert(key.clone(), field.description.clone());
            fields.push((key.clone(), field.spec.clone()));
        }
        let listed: Vec<(String, &Value)> = match &a.request {
            Value::Array(list) => list
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("{at}.request[{i}]"), r))
                .collect(),
            one => vec![(format!("{at}.request"), one)],
        };
        if listed.is_empty() {
            return Err(err(format!(
                "{at}.request: a list of requests needs at least one"
            )));
        }
        let many = listed.len() > 1;
        let mut requests = Vec::with_capacity(listed.len());
        let mut batch = None;
        for (rat, r) in listed {
            let r: RequestFile =
                serde_json::from_value(r.clone()).map_err(|e| err(format!("{rat}: {e}")))?;
            if r.when.is_some() && !many {
                return Err(err(format!(
                    "{rat}.when: only a request in a list of several can have a condition"
                )));
            }
            if let Some(b) = &r.batch {
                if many || r.for_each.is_some() {
                    return Err(err(format!(
                        "{rat}.batch: only an action of one request can batch"
                    )));
                }
                batch = Some((
                    compile(&b.item, &format!("{rat}.batch.item"))?,
                    compile(&b.body, &format!("{rat}.batch.body"))?,
                    b.split_on.clone(),
                ));
            }
            let body = match (&r.body, &r.form) {
                (Some(_), Some(_)) => {
                    return Err(err(format!("{rat}: `body` and `form` cannot go together")))
                }
                (Some(b), None) if *b == serde_json::json!({"@path": "$.event"}) => {
                    Some(Body::Event(compile(b, &format!("{rat}.body"))?))
                }
                (Some(b), None) => Some(Body::Json(compile(b, &format!("{rat}.body"))?)),
                (None, Some(f)) => Some(Body::Form(compile(f, &format!("{rat}.form"))?)),
                (None, None) => None,
            };
            requests.push(RequestSpec {
                when: r
                    .when
                    .as_ref()
                    .map(|w| compile(&serde_json::json!({"@not": w}), &format!("{rat}.when")))
                    .transpose()?,
                for_each: r
                    .for_each
                    .as_ref()
                    .map(|f| compile(f, &format!("{rat}.for_each")))
                    .transpose()?,
                method: compile(&r.method, &format!("{rat}.method"))?,
                url: compile(&r.url, &format!("{rat}.url"))?,
                headers: r
                    .headers
                    .as_ref()
                    .map(|h| compile(h, &format!("{rat}.headers")))
                    .transpose()?,
                body,
                refuse: r
                    .refuse
                    .iter()
                    .enumerate()
                    .map(|(i, x)| {
                        compile(
                            &serde_json::json!({"@not": x.when}),
                            &format!("{rat}.refuse[{i}].when"),
                        )
                        .map(|m| (m, x.reason.clone()))
                    })
                    .collect::<Result<_, _>>()?,
                basic_auth: match &r.basic_auth {
                    Some(b) => Some((
                        compile(&b.username, &format!("{rat}.basic_auth.username"))?,
                        compile(&b.password, &format!("{rat}.basic_auth.password"))?,
                    )),
                    None => None,
                },
            });
        }
        let mut lets = Vec::with_capacity(a.lets.len());
        for (name, v) in &a.lets {
            lets.push((name.clone(), compile(v, &format!("{at}.let.{name}"))?));
        }
        actions.insert(
            slug.clone(),
            Action {
                slug: slug.clone(),
                title: a.title.clone(),
                description: a.description.clone(),
                default_subscription: a.default_subscription.clone(),
                fields,
                defaults,
                choices,
                field_descriptions,
                lets,
                requests,
                batch,
            },
        );
    }
    let mut presets = Vec::new();
    for (i, p) in f.presets.iter().enumerate() {
        let Some(action) = actions.get(&p.action) else {
            return Err(err(format!(
                "presets[{i}] names action {:?}, which is not defined",
                p.action
            )));
        };
        let text = p
            .subscription
            .clone()
            .unwrap_or_else(|| action.default_subscription.clone());
        let sub = Subscription::parse(&text)
            .map_err(|e| err(format!("presets[{i}].subscription: {e}")))?;
        if let Some(m) = &p.mapping {
            for (key, value) in m {
                if !action.fields.iter().any(|(k, _)| k == key) {
                    return Err(err(format!(
                        "presets[{i}].mapping.{key} is not a field of action {}",
                        p.action
                    )));
                }
                Mapping::compile(value)
                    .map_err(|e| err(format!("presets[{i}].mapping.{key}: {e}")))?;
            }
        }
        presets.push(Preset {
            action: p.action.clone(),
            subscription: sub,
            subscription_text: text,
            mapping: p.mapping.clone(),
        });
    }
    let delete = match &f.delete {
        Some(d) => Some(DeleteHook {
            method: compile(&d.method, "delete.method")?,
            url: compile(&d.url, "delete.url")?,
            headers: d
                .headers
                .as_ref()
                .map(|h| compile(h, "delete.headers"))
                .transpose()?,
            body: d
                .body
                .as_ref()
                .map(|b| compile(b, "delete.body"))
                .transpose()?,
        }),
        None => None,
    };
    Ok(Entry {
        delete,
        id: f.id,
        name: f.name,
        segment_slug: f.segment_slug,
        description: f.description,
        settings: f.settings,
        headers,
        signature: f.signature.map(|s| (s.secret_setting, s.header)),
        actions,
        presets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_file_loads() {
        let c = load().unwrap();
        for id in [
            "actions_webhook",
            "braze",
            "google_analytics_4",
            "http",
            "insider",
            "miso",
            "product_fruits",
            "pushwoosh",
            "segment",
            "slack",
        ] {
            assert!(c.contains_key(id), "{id}");
        }
        let w = &c["actions_webhook"];
        assert_eq!(w.segment_slug.as_deref(), Some("actions-webhook"));
        assert!(w.actions["send"].defaults.contains_key("data"));
        assert!(w.settings["sharedSecret"].secret);
    }

    #[test]
    fn bad_files_name_the_place() {
        let base = r#"{"id": "x", "name": "X", "actions": {"send": {"title": "Send",
            "default_subscription": "type = \"track\"", "fields": {"url": {"type": "string", "required": true}},
            "request": {"method": "POST", "url": {"@path": "$.payload.url"}}}}}"#;
        assert!(parse("x", base).is_ok());
        for (from, to, want) in [
            (r#""id": "x""#, r#""id": "y""#, "does not match"),
            (
                r#"type = \"track\""#,
                r#"type = "#,
                "actions.send.default_subscription",
            ),
            (
                r#"{"@path": "$.payload.url"}"#,
                r#"{"@nope": 1}"#,
                "actions.send.request.url",
            ),
            (r#""type": "string""#, r#""type": "str""#, "unknown variant"),
            (
                r#""name": "X""#,
                r#""name": "X", "presets": [{"action": "nope"}]"#,
                "presets[0]",
            ),
            (
                r#""request": {"method": "POST", "url": {"@path": "$.payload.url"}}"#,
                r#""request": [{"method": "POST", "url": "https://a.example"}, {"method": "POST", "url": "https://b.example", "body": {}, "form": {}}]"#,
                "actions.send.request[1]: `body` and `form` cannot go together",
            ),
            (
                r#""request": {"method": "POST", "url": {"@path": "$.payload.url"}}"#,
                r#""request": [{"method": "POST", "url": "https://a.example"}, {"method": "POST", "url": "https://b.example", "batch": {"item": 1, "body": 1}}]"#,
                "actions.send.request[1].batch: only an action of one request",
            ),
            (
                r#""request": {"method": "POST", "url": {"@path": "$.payload.url"}}"#,
                r#""request": {"when": true, "method": "POST", "url": "https://a.example"}"#,
                "actions.send.request.when",
            ),
            (
                r#""request": {"method": "POST", "url": {"@path": "$.payload.url"}}"#,
                r#""request": [{"method": "POST", "url": "https://a.example", "bdy": 1}]"#,
                "actions.send.request[0]: unknown field `bdy`",
            ),
            (
                r#""request": {"method": "POST", "url": {"@path": "$.payload.url"}}"#,
                r#""request": []"#,
                "at least one",
            ),
            (
                r#""request": {"#,
                r#""let": {"base": {"@nope": 1}}, "request": {"#,
                "actions.send.let.base",
            ),
        ] {
            let text = base.replace(from, to);
            let e = parse("x", &text).unwrap_err();
            assert!(e.to_string().contains(want), "{to}: {e}");
        }
    }
}
