//! A destination's configuration — the same object in `sluice.toml` (`[[destinations]]`)
//! and over the admin API (JSON) — and its validation into a runnable [`Destination`].
//! Every error names the destination and the field.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::duration::HumanDuration;
use crate::kind::DestinationKind;
use crate::retry::RetryPolicy;
use crate::ssrf;

/// Most URLs a classic Webhooks destination posts to (Segment's limit).
pub const MAX_HOOKS: usize = 5;
/// Largest `batch_size`.
pub const MAX_BATCH_SIZE: usize = 4000;
/// Largest `concurrency`.
pub const MAX_CONCURRENCY: usize = 256;

fn yes() -> bool {
    true
}
fn default_concurrency() -> usize {
    16
}
fn default_batch_size() -> usize {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// Unique name: letters, digits, `-` and `_`. Also the key of the `integrations`
    /// object that turns this destination on or off per event.
    pub name: String,
    /// Destination type: `webhook` (Segment's classic Webhooks) or a catalog id
    /// (`actions_webhook`, `http`, `segment`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// Sources whose events it receives.
    pub sources: Vec<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `"all"` (default) or a list of event names (track events by `event`, other calls
    /// by their type: `"identify"`, `"page"`, …).
    #[serde(default)]
    pub events: EventFilter,
    /// Allows loopback, private and link-local addresses (off: SSRF guard).
    #[serde(default)]
    pub allow_private_networks: bool,
    /// Requests in flight at once (events of one user key always share one lane).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// 1: one request per event. More: arrays of up to this many events per request.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Add the resolved profile's traits (to `context.traits`, where the event has no
    /// value) and identifiers (to `context.externalIds`) before mapping.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enrich_profile: bool,
    /// Per-request timeout (default 5 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    #[serde(default)]
    pub retry: RetryConfig,
    /// Type-specific settings, keyed as Segment keys them.
    #[serde(default)]
    pub settings: Map<String, Value>,
    /// Catalog destinations: the enabled actions with their subscriptions and field
    /// overrides. None listed: the catalog's presets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<crate::actions::ActionConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub min_backoff: HumanDuration,
    pub max_backoff: HumanDuration,
    pub window: HumanDuration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        let p = RetryPolicy::default();
        RetryConfig {
            min_backoff: HumanDuration(p.min_backoff),
            max_backoff: HumanDuration(p.max_backoff),
            window: HumanDuration(p.window),
        }
    }
}

/// Which events a destination takes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum EventFilter {
    #[default]
    All,
    Only(HashSet<String>),
}

impl EventFilter {
    /// Whether an event of this type (and, for track, name) passes.
    pub fn allows(&self, call_type: &str, event_name: Option<&str>) -> bool {
        match self {
            EventFilter::All => true,
            EventFilter::Only(names) => {
                names.contains(call_type) || event_name.is_some_and(|n| names.contains(n))
            }
        }
    }
}

impl<'de> Deserialize<'de> for EventFilter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            List(Vec<String>),
        }
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected \"all\" or a list of event names"))?
        {
            Raw::Word(w) if w == "all" => Ok(EventFilter::All),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "expected \"all\" or a list of event names, not {w:?}"
            ))),
            Raw::List(l) => Ok(EventFilter::Only(l.into_iter().collect())),
        }
    }
}

impl Serialize for EventFilter {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            EventFilter::All => s.serialize_str("all"),
            EventFilter::Only(names) => {
                let mut v: Vec<&String> = names.iter().collect();
                v.sort();
                v.serialize(s)
            }
        }
    }
}

/// A configuration error: which destination, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("destination {destination:?}: field `{field}` {message}")]
pub struct ConfigError {
    pub destination: String,
    pub field: String,
    pub message: String,
}

/// A validated destination, ready to run.
#[derive(Debug, Clone)]
pub struct Destination {
    pub name: String,
    pub sources: HashSet<String>,
    pub enabled: bool,
    pub events: EventFilter,
    pub allow_private_networks: bool,
    pub concurrency: usize,
    pub batch_size: usize,
    pub enrich_profile: bool,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// What the type does with events (its validated settings).
    pub kind: Arc<dyn DestinationKind>,
}

/// Segment's classic Webhooks settings.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub hooks: Vec<Hook>,
    pub shared_secret: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Hook {
    pub url: url::Url,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Headers Sluice sets itself; a hook may not override them.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "x-signature",
];

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl DestinationConfig {
    /// Validates against the configured sources.
    pub fn validate(&self, known_sources: &[&str]) -> Result<Destination, ConfigError> {
        let err = |field: &str, message: String| ConfigError {
            destination: self.name.clone(),
            field: field.to_string(),
            message,
        };
        if !valid_name(&self.name) {
            return Err(err(
                "name",
                "must be 1 to 64 letters, digits, '-' or '_'".into(),
            ));
        }
        if self.sources.is_empty() {
            return Err(err("sources", "must name at least one source".into()));
        }
        for (i, s) in self.sources.iter().enumerate() {
            if !known_sources.contains(&s.as_str()) {
                return Err(err(
                    &format!("sources[{i}]"),
                    format!(
                        "names source {s:?}, which is not configured (known: {})",
                        known_sources.join(", ")
                    ),
                ));
            }
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(err(
                "concurrency",
                format!(
                    "must be from 1 to {MAX_CONCURRENCY}, not {}",
                    self.concurrency
                ),
            ));
        }
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            return Err(err(
                "batch_size",
                format!(
                    "must be from 1 to {MAX_BATCH_SIZE}, not {}",
                    self.batch_size
                ),
            ));
        }
        let catalog_entry = crate::catalog::builtin().get(&self.kind);
        // Classic webhooks answer within 5 s (Segment's rule); Actions requests get 10 s.
        let default_timeout = if catalog_entry.is_some() { 10 } else { 5 };
        let timeout = self
            .timeout
            .map(|t| t.0)
            .unwrap_or(Duration::from_secs(default_timeout));
        if timeout.is_zero() || timeout > Duration::from_secs(300) {
            return Err(err("timeout", "must be more than 0 and at most 5m".into()));
        }
        let r = &self.retry;
        if r.min_backoff.0.is_zero() {
            return Err(err("retry.min_backoff", "must be more than 0".into()));
        }
        if r.max_backoff.0 < r.min_backoff.0 {
            return Err(err(
                "retry.max_backoff",
                "must be at least retry.min_backoff".into(),
            ));
        }
        if self.kind != "webhook" && catalog_entry.is_none() {
            let known: Vec<&str> = std::iter::once("webhook")
                .chain(crate::catalog::builtin().keys().map(String::as_str))
                .collect();
            return Err(err(
                "type",
                format!(
                    "is {:?}, which is not a known destination type (known: {})",
                    self.kind,
                    known.join(", ")
                ),
            ));
        }
        let kind = match catalog_entry {
            None => {
                if !self.actions.is_empty() {
                    return Err(err(
                        "actions",
                        "only catalog destinations have actions; the classic webhook has none"
                            .into(),
                    ));
                }
                Arc::new(webhook_settings(
                    &self.settings,
                    self.allow_private_networks,
                    &err,
                )?) as Arc<dyn DestinationKind>
            }
            Some(entry) => Arc::new(self.actions_kind(entry, &err)?),
        };
        Ok(Destination {
            name: self.name.clone(),
            sources: self.sources.iter().cloned().collect(),
            enabled: self.enabled,
            events: self.events.clone(),
            allow_private_networks: self.allow_private_networks,
            concurrency: self.concurrency,
            batch_size: self.batch_size,
            enrich_profile: self.enrich_profile,
            timeout,
            retry: RetryPolicy {
                min_backoff: r.min_backoff.0,
                max_backoff: r.max_backoff.0,
                window: r.window.0,
            },
            kind,
        })
    }
}

impl DestinationConfig {
    fn actions_kind(
        &self,
        entry: &'static crate::catalog::Entry,
        err: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<crate::actions::ActionsKind, ConfigError> {
        use crate::actions::{ActionsKind, Enabled};
        let (settings, endpoint_override) = crate::actions::settings(entry, &self.settings)
            .map_err(|(k, m)| err(&format!("settings.{k}"), m))?;
        if let (Some(u), false) = (&endpoint_override, self.allow_private_networks) {
            ssrf::check_url(u)
                .map_err(|why| err("settings.endpoint_override", format!("refused: {why}")))?;
        }
        let mut actions = Vec::new();
        if self.actions.is_empty() {
            if entry.presets.is_empty() {
                return Err(err(
                    "actions",
                    format!(
                        "is empty and {} has no presets: add [[destinations.actions]] (actions: {})",
                        entry.id,
                        entry.actions.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            for p in &entry.presets {
                let slug = &p.action;
                let action = &entry.actions[slug];
                let cfg = crate::actions::ActionConfig {
                    action: slug.clone(),
                    subscription: Some(p.subscription_text.clone()),
                    mapping: p.mapping.clone().unwrap_or_default(),
                    enabled: true,
                };
                let built = match p.mapping {
                    Some(_) => Enabled::preset(action, &cfg),
                    None => Enabled::new(action, &cfg),
                };
                let mut e = built.map_err(|(f, m)| err(&format!("presets.{slug}.{f}"), m))?;
                e.subscription = p.subscription.clone();
                actions.push(e);
            }
        }
        for (i, a) in self.actions.iter().enumerate() {
            let Some(action) = entry.actions.get(&a.action) else {
                return Err(err(
                    &format!("actions[{i}].action"),
                    format!(
                        "names {:?}, which is not an action of {} (actions: {})",
                        a.action,
                        entry.id,
                        entry.actions.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            };
            let enabled =
                Enabled::new(action, a).map_err(|(f, m)| err(&format!("actions[{i}].{f}"), m))?;
            if a.enabled {
                actions.push(enabled);
            }
        }
        if self.batch_size > 1 && !actions.iter().any(|a| a.action.batch.is_some()) {
            return Err(err(
                "batch_size",
                format!(
                    "is {}, but none of the enabled actions of {} sends batches",
                    self.batch_size, entry.id
                ),
            ));
        }
        Ok(ActionsKind {
            entry,
            settings,
            endpoint_override,
            actions,
        })
    }
}

fn webhook_settings(
    settings: &Map<String, Value>,
    allow_private: bool,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<WebhookSettings, ConfigError> {
    for key in settings.keys() {
        if key != "hooks" && key != "sharedSecret" {
            return Err(err(
                &format!("settings.{key}"),
                "is not a Webhooks setting (known: hooks, sharedSecret)".into(),
            ));
        }
    }
    let shared_secret = match settings.get("sharedSecret") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(err("settings.sharedSecret", "must be a string".into())),
    };
    let Some(Value::Array(list)) = settings.get("hooks") else {
        return Err(err(
            "settings.hooks",
            "must be a list of 1 to 5 entries like { hook = \"https://…\" }".into(),
        ));
    };
    if list.is_empty() || list.len() > MAX_HOOKS {
        return Err(err(
            "settings.hooks",
            format!("must have 1 to {MAX_HOOKS} entries, not {}", list.len()),
        ));
    }
    let mut hooks = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let at = |f: &str| format!("settings.hooks[{i}]{f}");
        let Value::Object(obj) = entry else {
            return Err(err(
                &at(""),
                "must be a table like { hook = \"https://…\" }".into(),
            ));
        };
        for key in obj.keys() {
            if key != "hook" && key != "headers" {
                return Err(err(
                    &at(&format!(".{key}")),
                    "is not a hook setting (known: hook, headers)".into(),
                ));
            }
        }
        let Some(Value::String(text)) = obj.get("hook") else {
            return Err(err(&at(".hook"), "must be the URL to post to".into()));
        };
        let url = url::Url::parse(text)
            .map_err(|e| err(&at(".hook"), format!("is not a valid URL ({e}): {text:?}")))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(err(
                &at(".hook"),
                format!("must be an http or https URL, not {:?}", url.scheme()),
            ));
        }
        if !allow_private {
            ssrf::check_url(&url).map_err(|why| err(&at(".hook"), format!("refused: {why}")))?;
        }
        let headers = hook_headers(obj.get("headers"), &at(".headers"), err)?;
        hooks.push(Hook { url, headers });
    }
    Ok(WebhookSettings {
        hooks,
        shared_secret,
    })
}

/// Headers as a table (`{ Authorization = "…" }`) or as Segment's list of
/// `{ key, value }` pairs.
fn hook_headers(
    value: Option<&Value>,
    field: &str,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Vec<(HeaderName, HeaderValue)>, ConfigError> {
    let pairs: Vec<(String, String)> = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(err(&format!("{field}.{k}"), "must be a string".into())),
            })
            .collect::<Result<_, _>>()?,
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, e)| {
                match (
                    e.get("key").and_then(Value::as_str),
                    e.get("value").and_then(Value::as_str),
                ) {
                    (Some(k), Some(v)) => Ok((k.to_string(), v.to_string())),
                    _ => Err(err(
                        &format!("{field}[{i}]"),
                        "must be { key = \"…\", value = \"…\" }".into(),
                    )),
                }
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(err(
                field,
                "must be a table of header names to values".into(),
            ))
        }
    };
    pairs
        .into_iter()
        .map(|(k, v)| {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| err(field, format!("has an invalid header name {k:?}")))?;
            if RESERVED_HEADERS.contains(&name.as_str()) {
                return Err(err(
                    field,
                    format!("may not set {k:?}; Sluice sets it itself"),
                ));
            }
            let value = HeaderValue::from_str(&v)
                .ok()
                .filter(|_| v.is_ascii())
                .ok_or_else(|| {
                    err(
                        field,
                        format!("header {k:?} has a value that is not visible ASCII"),
                    )
                })?;
            Ok((name, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(text: &str) -> DestinationConfig {
        #[derive(Deserialize)]
        struct F {
            destinations: Vec<DestinationConfig>,
        }
        let mut f: F = toml::from_str(text).unwrap();
        f.destinations.remove(0)
    }

    #[test]
    fn the_issue_minimal_configuration_works_as_written() {
        let cfg = from_toml(
            r#"
[[destinations]]
name = "hooks"
type = "webhook"
sources = ["web"]
allow_private_networks = true
[destinations.settings]
sharedSecret = "s3cret"
hooks = [{ hook = "http://127.0.0.1:9000/in" }]
"#,
        );
        let d = cfg.validate(&["web"]).unwrap();
        let w: &WebhookSettings = d.kind.as_any().downcast_ref().expect("a webhook");
        assert_eq!(w.shared_secret.as_deref(), Some("s3cret"));
        assert_eq!(w.hooks[0].url.as_str(), "http://127.0.0.1:9000/in");
        assert_eq!(d.timeout, Duration::from_secs(5));
        assert_eq!(d.retry.window, Duration::from_secs(4 * 3600));
        assert!(d.enabled);
        assert_eq!(d.events, EventFilter::All);
        // JSON round trip (the admin API's shape).
        let json = serde_json::to_string(&cfg).unwrap();
        let back: DestinationConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn errors_name_the_field() {
        let base = r#"
[[destinations]]
name = "hooks"
type = "webhook"
sources = ["web"]
[destinations.settings]
hooks = [{ hook = "http://127.0.0.1:9000/in" }]
"#;
        let e = from_toml(base).validate(&["web"]).unwrap_err();
        assert_eq!(e.field, "settings.hooks[0].hook");
        assert!(e.message.contains("loopback"), "{e}");
        assert!(e.to_string().contains("allow_private_networks"), "{e}");

        let cases = [
            ("sources = [\"web\"]", "sources = [\"app\"]", "sources[0]"),
            ("type = \"webhook\"", "type = \"carrier-pigeon\"", "type"),
            (
                "hooks = [{ hook = \"http://127.0.0.1:9000/in\" }]",
                "hooks = []",
                "settings.hooks",
            ),
            (
                "hooks = [{ hook = \"http://127.0.0.1:9000/in\" }]",
                "hooks = [{ hook = \"ftp://example.com/x\" }]",
                "settings.hooks[0].hook",
            ),
            (
                "hooks = [{ hook = \"http://127.0.0.1:9000/in\" }]",
                "hooks = [{ hook = \"https://example.com\", headers = { \"Content-Type\" = \"x\" } }]",
                "settings.hooks[0].headers",
            ),
            (
                "hooks = [{ hook = \"http://127.0.0.1:9000/in\" }]",
                "hooks = [{ hook = \"https://example.com\" }]\nsecret = \"x\"",
                "settings.secret",
            ),
            ("name = \"hooks\"", "name = \"no spaces\"", "name"),
        ];
        for (from, to, field) in cases {
            let text = base.replace(from, to);
            let e = from_toml(&text).validate(&["web"]).unwrap_err();
            assert_eq!(e.field, field, "{to}: {e}");
        }
        let six: Vec<String> = (0..6)
            .map(|i| format!("{{ hook = \"https://h{i}.example.com\" }}"))
            .collect();
        let text = base.replace(
            "hooks = [{ hook = \"http://127.0.0.1:9000/in\" }]",
            &format!("hooks = [{}]", six.join(", ")),
        );
        let e = from_toml(&text).validate(&["web"]).unwrap_err();
        assert!(e.message.contains("1 to 5"), "{e}");
    }

    #[test]
    fn segment_style_header_lists_and_event_filters() {
        let cfg: DestinationConfig = serde_json::from_value(serde_json::json!({
            "name": "h", "type": "webhook", "sources": ["web"],
            "events": ["Order Completed", "identify"],
            "settings": {"hooks": [{"hook": "https://example.com/in",
                "headers": [{"key": "Authorization", "value": "Bearer t"}]}]}
        }))
        .unwrap();
        let d = cfg.validate(&["web"]).unwrap();
        let w: &WebhookSettings = d.kind.as_any().downcast_ref().expect("a webhook");
        assert_eq!(w.hooks[0].headers[0].0.as_str(), "authorization");
        assert!(w.shared_secret.is_none());
        assert!(d.events.allows("track", Some("Order Completed")));
        assert!(!d.events.allows("track", Some("Order Refunded")));
        assert!(d.events.allows("identify", None));
        assert!(!d.events.allows("page", Some("Home")));
        let bad: Result<DestinationConfig, _> = serde_json::from_value(serde_json::json!({
            "name": "h", "type": "webhook", "sources": ["web"], "events": "some"
        }));
        assert!(bad.unwrap_err().to_string().contains("\"all\""));
    }
}
